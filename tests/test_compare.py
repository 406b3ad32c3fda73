"""thera-compare: runs side by side as Markdown, CSV and a plot."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import thera_fastai as tf
from conftest import run_cli, write_dataset
from thera_fastai.analysis.agreement import error_agreement
from thera_fastai.analysis.comparison import footing_markdown, minutes_to_reach, recipe_text, run_footing
from thera_fastai.errors import TheraError
from thera_fastai.files import file_hash

FIT = dict(arch='simple', folds=2, epochs=2, bs=16, tta=0, precision='fp32', log=lambda *_: None)


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('compare')
    write_dataset(root/'data', n_train=96, n_val=8)
    tf.fit(root/'data', root/'simple', fold=0, **FIT)
    tf.fit(root/'data', root/'air-ema', fold=0, ema=0.9, **{**FIT, 'arch': 'airbench'})
    return root


def test_compare_puts_two_runs_side_by_side(two_runs, tmp_path):
    frame = tf.compare([two_runs/'simple', two_runs/'air-ema'], tmp_path, target=0.6)
    assert list(frame['arch']) == ['simple', 'airbench'] and list(frame['recipe']) == ['bs=16, tta=0', 'bs=16, tta=0, ema=0.9']
    assert frame['params_m'].iloc[1] > frame['params_m'].iloc[0] > 0 and (frame['train_gflop'] > 0).all()
    assert (frame['images_seen'] == 2 * 48).all() and list(frame['folds']) == ['1/2', '1/2']
    for run, row in zip(('simple', 'air-ema'), frame.itertuples()):
        assert row.hter_cross == tf.report(two_runs/run)['pooled']['cross_fitted']['hter']
    csv = pd.read_csv(tmp_path/'compare.csv')
    assert list(csv['arch']) == ['simple', 'airbench'] and 'min_to_0.6' in csv.columns
    table = (tmp_path/'compare.md').read_text().split('\n## Errors in common')[0]
    assert table.count('\n') == 4 and '| airbench |' in table and (tmp_path/'compare.png').stat().st_size > 1000


def test_minutes_to_reach_reads_the_history():
    h = pd.DataFrame(dict(hter=[0.3, 0.09, 0.07, 0.08], time=['01:30', '01:30', '1:00:00', '01:00']))
    assert minutes_to_reach(h, 0.08) == pytest.approx(63.0) and minutes_to_reach(h, 0.09) == pytest.approx(3.0)
    assert minutes_to_reach(h, 0.01) != minutes_to_reach(h, 0.01)  # NaN: never reached


def test_recipe_text_names_what_differs_from_the_arch_defaults():
    assert recipe_text(tf.FitConfig(arch='resnet18').to_dict()) == 'default'
    assert recipe_text(tf.FitConfig(tta=0, budget=600).to_dict()) == 'tta=0, budget=10m'  # under a budget TTA's passes cost steps
    sized = {**tf.FitConfig(budget=600).to_dict(), 'widths': [48, 192, 192]}  # auto, as the run saved what it chose
    assert recipe_text(sized) == 'widths=[48, 192, 192], budget=10m'
    assert recipe_text(tf.FitConfig(lr=1e-3, resize_from=32).to_dict()) == 'lr=0.001, resize_from=32'
    pseudo = tf.FitConfig(pseudo='/somewhere/runs/teacher15', pseudo_targets='soft', budget=600).to_dict()
    assert recipe_text(pseudo) == 'pseudo=teacher15, pseudo_targets=soft, budget=10m'
    muon = tf.FitConfig(method='airbench', hyp=dict(muon=True)).to_dict()
    assert recipe_text(muon) == 'method=airbench, muon=True'


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(TheraError, match='run folder does not exist'): tf.compare([tmp_path/'missing'], tmp_path)


@pytest.mark.slow
def test_compare_cli(two_runs, tmp_path):
    r = run_cli('thera-compare', two_runs/'simple', two_runs/'air-ema', '--out', tmp_path)
    assert r.returncode == 0, r.stderr
    assert '| simple |' in r.stdout and (tmp_path/'compare.csv').exists()
    r = run_cli('thera-compare', tmp_path/'nope')
    assert r.returncode == 2 and 'run folder does not exist' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli('thera-compare', two_runs/'simple', two_runs/'air-ema', '--out', tmp_path/'f0', '--fold', '0', '--n', '0')
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path/'f0'/'compare.csv')['folds'].tolist() == ['1/2', '1/2']
    r = run_cli('thera-compare', two_runs/'simple', '--out', tmp_path/'f1', '--fold', '1')
    assert r.returncode == 2 and 'no run has a finished fold 1' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path/'f1'/'compare.md').exists()


def test_error_agreement_counts_the_errors_runs_share(two_runs):
    runs = [two_runs/'simple', two_runs/'air-ema']
    a = error_agreement(runs)
    rows, table = a['rows'], a['table'].set_index('run')
    assert len(rows) == 48 and list(table.index) == ['simple', 'air-ema', 'blend']
    assert np.allclose(rows['prob_blend'], (rows['prob_simple'] + rows['prob_air-ema']) / 2)
    for run in ('simple', 'air-ema'):  # every out-of-fold row is shared, so each run scores as its own report says
        assert table.loc[run, 'hter_cross'] == tf.report(two_runs/run)['pooled']['cross_fitted']['hter']
        assert table.loc[run, 'errors'] == rows[f'wrong_{run}'].sum()
    both = rows['wrong_simple'] & rows['wrong_air-ema']
    assert (rows['n_wrong'] == rows['wrong_simple'].astype(int) + rows['wrong_air-ema']).all()
    assert table.loc['simple', 'made_by_every_run'] == pytest.approx(both.sum() / max(rows['wrong_simple'].sum(), 1))
    assert table.loc[a['best'], 'shared_with_best'] == (1.0 if table.loc[a['best'], 'errors'] else 0.0)
    for label in (0, 1):
        counts = a['wrong_by'][f'label {label}']
        assert counts.sum() == (rows['label'] == label).sum() and counts[2] == (both & (rows['label'] == label)).sum()


def test_compare_writes_the_rows_every_run_gets_wrong(two_runs, tmp_path):
    tf.compare([two_runs/'simple', two_runs/'air-ema'], tmp_path, n=4)
    shared = pd.read_csv(tmp_path/'shared_errors.csv')
    a = error_agreement([two_runs/'simple', two_runs/'air-ema'])
    assert list(shared['row']) == list(a['rows'].loc[a['rows']['n_wrong'] == 2, 'row'])
    assert all(n == f"{r + 1:06d}.jpg" for n, r in zip(shared['name'], shared['row']))
    md = (tmp_path/'compare.md').read_text()
    assert '## Errors in common' in md and '| blend |' in md
    for label in (0, 1):  # a grid for each label that has such rows, and only then
        has_rows = (shared['label'] == label).any()
        assert (tmp_path/f'shared_errors_label{label}.png').exists() == has_rows and (f'shared_errors_label{label}.png' in md) == has_rows


def _altered_copy(run, dest, change):
    "A copy of `run` whose fold 0 out-of-fold frame went through `change`, re-sealed so that it still counts as finished."
    shutil.copytree(run, dest)
    fold = dest/'fold0'
    change(pd.read_csv(fold/'oof.csv')).to_csv(fold/'oof.csv', index=False)
    info = json.loads((fold/'fold.json').read_text())
    info['files']['oof.csv'] = file_hash(fold/'oof.csv')
    (fold/'fold.json').write_text(json.dumps(info))
    return dest


def test_compare_leaves_a_run_without_finished_folds_out_of_the_agreement(two_runs, tmp_path):
    shutil.copytree(two_runs/'simple', tmp_path/'started')
    (tmp_path/'started'/'fold0'/'fold.json').unlink()
    frame = tf.compare([two_runs/'simple', tmp_path/'started'], tmp_path/'two', n=0)
    assert frame['hter_cross'].isna().tolist() == [False, True]
    assert '## Errors in common' not in (tmp_path/'two'/'compare.md').read_text() and not (tmp_path/'two'/'shared_errors.csv').exists()
    tf.compare([two_runs/'simple', tmp_path/'started', two_runs/'air-ema'], tmp_path/'three', n=0)
    assert '2 runs' in (tmp_path/'three'/'compare.md').read_text().split('## Errors in common')[1]


def test_error_agreement_refuses_runs_that_cannot_be_matched(two_runs, tmp_path):
    flipped = _altered_copy(two_runs/'simple', tmp_path/'flipped', lambda o: o.assign(label=1 - o['label']))
    with pytest.raises(TheraError, match='other labels'): error_agreement([two_runs/'simple', flipped])
    elsewhere = _altered_copy(two_runs/'simple', tmp_path/'elsewhere', lambda o: o.assign(row=o['row'] + 10_000))
    with pytest.raises(TheraError, match='share no out-of-fold row'): error_agreement([two_runs/'simple', elsewhere])
    with pytest.raises(TheraError, match='at least two runs'): error_agreement([two_runs/'simple'])


def test_compare_one_fold_of_every_run_scores_the_same_rows(two_runs, tmp_path):
    "A run with two finished folds against one with fold 0 alone: `fold=0` compares fold 0 of both."
    shutil.copytree(two_runs/'simple', tmp_path/'both')
    tf.fit(two_runs/'data', tmp_path/'both', fold=1, **FIT)
    runs = [tmp_path/'both', two_runs/'air-ema']
    pooled = tf.compare(runs, tmp_path/'all', n=0)
    assert list(pooled['folds']) == ['2/2', '1/2'] and pooled['images_seen'].iloc[0] == 2 * 2 * 48
    one = tf.compare(runs, tmp_path/'f0', n=0, fold=0)
    alone = tf.compare([two_runs/'simple'], tmp_path/'alone', n=0)
    assert list(one['folds']) == ['1/2', '1/2'] and one['images_seen'].iloc[0] == 2 * 48
    assert one['hter_cross'].iloc[0] == alone['hter_cross'].iloc[0] != pooled['hter_cross'].iloc[0]
    assert one['minutes'].iloc[0] < pooled['minutes'].iloc[0]
    assert '## Errors in common' in (tmp_path/'f0'/'compare.md').read_text()  # fold 0's rows, scored by both
    other = tf.compare(runs, tmp_path/'f1', n=0, fold=1)  # air-ema has no fold 1: in the table, out of the agreement
    assert list(other['folds']) == ['1/2', '0/2'] and np.isnan(other['hter_cross'].iloc[1])
    assert '## Errors in common' not in (tmp_path/'f1'/'compare.md').read_text()
    with pytest.raises(TheraError, match='no run has a finished fold 3'): tf.compare(runs, tmp_path/'f3', fold=3)


def test_compare_warns_of_a_run_that_has_not_learned_and_leaves_it_out_of_the_errors(two_runs, tmp_path):
    rng = np.random.default_rng(0)
    noise = _altered_copy(two_runs/'simple', tmp_path/'noise', lambda o: o.assign(prob=rng.random(len(o)), prob_tta=rng.random(len(o))))
    tf.compare([two_runs/'simple', two_runs/'air-ema', noise], tmp_path/'cmp', n=0, n_boot=20)
    md = (tmp_path/'cmp'/'compare.md').read_text()
    assert f"**Warning: {noise} has not learned" in md and md.count('has not learned') == 1
    agreement = md.split('## Errors in common')[1]
    assert 'by all 2 runs' in agreement and '| noise |' not in agreement
    assert list(pd.read_csv(tmp_path/'cmp'/'paired.csv')['run'])[:2] == ['air-ema', 'blend']  # the blend of the two that learned


def _summary(budget=None, **runtimes):
    "A run_summary-shaped dict: a config with `budget` and one fold per runtime given (fold<k>=dict(...))."
    return dict(config=dict(tf.FitConfig(budget=budget).to_dict()), folds={int(k[4:]): dict(runtime=rt) for k, rt in runtimes.items()})


def test_the_terms_a_run_trained_on_are_read_from_its_config_and_folds():
    here = dict(device='cpu', precision='bf16', threads=2, world_size=1, cpu='EPYC, avx512f avx512_bf16', host='a')
    assert run_footing(_summary(600.0, fold0=here)) == dict(budget='10 min', device='cpu', precision='bf16', threads='2',
                                                           world_size='1', cpu='EPYC, avx512f avx512_bf16')
    older = {k: v for k, v in here.items() if k != 'cpu'}  # a fold from before the CPU was recorded
    mixed = run_footing(_summary(None, fold0=older, fold1={**here, 'precision': 'fp32'}))
    assert mixed['budget'] == 'none' and mixed['precision'] == 'bf16 / fp32' and mixed['cpu'] == 'EPYC, avx512f avx512_bf16'
    assert 'cpu' not in run_footing(_summary(None, fold0=older))          # not recorded: left out, not guessed


def test_runs_on_different_terms_are_named_and_runs_on_the_same_are_not():
    a = dict(budget='10 min', precision='bf16', threads='2', cpu='X')
    assert footing_markdown(['r1', 'r2'], [a, dict(a)]) == ''
    assert footing_markdown(['r1', 'r2'], [a, {k: v for k, v in a.items() if k != 'cpu'}]) == ''   # unknown is no difference
    note = footing_markdown(['r1', 'r2', 'r3'], [a, {**a, 'budget': '30 min'}, {**a, 'precision': 'fp32', 'cpu': 'Y'}])
    assert note.startswith('\n**Not on equal terms.**') and note.endswith('\n\n- budget per fold: 10 min (r1, r3); 30 min (r2)\n'
                                                                       '- precision: bf16 (r1, r2); fp32 (r3)\n- CPU: X (r1, r2); Y (r3)\n')


def test_compare_says_when_its_runs_trained_on_different_terms(two_runs, tmp_path):
    tf.compare([two_runs/'simple', two_runs/'air-ema'], tmp_path/'same', n=0, n_boot=0)
    assert 'Not on equal terms' not in (tmp_path/'same'/'compare.md').read_text()   # one machine, one precision, no budget
    other = shutil.copytree(two_runs/'air-ema', tmp_path/'elsewhere')
    info = json.loads((other/'fold0'/'fold.json').read_text())
    threads = info['runtime']['threads']   # what this process had: an earlier test may have set it
    info['runtime'].update(cpu='Another CPU, avx2', threads=threads + 1)
    (other/'fold0'/'fold.json').write_text(json.dumps(info))
    frame = tf.compare([two_runs/'simple', other], tmp_path/'cmp', n=0, n_boot=0)
    md = (tmp_path/'cmp'/'compare.md').read_text()
    assert len(frame) == 2 and frame['hter_cross'].notna().all()             # still compared, with the note
    assert f"\n- threads: {threads} ({two_runs/'simple'}); {threads + 1} ({other})\n" in md and f"; Another CPU, avx2 ({other})\n" in md
    assert md.count('Not on equal terms') == 1 and '- precision' not in md


NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'fastai', 'timm'): raise ImportError(f"{name} is unimportable here")
sys.meta_path.insert(0, NoTorch())
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')   # the console script, as installed
"""


def test_compare_and_report_run_with_torch_unimportable(two_runs, tmp_path):
    import subprocess, sys
    env = {**__import__('os').environ, 'THERA_CACHE': str(tmp_path/'cache')}
    for args in (['compare', two_runs/'simple', two_runs/'air-ema', '--out', tmp_path/'cmp', '--boot', 50],
                 ['report', two_runs/'simple']):
        exe = Path(sys.executable).parent/f"thera-{args[0]}"
        res = subprocess.run([sys.executable, '-c', NO_TORCH, str(exe), *map(str, args[1:])], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path/'cmp'/'compare.md').exists() and '## Differences beyond noise' in (tmp_path/'cmp'/'compare.md').read_text()
    assert (two_runs/'simple'/'report.md').exists()


def test_each_variant_lands_in_its_own_folder_and_compare_takes_them_all(tmp_path, monkeypatch):
    from thera_fastai.api import default_out, make_config
    assert default_out(make_config()) == Path('runs/airbench') and default_out(make_config(arch='simple')) == Path('runs/simple')
    assert default_out(make_config(lr=1e-3, epochs=5)) == Path('runs/airbench-epochs5-lr0.001')
    assert default_out(make_config(method='airbench', budget=600)) == Path('runs/airbench-methodairbench-budget10m')
    assert default_out(make_config(exclude=str(tmp_path/'a'/'deep'/'label_issues.csv'))) == Path('runs/airbench-excludelabelissues')
    long = default_out(make_config(exclude=str(tmp_path/'label_issues_of_the_whole_training_set.csv'), ema=0.999))
    assert long.name.startswith('airbench-') and len(long.name) == len('airbench-') + 8
    write_dataset(tmp_path/'data', n_train=64, n_val=4)
    monkeypatch.chdir(tmp_path)
    said = []
    for lr in (3e-3, 1e-3):
        tf.fit(tmp_path/'data', fold=0, **{**FIT, 'log': said.append, 'lr': lr})
    folders = sorted(p.name for p in (tmp_path/'runs').iterdir())
    assert folders == ['simple-folds2-epochs2-bs16-lr0.001-tta0', 'simple-folds2-epochs2-bs16-tta0'], folders   # 3e-3 is the recipe's
    assert sum(l.startswith('run folder: runs/simple-') for l in said) == 2
    frame = tf.compare(sorted((tmp_path/'runs').iterdir()), n=0, n_boot=20)
    assert len(frame) == 2 and (tmp_path/'runs'/'compare'/'compare.md').exists()
