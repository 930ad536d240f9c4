"""Load a finished run's model and predict: probabilities per class, optional test-time augmentation, and
the run's temperature (leukviz.calibration) applied to what a prediction record reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from leukviz.core.filenames import CHECKPOINT, CONFIG, SIDECAR
from leukviz.core.storage import read_json
from leukviz.datasets import data, ood
from leukviz.models import backbones, forward
from leukviz.models.devices import pick_device
from leukviz.models.preprocess import Preprocess
from leukviz.runstore import names
from leukviz.scoring import calibration, registry


@dataclass
class LoadedModel:
    """A model rebuilt from its checkpoint and sidecar, in eval mode, with what it needs to preprocess,
    and its temperature (1.0: the raw probabilities) with the calibration it came from
    (calibration.run_calibration's dict)."""

    model: nn.Module
    meta: dict
    device: torch.device
    run_dir: Path
    temperature: float = 1.0
    calibration: dict = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        """Whether predictions are temperature-scaled: the fit says so, or a temperature was set by hand."""
        return self.temperature != 1.0 or bool(self.calibration.get("calibrated"))

    @property
    def backbone(self) -> str:
        return self.meta["backbone"]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def crop(self) -> bool:
        return bool(self.meta["crop"])

    @property
    def window(self) -> float | None:
        """The crop window the run was trained with; None in sidecars of version 1 (one zoom per cell)."""
        return self.meta.get("crop_window")

    @property
    def reference(self) -> dict | None:
        """The training images' reference statistics (ood.reference_stats); None for runs trained before
        the sidecar held them."""
        return self.meta.get("reference") or None

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.of_checkpoint(self.meta)

    @property
    def name(self) -> str:
        return names.model_name(self.backbone, self.run_dir.name)


def load_model(run_dir: str | Path, device: str = "auto", calibrate: bool = True) -> LoadedModel:
    """Rebuild the architecture from the sidecar, then load the safetensors weights (no code is executed).
    With calibrate, the model carries the temperature fitted on the run's validation predictions
    (calibration.run_calibration: T = 1 when the run has none)."""
    from leukviz.runstore import runfiles

    run_dir = Path(run_dir)
    sidecar, weights = run_dir / SIDECAR, run_dir / CHECKPOINT
    if not sidecar.exists() or not weights.exists():
        raise FileNotFoundError(f"run {run_dir.name} has no checkpoint yet (is it finished?)")
    meta = runfiles.read_sidecar(run_dir)  # checked: types and ranges, before anything is allocated
    model = backbones.build_model(meta["backbone"], len(meta["classes"]), arch=meta.get("build_kwargs", {}))
    runfiles.load_weights(model, weights, run_dir.name)
    dev = pick_device(device)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    cal = calibration.run_calibration(run_dir) if calibrate else calibration.not_calibrated("not asked for")
    return LoadedModel(model, meta, dev, run_dir, float(cal["temperature"]), cal)


TTA_CODES = (0, 1, 2, 3, 4, 5, 6, 7)  # the 8 dihedral transforms: flips and 90-degree turns


def predict_arrays(lm: LoadedModel, images: np.ndarray, tta: bool = False, batch_size: int = 64) -> np.ndarray:
    """uint8 (N, S, S, 3) images at the model's size -> raw probabilities (N, C), before any temperature (as
    the validation predictions were saved), through the eval-mode forward loop (forward.outputs) in fp32.
    TTA averages the dihedral views."""
    from leukviz.models.augmentation import augment

    if len(images) == 0:
        return np.zeros((0, len(lm.classes)))

    def view(code: int | None):
        def prepare(xb: torch.Tensor) -> torch.Tensor:
            if code is not None:
                xb = augment(xb, torch.full((len(xb),), code), None)
            return lm.preprocess.normalize(xb.to(lm.device))
        return prepare

    total = 0
    for code in (TTA_CODES if tta else (None,)):
        out = forward.outputs(lm.model, images, lm.backbone, lm.device, batch_size=batch_size, prepare=view(code))
        total = total + torch.cat([torch.softmax(o.float(), dim=1) for o in out])
    return (total / (len(TTA_CODES) if tta else 1)).cpu().numpy()


def prepare(lm: LoadedModel, src) -> np.ndarray:
    """One image file (path or file-like) as the model sees it: the same decoding as training's cache."""
    return lm.preprocess.decode(src)


def predict_files(lm: LoadedModel, paths: Sequence[str | Path], tta: bool = False) -> list[dict]:
    """Predict loose image files; unreadable ones come back with an error instead of probabilities."""
    return _predict_files([lm], paths, tta)[0]


def _predict_files(models: Sequence[LoadedModel], paths: Sequence[str | Path], tta: bool) -> list[list[dict]]:
    """Each model's records of the files, in order. Each readable file is decoded once (data.decode_rgb) for
    every model: fitted to each model's input and described once for the comparison with the runs' training
    images (prediction_record's ood fields); unreadable ones come back with an error."""
    files = [{"file": str(path), "error": ""} for path in paths]
    arrays = [np.empty((len(paths), lm.image_size, lm.image_size, 3), np.uint8) for lm in models]  # filled in place
    good, looks = [], []
    for i, path in enumerate(paths):
        try:
            full = data.decode_rgb(path)
        except data.ImageError as e:
            files[i]["error"] = str(e)
            continue
        for arr, lm in zip(arrays, models):
            arr[len(good)] = lm.preprocess.fit(full)
        looks.append(ood.features(full))
        good.append(i)
        del full  # the full-size image is dropped before the next is decoded
    out = []
    for arr, lm in zip(arrays, models):
        rows = [dict(f) for f in files]
        if good:
            probs = predict_arrays(lm, arr[:len(good)], tta=tta)
            for j, i in enumerate(good):
                rows[i].update(prediction_record(lm, probs[j], looks[j]))
        out.append(rows)
    return out


def prediction_record(lm: LoadedModel, prob: np.ndarray, image: ood.ImageSource | dict | None = None) -> dict:
    """One image's record from its raw probabilities: predicted, confidence and prob_<class> are the
    calibrated values (softmax(log p / T) with the model's temperature; the raw ones when T = 1), beside
    confidence_raw and prob_raw_<class> (the model's own softmax), calibrated and temperature. The
    temperature is fitted on plain predictions; with TTA it scales the 8-view average the same way.

    image: the image as given (a file, bytes, or its ood.features, computed once for several models):
    ood, ood_reasons and ood_note compare it with the run's training images (ood.assess); never instead
    of the prediction. Without it they say it was not compared."""
    raw = np.asarray(prob, dtype=float)
    cal = calibration.apply_temperature(raw, lm.temperature)
    k = int(np.argmax(cal))
    return {"predicted": lm.classes[k], "confidence": float(cal[k]),
            **{f"prob_{c}": float(p) for c, p in zip(lm.classes, cal)},
            "confidence_raw": float(raw[k]), **{f"prob_raw_{c}": float(p) for c, p in zip(lm.classes, raw)},
            "calibrated": lm.calibrated, "temperature": float(lm.temperature),
            **(ood.assess(image, lm.reference) if image is not None else NOT_COMPARED)}


NOT_COMPARED = {"ood": None, "ood_reasons": [], "ood_note": "not compared with the training data (no image given)"}


HEAD = ["file", "model", "run_id", "predicted", "confidence"]  # a prediction table's first columns


def table_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Prediction rows as a table with one column order: file, model (backbone), run_id, predicted,
    confidence, prob_<class>... (calibrated), confidence_raw, prob_raw_<class>... (the model's own
    softmax), calibrated, temperature, ood (True: unlike the run's training images; empty: not compared),
    ood_reasons (joined by "; "), error (empty unless the image was unreadable)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    probs = [k for k in keys if k.startswith("prob_") and not k.startswith("prob_raw_")]
    raw = [k for k in keys if k.startswith("prob_raw_")]
    # one cell per reason list: a table (and its CSV) holds text, the records keep the list
    rows = [{**r, "ood_reasons": "; ".join(r["ood_reasons"])} if isinstance(r.get("ood_reasons"), list) else r
            for r in rows]
    return pd.DataFrame(rows, columns=HEAD + probs + ["confidence_raw"] + raw
                        + ["calibrated", "temperature", "ood", "ood_reasons", "error"])


def table_columns(models: Sequence[LoadedModel]) -> list[str]:
    """table_frame's columns for these models' classes, known before any row (a streamed table's header: a
    batch of only unreadable images still writes every column)."""
    rows = [{**{f"prob_{c}": 0.0 for c in lm.classes}, **{f"prob_raw_{c}": 0.0 for c in lm.classes}}
            for lm in models]
    return list(table_frame(rows).columns)


def table_rows(models: Sequence[LoadedModel], files: Sequence[str | Path], tta: bool = False) -> list[dict]:
    """The files predicted by every model, each file decoded once: one row per image per model, models first
    (predict_table's rows; a streamed batch's)."""
    rows = []
    for lm, recs in zip(models, _predict_files(models, files, tta)):
        rows += [{"file": rec["file"], "model": lm.backbone, "run_id": lm.run_dir.name, "calibrated": lm.calibrated,
                  "temperature": float(lm.temperature), **rec} for rec in recs]
    return rows


def predict_table(models: Sequence[str | Path | LoadedModel], files: Sequence[str | Path],
                  tta: bool = False) -> pd.DataFrame:
    """Predict files with every model: one row per image per model, table_frame's columns (calibrated
    confidence and prob_<class>, the raw ones beside them)."""
    loaded = [m if isinstance(m, LoadedModel) else load_model(m) for m in models]
    return table_frame(table_rows(loaded, files, tta))


TTA_KEYS = (*registry.REGISTRY, "confusion", "subject_vote")  # every registered score of metrics.summary


def _class_map(dataset_classes: list[str], model_classes: list[str]) -> np.ndarray:
    """The model's index of each dataset class, matched by name (any case), not by order: a C-NMC run
    (hem, all) scores an all/ + hem/ tree. DataError when the names differ."""
    model = {c.lower(): i for i, c in enumerate(model_classes)}
    if sorted(c.lower() for c in dataset_classes) != sorted(model):
        raise data.DataError(f"dataset classes {dataset_classes} differ from the model's {model_classes}")
    return np.array([model[c.lower()] for c in dataset_classes], dtype=np.int64)


def _refuse_training_data(ds: data.Dataset, lm: LoadedModel) -> None:
    """Without a held-out test set every labelled image is scored: not when that is a C-NMC root (its
    labels CSV gave no labelled rows) or the very dataset the run was trained on."""
    from leukviz.datasets import cnmc

    if ds.kind == "cnmc":
        raise data.DataError(f"the labels CSV ({cnmc.PRELIM_LABELS}) gives no labelled rows: a C-NMC root is scored "
                             "on its preliminary test set only, never on its training folds")
    trained_on = (read_json(lm.run_dir / CONFIG, {}) or {}).get("dataset_fingerprint")
    if trained_on and trained_on == ds.fingerprint:
        raise data.DataError("this is the dataset the run was trained on and it has no held-out test set: its "
                             "scores would be of training images; give other labelled data")


def seen_digests(lm: LoadedModel, cache_dir: Path | None = None,
                 opened: tuple[data.Dataset, list[str]] | None = None) -> tuple[set[str], str]:
    """The content digests of every image the run's own dataset offered it for training or validation (its
    test set excluded): what a score must not count as held out; and, when that dataset (where config.json
    says) cannot be opened, why nothing could be checked. opened: a dataset already open and its digests,
    used as they are when it is the run's own (the same fingerprint), instead of opening it again."""
    info = read_json(lm.run_dir / CONFIG, {}) or {}
    spec = (info.get("config") or {}).get("data")
    if not spec:
        return set(), "the run does not name its dataset"
    if opened is not None and opened[0].fingerprint == info.get("dataset_fingerprint"):
        ds, digests = opened
    else:
        try:
            ds = data.open_dataset(spec, cache_dir)
        except (data.DataError, OSError) as e:
            return set(), f"the run's own dataset ({spec}) cannot be opened: {e}"
        digests = data.content_digests(ds)
    pool = ds.index["set"].isin(data.POOL_SETS).to_numpy()
    return {d for d, p in zip(digests, pool) if p and not d.startswith("unreadable")}, ""


def _held_out(ds: data.Dataset, digests: list[str], rows: np.ndarray,
              seen: set[str]) -> tuple[np.ndarray, list[str]]:
    """The rows whose bytes (digests: the dataset's, in index order) the run never saw, and the names of those
    it did (left out of the score)."""
    copy = np.array([d in seen for d in np.asarray(digests, dtype=object)[rows]], dtype=bool)
    names = [str(Path(p).relative_to(ds.root)) if Path(p).is_relative_to(ds.root) else Path(p).name
             for p in ds.index["path"].to_numpy()[rows[copy]]]
    return rows[~copy], names


def evaluate_dataset(lm: LoadedModel, dataset: str | Path, cache_dir: Path | None = None, tta: bool = False) -> dict:
    """Score a run on labelled data it did not train on: a C-NMC root's preliminary test set (labels CSV),
    or every image of a class-per-folder tree.

    The metrics are of the plain prediction; with tta the same metrics of the 8-view average come as
    their own dict under "with_tta", never in place of the plain ones.
    """
    from leukviz.scoring import metrics

    ds = data.open_dataset(dataset, cache_dir)
    to_model = _class_map(list(ds.classes), list(lm.classes))
    # The dataset's held-out test set (C-NMC's labelled preliminary set, a test/ folder) when it has one;
    # otherwise every labelled image of the tree (a folder the run never saw).
    test = ds.test_rows
    if not len(test):
        _refuse_training_data(ds, lm)
    sets = sorted(set(test["set"])) if len(test) else sorted(set(ds.index["set"]) - {"final"})
    rows = np.flatnonzero(ds.index["set"].isin(sets).to_numpy() & (ds.index["label"] >= 0).to_numpy())
    # images whose bytes the run trained (or chose its epoch) on are never scored as held out: named, left out
    digests = data.content_digests(ds)  # hashed once (the demo's index carries none) for both uses
    seen, unchecked = seen_digests(lm, cache_dir, (ds, digests))
    rows, copies = _held_out(ds, digests, rows, seen)
    if len(copies) and not len(rows):
        raise data.DataError(f"every one of the {len(copies)} labelled images is a copy of an image the run trained "
                             f"or was validated on ({data.listing(copies, 3)}): nothing here is held out; give other data")
    images, ok = lm.preprocess.cache(ds, cache_dir)
    rows = rows[ok[rows]]
    if len(rows) == 0:
        raise data.DataError("no labelled, readable images to evaluate")
    y = to_model[ds.index["label"].to_numpy()[rows]]
    subjects = ds.index["subject"].to_numpy()[rows]
    subjects = subjects if (subjects != "").all() else None
    res = metrics.summary(y, predict_arrays(lm, images[rows]), lm.classes, subjects)
    res.update({"dataset": str(dataset), "set": "+".join(sets), "tta": tta, "run_id": lm.run_dir.name,
                "skipped": int((~ok[np.flatnonzero(ds.index["set"].isin(sets).to_numpy())]).sum()),
                "not_held_out": copies, "copies_unchecked": unchecked})
    if tta:
        with_tta = metrics.summary(y, predict_arrays(lm, images[rows], tta=True), lm.classes, subjects)
        res["with_tta"] = {k: with_tta[k] for k in TTA_KEYS if k in with_tta}
    return res
