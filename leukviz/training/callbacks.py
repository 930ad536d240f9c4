"""The loop's one callback protocol (fastai's): the loop (engine.fit, engine.train_one_epoch) announces named
events, each callback answers the ones it cares about, reading and setting the run's TrainState. What a run
does around the loop is made of callbacks: record batches and epochs with their resume points, keep the best
model, stop on request (with a resume point), stop early, the staged fine-tuning switch, the head-only fast
path's features, score the held-out test set at the end; the learning-rate finder's sweep is one too
(lrfind.py). The loop itself trains and validates; these decide what is kept and when to stop. The protocol
itself (the events, Callback, Callbacks, Stopped) is protocol.py, torch-free."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from leukviz.core import events
from leukviz.core.events import Emit
from leukviz.core.filenames import PREDICTIONS, RESUME
from leukviz.training import checkpoints
from leukviz.training.distributed import stop_requested
from leukviz.training.protocol import EVENTS, Callback, Callbacks, Stopped
from leukviz.training.state import TrainState

__all__ = ["EVENTS", "Callback", "Callbacks", "Stopped"]  # the protocol, re-exported

class RecordBatches(Callback):
    """The batch events: the running loss and accuracy of the epoch so far, about 50 per epoch and at its end."""

    def __init__(self, emit: Emit):
        self.emit = emit

    def after_step(self, state: TrainState) -> None:
        steps, (loss_sum, correct, seen) = state.steps, state.running
        if (state.step + 1) % max(1, steps // 50) == 0 or state.step + 1 == steps:
            self.emit({"type": events.BATCH, "epoch": state.epoch, "step": state.step + 1, "steps": steps,
                       "loss": loss_sum / seen, "acc": correct / seen, "lr": state.opt.param_groups[-1]["lr"],
                       "time": time.time()})


class StopOnRequest(Callback):
    """A stop (a signal, the page's Stop) asked between batches: every rank agrees (stop_requested), the resume
    point of this step is written (rank 0), and Stopped ends the run."""

    def __init__(self, should_stop: Callable[[], bool], resume_path: Path | None = None):
        self.should_stop, self.resume_path = should_stop, resume_path

    def before_step(self, state: TrainState) -> None:
        if stop_requested(self.should_stop(), state.dist):
            if self.resume_path is not None:
                checkpoints.save_resume(state, self.resume_path, state.epoch, state.step, list(state.running))
            raise Stopped(f"stopped at epoch {state.epoch}, step {state.step}/{state.steps}")


class KeepBest(Callback):
    """Checkpointing: every rank tracks the best epoch (the same validation on the same weights, so all stop
    together); rank 0 writes the kept model, its sidecar (meta: checkpoints.checkpoint_meta and the OOD
    reference) and its validation predictions. cfg.keeps_best False keeps every epoch (the last)."""

    def __init__(self, run_dir: Path, meta: dict, main: bool):
        self.run_dir, self.meta, self.main = run_dir, meta, main
        self.result: dict = {}

    def after_epoch(self, state: TrainState) -> None:
        ev = state.ev
        f1, epoch = ev["val_f1"], ev["epoch"]
        if state.cfg.keeps_best and f1 <= state.best["val_f1"]:
            return
        state.best = {"val_f1": f1, "epoch": epoch}
        if self.main:
            self.result = {k: ev[k] for k in ("val_loss", "val_acc", "val_f1", "train_loss", "train_acc")}
            self.result["best_epoch"] = epoch
            checkpoints.save_checkpoint(state.scored, self.run_dir, {**self.meta, "epoch": epoch, "metrics": self.result})
            checkpoints.write_predictions(self.run_dir / PREDICTIONS, state.ds, state.val_rows, state.probs)

    def kept(self) -> dict:
        """The kept epoch's metrics: this session's, or (a resume after the best epoch) the checkpoint's."""
        if self.result or not self.main:
            return self.result
        return checkpoints.kept_sidecar(self.run_dir).get("metrics", {})


class Record(Callback):
    """The start (or resume) event; per epoch the epoch event, then the resume point of the next epoch: a crash
    between the two resumes at this epoch and drops its event, where the other order would lose the event for
    good. Only rank 0 writes either (its emit is the run's; save_resume writes on rank 0 alone)."""

    def __init__(self, run_dir: Path, emit: Emit, start: Callable[[TrainState], dict]):
        self.resume_path, self.emit, self.start = run_dir / RESUME, emit, start

    def before_fit(self, state: TrainState) -> None:
        self.emit(self.start(state))

    def after_epoch(self, state: TrainState) -> None:
        self.emit(state.ev)
        checkpoints.save_resume(state, self.resume_path, state.ev["epoch"] + 1, 0, None)


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

    def after_epoch(self, state: TrainState) -> None:
        epoch, cfg = state.ev["epoch"], state.cfg
        if epoch < cfg.epochs and stops_early(state.best["epoch"], epoch, cfg.patience):
            self.emit(early_stop_event(epoch, state.best["epoch"], cfg.patience))
            state.stop_fit = True


class TestScoring(Callback):
    """After the last epoch (also when a resume finds none left), rank 0 scores the kept model once on the
    held-out test rows: nothing after it chooses anything (checkpoints.score_test_set)."""

    __test__ = False  # not a pytest class

    def __init__(self, run_dir: Path, cache_dir: Path | None, log: Callable[[str], None], main: bool):
        self.run_dir, self.cache_dir, self.log, self.main = run_dir, cache_dir, log, main

    def after_fit(self, state: TrainState) -> None:
        if self.main:
            checkpoints.score_test_set(state, self.run_dir, self.cache_dir, self.log)
