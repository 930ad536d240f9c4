"""The schema of each file of a run folder, checked when it is read: a value read from a run folder is an
input like any other (types, ranges), and a damaged file is named, with what is wrong and how to repair it.

runs.py reads the files through these checks; nothing here imports torch (the listing stays fast), and the
weights file is checked from its header alone (sizes, shapes, offsets), never loaded.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leukviz.core import filenames, storage
from leukviz.core.errors import LeukvizError
from leukviz.models import config
from leukviz.scoring import predictions


class RunFileError(LeukvizError, ValueError):
    """A file of a run folder is damaged; the message names the file, what is wrong and the repair."""


@dataclass(frozen=True)
class Problem:
    """One damaged file of a run: which, what is wrong, what to do."""

    file: str
    what: str
    repair: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what}; {self.repair}"


# Files without which a finished run cannot be used (Predict needs the first three, Compare all four); the
# others damaged are notes: status.json reads as interrupted, a bad metrics line is skipped, a damaged
# calibration.json is refitted, a damaged last.pt only means the run cannot be resumed.
REQUIRED = (filenames.CONFIG, filenames.SIDECAR, filenames.CHECKPOINT, filenames.PREDICTIONS)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _load(path: Path) -> Any:
    """The JSON in path; RunFileError when it is empty or not JSON; FileNotFoundError passes through."""
    blob = storage.read_bytes(path)  # a FIFO or device in its place is NotRegularFile, never a hang
    if not blob.strip():
        raise RunFileError("empty")
    try:
        return json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFileError(f"not valid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def not_regular_files(run_dir: Path) -> dict[str, str]:
    """The run files (filenames.RUN_FILES) that exist but are not regular files, with what each is (a pipe, a
    socket, a device, a folder): found by stat alone, so nothing blocks on a FIFO."""
    out = {}
    for name in filenames.RUN_FILES:
        try:
            mode = os.stat(run_dir / name).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            out[name] = storage.file_kind(mode)
    return out


# ---------------------------------------------------------------------------------------------- config.json

def check_config(obj: Any) -> tuple[config.RunConfig, str]:
    """config.json -> (RunConfig, dataset fingerprint), or RunFileError saying what is wrong."""
    if not isinstance(obj, dict):
        raise RunFileError(f"holds a JSON {_type_name(obj)}, not an object")
    if not isinstance(obj.get("config"), dict):
        raise RunFileError(f"its \"config\" is {_type_name(obj.get('config'))}, not an object")
    fp = obj.get("dataset_fingerprint")
    if not isinstance(fp, str) or not fp:
        raise RunFileError(f"its \"dataset_fingerprint\" is {fp!r}, not a fingerprint")
    if "created" in obj and not _is_finite(obj["created"]):
        raise RunFileError(f"its \"created\" is {obj['created']!r}, not a time")
    try:
        cfg = config.from_stored(obj["config"])
    except config.ConfigError as e:
        raise RunFileError(f"its config is not valid: {e}") from None
    return cfg, fp


def read_config(run_dir: Path) -> tuple[dict, config.RunConfig, str]:
    """config.json checked: (the whole object, its RunConfig, its dataset fingerprint)."""
    path = run_dir / filenames.CONFIG
    try:
        obj = _load(path)
    except FileNotFoundError:
        raise RunFileError("missing") from None
    cfg, fp = check_config(obj)
    return obj, cfg, fp


# ---------------------------------------------------------------------------------------------- status.json

STATUS_FIELDS = {"error": (str, type(None)), "pid": int, "epoch": int, "epochs": int, "updated": (int, float),
                 "world_size": int, "early_stop": (str, type(None)), "metrics": dict, "seconds": (int, float)}


def clean_status(obj: dict) -> tuple[dict, list[str]]:
    """status.json with every field of the wrong type dropped (a reader never trips over one), and what was."""
    bad = [k for k, kind in STATUS_FIELDS.items()
           if k in obj and (not isinstance(obj[k], kind) or isinstance(obj[k], bool))]
    return {k: v for k, v in obj.items() if k not in bad}, [f"\"{k}\" is {obj[k]!r}" for k in bad]


# ---------------------------------------------------------------------------------------------- metrics.jsonl

# ---------------------------------------------------------------------------------------------- model.json

def check_sidecar(obj: Any) -> dict:
    """model.json checked (types and ranges of what rebuilds the model); RunFileError otherwise."""
    from leukviz.models.backbones import BACKBONES

    if not isinstance(obj, dict):
        raise RunFileError(f"holds a JSON {_type_name(obj)}, not an object")
    if obj.get("backbone") not in BACKBONES:
        raise RunFileError(f"unknown backbone {obj.get('backbone')!r} (known: {', '.join(BACKBONES)})")
    classes = obj.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2 or len(set(map(str, classes))) != len(classes)
            or not all(isinstance(c, str) and c for c in classes)):
        raise RunFileError(f"\"classes\" must be a list of two or more distinct names, got {classes!r}")
    low, high = config.IMAGE_SIZES
    size = obj.get("image_size")
    if not _is_int(size) or not low <= size <= high:
        raise RunFileError(f"\"image_size\" must be a whole number from {low} to {high}, got {size!r}")
    if not _is_int(obj.get("positive")) or not 0 <= obj["positive"] < len(classes):
        raise RunFileError(f"\"positive\" must index one of the {len(classes)} classes, got {obj.get('positive')!r}")
    if not isinstance(obj.get("crop"), bool):
        raise RunFileError(f"\"crop\" must be true or false, got {obj.get('crop')!r}")
    window = obj.get("crop_window")
    if window is not None and not (_is_finite(window) and 0 < window <= 1):
        raise RunFileError(f"\"crop_window\" must be a fraction in (0, 1], got {window!r}")
    for key in ("mean", "std"):
        v = obj.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_finite(x) for x in v)) or \
                (key == "std" and min(v) <= 0):
            raise RunFileError(f"\"{key}\" must be three numbers{' above 0' if key == 'std' else ''}, got {v!r}")
    for key in ("build_kwargs", "metrics", "split"):
        if key in obj and not isinstance(obj[key], dict):
            raise RunFileError(f"\"{key}\" must be an object, got {_type_name(obj[key])}")
    bad = {k: v for k, v in (obj.get("metrics") or {}).items() if not _is_number(v)}
    if bad:
        raise RunFileError(f"metrics that are not numbers: {bad}")
    if "reference" in obj and not isinstance(obj["reference"], (dict, type(None))):
        raise RunFileError(f"\"reference\" must be an object, got {_type_name(obj['reference'])}")
    return obj


def read_sidecar(run_dir: Path) -> dict:
    """model.json checked; RunFileError (missing, empty, not JSON, wrong types) naming the run and file."""
    try:
        return check_sidecar(_load(run_dir / filenames.SIDECAR))
    except FileNotFoundError:
        raise RunFileError(f"run {run_dir.name}: {filenames.SIDECAR} is missing") from None
    except RunFileError as e:
        raise RunFileError(f"run {run_dir.name}: {filenames.SIDECAR} is damaged: {e}") from None


# ---------------------------------------------------------------------------------------------- model.safetensors

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def weights_header(path: Path) -> dict[str, list[int]]:
    """The tensor shapes of a safetensors file from its header, checked against the file's size (an empty,
    truncated or garbage file is a RunFileError); the tensors are not read."""
    with storage.open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise RunFileError("empty (0 bytes)")
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100_000_000):
            raise RunFileError(f"not a safetensors file ({size} bytes, no valid header)")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RunFileError("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise RunFileError("not a safetensors file (its header is not an object)")
    data, end, shapes = size - 8 - n, 0, {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, (a, b) = [int(s) for s in t["shape"]], [int(x) for x in t["data_offsets"]]
            itemsize = _DTYPE_BYTES[t["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise RunFileError(f"not a safetensors file (tensor {name!r} is described wrongly)") from None
        if b - a != math.prod(shape) * itemsize or a < 0:
            raise RunFileError(f"tensor {name!r}: its shape {shape} does not fit its bytes")
        end = max(end, b)
        shapes[name] = shape
    if end > data:
        raise RunFileError(f"truncated: {size} bytes, the header describes {end + 8 + n}")
    if not shapes:
        raise RunFileError("holds no tensors")
    return shapes


def check_weights(path: Path, sidecar: dict) -> None:
    """The weights file is whole and its classifier has one output per class of the sidecar."""
    from leukviz.models.backbones import get_spec

    shapes = weights_header(path)
    key = f"{get_spec(sidecar['backbone']).head}.weight"
    if key not in shapes:
        raise RunFileError(f"no {key} (the {sidecar['backbone']} classifier): not this run's model")
    if shapes[key][0] != len(sidecar["classes"]):
        raise RunFileError(f"its classifier has {shapes[key][0]} outputs, {filenames.SIDECAR} names "
                           f"{len(sidecar['classes'])} classes")


def load_weights(model: Any, path: Path, run_id: str) -> None:
    """Load a checked safetensors file into a model built from the sidecar; a file that does not fit it (a
    shape or a name differs) is a RunFileError that says which, not a raw traceback."""
    from safetensors.torch import load_file

    try:
        shapes = weights_header(path)
    except RunFileError as e:
        raise RunFileError(f"run {run_id}: {filenames.CHECKPOINT} is damaged: {e}. {WEIGHTS_REPAIR}") from None
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} is {shapes[k]} in the file, {want[k]} in the model" for k in want if k in shapes
             and shapes[k] != want[k]]
    missing, extra = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
    if wrong or missing or extra:
        parts = wrong[:3] + ([f"missing {', '.join(missing[:3])}"] if missing else []) \
            + ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise RunFileError(f"run {run_id}: {filenames.CHECKPOINT} does not fit the model {filenames.SIDECAR} describes "
                           f"({'; '.join(parts)}). {WEIGHTS_REPAIR}")
    model.load_state_dict(load_file(str(path)))


WEIGHTS_REPAIR = "Train the configuration again (train ... --force) or delete the run folder"


# ---------------------------------------------------------------------------------------------- the others

def check_predictions(path: Path, classes: list[str]) -> tuple[int, int]:
    """A val/test predictions CSV: the columns Compare reads, and every row whole (a label of a class, a
    probability per class); one cut short by a crash is damaged. Returns (rows, rows whose highest
    probability is their label's), for the cross-check with model.json (agrees_with_sidecar)."""
    import csv

    with io.TextIOWrapper(storage.open_regular(path), encoding="utf-8", errors="replace", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise RunFileError("empty")
    header = rows[0]
    lacking = [c for c in ["path", "label"] + [predictions.prob_column(c) for c in classes] if c not in header]
    if lacking:
        raise RunFileError(f"lacks the columns {', '.join(lacking)}")
    label, probs = header.index("label"), [header.index(predictions.prob_column(c)) for c in classes]
    right = 0
    for i, row in enumerate(rows[1:], 2):
        try:
            p = [float(row[j]) for j in probs] if len(row) == len(header) else []
            ok = bool(p) and 0 <= int(row[label]) < len(classes) and all(0.0 <= x <= 1.0 for x in p)
        except ValueError:
            ok = False
        if not ok:
            raise RunFileError(f"line {i} is not a whole prediction (cut short?)")
        right += max(range(len(p)), key=p.__getitem__) == int(row[label])
    if len(rows) < 2:
        raise RunFileError("holds no predictions")
    return len(rows) - 1, right


def agrees_with_sidecar(counts: tuple[int, int], sidecar: dict) -> str | None:
    """What val_predictions.csv's rows and accuracy (check_predictions) contradict in model.json, which the
    engine writes from the same predictions: fewer or more rows than its split's validation count (a file
    cut at a line end), or another accuracy than its val_acc (a hand-edited file). None when they agree,
    or when model.json records no validation count (a run folder not written by the engine)."""
    n, right = counts
    n_val = (sidecar.get("split") or {}).get("n_val")
    if not _is_int(n_val):
        return None
    if n != n_val:
        return f"holds {n} predictions, {filenames.SIDECAR} says the validation set has {n_val} cells (cut short?)"
    acc = (sidecar.get("metrics") or {}).get("val_acc")
    if _is_finite(acc) and abs(right - acc * n) > 0.5:  # more than one cell's rounding apart
        return (f"its accuracy is {right / n:.3f}, {filenames.SIDECAR} says the model scored {acc:.3f} on these "
                "cells (edited by hand?)")
    return None


def check_resume_state(path: Path) -> None:
    """last.pt is a whole torch file (a zip archive): a truncated or garbage one cannot resume."""
    with storage.open_regular(path) as fh:
        whole = zipfile.is_zipfile(fh)
    if not whole:
        raise RunFileError("not a whole PyTorch file (truncated or garbage)")
