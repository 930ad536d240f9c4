"""What many predictions say at a glance (Predict's batch, `predict` on a folder): the truth a file name gives,
per model the count and share of each class, accuracy and recall where the truth is known, the figures without the
images unlike the training data or seen in training, per subject the share called `all` with its interval, and
the words and tables that show them. Streamlit-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukviz.models import backbones
from leukviz.runstore import names


def truth_of(name: str, classes: Sequence[str]) -> tuple[str | None, str | None]:
    """(true class, subject) an uploaded file's name tells: a class folder on its path ('cells.zip/hem/x.png')
    or a C-NMC file name ('UID_h3_4_1_hem.bmp': class and subject); None where it tells nothing."""
    from leukviz.datasets.cnmc import parse_cnmc_name

    parts = str(name).replace("\\", "/").split("/")
    parsed = parse_cnmc_name(parts[-1])
    truth = next((p for p in reversed(parts[:-1]) if p in classes), None)
    if truth is None and parsed and parsed[3] in classes:
        truth = parsed[3]
    return truth, (parsed[0] if parsed else None)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95 % interval of a share k / n (sound at 0 and n, unlike the normal one)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def own_images(lm: Any, cache_dir: Path | None = None) -> set[str] | None:
    """The content digests of the run's own training and validation images (inference.seen_digests), None
    when its dataset cannot be opened here (nothing can be checked)."""
    from leukviz.serving import inference

    seen, unchecked = inference.seen_digests(lm, cache_dir)
    return None if unchecked else seen


@dataclass
class _Figures:
    """The figures of a set of images, kept as counts: each predicted class, and where the truth is known the
    hits per true class."""

    classes: list[str]
    readable: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    truth: dict[str, int] = field(default_factory=dict)  # labelled images per true class
    hits: dict[str, int] = field(default_factory=dict)  # of those, called their class

    def add(self, called: Any, truth: str | None) -> None:
        self.readable += 1
        if called in self.classes:
            self.counts[called] = self.counts.get(called, 0) + 1
        if truth is not None:
            self.truth[truth] = self.truth.get(truth, 0) + 1
            self.hits[truth] = self.hits.get(truth, 0) + int(called == truth)

    def result(self) -> dict[str, Any]:
        counts = {c: self.counts.get(c, 0) for c in self.classes}
        out: dict[str, Any] = {"readable": self.readable, "counts": counts,
                               "shares": {c: counts[c] / self.readable if self.readable else None
                                          for c in self.classes}}
        labelled = sum(self.truth.values())
        if labelled:
            correct = sum(self.hits.values())
            out.update(labelled=labelled, correct=correct, accuracy=correct / labelled)
            out["recall"] = {c: self.hits[c] / self.truth[c] if self.truth.get(c) else None for c in self.classes}
            out["recall_n"] = {c: [self.hits.get(c, 0), self.truth.get(c, 0)] for c in self.classes}
            out["recall_why"] = {c: f"no known {c} image" for c in self.classes if not self.truth.get(c)}
        return out


@dataclass
class _ModelCounts:
    model: str
    every: _Figures
    without_unlike: _Figures
    held_out: _Figures
    images: int = 0
    unreadable: int = 0
    unlike: int = 0
    seen: int = 0
    seen_unchecked: int = 0
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> [called positive, cells]


def _flag(value: Any) -> bool:
    """Only a real True flags (empty and False alike do not)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _empty(value: Any) -> bool:
    """None or NaN: a "seen" that could not be checked (the run's dataset was not at hand)."""
    return value is None or (isinstance(value, float) and value != value)


class RunningSummary:
    """batch_summary kept as counts, row by row: what a streamed prediction adds batch by batch and a whole
    table adds at once, holding a few numbers per model (and per subject), never the rows."""

    def __init__(self, classes: Sequence[str], positive: str = "all"):
        self.classes, self.positive = list(classes), positive
        self.models: dict[str, _ModelCounts] = {}

    def _model(self, r: dict) -> _ModelCounts:
        run_id = str(r["run_id"])
        if run_id not in self.models:
            model = str(r["model"])
            name = names.model_name(model, run_id) if model in backbones.BACKBONES else model
            self.models[run_id] = _ModelCounts(name, *(_Figures(self.classes) for _ in range(3)))
        return self.models[run_id]

    def add(self, rows: Sequence[dict]) -> None:
        for r in rows:
            m = self._model(r)
            m.images += 1
            if r.get("error"):
                m.unreadable += 1
                continue
            called = r.get("predicted")
            truth, subject = truth_of(r["file"], self.classes)
            unlike, seen = _flag(r.get("ood")), _flag(r.get("seen"))
            m.unlike += unlike
            m.seen += seen
            m.seen_unchecked += "seen" in r and _empty(r["seen"])
            m.every.add(called, truth)
            if not unlike:
                m.without_unlike.add(called, truth)
            if not seen:
                m.held_out.add(called, truth)
            if subject:
                s = m.subjects.setdefault(subject, [0, 0])
                s[0] += int(called == self.positive)
                s[1] += 1

    def result(self) -> list[dict]:
        """batch_summary's list (batch_summary says what each entry holds)."""
        out = []
        for run_id, m in self.models.items():
            item: dict[str, Any] = {"model": m.model, "run_id": run_id, "unreadable": m.unreadable,
                                    **m.every.result(), "images": m.images, "unlike": m.unlike, "seen": m.seen}
            if m.seen_unchecked:
                item["seen_unchecked"] = m.seen_unchecked
            if m.unlike:
                item["without_unlike"] = m.without_unlike.result()
            if m.seen:
                item["held_out"] = m.held_out.result()
            if m.subjects:
                per = []
                for s in names.sorted_subjects(m.subjects):
                    k, n = m.subjects[s]
                    low, high = _wilson(k, n)
                    per.append({"subject": s, "cells": n, f"called_{self.positive}": k, "share": k / n,
                                "low": low, "high": high})
                item["subjects"] = per
            out.append(item)
        return out



def batch_summary(table: pd.DataFrame, classes: Sequence[str], positive: str = "all") -> list[dict]:
    """What many predictions say at a glance, per model (prediction_table's rows): how many images, the count
    and share of each predicted class; where file names or class folders give the truth, accuracy and each
    class's recall on those images; how many images are unlike the model's training data
    ("unlike") and, when any, the same figures without them ("without_unlike"); how many are the run's own
    training or validation images ("seen", from the table's seen column) and the figures on the others
    ("held_out"); where C-NMC names give subjects, per subject (in number order) the share of cells called
    `positive` with its Wilson 95 % interval (a subject's cells are one person: the subject, not the cell, is
    what a clinician would call)."""
    running = RunningSummary(classes, positive)
    running.add(table.to_dict("records"))
    return running.result()


def model_name(m: dict) -> str:
    """A batch_summary entry's model as every page names it (names.model_name)."""
    return m["model"]


UNLIKE_WORDS = "unlike its training data"
ALL_ROWS = "all readable"  # summary_frame's first row of a model: every readable image
SEEN_WORDS = "its own training or validation images"


def _share(k: int, n: int) -> str:
    return f"{k / n:.0%} ({k}/{n})"


def _recall_text(fig: dict, c: str) -> str:
    """A class's recall as text: '85.0% (34 of 40)', or why there is none ('– no image known to be hem')."""
    if fig.get("recall", {}).get(c) is None:
        return f"– {fig.get('recall_why', {}).get(c, 'no image of known class')}"
    k, n = fig["recall_n"][c]
    return _share(k, n)


def _figure_row(model: str, which: str, fig: dict) -> dict[str, Any]:
    row: dict[str, Any] = {"Model": model, "Images": which, "Readable": fig["readable"]}
    for c, n in fig["counts"].items():
        share = fig["shares"][c]
        row[f"Called {c}"] = f"{n} ({share:.0%})" if share is not None else str(n)
    if "accuracy" in fig:
        row["Known"] = fig["labelled"]
        row["Accuracy"] = _share(fig["correct"], fig["labelled"])
        row.update({f"Recall {c}": _recall_text(fig, c) for c in fig["counts"]})
    return row


def summary_frame(summary: Sequence[dict]) -> pd.DataFrame:
    """batch_summary as rows per model, for a page's table: every readable image, then (when any) without those
    unlike the model's training data, and without the run's own training or validation images; each with
    the count and share of each predicted class and, where the truth is known ("Known" images), accuracy and
    each class's recall as 'share (k/n)', or why a recall is empty ('– no known hem image')."""
    rows = []
    for m in summary:
        rows.append(_figure_row(model_name(m), ALL_ROWS, m))
        if "without_unlike" in m:
            rows.append(_figure_row(model_name(m), f"without {m['unlike']} unlike training", m["without_unlike"]))
        if "held_out" in m:
            rows.append(_figure_row(model_name(m), f"without {m['seen']} of its own", m["held_out"]))
    frame = pd.DataFrame(rows)
    if "Known" in frame:  # a row left with no image of known class: 0 of them, and no figures
        frame["Known"] = frame["Known"].fillna(0).astype(int)
        frame = frame.fillna("– no image of known class")
    return frame


def summary_sentences(summary: Sequence[dict]) -> list[str]:
    """What the figures rest on, once per model: how many images are unlike its training data and how
    accuracy moves without them; how many are the run's own training or validation images (a score on those
    says nothing about new cells), and the accuracy on the others."""
    facts = {(m["readable"], m.get("unlike", 0), m.get("seen", 0), m.get("seen_unchecked", 0)) for m in summary}
    if len(summary) > 1 and len(facts) == 1:  # every model alike: said once, the table has each one's figures
        readable, unlike, seen, unchecked = facts.pop()
        parts = ([f"{unlike} of {readable} images are unlike their training data (their confidence on them means "
                  "little)"] if unlike else []) + \
                ([f"{seen} of {readable} are their own training or validation images (the same bytes): scores on "
                  "them say nothing about new cells"] if seen else []) + \
                (["whether these images are among their own training images could not be checked"] if unchecked else [])
        return [f"For every model: {'; '.join(parts)}. The table gives the figures with and without them."] if parts else []
    out = []
    for m in summary:
        readable = m["readable"]
        if m.get("unlike"):
            text = f"{model_name(m)}: {m['unlike']} of {readable} images are {UNLIKE_WORDS} (its confidence on them means little)"
            if "accuracy" in m and "accuracy" in m["without_unlike"]:
                text += (f"; accuracy {m['accuracy']:.1%} on every image with a known class, "
                         f"{m['without_unlike']['accuracy']:.1%} without them")
            out.append(text + ".")
        if m.get("seen"):
            text = (f"{model_name(m)}: {m['seen']} of {readable} images are {SEEN_WORDS} (the same bytes): scores "
                    "on them say nothing about new cells")
            held = m["held_out"]
            if "accuracy" in held:
                text += f"; on the {held['readable']} others, accuracy {held['accuracy']:.1%}"
            elif not held["readable"]:
                text += "; none of these images is new to it"
            out.append(text + ".")
        if m.get("seen_unchecked"):
            out.append(f"{model_name(m)}: whether these images are among its own training images could not be "
                       "checked (its dataset cannot be opened here).")
    return out


def subjects_frame(summary: Sequence[dict]) -> pd.DataFrame:
    """batch_summary's per-subject shares, one row per model and subject (empty without subjects)."""
    return pd.DataFrame([{"Model": model_name(m), "Subject": s["subject"], "Cells": s["cells"],
                          "Called all": s["share"], "95 % CI": f"{s['low']:.0%} to {s['high']:.0%}"}
                         for m in summary for s in m.get("subjects", [])])


def summary_lines(summary: Sequence[dict]) -> list[str]:
    """batch_summary as the command line prints it: a line per model, then one per subject."""
    lines = []
    for m in summary:
        shares = ", ".join(f"{c} {n} ({m['shares'][c]:.0%})" for c, n in m["counts"].items() if m["shares"][c] is not None)
        line = f"{model_name(m)}: {m['images']} images: {shares}"
        if m["unreadable"]:
            line += f"; {m['unreadable']} unreadable"
        if "accuracy" in m:
            recall = ", ".join(f"{c} {_recall_text(m, c)}" for c in m["recall"])
            line += f"; on the {m['labelled']} with a known class: accuracy {m['accuracy']:.1%}, recall {recall}"
        lines.append(line)
        lines.extend(f"    {x}" for x in summary_sentences([m]))
        for s in m.get("subjects", []):
            lines.append(f"    subject {s['subject']}: {s['share']:.0%} of {s['cells']} cells called all "
                         f"(95 % CI {s['low']:.0%} to {s['high']:.0%})")
    return lines
