"""What a run writes as it trains: the kept model (safetensors and its sidecar, with the training images'
reference statistics for the out-of-distribution check), the predictions files, the resumable state, and
the held-out test set scored once after the last epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from leukviz.core import storage
from leukviz.core.errors import LeukvizError
from leukviz.core.filenames import CHECKPOINT, SIDECAR, TEST_PREDICTIONS
from leukviz.core.storage import atomic_torch_save, atomic_write_bytes, atomic_write_files, json_bytes
from leukviz.datasets import data
from leukviz.models import backbones, preprocess
from leukviz.models.config import PREPROCESS_VERSION
from leukviz.models.forward import evaluate
from leukviz.scoring import predictions
from leukviz.scoring.metrics import weighted_f1
from leukviz.training.distributed import unwrap
from leukviz.training.state import TrainState


class CheckpointError(LeukvizError, ValueError):
    """A resumable state that cannot be loaded without running code from it, or that is damaged."""


def load_resume_state(path: Path) -> dict:
    """Read the resumable state (filenames.RESUME) with weights_only=True: tensors and plain values load; a pickle that runs code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refusals and damaged files both land here
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(f"refusing to resume from {Path(path).name}: not a plain tensor file "
                              f"({first}). Delete it to start the run over.") from None


def restore(state: TrainState, path: Path, log: Callable[[str], None]) -> None:
    """Continue from a resumable state (filenames.RESUME): weights, optimizer, schedule, average, and where."""
    st = load_resume_state(path)
    state.model.load_state_dict(st["model"])
    state.opt.load_state_dict(st["optimizer"])
    state.sched.load_state_dict(st["scheduler"])
    state.start_epoch, state.start_step = int(st["epoch"]), int(st["step"])
    state.running = [float(v) for v in st["running"]] if state.start_step else None
    state.best = {"val_f1": float(st["best_f1"]), "epoch": int(st["best_epoch"])}
    if state.average is not None and "average" in st:
        state.average.load_state_dict(st["average"])
    log(f"resuming at epoch {state.start_epoch}, step {state.start_step}")


def save_resume(state: TrainState, path: Path, epoch: int, step: int, running: list[float] | None) -> None:
    """The resumable state at (epoch, step) with the epoch's running sums; rank 0 writes it."""
    if not state.dist.main:
        return
    average = {"average": state.average.state_dict()} if state.average is not None else {}
    atomic_torch_save({"model": unwrap(state.model).state_dict(), "optimizer": state.opt.state_dict(),
                       "scheduler": state.sched.state_dict(), "epoch": epoch, "step": step,
                       "running": running or [0.0, 0.0, 0.0], "best_f1": state.best["val_f1"],
                       "best_epoch": state.best["epoch"], **average}, path)


def kept_sidecar(run_dir: Path) -> dict:
    """The sidecar this run's trainer wrote with its kept checkpoint (the writer reads its own file back)."""
    return json.loads(storage.read_text(run_dir / SIDECAR))


def save_checkpoint(model: nn.Module, run_dir: Path, meta: dict) -> None:
    """Best model as safetensors plus a JSON sidecar holding everything needed to rebuild it."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one step for both files: a failed write (a full disk) keeps the previous pair, never a mixed one
    atomic_write_files({run_dir / CHECKPOINT: save(state), run_dir / SIDECAR: json_bytes(meta)})


def checkpoint_meta(state: TrainState) -> dict:
    """The sidecar's fields that rebuild the model (filenames.SIDECAR); each checkpoint adds its epoch and metrics."""
    cfg, ds, spec = state.cfg, state.ds, backbones.get_spec(state.cfg.backbone)
    return {"format": 1, "backbone": cfg.backbone, "classes": list(ds.classes), "positive": ds.positive,
            "image_size": cfg.image_size, "crop": cfg.crop, "crop_window": data.CELL_WINDOW,
            "weights_init": cfg.weights, "preprocess": PREPROCESS_VERSION,
            "build_kwargs": backbones.build_kwargs(cfg.backbone, cfg.weights),
            "mean": list(spec.mean), "std": list(spec.std),
            "params": backbones.count_parameters(state.model), "dataset_fingerprint": ds.fingerprint,
            "split": state.split.summary(), **_reference(state)}


def _reference(state: TrainState) -> dict:
    """The training images' reference statistics (ood.reference_stats, from a sample of the files as they are
    on disk), which Predict compares a dropped image with."""
    from leukviz.datasets import ood

    return {"reference": ood.reference_stats(state.ds.index["path"].to_numpy()[state.train_rows])}


def write_predictions(path: Path, ds: data.Dataset, rows: np.ndarray, probs: np.ndarray) -> None:
    part = ds.index.iloc[rows]
    df = predictions.frame(part["label"].to_numpy(), probs, ds.classes, part["path"].to_numpy(),
                           part["subject"].to_numpy())
    atomic_write_bytes(path, df.to_csv(index=False).encode())


def test_is_scored(run_dir: Path) -> bool:
    """Whether filenames.TEST_PREDICTIONS holds the kept model's predictions (written after its checkpoint)."""
    out, ckpt = run_dir / TEST_PREDICTIONS, run_dir / CHECKPOINT
    return out.is_file() and ckpt.is_file() and out.stat().st_mtime_ns >= ckpt.stat().st_mtime_ns


def score_test_rows(run_dir: Path, ds: data.Dataset, images: np.ndarray, ok: np.ndarray,
                    predict: Callable[[np.ndarray], np.ndarray],
                    log: Callable[[str], None] = lambda s: None) -> tuple[np.ndarray, np.ndarray] | None:
    """The one scoring of a run's held-out test set, for training (score_test_set) and the backfill of older
    runs (comparison/testset.py): the dataset's labelled test rows (Dataset.test_rows) whose images decoded
    (`ok`), their probabilities by `predict` (the kept model, fp32, validation's preprocessing), written to
    filenames.TEST_PREDICTIONS like the validation predictions. Returns (rows, probabilities); None when no row
    is left to score."""
    rows = ds.test_rows.index.to_numpy()
    good = rows[ok[rows]]
    if len(good) < len(rows):
        log(f"test set: {len(rows) - len(good)} of {len(rows)} images unreadable, skipped")
    if len(good) == 0:
        return None
    probs = predict(images[good])
    write_predictions(run_dir / TEST_PREDICTIONS, ds, good, probs)
    return good, probs


def score_test_set(state: TrainState, run_dir: Path, cache_dir: Path | None, log: Callable[[str], None]) -> None:
    """Score the kept model once on the held-out test rows (score_test_rows) after training. The kept model
    is what the checkpoint holds (the best epoch's weights with select="best", the average with
    average="ema"), loaded back into the scored module, which training no longer needs; the decoded images
    come from the run's image cache, which holds every row of the dataset. Best effort: a failure is logged
    and the finished training stands."""
    if len(state.ds.test_rows) == 0 or test_is_scored(run_dir):
        return
    try:
        from safetensors.torch import load_file

        images, ok = preprocess.Preprocess.of_config(state.cfg).cache(state.ds, cache_dir)
        state.scored.load_state_dict(load_file(str(run_dir / CHECKPOINT)))
        scored = score_test_rows(run_dir, state.ds, images, ok, lambda x: evaluate(
            state.scored, x, None, state.cfg.backbone, state.device)[1], log)
        if scored is None:
            return
        good, probs = scored
        epoch = kept_sidecar(run_dir).get("epoch", "?")
    except Exception as e:  # noqa: BLE001 - the run is trained and saved; its test score is an extra
        log(f"test set not scored ({e.__class__.__name__}: {e}); the trained run is unaffected")
        return
    y, pred = state.ds.index["label"].to_numpy()[good], probs.argmax(1)
    log(f"test (held out, not used to choose anything): {len(good)} images, accuracy {float((pred == y).mean()):.4f}, "
        f"weighted F1 {weighted_f1(y, pred):.4f} (the kept model, epoch {epoch}) -> {TEST_PREDICTIONS}")
