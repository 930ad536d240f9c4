"""Learning-rate finder: an exponential sweep of the rate over a short training, the loss at each step,
and a suggested rate. Cached like a run: the same configuration and data give the stored result.

The sweep (Smith 2015; fastai's lr_find): start from the run's initial weights, raise the rate by a
constant factor each step from START to END, record the training loss, stop when it diverges. The
suggestion is a tenth of the rate at the smoothed loss's minimum (fastai's lr_min): at the minimum the
loss is about to blow up, an order of magnitude below it still learns fast and is safe. (The steepest
descent, the other classic rule, was measured to land on the noise of the first steps of short sweeps.)

This is the sweep's worker (python -m leukviz lr-find); a page's sweep in the background is launched, stopped,
cancelled and followed by the run store's one job supervisor (runstore/sweeps.py), as runs are.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from leukviz.core import durations
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import atomic_write_json, read_json
from leukviz.datasets import data
from leukviz.models.config import RunConfig
from leukviz.training.protocol import Callback

if TYPE_CHECKING:
    from leukviz.training.state import TrainState

START, END = 1e-7, 1.0
STEPS = 100  # fastai's default; the sweep cycles over the training images as often as it needs
SMOOTHING = 0.9  # of the loss's moving average: about ten steps, a tenth of a sweep
DIVERGE = 4.0  # stop once the smoothed loss exceeds this many times its lowest value
CACHE_FOLDER = "lr-find"  # under the cache folder: <config key>.json, .progress.json and .log
RULE = ("a tenth of the rate at the smoothed loss's minimum: the minimum is at the edge of divergence, an order "
        "of magnitude below it still learns fast")
SKIP = 0.1  # the first tenth of the sweep is not searched for the minimum: few losses averaged, mostly noise
Progress = Callable[[int, int], None]


class LrFindError(LeukvizError, ValueError):
    """A sweep that cannot suggest anything (no finite loss); nothing is cached."""


class SweepStopped(LrFindError):
    """A sweep asked to stop (its stop file: runstore.sweeps.stop or cancel) ended before its result; nothing is
    cached."""


STOPPED_EXIT = 75  # lr-find's exit status when its sweep took a Stop (EX_TEMPFAIL: nothing wrong, nothing done)


def rates(start: float = START, end: float = END, steps: int = STEPS) -> np.ndarray:
    """The sweep's rates: geometric from start to end, one per step."""
    return np.geomspace(start, end, steps)


def ema(losses: np.ndarray | list[float], beta: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average: the first values are not pulled towards zero. Causal,
    so it lags (by about beta / (1 - beta) steps): the sweep uses it to see divergence as it happens."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** i))
    return np.asarray(out)


def smooth(losses: np.ndarray | list[float], beta: float = SMOOTHING) -> np.ndarray:
    """The loss curve smoothed without lag (the EMA forwards, then backwards): a causal EMA would move the
    minimum, and so the suggestion, towards higher rates."""
    return ema(ema(losses, beta)[::-1], beta)[::-1]


def suggest(lrs: np.ndarray | list[float], smoothed: np.ndarray | list[float]) -> float:
    """A tenth of the rate at the smoothed loss's minimum, the first tenth of the sweep left out (the rule)."""
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    if len(lrs) == 0:
        return START
    first = min(int(len(lrs) * SKIP), len(lrs) - 1)
    low = first + int(np.argmin(smoothed[first:]))
    return float(max(lrs[low] / 10, lrs[0]))


# A rate whose smoothed loss is at most this fraction above the lowest is kept. Generous on purpose: from
# scratch, ResNet50's sweep on one fold of real cells put the preset's 1e-3 at +38 % (its loss rose in the
# sweep's 100 steps), yet 1e-3 trained far better there than the sweep's tenth of the minimum
# (docs/REALDATA.md). The finder flags rates near divergence, not rates a short sweep cannot judge.
BASIN = 1.0


def loss_at(result: dict, rate: float) -> float | None:
    """The smoothed loss the sweep measured at `rate` (interpolated in log rate), or None when the sweep
    stopped (diverged) below it or never reached it."""
    lrs, smoothed = np.asarray(result.get("rates") or [], float), np.asarray(result.get("smoothed") or [], float)
    if len(lrs) < 2 or not lrs[0] <= rate <= lrs[-1]:
        return None
    return float(np.interp(np.log10(rate), np.log10(lrs), smoothed))


@dataclass(frozen=True)
class Advice:
    """What the finder says of the rate on screen: the rate to use and why, in plain words."""

    rate: float
    keep: bool  # True: the rate on screen is in the loss's basin, keep it
    text: str


def advise(result: dict, current: float) -> Advice:
    """Check the rate on screen against a sweep. In the loss's basin (its smoothed loss at most BASIN above
    the lowest): keep it. Outside it (the loss well up towards divergence, or the sweep diverged before
    reaching it): use the sweep's suggestion, a tenth of the rate at the minimum. Measured on real cells
    (docs/REALDATA.md): from scratch the presets' rates sit in the basin, and a tenth of the minimum trained
    worse (a short sweep's loss falls at any rate while the network learns, which pulls the minimum low); so
    the finder checks that a rate is not too high, and offers a way back from one that is."""
    fallback = float(f"{result['suggestion']:.2g}")
    lowest = float(np.min(result["smoothed"])) if result.get("smoothed") else None
    here = loss_at(result, current)
    if here is not None and lowest is not None and here <= lowest * (1 + BASIN):
        return Advice(current, True, f"your rate {current:g} is in the loss's basin (its smoothed loss "
                                     f"{here / lowest - 1:+.0%} from the lowest): keep it")
    why = ("the sweep diverged before reaching it" if here is None and current > result["rates"][-1] else
           f"the loss there is {here / lowest - 1:+.0%} from its lowest" if here is not None and lowest else
           "the sweep did not reach it")
    return Advice(fallback, False, f"your rate {current:g} is outside the loss's basin ({why}): use {fallback:g}, "
                                   "a tenth of the rate at the smoothed loss's minimum")


def finder_config(cfg: RunConfig) -> RunConfig:
    """The config with what the sweep ignores set to fixed values (rate, epochs, schedule, selection,
    averaging, early stopping): using the suggested rate, or another number of epochs, keeps the cache."""
    return dataclasses.replace(cfg, lr=1.0, epochs=1, scheduler="none", select="best", average="none", patience=0)


def cache_key(cfg: RunConfig, fingerprint: str, steps: int = STEPS) -> str:
    return f"{finder_config(cfg).identity(fingerprint)}-{steps}"


def result_path(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> Path:
    return data.cache_folder(cache_dir) / CACHE_FOLDER / f"{cache_key(cfg, fingerprint, steps)}.json"


def cached(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> dict | None:
    """The stored result of this sweep, or None."""
    res = read_json(result_path(cfg, fingerprint, cache_dir, steps), None)
    return res if result_problem(res) is None else None


def result_problem(res: object) -> str | None:
    """What is wrong with a stored sweep (a damaged or hand-edited file), as run files are checked: the
    suggestion a positive finite rate within the swept range, and rates, losses and smoothed losses lists of
    finite numbers of one length. None when it can be served; otherwise it is swept again."""
    if not isinstance(res, dict):
        return "not a JSON object"
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    rate = res.get("suggestion")
    if not number(rate) or not START <= rate <= END:
        return f"suggestion {rate!r} is not a rate between {START:g} and {END:g}"
    series = [res.get(k) for k in ("rates", "losses", "smoothed")]
    if not all(isinstance(x, list) and x and all(number(v) for v in x) for x in series) \
            or len({len(x) for x in series}) != 1 or min(series[0]) <= 0:
        return "rates, losses and smoothed are not lists of finite numbers of one length"
    return None


class Sweep(Callback):
    """The sweep as a callback of the loop (its after_step event): each step's rate and loss; it ends
    the epoch, and the sweep, once the planned steps are done or the smoothed loss diverges (DIVERGE x its best).
    should_stop: asked before each step, as a run's Stop (StopOnRequest); true ends the sweep (stopped)."""

    def __init__(self, planned: np.ndarray, steps: int, progress: Progress | None = None,
                 should_stop: Callable[[], bool] = lambda: False):
        self.planned, self.steps, self.progress, self.should_stop = planned, steps, progress, should_stop
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.best, self.value, self.done, self.stopped = float("inf"), float("nan"), False, False

    def before_step(self, state: TrainState) -> None:
        if self.should_stop():
            self.stopped = self.done = True
            raise SweepStopped(f"the sweep was stopped at step {len(self.losses)} of {self.steps}: nothing is cached")

    def after_step(self, state: TrainState) -> None:
        self.lrs.append(float(self.planned[len(self.lrs)]))
        self.losses.append(state.loss)
        smoothed = ema(self.losses)[-1]
        self.best = min(self.best, smoothed)
        if self.progress:
            self.progress(len(self.losses), self.steps)
        self.done = len(self.losses) >= self.steps or smoothed > DIVERGE * self.best
        state.stop_epoch = self.done


def sweep(cfg: RunConfig, cache_dir: Path | None = None, device_pref: str = "auto", steps: int = STEPS,
          log: Callable[[str], None] = lambda s: None, progress: Progress | None = None,
          should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Train from the run's initial weights with the rate rising each step; the rates, the losses (raw and
    smoothed) and the suggestion. No augmentation (less noise); the run's batch size, optimizer,
    fine-tuning depth, class balance and precision. SweepStopped when should_stop() turns true between steps."""
    import torch

    from leukviz.models import devices
    from leukviz.training import engine

    t0 = time.time()
    state = engine.setup(cfg, cache_dir, device_pref=device_pref, log=log)
    planned = rates(START, END, steps)
    # The engine's loop trains the sweep: the schedule sets each step's rate (every group the same), and the
    # loop's after_step event (the Sweep callback) records the loss and ends the sweep where it diverges.
    state.sched = torch.optim.lr_scheduler.LambdaLR(
        state.opt, [lambda i, base=g["lr"]: float(planned[min(i, steps - 1)]) / base for g in state.opt.param_groups])
    state.average = None  # the sweep's weights are thrown away: nothing to average
    sweep_cb = Sweep(planned, steps, progress, should_stop)
    epoch = 0
    while not sweep_cb.done and len(sweep_cb.losses) < steps:  # cycle over the training images, epoch after epoch
        epoch += 1
        engine.set_train_mode(state.train_model, state.frozen, cfg.freeze_bn)
        batches = engine.epoch_batches(len(state.train_x), cfg.batch_size, cfg.seed, epoch, state.dist)
        try:
            engine.train_one_epoch(state, batches[:steps - len(sweep_cb.losses)], epoch, [sweep_cb])
        except engine.TrainingDiverged as e:  # a loss that is not finite: the sweep ends before that step
            sweep_cb.value = e.loss
            break
    lrs, losses, value = sweep_cb.lrs, sweep_cb.losses, sweep_cb.value
    device = state.device
    if not losses:  # no step gave a finite loss: nothing to suggest, and nothing must be cached
        raise LrFindError(f"the first step's loss is not finite ({value}): the initial weights give NaN or "
                          "infinite outputs (check the weights file), or the data holds NaN images")
    sm = smooth(losses)
    return {"rates": lrs, "losses": losses, "smoothed": sm.tolist(), "suggestion": suggest(lrs, sm),
            "rule": RULE, "steps": steps, "steps_done": len(lrs), "diverged": len(lrs) < steps,
            "start": START, "end": END, "backbone": cfg.backbone, "device": devices.device_name(device),
            "seconds": round(time.time() - t0, 2)}


def progress_path(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> Path:
    """<key>.progress.json: while it sweeps, how far it is (progress_info), for a page that polls it."""
    return result_path(cfg, fingerprint, cache_dir, steps).with_suffix(".progress.json")


def progress_info(steps: int, started: float, step: int = 0, seconds_per_step: float | None = None,
                  now: float | None = None) -> dict:
    """The progress file's content. phase: "preparing" (the data cache and the model, before the first step)
    or "sweeping"; started: when the sweep was started (epoch seconds); time: when this was written;
    seconds_per_step: measured over the steps after the first (which may warm up), once there are two."""
    info = {"phase": "sweeping" if step else "preparing", "step": step, "steps": steps, "started": started,
            "time": time.time() if now is None else now}
    if seconds_per_step is not None:
        info["seconds_per_step"] = seconds_per_step
    return info


def stop_path(result: Path) -> Path:
    """<key>.stop beside a sweep's result: present = stop requested (runstore.sweeps.stop, as a run's `stop`);
    the sweep ends before its next step and caches nothing."""
    return result.with_suffix(".stop")


def find(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, device_pref: str = "auto",
         steps: int = STEPS, log: Callable[[str], None] = lambda s: None) -> tuple[dict, bool]:
    """The cached result, or a new sweep (stored). Returns (result, cached). While it sweeps,
    <key>.progress.json says how far it is and how fast it goes (progress_info, progress_text), and its stop
    file (stop_path) stops it (SweepStopped, the file then removed: the request is served)."""
    hit = cached(cfg, fingerprint, cache_dir, steps)
    if hit is not None:
        return hit, True
    out = result_path(cfg, fingerprint, cache_dir, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    status = progress_path(cfg, fingerprint, cache_dir, steps)
    started, first = time.time(), [0.0]  # first: when step 1 ended, the clock of the time per step
    atomic_write_json(status, progress_info(steps, started, now=started))

    def progress(done: int, total: int) -> None:
        now = time.time()
        if done == 1:
            first[0] = now
        per_step = (now - first[0]) / (done - 1) if done > 1 else None
        if done <= 2 or done % 5 == 0 or done == total:  # a few writes, not one per step; 2: the first rate
            atomic_write_json(status, progress_info(total, started, done, per_step, now))

    stop = stop_path(out)
    try:
        res = sweep(cfg, cache_dir, device_pref, steps, log, progress, should_stop=stop.exists)
        atomic_write_json(out, {**res, "config": cfg.to_dict(), "dataset_fingerprint": fingerprint})
    except SweepStopped:
        stop.unlink(missing_ok=True)
        raise
    finally:
        status.unlink(missing_ok=True)
    return res, False


_about = durations.about  # the one duration wording (core/durations.py), rounded for an estimate


def progress_text(info: dict | None, now: float | None = None) -> tuple[float, str]:
    """The fraction done (0 to 1) and a line for a progress bar, from a progress file's content (sweeps.status's
    "running" info): "Preparing data and model…" before the first step, then "Finding a learning rate:
    step 20 of at most 100 · about 1 min 10 s left…" once the time per step is known ("at most": a sweep
    that diverges stops early). The estimate counts the time since the file was written."""
    info = info or {}
    total = max(int(info.get("steps") or STEPS), 1)
    done = min(max(int(info.get("step") or 0), 0), total)
    if done == 0:
        return 0.0, "Preparing data and model…"
    text = f"Finding a learning rate: step {done} of at most {total}"
    per_step = info.get("seconds_per_step")
    if isinstance(per_step, (int, float)) and np.isfinite(per_step) and per_step >= 0:
        now = time.time() if now is None else now
        since = max(0.0, now - float(info.get("time") or now))
        left = per_step * (total - done) - since
        text += f" · about {_about(left)} left" if left > 0 else " · almost done"
    return done / total, text + "…"
