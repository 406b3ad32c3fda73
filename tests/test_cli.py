"""The console scripts: arguments checked against the config, bad input as one line with exit 2 and nothing written,
and (slow tier) end-to-end runs in fresh processes: fit, predict, report, resume after SIGKILL, Ctrl-C."""
import inspect, json, os, signal, subprocess, sys, time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, write_dataset
from thera_fastai import cli
from thera_fastai.config import FitConfig, Runtime

FIT = ('--arch', 'simple', '--folds', 2, '--epochs', 3, '--bs', 32, '--tta', 2, '--precision', 'fp32')
slow = pytest.mark.slow


def test_fit_flags_cover_the_config_with_its_defaults():
    params = inspect.signature(cli.fit.__wrapped__).parameters
    for f in fields(FitConfig):
        if f.name == 'image_size': continue   # library-only: not a flag
        if f.type is bool and f.default is True: assert params[f"no_{f.name}"].default is False, f.name
        else: assert params[f.name].default == f.default, f.name
    for f in fields(Runtime):
        if f.name != 'channels_last': assert params[f.name].default == f.default


def test_every_command_the_api_and_the_modules_share_one_default_per_flag():
    from thera_fastai import api
    from thera_fastai.analysis.comparison import write_comparison
    from thera_fastai.analysis.explore import explore_dataset
    from thera_fastai.analysis.label_audit import write_audit
    from thera_fastai.infer.demo import serve
    from thera_fastai.train.sweep import sweep
    def defaults(f): return {k: p.default for k, p in inspect.signature(getattr(f, '__wrapped__', f)).parameters.items() if p.default is not p.empty}
    pairs = [(cli.explore, api.explore), (cli.compare, api.compare), (cli.audit, api.audit), (cli.predict, api.predict),
             (api.explore, explore_dataset), (api.compare, write_comparison), (api.audit, write_audit), (cli.sweep, sweep), (cli.demo, serve)]
    checked = 0
    for a, b in pairs:
        da, db = defaults(a), defaults(b)
        for name in (set(da) & set(db)) - {'out', 'version'}:  # a command's --out is a file where the library takes a folder
            assert da[name] == db[name], (a.__name__, b.__module__, name, da[name], db[name]); checked += 1
    assert checked >= 12
    assert defaults(cli.compare)['boot'] == defaults(api.compare)['n_boot']


def _cli(monkeypatch, capsys, func, *args):
    "Runs a console script in this process, its arguments parsed as call_parse does; returns (exit code, stdout, stderr)."
    from fastcore.script import anno_parser
    code = 0
    pos = ['run'] if func is cli.report else None   # as its @call_parse(pos=...) declares
    parsed = vars(anno_parser(func.__wrapped__, pos=pos).parse_args(list(map(str, args))))
    params = inspect.signature(func.__wrapped__).parameters
    star = [v for k, v in parsed.items() if params.get(k) and params[k].kind is inspect.Parameter.VAR_POSITIONAL]
    try: func.__wrapped__(*(star[0] if star else ()), **{k: v for k, v in parsed.items() if k in params and not (star and params[k].kind is inspect.Parameter.VAR_POSITIONAL)})
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize('args, needle', [
    (['--data', 'MISSING'], 'MISSING: does not exist'),
    (['--folds', 1], '--folds must be an integer of at least 2 (got 1)'),
    (['--bs', 0], '--bs must be an integer of at least 1 (got 0)'),
    (['--tta', -1], '--tta must be an integer of at least 0 (got -1)'),
    (['--lr', 0], '--lr must be in (0, 10) (got 0.0)'),
    (['--lr', -1], '--lr must be in (0, 10) (got -1.0)'),
    (['--stem', 'default'], '--stem applies to timm models only'),
    (['--arch', 'resnet18', '--stem', 'wide'], "--stem must be one of default, nopool, conv3 (got 'wide')"),
    (['--arch', 'resnet81'], "--arch 'resnet81' is neither a package model (simple, resnet18, airbench) nor a timm model; closest names: resnet18"),
    (['--resize-from', 64], '--resize-from must be below the image size 64'),
    (['--head', 'avg'], "--head must be one of max, concat, grid (got 'avg')"),
    (['--arch', 'simple', '--head', 'grid'], '--head applies to --arch airbench only'),
    (['--widths', '32/x/128'], "--widths '32/x/128' is not widths like 32/128/128 or 16/32,32/64,64"),
    (['--exclude', 'MISSING.txt'], 'MISSING.txt: cannot read the row list'),
    (['--distill', 'MISSING'], 'MISSING: run folder does not exist'),
    (['--precision', 'fp64'], "--precision must be one of auto, bf16, fp16, fp32 (got 'fp64')"),
    (['--precision', 'fp16'], "--precision fp16 needs a CUDA GPU (use bf16 or fp32 on a CPU)"),
    (['--device', 'cuda'], '--device is cuda but no CUDA GPU is visible'),
    (['--threads', 0], '--threads must be an integer of at least 1'),
    (['--fold', 7], '--fold 7 is out of range for 5 folds (0..4)'),
    (['--sample', 10**6], '--sample 1000000 is larger than the 96 labelled images'),
    (['--folds', 40], '--folds 40 is more than the'),
    (['--out', '/proc/forbidden/run'], 'cannot create the output folder'),
    (['--out', 'FILE/run'], 'cannot create the output folder (a file is in the way)'),
    (['--out', 'FILE'], 'FILE: cannot create the output folder (a file is in the way)'),
    (['--cache', 'FILE/cache'], 'cannot create the cache folder (a file is in the way)'),
])
def test_fit_bad_input_is_one_line_exit_2_and_writes_nothing(args, needle, tiny_folder, tmp_path, monkeypatch, capsys):
    (tmp_path/'FILE').write_text('')
    full = {'--data': tiny_folder, '--out': tmp_path/'run', '--epochs': 1}
    full.update(dict(zip(args[::2], [str(a).replace('FILE', str(tmp_path/'FILE')) for a in args[1::2]])))
    code, _, err = _cli(monkeypatch, capsys, cli.fit, *[x for kv in full.items() for x in kv], '--quiet')
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path/'run').exists()


@pytest.mark.parametrize('args, needle', [
    (['--arch', 'resnet18', '--weights', 'MISSING.pth'], 'MISSING.pth: the weights file does not exist'),
    (['--arch', 'resnet18', '--weights', 'FILE'], 'FILE: cannot read weights'),
    (['--arch', 'resnet18', '--pretrained'], "--pretrained timm could not get pretrained resnet18 weights: they are not in this machine's cache"),
])
def test_a_start_the_fit_cannot_make_is_refused_before_decoding(args, needle, tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path/'hub')); monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    (tmp_path/'FILE').write_text('not weights')
    args = [str(a).replace('FILE', str(tmp_path/'FILE')) for a in args]
    code, _, err = _cli(monkeypatch, capsys, cli.fit, '--data', tiny_folder, '--out', tmp_path/'run', *args, '--quiet')
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path/'run').exists() and not (tmp_path/'cache').exists()


def test_predict_report_explore_bad_input(tiny_folder, tmp_path, monkeypatch, capsys):
    empty = tmp_path/'empty'; empty.mkdir()
    run = tmp_path/'run'; run.mkdir(); (run/'config.json').write_text('{"run_id": "x", "config": {')
    cases = [(cli.predict, ['--models', empty, '--data', tiny_folder], 'not a thera-fit output folder'),
             (cli.predict, ['--models', run, '--data', tiny_folder], 'config.json: run config is not valid JSON'),
             (cli.predict, ['--models', empty, '--data', tiny_folder, '--out', tmp_path/'no'/'l.txt'], 'output folder does not exist'),
             (cli.predict, ['--models', empty, '--data', tiny_folder, '--tta', -1], '--tta must be 0 or more (got -1)'),
             (cli.report, [tmp_path/'nothing'], 'run folder does not exist'),
             (cli.compare, [empty, empty], f'{empty}: no config.json: not a thera-fit output folder'),
             (cli.explore, ['--data', tiny_folder, '--n', 0, '--out', tmp_path/'e.png'], '--n must be at least 1 (got 0)')]
    (run/'fold0').mkdir(); (run/'fold0'/'fold.json').write_text('')
    for func, args, needle in cases:
        code, _, err = _cli(monkeypatch, capsys, func, *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path/'l.txt').exists() and not (tmp_path/'e.png').exists()


def test_bad_input_in_a_fresh_process_prints_one_line(tmp_path):
    res = run_cli('thera-fit', '--data', tmp_path/'missing.zip', '--quiet')
    assert res.returncode == 2 and res.stderr.strip() == f"thera-fit: error: {tmp_path/'missing.zip'}: does not exist"


@pytest.mark.parametrize('command, args', [('thera-predict', ['--data', '.', '--out', 'out.txt']), ('thera-export', ['--out', 'export'])])
def test_an_unknown_vote_rule_is_one_line_before_any_run_is_read(command, args, tmp_path):
    res = run_cli(command, '--models', tmp_path/'no-run', '--vote', 'mean', *[tmp_path/a if a != '.' and not a.startswith('--') else a for a in args])
    assert res.returncode == 2 and res.stderr.strip() == f"{command}: error: --vote must be one of soft, hard (got 'mean')"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A 2-fold fit on 300 generated images, and its folder; paths relative to the working folder, as users type them."
    root = tmp_path_factory.mktemp('fit')
    write_dataset(root/'data', n_train=300, n_val=40)
    import simplejpeg
    gray = simplejpeg.encode_jpeg(np.full((64, 64, 1), 150, np.uint8), colorspace='GRAY')
    (root/'data'/'train_img'/'000004.jpg').write_bytes(gray)   # a grayscale JPEG: converted, with a warning the user sees
    res = run_cli('thera-fit', '--data', 'data', '--out', 'run', *FIT, '--quiet', env={'THERA_CACHE': str(root/'cache'), 'THERA_COMPILE': '1'},
                  cwd=root)   # torch.compile on for the out-of-fold predictions: its notices must not reach the output
    assert res.returncode == 0, res.stderr
    (root/'fit.log').write_text(res.stdout + res.stderr)
    return root


@slow
def test_fit_writes_weights_oof_and_report(trained):
    run = trained/'run'
    report = json.loads((run/'report.json').read_text())
    assert report['complete'] and set(report['folds']) == {'0', '1'}
    oof = pd.concat([pd.read_csv(run/f"fold{k}"/'oof.csv') for k in (0, 1)])
    assert sorted(oof['row']) == list(range(300))          # every row predicted once, out of fold
    assert report['pooled']['at_05']['hter'] < 0.2          # the dark band is easy to learn
    assert '| pooled |' in (run/'report.md').read_text()
    assert len(pd.read_csv(run/'fold0'/'history.csv')) == 3
    for png in ('history.png', 'roc.png', 'confusion.png'):
        assert (run/png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and f"]({png})" in (run/'report.md').read_text()


@slow
def test_redirected_fit_logs_one_line_per_epoch_and_no_third_party_noise(trained):
    log = (trained/'fit.log').read_text()
    assert len(log.encode()) < 20_000 and log.count('fold 0 epoch') == 3
    assert 'train_img/000004.jpg: Gray JPEG converted to RGB' in log            # the package's own warning shows
    assert 'CUDA' not in log and 'FutureWarning' not in log and 'DeprecationWarning' not in log and '\r' not in log


@slow
def test_predict_writes_labels_in_file_name_order_and_repeats_itself(trained, tmp_path):
    outs = []
    for i in (1, 2):
        out = tmp_path/f"label_val{i}.txt"
        res = run_cli('thera-predict', '--models', trained/'run', '--data', trained/'data', '--out', out,
                      env={'THERA_CACHE': str(tmp_path/'cache'), 'THERA_COMPILE': '1'})
        assert res.returncode == 0, res.stderr
        outs.append(out)
    labels = outs[0].read_text().splitlines()
    assert len(labels) == 40 and set(labels) <= {'0', '1'} and outs[1].read_text() == outs[0].read_text()
    votes = pd.read_csv(tmp_path/'label_val1_votes.csv', dtype={'image': str})
    assert list(votes['image']) == [f"{i:06d}.jpg" for i in range(1, 41)]
    assert (votes['label'].astype(str) == labels).all()
    assert votes.equals(pd.read_csv(tmp_path/'label_val2_votes.csv', dtype={'image': str}))
    truth = np.loadtxt(trained/'data'/'val_truth.txt', dtype=int)
    assert (np.array(labels, dtype=int) == truth).mean() > 0.85
    assert '40 images, 2 fold models, TTA 2' in res.stdout
    assert 'CUDA' not in res.stderr and 'Warning' not in res.stderr   # torch.compile ran: its notices are silenced


@slow
def test_fold_rebuilt_in_a_fresh_process_predicts_within_1e6(trained):
    code = ("import sys, numpy as np, pandas as pd, thera_fastai as tf; from thera_fastai.data.loaders import images_dl; "
            "from thera_fastai.infer.inference import predict_probs; oof = pd.read_csv(sys.argv[1] + '/fold0/oof.csv'); "
            "learn = tf.load_fold_learner(sys.argv[1] + '/fold0'); "
            "imgs = tf.cached_images(tf.open_dataset(sys.argv[2]).train)[oof['row'].to_numpy()]; "
            "print(np.abs(predict_probs(learn, images_dl(learn.dls, imgs)) - oof['prob'].to_numpy()).max())")
    res = subprocess.run([sys.executable, '-c', code, str(trained/'run'), str(trained/'data')], capture_output=True,
                         text=True, env={**os.environ, 'THERA_CACHE': str(trained/'cache')}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.strip().splitlines()[-1]) < 1e-6


@slow
def test_report_command_gathers_the_folds(trained):
    res = run_cli('thera-report', trained/'run')
    assert res.returncode == 0 and 'run: complete' in res.stdout and 'pooled out-of-fold HTER over 2 folds' in res.stdout


@slow
def test_rerun_skips_finished_folds(trained):
    res = run_cli('thera-fit', '--data', trained/'data', '--out', trained/'run', *FIT, env={'THERA_CACHE': str(trained/'cache')})
    assert res.returncode == 0 and res.stdout.count('already finished, skipped') == 2


def _start_fit(tmp_path, *extra):
    write_dataset(tmp_path/'data', n_train=400, n_val=8)
    args = ['--data', tmp_path/'data', '--out', tmp_path/'run', '--folds', 2, '--epochs', 6, '--bs', 16, '--tta', 0,
            '--precision', 'fp32', *extra]
    exe = Path(sys.executable).parent/'thera-fit'
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps it ignored in the
    # child: give thera-fit the default disposition, as a terminal would, or the test depends on how pytest was run.
    proc = subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'THERA_CACHE': str(tmp_path/'cache')},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list((tmp_path/'run'/'fold1').glob('ckpt-e*.pth')) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "thera-fit ended before fold 1's first checkpoint was seen"
    return proc, args


@slow
def test_sigkill_mid_fold_then_resume(tmp_path):
    proc, args = _start_fit(tmp_path)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert (tmp_path/'run'/'fold0'/'fold.json').exists() and not (tmp_path/'run'/'fold1'/'fold.json').exists()
    res = run_cli('thera-fit', *args, env={'THERA_CACHE': str(tmp_path/'cache')})
    assert res.returncode == 0, res.stderr
    assert 'fold 0/2: already finished, skipped' in res.stdout
    assert json.loads((tmp_path/'run'/'fold1'/'fold.json').read_text())['resumed_from_epoch'] >= 1
    assert list(pd.read_csv(tmp_path/'run'/'fold1'/'history.csv')['epoch']) == list(range(6))
    assert not list(tmp_path.rglob('*.tmp'))


@slow
def test_sigint_stops_cleanly_and_says_how_to_resume(tmp_path):
    proc, _ = _start_fit(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert 'interrupted: fold(s) 0 finished; fold 1 stopped after epoch' in err and 'Rerun the same command' in err
    assert 'Traceback' not in err


@slow
def test_predict_takes_a_zip_of_val_img_only_and_refuses_a_broken_fold(trained, tmp_path):
    import shutil, zipfile
    z = tmp_path/'val_only.zip'
    with zipfile.ZipFile(z, 'w') as zf:
        for p in sorted((trained/'data'/'val_img').iterdir()): zf.write(p, f"val_img/{p.name}")
    env = {'THERA_CACHE': str(trained/'cache')}
    res = run_cli('thera-predict', '--models', trained/'run', '--data', z, '--out', tmp_path/'a.txt', '--quiet', env=env)
    assert res.returncode == 0 and len((tmp_path/'a.txt').read_text().splitlines()) == 40, res.stderr
    run = tmp_path/'run'; shutil.copytree(trained/'run', run)
    (run/'fold1'/'fold.json').write_text((run/'fold1'/'fold.json').read_text()[:50])   # truncated
    res = run_cli('thera-predict', '--models', run, '--data', z, '--out', tmp_path/'b.txt', '--quiet', env=env)
    assert res.returncode == 2 and 'fold1/fold.json: fold file is not valid JSON' in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path/'b.txt').exists()


@slow
def test_corrupt_member_in_zip_is_named(tiny_zip, tmp_path):
    data = bytearray(tiny_zip.read_bytes())
    at = data.find(b'train_img/000010.jpg') + 200     # inside the stored JPEG after its local header
    data[at:at + 50] = bytes(50)
    bad = tmp_path/'bad.zip'; bad.write_bytes(bytes(data))
    res = run_cli('thera-fit', '--data', bad, '--out', tmp_path/'run', '--quiet')
    assert res.returncode == 2 and 'train_img/000010.jpg: cannot read (Bad CRC-32' in res.stderr, res.stderr
    assert not (tmp_path/'run').exists()


@slow
def test_real_slice_fit_and_predict(real_slice, tmp_path):
    env = {'THERA_CACHE': str(tmp_path/'cache')}
    res = run_cli('thera-fit', '--data', real_slice, '--out', tmp_path/'run', '--folds', 2, '--epochs', 1, '--bs', 32,
                  '--tta', 1, env=env)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path/'run'/'report.json').read_text())
    assert report['n_images'] == 400 and report['complete']
    config = json.loads((tmp_path/'run'/'config.json').read_text())['config']
    assert config['arch'] == 'airbench' and config['label_smoothing'] == 0.2   # the default recipe
    res = run_cli('thera-predict', '--models', tmp_path/'run', '--data', real_slice, '--out', tmp_path/'label_val.txt',
                  '--quiet', env=env)
    assert res.returncode == 0, res.stderr
    labels = (tmp_path/'label_val.txt').read_text().splitlines()
    assert len(labels) == 50 and set(labels) <= {'0', '1'}


@pytest.mark.slow
def test_paths_with_spaces_and_non_ascii_characters_go_through_the_whole_loop(tmp_path):
    pytest.importorskip('onnxruntime')
    import shlex
    import thera_fastai as tf
    data, out = tmp_path/'dønnées é'/'data', tmp_path/'rü ns'/'x y'
    write_dataset(data, n_train=64, n_val=6)
    env = dict(THERA_CACHE=str(tmp_path/'cä che'))
    tf.fit(data, out, arch='simple', folds=2, epochs=1, bs=16, tta=0, precision='fp32', cache=env['THERA_CACHE'], log=lambda *_: None)
    labels = tmp_path/'rü ns'/'lab é.txt'
    r = run_cli('thera-predict', '--models', out, '--data', data, '--out', labels, '--tta', 0, env=env)
    assert r.returncode == 0, r.stderr
    assert len(labels.read_text().split()) == 6 and (tmp_path/'rü ns'/'lab é_votes.csv').exists()
    r = run_cli('thera-export', '--models', out, '--out', tmp_path/'rü ns'/'exp ö', env=env)
    assert r.returncode == 0, r.stderr
    command = r.stdout.strip().split(': ', 1)[1].split(' (needs')[0]  # the command it prints, as a user pastes it
    command = command.replace('IMAGES', shlex.quote(str(data/'val_img'))).replace('label_val.txt', shlex.quote(str(tmp_path/'ö.txt')))
    r = subprocess.run(['bash', '-c', command.replace('python', shlex.quote(sys.executable), 1)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'ö.txt').read_text() == labels.read_text()
