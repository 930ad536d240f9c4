"""The events a training run writes, one JSON object a line, to its metrics file (filenames.METRICS).

Each event's "type" is one of the names below; docs/ARCHITECTURE.md lists their fields. The engine writes
them, and every reader (the run folder, the charts, the progress bar, the CLI) takes them through the
helpers here, so a resumed run, which repeats the epoch it was cut in, reads the same everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

START = "start"  # training begins from scratch: sizes, device, precision, split
RESUME = "resume"  # training continues from the resumable state, same fields as START
BATCH = "batch"  # running train loss and accuracy within an epoch
EPOCH = "epoch"  # an epoch's train and validation metrics
EARLY_STOP = "early_stop"  # the run ends before its last epoch: epoch, best_epoch, patience, reason (a sentence)
TYPES = (START, RESUME, BATCH, EPOCH, EARLY_STOP)
BEGINNINGS = (START, RESUME)  # the events that open a training session
# The fields every reader of an event relies on, per type (the schema); an event without them is skipped, with
# a note, by the run folder's reader (problem).
FIELDS = {START: ("epoch", "epochs"), RESUME: ("epoch", "epochs"), BATCH: ("epoch", "step", "steps", "loss", "acc"),
          EPOCH: ("epoch", "epochs", "train_loss", "train_acc", "val_loss", "val_acc"), EARLY_STOP: ("epoch",)}
INTEGER_FIELDS = ("epoch", "epochs", "step", "steps")
Emit = Callable[[dict], None]  # where the engine sends each event it announces


def problem(ev: dict) -> str | None:
    """Why a well-formed line of the metrics file cannot be used (a field of the schema missing or of the
    wrong type), or None. An unknown type is no problem: readers pick events by type and never see it."""
    for k in FIELDS.get(ev.get("type"), ()):
        v = ev.get(k)
        whole = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        number = isinstance(v, (int, float)) and not isinstance(v, bool)  # NaN allowed: the charts skip it
        if not (whole if k in INTEGER_FIELDS else number):
            return f"a {ev['type']} event whose \"{k}\" is {v!r}"
    return None


def epoch_events(events: Iterable[dict]) -> list[dict]:
    """The epoch events sorted by epoch, one per epoch: a resumed run may repeat one, and the later wins."""
    by_epoch = {int(e["epoch"]): e for e in events if e.get("type") == EPOCH and "epoch" in e}
    return [by_epoch[k] for k in sorted(by_epoch)]


def batch_events(events: Iterable[dict]) -> list[dict]:
    """The batch events sorted by (epoch, step), one per step, the later winning on a repeat."""
    by_step = {(int(e["epoch"]), int(e["step"])): e for e in events
               if e.get("type") == BATCH and "epoch" in e and "step" in e}
    return [by_step[k] for k in sorted(by_step)]


def early_stop(events: Iterable[dict]) -> dict | None:
    """The early-stop event of a run that ended early, or None (it ran all its epochs, or is running)."""
    return next((e for e in events if e.get("type") == EARLY_STOP), None)


def latest_start(events: Sequence[dict]) -> dict | None:
    """The latest start or resume event: the session of training now going on (or last run), or None."""
    return next((e for e in reversed(events) if e.get("type") in BEGINNINGS), None)


def until_resume_point(events: Iterable[dict], epoch: int, step: int) -> list[dict]:
    """The events up to a resume point (epoch in progress, steps of it done): what a resume keeps, so the
    history it appends to reads as one run."""
    keep = []
    for e in events:
        t = e.get("type")
        if t in (EPOCH, EARLY_STOP) and e["epoch"] >= epoch:
            continue
        if t == BATCH and (e["epoch"], e["step"]) > (epoch, step) and e["epoch"] >= epoch:
            continue
        keep.append(e)
    return keep


def finite(value: Any) -> float | None:
    """An event value as a finite float, or None when missing, non-numeric, NaN or infinite."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
