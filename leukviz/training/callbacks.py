"""What a run does around the training loop, as hooks the loop calls (engine.fit): keep the best model,
record each epoch and its resume point, stop early, score the held-out test set at the end. The loop itself
(engine.train_one_epoch) trains and validates; these decide what is kept and when to stop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from leukviz.core import events
from leukviz.core.events import Emit
from leukviz.core.filenames import PREDICTIONS, RESUME
from leukviz.training import checkpoints
from leukviz.training.state import TrainState


class Callback:
    """A hook on the loop. on_epoch: after an epoch is validated (its event and probabilities); True stops
    training after it. on_end: once training has ended normally (not on a stop or a failure)."""

    def on_epoch(self, state: TrainState, ev: dict, probs: np.ndarray) -> bool:
        return False

    def on_end(self, state: TrainState) -> None:
        return None


class KeepBest(Callback):
    """Checkpointing: every rank tracks the best epoch (the same validation on the same weights, so all stop
    together); rank 0 writes the kept model, its sidecar (meta: checkpoints.checkpoint_meta and the OOD
    reference) and its validation predictions. cfg.keeps_best False keeps every epoch (the last)."""

    def __init__(self, run_dir: Path, meta: dict, main: bool):
        self.run_dir, self.meta, self.main = run_dir, meta, main
        self.result: dict = {}

    def on_epoch(self, state: TrainState, ev: dict, probs: np.ndarray) -> bool:
        f1, epoch = ev["val_f1"], ev["epoch"]
        if state.cfg.keeps_best and f1 <= state.best["val_f1"]:
            return False
        state.best = {"val_f1": f1, "epoch": epoch}
        if self.main:
            self.result = {k: ev[k] for k in ("val_loss", "val_acc", "val_f1", "train_loss", "train_acc")}
            self.result["best_epoch"] = epoch
            checkpoints.save_checkpoint(state.scored, self.run_dir, {**self.meta, "epoch": epoch, "metrics": self.result})
            checkpoints.write_predictions(self.run_dir / PREDICTIONS, state.ds, state.val_rows, probs)
        return False

    def kept(self) -> dict:
        """The kept epoch's metrics: this session's, or (a resume after the best epoch) the checkpoint's."""
        if self.result or not self.main:
            return self.result
        return checkpoints.kept_sidecar(self.run_dir).get("metrics", {})


class Record(Callback):
    """The epoch event, then the resume point of the next epoch: a crash between the two resumes at this epoch
    and drops its event, where the other order would lose the event for good. Only rank 0 writes either (its
    emit is the run's; save_resume writes on rank 0 alone)."""

    def __init__(self, run_dir: Path, emit: Emit):
        self.resume_path, self.emit = run_dir / RESUME, emit

    def on_epoch(self, state: TrainState, ev: dict, probs: np.ndarray) -> bool:
        self.emit(ev)
        checkpoints.save_resume(state, self.resume_path, ev["epoch"] + 1, 0, None)
        return False


def stops_early(best_epoch: int, epoch: int, patience: int) -> bool:
    """Early stopping: whether `patience` epochs have passed since the best one (patience 0: never)."""
    return patience > 0 and epoch - best_epoch >= patience


def early_stop_event(epoch: int, best_epoch: int, patience: int) -> dict:
    """The event (events.EARLY_STOP) of a run that stops early, with its reason as the page shows it."""
    reason = (f"stopped early at epoch {epoch}: no better validation weighted F1 for {patience} "
              f"epoch{'s' if patience != 1 else ''} (the best, epoch {best_epoch}, is the model kept)")
    return {"type": events.EARLY_STOP, "epoch": epoch, "best_epoch": best_epoch, "patience": patience,
            "reason": reason, "time": time.time()}


class EarlyStopping(Callback):
    """Stop once cfg.patience epochs passed without a better one (every rank decides alike; the event is
    written by rank 0's emit)."""

    def __init__(self, emit: Emit):
        self.emit = emit

    def on_epoch(self, state: TrainState, ev: dict, probs: np.ndarray) -> bool:
        epoch, cfg = ev["epoch"], state.cfg
        if epoch < cfg.epochs and stops_early(state.best["epoch"], epoch, cfg.patience):
            self.emit(early_stop_event(epoch, state.best["epoch"], cfg.patience))
            return True
        return False


class TestScoring(Callback):
    """After the last epoch (also when a resume finds none left), rank 0 scores the kept model once on the
    held-out test rows: nothing after it chooses anything (checkpoints.score_test_set)."""

    __test__ = False  # not a pytest class

    def __init__(self, run_dir: Path, cache_dir: Path | None, log: Callable[[str], None], main: bool):
        self.run_dir, self.cache_dir, self.log, self.main = run_dir, cache_dir, log, main

    def on_end(self, state: TrainState) -> None:
        if self.main:
            checkpoints.score_test_set(state, self.run_dir, self.cache_dir, self.log)
