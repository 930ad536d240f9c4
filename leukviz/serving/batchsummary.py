"""What many predictions say at a glance (Predict's batch, `predict` on a folder): the truth a file name gives,
per model the count and share of each class, accuracy and recall where the truth is known, the figures without the
images unlike the training data or seen in training, per subject the share called `all` with its interval, and
the words and tables that show them. Streamlit-free."""

from __future__ import annotations

from collections.abc import Sequence
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


def _figures(rows: pd.DataFrame, truths: dict, classes: Sequence[str]) -> dict[str, Any]:
    """Counts and shares of each predicted class over readable rows; where the truth is known, accuracy and
    each class's recall (None, with recall_why, for a class no image is known to be)."""
    counts = {c: int((rows["predicted"] == c).sum()) for c in classes}
    out: dict[str, Any] = {"readable": int(len(rows)), "counts": counts,
                           "shares": {c: counts[c] / len(rows) if len(rows) else None for c in classes}}
    labelled = rows[[truths[f][0] is not None for f in rows["file"]]]
    if len(labelled):
        y = np.array([truths[f][0] for f in labelled["file"]])
        pred = labelled["predicted"].to_numpy()
        out["labelled"] = int(len(labelled))
        out["correct"] = int((y == pred).sum())
        out["accuracy"] = float((y == pred).mean())
        out["recall"] = {c: float((pred[y == c] == c).mean()) if (y == c).any() else None for c in classes}
        out["recall_n"] = {c: [int((pred[y == c] == c).sum()), int((y == c).sum())] for c in classes}
        out["recall_why"] = {c: f"no known {c} image" for c in classes if not (y == c).any()}
    return out


def _flagged(rows: pd.DataFrame, column: str) -> np.ndarray:
    """Which rows a True/False/empty column flags (empty and False alike are not flagged)."""
    if column not in rows:
        return np.zeros(len(rows), bool)
    return np.array([isinstance(v, (bool, np.bool_)) and bool(v) for v in rows[column]], dtype=bool)


def batch_summary(table: pd.DataFrame, classes: Sequence[str], positive: str = "all") -> list[dict]:
    """What many predictions say at a glance, per model (prediction_table's rows): how many images, the count
    and share of each predicted class; where file names or class folders give the truth, accuracy and each
    class's recall on those images (_figures); how many images are unlike the model's training data
    ("unlike") and, when any, the same figures without them ("without_unlike"); how many are the run's own
    training or validation images ("seen", from the table's seen column) and the figures on the others
    ("held_out"); where C-NMC names give subjects, per subject (in number order) the share of cells called
    `positive` with its Wilson 95 % interval (a subject's cells are one person: the subject, not the cell, is
    what a clinician would call)."""
    out = []
    truths = {f: truth_of(f, classes) for f in table["file"].unique()} if len(table) else {}
    for run_id, rows in table.groupby("run_id", sort=False):
        ok = rows[rows["error"] == ""]
        model = str(rows["model"].iloc[0])
        item: dict[str, Any] = {"model": names.model_name(model, str(run_id)) if model in backbones.BACKBONES
                                else model, "run_id": str(run_id), "unreadable": int(len(rows) - len(ok)),
                                **_figures(ok, truths, classes)}
        item["images"] = int(len(rows))
        unlike, seen = _flagged(ok, "ood"), _flagged(ok, "seen")
        item["unlike"], item["seen"] = int(unlike.sum()), int(seen.sum())
        if "seen" in ok and ok["seen"].isna().any():
            item["seen_unchecked"] = int(ok["seen"].isna().sum())
        if unlike.any():
            item["without_unlike"] = _figures(ok[~unlike], truths, classes)
        if seen.any():
            item["held_out"] = _figures(ok[~seen], truths, classes)
        subjects = [truths[f][1] for f in ok["file"]]
        if any(subjects):
            per = []
            for s in names.sorted_subjects(s for s in subjects if s):
                mine = ok[[sub == s for sub in subjects]]
                k, n = int((mine["predicted"] == positive).sum()), int(len(mine))
                low, high = _wilson(k, n)
                per.append({"subject": s, "cells": n, f"called_{positive}": k, "share": k / n, "low": low, "high": high})
            item["subjects"] = per
        out.append(item)
    return out


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
