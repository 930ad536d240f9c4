"""Built-in demo dataset: synthetic stained white blood cells on black, written in the C-NMC 2019 layout."""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from leukviz.datasets import cnmc
from leukviz.datasets.cnmc import CNMC_CLASSES

DEMO_VERSION = 1  # bump whenever the generated pixels, names or layout change

# Spread of every morphology feature around its class mean, in units of the hem-to-all distance.
# 0 makes the classes trivially separable. At 0.38 a ResNet-18 trained from scratch at 64 px (subject
# split, Adam 1e-3, 3 epochs) reaches about 86-93 % validation accuracy; 0.6 holds it near 80 %.
OVERLAP = 0.38
# How much of that spread one cell shares across all its features: an atypical cell is atypical in
# several ways at once, so adding features does not make the overlap vanish.
FEATURE_CORRELATION = 0.5
# Per-subject shift of the class mean: some patients' blasts look more mature than others'.
SUBJECT_SHIFT = 0.2

_FEATURES = ("size", "nc_ratio", "irregularity", "density", "texture", "nucleoli")
# Optical density of the stains at concentration 1 (Beer-Lambert): violet nucleus, lavender cytoplasm.
_NUCLEUS_OD = np.array([0.84, 1.45, 0.53], dtype=np.float32)
_CYTOPLASM_OD = np.array([0.24, 0.47, 0.17], dtype=np.float32)
_PRELIM_SUBJECTS = {"all": 2, "hem": 1}


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _smooth_noise(rng: np.random.Generator, grid: int, size: int) -> np.ndarray:
    """Noise in [0, 1] with blobs about size/grid pixels across: a small random grid, upsampled."""
    grid = max(2, min(grid, size // 2))
    small = Image.fromarray(rng.random((grid, grid), dtype=np.float32))
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32).clip(0, 1)


def _soft_inside(radius: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """1 inside the outline, 0 outside, with a one-pixel anti-aliased edge."""
    return np.clip((radius - r) * (size / 2) + 0.5, 0, 1)


_ANGLES = np.linspace(-np.pi, np.pi, 1024, endpoint=False, dtype=np.float32)


def _polar(x: np.ndarray, y: np.ndarray, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Radius and angle bin (an index into _ANGLES) of every pixel around (cx, cy)."""
    phi = np.arctan2(y - cy, x - cx)
    bins = ((phi + np.pi) * (len(_ANGLES) / (2 * np.pi))).astype(np.int32) % len(_ANGLES)
    return np.hypot(x - cx, y - cy), bins


def _outline(rng: np.random.Generator, amplitude: float, orders: range) -> np.ndarray:
    """Relative radius per angle bin, 1 + random harmonics: a wobbly closed outline.

    Built over 1024 angles and looked up per pixel: far cheaper than cosines over the whole image.
    """
    out = np.ones_like(_ANGLES)
    for k in orders:
        out += rng.normal(0, amplitude / k**0.5) * np.cos(k * _ANGLES + rng.uniform(0, 2 * np.pi))
    return out


def _subject_params(seed: int, cls: int, number: int) -> dict:
    """Nuisance settings shared by all cells of one subject (slide): stain, light, focus, scale."""
    rng = np.random.default_rng([seed, cls, number, 1])
    return {
        "nucleus_od": _NUCLEUS_OD * np.exp(rng.normal(0, 0.08, 3)).astype(np.float32),
        "cytoplasm_od": _CYTOPLASM_OD * np.exp(rng.normal(0, 0.10, 3)).astype(np.float32),
        "stain": rng.uniform(0.85, 1.2),
        "brightness": rng.uniform(0.78, 1.02),
        "gradient": rng.uniform(0, 0.08),
        "blur": rng.uniform(0.2, 1.2),
        "scale": rng.uniform(0.92, 1.08),
        "shift": rng.normal(0, SUBJECT_SHIFT),
        # Read here, in the parent process, so a patched knob also reaches spawned workers.
        "overlap": OVERLAP,
        "correlation": FEATURE_CORRELATION,
    }


def _render_cell(cls: int, subject: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """One cell as an RGB uint8 array; cls 1 = `all` (blast), 0 = `hem`. Background exactly 0."""
    # Each feature's "blastness" t: 0 is a typical normal lymphocyte, 1 a typical blast.
    shared = rng.normal()
    own = rng.normal(size=len(_FEATURES))
    rho = subject["correlation"]
    z = rho * shared + (1 - rho**2) ** 0.5 * own
    # Python floats, not numpy scalars, so the pixel arrays stay float32 (NumPy 2 promotes to float64).
    blastness = np.clip(cls + subject["shift"] + subject["overlap"] * z, -0.6, 1.6).tolist()
    t = dict(zip(_FEATURES, blastness, strict=True))

    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    cx, cy = rng.uniform(-0.12, 0.12, 2).tolist()
    r, bins = _polar(x, y, cx, cy)

    cell_r = _lerp(0.36, 0.50, t["size"]) * subject["scale"] * rng.normal(1, 0.05)
    cell_edge = cell_r * _outline(rng, 0.03, range(2, 6))[bins]
    cell = _soft_inside(cell_edge, r, size)

    # The nucleus sits off-centre where there is room, and may not cross the cell membrane.
    nuc_r = cell_r * min(max(_lerp(0.74, 0.90, t["nc_ratio"]) + rng.normal(0, 0.02), 0.6), 0.93)
    offset = max(0.0, min(rng.uniform(0, 0.12) * cell_r, cell_r * 0.95 - nuc_r * 1.05))
    angle = rng.uniform(0, 2 * np.pi)
    nx, ny = cx + offset * math.cos(angle), cy + offset * math.sin(angle)
    rn, nbins = _polar(x, y, nx, ny)
    irregular = max(0.0, t["irregularity"])
    nuc_outline = _outline(rng, _lerp(0.015, 0.08, irregular), range(2, 7))
    if rng.random() < 0.15 + 0.6 * irregular:  # a notch (cleft), typical of blasts
        gap = np.angle(np.exp(1j * (_ANGLES - rng.uniform(0, 2 * np.pi))))
        nuc_outline *= 1 - _lerp(0.05, 0.22, irregular) * np.exp(-(gap**2) / 0.08)
    nuc_edge = nuc_r * nuc_outline[nbins]
    nucleus = np.minimum(_soft_inside(nuc_edge, rn, size), _soft_inside(cell_edge * 0.96, r, size))

    # Chromatin: coarse dark clumps in normal cells, fine open grain in blasts.
    tex = float(np.clip(t["texture"], 0, 1))
    clumps = 1 / (1 + np.exp(-(_smooth_noise(rng, 18, size) - 0.5) * 12))
    grain = (1 - tex) * clumps + tex * _smooth_noise(rng, 40, size)
    contrast = _lerp(0.45, 0.18, tex)
    chromatin = _lerp(1.3, 0.85, t["density"]) * (1 + contrast * (grain - 0.5) * 2)
    n_nucleoli = int(np.clip(round(_lerp(-0.3, 2.3, t["nucleoli"]) + rng.normal(0, 0.5)), 0, 3))
    for _ in range(n_nucleoli):  # pale round spots inside the nucleus
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.55) * nuc_r
        spot_r = rng.uniform(0.09, 0.15) * nuc_r
        d2 = (x - nx - d * math.cos(a)) ** 2 + (y - ny - d * math.sin(a)) ** 2
        chromatin = chromatin * (1 - 0.5 * np.exp(-d2 / (2 * spot_r**2)))

    # Cytoplasm: mottled, a little darker at the membrane as in real smears.
    rim = np.exp(-np.maximum(cell_edge - r, 0) / 0.03)
    cyto = 1 + 0.25 * (_smooth_noise(rng, 8, size) - 0.5) + 0.5 * rim

    stain = subject["stain"] * rng.normal(1, 0.04)
    od = (1 - nucleus)[..., None] * cyto[..., None] * subject["cytoplasm_od"]
    od += nucleus[..., None] * chromatin[..., None] * subject["nucleus_od"]
    light = subject["brightness"] * (1 + subject["gradient"] * (x * math.cos(angle) + y * math.sin(angle)))
    rgb = 255 * np.exp(-stain * od) * light[..., None]

    # Blur the tissue before cutting it out, so the background stays exactly black.
    tissue = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    blur = subject["blur"] * rng.uniform(0.8, 1.2) * size / 224
    tissue = np.asarray(tissue.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    return np.rint(tissue * cell[..., None]).astype(np.uint8)


def _render_task(task: tuple) -> None:
    path, size, cls, subject, entropy = task
    rng = np.random.default_rng(entropy)
    Image.fromarray(_render_cell(cls, subject, rng, size)).save(path, format="PNG")


def _subject_cells(rng: np.random.Generator, n_cells: int) -> list[tuple[int, int]]:
    """(image, cell) numbers as in C-NMC names: each microscope image yields one to three cells."""
    cells: list[tuple[int, int]] = []
    image = 0
    while len(cells) < n_cells:
        image += 1
        cells += [(image, c) for c in range(1, 1 + rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))]
    return cells[:n_cells]


def _plan(seed: int, n_subjects: int) -> tuple[list[dict], list[dict]]:
    """Subjects of the training folds and of the prelim set, each with its cells; no pixels yet."""
    rng = np.random.default_rng([seed, 0])
    n_all = max(1, round(n_subjects * 0.6))
    counts = {"all": n_all, "hem": max(1, n_subjects - n_all)}
    sizes = {"all": (38, 58), "hem": (28, 44)}  # cells per subject: about 2:1 all:hem by image count
    train, prelim = [], []
    for name in ("all", "hem"):
        cls = CNMC_CLASSES.index(name)
        for i in range(1, counts[name] + _PRELIM_SUBJECTS[name] + 1):
            n_cells = int(rng.integers(*sizes[name], endpoint=True))
            if i > counts[name]:
                n_cells = int(rng.integers(22, 30, endpoint=True))
            subject = {
                "name": str(i) if name == "all" else f"H{i}",
                "cls": cls,
                "params": _subject_params(seed, cls, i),
                "cells": _subject_cells(np.random.default_rng([seed, cls, i, 2]), n_cells),
                "entropy": [seed, cls, i, 3],
            }
            (train if i <= counts[name] else prelim).append(subject)
        # Largest subjects first, each into the fold with the fewest cells of this class so far.
        in_class = sorted((s for s in train if s["cls"] == cls), key=lambda s: -len(s["cells"]))
        load = [0, 0, 0]
        for s in in_class:
            s["fold"] = int(np.argmin(load))
            load[s["fold"]] += len(s["cells"])
    return train, prelim


def generate_demo(
    root: Path, seed: int = 0, n_subjects: int = 20, image_size: int = 224, workers: int = 2
) -> Path:
    """Write the demo dataset in C-NMC layout under root and return root / "C-NMC_Leukemia".

    Deterministic from seed: every cell's random stream comes from (seed, subject, image, cell), so the
    files are identical whatever the number of workers.
    """
    base = Path(root) / cnmc.ROOT
    train, prelim = _plan(seed, n_subjects)
    tasks = []
    for s in train:
        name = CNMC_CLASSES[s["cls"]]
        folder = base / cnmc.TRAINING / cnmc.fold_name(s["fold"]) / name
        folder.mkdir(parents=True, exist_ok=True)
        for image, c in s["cells"]:
            path = folder / cnmc.cell_name(s["name"], image, c, name, ".png")
            tasks.append((str(path), image_size, s["cls"], s["params"], s["entropy"] + [image, c]))

    # The prelim set hides names and classes behind shuffled numbers, with the key in a CSV.
    prelim_dir = base / cnmc.PRELIM_IMAGES
    prelim_dir.mkdir(parents=True, exist_ok=True)
    cells = [(s, image, c) for s in prelim for image, c in s["cells"]]
    order = np.random.default_rng([seed, 4]).permutation(len(cells))
    rows = []
    for n, k in enumerate(order, start=1):
        s, image, c = cells[k]
        path = prelim_dir / f"{n}.png"
        tasks.append((str(path), image_size, s["cls"], s["params"], s["entropy"] + [image, c]))
        rows.append((cnmc.cell_name(s["name"], image, c, CNMC_CLASSES[s["cls"]], ".png"), f"{n}.png", s["cls"]))
    with open(base / cnmc.PRELIM_LABELS, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cnmc.LABEL_COLUMNS)
        writer.writerows(rows)

    if workers <= 1:
        for task in tasks:
            _render_task(task)
    else:
        # spawn, not fork: the caller may be a threaded server (Streamlit) or hold torch's threads.
        # An executor, not a Pool: a worker that dies raises here instead of hanging the caller.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_render_task, tasks, chunksize=16))
    return base


_MARKER = "COMPLETE"


def ensure_demo(cache_dir: Path, seed: int = 0) -> Path:
    """Generate the demo once into cache_dir/demo-v{DEMO_VERSION}-s{seed} and return its C-NMC root.

    A folder is reused only when it holds the completion marker; it is built in a temporary sibling
    and renamed into place, so an interrupted build is never mistaken for a finished one.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"demo-v{DEMO_VERSION}-s{seed}"
    if (target / _MARKER).exists():
        return target / cnmc.ROOT
    cache_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)  # a partial folder from an older, non-atomic writer
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        generate_demo(tmp, seed=seed, workers=min(2, os.cpu_count() or 1))
        (tmp / _MARKER).write_text(f"leukviz demo v{DEMO_VERSION} seed {seed}\n")
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; keep its copy if it is complete.
            if not (target / _MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / cnmc.ROOT
