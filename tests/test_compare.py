"""thera-compare: runs side by side as Markdown, CSV and a plot."""
import pandas as pd
import pytest

import thera_fastai as tf
from conftest import run_cli, write_dataset
from thera_fastai.comparison import minutes_to_reach, recipe_text
from thera_fastai.errors import TheraError

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
    assert list(frame['arch']) == ['simple', 'airbench'] and list(frame['recipe']) == ['bs=16', 'bs=16, ema=0.9']
    assert frame['params_m'].iloc[1] > frame['params_m'].iloc[0] > 0 and (frame['train_gflop'] > 0).all()
    assert (frame['images_seen'] == 2 * 48).all() and list(frame['folds']) == ['1/2', '1/2']
    for run, row in zip(('simple', 'air-ema'), frame.itertuples()):
        assert row.hter_cross == tf.report(two_runs/run)['pooled']['cross_fitted']['hter']
    csv = pd.read_csv(tmp_path/'compare.csv')
    assert list(csv['arch']) == ['simple', 'airbench'] and 'min_to_0.6' in csv.columns
    md = (tmp_path/'compare.md').read_text()
    assert md.count('\n') == 4 and '| airbench |' in md and (tmp_path/'compare.png').stat().st_size > 1000


def test_minutes_to_reach_reads_the_history():
    h = pd.DataFrame(dict(hter=[0.3, 0.09, 0.07, 0.08], time=['01:30', '01:30', '1:00:00', '01:00']))
    assert minutes_to_reach(h, 0.08) == pytest.approx(63.0) and minutes_to_reach(h, 0.09) == pytest.approx(3.0)
    assert minutes_to_reach(h, 0.01) != minutes_to_reach(h, 0.01)  # NaN: never reached


def test_recipe_text_names_what_differs_from_the_arch_defaults():
    assert recipe_text(tf.FitConfig(arch='resnet18').to_dict()) == 'default'
    assert recipe_text(tf.FitConfig(lr=1e-3, resize_from=32).to_dict()) == 'lr=0.001, resize_from=32'


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(TheraError, match='run folder does not exist'): tf.compare([tmp_path/'missing'], tmp_path)


@pytest.mark.slow
def test_compare_cli(two_runs, tmp_path):
    r = run_cli('thera-compare', two_runs/'simple', two_runs/'air-ema', '--out', tmp_path)
    assert r.returncode == 0, r.stderr
    assert '| simple |' in r.stdout and (tmp_path/'compare.csv').exists()
    r = run_cli('thera-compare', tmp_path/'nope')
    assert r.returncode == 2 and 'run folder does not exist' in r.stderr and len(r.stderr.strip().splitlines()) == 1
