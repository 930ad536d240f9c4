"""TensorBoard event files for a run (`tensorboard --logdir ~/.leukviz/runs`), when the optional tensorboard package
is installed (`pip install leukviz[tensorboard]`): written beside the run while it trains (TensorBoardLog, a
callback), or afterwards from its metrics.jsonl (write_run: `leukviz tensorboard RUN`). Without tensorboard nothing
is written and nothing else changes. metrics.jsonl stays the run's record; these files are a view of it."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from leukviz.core.errors import LeukvizError
from leukviz.core.filenames import TENSORBOARD
from leukviz.training.callbacks import Callback
from leukviz.training.state import TrainState

# An epoch event's field -> its TensorBoard tag: train and validation side by side under one heading each.
EPOCH_TAGS = {"train_loss": "loss/train", "val_loss": "loss/validation", "train_acc": "accuracy/train",
              "val_acc": "accuracy/validation", "val_f1": "weighted_f1/validation", "lr": "learning_rate",
              "seconds": "time/epoch_seconds", "images_per_s": "time/images_per_second"}
# The kept model's validation scores (the sidecar's metrics), the run's result for TensorBoard's HParams view.
FINAL = ("val_f1", "val_acc", "val_loss", "best_epoch")


class TensorBoardMissing(LeukvizError, ImportError):
    """The tensorboard package is not installed."""


def available() -> bool:
    """Whether the optional tensorboard package is installed (torch.utils.tensorboard needs it)."""
    return importlib.util.find_spec("tensorboard") is not None


def _writer(logdir: Path, purge_step: int | None = None) -> Any:
    if not available():
        raise TensorBoardMissing("TensorBoard event files need the tensorboard package: "
                                 "pip install 'leukviz[tensorboard]' (or pip install tensorboard)")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir), purge_step=purge_step)


def epoch_scalars(ev: dict) -> dict[str, float]:
    """An epoch event's numbers under their TensorBoard tags (EPOCH_TAGS); missing or non-numbers left out."""
    out = {}
    for key, tag in EPOCH_TAGS.items():
        v = ev.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            out[tag] = float(v)
    return out


def hparams(config: dict) -> dict[str, Any]:
    """A run's settings as TensorBoard's HParams view takes them (numbers, text and booleans; None as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}


def _final(writer: Any, config: dict, metrics: dict) -> None:
    """The run's settings and its kept model's scores, in the HParams view (beside the curves)."""
    scores = {f"final/{k}": float(metrics[k]) for k in FINAL if isinstance(metrics.get(k), (int, float))}
    if scores:
        writer.add_hparams(hparams(config), scores, run_name=".")


class TensorBoardLog(Callback):
    """After each validated epoch, its scalars (rank 0 only; the writer opens at the first epoch). A resumed run
    starts at its resume epoch: TensorBoard drops what an earlier process wrote from that step on (purge_step).
    At the end, the settings and the kept model's scores."""

    def __init__(self, run_dir: Path, config: dict, start_epoch: int):
        self.logdir, self.config, self.start_epoch = run_dir / TENSORBOARD, config, start_epoch
        self.writer: Any = None

    def after_epoch(self, state: TrainState) -> None:
        ev = state.ev
        if self.writer is None:
            self.writer = _writer(self.logdir, purge_step=self.start_epoch if self.start_epoch > 1 else None)
        for tag, value in epoch_scalars(ev).items():
            self.writer.add_scalar(tag, value, int(ev["epoch"]), walltime=ev.get("time"))
        self.writer.flush()  # the run may be stopped between epochs: what was written is readable

    def after_fit(self, state: TrainState) -> None:
        if self.writer is None:  # a resume with no epoch left opens none
            return
        from leukviz.training import checkpoints

        _final(self.writer, self.config, checkpoints.kept_sidecar(self.logdir.parent).get("metrics", {}))
        self.writer.close()


def write_run(logdir: Path, epochs: Iterable[dict], config: dict, metrics: dict) -> Path:
    """A finished (or stopped) run's event files written afresh from its epoch events into logdir (what was
    there is replaced: metrics.jsonl is the record). TensorBoardMissing without tensorboard."""
    if not available():
        _writer(logdir)  # raises the one message
    if logdir.exists():
        shutil.rmtree(logdir)
    writer = _writer(logdir)
    try:
        for ev in epochs:
            for tag, value in epoch_scalars(ev).items():
                writer.add_scalar(tag, value, int(ev["epoch"]), walltime=ev.get("time"))
        _final(writer, config, metrics)
    finally:
        writer.close()
    return logdir
