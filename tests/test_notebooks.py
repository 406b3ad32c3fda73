"""Every notebook in nbs/ runs top to bottom on small generated data."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = sorted((Path(__file__).resolve().parents[1]/'nbs').glob('*.ipynb'))


@pytest.mark.slow
@pytest.mark.parametrize('nb_path', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb_path, tiny_folder, tmp_path, monkeypatch):
    for k, v in dict(THERA_NB_DATA=tiny_folder, THERA_NB_SAMPLE=96, THERA_NB_NUM_IT=30, THERA_NB_BS=16,
                     THERA_NB_RUN=tmp_path/'run').items():
        monkeypatch.setenv(k, str(v))
    nb = nbformat.read(nb_path, as_version=4)
    assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), 'commit notebooks with outputs cleared'
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
    assert not errors
    assert any(o.get('text') or o.get('data') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)


def test_notebooks_exist():
    assert {p.stem for p in NBS} >= {'00_explore', '01_lr_find', '02_cv_results', '03_label_audit'}
