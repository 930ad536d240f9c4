"""Speed benchmark: the plain hand-written PyTorch loop against leukviz's training paths, in one process,
on the same images, model, image size, batch size and threads; achieved training GFLOP/s against this
machine's measured matmul peak; single-image prediction latency; peak memory of caching a C-NMC-sized set.

`python -m leukviz bench [--quick]` runs it; docs/BENCHMARKS.md holds the results and what each path does.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from leukviz.datasets import cnmc, data
from leukviz.models import backbones, devices
from leukviz.models.config import RunConfig, resolve
from leukviz.training import engine, features

CNMC_SIZE = 15_135  # images in C-NMC 2019 as downloaded: 10,661 training + 1,867 preliminary + 2,607 final
CNMC_SETS = {"train": 10_661, "prelim": 1_867}  # the rest is the unlabeled final set
QUICK_MEMORY_FILES = 1_000
HEAD_EPOCHS = 5
Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. quick: batch 16 and a few warm-up and timed batches per path (extrapolated), a
    smaller stand-in for the memory measurement; otherwise batch 32 and whole epochs."""

    backbones: tuple[str, ...] = tuple(backbones.BACKBONES)
    image_size: int = 128
    batch_size: int = 0  # 0: 16 quick, 32 full
    data: str = "demo"
    fold: int = 0  # the training_data/fold_<k> folder both paths read (C-NMC layout and the demo)
    quick: bool = False
    device: str = "auto"
    precision: str = "auto"  # leukviz's paths; the plain loop is always fp32
    weights: str = "none"  # speed does not depend on the weights' values; none needs no download
    threads: int = 0  # 0: torch's default (one per core)
    plain_workers: tuple[int, ...] = ()  # DataLoader num_workers tried; (): (0,) quick, (0, 2) full
    memory_files: int = 0  # 0: 1,000 quick, 15,135 (C-NMC's size) full; -1: skip
    latency: bool = True
    ablation: bool = False  # also measure leukviz's full fine-tuning with each speed-up added in turn
    seed: int = 0

    @property
    def batch(self) -> int:
        return self.batch_size or (16 if self.quick else 32)

    @property
    def warmup_plain(self) -> int:
        return 1 if self.quick else 2

    @property
    def warmup_leukviz(self) -> int:
        """bf16 with the tuned allocator settles after about three steps (kernels created, heap grown); quick
        takes two, which if anything under-states leukviz."""
        return 2 if self.quick else 3

    @property
    def timed_plain(self) -> int | None:
        """Timed batches of the plain loop; None is one whole epoch (its fp32 steps vary little)."""
        return 1 if self.quick else None

    @property
    def timed_leukviz(self) -> int | None:
        return 2 if self.quick else None

    @property
    def min_seconds_plain(self) -> float:
        """quick: keep timing batches until this long has passed (fast backbones get several)."""
        return 1.0 if self.quick else 0.0

    @property
    def min_seconds_leukviz(self) -> float:
        return 1.0 if self.quick else 0.0

    @property
    def workers(self) -> tuple[int, ...]:
        return self.plain_workers or ((0,) if self.quick else (0, 2))

    @property
    def n_memory_files(self) -> int:
        return self.memory_files or (QUICK_MEMORY_FILES if self.quick else CNMC_SIZE)

    @property
    def feature_part(self) -> int | None:
        """quick: the head-only feature pass is timed on this many images and extrapolated."""
        return 32 if self.quick else None


# ---------------------------------------------------------------------------------------------- data

@dataclass
class BenchData:
    """The images both paths train on: the files torchvision's ImageFolder lists, in its order, with the
    leukviz class index of each, and the leukviz dataset restricted to exactly those files."""

    folder: Path
    paths: list[str]
    labels: np.ndarray  # leukviz class indices
    image_folder_classes: list[str]
    dataset: data.Dataset

    @property
    def n(self) -> int:
        return len(self.paths)


class _ClassToIndex:
    """ImageFolder's target (index into its sorted folder names) -> the leukviz class index. A class, not a
    lambda, so DataLoader workers can pickle it."""

    def __init__(self, table: list[int]):
        self.table = table

    def __call__(self, target: int) -> int:
        return self.table[target]


def bench_data(spec: str, fold: int, cache_dir: Path | None) -> BenchData:
    """One fold folder of a C-NMC-layout dataset (the demo too), or a class-per-folder tree: the files
    ImageFolder finds there that leukviz indexes too (the same set and the same labels on both sides)."""
    from torchvision.datasets import ImageFolder

    ds = data.open_dataset(spec, cache_dir)
    if ds.kind in ("demo", "cnmc"):
        folder = ds.root / cnmc.TRAINING / cnmc.fold_name(fold)
        if not folder.is_dir():
            folds = sorted((ds.root / cnmc.TRAINING).glob(cnmc.FOLD_GLOB))
            raise data.DataError(f"{folder} does not exist; choose a fold of: " + ", ".join(p.name for p in folds))
    else:
        folder = ds.root
    folder_ds = ImageFolder(str(folder))
    unknown = [c for c in folder_ds.classes if c not in ds.classes]
    if unknown:
        raise data.DataError(f"{folder} has class folders leukviz does not index: {unknown}")
    table = [ds.classes.index(c) for c in folder_ds.classes]
    ours = {str(Path(p).resolve()): row for row, p in enumerate(ds.index["path"])}
    rows, paths, labels = [], [], []
    for path, target in folder_ds.samples:
        row = ours.get(str(Path(path).resolve()))
        if row is None:  # an extension only one side reads; left out of both
            continue
        if int(ds.index["label"].iloc[row]) != table[target]:
            raise data.DataError(f"{path}: ImageFolder and leukviz disagree on its class")
        rows.append(row)
        paths.append(path)
        labels.append(table[target])
    if len(set(labels)) < 2:
        raise data.DataError(f"{folder}: the benchmark needs images of at least two classes")
    sub = ds.index.iloc[rows].reset_index(drop=True)
    fp = f"{ds.fingerprint}-bench-{folder.name}"
    subset = data.Dataset(ds.name, ds.root, ds.kind, ds.classes, sub, fp, [])
    return BenchData(folder, paths, np.asarray(labels, dtype=np.int64), list(folder_ds.classes), subset)


def plain_dataset(bd: BenchData, size: int, backbone: str):
    """torchvision's ImageFolder with the usual transforms: PIL decode and resize at every access."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    spec = backbones.get_spec(backbone)
    tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    table = [bd.dataset.classes.index(c) for c in bd.image_folder_classes]
    folder_ds = ImageFolder(str(bd.folder), transform=tf, target_transform=_ClassToIndex(table))
    keep = set(bd.paths)
    folder_ds.samples = [s for s in folder_ds.samples if s[0] in keep]
    folder_ds.imgs = folder_ds.samples
    folder_ds.targets = [t for _, t in folder_ds.samples]
    return folder_ds


def plain_loader(bd: BenchData, size: int, backbone: str, batch_size: int, workers: int, seed: int,
                 device: torch.device):
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(plain_dataset(bd, size, backbone), batch_size=batch_size, shuffle=True, num_workers=workers,
                      generator=g, pin_memory=device.type == "cuda")


# ---------------------------------------------------------------------------------------------- timing

def precision_name(amp: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32") if amp is not None else "fp32"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(bc: BenchConfig, backbone: str, finetune: str = "full", augment: str | None = None) -> RunConfig:
    """The product's default fine-tuning configuration for this backbone (quick preset, ImageNet recipe:
    AdamW), at the benchmark's size and batch, with the benchmark's weights (none: no download needed).
    crop=False: ImageFolder's Resize does not crop, so both paths see the same pixels (the crop costs
    nothing per epoch: it happens once, when the cache is built)."""
    cfg = resolve(backbone, "quick", "imagenet", bc.data, image_size=bc.image_size, batch_size=bc.batch,
                  finetune=finetune, precision=bc.precision, seed=bc.seed, augment=augment, crop=False)
    return replace(cfg, weights=bc.weights)


def plain_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The optimizer a notebook writes: the same class and settings as the run, PyTorch's default implementation."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build(cfg: RunConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return backbones.build_model(cfg.backbone, 2, cfg.weights)


def _endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def time_plain(model: nn.Module, cfg: RunConfig, loader, device: torch.device, warmup: int,
               timed: int | None, min_seconds: float = 0.0) -> dict:
    """The usual loop: fp32, default memory format, decode every batch. Times at least `timed` batches after
    `warmup`, and more until min_seconds have passed (None: one whole fresh epoch, worker start-up included,
    as every epoch of this loop pays it)."""
    model = model.to(device)
    backbones.set_finetune(model, cfg.backbone, cfg.finetune)
    model.train()
    opt = plain_optimizer(cfg, model.parameters())
    crit = nn.CrossEntropyLoss()
    nb = device.type == "cuda"

    def step(x, y):
        x, y = x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batches = _endless(loader)
    for _ in range(warmup):
        step(*next(batches))
    if timed is None:
        batches.close()  # its DataLoader workers stop before the timed epoch starts its own
    _sync(device)
    images = 0
    t = time.perf_counter()
    if timed is None:
        for x, y in loader:
            step(x, y)
            images += len(y)
    else:
        done = 0
        while done < timed or time.perf_counter() - t < min_seconds:
            x, y = next(batches)
            step(x, y)
            images += len(y)
            done += 1
    _sync(device)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds}


class _NCHW(nn.Module):
    """The channels-last ablation's model: its input made NCHW-contiguous before the (NCHW) model runs.
    Holds the model as .module, so the loop's weight average reads the model itself (distributed.unwrap)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous())


def time_leukviz(model: nn.Module, cfg: RunConfig, train_x: torch.Tensor, train_y: torch.Tensor,
                 device: torch.device, warmup: int, timed: int | None, channels_last: bool = True,
                 min_seconds: float = 0.0) -> dict:
    """engine.train_one_epoch on the cached uint8 images, set up as a run is (engine.setup_training; the
    allocator tuning engine.setup also does is process-wide: run() applies it once, after the plain loop).
    channels_last=False (the ablation only): model and inputs in the default NCHW memory format."""
    d = engine.Dist()
    n = len(train_x)
    epoch1 = engine.epoch_batches(n, cfg.batch_size, cfg.seed, 1, d)
    state = engine.setup_training(cfg, model, train_x, train_y, 2, device, d, len(epoch1) * 3)
    if not channels_last:  # the ablation: the same state, its model and inputs in NCHW
        for m in (state.model, state.average):
            if m is not None:
                m.to(memory_format=torch.contiguous_format)  # in place: the optimizer keeps its parameters
        state.train_model = _NCHW(state.model)
    engine.set_train_mode(state.train_model, state.frozen, cfg.freeze_bn)
    warm = [epoch1[i % len(epoch1)] for i in range(warmup)]
    engine.train_one_epoch(state, warm, 1)
    batches = engine.epoch_batches(n, cfg.batch_size, cfg.seed, 2, d)
    _sync(device)
    t = time.perf_counter()
    if timed is None:  # one whole epoch
        engine.train_one_epoch(state, batches, 1)
        images = int(sum(len(b) for b in batches))
    else:  # at least `timed` batches, and more until min_seconds have passed
        images = done = 0
        while done < timed or time.perf_counter() - t < min_seconds:
            b = batches[done % len(batches)]
            engine.train_one_epoch(state, [b], 1)
            images += len(b)
            done += 1
    _sync(device)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds,
            "precision": precision_name(state.amp)}


def time_head_fast(model: nn.Module, cfg: RunConfig, images: np.ndarray, train_y: torch.Tensor,
                   device: torch.device, part_size: int | None) -> dict:
    """The head-only fast path as a run takes it: features once (features.head_features), then
    HEAD_EPOCHS epochs of the head on them (engine.train_one_epoch). part_size (quick): the feature pass is
    timed on that many images and extrapolated to all; the head epochs always run in full."""
    d = engine.Dist()
    n = len(images)
    steps = len(engine.epoch_batches(n, cfg.batch_size, cfg.seed, 1, d))
    state = engine.setup_training(cfg, model, torch.from_numpy(np.ascontiguousarray(images)), train_y, 2, device,
                                  d, steps * HEAD_EPOCHS)
    model, head, amp = state.model, state.spec.head, state.amp
    fb = features.feature_batch_size(cfg.image_size)
    part = images[:min(n, part_size)] if part_size else images
    if part_size:  # the first batch creates the kernels: one small warm-up so one timed batch is representative
        features.head_features(model, head, images[:2], cfg.backbone, device, amp, fb)
    _sync(device)
    t = time.perf_counter()
    feats = features.head_features(model, head, part, cfg.backbone, device, amp, fb)
    _sync(device)
    feature_seconds = (time.perf_counter() - t) * (n / len(part))
    if len(part) < n:  # the head epochs need features of every image: repeat the measured ones
        feats = feats.repeat((n + len(part) - 1) // len(part), 1)[:n]
    state.feats = (feats, feats[:0])  # the head trains on feats[0]; nothing is validated here
    engine.set_train_mode(model, state.frozen, cfg.freeze_bn)
    t = time.perf_counter()
    for epoch in range(1, HEAD_EPOCHS + 1):
        batches = engine.epoch_batches(n, cfg.batch_size, cfg.seed, epoch, d)
        engine.train_one_epoch(state, batches, epoch)
    _sync(device)
    head_seconds = time.perf_counter() - t
    return {"feature_seconds": feature_seconds, "head_epochs_seconds": head_seconds,
            "feature_dim": int(feats.shape[1]), "feature_dtype": str(feats.dtype).replace("torch.", ""),
            "feature_batch": fb, "extrapolated": len(part) < n}


def train_step_flops(model: nn.Module, cfg: RunConfig, device: torch.device, batch: int = 2) -> float:
    """FLOPs per image of a training step (forward and backward), counted by FlopCounterMode on a small
    batch (the count is linear in the batch size: every counted operation is per image)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).to(device, memory_format=torch.channels_last)
    backbones.set_finetune(model, cfg.backbone, cfg.finetune)
    model.train()
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
    return counter.get_total_flops() / batch


def matmul_peak(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096),
                reps: int = 5) -> float:
    """Best GFLOP/s of large square torch.mm products in this dtype, warm, over a few sizes (what the
    hardware gives matrix products; the best, so the fractions of it are not flattered)."""
    return max(_matmul_gflops(dtype, device, n, reps) for n in sizes)


def _matmul_gflops(dtype: torch.dtype, device: torch.device, n: int, reps: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


# ---------------------------------------------------------------------------------------------- latency

def predict_latency(bc: BenchConfig, image_path: str, device: torch.device, reps: int, log: Log,
                    built: dict[str, nn.Module]) -> dict:
    """One image file through leukviz.inference.predict_files (decode, preprocessing, forward: the CLI's
    predict path, each model decoding the file itself), through all models in turn and each model's share of
    that loop; p50 and p95 over warm repetitions. (The Predict page decodes once for all models:
    prediction.predict_images.)"""
    from leukviz.serving import inference

    models = {}
    for name in bc.backbones:  # copies of the benchmark's models (building VGG16 again takes seconds)
        m = copy.deepcopy(built[name]).to(device, memory_format=torch.channels_last).eval()
        meta = {"backbone": name, "classes": list(cnmc.CNMC_CLASSES), "image_size": bc.image_size, "crop": True,
                "crop_window": data.CELL_WINDOW}
        models[name] = inference.LoadedModel(m, meta, device, Path(f"bench-{name}"))
    out: dict = {}

    names = list(bc.backbones)
    for _ in range(3):  # warm: kernels created, memory allocated
        for nm in names:
            inference.predict_files(models[nm], [image_path])
    times: dict[str, list[float]] = {nm: [] for nm in names}
    for _ in range(reps):  # all models in turn, as the Predict page does; each one's time kept too
        for nm in names:
            _sync(device)
            t = time.perf_counter()
            inference.predict_files(models[nm], [image_path])
            _sync(device)
            times[nm].append(time.perf_counter() - t)

    def summary(ts: list[float]) -> dict:
        return {"p50_ms": float(np.percentile(ts, 50) * 1e3), "p95_ms": float(np.percentile(ts, 95) * 1e3),
                "reps": reps}

    for nm in names:
        out[nm] = summary(times[nm])
        log(f"  predict latency {nm}: p50 {out[nm]['p50_ms']:.1f} ms, p95 {out[nm]['p95_ms']:.1f} ms")
    out["all"] = summary([sum(ts) for ts in zip(*times.values())])
    log(f"  predict latency, all {len(names)}: p50 {out['all']['p50_ms']:.1f} ms, p95 {out['all']['p95_ms']:.1f} ms")
    return out


# ---------------------------------------------------------------------------------------------- memory

def make_standin(root: Path, n_files: int, side: int = 450, seed: int = 0) -> Path:
    """A C-NMC-layout folder of n_files 450x450 BMPs (C-NMC's format) made from about 200 distinct cells of
    the demo generator, repeated by hard links (copies where links are impossible). Each class repeats its
    own cells, so no image appears under two labels. Returns the C-NMC root."""
    from PIL import Image

    from leukviz.datasets import synthetic

    base = root / cnmc.ROOT
    originals = root / "originals"
    small = synthetic.generate_demo(root / "generated", seed=seed, n_subjects=4, image_size=128, workers=1)
    originals.mkdir(parents=True, exist_ok=True)
    cells: dict[str, list[Path]] = {"all": [], "hem": []}
    for name in cells:
        for k, f in enumerate(sorted((small / cnmc.TRAINING).glob(f"{cnmc.FOLD_GLOB}/{name}/*.png"))):
            path = originals / f"{name}_{k}.bmp"
            with Image.open(f) as img:
                img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(path)
            cells[name].append(path)
    shutil.rmtree(root / "generated")

    def place(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)

    n_train = min(n_files, round(n_files * CNMC_SETS["train"] / CNMC_SIZE))
    n_prelim = min(n_files - n_train, round(n_files * CNMC_SETS["prelim"] / CNMC_SIZE))
    n_final = n_files - n_train - n_prelim
    for i in range(n_train):  # about 2:1 all:hem as in C-NMC, in each of 3 folds; ~25 cells per subject
        name = "all" if i % 3 else "hem"
        subject = f"{i % 60 + 1}" if name == "all" else f"H{i % 40 + 1}"
        dst = base / cnmc.TRAINING / cnmc.fold_name((i // 3) % 3) / name / cnmc.cell_name(subject, i, 1, name)
        place(cells[name][i % len(cells[name])], dst)
    prelim = base / cnmc.PRELIM_IMAGES
    rows = [",".join(cnmc.LABEL_COLUMNS)]
    for i in range(n_prelim):
        name = "all" if i % 3 else "hem"
        place(cells[name][(i * 7) % len(cells[name])], prelim / f"{i + 1}.bmp")
        subject = "P1" if name == "all" else "H99"
        rows.append(f"{cnmc.cell_name(subject, i, 1, name)},{i + 1}.bmp,{int(name == 'all')}")
    (base / cnmc.PRELIM_LABELS).write_text("\n".join(rows) + "\n")
    final = base / cnmc.FINAL_IMAGES
    for i in range(n_final):
        name = "all" if i % 2 else "hem"
        place(cells[name][(i * 3) % len(cells[name])], final / f"{i + 1}.bmp")
    shutil.rmtree(originals)
    return base


_MEMORY_CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

from leukviz.datasets import data
root, cache, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
base = hwm()
t = time.time()
ds = data.open_dataset(root, cache)
indexed = hwm()
t_index = time.time() - t
t = time.time()
images, ok = data.image_cache(ds, size, True, cache)
t_cache = time.time() - t
print(json.dumps({"n": len(ds.index), "ok": int(ok.sum()), "baseline_mb": base, "after_index_mb": indexed,
                  "peak_rss_mb": hwm(), "index_seconds": t_index, "cache_seconds": t_cache,
                  "cache_mb": images.nbytes / 2**20}))
"""


def cache_memory(n_files: int, size: int, log: Log) -> dict:
    """Peak resident memory (VmHWM) of a fresh process that indexes a C-NMC-layout stand-in of n_files
    images (open_dataset) and decodes it into the image cache at `size` px (image_cache)."""
    with tempfile.TemporaryDirectory(prefix="leukviz-bench-mem-") as tmp:
        t = time.time()
        root = make_standin(Path(tmp) / "data", n_files)
        made = time.time() - t
        log(f"  stand-in of {n_files} files written in {made:.1f}s; indexing and caching in a fresh process")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(root), str(Path(tmp) / "cache"), str(size)],
                              capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement failed: {proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update({"files": n_files, "image_size": size, "standin_seconds": made,
                "note": "C-NMC's size" if n_files == CNMC_SIZE else f"a smaller stand-in ({n_files} files), not C-NMC's {CNMC_SIZE}"})
    return res


# ---------------------------------------------------------------------------------------------- the run

def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "bf16_matrix_instructions": devices.cpu_has_bf16(), "load_average_1min": load,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _best_plain(results: dict[int, dict]) -> tuple[int, dict]:
    w = max(results, key=lambda k: results[k]["images_per_s"])
    return w, results[w]


def bench_plain(bc: BenchConfig, name: str, bd: BenchData, init: nn.Module, device: torch.device, log: Log) -> dict:
    """The plain loop's paths for one backbone: full fine-tuning, last stage (full runs) and head only."""
    out: dict = {}

    def plain(cfg: RunConfig) -> dict:
        res = {}
        for w in bc.workers:
            loader = plain_loader(bd, bc.image_size, name, bc.batch, w, bc.seed, device)
            res[w] = time_plain(copy.deepcopy(init), cfg, loader, device, bc.warmup_plain, bc.timed_plain,
                                bc.min_seconds_plain)
            log(f"  {name} plain {cfg.finetune} (num_workers={w}): {res[w]['images_per_s']:.1f} img/s")
        w, best = _best_plain(res)
        return {**best, "num_workers": w, "by_workers": {str(k): v["images_per_s"] for k, v in res.items()}}

    out["plain_full"] = plain(run_config(bc, name, "full"))
    if not bc.quick:  # last stage: skipped by --quick to keep it under a minute
        out["plain_last"] = plain(run_config(bc, name, "last"))
    out["plain_head"] = plain(run_config(bc, name, "head", augment="none"))
    out["plain_head"]["run_seconds"] = HEAD_EPOCHS * bd.n / out["plain_head"]["images_per_s"]
    return out


def bench_leukviz(bc: BenchConfig, name: str, bd: BenchData, images: np.ndarray, init: nn.Module,
                  device: torch.device, cache_seconds: float, out: dict, log: Log) -> dict:
    """leukviz's paths for one backbone, from the same initial weights as the plain loop; `out` holds the
    plain loop's results and gets the rest."""
    cfg_full = run_config(bc, name, "full")
    n = bd.n
    train_y = torch.as_tensor(bd.labels)
    train_x = torch.from_numpy(np.ascontiguousarray(images))
    out.update({"n_images": n, "steps_per_epoch": (n + bc.batch - 1) // bc.batch})
    wl, tl, ml = bc.warmup_leukviz, bc.timed_leukviz, bc.min_seconds_leukviz

    out["leukviz_full"] = time_leukviz(copy.deepcopy(init), cfg_full, train_x, train_y, device, wl, tl,
                                       min_seconds=ml)
    log(f"  {name} leukviz full ({out['leukviz_full']['precision']}): "
        f"{out['leukviz_full']['images_per_s']:.1f} img/s")
    out["speedup_full_vs_plain"] = out["leukviz_full"]["images_per_s"] / out["plain_full"]["images_per_s"]
    flops = train_step_flops(init, cfg_full, device)
    out["train_gflop_per_image"] = flops / 1e9
    out["gflops_full"] = flops * out["leukviz_full"]["images_per_s"] / 1e9
    out["gflops_plain"] = flops * out["plain_full"]["images_per_s"] / 1e9

    if "plain_last" in out:
        cfg_last = run_config(bc, name, "last")
        out["leukviz_last"] = time_leukviz(copy.deepcopy(init), cfg_last, train_x, train_y, device, wl, tl,
                                           min_seconds=ml)
        log(f"  {name} leukviz last stage: {out['leukviz_last']['images_per_s']:.1f} img/s")
        out["speedup_last_vs_plain"] = out["leukviz_last"]["images_per_s"] / out["plain_last"]["images_per_s"]

    # head only over HEAD_EPOCHS epochs, the first counted: plain epochs all cost the same
    cfg_head = run_config(bc, name, "head", augment="none")
    plain_head = out["plain_head"]
    fast = time_head_fast(copy.deepcopy(init), cfg_head, images, train_y, device, bc.feature_part)
    fast["run_seconds_warm_cache"] = fast["feature_seconds"] + fast["head_epochs_seconds"]
    fast["run_seconds"] = cache_seconds + fast["run_seconds_warm_cache"]
    fast["cache_seconds"] = cache_seconds
    out["leukviz_head"] = fast
    out["speedup_head_vs_plain"] = plain_head["run_seconds"] / fast["run_seconds"]
    out["speedup_head_vs_plain_warm_cache"] = plain_head["run_seconds"] / fast["run_seconds_warm_cache"]
    out["speedup_head_vs_plain_warm_features"] = plain_head["run_seconds"] / fast["head_epochs_seconds"]
    log(f"  {name} head only, {HEAD_EPOCHS} epochs: plain {plain_head['run_seconds']:.1f}s, leukviz "
        f"{fast['run_seconds']:.2f}s (image cache {cache_seconds:.2f}s + features {fast['feature_seconds']:.2f}s + "
        f"head {fast['head_epochs_seconds']:.2f}s) -> {out['speedup_head_vs_plain']:.1f}x")
    return out


ABLATION_STEPS = (("cached uint8 images, fp32, NCHW", "fp32", False),
                  ("+ channels-last", "fp32", True),
                  ("+ bf16 autocast", None, True))  # None: the run's own precision
ABLATION_ALLOCATOR = "+ allocator keeps freed memory"
ABLATION_FREEZE_BN = "+ frozen BatchNorm statistics (option)"


def ablations(bc: BenchConfig, images: np.ndarray, labels: np.ndarray, inits: dict[str, nn.Module],
              device: torch.device, log: Log) -> dict[str, list[dict]]:
    """leukviz's full fine-tuning with its speed-ups added one at a time, per backbone (the decode-once cache
    is in every row; the plain loop is the row before them). The allocator tuning is process-wide and cannot
    be undone, so every backbone's other rows are measured before it is switched on for the last row."""
    train_x, train_y = torch.from_numpy(np.ascontiguousarray(images)), torch.as_tensor(labels)
    rows: dict[str, list[dict]] = {name: [] for name in inits}

    def measure(name: str, label: str, precision: str | None, channels_last: bool,
                freeze_bn: bool = False) -> None:
        cfg = run_config(bc, name, "full")
        cfg = replace(cfg, precision=precision or cfg.precision, freeze_bn=freeze_bn)
        r = time_leukviz(copy.deepcopy(inits[name]), cfg, train_x, train_y,
                         device, bc.warmup_leukviz, bc.timed_leukviz, channels_last=channels_last,
                         min_seconds=bc.min_seconds_leukviz)
        log(f"  {name} ablation, {label}: {r['images_per_s']:.1f} img/s ({r['precision']})")
        rows[name].append({"step": label, **r})

    for name in inits:
        for label, precision, cl in ABLATION_STEPS:
            measure(name, label, precision, cl)
    if device.type == "cpu" and devices.tune_cpu_allocator():
        for name in inits:
            measure(name, ABLATION_ALLOCATOR, None, True)
    for name, init in inits.items():  # not a default: BatchNorm in eval mode changes what training does
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in init.modules()):
            measure(name, ABLATION_FREEZE_BN, None, True, freeze_bn=True)
    return rows


def run_notes(bc: BenchConfig, info: dict) -> list[str]:
    """What a reader of the results must know about how they were measured."""
    notes = []
    if info["load_average_1min"] is not None and info["load_average_1min"] > 0.5 + (os.cpu_count() or 1) * 0.75:
        notes.append(f"the machine was busy (1-minute load average {info['load_average_1min']:.1f} on "
                     f"{os.cpu_count()} cores): timings are pessimistic and noisy")
    if bc.quick:
        notes.append(f"--quick: batch {bc.batch} (the full run's is 32: docs/BENCHMARKS.md); plain loop "
                     f"{bc.warmup_plain} warm-up batch, then batches for at least {bc.min_seconds_plain:g}s; leukviz "
                     f"{bc.warmup_leukviz} warm-up batches, then at least {bc.timed_leukviz} batches and "
                     f"{bc.min_seconds_leukviz:g}s; extrapolated to epochs; last-stage fine-tuning skipped; the "
                     f"head-only feature pass timed on {bc.feature_part} images and extrapolated; plain DataLoader "
                     f"num_workers={bc.workers[0]} only; memory on a {bc.n_memory_files}-file stand-in")
    if bc.weights != "imagenet":
        notes.append(f"weights {bc.weights}: speed does not depend on the weights' values")
    return notes


def cold_cache(bc: BenchConfig, bd: BenchData) -> tuple[np.ndarray, float]:
    """The dataset decoded into an empty cache (so the decode is counted): the images, in memory, and seconds."""
    with tempfile.TemporaryDirectory(prefix="leukviz-bench-cache-") as tmp:  # a cold cache: decode counted
        t = time.perf_counter()
        images, ok = data.image_cache(bd.dataset, bc.image_size, False, Path(tmp))
        cache_seconds = time.perf_counter() - t
        if not ok.all():
            raise data.DataError(f"{int((~ok).sum())} images could not be decoded: {bd.dataset.skipped[:3]}")
        images = np.array(images)  # into memory before the temporary folder goes
    return images, cache_seconds


def run(bc: BenchConfig, cache_dir: Path | None = None, log: Log = lambda s: print(s, file=sys.stderr)) -> dict:
    """Measure everything bc asks for; returns one JSON-able dict (see format_table for the human form).

    Order: every plain-loop measurement first, in the process's default state; then what engine.setup does
    to the process (the allocator tuning) and leukviz's paths; then latency and memory."""
    if bc.threads:
        torch.set_num_threads(bc.threads)
    device = devices.pick_device(bc.device)
    t_start = time.time()
    info = machine()
    notes = run_notes(bc, info)
    for name in bc.backbones:
        backbones.ensure_weights(name, bc.weights)
    log(f"bench on {devices.device_name(device)}, {bc.image_size}px, batch {bc.batch}, "
        f"{'quick' if bc.quick else 'full'}")
    bd = bench_data(bc.data, bc.fold, cache_dir)
    log(f"  data: {bd.n} images of {bd.folder} (ImageFolder and leukviz read the same files)")

    images, cache_seconds = cold_cache(bc, bd)
    log(f"  decode once into the cache: {cache_seconds:.2f}s ({bd.n / cache_seconds:.0f} img/s)")

    lv_amp = devices.autocast_dtype(bc.precision, device)
    sizes = (8192,) if device.type == "cuda" else (1024, 2048) if bc.quick else (1024, 2048, 4096)
    reps = 10 if device.type == "cuda" else 3 if bc.quick else 5
    peaks = {"fp32": matmul_peak(torch.float32, device, sizes, reps)}
    if lv_amp is not None:
        peaks[precision_name(lv_amp)] = matmul_peak(lv_amp, device, sizes, reps)
    log("  matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))

    inits = {name: build(run_config(bc, name, "full"), bc.seed) for name in bc.backbones}
    per = {name: bench_plain(bc, name, bd, inits[name], device, log) for name in bc.backbones}
    steps = ablations(bc, images, bd.labels, inits, device, log) if bc.ablation else {}
    allocator = devices.tune_cpu_allocator() if device.type == "cpu" else False
    for name in bc.backbones:
        bench_leukviz(bc, name, bd, images, inits[name], device, cache_seconds, per[name], log)

    latency = predict_latency(bc, bd.paths[0], device, 15 if bc.quick else 40, log, inits) if bc.latency else {}
    del inits
    memory = cache_memory(bc.n_memory_files, 128, log) if bc.n_memory_files > 0 else {}
    if memory:
        log(f"  peak RSS indexing + caching {memory['files']} files at 128px: {memory['peak_rss_mb']:.0f} MB")
    # the peak again at the end: the larger of the two, so a busy moment cannot inflate the fractions
    peaks = {k: max(v, matmul_peak(torch.float32 if k == "fp32" else lv_amp, device, sizes, reps))
             for k, v in peaks.items()}
    for r in per.values():
        r["peak_gflops"] = peaks[r["leukviz_full"]["precision"]]
        r["roofline_fraction"] = r["gflops_full"] / r["peak_gflops"]
        r["plain_roofline_fraction"] = r["gflops_plain"] / peaks["fp32"]

    cfg_dict = asdict(bc)
    cfg_dict.update(batch_size=bc.batch, warmup_plain=bc.warmup_plain, timed_plain=bc.timed_plain,
                    warmup_leukviz=bc.warmup_leukviz, timed_leukviz=bc.timed_leukviz, plain_workers=list(bc.workers),
                    min_seconds_plain=bc.min_seconds_plain, min_seconds_leukviz=bc.min_seconds_leukviz)
    res = {
        "machine": info, "config": cfg_dict, "device": devices.device_name(device), "notes": notes,
        "allocator_tuned": allocator,
        "data": {"folder": str(bd.folder), "n_images": bd.n, "cache_seconds": cache_seconds},
        "matmul_peak_gflops": peaks, "backbones": per, "ablation": steps,
        "speedup_full_vs_plain": {k: v["speedup_full_vs_plain"] for k, v in per.items()},
        "speedup_last_vs_plain": {k: v["speedup_last_vs_plain"] for k, v in per.items() if "leukviz_last" in v},
        "speedup_head_vs_plain": {k: v["speedup_head_vs_plain"] for k, v in per.items()},
        "roofline_fraction": {k: v["roofline_fraction"] for k, v in per.items()},
        "latency": latency,
        "predict_all_p95_ms": latency.get("all", {}).get("p95_ms"),
        "memory": memory, "peak_rss_mb": memory.get("peak_rss_mb"),
        "seconds": time.time() - t_start,
    }
    if info["load_average_1min"] is not None:
        res["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    return res


# ---------------------------------------------------------------------------------------------- output

def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"leukviz bench — {m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}, "
             f"device {res['device']}; {res['config']['image_size']} px, batch {res['config']['batch_size']}, "
             f"images of {res['data']['folder']} ({res['data']['n_images']})",
             *(f"note: {n}" for n in res["notes"]),
             "matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in res["matmul_peak_gflops"].items()), "",
             f"{'backbone':<10} {'path':<22} {'img/s':>8} {'speedup':>8}  detail"]
    for name, r in res["backbones"].items():
        pf, lf = r["plain_full"], r["leukviz_full"]
        rows = [
            ("plain full", pf["images_per_s"], 1.0,
             f"fp32 NCHW, ImageFolder+PIL every epoch, num_workers={pf['num_workers']} (the faster of "
             + ", ".join(f"{w}: {v:.1f}" for w, v in pf["by_workers"].items()) + f" img/s); "
             f"{r['gflops_plain']:.0f} GFLOP/s = {r['plain_roofline_fraction']:.2f} of the fp32 peak"),
            ("leukviz full", lf["images_per_s"], r["speedup_full_vs_plain"],
             f"{lf['precision']} channels-last, cached uint8; {r['gflops_full']:.0f} GFLOP/s = "
             f"{r['roofline_fraction']:.2f} of the {lf['precision']} peak"),
            *([("plain last stage", r["plain_last"]["images_per_s"], 1.0, "fp32 NCHW, earlier layers frozen"),
               ("leukviz last stage", r["leukviz_last"]["images_per_s"], r["speedup_last_vs_plain"],
                f"{r['leukviz_last']['precision']} channels-last")] if "leukviz_last" in r else []),
            (f"plain head ({HEAD_EPOCHS} ep)", r["plain_head"]["images_per_s"], 1.0,
             f"{r['plain_head']['run_seconds']:.1f}s for {HEAD_EPOCHS} epochs"),
            (f"leukviz head ({HEAD_EPOCHS} ep)", None, r["speedup_head_vs_plain"],
             f"{r['leukviz_head']['run_seconds']:.2f}s: decode {r['leukviz_head']['cache_seconds']:.2f}s + features "
             f"{r['leukviz_head']['feature_seconds']:.2f}s + head {r['leukviz_head']['head_epochs_seconds']:.2f}s "
             f"({r['speedup_head_vs_plain_warm_cache']:.1f}x with the image cache already built, "
             f"{r['speedup_head_vs_plain_warm_features']:.0f}x with the features too)"),
        ]
        for label, ips, sp, detail in rows:
            lines.append(f"{name:<10} {label:<22} {'' if ips is None else f'{ips:8.1f}':>8} {sp:7.2f}x  {detail}")
    for name, rows in res.get("ablation", {}).items():
        base = res["backbones"][name]["plain_full"]["images_per_s"]
        lines += ["", f"{name} full fine-tuning, speed-ups added one at a time (plain loop: {base:.1f} img/s):"]
        lines += [f"  {r['step']:<40} {r['images_per_s']:8.1f} img/s {r['images_per_s'] / base:6.2f}x" for r in rows]
    if res["latency"]:
        lat = res["latency"]
        lines += ["", "prediction latency, one image file (decode + forward), warm: " + "; ".join(
            f"{k} p50 {v['p50_ms']:.0f} ms p95 {v['p95_ms']:.0f} ms" for k, v in lat.items())]
    if res["memory"]:
        mm = res["memory"]
        lines.append(f"peak resident memory, open_dataset + image_cache of {mm['files']} files at "
                     f"{mm['image_size']} px ({mm['note']}): {mm['peak_rss_mb']:.0f} MB (after indexing "
                     f"{mm['after_index_mb']:.0f} MB; cache file {mm['cache_mb']:.0f} MB; "
                     f"{mm['index_seconds'] + mm['cache_seconds']:.1f}s)")
    lines.append(f"total {res['seconds']:.0f}s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- accuracy

def precision_accuracy(backbone: str = "googlenet", image_size: int = 64, epochs: int = 3,
                       seeds: tuple[int, ...] = (0, 1), precisions: tuple[str, ...] = ("fp32", "bf16"),
                       data_spec: str = "demo", cache_dir: Path | None = None, log: Log = print,
                       **overrides) -> list[dict]:
    """Train the same run from scratch in each precision (and seed) on the demo and report validation
    accuracy and F1: does bf16 cost accuracy beyond the seed-to-seed noise?"""
    rows = []
    for seed in seeds:
        for prec in precisions:
            cfg = resolve(backbone, "quick", "none", data_spec, image_size=image_size, epochs=epochs,
                          precision=prec, seed=seed, **overrides)
            with tempfile.TemporaryDirectory(prefix="leukviz-bench-acc-") as tmp:
                t = time.time()
                res = engine.fit(cfg, Path(tmp), lambda e: None, cache_dir=cache_dir, log=lambda s: None)
            rows.append({"backbone": backbone, "precision": prec, "seed": seed, "seconds": time.time() - t,
                         **{k: res[k] for k in ("val_acc", "val_f1", "val_loss", "best_epoch")}})
            log(f"  {backbone} {image_size}px {epochs} epochs seed {seed} {prec}: val acc {res['val_acc']:.4f} "
                f"F1 {res['val_f1']:.4f} ({rows[-1]['seconds']:.0f}s)")
    return rows
