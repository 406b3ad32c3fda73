"""The benchmark scripts: each budget candidate is a valid recipe whose teacher trains first; a study table comes from thera-compare's files; the lever ledger gathers the studies' levers; the ensemble study runs end to end and writes its tables with paired intervals; the conv floor times each convolution; the batch sweep times each batch size."""
import os, re, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from thera_fastai.analysis.paired import cross_fitted_hter_of
from thera_fastai.metrics import hter

sys.path.insert(0, str(Path(__file__).parents[1]/'bench'))
import budget_study  # noqa: E402
from recipe_study import parse_variants  # noqa: E402


def test_every_budget_candidate_is_a_valid_recipe_and_its_teacher_trains_first():
    variants = parse_variants(budget_study.CANDIDATES)
    names = [name for name, _ in variants]
    assert len(names) == len(set(names))
    configs = budget_study.candidate_configs(budget_study.CANDIDATES, 'runs')
    assert [name for name, _ in configs] == names
    for i, ((name, over), (_, cfg)) in enumerate(zip(variants, configs)):
        assert cfg.arch == over['arch'] and cfg.folds == 5
        teacher = over.get('distill')
        if teacher is not None:
            assert teacher.startswith('@') and teacher[1:] in names[:i], f"{name}: teacher {teacher} is not an earlier candidate"
            assert cfg.distill == str((Path('runs')/teacher[1:]).absolute())


def test_parse_variants_reads_names_and_typed_overrides():
    assert parse_variants('air:arch="airbench",ema=0.99,epochs=3;plain:') == [
        ('air', {'arch': 'airbench', 'ema': 0.99, 'epochs': 3}), ('plain', {})]
    assert parse_variants('w:widths=(32,128,128),hyp={"whiten":False,"lr_end":0.1}') == [
        ('w', {'widths': (32, 128, 128), 'hyp': {'whiten': False, 'lr_end': 0.1}})]  # commas inside a value stay in it


@pytest.mark.slow
def test_a_study_table_is_made_from_a_thera_compare_folder(tmp_path):
    import method_study
    (tmp_path/'compare.csv').write_text("run,recipe,images_seen,minutes,hter_cross,auc\n"
                                        "runs/base,budget=10m,1000,7.5,0.0876,0.9693\nruns/narrow,\"widths=[48, 192, 192], budget=10m\",2000,7.9,0.0832,0.9702\n")
    (tmp_path/'paired.csv').write_text("run,baseline,diff,lo,hi,se,n_rows,n_boot,verdict\nnarrow,base,-0.0043,-0.0096,0.0004,0.0026,20000,1000,within the noise\n")
    method_study.write_study(tmp_path)
    rows = (tmp_path/'method_study.md').read_text().splitlines()[2:]
    assert rows == ['| base | budget=10m | 1,000 | 7.5 | 0.0876 | 0.9693 | - | baseline |',
                    '| narrow | widths=[48, 192, 192], budget=10m | 2,000 | 7.9 | 0.0832 | 0.9702 | -0.0043 [-0.0096, +0.0004] | within the noise |']
    assert method_study.study_markdown(method_study.pd.read_csv(tmp_path/'method_study.csv')).splitlines()[2:] == rows  # --table remakes it
    (tmp_path/'paired.csv').write_text("run,baseline,diff,lo,hi,se,n_rows,n_boot,auc_diff,auc_lo,auc_hi,verdict,ranking\n"
                                       "narrow,base,-0.0043,-0.0096,0.0004,0.0026,20000,1000,0.0009,0.0003,0.0015,within the noise,narrow ranks better than base\n")
    method_study.write_study(tmp_path)  # a comparison that reads the AUC too: its difference and verdict join the table
    ranked = (tmp_path/'method_study.md').read_text().splitlines()
    assert ranked[0].endswith('| verdict | AUC difference [95%] | ranking |') and ranked[1].count('|') == 11
    assert ranked[2:] == [rows[0] + ' - | baseline |', rows[1] + ' +0.0009 [+0.0003, +0.0015] | narrow ranks better than base |']


def _study_csv(path, rows):
    cols = 'run,recipe,epochs,hter_cross,diff,lo,hi,verdict'
    path.write_text(cols + '\n' + '\n'.join(rows) + '\n')
    return path


def test_the_lever_ledger_keeps_each_lever_once_with_what_it_changes_and_the_best_its_interval_allows(tmp_path):
    import lever_ledger
    a = _study_csv(tmp_path/'study_a.csv', ['def,"widths=[64, 256, 256], budget=30m",7.3,0.0772,,,,',
                                             'again,"widths=[64, 256, 256], budget=30m",6.0,0.0777,0.0005,-0.0028,0.0065,within the noise',
                                             'wide,"widths=[80, 320, 320], budget=30m",4.8,0.0700,-0.0072,-0.0110,-0.0030,wide is better than def'])
    b = _study_csv(tmp_path/'study_b.csv', ['def,"widths=[64, 256, 256], budget=30m",7.3,0.0772,,,,',
                                             'again,"widths=[64, 256, 256], budget=30m",6.0,0.0777,0.0005,-0.0028,0.0065,within the noise',
                                             'mix,"widths=[64, 256, 256], mixup=0.4, budget=30m",6.9,0.0806,0.0034,-0.0012,0.0083,within the noise',
                                             'unpaired,"widths=[64, 256, 256], head=grid, budget=30m",6.6,0.0800,,,,'])
    frame = lever_ledger.ledger([b, a])
    assert list(frame.lever) == ['wide', 'again', 'mix']  # ordered by difference; 'again' once; no row without a paired difference
    assert list(frame.change) == ['widths=[80, 320, 320]', 'the baseline again', 'mixup=0.4']
    assert frame.loc[frame.lever == 'again', 'study'].item() == 'study_a'  # kept from the first study that has it
    assert frame.best_allowed.round(4).tolist() == [0.0662, 0.0744, 0.0760]
    rows = lever_ledger.markdown(frame, goal=0.07).splitlines()[2:]
    assert [r.split(' | ')[8] for r in rows] == ['within its interval', 'no', 'no']
    assert rows[0].startswith('| wide | widths=[80, 320, 320] | study_a | def (0.0772) | 0.0700 | 4.8 | -0.0072 [-0.0110, -0.0030] | 0.0662 |')


def test_a_shifted_view_moves_the_image_and_reflects_its_border():
    import tta_study
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    down = tta_study.shifted(images, 2, 2)
    assert down.shape == images.shape and down.flags.c_contiguous
    assert (down[:, 2:, 2:] == images[:, :-2, :-2]).all()  # moved down and right by two
    assert (down[:, 0, 2:] == images[:, 2, :-2]).all() and (down[:, 1, 2:] == images[:, 1, :-2]).all()  # reflected
    assert (tta_study.shifted(images, -1, -1)[:, :-1, :-1] == images[:, 1:, 1:]).all()
    views = tta_study.view_images(images)
    assert len(views) == 2 + 4 * len(tta_study.SHIFTS)
    assert (views['mirror'] == images[:, :, ::-1]).all()
    assert (views['mirror_shift+1'] == tta_study.shifted(images[:, :, ::-1], 1, 1)).all()


def test_the_tta_study_averages_each_schemes_views_and_pairs_it_with_the_packages_tta(tmp_path, monkeypatch):
    import tta_study
    rng = np.random.default_rng(0)
    labels = (rng.random(4000) > 0.3).astype(int)
    def noisy(scale): return np.clip(0.5 + (labels - 0.5) * 0.4 + rng.normal(0, scale, len(labels)), 0, 1)
    names = tta_study.VIEW_NAMES
    probs = {n: noisy(0.35) for n in names} | {'random4': noisy(0.6), 'fit': noisy(0.6)}  # the package's TTA made clearly worse
    rows = pd.DataFrame({'row': np.arange(len(labels)), 'label': labels})
    monkeypatch.setattr(tta_study, 'view_probs', lambda run, fold, data, random_ns, log=print: (probs, rows))
    table = tta_study.study('runs/x', 0, None, [4], n_boot=200).set_index('scheme')
    assert table.loc['random 4 (the package)', 'verdict'] == 'baseline' and table.loc['plain', 'passes'] == 1
    assert table.loc["random 4, the fit's own draws", 'passes'] == 5
    views = dict(zip(['mirror', 'mirror, shifts of 1 px (airbench)', 'all 10 views'], [
        (probs['plain'] + probs['mirror']) / 2,
        (probs['plain'] + probs['mirror']) / 4 + sum(probs[f'{m}shift{t}1'] for t in '+-' for m in ('', 'mirror_')) / 8,
        np.mean([probs[n] for n in names], axis=0)]))
    groups = rows['row'].to_numpy() % 2
    for name, p in views.items():
        assert table.loc[name, 'hter_cross'] == pytest.approx(cross_fitted_hter_of(p, labels, groups))
        assert table.loc[name, 'hi'] < 0 and table.loc[name, 'verdict'].endswith('is better than random 4 (the package)')
        assert table.loc[name, 'auc_lo'] > 0 and table.loc[name, 'ranking'].endswith('ranks better than random 4 (the package)')
    assert table.loc['all 10 views', 'hter_cross'] < table.loc['plain', 'hter_cross']  # averaging views cuts the noise
    tta_study.study('runs/x', 0, None, [4], n_boot=20).to_csv(tmp_path/'t.csv', index=False)
    assert tta_study.markdown(pd.read_csv(tmp_path/'t.csv')).count('\n') == 2 + len(table)


def test_the_tta_studys_passes_score_the_folds_held_out_rows_and_are_reused_while_its_weights_stay(data, tmp_path, monkeypatch):
    import json
    import thera_fastai as tf
    import tta_study
    run = tmp_path/'run'
    tf.fit(data, run, arch='simple', folds=2, fold=0, epochs=1, bs=16, tta=2, precision='fp32', log=lambda *_: None)
    oof = pd.read_csv(run/'fold0'/'oof.csv')
    probs, rows = tta_study.view_probs(run, 0, None, [2])
    assert set(probs) == {*tta_study.VIEW_NAMES, 'random2', 'fit'} and rows.equals(oof)
    assert probs['plain'] == pytest.approx(oof['prob'].to_numpy(), abs=1e-5)  # the fit's own plain pass, rows in its order
    assert not np.allclose(probs['mirror'], probs['plain'])
    def refused(*_, **__): raise AssertionError('the model was loaded again')
    monkeypatch.setattr(tta_study, 'load_fold_learner', refused)
    again, _ = tta_study.view_probs(run, 0, None, [2])
    assert all(np.array_equal(again[k], probs[k]) for k in probs)  # every pass from the fold's file
    info = json.loads((run/'fold0'/'fold.json').read_text())
    info['files']['model.safetensors'] = 'other weights'
    (run/'fold0'/'fold.json').write_text(json.dumps(info))
    with pytest.raises(AssertionError, match='loaded again'): tta_study.view_probs(run, 0, None, [2])  # new weights: passes again


def test_the_adherence_table_reads_each_budgeted_folds_plan_and_minutes(tmp_path):
    import json, budget_adherence
    def fold(run, k, budget, **plan):
        (tmp_path/run/f'fold{k}').mkdir(parents=True)
        steps = dict(budget=budget, steps=900, step_seconds=0.4, planned_seconds=1710.0, **plan) if budget else dict(steps=300, epochs=1)
        info = dict(fold=k, versions=dict(thera_fastai='9.9'), steps=steps, fold_seconds=1890.0, epochs_run=1.5)
        (tmp_path/run/f'fold{k}'/'fold.json').write_text(json.dumps(info))
    fold('old', 0, 1800.0, probe_steps=1000, probe_step_seconds=0.36, replanned_at=30)
    fold('new', 0, 1800.0, probe_steps=1000, probe_step_seconds=0.36, replanned_at=30,
         replans=[dict(step=200, epoch=0, when='window', step_seconds=0.41, steps_from=950, steps_to=920),
                  dict(step=625, epoch=1, when='epoch end', step_seconds=0.43, steps_from=920, steps_to=900)])
    fold('v019', 0, 1800.0, probe_steps=1000, probe_step_seconds=0.36, replanned_at=30,
         epoch_replans=[dict(epoch=0, step_seconds=0.42, steps_from=950, steps_to=900)])  # 0.19.0 listed epoch ends only
    fold('epochs', 0, None)
    table = budget_adherence.adherence_table([tmp_path/'old', tmp_path/'new', tmp_path/'v019', tmp_path/'epochs'])
    assert list(table['run']) == ['old', 'new', 'v019']  # a fit of fixed epochs has no budget to keep
    assert table['over_min'].tolist() == [1.5, 1.5, 1.5] and table['later_replans'].tolist() == [0, 2, 1]
    assert table['last_step_s'].tolist() == [0.4, 0.43, 0.42] and table['probe_step_s'].tolist() == [0.36] * 3
    table.to_csv(tmp_path/'a.csv', index=False)
    lines = budget_adherence.adherence_markdown(budget_adherence.pd.read_csv(tmp_path/'a.csv')).splitlines()
    assert lines[3] == '| new | 0 | 9.9 | 30 | 28.5 | 31.5 | +1.5 | 900 (1,000) | yes, 2 | 0.360, 0.430 |'


def test_the_ensemble_studys_member_ids_written_before_the_latest_fields_still_hold():
    "Member ids 0.22.0 wrote (computed with its code): a field added since is left out while unset, or every finished member would train again."
    import ensemble_study
    from thera_fastai.config import FitConfig
    assert ensemble_study.member_id(FitConfig(arch='simple', folds=2, epochs=1, tta=0), 2) == 'ensemble-21e20c5d7da0659c'
    assert ensemble_study.member_id(FitConfig(folds=5, budget=600.0, tta=4, widths=(48, 192, 192)), 5) == 'ensemble-0833828e1c2bd732'
    assert ensemble_study.member_id(FitConfig(folds=5, budget=600.0, tta=4, widths=(48, 192, 192), head='max'), 5) != 'ensemble-0833828e1c2bd732'


def test_ensemble_study_scores_members_and_their_vote_on_rows_none_saw_and_reuses_members(tiny_zip, tmp_path):
    "Two 1-epoch members on generated data, one trained apart (--only): scored alone and as a vote, reused on a rerun."
    script = Path(__file__).parents[1]/'bench'/'ensemble_study.py'
    args = [sys.executable, str(script), '--data', str(tiny_zip), '--out', str(tmp_path/'ens'), '--members', '2',
            '--arch', 'simple', '--epochs', '1', '--tta', '0', '--threads', '1']
    study = lambda *extra: subprocess.run(args + list(extra), capture_output=True, text=True,
                                          env={**os.environ, 'PYTHONPATH': str(script.parent)})
    trained = lambda out: re.findall(r'^member (\d): \d+ rows x 1 epochs in', out, re.M)
    apart = study('--only', '1')
    assert apart.returncode == 0, apart.stderr[-2000:]
    assert trained(apart.stdout) == ['1'] and '| predictor' not in apart.stdout
    assert not (tmp_path/'ens'/'member0').exists()
    first = study()
    assert first.returncode == 0, first.stderr[-2000:]
    assert trained(first.stdout) == ['0']  # member 1 reused
    scored = re.search(r'scored on (\d+) held-out rows', first.stdout)
    assert scored and int(scored[1]) in (19, 20)  # fold 0 of 5 of the 96 generated images
    table = {line.split(' | ')[0].strip('| '): line.strip(' |').split(' | ')[1:] for line in first.stdout.splitlines()
             if line.startswith('| ') and not line.startswith(('| predictor', '| candidate'))}
    assert any(k.startswith('hard vote') for k in table) and any(k.startswith('soft vote') for k in table) and sum(k.startswith('member ') for k in table) == 2
    predictors = pd.read_csv(tmp_path/'ens'/'predictors.csv')
    assert predictors[['hter', 'far', 'frr', 'auc']].stack().between(0, 1).all()
    held = pd.read_csv(tmp_path/'ens'/'held_out_probs.csv')
    member0 = predictors.set_index('predictor').loc['member 0']
    assert member0['hter'] == pytest.approx(hter(held['prob_member0'], held['label'], member0['threshold']))
    differences = pd.read_csv(tmp_path/'ens'/'differences.csv')
    assert list(differences['baseline'])[:2] == ['member 0', 'member 1'] and (differences['lo'] <= differences['diff']).all()
    vote_row = predictors[predictors['predictor'].str.startswith('hard vote')].iloc[0]
    assert differences['diff'][0] == pytest.approx(vote_row['hter'] - member0['hter'])  # the vote minus member 0, at their own thresholds
    reprinted = study('--table', str(tmp_path/'ens'))
    assert reprinted.stdout in first.stdout
    again = study('--audit')
    assert again.returncode == 0 and trained(again.stdout) == [], again.stderr[-2000:]
    assert again.stdout[again.stdout.index('| predictor'):] == first.stdout[first.stdout.index('| predictor'):]  # same scores
    assert 'probabilities reused' in again.stdout and 'probabilities reused' not in first.stdout  # the same members' weights
    # the audit: cleanlab on the members' inner out-of-fold rows, which are the training rows and none of the held-out ones
    inner = pd.concat([pd.read_csv(tmp_path/'ens'/f'member{k}'/'oof.csv') for k in (0, 1)])
    assert inner['row'].is_unique and not set(inner['row']) & set(held['row'])
    issues = pd.read_csv(tmp_path/'ens'/'label_issues.csv')
    from thera_fastai.analysis.label_audit import ISSUE_COLUMNS
    assert list(issues.columns) == ISSUE_COLUMNS and set(issues['row']) <= set(inner['row'])
    labels = inner.set_index('row')['label']
    assert (issues['label'].to_numpy() == labels.loc[issues['row']].to_numpy()).all()
    assert f"{len(inner):,} training rows: {len(issues):,} flagged" in again.stdout
    held_issues = pd.read_csv(tmp_path/'ens'/'held_out_issues.csv')
    assert list(held_issues.columns) == ISSUE_COLUMNS and set(held_issues['row']) <= set(held['row'])
    assert f"{len(held):,} held-out rows: {len(held_issues):,} flagged" in again.stdout
    import thera_fastai as tf
    tf.fit(tiny_zip, tmp_path/'single', fold=0, folds=5, arch='simple', epochs=1, tta=0, threads=1, log=lambda *_: None)
    (tmp_path/'ens'/'held_out_probs.key').write_text('stale\n')  # as if a member had been trained again
    against = study('--against', str(tmp_path/'single'))
    assert against.returncode == 0 and trained(against.stdout) == [], against.stderr[-2000:]
    assert 'probabilities reused' not in against.stdout and (tmp_path/'ens'/'held_out_probs.key').read_text() != 'stale\n'
    differences = pd.read_csv(tmp_path/'ens'/'differences.csv').set_index('baseline')
    oof = pd.read_csv(tmp_path/'single'/'fold0'/'oof.csv').set_index('row').loc[held['row']]
    single = cross_fitted_hter_of(oof['prob_tta'].to_numpy(), held['label'].to_numpy(), held['row'].to_numpy() % 2)
    mean = cross_fitted_hter_of(held.filter(like='prob_member').mean(axis=1).to_numpy(), held['label'].to_numpy(), held['row'].to_numpy() % 2)
    assert differences.loc['single', 'diff'] == pytest.approx(mean - single)  # the members' mean against the single run's fold 0, on the same rows
    # noise_study scores the single run on all held-out rows and on those the members' audit leaves
    noise = subprocess.run([sys.executable, str(script.parent/'noise_study.py'), '--issues', str(tmp_path/'ens'/'held_out_issues.csv'),
                            '--fold', '0', '--out', str(tmp_path/'noise.csv'), str(tmp_path/'single')], capture_output=True, text=True)
    assert noise.returncode == 0, noise.stderr[-2000:]
    from thera_fastai.analysis.report import cross_fitted_hter
    from thera_fastai.runs import read_oof
    fold0 = read_oof(tmp_path/'single', [0])
    kept = ~fold0['row'].isin(held_issues['row']).to_numpy()
    row = pd.read_csv(tmp_path/'noise.csv').iloc[0]
    assert row['hter_all'] == pytest.approx(cross_fitted_hter(fold0)) and row['rows_not_flagged'] == kept.sum()
    assert row['hter_not_flagged'] == pytest.approx(cross_fitted_hter(fold0, kept))
    assert row['flagged_label0'] + row['flagged_label1'] == len(held_issues)
    reprinted = subprocess.run([sys.executable, str(script.parent/'noise_study.py'), '--table', str(tmp_path/'noise.csv')], capture_output=True, text=True)
    assert reprinted.returncode == 0 and reprinted.stdout == noise.stdout
    tf.fit(tiny_zip, tmp_path/'other', fold=0, folds=5, arch='simple', epochs=1, tta=0, threads=1, seed=7, log=lambda *_: None)
    refused = study('--against', str(tmp_path/'other'))
    assert refused.returncode != 0 and 'did not score' in refused.stderr.strip().splitlines()[-1]


def test_the_conv_floor_times_every_convolution_on_its_own_input_shape():
    import bench_speed
    from thera_fastai.models import simple_cnn
    model = simple_cnn()
    shapes = [s for _, s in bench_speed.conv_shapes(model)]
    assert shapes == [(3, 64, 64), (16, 32, 32), (32, 32, 32), (32, 16, 16), (64, 16, 16), (64, 8, 8), (128, 8, 8)]
    rows, floor = bench_speed.conv_floor(model, bs=4, repeats=1, steps=1)
    assert [r[0] for r in rows][:2] == ['3->16 3x3 at 64x64', '16->32 3x3 at 32x32']
    assert all(ms > 0 and gflops > 0 for _, ms, gflops in rows)
    assert floor == pytest.approx(4 / (sum(ms for _, ms, _ in rows) / 1e3))


def test_the_batch_sweep_times_each_batch_size_in_both_layouts_on_a_copy():
    import bench_speed
    from thera_fastai.models import simple_cnn
    model = simple_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = bench_speed.batch_sweep(model, 'fp32', [2, 4], seconds=0.01, repeats=2)
    assert [r[0] for r in rows] == [2, 4] and all(nchw > 0 and cl > 0 for _, nchw, cl in rows)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the steps trained a copy


def test_an_archs_entry_names_the_stem_and_the_working_resolution():
    import bench_speed
    assert bench_speed.spec_config('resnet18').stem == 'nopool' and bench_speed.spec_config('resnet18:conv3').stem == 'conv3'
    low = bench_speed.spec_config('airbench@32')
    assert (low.arch, low.resolution) == ('airbench', 32) and bench_speed.spec_config('simple').resolution is None
    assert bench_speed.spec_config('resnet18:default@16').resolution == 16
    assert bench_speed.spec_config('airbench=32/128/128@32').widths == (32, 128, 128) and bench_speed.spec_config('simple=8/16,16').widths == ((8,), (16, 16))
    shapes = [s for _, s in bench_speed.conv_shapes(bench_speed.tf_model(bench_speed.spec_config('simple@32')))]
    assert shapes[:2] == [(3, 32, 32), (16, 16, 16)]  # the convolutions see the 32 px images


@pytest.mark.slow
def test_the_resume_bench_interrupts_a_budgeted_fold_and_reads_how_its_resume_kept_the_budget(tmp_path):
    import resume_budget
    from conftest import write_dataset
    write_dataset(tmp_path/'data', n_train=400, n_val=8)
    out, csv = tmp_path/'run', tmp_path/'resume.csv'
    cmd = [sys.executable, str(Path(resume_budget.__file__)), '--data', str(tmp_path/'data'), '--out', str(out), '--folds', '2',
           '--budget', '25s', '--stop-after', '3', '--threads', '1', '--resume-threads', '1', '--csv', str(csv),
           '--fit-args', '--arch simple --bs 8 --tta 0 --precision fp32']  # 25 steps an epoch: room for the early re-plan
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = pd.read_csv(csv).iloc[0]
    info = __import__('json').loads((out/'fold0'/'fold.json').read_text())
    assert row.resumed_from_epoch == info['resumed_from_epoch'] >= 1 and row.resume_replans == 1 and row.resumed_step_s > 0
    assert row.before_resume_min == pytest.approx(info['seconds_before_resume'] / 60) and 0 < row.before_resume_min < row.fold_min
    assert row.steps == info['steps']['steps'] and row.kept_plan_min_at_least >= row.fold_min
    assert row.fold_min < 25 / 60 * 1.5  # the two processes together, not the resumed one alone
    table = resume_budget.markdown(pd.read_csv(csv)).splitlines()
    assert table[2].startswith(f"| run | {info['versions']['thera_fastai']} | 0 | 1, 1 | {row.resumed_from_epoch - 1} |") and len(table) == 3


def test_the_tta_probe_bench_times_each_of_the_probes_tta_calls_in_a_fresh_process(tmp_path, monkeypatch):
    import probe_tta
    from conftest import write_dataset
    write_dataset(tmp_path/'data', n_train=96, n_val=4)
    monkeypatch.setenv('THERA_CACHE', str(tmp_path/'cache'))
    args = probe_tta.argparse.Namespace(data=str(tmp_path/'data'), widths='32/128/128', threads=1, bs=16)
    row = probe_tta.one_process(args)
    calls = [float(c) for c in row['call_s'].split()]
    assert len(calls) == 4 and all(c > 0 for c in calls)  # the probe's untimed call and the three it takes the best of
    per_image = [max(c / row['batch'] - row['eval_img_ms'] / 1e3, row['eval_img_ms'] / 1e3) * 1e3 for c in calls]
    rounding = 0.00005 / row['batch'] * 1e3 + 1e-9  # the calls are kept to 0.1 ms
    assert row['first_call_aug_img_ms'] == pytest.approx(per_image[0], abs=rounding)
    overhead = 0.0002 / row['batch'] * 1e3  # the probe's own timing also holds its no_bar and no_logging: at most 0.2 ms a call
    assert min(per_image) - rounding <= row['aug_img_ms'] <= min(per_image) + overhead  # the best call, not the first
    table = probe_tta.markdown(pd.DataFrame([dict(process=0, **row)])).splitlines()
    assert len(table) == 3 and table[2].startswith(f"| 0 | 32/128/128 | {row['call_s']} |")
