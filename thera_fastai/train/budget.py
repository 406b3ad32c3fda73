"""How many steps a fold's fit takes: the epochs of its config, or what its time budget holds on this machine,
measured on a few training steps of a throwaway copy of the model before the fit starts."""
import copy, math, time
from pathlib import Path

from fastai.callback.core import Callback, CancelFitException
from fastai.learner import Learner

from .callbacks import rng_states, set_rng_states
from .methods import fit_step
from ..errors import TheraError

__all__ = ['SpeedProbe', 'measure_speed', 'plan_steps', 'eval_seconds', 'Replan', 'replan_step']

PROBE_STEPS = 4  # timed steps after one untimed warm-up step (allocations, oneDNN kernel choice)
MARGIN = 0.05  # share of the budget kept back for what the estimate misses (saving, a slower epoch)
# The fit re-plans early on its own steps, at this share of the planned ones (at least REPLAN_MIN_STEPS, within the
# first epoch): the probe's few steps on a throwaway copy can catch a busy or an idle moment of a shared machine.
REPLAN_AT, REPLAN_MIN_STEPS = 0.03, 12
REPLAN_TOLERANCE = 0.01  # at an epoch's end the fit re-plans again where the budget then holds steps this share off its plan
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


def _augmented_seconds(learn, eval_img_s):
    "Seconds per image of a TTA pass (augmentation on the batch, then the forward pass), from one TTA pass over one batch."
    dl = _one_batch(learn.dls.valid)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.tta(dl=dl, n=1, beta=None)
    return max((time.perf_counter() - t0) / dl.n - eval_img_s, eval_img_s)


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
    memory format, as the fit's validation runs), best of `repeats` after one untimed pass."""
    best = math.inf
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging(): learn.get_preds(dl=dl)
        best = min(best, time.perf_counter() - t0)
    return best / dl.n


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
    and epochs validated within `spent_s` (a re-plan), counted in what is returned. A budget that holds no step is one
    `TheraError` saying what things cost."""
    left, step_s = budget_s * (1 - MARGIN) - spent_s, speed['step_s']
    def cost(n): return eval_seconds(n - done_epochs, tta, n_valid, speed['eval_img_s'], speed['aug_img_s'], speed['epoch_s'], reuse_last)
    best = None
    for n in range(max(done_epochs, 1), 100_000):
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


def replan_step(plan):
    """The step after which a budgeted fit re-plans: inside its first epoch, before the first checkpoint (None where that
    epoch is too short to time, or the plan ends first)."""
    at = min(max(REPLAN_MIN_STEPS, round(REPLAN_AT * plan['steps'])), plan['steps_per_epoch'] - 1)
    return at if REPLAN_MIN_STEPS <= at < plan['steps'] else None


def epoch_cap(plan):
    "The most epochs a re-planned fit may run: what `learn.fit` is given, the plan's own steps ending it sooner."
    return plan.get('epoch_cap', EPOCH_CAP * plan['epochs'])


class Replan(Callback):
    """Re-plans a budgeted fit on its own pace, with `plan` (the dict the checkpoints save) and every callback with a
    `retarget(total_steps, at)` taking the new number of steps from the step they are at:

    - once early, after `replan_step(plan)` of its steps: their mean time replaces the probe's step time, and the
      probe's evaluation times are scaled by the same ratio (the machine's load moves both);
    - at the end of every epoch but the last, from that epoch's training steps and validation, where the steps the
      budget holds then differ from the plan's by more than `REPLAN_TOLERANCE`: a pace that changes later in the fit
      (the machine's load, the memory a longer fit touches) moves its end instead of overrunning the budget.

    Each runs before the epoch's checkpoint is written, so a resumed fit reads the re-planned steps from it."""
    order = 69  # before EpochCheckpoint's after_epoch
    def __init__(self, plan, budget_s, t0, n_valid, tta, reuse_last=False, log=print):
        self.plan, self.budget_s, self.t0, self.n_valid, self.tta, self.reuse_last, self.log = plan, budget_s, t0, n_valid, tta, reuse_last, log
        self.at, self.t1 = replan_step(plan), None

    def before_train(self): self.epoch_t0, self.epoch_steps, self.valid_s = time.perf_counter(), 0, None
    def after_train(self): self.train_s = time.perf_counter() - self.epoch_t0
    def before_validate(self): self.valid_t0 = time.perf_counter()
    def after_validate(self): self.valid_s = time.perf_counter() - self.valid_t0

    def after_batch(self):
        if not self.training: return
        self.epoch_steps += 1
        if self.at is None: return
        done = fit_step(self.learn) + 1
        if done == 1: self.t1 = time.perf_counter()  # the first step pays for the fit's own warm-up: not timed
        elif done == self.at and self.t1 is not None: self._early(done, (time.perf_counter() - self.t1) / (done - 1))

    def _early(self, done, step_s):
        p, ratio = self.plan, step_s / self.plan['step_seconds']
        speed = dict(step_s=step_s, eval_img_s=p['eval_image_seconds'] * ratio, aug_img_s=p['tta_image_seconds'] * ratio, epoch_s=p['epoch_seconds'] * ratio)
        p.update(probe_steps=p['steps'], probe_step_seconds=p['step_seconds'], replanned_at=done)
        old, steps = self._apply(self._steps(speed, done, 0), done, step_s)
        self.log(f"re-planned after {done} steps at {step_s:.2f} s a step (the probe: {p['probe_step_seconds']:.2f} s): {old} -> {steps} steps")
        self.at = None

    def after_epoch(self):
        p = self.plan
        done = (self.epoch + 1) * p['steps_per_epoch']  # learn.n_iter is the validation's here
        if done >= p['steps'] or not self.epoch_steps or self.valid_s is None: return  # the fit ends here, or nothing timed
        step_s = self.train_s / self.epoch_steps
        eval_s = self.valid_s / self.n_valid if self.n_valid else p['eval_image_seconds']
        ratio = eval_s / p['eval_image_seconds'] if p['eval_image_seconds'] else 1.0
        speed = dict(step_s=step_s, eval_img_s=eval_s, aug_img_s=p['tta_image_seconds'] * ratio, epoch_s=p['epoch_seconds'])
        new = self._steps(speed, done, self.epoch + 1)
        if abs(new['steps'] - p['steps']) <= REPLAN_TOLERANCE * p['steps']: return
        old, steps = self._apply(new, done, step_s)
        p.setdefault('epoch_replans', []).append(dict(epoch=self.epoch, step_seconds=round(step_s, 4), steps_from=old, steps_to=steps))
        self.log(f"re-planned after epoch {self.epoch} at {step_s:.2f} s a step: {old} -> {steps} steps")

    def _steps(self, speed, done, done_epochs):
        "The steps the budget holds from here at `speed`, under the cap of epochs the fit was started with."
        p = self.plan
        try: new = plan_steps(self.budget_s, time.time() - self.t0, speed, p['steps_per_epoch'], self.n_valid, self.tta, self.reuse_last, done, done_epochs)
        except TheraError: new = dict(steps=done, epochs=max(done_epochs, 1))  # the budget is spent already: stop here
        cap = epoch_cap(p)
        if new['steps'] > cap * p['steps_per_epoch']: new.update(steps=cap * p['steps_per_epoch'], epochs=cap)
        return new

    def _apply(self, new, done, step_s):
        "Puts the `new` plan into `plan` and the fit's callbacks, bending their schedules at step `done`; (old, new) steps."
        p, old = self.plan, self.plan['steps']
        p.update(epoch_cap=epoch_cap(p), step_seconds=step_s)
        p.update({k: v for k, v in new.items() if k != 'budget'})
        for cb in self.learn.cbs:
            if callable(getattr(cb, 'retarget', None)): cb.retarget(new['steps'], at=done)
        return old, new['steps']
