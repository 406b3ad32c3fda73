"""The console scripts end to end, in fresh processes: fit, predict, resume after SIGKILL, clear errors."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, write_dataset
from thera_fastai.training import FitConfig

FIT = ('--folds', 2, '--epochs', 3, '--bs', 32, '--tta', 2, '--quiet')
PRED_TOL = 2e-6 if FitConfig().precision == 'fp32' else 5e-3  # one process's prediction against another's


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A 2-fold fit on 300 generated images, and its folder; paths relative to the working folder, as users type them."
    root = tmp_path_factory.mktemp('fit')
    write_dataset(root/'data', n_train=300, n_val=40)
    res = run_cli('thera-fit', '--data', 'data', '--out', 'run', *FIT, env={'THERA_CACHE': str(root/'cache')}, cwd=root)
    assert res.returncode == 0, res.stderr
    return root


def test_fit_writes_learners_oof_and_report(trained):
    run = trained/'run'
    report = json.loads((run/'report.json').read_text())
    assert report['complete'] and set(report['folds']) == {'0', '1'}
    oof = pd.concat([pd.read_csv(run/f"fold{k}"/'oof.csv') for k in (0, 1)])
    assert sorted(oof['row']) == list(range(300))          # every row predicted once, out of fold
    assert report['pooled']['at_05']['hter'] < 0.2          # the dark band is easy to learn
    assert 0 < report['pooled']['best_threshold'] < 1
    assert '| pooled |' in (run/'report.md').read_text()
    assert (run/'fold0'/'model.pkl').stat().st_size < 5e6   # exported without the images
    assert len((run/'fold0'/'history.csv').read_text().splitlines()) == 4
    for png in ('history.png', 'roc.png', 'confusion.png'):
        assert (run/png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and f"]({png})" in (run/'report.md').read_text()


def test_predict_writes_labels_in_file_name_order(trained, tmp_path):
    out = tmp_path/'label_val.txt'
    res = run_cli('thera-predict', '--models', trained/'run', '--data', trained/'data', '--out', out, '--tta', 2,
                  env={'THERA_CACHE': str(tmp_path/'cache')})  # progress bars on, decoding into a fresh cache
    assert res.returncode == 0, res.stderr
    labels = out.read_text().splitlines()
    assert len(labels) == 40 and set(labels) <= {'0', '1'}
    votes = pd.read_csv(tmp_path/'label_val_votes.csv', dtype={'image': str})
    assert list(votes['image']) == [f"{i:06d}.jpg" for i in range(1, 41)]
    assert (votes['label'].astype(str) == labels).all()
    truth = np.loadtxt(trained/'data'/'val_truth.txt', dtype=int)
    assert (np.array(labels, dtype=int) == truth).mean() > 0.85
    assert '40 images, 2 fold models' in res.stdout


def test_same_seed_same_folds_and_predictions(trained, tmp_path):
    res = run_cli('thera-fit', '--data', trained/'data', '--out', tmp_path/'again', *FIT,
                  env={'THERA_CACHE': str(trained/'cache')})
    assert res.returncode == 0, res.stderr
    for k in (0, 1):
        a, b = (pd.read_csv(d/f"fold{k}"/'oof.csv') for d in (trained/'run', tmp_path/'again'))
        assert (a['row'] == b['row']).all()
        # Training is bit-identical (every epoch's losses); a prediction may differ in the 7th decimal in fp32,
        # as oneDNN's summation order depends on where a buffer lands in memory; in bf16 that difference
        # can flip a rounding, moving a few rows by up to a few 1e-3.
        ha, hb = (pd.read_csv(d/f"fold{k}"/'history.csv') for d in (trained/'run', tmp_path/'again'))
        assert ha[['train_loss', 'valid_loss']].equals(hb[['train_loss', 'valid_loss']])
        for col in ('prob', 'prob_tta'):
            diff = (a[col] - b[col]).abs()
            assert diff.max() < PRED_TOL, (col, diff.max())


def test_rerun_skips_finished_folds(trained):
    res = run_cli('thera-fit', '--data', trained/'data', '--out', trained/'run', *FIT,
                  env={'THERA_CACHE': str(trained/'cache')})
    assert res.returncode == 0 and res.stdout.count('already finished, skipped') == 2


def test_sigkill_mid_fold_then_resume(tmp_path):
    write_dataset(tmp_path/'data', n_train=400, n_val=8)
    args = ['--data', tmp_path/'data', '--out', tmp_path/'run', '--folds', 2, '--epochs', 6, '--bs', 16, '--tta', 0, '--quiet']
    exe = Path(sys.executable).parent/'thera-fit'
    proc = subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, 'THERA_CACHE': str(tmp_path/'cache')})
    deadline = time.time() + 300
    while not list((tmp_path/'run'/'fold1').glob('ckpt-e*.pth')) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert (tmp_path/'run'/'fold0'/'done.json').exists() and not (tmp_path/'run'/'fold1'/'done.json').exists()
    res = run_cli('thera-fit', *args, env={'THERA_CACHE': str(tmp_path/'cache')})
    assert res.returncode == 0, res.stderr
    assert 'fold 0/2: already finished, skipped' in res.stdout
    assert json.loads((tmp_path/'run'/'fold1'/'done.json').read_text())['resumed_from_epoch'] >= 1
    from thera_fastai.plots import read_history
    assert list(read_history(tmp_path/'run'/'fold1'/'history.csv')['epoch']) == list(range(6))
    assert not list(tmp_path.rglob('*.tmp'))


def test_sigint_stops_cleanly_and_says_how_to_resume(tmp_path):
    write_dataset(tmp_path/'data', n_train=400, n_val=8)
    exe = Path(sys.executable).parent/'thera-fit'
    args = ['--data', tmp_path/'data', '--out', tmp_path/'run', '--folds', 2, '--epochs', 6, '--bs', 16, '--tta', 0, '--quiet']
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps it ignored in the
    # child: give thera-fit the default disposition, as a terminal would, or the test depends on how pytest was run.
    proc = subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'THERA_CACHE': str(tmp_path/'cache')},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list((tmp_path/'run'/'fold1').glob('ckpt-e*.pth')) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "thera-fit ended before fold 1's first checkpoint was seen"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert 'interrupted: fold(s) 0 finished; fold 1 stopped after epoch' in err and 'Rerun the same command' in err
    assert 'Traceback' not in err


def test_changed_config_in_same_out_is_refused(trained):
    args = list(FIT); args[1] = 3
    res = run_cli('thera-fit', '--data', trained/'data', '--out', trained/'run', *args, env={'THERA_CACHE': str(trained/'cache')})
    assert res.returncode == 2 and 'holds a run with another config (folds differ)' in res.stderr
    assert 'Traceback' not in res.stderr


@pytest.mark.parametrize('args, needle', [
    (['--data', 'MISSING'], 'MISSING: does not exist'),
    (['--folds', 1], '--folds must be at least 2'),
    (['--sample', 10**6], '--sample 1000000 is larger than the 96 labelled images'),
    (['--out', '/proc/forbidden/run'], 'cannot create the output folder'),
    (['--arch', 'vgg'], "unknown arch 'vgg'"),
])
def test_fit_bad_input_is_one_line_exit_2(tiny_folder, tmp_path, args, needle):
    full = {'--data': tiny_folder, '--out': tmp_path/'run'}
    full.update(dict(zip(args[::2], args[1::2])))
    res = run_cli('thera-fit', *[x for kv in full.items() for x in kv], '--quiet')
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and 'Traceback' not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_predict_bad_models_and_output(trained, tiny_folder, tmp_path):
    empty = tmp_path/'empty'; empty.mkdir()
    res = run_cli('thera-predict', '--models', empty, '--data', tiny_folder, '--out', tmp_path/'l.txt')
    assert res.returncode == 2 and 'not a thera-fit output folder' in res.stderr
    res = run_cli('thera-predict', '--models', trained/'run', '--data', tiny_folder, '--out', tmp_path/'no'/'l.txt')
    assert res.returncode == 2 and 'output folder does not exist' in res.stderr
    assert not (tmp_path/'l.txt').exists()


def test_learners_from_another_run_or_image_size_are_refused(trained, tmp_path):
    import shutil
    run = tmp_path/'mixed'
    shutil.copytree(trained/'run', run)
    done = json.loads((run/'fold1'/'done.json').read_text())
    (run/'fold1'/'done.json').write_text(json.dumps({**done, 'run_id': 'another'}))
    res = run_cli('thera-predict', '--models', run, '--data', trained/'data', '--out', tmp_path/'l.txt',
                  env={'THERA_CACHE': str(trained/'cache')})
    assert res.returncode == 2 and 'fold1/model.pkl: learner comes from another run' in res.stderr
    cfg = json.loads((run/'config.json').read_text())
    cfg['config']['image_size'] = [32, 32, 3]
    (run/'config.json').write_text(json.dumps(cfg))
    res = run_cli('thera-predict', '--models', run, '--data', trained/'data', '--out', tmp_path/'l.txt',
                  env={'THERA_CACHE': str(trained/'cache')})
    assert res.returncode == 2 and 'models were trained on (32, 32, 3) images, the data is (64, 64, 3)' in res.stderr
    assert not (tmp_path/'l.txt').exists()


def test_exported_learner_predicts_the_same_in_a_fresh_process(trained):
    code = ("import sys, json, numpy as np; from thera_fastai.training import load_fold_learner, FitConfig; "
            "from thera_fastai.source import open_dataset; from thera_fastai.cache import cached_images; "
            "from thera_fastai.data import images_dl; from thera_fastai.inference import predict_probs; "
            "import pandas as pd; oof = pd.read_csv(sys.argv[1] + '/fold0/oof.csv'); "
            "config = json.load(open(sys.argv[1] + '/config.json'))['config']; "
            "assert config['precision'] == FitConfig().precision; "
            "learn = load_fold_learner(sys.argv[1] + '/fold0/model.pkl', config); "
            "print(sorted(type(c).__name__ for c in learn.cbs)); "
            "imgs = cached_images(open_dataset(sys.argv[2]).train)[oof['row'].to_numpy()]; "
            "p = predict_probs(learn, images_dl(learn.dls, imgs)); print(np.abs(p - oof['prob'].to_numpy()).max())")
    res = subprocess.run([sys.executable, '-c', code, str(trained/'run'), str(trained/'data')], capture_output=True,
                         text=True, env={**os.environ, 'THERA_CACHE': str(trained/'cache')}, timeout=300)
    assert res.returncode == 0, res.stderr
    cbs, diff = res.stdout.strip().splitlines()[-2:]
    assert 'ChannelsLast' in cbs and ('BF16Autocast' in cbs) == (FitConfig().precision == 'bf16')  # as it was trained
    assert float(diff) < PRED_TOL


def test_corrupt_member_in_zip_is_named(tiny_zip, tmp_path):
    data = bytearray(tiny_zip.read_bytes())
    at = data.find(b'train_img/000010.jpg') + 200     # inside the stored JPEG after its local header
    data[at:at + 50] = bytes(50)
    bad = tmp_path/'bad.zip'; bad.write_bytes(bytes(data))
    res = run_cli('thera-fit', '--data', bad, '--out', tmp_path/'run', '--quiet')
    assert res.returncode == 2 and 'train_img/000010.jpg: cannot read (Bad CRC-32' in res.stderr, res.stderr


def test_real_slice_fit_and_predict(real_slice, tmp_path):
    env = {'THERA_CACHE': str(tmp_path/'cache')}
    res = run_cli('thera-fit', '--data', real_slice, '--out', tmp_path/'run', '--folds', 2, '--epochs', 1, '--bs', 32,
                  '--tta', 1, env=env)  # progress bars on
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path/'run'/'report.json').read_text())
    assert report['n_images'] == 400 and report['complete']
    res = run_cli('thera-predict', '--models', tmp_path/'run', '--data', real_slice, '--out', tmp_path/'label_val.txt',
                  '--tta', 1, '--quiet', env=env)
    assert res.returncode == 0, res.stderr
    labels = (tmp_path/'label_val.txt').read_text().splitlines()
    assert len(labels) == 50 and set(labels) <= {'0', '1'}
    votes = pd.read_csv(tmp_path/'label_val_votes.csv', dtype={'image': str})
    assert list(votes['image']) == [f"{i:06d}.jpg" for i in range(1, 51)]
