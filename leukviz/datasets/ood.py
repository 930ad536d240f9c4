"""Out-of-distribution check: is an image like the images a run was trained on?

At training time `reference_stats` summarises a sample of the training images as they were on disk
(before any crop or resize): their sizes, how much of each is near-black background and how bright its
edge is, and the colour of the cell pixels (per channel mean and spread). The summary travels in the
run's sidecar (filenames.SIDECAR, key "reference"). At prediction time `check` compares one image with it
and returns plain reasons, one per way the image is unlike the training data (none holds a ";": a table
joins them with "; "); the prediction itself is always shown beside them, never withheld.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from leukviz.datasets import data

VERSION = 1  # bump when the features or the rules change
SAMPLE = 400  # training images read for the reference: a fixed random sample, ~1 s for C-NMC's 450 px BMPs
THUMB = 128  # pixel statistics on every k-th pixel (nearest neighbour: the same values, far fewer of them)
BLACK = 10  # a pixel whose brightest channel is at most this is background (data.cell_box's threshold)
MIN_CELL_PIXELS = 16  # fewer bright pixels than this (in the thumbnail) is no cell at all

# The rules. Each limit sits well outside what the training images themselves span, so held-out cells of
# the training source pass (the demo's held-out subjects, which differ from its training subjects, and
# real C-NMC cells on a C-NMC run) while another source is flagged (a 450 px C-NMC cell on a demo run: its
# size, and cells darker and flatter in colour than any demo cell).
SIZE_SLACK = 0.10  # width and height within 10 % of the training images' range
BLACK_SLACK = 0.15  # the near-black share within 15 points of the training images' 1st-99th percentiles
BORDER_SLACK = 25.0  # the edge's mean brightness at most 25 levels (of 255) above the training images' 99th pct
# Cell colour: the Mahalanobis distance of log(1 + [mean R, G, B, sd R, G, B]) from the training cells'.
# A Gaussian cell is beyond 7 with p ~ 1e-8 (chi, 6 degrees of freedom); new subjects shift the colours,
# so the limit leaves them room, and 1.5x the training cells' own 99th percentile where that is wider.
# Measured: the demo's held-out subjects reach 3.3 on a run trained on the whole demo and 6.6 on a run of
# a 6-subject demo (4 training subjects); real C-NMC cells reach 5.2 on a run of other C-NMC cells; C-NMC
# cells on a demo run have a median of 8-11, and ~90 % of them are beyond 7 (the rest are flagged by size).
COLOUR_LIMIT = 7.0
COLOUR_FACTOR = 1.5
MIN_COLOUR_IMAGES = 20  # a 6x6 covariance needs more images than this; fewer: no colour rule
COLOUR_NAMES = ("red mean", "green mean", "blue mean", "red spread (sd)", "green spread (sd)", "blue spread (sd)")
NO_REFERENCE = ("no reference statistics (trained before leukviz stored them in the run's sidecar): "
                "not compared with the training data")

ImageSource = str | Path | bytes | IO[bytes] | np.ndarray


def _pixels(src: ImageSource) -> np.ndarray:
    """The image as uint8 RGB at its own size, decoded by data.decode_rgb (before crop and resize)."""
    if isinstance(src, np.ndarray):
        return src
    if isinstance(src, bytes):
        src = io.BytesIO(src)
    elif hasattr(src, "seek"):
        src.seek(0)
    try:
        return data.decode_rgb(src)
    except data.ImageError as e:  # the reason without the file's name: the caller names the file
        raise data.ImageError(e.reason) from None


def features(src: ImageSource) -> dict[str, Any]:
    """What the check looks at in one image: width and height (px), black (the share of near-black pixels),
    border (the mean brightness of its outer 2 %), colour (mean R, G, B and sd R, G, B of the cell pixels;
    None when there is no cell)."""
    a = _pixels(src)
    h, w = a.shape[:2]
    step = max(1, math.ceil(max(h, w) / THUMB))
    t = a[::step, ::step].astype(np.float32)
    bright = t.max(axis=2)
    cell = bright > BLACK
    b = max(1, round(0.02 * min(t.shape[:2])))
    edge = np.concatenate([bright[:b].ravel(), bright[-b:].ravel(), bright[:, :b].ravel(), bright[:, -b:].ravel()])
    px = t[cell]
    colour = None if len(px) < MIN_CELL_PIXELS else [*map(float, px.mean(0)), *map(float, px.std(0))]
    return {"width": int(w), "height": int(h), "black": float(1 - cell.mean()), "border": float(edge.mean()),
            "colour": colour}


def _r(x: float) -> float:
    return float(f"{x:.6g}")  # the sidecar stays small and readable


def _colour_reference(values: np.ndarray) -> dict | None:
    """The colour rule's reference: mean and covariance of the log features, the limit, and each feature's
    1st-99th percentile range (for the reasons' words)."""
    if len(values) < MIN_COLOUR_IMAGES:
        return None
    x = np.log1p(values)
    mean, cov = x.mean(0), np.cov(x, rowvar=False)
    cov += np.eye(len(mean)) * 0.01 * np.trace(cov) / len(mean)  # a ridge: no exactly flat direction
    d = _distance(x, mean, cov)
    return {"mean": [_r(v) for v in mean], "cov": [[_r(v) for v in row] for row in cov],
            "limit": _r(max(COLOUR_LIMIT, COLOUR_FACTOR * float(np.percentile(d, 99)))),
            "p1": [_r(v) for v in np.percentile(values, 1, axis=0)],
            "p99": [_r(v) for v in np.percentile(values, 99, axis=0)]}


def _distance(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    diff = np.atleast_2d(x) - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff))


def reference_stats(paths: Sequence[str | Path], sample: int = SAMPLE, seed: int = 0) -> dict:
    """The training images' reference (a seeded random sample of at most `sample` of them; unreadable ones
    are left out): for the sidecar's "reference" key. Empty when none could be read."""
    paths = list(paths)
    if len(paths) > sample:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), sample, replace=False))]
    feats = []
    for p in paths:
        try:
            feats.append(features(p))
        except (data.ImageError, OSError):
            continue
    if not feats:
        return {}
    w = np.array([f["width"] for f in feats])
    h = np.array([f["height"] for f in feats])
    black = np.array([f["black"] for f in feats])
    sizes = sorted({(int(a), int(b)) for a, b in zip(w, h)})
    colours = np.array([f["colour"] for f in feats if f["colour"] is not None], dtype=float).reshape(-1, 6)
    return {"version": VERSION, "n": len(feats), "width": [int(w.min()), int(w.max())],
            "height": [int(h.min()), int(h.max())], "sizes": [f"{a}x{b}" for a, b in sizes[:5]],
            "black": [_r(np.percentile(black, 1)), _r(np.percentile(black, 99))],
            "border": _r(np.percentile([f["border"] for f in feats], 99)), "colour": _colour_reference(colours)}


def _size_reason(f: dict, ref: dict) -> str | None:
    (w0, w1), (h0, h1) = ref["width"], ref["height"]
    inside = lambda v, lo, hi: lo * (1 - SIZE_SLACK) <= v <= hi * (1 + SIZE_SLACK)  # noqa: E731
    if inside(f["width"], w0, w1) and inside(f["height"], h0, h1):
        return None
    sizes = ref.get("sizes") or []
    seen = (f"{sizes[0]} px" if len(sizes) == 1 else
            f"between {w0}x{h0} and {w1}x{h1} px")
    return f"size {f['width']}x{f['height']} px, the training images were {seen} (another source or scale)"


def _background_reasons(f: dict, ref: dict) -> list[str]:
    out = []
    lo, hi = ref["black"]
    if not lo - BLACK_SLACK <= f["black"] <= hi + BLACK_SLACK:
        out.append(f"background: {f['black']:.0%} of the image is near-black, in the training images "
                   f"{lo:.0%}-{hi:.0%} is (a cell on black)")
    if f["border"] > ref["border"] + BORDER_SLACK:
        out.append(f"the image's edge is not black (mean brightness {f['border']:.0f} of 255, the training "
                   f"images' edges are at most {ref['border']:.0f})")
    return out


def _colour_reason(f: dict, ref: dict | None) -> str | None:
    if f["colour"] is None:  # too few non-black pixels: say which of the two reasons it is
        if f["black"] >= 0.5:
            return "no cell found: almost every pixel is near-black"
        return (f"too few pixels to measure a cell's colour ({f['width']}x{f['height']} px, "
                f"{1 - f['black']:.0%} of them not black)")
    if not ref:
        return None
    x = np.log1p(np.asarray(f["colour"], dtype=float))
    mean, cov = np.asarray(ref["mean"]), np.asarray(ref["cov"])
    d = float(_distance(x, mean, cov)[0])
    if d <= ref["limit"]:
        return None
    z = (x - mean) / np.sqrt(np.diag(cov))
    worst = np.argsort(-np.abs(z))[:2]  # the two features furthest out name the difference
    said = ", ".join(f"{COLOUR_NAMES[i]} {f['colour'][i]:.0f} (training cells {ref['p1'][i]:.0f}-{ref['p99'][i]:.0f})"
                     for i in worst)
    return (f"cell colour unlike the training cells' (distance {d:.1f}, training cells are within "
            f"{ref['limit']:.1f}): {said}")


def check(image: ImageSource | dict, stats: dict) -> list[str]:
    """Why an image (a file, bytes, an RGB array at its own size, or its `features`) is unlike the training
    images `stats` describe (reference_stats): one plain reason per rule it breaks; empty when it is like
    them. Raises data.ImageError for an unreadable image."""
    f = image if isinstance(image, dict) else features(image)
    reasons = [_size_reason(f, stats), *_background_reasons(f, stats), _colour_reason(f, stats.get("colour"))]
    return [r for r in reasons if r]


def assess(image: ImageSource | dict, stats: dict | None) -> dict[str, Any]:
    """A prediction record's fields: ood (True: unlike the training data; None: not checked, the run has no
    reference), ood_reasons (check's reasons) and ood_note (one line for people)."""
    if not stats:
        return {"ood": None, "ood_reasons": [], "ood_note": NO_REFERENCE}
    try:
        reasons = check(image, stats)
    except data.ImageError as e:
        return {"ood": None, "ood_reasons": [], "ood_note": f"not compared with the training data ({e})"}
    except (KeyError, TypeError, ValueError, IndexError, np.linalg.LinAlgError) as e:  # a hand-edited sidecar
        return {"ood": None, "ood_reasons": [],
                "ood_note": f"not compared with the training data (its reference statistics are damaged: "
                            f"{e.__class__.__name__})"}
    note = ("unlike the training data: " + "; ".join(reasons)) if reasons else \
        "like the training data (size, background, cell colour)"
    return {"ood": bool(reasons), "ood_reasons": reasons, "ood_note": note}
