"""Readers of the three dataset layouts: C-NMC as downloaded (training_data/fold_*, the labelled preliminary
and the unlabelled final test sets), one sub-folder per class, and train/ [val/] [test/] trees."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from leukviz.datasets import cnmc
from leukviz.datasets.cnmc import CNMC_CLASSES, parse_cnmc_name
from leukviz.datasets.dataset import DataError
from leukviz.datasets.decode import _is_image

# The folder names of a train/val/test tree (ImageFolder, Keras, fastai), compared in lower case.
SET_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def find_cnmc_root(path: Path) -> Path | None:
    for cand in (path, path / cnmc.ROOT, *sorted(p for p in path.iterdir() if p.is_dir())):
        if (cand / cnmc.TRAINING).is_dir():
            return cand
    return None


def _index_cnmc(root: Path, skipped: list) -> pd.DataFrame:
    rows = []
    for fold_dir in sorted((root / cnmc.TRAINING).glob(cnmc.FOLD_GLOB)):
        fold = cnmc.parse_fold(fold_dir.name)
        if not fold_dir.is_dir():
            continue
        if fold is None:  # named, never dropped in silence (nor fold_-1 trained as a fold)
            skipped.append((str(fold_dir), "not a fold folder (fold_0, fold_1, …): not read"))
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
                if _name_disagrees(parsed, class_name(cls_dir.name), skipped, f):
                    continue
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
        for rec in _one_row_per_file(records, labels.name, skipped):
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


def _one_row_per_file(records: list[dict], source: str, skipped: list) -> list[dict]:
    """The labels CSV's rows, one per file: a file listed twice with one label is counted once (its extra
    rows noted), and one listed with two labels is left out, every row of it named (which label is right?)."""
    by_name: dict[str, list[dict]] = {}
    for rec in records:
        by_name.setdefault(str(rec.get(cnmc.LABEL_FILE) or ""), []).append(rec)
    out = []
    for fname, recs in by_name.items():
        labels = sorted({str(r.get(cnmc.LABEL_VALUE) or "").strip() for r in recs})
        if len(labels) > 1:
            skipped.append((fname, f"{source}: listed {len(recs)} times with different labels ({', '.join(labels)})"))
            continue
        if len(recs) > 1:
            skipped.append((fname, f"{source}: listed {len(recs)} times with one label: counted once"))
        out.append(recs[0])
    return out


def _name_disagrees(parsed: tuple | None, folder_class: str, skipped: list, f: Path) -> bool:
    """Whether a C-NMC file name names another C-NMC class than its class folder (hem/UID_77_1_1_all.png):
    noted and left out, since nothing tells which is right."""
    if parsed and parsed[3] in CNMC_CLASSES and folder_class in CNMC_CLASSES and parsed[3] != folder_class:
        skipped.append((str(f), f"its name says {parsed[3]}, its folder {folder_class}: which is it? left out"))
        return True
    return False


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
            if _name_disagrees(parsed, class_name(d.name), skipped, f):
                continue
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
    loose: dict[str, int] = {}  # files lying directly in a set folder, not in a class folder
    for role in ("train", "val", "test"):
        if role not in folders:
            continue
        top = folders[role]
        files = [f for f in sorted(top.iterdir()) if f.is_file() and not f.name.startswith(".")]
        skipped.extend((str(f), f"directly in {top.name}/, not in a class folder") for f in files)
        loose[role] = len(files)
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
            where = f" ({loose[role]} file(s) lie directly in it, skipped)" if loose[role] else ""
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
