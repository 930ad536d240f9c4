"""Dataset sources (demo, C-NMC as downloaded, class-per-folder trees, train/val/test trees, zips), the index
table, splits and the image cache."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image, ImageOps, UnidentifiedImageError

from leukviz.core import layout, paths
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import atomic_write_bytes
from leukviz.datasets import cnmc, synthetic
from leukviz.datasets.cnmc import CNMC_CLASSES, parse_cnmc_name

IMAGE_EXTS = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp"}
MAX_PIXELS = 40_000_000  # a 450x450 cell is 0.2 MP; anything this large is a decompression bomb
MAX_ZIP_BYTES = 32 << 30  # uncompressed total; the full C-NMC set is about 10 GB of BMPs
MAX_ZIP_RATIO = 200  # per entry; BMPs of cells on black compress well, but not this well

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class DataError(LeukvizError, ValueError):
    """A dataset or image that cannot be used; the message says why and what to do."""


class ImageError(DataError):
    """One image that cannot be decoded."""


# The index's `set` column. A split draws from POOL_SETS: "train", and "val" (a dataset's own validation
# folder, which split "given" keeps apart and the other splits pool with train). TEST_SETS are held out:
# "test" (a test/ folder beside train/) and "prelim" (C-NMC's labelled preliminary test set, and the
# demo's); their labelled rows are scored once, after training, and never choose anything. "final" is
# C-NMC's unlabelled final test set.
POOL_SETS = ("train", "val")
TEST_SETS = ("test", "prelim")
# The folder names of a train/val/test tree (ImageFolder, Keras, fastai), compared in lower case.
SET_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class Dataset:
    name: str  # what the user typed: "demo" or a path
    root: Path
    kind: str  # "demo", "cnmc", "folder" (one sub-folder per class) or "splits" (train/ [val/] [test/])
    classes: tuple[str, ...]
    index: pd.DataFrame  # columns: path, label, subject, fold, set
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[str] = field(default_factory=list)  # about the layout (a class missing from test/, ...)
    folders: dict[str, str] = field(default_factory=dict)  # kind "splits": set -> its folder's name
    digests: list[str] = field(default_factory=list)  # each row's content digest (empty for the demo)

    @property
    def train_rows(self) -> pd.DataFrame:
        """The labelled rows a split draws from: set "train", and "val" when the dataset has its own."""
        return self.index[self.index["set"].isin(POOL_SETS)]

    @property
    def has_val(self) -> bool:
        """Whether the dataset comes with its own validation set (split "given")."""
        return bool((self.index["set"] == "val").any())

    @property
    def test_rows(self) -> pd.DataFrame:
        """The labelled held-out test rows (sets "test" and "prelim"): scored once after training."""
        return self.index[self.index["set"].isin(TEST_SETS) & (self.index["label"] >= 0)]

    @property
    def has_subjects(self) -> bool:
        return bool((self.train_rows["subject"] != "").all()) and len(self.train_rows) > 0

    @property
    def positive(self) -> int:
        return self.classes.index("all") if "all" in self.classes else len(self.classes) - 1


# ---------------------------------------------------------------------------------------------- images

def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit and float greyscale are rescaled, alpha is composited on black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img)  # uint16, int32 or float32 as stored: no float64 copy of a large image
        if a.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(a)))
            if bad:  # min/max would be nan or inf, and the whole image would decode as black
                raise ImageError(f"{bad} pixel{'s' if bad != 1 else ''} of this floating-point image "
                                 f"{'are' if bad != 1 else 'is'} not a number (inf or NaN); refused rather than "
                                 "predicted as a black image")
        lo, hi = float(a.min()), float(a.max())
        out = np.zeros(a.shape, np.uint8)
        if hi > lo:  # rescaled a block of rows at a time, in float32: memory of a few rows, not of the image
            scale = np.float32(255.0 / (hi - lo))
            for r in range(0, a.shape[0], 256):
                out[r:r + 256] = (a[r:r + 256].astype(np.float32) - np.float32(lo)) * scale
        img = Image.fromarray(out, "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))  # cells sit on black
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


# The side of the window around the cell, as a fraction of the image's shorter side: the same window for
# every image of a dataset, so a large cell stays larger than a small one (cell size is a class cue in
# C-NMC: ALL blasts average ~36,000 px2, normal cells ~26,500). 0.75 of a 450 px C-NMC image is 338 px,
# which holds 99.5 % of the cells of training fold 1 whole (their largest side: median 228 px for ALL,
# 187 for normal cells, 99th percentile 326) and gives the cell 1.33x the pixels of the whole image.
CELL_WINDOW = 0.75


def cell_box(a: np.ndarray, threshold: int = 10) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the pixels brighter than threshold (the cell on its black background), or None."""
    # the brightest channel of each pixel; np.maximum of the three planes, as a.max(axis=2) (a reduction
    # over a length-3 axis) is ~25x slower and was most of the cache's decode time
    mask = np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2]) > threshold
    if np.count_nonzero(mask) < 16:
        return None
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def _square_around(a: np.ndarray, cy: int, cx: int, side: int) -> np.ndarray:
    """The side x side square centred on (cy, cx); what lies outside the image is black."""
    out = np.zeros((side, side, 3), dtype=a.dtype)
    sy0, sx0 = cy - side // 2, cx - side // 2
    ty0, tx0 = max(0, -sy0), max(0, -sx0)
    src = a[max(0, sy0):sy0 + side, max(0, sx0):sx0 + side]
    out[ty0:ty0 + src.shape[0], tx0:tx0 + src.shape[1]] = src
    return out


def crop_to_cell(a: np.ndarray, window: float | None = CELL_WINDOW, margin: float = 0.04) -> np.ndarray:
    """A square window centred on the cell. window: its side as a fraction of the image's shorter side,
    the same for every image, so the cell keeps its scale. window=None is version 1's crop, kept only so
    that runs trained with it predict as they were trained: a square just around each cell, which
    rescales every cell to fill the frame and so throws away its size."""
    box = cell_box(a)
    if box is None:
        return a
    y0, y1, x0, x1 = box
    if window is None:
        side = int(max(y1 - y0, x1 - x0) * (1 + 2 * margin)) + 1
    else:
        side = max(2, int(round(window * min(a.shape[:2]))))
    return _square_around(a, (y0 + y1) // 2, (x0 + x1) // 2, side)


def _display_name(src: str | Path | IO[bytes]) -> str:
    """The bare file name for messages: never a server path, and an upload's name is shown, not followed."""
    name = getattr(src, "name", None) if not isinstance(src, (str, Path)) else src
    if not isinstance(name, (str, Path)) or not str(name):
        return "uploaded image"
    return Path(str(name).replace("\\", "/")).name or "uploaded image"


def load_image(src: str | Path | IO[bytes], size: int, crop: bool = True,
               window: float | None = CELL_WINDOW) -> np.ndarray:
    """Decode one image file into uint8 RGB (size, size, 3): the one decoding path for cache and prediction.

    crop: a fixed window around the cell (see crop_to_cell; window=None only for runs of version 1);
    otherwise the whole image. Either way every image is scaled by the same factor (for images of one size).

    Anything that is not a usable image raises ImageError with a one-line reason, never another exception.
    """
    return fit_image(decode_rgb(src), size, crop, window)


def decode_rgb(src: str | Path | IO[bytes]) -> np.ndarray:
    """One image file as uint8 RGB at its own size (orientation applied, 16-bit and float rescaled, alpha on
    black): what load_image fits, and what the out-of-distribution check measures. Decode once, use twice.
    ImageError (one line naming the file) for anything unusable."""
    name = _display_name(src)
    try:
        with Image.open(src) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:  # Pillow only refuses at twice its limit; between, it merely warns
                raise ImageError(f"{name}: image too large ({w}x{h} pixels; the limit is {MAX_PIXELS:,})")
            img.seek(0)  # animated images: the first frame
            img = ImageOps.exif_transpose(_to_rgb(img))
            a = np.asarray(img)
    except ImageError as e:
        if str(e).startswith(f"{name}: "):
            raise
        raise ImageError(f"{name}: {e}") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image too large (over {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        empty = isinstance(src, (str, Path)) and os.path.isfile(src) and os.path.getsize(src) == 0
        empty = empty or (hasattr(src, "getbuffer") and src.getbuffer().nbytes == 0)
        raise ImageError(f"{name}: not a readable image (" + ("the file is empty: 0 bytes)" if empty else
                                                             "not an image, or an unknown format)")) from None
    except Exception as e:  # noqa: BLE001 - a damaged file can make any decoder raise anything
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e).replace(str(src), name)
        raise ImageError(f"{name}: not a readable image ({e.__class__.__name__}: {detail})") from None
    if a.ndim != 3 or a.shape[0] < 2 or a.shape[1] < 2:
        raise ImageError(f"{name}: image is empty or too small")
    return a


def fit_image(a: np.ndarray, size: int, crop: bool = True, window: float | None = CELL_WINDOW) -> np.ndarray:
    """decode_rgb's image as the model sees it: cropped around the cell (crop), padded to a square on black,
    resized to size x size."""
    side = max(a.shape[:2])
    if side * side > MAX_PIXELS:  # a long thin image: shrink it first, or a square of its long side fills memory
        w, h = max(1, round(a.shape[1] * size / side)), max(1, round(a.shape[0] * size / side))
        a = np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
    if crop:
        a = crop_to_cell(a, window)
    if a.shape[0] != a.shape[1]:  # pad to square on black so the cell is never stretched
        side = max(a.shape[:2])
        sq = np.zeros((side, side, 3), np.uint8)
        oy, ox = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
        sq[oy:oy + a.shape[0], ox:ox + a.shape[1]] = a
        a = sq
    if a.shape[0] != size:
        a = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return np.ascontiguousarray(a, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- sources

def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def find_cnmc_root(path: Path) -> Path | None:
    for cand in (path, path / cnmc.ROOT, *sorted(p for p in path.iterdir() if p.is_dir())):
        if (cand / cnmc.TRAINING).is_dir():
            return cand
    return None


def _index_cnmc(root: Path, skipped: list) -> pd.DataFrame:
    rows = []
    for fold_dir in sorted((root / cnmc.TRAINING).glob(cnmc.FOLD_GLOB)):
        fold = cnmc.parse_fold(fold_dir.name)
        if fold is None or not fold_dir.is_dir():
            continue
        for cls_dir in _distinct_dirs(sorted(p for p in fold_dir.iterdir() if p.is_dir())):
            if class_name(cls_dir.name) not in CNMC_CLASSES:
                continue
            for f in sorted(cls_dir.iterdir()):
                if not _is_image(f):
                    skipped.append((str(f), "not an image file"))
                    continue
                if not f.is_file():  # a broken link or a folder named like an image
                    skipped.append((str(f), "not a regular file"))
                    continue
                parsed = parse_cnmc_name(f.name)
                subject = parsed[0] if parsed else ""
                rows.append((str(f), CNMC_CLASSES.index(class_name(cls_dir.name)), subject, fold, "train"))
    labels = root / cnmc.PRELIM_LABELS
    if labels.is_file():
        try:
            with open(labels, newline="", encoding="utf-8-sig") as fh:
                records = list(csv.DictReader(fh))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{labels.name} is not a readable CSV ({e}); "
                            f"expected columns {','.join(cnmc.LABEL_COLUMNS)}") from None
        if records and not {cnmc.LABEL_FILE, cnmc.LABEL_VALUE} <= set(records[0]):
            raise DataError(f"{labels.name} lacks the columns {cnmc.LABEL_FILE} and {cnmc.LABEL_VALUE} "
                            f"(has: {', '.join(map(str, records[0]))})")
        for rec in records:
            fname, label = str(rec.get(cnmc.LABEL_FILE) or ""), str(rec.get(cnmc.LABEL_VALUE) or "").strip()
            if Path(fname).name != fname or fname in ("", ".", ".."):  # a name inside the folder, not a path
                skipped.append((fname, f"{labels.name}: not a plain file name"))
                continue
            if label not in ("0", "1"):
                skipped.append((fname, f"{labels.name}: label {label!r} is not 0 (hem) or 1 (all)"))
                continue
            f = root / cnmc.PRELIM_IMAGES / fname
            if not f.is_file():
                skipped.append((str(f), "listed in the labels CSV but missing"))
                continue
            parsed = parse_cnmc_name(rec.get(cnmc.LABEL_SUBJECT) or "")
            rows.append((str(f), int(label), parsed[0] if parsed else "", -1, "prelim"))
    final = root / cnmc.FINAL_IMAGES
    if final.is_dir():
        for f in sorted(final.iterdir(), key=lambda p: (len(p.name), p.name)):
            if _is_image(f) and f.is_file():
                rows.append((str(f), -1, "", -1, "final"))
    return pd.DataFrame(rows, columns=["path", "label", "subject", "fold", "set"])


def class_name(folder: str) -> str:
    """A class folder's class: C-NMC's names in any case (ALL/, Hem/) are the C-NMC classes, so the positive
    class is found and a run matches another layout's classes; any other name is kept as it is."""
    return folder.lower() if folder.lower() in CNMC_CLASSES else folder


def _distinct_dirs(dirs: list[Path]) -> list[Path]:
    """Class folders, refusing one that is (a link to) another or lies inside it: every image would be in
    two classes at once, be dropped as a cross-class duplicate, and leave one class to train on."""
    seen: dict[Path, Path] = {}
    for d in dirs:
        real = d.resolve()
        for other_real, other in seen.items():
            if real == other_real or real.is_relative_to(other_real) or other_real.is_relative_to(real):
                raise DataError(f"class folders {other.name}/ and {d.name}/ in {d.parent.name}/ are the same folder "
                                f"(one is a link to the other): every image would belong to both classes. Give "
                                f"each class its own folder of images")
        seen[real] = d
    return dirs


def _class_dirs(root: Path) -> list[Path]:
    return _distinct_dirs(sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))))


def _class_images(d: Path, skipped: list) -> list[Path]:
    """The image files anywhere under one class folder; the others go to skipped with a reason."""
    entries = sorted(f for f in d.rglob("*") if not f.is_dir())
    skipped.extend((str(f), "not a regular file") for f in entries if not f.is_file())  # broken links
    files = [f for f in entries if f.is_file()]
    skipped.extend((str(f), "not an image file") for f in files if not _is_image(f))
    return [f for f in files if _is_image(f)]


def skipped_text(skipped: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """Skipped files counted by reason, with a few names each: '3 files: 3 directly in val/, not in a class
    folder (v0.png, v1.png, v2.png)'."""
    by_reason: dict[str, list[str]] = {}
    for path, why in skipped:
        by_reason.setdefault(why, []).append(Path(path).name)
    parts = [f"{len(names)} {why} ({', '.join(names[:shown])}{', …' if len(names) > shown else ''})"
             for why, names in by_reason.items()]
    return f"{len(skipped)} file{'s' if len(skipped) != 1 else ''}: " + "; ".join(parts)


def _index_folder(root: Path, skipped: list) -> tuple[pd.DataFrame, tuple[str, ...]]:
    class_dirs = _class_dirs(root)
    if not class_dirs:
        raise DataError(f"{root} has no sub-folders: expected one sub-folder per class (e.g. all/ and hem/), "
                        "train/ and val/ (or valid/, validation/) and test/ each with one sub-folder per class, "
                        "or the C-NMC layout (training_data/fold_*/all|hem)")
    rows = []
    classes: list[str] = []
    for d in class_dirs:
        images = _class_images(d, skipped)
        if not images:
            continue
        if class_name(d.name) not in classes:  # all/ and ALL/ side by side are one class
            classes.append(class_name(d.name))
        for f in images:
            parsed = parse_cnmc_name(f.name)
            rows.append((str(f), classes.index(class_name(d.name)), parsed[0] if parsed else "", -1, "train"))
    return pd.DataFrame(rows, columns=["path", "label", "subject", "fold", "set"]), tuple(classes)


def find_set_folders(root: Path) -> dict[str, Path] | None:
    """The train/val/test tree of ImageFolder, Keras and fastai users: {set: folder} when root holds a train/
    folder (any case) with sub-folders, beside val/, valid/ or validation/ and test/ (each optional); None
    for any other layout. Two spellings of one set (val/ and valid/) are refused: which is meant?"""
    found: dict[str, list[Path]] = {}
    for p in sorted(root.iterdir()):
        role = SET_FOLDERS.get(p.name.lower())
        if role and p.is_dir():
            found.setdefault(role, []).append(p)
    if "train" not in found or not any(p.is_dir() for p in found["train"][0].iterdir()):
        return None
    for role, folders in found.items():
        if len(folders) > 1:
            raise DataError(f"{root} has {len(folders)} {role} folders ({', '.join(p.name + '/' for p in folders)}); "
                            "keep one")
    return {role: folders[0] for role, folders in found.items()}


def _index_sets(root: Path, folders: dict[str, Path], skipped: list,
                warnings: list) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Index a train/val/test tree. The classes are the sorted class-folder names (with images) of train/;
    a class of val/ or test/ that train/ lacks is an error (the model never sees it); a class of train/
    that val/ lacks fails split "given" (make_split), and one that test/ lacks is a warning."""
    per_set: dict[str, dict[str, list[Path]]] = {}
    for role in ("train", "val", "test"):
        if role not in folders:
            continue
        top = folders[role]
        skipped.extend((str(f), f"directly in {top.name}/, not in a class folder")
                       for f in sorted(top.iterdir()) if f.is_file() and not f.name.startswith("."))
        per_set[role] = {}
        for d in _class_dirs(top):
            if imgs := _class_images(d, skipped):
                per_set[role].setdefault(class_name(d.name), []).extend(imgs)
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith((".", "__")) and p not in folders.values():
            skipped.append((str(p), "a folder beside train/, val/ and test/: not read"))
    classes = tuple(sorted(per_set["train"]))
    for role in ("val", "test"):
        if role not in per_set:
            continue
        if not per_set[role]:  # there, but no image in a class folder: say so, never "has none"
            loose = sum(1 for f, why in skipped if why.startswith(f"directly in {folders[role].name}/"))
            where = f" ({loose} file(s) lie directly in it, skipped)" if loose else ""
            instead = ("the split draws validation from train/ instead" if role == "val"
                       else "no test score is made")
            warnings.append(f"the {'validation' if role == 'val' else 'test'} folder {folders[role].name}/ holds no "
                            f"images in class folders{where}: put them in one sub-folder per class "
                            f"({', '.join(f'{folders[role].name}/{c}/' for c in classes)}); until then {instead}")
            continue
        names = set(per_set[role])
        extra = sorted(names - set(classes))
        if extra:
            raise DataError(f"{folders[role].name}/ has class folders that {folders['train'].name}/ lacks: "
                            f"{', '.join(extra)} (the model would never see them). Class folders must have the "
                            f"same names in every set; {folders['train'].name}/ has {', '.join(classes) or 'none'}")
        missing = sorted(set(classes) - names)
        if role == "test" and missing:
            warnings.append(f"the test folder {folders[role].name}/ has no images of class "
                            f"{', '.join(missing)}: its score says nothing about that class")
    rows = []
    for role, by_class in per_set.items():
        for cls in sorted(by_class):
            for f in by_class[cls]:
                parsed = parse_cnmc_name(f.name)
                rows.append((str(f), classes.index(cls), parsed[0] if parsed else "", -1, role))
    return pd.DataFrame(rows, columns=["path", "label", "subject", "fold", "set"]), classes


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _check_members(zip_name: str, files: list[zipfile.ZipInfo]) -> None:
    """Before extracting: an entry name given twice (which file is meant?), and a zip that holds zips but no
    image (a zip of the dataset's zip), each one line naming the zip and the entry."""
    seen: set[str] = set()
    for info in files:
        key = info.filename.replace("\\", "/").rstrip("/")
        if key in seen:
            raise DataError(f"{zip_name}: the entry {info.filename!r} appears twice, so which file is meant is "
                            "unclear; make the zip again from the folder")
        seen.add(key)
    names = [Path(i.filename.replace("\\", "/")) for i in files]
    inner = [n.name for n in names if n.suffix.lower() == ".zip"]
    if inner and not any(_is_image(n) for n in names):
        raise DataError(f"{zip_name} holds another zip ({', '.join(inner[:3])}) and no images: give the inner zip "
                        "itself, or zip the dataset's folder")


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract a dataset zip safely: no paths outside dest, no links, size and ratio limits; returns the root."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{Path(zip_path).name}: not a readable zip file ({e})") from None
    with zf:
        total = 0
        members = []
        for info in zf.infolist():
            if info.flag_bits & 0x1:
                raise DataError(f"{Path(zip_path).name}: encrypted zips are not supported")
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts or ":" in name:
                raise DataError(f"{Path(zip_path).name}: unsafe entry {name!r} (absolute path or '..')")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"{Path(zip_path).name}: entry {name!r} is a symbolic link; links are refused")
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                raise DataError(f"{Path(zip_path).name}: expands to over {_size(MAX_ZIP_BYTES)}; refused")
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 1 << 20:
                raise DataError(f"{Path(zip_path).name}: entry {name!r} is compressed {info.file_size // info.compress_size}:1, "
                                "a zip bomb; refused")
            if "__MACOSX" in name:
                continue
            members.append(info)
        _check_members(Path(zip_path).name, [m for m in members if not m.is_dir()])
        free = shutil.disk_usage(dest.parent).free
        if total > free:
            raise DataError(f"{Path(zip_path).name}: expands to {_size(total)} but only {_size(free)} is free in "
                            f"{dest.parent}")
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        try:
            for info in members:
                target = (tmp / info.filename).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise DataError(f"{Path(zip_path).name}: unsafe entry {info.filename!r}")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as s, open(target, "wb") as d:
                        shutil.copyfileobj(s, d, 1 << 20)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
                    # a damaged entry, a size that lies (zipfile stops at the declared size, then the CRC
                    # fails), or a full disk: nothing is kept, the temporary folder goes below
                    raise DataError(f"{Path(zip_path).name}: cannot extract {info.filename!r} "
                                    f"({e.__class__.__name__}: {e})") from None
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    # a single top folder (zip of a folder) is unwrapped
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and find_cnmc_root(dest) is None:
        return entries[0]
    return dest


def save_upload(blob: bytes, folder: Path, suffix: str = ".zip", name: str | None = None) -> Path:
    """Store an uploaded dataset in a folder named by its content. With name (the upload's own file name),
    the file keeps that name, made safe (its bare name, letters, digits, '.', '-', '_' and spaces only), so
    pages can call the dataset as the user does; the name is only ever shown, never followed as a path."""
    digest = hashlib.sha256(blob).hexdigest()[:16]
    if name:
        bare = re.sub(r"[^\w.\- ]", "_", Path(str(name).replace("\\", "/")).name).strip(" .")[:80] or "upload"
        path = folder / digest / (bare if bare.lower().endswith(suffix) else bare + suffix)
    else:
        path = folder / f"{digest}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_suffix(".part")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return path


def upload_name(spec: str | Path) -> str | None:
    """The user's own file name of a dataset uploaded with one (save_upload's name), else None."""
    p = Path(spec)
    try:
        inside = p.parent.parent == paths.uploads()
    except (OSError, ValueError):
        return None
    return p.name if inside and len(p.parent.name) == 16 else None


def as_uploaded(text: str, stored: str | Path, name: str) -> str:
    """A message about an uploaded dataset as its user may see it: the upload's own file name in place of
    the name it is stored under (a content hash, save_upload) and of any server path of the uploads, the
    cache it was unpacked into, or a temporary fallback cache."""
    for where in (paths.cache_root(), paths.uploads(), Path(tempfile.gettempdir())):
        text = re.sub(re.escape(str(where)) + r"[^\s:;,()'\"]*", lambda m: name, text)
    return text.replace(Path(stored).name, name)


def _digests(index: pd.DataFrame) -> list[str]:
    """Each indexed file's content digest (blake2b, 16 bytes), in index order: the fingerprint's, and what
    finds the same file on both sides of a split."""
    out = []
    for path in index["path"]:
        try:
            out.append(hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest())
        except OSError as e:  # unreadable: skipped when decoded; identified by what stops it
            out.append(f"unreadable:{e.errno}")
    return out


def content_digests(ds: Dataset) -> list[str]:
    """Each of the dataset's files' content digests, in index order (computed here for the demo, whose index
    carries none)."""
    return list(ds.digests) if ds.digests else _digests(ds.index)


def _fingerprint(index: pd.DataFrame, root: Path, classes: Sequence[str], digests: Sequence[str]) -> str:
    """Content identity: the relative path, label and bytes of every file. Not file times: a dataset copied,
    unpacked again or provisioned anew (new modification times, same bytes) keeps its runs and caches, and
    a file rewritten in place with other pixels does not. Hashing reads every file once (~0.15 s for the
    81 MB of the 2,115-cell dev folder)."""
    h = hashlib.sha256(("|".join(classes)).encode())
    for path, label, digest in zip(index["path"], index["label"], digests):
        h.update(f"{os.path.relpath(path, root)}\0{label}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def listing(names: Sequence[str], n: int = 5) -> str:
    """'a, b, c, d, e and 7 more': the first n names of a list, in a message."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


STRAY_PREFIX = "?"  # the subject of a file whose name carries none, in a dataset whose other names do


def _stray_names(index: pd.DataFrame) -> list[str]:
    """Where most training file names carry a C-NMC subject id and a few do not, each of those few becomes its
    own subject (STRAY_PREFIX + its name), so one stray file does not make the subject split impossible for
    the whole dataset; a warning names them. Changes index["subject"] in place."""
    pool = index["set"].isin(POOL_SETS).to_numpy()
    stray = pool & (index["subject"] == "").to_numpy()
    if not stray.any() or stray.sum() * 2 > pool.sum():
        return []
    names = [Path(p).name for p in index.loc[stray, "path"]]
    index.loc[stray, "subject"] = [STRAY_PREFIX + n for n in names]
    return [f"{len(names)} file name{'s do' if len(names) != 1 else ' does'} not follow the C-NMC pattern "
            f"UID_<subject>_<image>_<cell>_<class> ({listing(names)}): each is treated as a subject of its own "
            "in subject splits. Rename it after its subject if you know the person, or the split may put cells "
            "of one person on both sides"]


def _test_copies(index: pd.DataFrame, digests: Sequence[str]) -> list[str]:
    """A warning naming held-out test images that are byte-identical copies of training images."""
    d = np.asarray(digests, dtype=object)
    pool = index["set"].isin(POOL_SETS).to_numpy()
    test = index["set"].isin(TEST_SETS).to_numpy() & (index["label"] >= 0).to_numpy()
    seen = {x: p for x, p in zip(d[pool], index["path"][pool]) if not str(x).startswith("unreadable")}
    copies = [f"{Path(p).name} = {Path(seen[x]).name}" for x, p in zip(d[test], index["path"][test]) if x in seen]
    if not copies:
        return []
    return [f"LEAKY test set: {len(copies)} held-out test image{'s are' if len(copies) != 1 else ' is'} the same "
            f"file as a training image ({listing(copies)}): the test score counts images the model trained on. "
            "Remove the copies from one side"]


def _copies_across(ds: Dataset, split: Split) -> Split:
    """The split marked leaky, with a warning naming them, when the same file (same bytes) is on both sides:
    copies in two official folds, or in train/ and val/, put validation images into training."""
    if not ds.digests:
        return split
    d = np.asarray(ds.digests, dtype=object)
    train = {x: i for i, x in zip(split.train, d[split.train]) if not str(x).startswith("unreadable")}
    pairs = [(int(i), train[x]) for i, x in zip(split.val, d[split.val]) if x in train]
    if not pairs:
        return split
    rel = lambda i: os.path.relpath(ds.index["path"].iloc[i], ds.root)  # noqa: E731
    shown = [f"{rel(v)} = {rel(t)}" for v, t in pairs]
    warning = (f"LEAKY: {len(pairs)} validation image{'s are' if len(pairs) != 1 else ' is'} the same file as a "
               f"training image ({listing(shown)}): validation scores images the model trained on. Remove the "
               "copies, or keep them on one side")
    return Split(split.train, split.val, split.method, True, f"{split.description} ({warning})",
                 [*split.warnings, warning])


def cache_folder(cache_dir: str | Path | None) -> Path:
    """The cache folder a caller gave, or the default one."""
    return Path(cache_dir) if cache_dir else paths.cache_root()


_FALLBACKS: dict[Path, Path] = {}  # a cache folder that cannot be written -> the temporary one used instead


def writable(folder: Path) -> Path:
    """folder, made if need be; or, when it cannot be written (a read-only LEUKVIZ_HOME, a file in the way), a
    temporary folder in its place, said once on stderr. Reading a dataset never needs write access: a cache
    is only a cache."""
    folder = Path(folder)
    if folder in _FALLBACKS:
        return _FALLBACKS[folder]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return folder
    except OSError as e:
        tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"leukviz-cache-{os.getuid() if hasattr(os, 'getuid') else 0}" / tag
        fallback.mkdir(parents=True, exist_ok=True)
        _FALLBACKS[folder] = fallback
        print(f"note: cannot write the cache folder {folder} ({e.strerror or e}); using {fallback} instead "
              "(set LEUKVIZ_CACHE to choose another)", file=sys.stderr)
        return fallback


def open_dataset(spec: str | Path = "demo", cache_dir: Path | None = None) -> Dataset:
    """Open 'demo', a C-NMC root, a class-per-folder tree, a train/ [val/] [test/] tree (find_set_folders), or a
    .zip of any of them; index it and fingerprint it."""
    cache_dir = cache_folder(cache_dir)
    name = str(spec)
    skipped: list[tuple[str, str]] = []
    if name == "demo":
        try:
            root = synthetic.ensure_demo(cache_dir / layout.DEMO_CACHE)
        except OSError:  # not built yet, and the cache cannot be written
            root = synthetic.ensure_demo(writable(cache_dir / layout.DEMO_CACHE))
        index = _index_cnmc(root, skipped)
        # Generated content is identified by its generator, not file times (regeneration gives new mtimes).
        fp = hashlib.sha256(f"demo-v{synthetic.DEMO_VERSION}-s0-{len(index)}".encode()).hexdigest()[:16]
        return Dataset(name, root, "demo", CNMC_CLASSES, index, fp, skipped)
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(f"dataset path does not exist: {path}. Give 'demo', a C-NMC folder, "
                        "a folder with one sub-folder per class, or a .zip of either.")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise DataError(f"{path} is a file; a dataset is a folder or a .zip")
        digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
        dest = cache_dir / layout.ZIP_CACHE / digest.hexdigest()[:16]
        if not (dest / ".complete").exists():  # extracted before: read, even from a read-only cache
            dest = writable(dest.parent) / dest.name
            with FileLock(f"{dest}.lock"):  # the app and a training process may open the same zip at once
                if not (dest / ".complete").exists():
                    extract_zip(path, dest)
                    (dest / ".complete").touch()
        entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise DataError(f"{path.name}: the zip holds no files")
        path = entries[0] if len(entries) == 1 and entries[0].is_dir() and find_cnmc_root(dest) is None else dest
    if not path.is_dir():
        raise DataError(f"{path} is not a folder")
    root = find_cnmc_root(path)
    warnings: list[str] = []
    folders = None if root is not None else find_set_folders(path)
    if root is not None:
        index = _index_cnmc(root, skipped)
        kind, classes = "cnmc", CNMC_CLASSES
    elif folders is not None:
        root = path
        index, classes = _index_sets(root, folders, skipped, warnings)
        kind = "splits"
    else:
        root = path
        index, classes = _index_folder(root, skipped)
        kind = "folder"
    train = index[index["set"] == "train"]
    if len(train) == 0:
        raise DataError(f"no training images found in {root}")
    present = sorted(set(train["label"]))
    if len(present) < 2:
        only = classes[present[0]] if present else "none"
        raise DataError(f"{root} has images of one class only ({only}); a classifier needs at least two classes")
    index = index.reset_index(drop=True)
    digests = _digests(index)
    warnings += _stray_names(index) + _test_copies(index, digests)
    return Dataset(name, root, kind, tuple(classes), index, _fingerprint(index, root, classes, digests), skipped,
                   warnings, {role: p.name for role, p in (folders or {}).items()}, digests)


# ---------------------------------------------------------------------------------------------- splits

@dataclass
class Split:
    train: np.ndarray  # row numbers of Dataset.index
    val: np.ndarray
    method: str
    leaky: bool
    description: str
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        out = {"method": self.method, "leaky": self.leaky, "description": self.description,
               "n_train": int(len(self.train)), "n_val": int(len(self.val))}
        if self.warnings:  # only when there are some: the summaries of the other splits stay as they were
            out["warnings"] = list(self.warnings)
        return out


MIN_SUBJECTS_PER_CLASS = 3  # below this a subject split learns, or is judged on, a class from one or two people
MAX_GROUP_FOLDS = 5


def subject_counts(ds: Dataset) -> dict[str, int]:
    """How many distinct subjects each class has among the training images (0 when names carry none)."""
    tr = ds.train_rows
    tr = tr[tr["subject"] != ""]
    return {c: int(tr.loc[tr["label"] == i, "subject"].nunique()) for i, c in enumerate(ds.classes)}


def subject_warnings(ds: Dataset) -> list[str]:
    """Plain warnings when a class has too few subjects for an honest subject split, and what to do."""
    if not ds.has_subjects:
        return []
    out = []
    for cls, n in subject_counts(ds).items():
        if n >= MIN_SUBJECTS_PER_CLASS:
            continue
        if n < 2:
            effect = ("a subject split is impossible: that person would have to be on both sides, so only "
                      "the leaky image split can run")
        else:
            effect = (f"a subject split trains on {n - 1} and validates on the other, so the model learns "
                      f"'{cls}' from one person and its score says how it does on one other person")
        out.append(f"class '{cls}' has {n} subject{'s' if n != 1 else ''} (fewer than {MIN_SUBJECTS_PER_CLASS}): "
                   f"{effect}. Add subjects of that class if you can; meanwhile judge models by the grouped "
                   f"cross-validation ('study subjects', which swaps the subjects between folds and repeats "
                   f"seeds) rather than by one split")
    return out


def group_folds(ds: Dataset, n_folds: int = 0) -> list[np.ndarray]:
    """Subject-grouped, class-stratified folds of the training rows: each fold's validation rows are whole
    subjects, and every fold has both (all) classes on both sides. n_folds=0: as many as the class with the
    fewest subjects allows, at most MAX_GROUP_FOLDS. The same folds for every seed (so runs that differ
    only in seed or backbone are scored on the same people). Returns each fold's validation row numbers."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not ds.has_subjects:
        raise DataError("grouped folds need subject ids in the file names (C-NMC style "
                        "UID_<subject>_<image>_<cell>_<class>); use split 'image' (leaky) otherwise")
    counts = subject_counts(ds)
    fewest = min(counts.values())
    if fewest < 2:
        cls = min(counts, key=counts.get)
        raise DataError(f"grouped folds impossible: class {cls!r} has {fewest} subject(s); each fold needs "
                        "one of its subjects on each side")
    k = n_folds or min(MAX_GROUP_FOLDS, fewest)
    if k > fewest:
        raise DataError(f"{k} grouped folds need at least {k} subjects in every class; the fewest is {fewest} "
                        f"({', '.join(f'{c}: {n}' for c, n in counts.items())}); use at most {fewest} folds")
    tr = ds.train_rows
    rows, y, groups = tr.index.to_numpy(), tr["label"].to_numpy(), tr["subject"].to_numpy()
    n_classes = len(set(y))
    for state in range(50):  # the splitter balances counts; a fold with one class on a side is retried
        folds = [rows[val] for _, val in
                 StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=state).split(rows, y, groups)]
        good = all(len(set(ds.index.loc[v, "label"])) == n_classes
                   and len(set(ds.index.loc[np.setdiff1d(rows, v), "label"])) == n_classes for v in folds)
        if good:
            return [np.sort(v) for v in folds]
    raise DataError(f"could not make {k} grouped folds with every class on both sides; use fewer folds")


def given_split(ds: Dataset) -> Split:
    """Split "given": train on set "train", validate on the dataset's own validation folder (set "val").
    Leaky, and said so, when file names carry subject ids and a subject is on both sides."""
    idx = ds.index
    val = np.flatnonzero((idx["set"] == "val").to_numpy())
    if len(val) == 0 and "val" in ds.folders:
        raise DataError(f"split 'given' validates on {ds.folders['val']}/, and it holds no images in class folders "
                        f"(one sub-folder per class, as in train/); fill it, or use split "
                        f"{'subject' if ds.has_subjects else 'image'}")
    if len(val) == 0:
        raise DataError(f"split 'given' validates on the dataset's own validation folder (val/, valid/ or "
                        f"validation/ beside train/), and {ds.name} has none; use split "
                        f"{'subject' if ds.has_subjects else 'image'} instead")
    tr = np.flatnonzero((idx["set"] == "train").to_numpy())
    val_labels = set(idx["label"].iloc[val])
    missing = [ds.classes[i] for i in sorted(set(idx["label"].iloc[tr])) if i not in val_labels]
    folder = ds.folders.get("val", "val")
    if missing:
        raise DataError(f"the validation folder {folder}/ has no images of class {', '.join(missing)}: validation "
                        "needs every class (sensitivity and specificity mean nothing otherwise). Add them, or use "
                        "split subject or image, which pool train/ and the validation folder")
    desc = (f"given: the dataset's own validation folder {folder}/ ({len(val)} images); training on "
            f"{ds.folders.get('train', 'train')}/")
    shared = sorted((set(idx["subject"].iloc[tr]) & set(idx["subject"].iloc[val])) - {""}, key=str)
    warnings = []
    if shared:
        shown = ", ".join(map(str, shared[:10])) + (", ..." if len(shared) > 10 else "")
        warnings.append(f"LEAKY: {len(shared)} subject{'s' if len(shared) != 1 else ''} ({shown}) on both sides "
                        "of the given split: cells of one person in training and validation inflate the scores. "
                        "Split 'subject' keeps people apart")
        desc += f" ({warnings[0]})"
    return Split(tr.astype(np.int64), val.astype(np.int64), "given", bool(shared), desc, warnings)


def default_split(ds: Dataset) -> str:
    """The split a run uses unless told otherwise: "given" when the dataset has its own validation folder;
    else "subject" where file names carry subject ids (at least two per class); else "image", the only one
    possible without them (labelled leaky)."""
    if ds.has_val:
        return "given"
    if ds.has_subjects and min(subject_counts(ds).values()) >= 2:
        return "subject"
    return "image"


SPLIT_METHODS = ("given", "subject", "groups", "folds", "image")  # in the order a page offers them


def split_options(ds: Dataset) -> dict[str, str | None]:
    """Each split method and why this dataset cannot make it (None: it can), so a page offers only what can
    run: a given validation folder it lacks, official folds it does not have, a subject split without
    subject ids or with a class of one person."""
    if ds.fingerprint in _SPLIT_OPTIONS:
        return dict(_SPLIT_OPTIONS[ds.fingerprint])
    out: dict[str, str | None] = {}
    for method in SPLIT_METHODS:
        if method == "given" and not ds.has_val:
            out[method] = "the dataset has no validation folder of its own (val/ beside train/)"
            continue
        if method == "folds" and not (ds.train_rows["fold"] >= 0).any():
            out[method] = "the dataset has no official folds (C-NMC's training_data/fold_0, fold_1, fold_2)"
            continue
        try:
            _make_split(ds, method, 0.2, 0, 0, 0)
        except DataError as e:
            out[method] = str(e)
        else:
            out[method] = None
    _SPLIT_OPTIONS[ds.fingerprint] = out
    return dict(out)


_SPLIT_OPTIONS: dict[str, dict[str, str | None]] = {}  # by dataset fingerprint: the same content, the same answer


def split_problems(ds: Dataset, sp: Split) -> list[str]:
    """What makes a split's scores unreliable, in plain words: a side without some class, or (where file
    names carry subjects) a side with fewer than 2 subjects of a class, whose score then speaks for one person."""
    out = []
    for side, rows in (("validation", sp.val), ("training", sp.train)):
        part = ds.index.loc[rows]
        counts = {c: int((part["label"] == i).sum()) for i, c in enumerate(ds.classes)}
        missing = [c for c, n in counts.items() if n == 0]
        if missing:
            held = ", ".join(f"{c} {n}" for c, n in counts.items())
            names = "', '".join(missing)
            out.append(f"the {side} set has no '{names}' cells ({held}): "
                       + ("its scores cannot show whether the model tells the classes apart"
                          if side == "validation" else "the model cannot learn that class"))
            continue
        if ds.has_subjects and sp.method != "image":
            for i, c in enumerate(ds.classes):
                n = part.loc[part["label"] == i, "subject"].nunique()
                if n < 2:
                    effect = "score speaks for one person" if side == "validation" else "is learnt from one person"
                    out.append(f"the {side} set holds '{c}' cells of {n} subject only: its '{c}' {effect}")
    return out


def make_split(ds: Dataset, method: str = "subject", val_fraction: float = 0.2, seed: int = 0,
               val_fold: int = 0, n_folds: int = 0) -> Split:
    """Split the training rows: by subject (default), subject-grouped cross-validation folds, by official
    fold, by image (leaky), or as given (the dataset's own validation folder, given_split). All but
    "given" draw from train_rows: set "train" and a given validation folder pooled. Leaky, and said so with
    the files named, when one file is on both sides (_copies_across)."""
    return _copies_across(ds, _make_split(ds, method, val_fraction, seed, val_fold, n_folds))


def split_of(ds: Dataset, cfg: Any) -> Split:
    """The split a run configuration (config.RunConfig) makes of ds: what training uses and pages show."""
    return make_split(ds, cfg.split, cfg.val_fraction, cfg.split_rng_seed, cfg.val_fold, cfg.n_folds)


def _make_split(ds: Dataset, method: str, val_fraction: float, seed: int, val_fold: int, n_folds: int) -> Split:
    if method == "given":
        return given_split(ds)
    train = ds.train_rows
    rng = np.random.default_rng(seed)
    if method == "groups":
        folds = group_folds(ds, n_folds)
        if not 0 <= val_fold < len(folds):
            raise DataError(f"validation fold {val_fold} does not exist: {len(folds)} grouped folds, "
                            f"numbered 0 to {len(folds) - 1}")
        val = folds[val_fold]
        tr = np.setdiff1d(train.index.to_numpy(), val)
        held = sorted(set(train.loc[val, "subject"]))
        desc = (f"subject-grouped fold {val_fold} of {len(folds)}: subjects {', '.join(map(str, held))} "
                f"held out for validation")
        return Split(tr.astype(np.int64), val.astype(np.int64), "groups", False, desc)
    if method == "subject":
        if not ds.has_subjects:
            unknown = [Path(p).name for p in train.loc[train["subject"] == "", "path"]]
            folds = " split 'folds' (the official folds) or" if (train["fold"] >= 0).any() else ""
            raise DataError(f"subject split impossible: {len(unknown)} images have no subject id (file names are not "
                            f"C-NMC style UID_<subject>_<image>_<cell>_<class>: {listing(unknown, 3)}). Use{folds} split 'image' (leaky: "
                            "cells of one person on both sides) or name files by subject.")
        val_rows: list[int] = []
        for label in sorted(set(train["label"])):
            part = train[train["label"] == label]
            subjects = sorted(set(part["subject"]))
            if len(subjects) < 2:
                raise DataError(f"subject split impossible: class {ds.classes[label]!r} has one subject only "
                                f"({subjects[0]}); use split 'image' (leaky) or add subjects")
            rng.shuffle(subjects)
            counts = part.groupby("subject").size()
            # Take whole subjects in a seeded order while they fit ~val_fraction of the class; a subject
            # that would overshoot by half is passed over. One subject per class always stays in training.
            target, taken, chosen = val_fraction * len(part), 0, []
            for s in subjects:
                if taken >= target or len(chosen) == len(subjects) - 1:
                    break
                if taken + counts[s] <= 1.5 * target:
                    chosen.append(s)
                    taken += counts[s]
            if not chosen:
                chosen = [min(subjects, key=lambda s: counts[s])]
            for s in chosen:
                val_rows.extend(part.index[part["subject"] == s])
        val = np.array(sorted(val_rows), dtype=np.int64)
        tr = np.array(sorted(set(train.index) - set(val_rows)), dtype=np.int64)
        n_val_subj = train.loc[val, "subject"].nunique()
        desc = f"by subject: {n_val_subj} of {train['subject'].nunique()} subjects held out for validation"
        return Split(tr, val, "subject", False, desc)
    if method == "folds":
        folds = sorted(set(train["fold"]) - {-1})
        if val_fold not in folds:
            raise DataError(f"fold split needs official folds; validation fold {val_fold} not in {folds or 'none'}"
                            " (only the C-NMC layout and the demo have folds)")
        val = np.array(train.index[train["fold"] == val_fold], dtype=np.int64)
        tr = np.array(train.index[train["fold"] != val_fold], dtype=np.int64)
        if len(tr) == 0:
            raise DataError("fold split leaves no training images")
        return Split(tr, val, "folds", False, f"official folds: fold {val_fold} for validation")
    if method == "image":
        val_rows = []
        for label in sorted(set(train["label"])):
            rows = np.array(train.index[train["label"] == label])
            rng.shuffle(rows)
            val_rows.extend(rows[: max(1, int(round(val_fraction * len(rows))))])
        val = np.array(sorted(val_rows), dtype=np.int64)
        tr = np.array(sorted(set(train.index) - set(val_rows)), dtype=np.int64)
        return Split(tr, val, "image", True,
                     "random by image (LEAKY: cells of one person on both sides; inflates scores)")
    raise DataError(f"unknown split {method!r}; choose one of: subject, groups, folds, image, given")


# ---------------------------------------------------------------------------------------------- cache

class CacheInterrupted(Exception):
    """The image cache's build was asked to stop (Ctrl-C, a stop request); nothing of it is kept."""


def _decode_into(arr: np.ndarray, items: list[tuple[int, str]], size: int, crop: bool, window: float | None,
                 halt: Callable[[], bool]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Decode items into arr; returns (failed (row, reason), digests (row, content hash)). Returns early once
    halt is set (the build is being stopped)."""
    failed, digests = [], []
    for i, path in items:
        if halt():
            break
        try:
            blob = Path(path).read_bytes()
        except OSError as e:
            failed.append((i, f"{Path(path).name}: cannot be read ({e.strerror or e.__class__.__name__})"))
            continue
        digests.append((i, hashlib.sha256(blob).hexdigest()))
        buf = io.BytesIO(blob)
        buf.name = path
        try:
            arr[i] = load_image(buf, size, crop, window)
        except ImageError as e:
            failed.append((i, str(e)))
    return failed, digests


def _conflicting_duplicates(ds: Dataset, digests: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Rows whose exact file content appears under two different labels.

    All copies are dropped, not one kept: nothing says which label is right, and a copy on each side of
    the split would let the model be scored on an image it trained on.
    """
    labels = ds.index["label"].to_numpy()
    names = ds.index["path"].map(lambda p: Path(p).name).to_numpy()
    by_hash: dict[str, list[int]] = {}
    for i, digest in digests:
        if labels[i] >= 0:
            by_hash.setdefault(digest, []).append(i)
    out = []
    for rows in by_hash.values():
        if len({int(labels[r]) for r in rows}) > 1:
            where = ", ".join(f"{names[r]} ({ds.classes[labels[r]]})" for r in rows)
            out.extend((r, f"same image in two classes: {where}; all copies dropped") for r in rows)
    return out


def _add_skipped(ds: Dataset, rows: list[tuple[int, str]]) -> None:
    known = set(ds.skipped)
    for i, reason in rows:
        item = (str(ds.index["path"].iloc[i]), reason)
        if item not in known:
            ds.skipped.append(item)
            known.add(item)


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate the cache file's blocks now: on a full disk this is a clear error, whereas writing into a
    sparse memory map would kill the process with SIGBUS half-way."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"not enough disk space for the image cache: {nbytes / 1e9:.2f} GB needed in "
                            f"{path.parent} ({e.strerror})") from None
    finally:
        os.close(fd)


def _decode_all(arr: np.ndarray, paths: list[tuple[int, str]], size: int, crop: bool, window: float | None,
                workers: int, progress: Callable[[int, int], None] | None,
                should_stop: Callable[[], bool] | None) -> tuple[list, list]:
    """Decode every path into arr on threads. Ctrl-C or should_stop() stops it within an image per thread
    (CacheInterrupted, or the KeyboardInterrupt itself), not when every queued chunk has run."""
    n = len(paths)
    chunk = max(16, min(256, n // (workers * 4) + 1))
    jobs = [paths[i:i + chunk] for i in range(0, n, chunk)]
    failed: list[tuple[int, str]] = []
    digests: list[tuple[int, str]] = []
    done, halted = 0, threading.Event()
    halt = lambda: halted.is_set() or bool(should_stop and should_stop())  # noqa: E731
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for (bad, dig), job in zip(pool.map(lambda j: _decode_into(arr, j, size, crop, window, halt), jobs), jobs):
            failed.extend(bad)
            digests.extend(dig)
            done += len(job)
            if progress:
                progress(done, n)
            if should_stop is not None and should_stop():
                raise CacheInterrupted(f"stopped while building the image cache ({done} of {n} images decoded)")
    finally:
        halted.set()  # a no-op when all is done; otherwise the threads stop at their next image
        pool.shutdown(wait=True, cancel_futures=True)
    return failed, digests


def _cached_images(ds: Dataset, stem: Path, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A complete image cache at stem (its images, ok and reasons added to ds.skipped), or None."""
    data_path, ok_path, why_path = Path(f"{stem}.npy"), Path(f"{stem}.ok.npy"), Path(f"{stem}.skipped.json")
    n = len(ds.index)
    if not (data_path.exists() and ok_path.exists() and why_path.exists()):
        return None
    try:  # a damaged cache (a crash, a full disk) is rebuilt, never fatal
        ok, why = np.load(ok_path), json.loads(why_path.read_text())
        images = np.load(data_path, mmap_mode="r")
        if len(ok) == n and images.shape == (n, size, size, 3):
            _add_skipped(ds, [(int(i), str(r)) for i, r in why])
            return images, ok
    except (OSError, ValueError, TypeError):
        pass
    return None


def image_cache(ds: Dataset, size: int, crop: bool, cache_dir: Path | None = None, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None, window: float | None = CELL_WINDOW,
                should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every indexed image once into a memory-mapped uint8 array (N, size, size, 3).

    Returns (images, ok): ok[i] is False for files that could not be decoded, and for the same image
    found under two labels (see _conflicting_duplicates); each is skipped and its reason added to
    ds.skipped, also when the cache is reused. Keyed by the dataset fingerprint, so a changed dataset
    never reuses a stale cache. Threads, not processes: Pillow releases the GIL while decoding and
    resizing, and forking a process that runs torch can deadlock.
    """
    folder = cache_folder(cache_dir) / layout.IMAGE_CACHE
    how = ("cell" if window is None else f"window{round(window * 1000)}") if crop else "full"
    name = f"{ds.fingerprint}-{size}-{how}"
    cached = _cached_images(ds, folder / name, size)  # a read-only cache is still read
    if cached is not None:
        return cached
    stem = writable(folder) / name
    if stem.parent != folder and (cached := _cached_images(ds, stem, size)) is not None:
        return cached
    data_path, ok_path, why_path = Path(f"{stem}.npy"), Path(f"{stem}.ok.npy"), Path(f"{stem}.skipped.json")
    n = len(ds.index)
    tmp = Path(f"{stem}.{os.getpid()}.tmp.npy")
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        _reserve(tmp, tmp.stat().st_size)
        failed, digests = _decode_all(arr, list(enumerate(ds.index["path"])), size, crop, window,
                                      workers or min(os.cpu_count() or 1, 4), progress, should_stop)
        arr.flush()
        del arr
        failed.extend(_conflicting_duplicates(ds, digests))
        ok = np.ones(n, dtype=bool)
        for i, _ in failed:
            ok[i] = False
        _add_skipped(ds, failed)
        buf = io.BytesIO()
        np.save(buf, ok)
        # ok and the reasons first, the images last: the images file is what marks the cache complete
        atomic_write_bytes(ok_path, buf.getvalue())
        atomic_write_bytes(why_path, json.dumps(sorted(failed)).encode())
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(data_path, mmap_mode="r"), ok


def check_decoded(ds: Dataset, split: Split, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The split's rows that decoded (ok), after the image cache dropped unreadable files and cross-class
    copies; a DataError when a side has lost a class, naming the class and why its files were dropped
    (the count before decoding cannot see a folder of empty files, or one class linked to the other)."""
    labels = ds.index["label"].to_numpy()
    why = {p: r for p, r in ds.skipped}
    out = []
    for side, rows in (("training", split.train), ("validation", split.val)):
        kept = rows[ok[rows]]
        for c in sorted(set(labels[rows]) - set(labels[kept])):
            lost = rows[labels[rows] == c]
            reasons = [why.get(str(ds.index["path"].iloc[i]), "not readable") for i in lost[:3]]
            raise DataError(f"class {ds.classes[c]!r} has no usable {side} images: all {len(lost)} of them were "
                            f"dropped ({'; '.join(reasons)}{'; ...' if len(lost) > 3 else ''}). A classifier needs "
                            "images of every class on both sides; fix or replace those files")
        out.append(kept)
    if len(out[0]) == 0 or len(out[1]) == 0:
        raise DataError("no readable images on one side of the split")
    return out[0], out[1]


def inspect(ds: Dataset) -> dict:
    """Counts per class, fold, subject and set, for `data inspect` and the Data page. per_set: the labelled
    images of each set per class (train, val, test, prelim); test: the held-out labelled test rows
    (Dataset.test_rows); default_split: the split a run uses unless told otherwise."""
    idx = ds.index
    tr = ds.train_rows
    cls = lambda s: [ds.classes[i] if i >= 0 else "unlabeled" for i in s]  # noqa: E731
    out = {
        "name": ds.name, "root": str(ds.root), "kind": ds.kind, "classes": list(ds.classes),
        "fingerprint": ds.fingerprint, "n_images": int(len(idx)), "n_train": int(len(tr)),
        "per_class": {c: int((tr["label"] == i).sum()) for i, c in enumerate(ds.classes)},
        "per_fold": {}, "per_subject": {}, "sets": {k: int(v) for k, v in idx["set"].value_counts().items()},
        "skipped": len(ds.skipped), "subject_split_possible": ds.has_subjects,
        "subjects_per_class": subject_counts(ds) if ds.has_subjects else {},
        "warnings": ds.warnings + subject_warnings(ds), "default_split": default_split(ds),
        "per_set": {str(s): {c: int((part["label"] == i).sum()) for i, c in enumerate(ds.classes)}
                    for s, part in idx[idx["label"] >= 0].groupby("set", sort=False)},
    }
    for fold, part in tr[tr["fold"] >= 0].groupby("fold"):
        out["per_fold"][str(fold)] = {c: int((part["label"] == i).sum()) for i, c in enumerate(ds.classes)}
    for subj, part in tr[tr["subject"] != ""].groupby("subject"):
        out["per_subject"][str(subj)] = {"class": cls(part["label"].iloc[:1])[0], "n": int(len(part))}
    prelim = idx[idx["set"] == "prelim"]
    out["prelim"] = {"n": int(len(prelim)), "per_class": {c: int((prelim["label"] == i).sum())
                                                         for i, c in enumerate(ds.classes)}}
    out["final_unlabeled"] = int((idx["set"] == "final").sum())
    test = ds.test_rows
    out["test"] = {"n": int(len(test)), "sets": sorted(set(test["set"])),
                   "per_class": {c: int((test["label"] == i).sum()) for i, c in enumerate(ds.classes)}}
    return out
