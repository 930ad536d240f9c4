"""What the dashboard pages show, computed from the engine and the run folders; no Streamlit in here."""

from __future__ import annotations

import hashlib
import io
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from leukviz import backbones, data, metrics, runs
from leukviz.config import RunConfig
from leukviz.events import BATCH, EPOCH, latest_start
from leukviz.layout import CHECKPOINT, CONFIG, PREDICTIONS, SIDECAR
from leukviz.preprocess import Preprocess
from leukviz.storage import read_json

UPLOAD_TYPES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")
SPLIT_TEXT = {"subject": "by subject", "folds": "official folds", "image": "by image (leaky)"}
FINETUNE_TEXT = {"full": "the whole network", "last": "last stage + head", "head": "head only"}


# ---------------------------------------------------------------------------------------------- text

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=\"'&^%@/])")


def plain(text: Any) -> str:
    """User-supplied text made literal inside Streamlit markdown: every markdown, LaTeX ($) and
    directive (:red[...], :material/x:) character is backslash-escaped, and HTML is never rendered."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def dataset_label(spec: str) -> str:
    """Short name of a dataset spec: 'demo' or the last parts of its path."""
    if spec == "demo":
        return "built-in demo"
    p = Path(spec)
    return str(Path(*p.parts[-2:])) if len(p.parts) > 2 else str(p)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def backbone_title(name: str) -> str:
    try:
        return backbones.get_spec(name).title
    except ValueError:
        return name


def run_name(run: runs.Run) -> str:
    """Same form as inference.LoadedModel.name: 'GoogLeNet · 1a2b3c'."""
    return f"{backbone_title(run.config.backbone)} · {run.run_id[:6]}"


def describe_config(cfg: RunConfig) -> str:
    epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
    return (f"{backbone_title(cfg.backbone)}, {cfg.preset} preset, weights {cfg.weights}, "
            f"{cfg.image_size} px, {epochs}, batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}, fine-tune {FINETUNE_TEXT.get(cfg.finetune, cfg.finetune)}, "
            f"split {SPLIT_TEXT.get(cfg.split, cfg.split)}")


# ---------------------------------------------------------------------------------------------- runs

def all_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    """Every readable run, newest first; a folder with a broken config.json is left out, not fatal."""
    out = []
    for r in runs.list_runs(runs_dir):
        try:
            r.config  # noqa: B018 - parse once to drop unreadable runs
        except (KeyError, TypeError, ValueError):
            continue
        out.append(r)
    return out


def finished_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    return [r for r in all_runs(runs_dir) if r.state == "finished" and r.has_checkpoint]


def find_run(cfg: RunConfig, fingerprint: str, runs_dir: str | Path | None = None) -> runs.Run | None:
    """The run folder of this exact configuration, if one exists (unlike runs.run_for, creates nothing)."""
    path = runs.runs_root(runs_dir) / cfg.identity(fingerprint)
    return runs.Run(path) if (path / CONFIG).exists() else None


def latest_per_backbone(candidates: Iterable[runs.Run]) -> list[runs.Run]:
    """The newest run of each backbone, in registry order (candidates come newest first)."""
    best: dict[str, runs.Run] = {}
    for r in candidates:
        best.setdefault(r.config.backbone, r)
    order = {name: i for i, name in enumerate(backbones.BACKBONES)}
    return sorted(best.values(), key=lambda r: order.get(r.config.backbone, len(order)))


def default_models(finished: Sequence[runs.Run], dataset: str) -> list[runs.Run]:
    """Models offered first for prediction: the newest finished run per backbone on the active dataset,
    or on any dataset when none was trained on it."""
    on_active = [r for r in finished if r.config.data == dataset]
    return latest_per_backbone(on_active or finished)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Card:
    """What the overview shows for one backbone."""

    backbone: str
    title: str
    state: str  # "none" when no run of this backbone exists on the dataset
    run_id: str | None = None
    epoch: int = 0
    epochs: int = 0
    val_acc: float | None = None
    val_f1: float | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        if self.state == "none":
            return "No run yet"
        if self.state == "starting":
            return "Starting…"
        if self.state == "queued":
            return "Queued: waits for the device"
        if self.state == "running":
            return f"Running: epoch {min(self.epoch + 1, self.epochs)} of {self.epochs}"
        if self.state == "finished":
            return "Finished"
        return self.state.capitalize()


def backbone_cards(dataset: str, runs_dir: str | Path | None = None) -> list[Card]:
    """One card per registered backbone: its active run on this dataset if any, else its newest run."""
    mine = [r for r in all_runs(runs_dir) if r.config.data == dataset]
    cards = []
    for name, spec in backbones.BACKBONES.items():
        of_backbone = [r for r in mine if r.config.backbone == name]
        statuses = [(r, r.status) for r in of_backbone]
        chosen = next(((r, s) for r, s in statuses if s["state"] in runs.ACTIVE), None)
        chosen = chosen or next(((r, s) for r, s in statuses if s["state"] == "finished"), None)
        chosen = chosen or next(((r, s) for r, s in statuses if s["state"] != "new"), None)
        if chosen is None:
            cards.append(Card(name, spec.title, "none"))
            continue
        r, s = chosen
        m = r.final_metrics() if s["state"] == "finished" else {}
        epochs_done = len(r.epochs()) if s["state"] in runs.ACTIVE else int(s.get("epoch") or 0)
        epochs = int(s.get("epochs") or r.config.epochs)
        cards.append(Card(name, spec.title, s["state"], r.run_id, epochs_done, epochs,
                          m.get("val_acc"), m.get("val_f1"), s.get("error")))
    return cards


# ---------------------------------------------------------------------------------------------- progress

@dataclass
class Progress:
    fraction: float
    epoch: int  # the epoch in progress (or the last one done)
    epochs: int
    step: int
    steps: int
    eta: float | None  # seconds left, None until the first batch
    text: str


def progress(events: Sequence[dict], now: float | None = None) -> Progress:
    """Fraction done and time left of a run, from its metrics.jsonl events (rate measured since the
    latest start or resume, so time spent before a stop does not skew it)."""
    s0 = latest_start(events)
    if s0 is None:
        return Progress(0.0, 0, 0, 0, 0, None, "Preparing data and model…")
    epochs, steps = int(s0.get("epochs") or 1), max(1, int(s0.get("steps_per_epoch") or 1))
    total = epochs * steps
    done0 = int(s0.get("epoch") or 0) * steps + int(s0.get("step") or 0)
    done, t_last, epoch, step = done0, float(s0.get("time") or 0), max(1, int(s0.get("epoch") or 0) + 1), 0
    for e in events:
        if e.get("type") == BATCH:
            d = (int(e["epoch"]) - 1) * steps + int(e["step"])
        elif e.get("type") == EPOCH:
            d = int(e["epoch"]) * steps
        else:
            continue
        if d >= done:
            done, t_last = d, float(e.get("time") or t_last)
            epoch, step = int(e["epoch"]), int(e["step"]) if e["type"] == BATCH else steps
    eta = None
    elapsed = (t_last if now is None else now) - float(s0.get("time") or 0)
    if done > done0 and elapsed > 0:
        eta = max(0.0, (total - done) * elapsed / (done - done0))
    frac = min(1.0, done / total)
    text = f"Epoch {epoch} of {epochs} · step {step} of {steps}"
    if eta is not None:
        text += f" · about {format_duration(eta)} left"
    return Progress(frac, epoch, epochs, step, steps, eta, text)


# ---------------------------------------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    """A finished run's validation predictions and their metrics."""

    run: runs.Run
    classes: list[str]
    y: np.ndarray
    probs: np.ndarray
    summary: dict


def evaluate_run(run: runs.Run) -> Evaluation:
    """Metrics of a finished run, from its val_predictions.csv (the best epoch's), via metrics.summary."""
    meta = read_json(run.dir / SIDECAR, {}) or {}
    df = pd.read_csv(run.dir / PREDICTIONS, dtype={"subject": str}, keep_default_na=False)
    classes = meta.get("classes") or [c.removeprefix("prob_") for c in df.columns if c.startswith("prob_")]
    probs = df[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    y = df["label"].to_numpy(dtype=int)
    subjects = df["subject"].to_numpy(dtype=str)
    summ = metrics.summary(y, probs, classes, subjects if len(subjects) and (subjects != "").all() else None)
    return Evaluation(run, list(classes), y, probs, summ)


def split_text(cfg: RunConfig) -> str:
    if cfg.split == "folds":
        return f"official folds (fold {cfg.val_fold} for validation)"
    if cfg.split == "image":
        return f"by image, LEAKY ({cfg.val_fraction:.0%} validation, seed {cfg.seed})"
    return f"by subject ({cfg.val_fraction:.0%} validation, seed {cfg.seed})"


def group_key(run: runs.Run) -> str:
    """Runs are comparable when they saw the same dataset content and the same validation split."""
    cfg = run.config
    fp = run.info.get("dataset_fingerprint", "?")
    if cfg.split == "folds":
        return f"{fp}|folds|{cfg.val_fold}"
    return f"{fp}|{cfg.split}|{cfg.val_fraction}|{cfg.seed}"


@dataclass
class Group:
    key: str
    label: str
    runs: list[runs.Run] = field(default_factory=list)

    @property
    def datasets(self) -> set[str]:
        return {r.config.data for r in self.runs}


def comparable_groups(candidates: Sequence[runs.Run]) -> dict[str, Group]:
    """Finished runs grouped by dataset fingerprint and split, the biggest group first."""
    groups: dict[str, Group] = {}
    for r in candidates:
        key = group_key(r)
        if key not in groups:
            fp = key.split("|", 1)[0]
            label = f"{dataset_label(r.config.data)} · split {split_text(r.config)} · data {fp[:8]}"
            groups[key] = Group(key, label)
        groups[key].runs.append(r)
    for g in groups.values():
        g.label += f" · {len(g.runs)} run{'s' if len(g.runs) != 1 else ''}"
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1].runs)))


def training_seconds(run: runs.Run) -> float | None:
    """Time spent in epochs (training and validation), summed over resumes; None before the first epoch."""
    secs = [float(e.get("seconds") or 0) for e in run.epochs()]
    return sum(secs) if secs else None


COMPARE_COLUMNS = {
    "model": "Model", "val_accuracy": "Val. accuracy", "weighted_f1": "Weighted F1",
    "sensitivity": "Sensitivity (all)", "specificity": "Specificity", "roc_auc": "ROC AUC",
    "train_time": "Training time", "ms_per_image": "Inference (ms / image)", "params_m": "Parameters (M)",
    "checkpoint_mb": "Checkpoint (MB)", "weights": "Weights", "split": "Split", "image_size": "Image size",
    "epochs": "Epochs", "run_id": "Run",
}


def compare_row(ev: Evaluation, seconds_per_image: float | None = None) -> dict:
    """One row of the Compare table (keys of COMPARE_COLUMNS)."""
    run, s = ev.run, ev.summary
    cfg = run.config
    meta = read_json(run.dir / SIDECAR, {}) or {}
    ckpt = run.dir / CHECKPOINT
    split = (meta.get("split") or {}).get("description") or split_text(cfg)
    return {
        "model": run_name(run), "val_accuracy": s["accuracy"], "weighted_f1": s["weighted_f1"],
        "sensitivity": s["sensitivity"], "specificity": s["specificity"], "roc_auc": s["roc_auc"],
        "train_time": format_duration(training_seconds(run)),
        "ms_per_image": None if seconds_per_image is None else seconds_per_image * 1000,
        "params_m": meta["params"] / 1e6 if meta.get("params") else None,
        "checkpoint_mb": ckpt.stat().st_size / 1e6 if ckpt.exists() else None,
        "weights": meta.get("weights_init", cfg.weights), "split": split, "image_size": cfg.image_size,
        "epochs": cfg.epochs, "run_id": run.run_id,
    }


def compare_table(rows: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(COMPARE_COLUMNS))


def roc_curves(evals: Sequence[Evaluation]) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    out = {}
    for ev in evals:
        pos = metrics.positive_index(ev.classes)
        fpr, tpr = metrics.roc_curve_points(ev.y, ev.probs, pos)
        out[run_name(ev.run)] = (fpr, tpr, ev.summary["roc_auc"])
    return out


def histories(selected: Sequence[runs.Run]) -> dict[str, list[dict]]:
    return {run_name(r): r.events() for r in selected}


def time_per_image(lm: Any, repeats: int = 5, warmup: int = 2) -> float:
    """Seconds to predict one image with a loaded model (a batch of one): the median of `repeats` after
    `warmup` calls (the first calls pay for one-off kernel selection). What a user waits per dropped image,
    decoding aside."""
    from leukviz import inference

    x = np.zeros((1, lm.image_size, lm.image_size, 3), np.uint8)
    for _ in range(warmup):
        inference.predict_arrays(lm, x)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        inference.predict_arrays(lm, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------- prediction

@dataclass
class ModelPrediction:
    model: str  # LoadedModel.name
    run_id: str
    image: np.ndarray | None  # as fed to the model: decoded, cropped, resized (before normalisation)
    predicted: str
    confidence: float
    probs: dict[str, float]
    backbone: str = ""


@dataclass
class ImagePrediction:
    name: str
    error: str | None = None
    results: list[ModelPrediction] = field(default_factory=list)


def _read_bytes(src: str | Path | bytes | IO[bytes]) -> bytes:
    if isinstance(src, bytes):
        return src
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
    """
    from leukviz import inference

    out = [ImagePrediction(name) for name, _ in items]
    decoders = {lm.preprocess.decoding: lm.preprocess for lm in models}
    decoded: dict[tuple, dict[int, np.ndarray]] = {key: {} for key in decoders}
    for i, (name, blob) in enumerate(items):
        if not blob:
            out[i].error = "the file is empty (0 bytes)"
            continue
        for key, pre in decoders.items():
            buf = io.BytesIO(blob)
            buf.name = name
            try:
                decoded[key][i] = pre.decode(buf)
            except data.ImageError as e:
                shown = Path(name.replace("\\", "/")).name  # how data.load_image names the file
                out[i].error = str(e).removeprefix(f"{shown}: ")
                break
    good = [i for i, p in enumerate(out) if p.error is None]
    for lm in models:
        images = decoded[lm.preprocess.decoding]
        probs = inference.predict_arrays(lm, np.stack([images[i] for i in good])) if good else []
        for i, prob in zip(good, probs):
            rec = inference.prediction_record(lm, prob)
            out[i].results.append(ModelPrediction(lm.name, lm.run_dir.name, images[i] if keep_images else None,
                                                  rec["predicted"], rec["confidence"],
                                                  {c: float(p) for c, p in zip(lm.classes, prob)}, lm.backbone))
    return out


def predict_image(models: Sequence[Any], name: str, src: str | Path | bytes | IO[bytes]) -> ImagePrediction:
    """Predict one image (a path, bytes or an uploaded file) with every model (predict_images)."""
    try:
        blob = _read_bytes(src)
    except OSError as e:
        return ImagePrediction(name, f"cannot read the file ({e.__class__.__name__})")
    return predict_images(models, [(name, blob)])[0]


MAX_ZIP_MEMBER = 64 * 2**20  # an image inside an uploaded zip larger than this is left out


def zip_images(name: str, blob: bytes, folder: Path) -> list[tuple[str, bytes]]:
    """The images inside an uploaded zip, (shown name 'zip/member', bytes), extracted by data.extract_zip
    (its limits and refusals) into folder. A zip that cannot be opened or is refused gives none."""
    path = save_upload(blob, folder)
    dest = folder / f"{path.stem}-files"
    try:
        data.extract_zip(path, dest)
    except data.DataError:
        return []
    out = []
    for p in sorted(dest.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower().lstrip(".") in UPLOAD_TYPES \
                and p.stat().st_size <= MAX_ZIP_MEMBER:
            out.append((f"{name}/{p.relative_to(dest).as_posix()}", p.read_bytes()))
    return out


def predict_uploads(models: Sequence[Any], files: Sequence[tuple[str, bytes]], folder: Path) -> list[ImagePrediction]:
    """Every uploaded image, and every image inside an uploaded zip (zip_images), predicted once: one
    ImagePrediction per image, in upload order with each zip's images in its place. Loose files keep their
    decoded images (the page's cards show them); a zip's images only feed the table."""
    is_zip = [name.lower().endswith(".zip") for name, _ in files]
    loose = iter(predict_images(models, [f for f, z in zip(files, is_zip) if not z]))
    out: list[ImagePrediction] = []
    for (name, blob), z in zip(files, is_zip):
        out += predict_images(models, zip_images(name, blob, folder), keep_images=False) if z else [next(loose)]
    return out


def prediction_table(models: Sequence[Any], predictions: Sequence[ImagePrediction]) -> pd.DataFrame:
    """One row per image per model, models first (inference.predict_table's columns): file, model
    (backbone), run_id, predicted, confidence, prob_<class>... and error (empty unless unreadable)."""
    rows = []
    for lm in models:
        for p in predictions:
            r = next((r for r in p.results if r.run_id == lm.run_dir.name), None)
            rows.append({"file": p.name, "model": lm.backbone, "run_id": lm.run_dir.name,
                         "predicted": r.predicted if r else None, "confidence": r.confidence if r else None,
                         **({f"prob_{c}": v for c, v in r.probs.items()} if r else {}),
                         "error": p.error or ""})
    probs = list(dict.fromkeys(k for r in rows for k in r if k.startswith("prob_")))
    return pd.DataFrame(rows, columns=["file", "model", "run_id", "predicted", "confidence", *probs, "error"])


# ---------------------------------------------------------------------------------------------- data page

def sample_cells(ds: data.Dataset, per_class: int = 6, seed: int = 0) -> dict[str, list[str]]:
    """A few training images of each class, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    train = ds.train_rows
    out = {}
    for i, c in enumerate(ds.classes):
        paths = train.loc[train["label"] == i, "path"].to_numpy()
        if len(paths):
            out[c] = [str(p) for p in rng.choice(paths, size=min(per_class, len(paths)), replace=False)]
    return out


def demo_cells(ds: data.Dataset, n: int = 3, seed: int = 0) -> list[tuple[str, str]]:
    """(path, true class) of a few labelled cells, preferring the held-out preliminary test set, taking
    the classes in turn."""
    idx = ds.index[ds.index["label"] >= 0]
    pool = idx[idx["set"] == "prelim"] if (idx["set"] == "prelim").any() else idx
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(pool.index[pool["label"] == i].to_numpy()) for i in range(len(ds.classes))]
    picks: list[tuple[str, str]] = []
    k = 0
    while len(picks) < n and any(k < len(b) for b in by_class):
        for i, rows in enumerate(by_class):
            if k < len(rows) and len(picks) < n:
                picks.append((str(ds.index.at[rows[k], "path"]), ds.classes[i]))
        k += 1
    return picks


AUGMENT_CODES_TEXT = {0: "original", 1: "flipped", 2: "turned 90°", 3: "flipped, 90°", 4: "turned 180°",
                      5: "flipped, 180°", 6: "turned 270°", 7: "flipped, 270°"}


def augment_preview(image: np.ndarray, mode: str, n: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The training augmentation (engine.augment) applied to one uint8 HWC image n times: (caption, image)."""
    import torch

    from leukviz.engine import augment, draw_jitter

    if mode == "none":
        return [("no augmentation", image)]
    g = torch.Generator().manual_seed(seed)
    codes = torch.randperm(7, generator=g)[:n] + 1  # distinct non-identity transforms
    jitter = draw_jitter(len(codes), g) if mode == "full" else None
    batch = torch.from_numpy(np.ascontiguousarray(np.stack([image] * len(codes))))
    out = augment(batch, codes, jitter).numpy()
    return [(AUGMENT_CODES_TEXT[int(c)] + (", stain jitter" if jitter is not None else ""), out[i])
            for i, c in enumerate(codes.tolist())]


def save_upload(blob: bytes, folder: Path, suffix: str = ".zip") -> Path:
    """Store an uploaded dataset under a name made from its content (never the user's file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(blob).hexdigest()[:16]}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(".part")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return path


def uploads_dir() -> Path:
    return runs.home() / "uploads"


# ---------------------------------------------------------------------------------------------- explain, batch, export

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
    from leukviz import explain

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


def table_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode("utf-8")


@dataclass
class GalleryCell:
    image: np.ndarray | None
    caption: str  # plain text: true, predicted, confidence, subject
    error: str = ""


def error_gallery(run: runs.Run, k: int = 8) -> list[GalleryCell]:
    """The run's most confidently wrong validation images (then the highest-loss right ones), each loaded
    at the model's input size, as explain.top_losses orders them."""
    from leukviz import explain

    meta = read_json(run.dir / SIDECAR) or {}
    pre = Preprocess.of_checkpoint({"backbone": run.config.backbone, "image_size": run.config.image_size,
                                    "crop": True, **meta})
    cells = []
    for row in explain.top_losses(run.dir, k=k).itertuples(index=False):
        verdict = "wrong" if not row.correct else "right"
        caption = (f"true {row.true} · predicted {row.predicted} ({row.confidence:.0%}, {verdict}) · "
                   f"subject {row.subject}")
        try:
            cells.append(GalleryCell(pre.decode(row.path), caption))
        except (data.ImageError, OSError) as e:
            cells.append(GalleryCell(None, caption, str(e)))
    return cells


def export_onnx(run: runs.Run, folder: Path) -> tuple[bytes, dict]:
    """Export the run to ONNX in folder (export.export_run, checked against PyTorch): (file bytes, result)."""
    from leukviz import export

    folder.mkdir(parents=True, exist_ok=True)
    res = export.export_run(run.dir, "onnx", folder / f"{run.config.backbone}-{run.run_id}.onnx")
    return Path(res["path"]).read_bytes(), res


def export_text(res: dict) -> str:
    verdict = "agrees" if res.get("agrees") else "DISAGREES"
    return (f"ONNX opset {res.get('opset')}, {res.get('bytes', 0) / 1e6:.1f} MB; {verdict} with PyTorch on "
            f"{res.get('check_images')} images: max probability difference {res.get('max_abs_diff', float('nan')):.2e} "
            f"(tolerance {res.get('tolerance', float('nan')):g}).")


def checkpoint_bytes(run: runs.Run) -> bytes:
    return (run.dir / CHECKPOINT).read_bytes()
