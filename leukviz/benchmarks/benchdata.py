"""The benchmark's data checks: the images both paths train on (the files torchvision's ImageFolder lists that
leukviz indexes too, with the same labels), the plain loop's loader over them, and the cold image cache."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leukviz.benchmarks.settings import BenchConfig
from leukviz.datasets import cnmc, data
from leukviz.training import plain


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
    """The plain loop's training dataset over the benchmark's files (training/plain.py: decode and resize at
    every access, random flips)."""
    return plain._Files(bd.paths, bd.labels.tolist(), plain.transforms(backbone, size, True))


def plain_loader(bd: BenchData, size: int, backbone: str, batch_size: int, workers: int, seed: int,
                 device: torch.device):
    """The plain loop's batches (plain.train_loader), at the benchmark's batch size and DataLoader workers."""
    return plain.train_loader((bd.paths, bd.labels.tolist()), backbone, size, seed, batch_size, workers,
                              pin_memory=device.type == "cuda")


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
