"""How many steps a fold's fit takes: the epochs of its config, or what its time budget holds on this machine,
measured on a few training steps of a throwaway copy of the model before the fit starts."""
import copy, math, statistics, time
from pathlib import Path

from fastai.callback.core import Callback, CancelFitException
from fastai.learner import Learner

from .callbacks import rng_states, set_rng_states
from .methods import fit_step
from ..errors import TheraError

__all__ = ['SpeedProbe', 'measure_speed', 'plan_steps', 'eval_seconds', 'pace_outlook', 'Replan', 'replan_step']

PROBE_STEPS = 4  # timed steps after one untimed warm-up step (allocations, oneDNN kernel choice)
MARGIN = 0.05  # share of the budget kept back for what the estimate misses (saving, a slower epoch)
# The fit re-plans early on its own steps, at this share of the planned ones (at least REPLAN_MIN_STEPS, within the
# first epoch): the probe's few steps on a throwaway copy can catch a busy or an idle moment of a shared machine.
REPLAN_AT, REPLAN_MIN_STEPS = 0.03, 12
REPLAN_TOLERANCE = 0.01  # a later re-plan takes its new plan where the budget then holds steps this share off the plan
# Later, the fit re-plans after each window of steps lasting this share of the budget (at least REPLAN_MIN_STEPS steps)
# and at each epoch's end.
REPLAN_EVERY = 0.05
BEND_MIN_STEPS = 10  # a later re-plan leaves an end this near as it is, unless the budget cannot even pay the evaluation
LOAD_SLOWDOWN = 1.1  # windows this much slower than the machine's pace are under a load (pace_outlook)
PACE_WINDOWS = 5  # the machine's pace is the median of this many latest windows not under a load
EPOCH_CAP = 4  # a re-plan may grow the fit to this many times the probe's epochs (the fit runs under this cap)


class SpeedProbe(Callback):
    "Times training steps after `warmup` untimed ones, then stops the fit."
    order = 99
    def __init__(self, steps=PROBE_STEPS, warmup=1): self.steps, self.warmup, self.times = steps, warmup, []
    def before_batch(self): self.t0 = time.perf_counter()
    def after_batch(self):
        if self.training and self.iter >= self.warmup: self.times.append(time.perf_counter() - self.t0)
        if len(self.times) >= self.steps: raise CancelFitException()
    def before_validate(self): raise CancelFitException()


def measure_speed(learn, steps=PROBE_STEPS):
    """What `learn` costs here, as a dict: seconds per training step (`step_s`), per image of an evaluation forward pass
    (`eval_img_s`) and of a TTA pass with its augmentation (`aug_img_s`), and fixed seconds per epoch (`epoch_s`: a
    checkpoint's write into the fold folder and a validation's own bookkeeping beyond its forward passes). Measured on
    a copy of its model and optimizer settings: the learner, its weights and every random state are left as they were."""
    states = rng_states(learn.dls)
    probe_cb = SpeedProbe(steps)
    probe = Learner(learn.dls, copy.deepcopy(learn.model), loss_func=learn.loss_func, opt_func=learn.opt_func, splitter=learn.splitter,
                    lr=learn.lr, wd=learn.wd, cbs=[copy.copy(cb) for cb in learn.cbs if _is_speed(cb)])
    try:
        with probe.no_bar(), probe.no_logging(): probe.fit(1, cbs=[probe_cb])
        has_valid = len(learn.dls.valid) > 0
        dl = _one_batch(learn.dls.valid) if has_valid else None
        eval_s = _eval_seconds(probe, dl) if has_valid else 0.0
        epoch_s = _epoch_seconds(probe, learn.path, dl.n * eval_s if has_valid else 0.0)
        aug_s = _augmented_seconds(probe, eval_s) if has_valid else 0.0
    finally: set_rng_states(states, learn.dls)
    if not probe_cb.times: raise TheraError("the time budget needs at least two training batches to measure a step", param='budget')
    return dict(step_s=sorted(probe_cb.times)[len(probe_cb.times) // 2], eval_img_s=eval_s, aug_img_s=aug_s, epoch_s=epoch_s)


def _one_batch(dl): return dl.new(n=min(dl.bs, dl.n))


def _augmented_seconds(learn, eval_img_s, repeats=3):
    """Seconds per image of a TTA pass (augmentation on the batch, then the forward pass), from `learn.tta` over one
    batch (an augmented pass and a plain one, whose `eval_img_s` is taken off): the best of `repeats + 1` calls, as
    `_eval_seconds` times the plain pass. One call's time varies widely, and a long reading plans the fold's final
    passes long, which ends its training early."""
    dl = _one_batch(learn.dls.valid)
    best = _best_seconds(learn, lambda: learn.tta(dl=dl, n=1, beta=None), repeats + 1)
    return max(best / dl.n - eval_img_s, eval_img_s)


def _epoch_seconds(learn, folder, batch_eval_s):
    "Seconds an epoch costs beyond its steps and forward passes: a checkpoint written there, a validation's overhead."
    from .callbacks import _ckpt_bytes
    from ..files import atomic_write
    t0 = time.perf_counter()
    data = _ckpt_bytes(learn, 0)
    path = Path(folder)/'budget-probe.tmp'
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    path.unlink(missing_ok=True)
    t1 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.validate(dl=_one_batch(learn.dls.valid))
    return (t1 - t0) + max(time.perf_counter() - t1 - batch_eval_s, 0.0)


def _is_speed(cb):
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.fp16 import MixedPrecision
    return isinstance(cb, (ChannelsLast, MixedPrecision))


def _eval_seconds(learn, dl, repeats=2):
    """Seconds per image of a plain prediction pass over `dl` through the learner's own callbacks (its autocast and
    memory format, as the fit's validation runs), the best of `repeats + 1` passes."""
    return _best_seconds(learn, lambda: learn.get_preds(dl=dl), repeats + 1) / dl.n


def _best_seconds(learn, call, times):
    "The least seconds of `times` runs of `call` with `learn`'s bar and logging off: a first run's one-time costs and a noisy run never count."
    best = math.inf
    for _ in range(times):
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging(): call()
        best = min(best, time.perf_counter() - t0)
    return best


def eval_seconds(n_epochs, tta, n_valid, eval_img_s, aug_img_s, epoch_s=0.0, reuse_last=False):
    """Seconds a fold spends outside its training steps: a plain validation pass and the fixed cost of each of its
    `n_epochs`, then the out-of-fold predictions, `tta` augmented passes and a plain one. `reuse_last`: the last
    validation pass is the out-of-fold plain pass (the fit ends on the weights it validated), not run again."""
    plain_passes = n_epochs + (0 if reuse_last else 1)
    return n_valid * (plain_passes * eval_img_s + tta * aug_img_s) + n_epochs * epoch_s


def plan_steps(budget_s, spent_s, speed, n_iter, n_valid, tta, reuse_last=False, done_steps=0, done_epochs=0):
    """The most training steps whose cost, with the validation of every epoch and the final out-of-fold predictions,
    fits what is left of `budget_s` after `spent_s` at `speed` (`measure_speed`'s dict); a dict with the steps, the
    epochs they span and the estimate. `reuse_last`: as `eval_seconds`'s. `done_steps`, `done_epochs`: steps trained
    and epochs validated within `spent_s` (a re-plan, at an epoch's end or within one), counted in what is returned. A
    budget that holds no step is one `TheraError` saying what things cost."""
    left, step_s = budget_s * (1 - MARGIN) - spent_s, speed['step_s']
    def cost(n): return eval_seconds(n - done_epochs, tta, n_valid, speed['eval_img_s'], speed['aug_img_s'], speed['epoch_s'], reuse_last)
    best, first = None, max(done_epochs, -(-done_steps // n_iter), 1)  # mid-epoch, the epoch under way is still to validate
    for n in range(first, 100_000):
        eval_s = cost(n)
        steps = done_steps + int((left - eval_s) / step_s)
        if steps <= max((n - 1) * n_iter, done_steps - 1): break  # one more epoch's evaluation leaves no room for its steps
        best = dict(steps=min(steps, n * n_iter), epochs=n, eval_seconds=eval_s)
    if best is None:
        tta_s = n_valid * tta * speed['aug_img_s']
        hint = f"; its {tta} TTA passes take {tta_s:.0f} s of that (--tta 0 drops them)" if tta else ''
        raise TheraError(f"{budget_s:g} s holds no training step: a step takes {step_s:.2f} s and evaluating the "
                         f"{n_valid} held-out rows {cost(max(done_epochs, 1)):.0f} s here{hint}; give a longer budget or more threads", param='budget')
    return dict(best, budget=budget_s, step_seconds=step_s, eval_image_seconds=speed['eval_img_s'], tta_image_seconds=speed['aug_img_s'],
                epoch_seconds=speed['epoch_s'], steps_per_epoch=n_iter,
                planned_seconds=spent_s + (best['steps'] - done_steps) * step_s + best['eval_seconds'])


def replan_step(plan, from_step=0):
    """The step after which a budgeted fit that starts at step `from_step` (0, or a resumed epoch's first) re-plans:
    inside that epoch, before its checkpoint (None where the epoch is too short to time, or the plan ends first)."""
    at = min(max(REPLAN_MIN_STEPS, round(REPLAN_AT * plan['steps'])), plan['steps_per_epoch'] - 1)
    return from_step + at if REPLAN_MIN_STEPS <= at and from_step + at < plan['steps'] else None


def epoch_cap(plan):
    "The most epochs a re-planned fit may run: what `learn.fit` is given, the plan's own steps ending it sooner."
    return plan.get('epoch_cap', EPOCH_CAP * plan['epochs'])


def pace_outlook(windows, now, left_s):
    """The pace a re-plan plans at, and the seconds a passing load is expected to cost on top, from `windows`: the
    (start time, seconds a step) of the fit's timed windows of steps, oldest first, at time `now` with `left_s` seconds
    of the budget left. The machine's pace is the median of the latest `PACE_WINDOWS` windows that ran within
    `LOAD_SLOWDOWN` of the pace before them (a single noisy window moves it little; a slow drift is followed). Windows
    slower than that are a load, on since the first of the latest run of them. It is expected to last as long again as
    it has lasted (Gott's delta-t estimate, the median of what remains of a spell seen at a random moment of it),
    within `left_s`, and to cost that time times the share of the pace it takes. So a short load moves the end a
    little, and a load that has lasted as long as the time left is planned as lasting. Returns (seconds a step, expected
    extra seconds)."""
    normal, load_from = [], None
    for start, pace in windows:
        if normal and pace > LOAD_SLOWDOWN * statistics.median(normal[-PACE_WINDOWS:]):
            load_from = start if load_from is None else load_from
        else: normal.append(pace); load_from = None
    base = statistics.median(normal[-PACE_WINDOWS:])
    if load_from is None: return base, 0.0
    return base, max(min(now - load_from, left_s), 0.0) * (1 - base / windows[-1][1])


class Replan(Callback):
    """Re-plans a budgeted fit on its own pace, with `plan` (the dict the checkpoints save) and every callback with a
    `retarget(total_steps, at)` taking the new number of steps from the step they are at:

    - once early, after `replan_step(plan)` of its steps: their mean time replaces the probe's step time, and the
      probe's evaluation times are scaled by the same ratio (the machine's load moves both);
    - then after each window of training steps lasting `REPLAN_EVERY` of the budget, and at the end of every epoch but
      the last (with that epoch's validation timed), at the pace `pace_outlook` reads from the windows timed so far:
      a pace that drifts is followed, and a load that comes and goes moves the end by what it is expected to cost, not
      by its pace taken as lasting. These take the new plan where it differs by more than `REPLAN_TOLERANCE` of the
      steps, and are listed in the plan's `replans`.

    The evaluation times are scaled from the last ones timed with the step time of that moment. Each re-plan runs
    before the epoch's checkpoint is written, so a resumed fit reads the re-planned steps from it.

    A fit resumed after epoch `start_epoch - 1` (`t0` set back by the seconds its checkpoint says were spent) plans
    again the same way from its first steps in this process: the machine it resumes on, or its load, need not be the
    one it was planned on. That re-plan is listed as `resume` even where it keeps the plan."""
    order = 69  # before EpochCheckpoint's after_epoch
    def __init__(self, plan, budget_s, t0, n_valid, tta, reuse_last=False, log=print, start_epoch=0):
        self.plan, self.budget_s, self.t0, self.n_valid, self.tta, self.reuse_last, self.log = plan, budget_s, t0, n_valid, tta, reuse_last, log
        self.start_epoch, self.first = start_epoch, start_epoch * plan['steps_per_epoch']
        self.at, self.t1, self.window_s, self.windows = replan_step(plan, self.first), None, REPLAN_EVERY * budget_s, []
        self.ref = dict(step_s=plan['step_seconds'], eval_img_s=plan['eval_image_seconds'], aug_img_s=plan['tta_image_seconds'], epoch_s=plan['epoch_seconds'])

    def before_train(self): self.valid_s, self.epoch_steps = None, 0; self._new_window()
    def _new_window(self): self.win_t0, self.win_steps = time.perf_counter(), 0
    def after_train(self): self.win_s = time.perf_counter() - self.win_t0
    def before_validate(self): self.valid_t0 = time.perf_counter()
    def after_validate(self): self.valid_s = time.perf_counter() - self.valid_t0

    def after_batch(self):
        if not self.training: return
        self.win_steps += 1; self.epoch_steps += 1
        done = fit_step(self.learn) + 1
        if self.at is not None:
            if done == self.first + 1: self.t1 = time.perf_counter()  # the first step pays for the fit's own warm-up: not timed
            elif done == self.at and self.t1 is not None: self._early(done, (time.perf_counter() - self.t1) / (done - self.first - 1))
            return
        win_s = time.perf_counter() - self.win_t0
        if win_s >= self.window_s and self.win_steps >= REPLAN_MIN_STEPS and done < self.plan['steps']:
            self.windows.append((self.win_t0, win_s / self.win_steps))
            self._later(done, self.epoch, 'window')
            self._new_window()

    def _speed_at(self, step_s):
        "The speed dict at `step_s` a step: the evaluation times last timed, scaled by the ratio of the step times."
        ratio = step_s / self.ref['step_s']
        return dict(step_s=step_s, eval_img_s=self.ref['eval_img_s'] * ratio, aug_img_s=self.ref['aug_img_s'] * ratio, epoch_s=self.ref['epoch_s'] * ratio)

    def _early(self, done, step_s):
        p = self.plan
        self.at = None
        self.windows.append((self.t1, step_s))
        if self.first:  # a resumed fit: its probe and first re-plan are its first process's; this one is listed
            self._later(done, self.start_epoch, 'resume')
            self._new_window()
            return
        p.update(probe_steps=p['steps'], probe_step_seconds=p['step_seconds'], replanned_at=done)
        self.ref = self._speed_at(step_s)
        old, steps = self._apply(self._steps(self.ref, done, 0), done)
        self.log(f"re-planned after {done} steps at {step_s:.2f} s a step (the probe: {p['probe_step_seconds']:.2f} s): {old} -> {steps} steps")
        self._new_window()

    def after_epoch(self):
        if self.epoch < self.start_epoch: return  # an epoch a resumed fit skips: fastai still ends it
        done = (self.epoch + 1) * self.plan['steps_per_epoch']  # learn.n_iter is the validation's here
        if done >= self.plan['steps'] or self.valid_s is None: return  # the fit ends here, or nothing was timed
        # the steps since the last window close one more, unless too few of them are left after it
        if self.win_steps and (self.win_steps >= REPLAN_MIN_STEPS or self.win_steps == self.epoch_steps):
            self.windows.append((self.win_t0, self.win_s / self.win_steps))
        if not self.windows: return
        if self.n_valid:  # this validation's time per image, against the latest pace
            pace, eval_img_s = self.windows[-1][1], self.valid_s / self.n_valid
            ratio = eval_img_s / self.ref['eval_img_s'] if self.ref['eval_img_s'] else pace / self.ref['step_s']
            self.ref = dict(self._speed_at(pace), eval_img_s=eval_img_s, aug_img_s=self.ref['aug_img_s'] * ratio)
        self._later(done, self.epoch + 1, 'epoch end')

    def _later(self, done, done_epochs, when):
        "Plans at `pace_outlook`'s pace after `done` steps; takes the plan where it is off the current one by more than the tolerance."
        p, now = self.plan, time.perf_counter()
        left = self.budget_s * (1 - MARGIN) - (time.time() - self.t0)
        step_s, loss_s = pace_outlook(self.windows, now, left)
        new = self._steps(self._speed_at(step_s), done, done_epochs, loss_s)
        spent = new.pop('spent', False)
        # an end this near leaves the schedules no room to bend to it; only a spent budget ends the fit at once
        keep = abs(new['steps'] - p['steps']) <= REPLAN_TOLERANCE * p['steps'] or (min(p['steps'], new['steps']) - done < BEND_MIN_STEPS and not spent)
        if keep and when != 'resume': return  # a resume is listed either way: the fold says where it resumed and at what pace
        old, steps = (p['steps'], p['steps']) if keep else self._apply(new, done)
        pace = self.windows[-1][1]
        p.setdefault('replans', []).append(dict(step=done, epoch=self.epoch, when=when, step_seconds=round(pace, 4), plan_step_seconds=round(step_s, 4),
                                                load_seconds=round(loss_s, 1), steps_from=old, steps_to=steps))
        load = f" (a load: planned at {step_s:.2f} s and {loss_s:.0f} s more)" if loss_s else ''
        what = f"kept its {steps} steps" if keep else f"{old} -> {steps} steps"
        self.log(f"re-planned after step {done} ({when} of epoch {self.epoch}) at {pace:.2f} s a step{load}: {what}")

    def _steps(self, speed, done, done_epochs, loss_s=0.0):
        "The steps the budget holds from here at `speed`, `loss_s` seconds of it expected lost, under the cap of epochs the fit was started with."
        p = self.plan
        try: new = plan_steps(self.budget_s, time.time() - self.t0 + loss_s, speed, p['steps_per_epoch'], self.n_valid, self.tta, self.reuse_last, done, done_epochs)
        except TheraError: new = dict(steps=done, epochs=max(done_epochs, -(-done // p['steps_per_epoch']), 1), spent=True)  # stop here
        cap = epoch_cap(p)
        if new['steps'] > cap * p['steps_per_epoch']: new.update(steps=cap * p['steps_per_epoch'], epochs=cap)
        return new

    def _apply(self, new, done):
        "Puts the `new` plan into `plan` and the fit's callbacks, bending their schedules at step `done`; (old, new) steps."
        p, old = self.plan, self.plan['steps']
        p.update(epoch_cap=epoch_cap(p))
        p.update({k: v for k, v in new.items() if k != 'budget'})
        for cb in self.learn.cbs:
            if callable(getattr(cb, 'retarget', None)): cb.retarget(new['steps'], at=done)
        return old, new['steps']
