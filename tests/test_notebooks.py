"""Every notebook in nbs/ runs top to bottom on small generated data, given only its parameters (as papermill would)."""
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import thera_fastai as tf

NBS = sorted((Path(__file__).resolve().parents[1]/'nbs').glob('*.ipynb'))


def _parameters(nb):
    cells = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1 and nb.cells[cells[0]].cell_type == 'code', 'one code cell tagged "parameters"'
    return cells[0]


@pytest.mark.slow
@pytest.mark.parametrize('nb_path', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs_on_a_data_path_alone(nb_path, tiny_folder, tmp_path):
    nb = nbformat.read(nb_path, as_version=4)
    assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), 'commit notebooks with outputs cleared'
    at = _parameters(nb)
    given = dict(DATA=str(tiny_folder), OUT=str(tmp_path/'out'), SAMPLE=96, NUM_IT=20, BS=16, EPOCHS=2, N_PREDICT=4, BUDGET=12,
                 ARCHS=('simple', 'airbench', 'resnet18'))
    names = [l.split('=')[0].strip() for l in nb.cells[at].source.splitlines() if '=' in l and not l.startswith('#')]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell('\n'.join(f"{k} = {given[k]!r}" for k in names if k in given)))
    (tmp_path/'cwd').mkdir()
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path/'cwd')}}).execute()
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
    assert not errors, errors
    assert any(o.get('data', {}).get('image/png') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
    assert not list((tmp_path/'cwd').iterdir()), 'a notebook writes under OUT only'


def test_notebooks_take_their_data_path_in_the_first_code_cell_and_call_the_api_only():
    assert {p.stem for p in NBS} >= {'00_explore', '01_lr_find', '02_cv_results', '03_label_audit', '04_prototyping'}
    for path in NBS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == 'code']
        assert 'parameters' in code[0].metadata.get('tags', []) and 'DATA =' in code[0].source and 'environ' not in code[0].source
        used = {line.strip() for c in code for line in c.source.splitlines() if line.strip().startswith(('import thera', 'from thera'))}
        assert used == {'import thera_fastai as tf'}, (path.name, used)
        names = {n for c in code for n in re.findall(r'\btf\.(\w+)', c.source)}
        assert names and all(hasattr(tf, n) for n in names), (path.name, [n for n in names if not hasattr(tf, n)])
        assert 'COST' not in ''.join(c.source for c in nb.cells if c.cell_type == 'markdown'), 'the first cell states the cost'
