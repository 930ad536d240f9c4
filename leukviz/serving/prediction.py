"""The Predict page's numbers: dropped images (and the images inside dropped zips) decoded and predicted
once by every model, with calibrated confidences, an ensemble of the models, their table, and Grad-CAM
views of them; no Streamlit in here."""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from leukviz.datasets import data, ood
from leukviz.models import backbones
from leukviz.serving.batchsummary import (  # noqa: F401 - the batch's summary, re-exported as before
    ALL_ROWS,
    SEEN_WORDS,
    UNLIKE_WORDS,
    _figure_row,
    _recall_text,
    _share,
    _wilson,
    batch_summary,
    model_name,
    own_images,
    subjects_frame,
    summary_frame,
    summary_lines,
    summary_sentences,
    truth_of,
)

UPLOAD_TYPES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")


@dataclass
class ModelPrediction:
    """One model's answer for one image. predicted, confidence and probs are calibrated (the run's
    temperature applied; the raw values when T = 1); probs_raw and confidence_raw are the model's softmax."""

    model: str  # LoadedModel.name
    run_id: str
    image: np.ndarray | None  # as fed to the model: decoded, cropped, resized (before normalisation)
    predicted: str
    confidence: float
    probs: dict[str, float]
    backbone: str = ""
    probs_raw: dict[str, float] = field(default_factory=dict)
    confidence_raw: float | None = None
    temperature: float = 1.0
    calibrated: bool = False
    ood: bool | None = None  # True: unlike the run's training images; None: not compared (no reference)
    ood_reasons: list[str] = field(default_factory=list)
    ood_note: str = ""
    calibration_note: str = ""  # why the confidence is not calibrated, when it is not (calibration's note)

    @classmethod
    def of_record(cls, lm: Any, rec: dict, image: np.ndarray | None) -> "ModelPrediction":
        """From inference.prediction_record's dict."""
        return cls(lm.name, lm.run_dir.name, image, rec["predicted"], rec["confidence"],
                   {c: rec[f"prob_{c}"] for c in lm.classes}, lm.backbone,
                   {c: rec[f"prob_raw_{c}"] for c in lm.classes}, rec["confidence_raw"], rec["temperature"],
                   rec["calibrated"], rec.get("ood"), list(rec.get("ood_reasons", [])), rec.get("ood_note", ""),
                   str((getattr(lm, "calibration", None) or {}).get("note") or ""))


@dataclass
class ImagePrediction:
    name: str
    error: str | None = None
    results: list[ModelPrediction] = field(default_factory=list)
    digest: str = ""  # the file's content digest (data.file_digest): finds a run's own training cells


def file_digest(blob: bytes) -> str:
    """A file's content digest as a dataset's index computes it (blake2b, 16 bytes), so an uploaded copy of a
    run's own training or validation image is known by its bytes (inference.seen_digests)."""
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def _read_bytes(src: str | Path | bytes | IO[bytes] | ZipEntry) -> bytes:
    if isinstance(src, bytes):
        return src
    if isinstance(src, ZipEntry):
        with _open_zip(src.archive) as zf:
            return _entry_bytes(zf, src.member)
    if isinstance(src, (str, Path)):
        return Path(src).read_bytes()
    if hasattr(src, "getvalue"):
        return src.getvalue()
    src.seek(0)
    return src.read()


def predict_images(models: Sequence[Any], items: Sequence[tuple[str, bytes]],
                   keep_images: bool = True) -> list[ImagePrediction]:
    """Predict images (name, file bytes) with every model: each image decoded once per distinct decoding
    (models sharing a size and crop share it) and predicted once per model, in batches.

    A file that is empty, truncated or not an image gives ImagePrediction.error (the reason, without the
    name: the caller shows the name itself) and no exception, so one bad file never stops the others.
    keep_images=False drops the decoded images from the results (a table needs only the numbers).
    Each readable image is also described once (ood.features) and compared with every model's training
    images (ModelPrediction.ood, ood_reasons).
    """
    from leukviz.serving import inference

    out = [ImagePrediction(name, digest=file_digest(blob) if blob else "") for name, blob in items]
    decoders = {lm.preprocess.decoding: lm.preprocess for lm in models}
    decoded: dict[tuple, dict[int, np.ndarray]] = {key: {} for key in decoders}
    looks: dict[int, dict] = {}
    for i, (name, blob) in enumerate(items):
        if not blob:
            out[i].error = "the file is empty (0 bytes)"
            continue
        buf = io.BytesIO(blob)
        buf.name = name
        try:  # decoded once at its own size: the check measures it, each decoding fits it (a large 16-bit
            full = data.decode_rgb(buf)  # image is decoded once, not once per use)
        except data.ImageError as e:
            out[i].error = e.reason  # without the name: the caller shows it
            continue
        looks[i] = ood.features(full)
        for key, pre in decoders.items():
            decoded[key][i] = pre.fit(full)
        del full
    good = [i for i, p in enumerate(out) if p.error is None]
    for lm in models:
        images = decoded[lm.preprocess.decoding]
        probs = inference.predict_arrays(lm, np.stack([images[i] for i in good])) if good else []
        for i, prob in zip(good, probs):
            rec = inference.prediction_record(lm, prob, looks[i])
            out[i].results.append(ModelPrediction.of_record(lm, rec, images[i] if keep_images else None))
    return out


def predict_image(models: Sequence[Any], name: str, src: str | Path | bytes | IO[bytes] | ZipEntry) -> ImagePrediction:
    """Predict one image (a path, bytes, an uploaded file or an image inside a zip) with every model
    (predict_images)."""
    try:
        blob = _read_bytes(src)
    except OSError as e:
        return ImagePrediction(name, f"cannot read the file ({e.__class__.__name__})")
    return predict_images(models, [(name, blob)])[0]


MAX_ZIP_MEMBER = 64 * 2**20  # an image inside an uploaded zip larger than this is left out
CHUNK = 128  # images of a batch read, decoded and predicted at a time: their rows kept, the images dropped


@dataclass(frozen=True, eq=False)
class ZipEntry:
    """One image inside an uploaded zip, by reference: its bytes are read from the zip when needed (a page of
    cards, a chunk of the table), so a batch never holds every image at once."""

    archive: Any  # the zip: its bytes or a seekable file (an upload)
    member: str  # the entry's name inside it


def zip_members(blob: bytes, folder: Path) -> list[str]:
    """The image entries of an uploaded zip (their names inside it, in path order), as data.extract_zip checks
    and extracts it into folder (its limits and refusals; a zip it refuses, or cannot open, gives none). The
    caller may delete folder afterwards: the entries are read from the zip itself (ZipEntry)."""
    path = data.save_upload(blob, folder)
    dest = folder / f"{path.stem}-files"
    try:
        data.extract_zip(path, dest)
    except data.DataError:
        return []
    return [p.relative_to(dest).as_posix() for p in sorted(dest.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower().lstrip(".") in UPLOAD_TYPES
            and p.stat().st_size <= MAX_ZIP_MEMBER]


def _entry_bytes(zf: zipfile.ZipFile, member: str) -> bytes:
    try:
        return zf.read(member)
    except (KeyError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise OSError(f"{member} cannot be read from its zip ({e.__class__.__name__}: {e})") from None


def _open_zip(archive: Any) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, bytes) else archive)
    except zipfile.BadZipFile as e:
        raise OSError(f"not a readable zip ({e})") from None


def _read_sources(items: Sequence[tuple[str, Any]]) -> list[bytes | str]:
    """Each item's bytes, or why they cannot be read (a str); each zip opened once for all its entries."""
    opened: dict[int, zipfile.ZipFile | OSError] = {}
    out: list[bytes | str] = []
    try:
        for _, src in items:
            try:
                if isinstance(src, ZipEntry):
                    if id(src.archive) not in opened:
                        try:
                            opened[id(src.archive)] = _open_zip(src.archive)
                        except OSError as e:
                            opened[id(src.archive)] = e
                    zf = opened[id(src.archive)]
                    if isinstance(zf, OSError):
                        raise zf
                    out.append(_entry_bytes(zf, src.member))
                else:
                    out.append(_read_bytes(src))
            except OSError as e:
                out.append(f"cannot read the file ({e.__class__.__name__})")
    finally:
        for zf in opened.values():
            if isinstance(zf, zipfile.ZipFile):
                zf.close()
    return out


def predict_sources(models: Sequence[Any], items: Sequence[tuple[str, Any]],
                    seen: dict[str, set[str] | None] | None = None, chunk: int = CHUNK) -> pd.DataFrame:
    """The table (prediction_table) of a batch of images given as (shown name, source: a path, bytes, an
    upload or a ZipEntry), predicted a chunk at a time: each chunk's bytes are read, decoded once for every
    model, predicted and reduced to its rows before the next chunk is read. No decoded image and no file's
    bytes outlive their chunk, whatever the batch's size; the cards decode their own page (predict_image)."""
    parts: list[list[pd.DataFrame]] = [[] for _ in models]
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        blobs = _read_sources(part)
        readable = [(name, b) for (name, _), b in zip(part, blobs) if isinstance(b, bytes)]
        done = iter(predict_images(models, readable, keep_images=False))
        preds = [next(done) if isinstance(b, bytes) else ImagePrediction(name, b) for (name, _), b in zip(part, blobs)]
        del blobs, readable
        for j, lm in enumerate(models):  # models first, as prediction_table orders a whole batch
            parts[j].append(prediction_table([lm], preds, seen))
    frames = [f for per_model in parts for f in per_model]
    return pd.concat(frames, ignore_index=True) if frames else prediction_table(models, [], seen)


def prediction_table(models: Sequence[Any], predictions: Sequence[ImagePrediction],
                     seen: dict[str, set[str] | None] | None = None) -> pd.DataFrame:
    """One row per image per model, models first, in inference.table_frame's columns: file, model (the run's
    name, 'GoogLeNet · 1a2b3c': three runs of one backbone are three models), run_id, predicted, confidence,
    prob_<class>... (calibrated), confidence_raw, prob_raw_<class>..., calibrated, temperature, ood,
    ood_reasons and error (empty unless unreadable); with seen (run id -> the digests of its own training
    and validation images, inference.seen_digests; None where they could not be read) a last column "seen":
    whether the image is one of them (empty where unknown)."""
    from leukviz.serving import inference

    rows = []
    for lm in models:
        mine = None if seen is None else seen.get(lm.run_dir.name)
        for p in predictions:
            r = next((r for r in p.results if r.run_id == lm.run_dir.name), None)
            rows.append({"file": p.name, "model": lm.name, "run_id": lm.run_dir.name,
                         "calibrated": lm.calibrated, "temperature": float(lm.temperature),
                         **(_result_columns(r) if r else {}), "error": p.error or ""})
            if seen is not None:
                rows[-1]["seen"] = None if mine is None or not p.digest else p.digest in mine
    table = inference.table_frame(rows)
    if seen is not None:
        table["seen"] = [r.get("seen") for r in rows]
    return table


def _result_columns(r: ModelPrediction) -> dict[str, Any]:
    return {"predicted": r.predicted, "confidence": r.confidence,
            **{f"prob_{c}": v for c, v in r.probs.items()},
            "confidence_raw": r.confidence_raw, **{f"prob_raw_{c}": v for c, v in r.probs_raw.items()},
            "ood": r.ood, "ood_reasons": r.ood_reasons}


def table_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------- confidence

def calibration_text(p: ModelPrediction) -> str:
    """What the shown confidence is: 'calibrated on validation, T = 1.60 (the raw model was over-confident);
    raw 95.0%', or that it is the model's raw softmax."""
    if not p.calibrated:
        why = p.calibration_note.removeprefix("not calibrated: ") or "the run has no usable validation predictions"
        return f"not calibrated ({why}): the model's raw softmax"
    if p.temperature > 1.0:
        lean = " (the raw model was over-confident)"
    elif p.temperature < 1.0:
        lean = " (the raw model was under-confident)"
    else:
        lean = ""
    raw = f"; raw {p.confidence_raw:.1%}" if p.confidence_raw is not None else ""
    return f"calibrated on validation, T = {p.temperature:.2f}{lean}{raw}"


OOD_TITLE = "Unlike this model's training data"


def ood_text(p: ModelPrediction) -> str:
    """The Predict card's out-of-distribution warning: why the image is unlike the run's training images,
    and that the prediction is shown all the same; empty when it is like them or was not compared."""
    if not p.ood:
        return ""
    return (f"{OOD_TITLE}: " + "; ".join(p.ood_reasons) + ". The prediction above is shown as the model "
            "gives it, but the model has never seen images like this one, so its confidence means little.")


def image_ood_text(prediction: ImagePrediction) -> str:
    """The out-of-distribution warning of one image, said once under all its model cards (each card only
    greys its confidence): which models find it unlike their training images and why (the reasons once when
    they agree), and that the predictions are shown all the same; empty when none does."""
    flagged = [p for p in prediction.results if p.ood]
    if not flagged:
        return ""
    by_reason: dict[str, list[str]] = {}  # models that give the same reasons named together, the reasons once
    for p in flagged:
        by_reason.setdefault("; ".join(p.ood_reasons), []).append(p.model)
    if len(by_reason) == 1 and len(flagged) == len(prediction.results) > 1:
        why = f"every model: {next(iter(by_reason))}"
    else:
        why = " | ".join(f"{', '.join(models)}: {reasons}" for reasons, models in by_reason.items())
    return (f"{OOD_TITLE} ({why}). The predictions are shown as the models give them, but "
            f"{'they have' if len(flagged) > 1 else 'the model has'} never seen images like this one, so "
            f"{'their' if len(flagged) > 1 else 'its'} confidence means little.")


UNRELIABLE_TEXT = "not reliable here: unlike the training images"


def confidence_reliable(p: ModelPrediction) -> bool:
    """Whether a confidence can be read as one: not for an image flagged unlike the run's training images
    (such images are called with high confidence and no better than chance: docs/BENCHMARKS.md, "Numbers
    behind the code")."""
    return not p.ood


@dataclass
class EnsemblePrediction:
    """The mean of several models' calibrated probabilities for one image, and the class it picks."""

    n: int
    predicted: str
    confidence: float
    probs: dict[str, float]
    votes: dict[str, str]  # model name -> its own prediction
    n_calibrated: int = 0  # how many of the n models' probabilities were temperature-scaled
    n_unreliable: int = 0  # how many of the n models found the image unlike their training images

    @property
    def reliable(self) -> bool:
        return self.n_unreliable == 0

    @property
    def title(self) -> str:
        return f"Ensemble (mean of {self.n} models)"

    @property
    def text(self) -> str:
        """'87.0%, the mean of the models' calibrated probabilities of all' (or which were not calibrated)."""
        if self.n_calibrated == self.n:
            kind = "calibrated probabilities"
        elif self.n_calibrated == 0:
            kind = "raw probabilities (none could be calibrated)"
        else:
            kind = f"probabilities ({self.n_calibrated} of {self.n} calibrated)"
        return f"{self.confidence:.1%}, the mean of the models' {kind} of {self.predicted}"

    @property
    def agreement(self) -> str:
        said = set(self.votes.values())
        if len(said) == 1:
            return f"all {self.n} models predict {self.predicted}"
        return "the models disagree: " + ", ".join(f"{m} says {c}" for m, c in self.votes.items())


def ensemble(prediction: ImagePrediction) -> EnsemblePrediction | None:
    """The ensemble of an image's model results: the mean of their calibrated probabilities, class by
    class. None for fewer than two results, or when the models do not share their classes."""
    results = prediction.results
    if len(results) < 2:
        return None
    classes = list(results[0].probs)
    if any(set(r.probs) != set(classes) for r in results):
        return None
    mean = {c: float(np.mean([r.probs[c] for r in results])) for c in classes}
    best = max(classes, key=lambda c: mean[c])
    return EnsemblePrediction(len(results), best, mean[best], mean, {r.model: r.predicted for r in results},
                              sum(r.calibrated for r in results), sum(not confidence_reliable(r) for r in results))


# ---------------------------------------------------------------------------------------------- Grad-CAM

CAM_MIN_READABLE = 4  # a map of fewer cells a side (a stride-32 backbone under 128 px) says little


def cam_resolution_text() -> str:
    """How fine each registered backbone's Grad-CAM map is: '1/32 of the image side for ResNet50 and
    GoogLeNet, 1/16 for VGG16'."""
    by_stride: dict[int, list[str]] = {}
    for spec in backbones.BACKBONES.values():
        by_stride.setdefault(spec.cam_stride, []).append(spec.title)
    parts = [f"1/{stride}{' of the image side' if i == 0 else ''} for {' and '.join(titles)}"
             for i, (stride, titles) in enumerate(by_stride.items())]
    return ", ".join(parts)


@dataclass
class CamView:
    model: str
    run_id: str
    overlay: np.ndarray  # uint8 RGB at the model's input size
    grid: tuple[int, int]
    caption: str


def cam_caption(grid: Sequence[int], image_size: int) -> str:
    h, w = int(grid[0]), int(grid[1])
    text = f"Grad-CAM: a {h}×{w} map smoothed up to {image_size} px"
    if min(h, w) < CAM_MIN_READABLE:
        text += " (too coarse to read much: models trained at 128 px or more give finer maps)"
    return text


def cam_views(models: Sequence[Any], prediction: ImagePrediction) -> list[CamView | str]:
    """One Grad-CAM overlay per model result of an already decoded prediction; a failure gives its
    message (a str) in that model's place, so one model never stops the others."""
    from leukviz.serving import explain

    by_run = {lm.run_dir.name: lm for lm in models}
    out: list[CamView | str] = []
    for p in prediction.results:
        lm = by_run.get(p.run_id)
        if lm is None:
            out.append("the model is no longer loaded")
            continue
        try:
            # the map explains the class the prediction showed (its pass has no gradients to reuse)
            res = explain.explain_image(lm, p.image, target=p.predicted)
        except (RuntimeError, ValueError, KeyError, ImportError) as e:
            out.append(f"{e.__class__.__name__}: {e}")
            continue
        out.append(CamView(p.model, p.run_id, res["overlay"], tuple(res["grid"]),
                           cam_caption(res["grid"], lm.image_size)))
    return out


# ---------------------------------------------------------------------------------------------- many images
