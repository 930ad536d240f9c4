"""What the Data page decides, without Streamlit: the split it offers and falls back to (with why), each split
fact said once (the few-subjects fact per class, the LEAKY sentence), subjects in number order, and the
training size its preview uses (the Train page's, or its default there)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from leukviz.datasets import data
from leukviz.runstore import names


def subject_key(subject: str) -> tuple:
    """Natural order: '2' < '16' < '23' < 'H10' < 'H14' (numbers as numbers, then the rest by their parts)."""
    parts = re.split(r"(\d+)", str(subject))
    return (not str(subject).isdigit(), [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p])


def subjects_frame(per_subject: dict[str, dict]) -> pd.DataFrame:
    """data.inspect's per-subject counts as the page's table, subjects in natural order (every one, scrollable)."""
    order = sorted(per_subject, key=subject_key)
    return pd.DataFrame([per_subject[s] for s in order], index=pd.Index(order, name="subject"))


@dataclass
class SplitChoice:
    """The splits the page offers and the one selected; note: why the wanted one is not (None when it is)."""

    choices: list[str]  # the methods this dataset can make, in data.SPLIT_METHODS' order
    chosen: str | None  # None: no split can be made of this dataset
    note: str | None = None
    impossible: dict[str, str] = field(default_factory=dict)  # method -> why not

    @property
    def impossible_text(self) -> str:
        return " · ".join(f"{names.SPLIT_CHOICE[k]} ({why})" for k, why in self.impossible.items())


def split_choice(ds: data.Dataset, wanted: str | None) -> SplitChoice:
    """What the Data page offers for ds when the user (or the URL, or a previous dataset) wanted `wanted`:
    the split if ds can make it, else the dataset's default with the reason (data.usable_split)."""
    options = data.split_options(ds)
    choices = [k for k in data.SPLIT_METHODS if options.get(k) is None]
    impossible = {k: why for k, why in options.items() if why is not None}
    chosen, why = data.usable_split(ds, wanted)
    note = None
    if chosen is None:
        note = "No validation split can be made of this dataset, so it cannot be trained on: " + str(why)
    elif why:
        note = (f"{names.SPLIT_CHOICE.get(wanted, wanted)} is not possible on this dataset ({why}), so "
                f"{names.SPLIT_CHOICE[chosen]} is used instead.")
    return SplitChoice(choices, chosen, note, impossible)


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def few_subjects_messages(ds: data.Dataset, where: str = "below") -> list[str]:
    """One warning per class with too few subjects: the fact, its effect on a subject split, and what to do,
    in-app first (Subject-grouped folds, when this dataset can make them; where: 'below' on the Data page,
    'on the Data page' elsewhere)."""
    groups_ok = data.split_options(ds).get("groups") is None
    out = []
    for cls, n in data.few_subjects(ds).items():
        advice = (f"Choose {names.SPLIT_CHOICE['groups']} {where}: each subject is validated in turn, so no one "
                  "person decides the score ('python -m leukviz study subjects' also repeats seeds). " if groups_ok else "")
        out.append(f"Class '{cls}' has {n} subject{'s' if n != 1 else ''} (fewer than "
                   f"{data.MIN_SUBJECTS_PER_CLASS}): {data.few_subjects_effect(cls, n)}. {advice}"
                   f"Add subjects of that class if you can.")
    return out


def split_messages(ds: data.Dataset, sp: data.Split) -> list[str]:
    """The split's warnings, each fact once: what makes its scores unreliable (data.split_problems) except the
    one-person sides the few-subjects warning already explains, its own warnings (LEAKY copies or shared
    subjects), and the leaky-split sentence only when nothing else said it."""
    few = set(data.few_subjects(ds))
    out = []
    for problem in data.split_problems(ds, sp):
        if any(f"'{c}' cells of 1 subject only" in problem for c in few):
            continue  # the class's few-subjects warning says it
        out.append(_sentence(problem))
    out += [_sentence(w) for w in sp.warnings]
    if sp.leaky and not sp.warnings:
        out.append("Leaky split: cells of the same person end up on both sides, so validation scores are "
                   "inflated (the seed paper's protocol). Use it only to reproduce that paper.")
    return out


def split_description(sp: data.Split) -> str:
    """The split's description without the warnings it carries in brackets (the page shows those once, as
    warnings)."""
    text = sp.description
    for w in sp.warnings:
        text = text.replace(f" ({w})", "")
    return text


def preview_size(state: Mapping[str, Any]) -> tuple[int, str]:
    """The image size the 'what the network is fed' preview uses, and where it comes from: the Train page's
    setting when the user has one, else what Train starts with (trainpage.first_settings)."""
    from leukviz.app import trainpage

    if state.get("train_image_size"):
        return int(state["train_image_size"]), "set on the Train page"
    return int(trainpage.first_settings(state)["train_image_size"]), "the Train page's default"


# ---------------------------------------------------------------------------------------------- samples

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
    """The training augmentation (augmentation.augment) applied to one uint8 HWC image n times: (caption, image)."""
    import torch

    from leukviz.models.augmentation import augment, draw_jitter

    if mode == "none":
        return [("no augmentation", image)]
    g = torch.Generator().manual_seed(seed)
    codes = torch.randperm(7, generator=g)[:n] + 1  # distinct non-identity transforms
    jitter = draw_jitter(len(codes), g) if mode == "full" else None
    batch = torch.from_numpy(np.ascontiguousarray(np.stack([image] * len(codes))))
    out = augment(batch, codes, jitter).numpy()
    return [(AUGMENT_CODES_TEXT[int(c)] + (", stain jitter" if jitter is not None else ""), out[i])
            for i, c in enumerate(codes.tolist())]
