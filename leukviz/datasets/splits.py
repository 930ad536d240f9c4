"""Splits of a dataset's training rows (by subject, subject-grouped folds, official folds, by image, as given),
which splits a dataset can make and why not, what makes a split's scores unreliable, and the same file on
both sides of a split (_copies_across)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukviz.datasets.dataset import STRAY_PREFIX, DataError, Dataset, listing


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


def few_subjects(ds: Dataset) -> dict[str, int]:
    """The classes with fewer than MIN_SUBJECTS_PER_CLASS subjects (where file names carry subjects), and how
    many each has: a subject split then learns, or is judged on, that class from one or two people."""
    if not ds.has_subjects:
        return {}
    return {c: n for c, n in subject_counts(ds).items() if n < MIN_SUBJECTS_PER_CLASS}


def few_subjects_effect(cls: str, n: int) -> str:
    """What n subjects of class cls do to a subject split, in words."""
    if n < 2:
        return ("a subject split is impossible: that person would have to be on both sides, so only the leaky "
                "image split can run")
    return (f"a subject split trains on {n - 1} and validates on the other, so the model learns '{cls}' from "
            f"{'one person' if n == 2 else f'{n - 1} people'} and its score says how it does on one other person")


def subject_warnings(ds: Dataset) -> list[str]:
    """Plain warnings when a class has too few subjects for an honest subject split, and what to do."""
    return [f"class '{cls}' has {n} subject{'s' if n != 1 else ''} (fewer than {MIN_SUBJECTS_PER_CLASS}): "
            f"{few_subjects_effect(cls, n)}. Judge models over subject-grouped folds (split 'groups', which "
            f"validates each subject in turn; 'study subjects' also repeats seeds) rather than by one split, and "
            f"add subjects of that class if you can" for cls, n in few_subjects(ds).items()]


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
    """The split a run uses unless told otherwise: "given" when the dataset has its own validation folder and
    it can be used (every class in it); else "subject" where file names carry subject ids (at least two per
    class); else the first split this dataset can make (split_options), "image" (leaky) when none can."""
    options = split_options(ds)
    if ds.has_val and options.get("given") is None:
        return "given"
    if ds.has_subjects and min(subject_counts(ds).values()) >= 2 and options.get("subject") is None:
        return "subject"
    return next((m for m in ("image", "groups", "folds") if options.get(m) is None), "image")


def usable_split(ds: Dataset, wanted: str | None) -> tuple[str | None, str | None]:
    """(the split to use, why the wanted one cannot be made): wanted itself with None when this dataset can
    make it; otherwise default_split with the reason (split_options'). (None, reason) when no split at all
    can be made (the dataset cannot be trained on)."""
    options = split_options(ds)
    if wanted is not None and options.get(wanted, "unknown") is None:
        return wanted, None
    why = options.get(wanted) if wanted in options else (f"unknown split {wanted!r}" if wanted else None)
    fallback = default_split(ds)
    if options.get(fallback) is not None:
        reasons = "; ".join(f"{m}: {r}" for m, r in options.items())
        return None, f"no split can be made of this dataset ({reasons})"
    return fallback, why


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
            # Stray files (a subject of their own, _stray_names) never make up the validation set while the
            # class has two real subjects: four one-image strays were the whole validation set of a class.
            real = [s for s in subjects if not str(s).startswith(STRAY_PREFIX)]
            subjects = real if len(real) >= 2 and len(real) < len(subjects) else subjects
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
