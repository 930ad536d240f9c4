"""The dataset itself: open_dataset (demo, C-NMC as downloaded, class-per-folder trees, train/val/test trees,
zips), its content digests and fingerprint, the leakage and naming checks made when it is opened, inspect.

It is also the dataset layer's public surface: callers outside the layer use `data.X` for what lives in the
modules below (decode, layouts, archives, splits, imagecache, cachedir, dataset), re-imported here; __all__ (at
the end) is that surface, and tests/test_structure.py holds the callers to it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image  # noqa: F401 - re-exported, as below

# The imports marked noqa F401 are re-exports: data is the dataset layer's public surface, and callers use
# data.X for what now lives in the modules below it.
from leukviz.core import filenames
from leukviz.datasets import synthetic
from leukviz.datasets.archives import (  # noqa: F401
    as_uploaded,
    extract_zip,
    save_upload,
    shown_upload_name,
    upload_name,
    upload_refusal,
)
from leukviz.datasets.cachedir import cache_folder, writable  # noqa: F401
from leukviz.datasets.cnmc import CNMC_CLASSES
from leukviz.datasets.dataset import POOL_SETS, STRAY_PREFIX, TEST_SETS, DataError, Dataset, listing  # noqa: F401
from leukviz.datasets.decode import (  # noqa: F401
    CELL_WINDOW,
    IMAGE_EXTS,
    MAX_PIXELS,
    ImageError,
    cell_box,
    crop_to_cell,
    decode_rgb,
    fit_image,
    is_image,
    load_image,
)
from leukviz.datasets.imagecache import CacheInterrupted, check_decoded, image_cache  # noqa: F401
from leukviz.datasets.layouts import (  # noqa: F401
    SET_FOLDERS,
    _index_cnmc,
    _index_folder,
    _index_sets,
    class_name,
    find_cnmc_root,
    find_set_folders,
)
from leukviz.datasets.splits import (  # noqa: F401
    MIN_SUBJECTS_PER_CLASS,
    SPLIT_METHODS,
    Split,
    default_split,
    few_subjects,
    few_subjects_effect,
    given_split,
    group_folds,
    make_split,
    split_of,
    split_options,
    split_problems,
    subject_counts,
    subject_warnings,
    usable_split,
)


def skipped_text(skipped: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """Skipped files counted by reason, with a few names each: '3 files: 3 directly in val/, not in a class
    folder (v0.png, v1.png, v2.png)'."""
    by_reason: dict[str, list[str]] = {}
    for path, why in skipped:
        by_reason.setdefault(why, []).append(Path(path).name)
    parts = [f"{len(names)} {why} ({', '.join(names[:shown])}{', …' if len(names) > shown else ''})"
             for why, names in by_reason.items()]
    return f"{len(skipped)} file{'s' if len(skipped) != 1 else ''}: " + "; ".join(parts)


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
    a file rewritten in place with other pixels does not. Hashing reads every file once (its cost:
    docs/BENCHMARKS.md, "Numbers behind the code")."""
    h = hashlib.sha256(("|".join(classes)).encode())
    for path, label, digest in zip(index["path"], index["label"], digests):
        h.update(f"{os.path.relpath(path, root)}\0{label}\0{digest}\n".encode())
    return h.hexdigest()[:16]




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


def _one_class_text(root: Path, only: str) -> str:
    """The one-class refusal, saying what the folder looks like when that explains it: a set folder (test/)
    without train/, or a chain of single folders (d/d/d/…) above the class folders."""
    if only.lower() in SET_FOLDERS:
        return (f"{root} holds {only}/ but no train/: a train/ val/ test/ tree needs train/ with one sub-folder per "
                "class (train/all/, train/hem/)")
    depth, inner = 0, Path(root) / only
    while inner.is_dir() and depth < 1000 and (subs := [p for p in inner.iterdir() if p.is_dir()]) and len(subs) == 1 \
            and not any(p.is_file() for p in inner.iterdir()):
        inner, depth = subs[0], depth + 1
    if depth >= 2:
        return (f"{root} holds only {only}/, a chain of {depth + 1} folders each holding one folder: give the folder "
                "that holds the class folders (e.g. all/ and hem/), not one above it")
    return f"{root} has images of one class only ({only}); a classifier needs at least two classes"


def open_dataset(spec: str | Path = "demo", cache_dir: Path | None = None) -> Dataset:
    """Open 'demo', a C-NMC root, a class-per-folder tree, a train/ [val/] [test/] tree (find_set_folders), or a
    .zip of any of them; index it and fingerprint it."""
    cache_dir = cache_folder(cache_dir)
    name = str(spec)
    skipped: list[tuple[str, str]] = []
    if name == "demo":
        try:
            root = synthetic.ensure_demo(cache_dir / filenames.DEMO_CACHE)
        except OSError:  # not built yet, and the cache cannot be written
            root = synthetic.ensure_demo(writable(cache_dir / filenames.DEMO_CACHE))
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
        dest = cache_dir / filenames.ZIP_CACHE / digest.hexdigest()[:16]
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
        raise DataError(_one_class_text(root, only))
    index = index.reset_index(drop=True)
    digests = _digests(index)
    warnings += _stray_names(index) + _test_copies(index, digests)
    return Dataset(name, root, kind, tuple(classes), index, _fingerprint(index, root, classes, digests), skipped,
                   warnings, {role: p.name for role, p in (folders or {}).items()}, digests)


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


# The dataset layer's public surface: what the layers above use (tests/test_structure.py checks it).
__all__ = ["CELL_WINDOW", "MIN_SUBJECTS_PER_CLASS", "POOL_SETS", "SPLIT_METHODS", "CacheInterrupted", "DataError", "Dataset", "Image",
           "ImageError", "Split", "as_uploaded", "cache_folder", "cell_box", "check_decoded", "content_digests",
           "crop_to_cell", "decode_rgb", "default_split", "extract_zip", "few_subjects", "few_subjects_effect",
           "find_cnmc_root", "fit_image",
           "group_folds", "image_cache", "inspect", "is_image", "listing", "load_image", "make_split", "open_dataset",
           "save_upload", "skipped_text", "split_of", "split_options", "split_problems", "subject_warnings",
           "upload_name", "upload_refusal", "usable_split"]
