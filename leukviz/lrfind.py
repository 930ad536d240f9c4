"""Learning-rate finder: an exponential sweep of the rate over a short training, the loss at each step,
and a suggested rate. Cached like a run: the same configuration and data give the stored result.

The sweep (Smith 2015; fastai's lr_find): start from the run's initial weights, raise the rate by a
constant factor each step from START to END, record the training loss, stop when it diverges. The
suggestion is a tenth of the rate at the smoothed loss's minimum (fastai's lr_min): at the minimum the
loss is about to blow up, an order of magnitude below it still learns fast and is safe. (The steepest
descent, the other classic rule, was measured to land on the noise of the first steps of short sweeps.)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from leukviz import data
from leukviz.config import RunConfig
from leukviz.storage import atomic_write_json, read_json

START, END = 1e-7, 1.0
STEPS = 100  # fastai's default; the sweep cycles over the training images as often as it needs
SMOOTHING = 0.9  # of the loss's moving average: about ten steps, a tenth of a sweep
DIVERGE = 4.0  # stop once the smoothed loss exceeds this many times its lowest value
CACHE_FOLDER = "lr-find"  # under the cache folder: <config key>.json, .progress.json and .log
RULE = ("a tenth of the rate at the smoothed loss's minimum: the minimum is at the edge of divergence, an order "
        "of magnitude below it still learns fast")
SKIP = 0.1  # the first tenth of the sweep is not searched for the minimum: few losses averaged, mostly noise
Progress = Callable[[int, int], None]


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
    return res if isinstance(res, dict) and "suggestion" in res else None


def sweep(cfg: RunConfig, cache_dir: Path | None = None, device_pref: str = "auto", steps: int = STEPS,
          log: Callable[[str], None] = lambda s: None, progress: Progress | None = None) -> dict:
    """Train from the run's initial weights with the rate rising each step; the rates, the losses (raw and
    smoothed) and the suggestion. No augmentation (less noise); the run's batch size, optimizer,
    fine-tuning depth, class balance and precision."""
    import torch

    from leukviz import engine

    t0 = time.time()
    state = engine.setup(cfg, cache_dir, device_pref, log)
    model, opt, device = state.train_model, state.opt, state.device
    engine.set_train_mode(model, state.frozen, cfg.freeze_bn)
    planned = rates(START, END, steps)
    lrs, losses, best, epoch, queue = [], [], float("inf"), 0, []
    for step, lr in enumerate(planned):
        if not queue:  # cycle over the training images, one shuffled epoch after another
            epoch += 1
            queue = engine.epoch_batches(len(state.train_x), cfg.batch_size, cfg.seed, epoch, state.dist)
        b = torch.from_numpy(queue.pop(0))
        for group in opt.param_groups:
            group["lr"] = float(lr)
        x = engine.to_input(state.train_x[b], cfg.backbone, device)
        y = state.train_y[b].to(device)
        with engine.autocast(device, state.amp):
            loss = state.criterion(model(x).float(), y)
        value = float(loss.detach())
        if not np.isfinite(value):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lrs.append(float(lr))
        losses.append(value)
        smoothed = ema(losses)[-1]
        best = min(best, smoothed)
        if progress:
            progress(step + 1, steps)
        if smoothed > DIVERGE * best:
            break
    sm = smooth(losses)
    return {"rates": lrs, "losses": losses, "smoothed": sm.tolist(), "suggestion": suggest(lrs, sm),
            "rule": RULE, "steps": steps, "steps_done": len(lrs), "diverged": len(lrs) < steps,
            "start": START, "end": END, "backbone": cfg.backbone, "device": engine.device_name(device),
            "seconds": round(time.time() - t0, 2)}


def find(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, device_pref: str = "auto",
         steps: int = STEPS, log: Callable[[str], None] = lambda s: None) -> tuple[dict, bool]:
    """The cached result, or a new sweep (stored). Returns (result, cached). While it sweeps,
    <key>.progress.json says how far it is, for a page that polls it."""
    hit = cached(cfg, fingerprint, cache_dir, steps)
    if hit is not None:
        return hit, True
    out = result_path(cfg, fingerprint, cache_dir, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    status = out.with_suffix(".progress.json")

    def progress(done: int, total: int) -> None:
        if done == 1 or done % 5 == 0 or done == total:  # a few writes, not one per step
            atomic_write_json(status, {"step": done, "steps": total, "time": time.time()})

    res = sweep(cfg, cache_dir, device_pref, steps, log, progress)
    atomic_write_json(out, {**res, "config": cfg.to_dict(), "dataset_fingerprint": fingerprint})
    status.unlink(missing_ok=True)
    return res, False


# ---------------------------------------------------------------------------------------------- in the background

# Sweeps this process (the dashboard's server) launched, by cache key: every session sees one as running
# and none launches it twice; a finished one's exit status tells a failure from a result.
_SWEEPS: dict[str, subprocess.Popen] = {}
_SWEEPS_LOCK = threading.Lock()


def launch(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> bool:
    """Sweep in a child process (python -m leukviz lr-find --config FILE), so a page stays responsive on a
    CPU where it takes a minute or two. Returns False when it is cached or already sweeping."""
    key, out = cache_key(cfg, fingerprint, steps), result_path(cfg, fingerprint, cache_dir, steps)
    with _SWEEPS_LOCK:
        proc = _SWEEPS.get(key)
        if cached(cfg, fingerprint, cache_dir, steps) is not None or (proc is not None and proc.poll() is None):
            return False
        out.parent.mkdir(parents=True, exist_ok=True)
        config_file = out.with_suffix(".config.json")
        atomic_write_json(config_file, cfg.to_dict())
        out.with_suffix(".progress.json").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "leukviz", "lr-find", "--config", str(config_file), "--steps", str(steps)]
        with open(out.with_suffix(".log"), "wb") as logf:
            _SWEEPS[key] = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return True


def status(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> tuple[str, dict]:
    """Where this sweep stands: ("done", result), ("running", progress), ("failed", {"error": ...}) or
    ("none", {})."""
    hit = cached(cfg, fingerprint, cache_dir, steps)
    if hit is not None:
        return "done", hit
    out = result_path(cfg, fingerprint, cache_dir, steps)
    proc = _SWEEPS.get(cache_key(cfg, fingerprint, steps))
    if proc is None:
        return "none", {}
    if proc.poll() is None:
        return "running", read_json(out.with_suffix(".progress.json"), None) or {"step": 0, "steps": steps}
    try:
        tail = out.with_suffix(".log").read_text(errors="replace").strip().splitlines()[-6:]
    except OSError:
        tail = []
    return "failed", {"error": "\n".join(tail) or f"the sweep exited with status {proc.returncode}"}
