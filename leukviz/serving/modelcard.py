"""A model card for an exported run (what `export` writes beside the weights, in Markdown and in the exported
metadata): the backbone and its training, the data and its fingerprint, the split and its subjects, validation
and held-out scores with 95 % intervals from a bootstrap over subjects, calibration, health, and the intended
use with its limits. Read from the run folder alone: the dataset need not be at hand."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from leukviz import __version__
from leukviz.core.filenames import CONFIG, PREDICTIONS, TEST_PREDICTIONS
from leukviz.runstore import runfiles
from leukviz.scoring import calibration, health, metrics, predictions

CARD_SCORES = ("weighted_f1", "accuracy", "sensitivity", "specificity", "roc_auc")
N_RESAMPLES = 2000

INTENDED_USE = ("Research on single-cell classification of acute lymphoblastic leukemia (ALL) blasts versus normal "
                "cells in the setting of the C-NMC 2019 challenge: comparing backbones and training recipes, "
                "teaching, and reproducing published results.")
LIMITS = (
    "Not a medical device and not for diagnosis, screening or any decision about a patient.",
    "Trained on the images and people named below only; scores on other labs, stains, microscopes or "
    "populations are unknown and usually lower (the out-of-distribution check flags images unlike the training "
    "ones, but cannot vouch for the others).",
    "Scores are estimated on few people: read the intervals, which resample whole subjects; a validation score "
    "also chose the kept epoch and the temperature, so it is optimistic; the held-out test score is the honest one.",
    "It classifies one segmented cell at a time: a whole smear, or a cell cut differently from the training "
    "images, is outside what it learned.",
)


def _scores(path: Path, classes: list[str]) -> dict[str, Any] | None:
    """Scores of a predictions file with their subject-bootstrap intervals and who was scored; None when the
    file is missing or holds no labelled cell."""
    if not path.exists():
        return None
    table = predictions.read(path, classes)
    ok = table.labelled()
    if not ok.any():
        return None
    y, probs, subjects = table.y[ok].astype(int), table.probs[ok], table.subjects[ok]
    boot = metrics.subject_bootstrap(y, probs, classes, subjects if all(subjects) else None, CARD_SCORES,
                                     n_resamples=N_RESAMPLES)
    by_class = {c: sorted(set(subjects[y == i]) - {""}) for i, c in enumerate(classes)}
    return {"cells": int(ok.sum()), "cells_per_class": {c: int((y == i).sum()) for i, c in enumerate(classes)},
            "subjects_per_class": by_class, "interval_unit": boot["unit"], "notes": boot["notes"],
            "scores": boot["scores"]}


def card(run_dir: str | Path) -> dict[str, Any]:
    """The model card of a run as data (JSON-ready): what the Markdown says."""
    run_dir = Path(run_dir)
    meta = runfiles.read_sidecar(run_dir)
    info = json.loads((run_dir / CONFIG).read_text())
    cfg = info.get("config", {})
    classes = list(meta["classes"])
    cal = calibration.run_calibration(run_dir)
    cal_report = cal.get("report") or {}
    return metrics.nan_to_none({
        "model": {"backbone": meta["backbone"], "weights_init": meta.get("weights_init"),
                  "parameters": meta.get("params"), "classes": classes, "positive_class": classes[meta["positive"]],
                  "image_size": meta.get("image_size"), "crop": meta.get("crop"),
                  "kept_epoch": meta.get("epoch"), "run_id": run_dir.name, "leukviz": __version__},
        "training": {k: cfg.get(k) for k in ("preset", "epochs", "batch_size", "lr", "optimizer", "finetune",
                                             "augment", "average", "select", "seed", "split_seed", "class_balance")},
        "data": {"source": cfg.get("data"), "fingerprint": info.get("dataset_fingerprint") or meta.get("dataset_fingerprint")},
        "split": meta.get("split", {}),
        "validation": _scores(run_dir / PREDICTIONS, classes),
        "test": _scores(run_dir / TEST_PREDICTIONS, classes),
        "calibration": {"temperature": cal.get("temperature"), "applied": cal.get("calibrated"), "note": cal.get("note"),
                        "before": cal_report.get("before"), "after": cal_report.get("after")},
        "health": health.of_run_dir(run_dir).to_dict(),
        "intended_use": INTENDED_USE, "limits": list(LIMITS),
        "made": datetime.datetime.now().isoformat(timespec="seconds"),
    })


def _num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _scores_md(title: str, s: dict[str, Any] | None) -> list[str]:
    if s is None:
        return [f"## {title}", "", "None: the run has no such predictions.", ""]
    who = "; ".join(f"{c}: {s['cells_per_class'][c]} cells of {len(subj)} subject(s)"
                    + (f" ({', '.join(subj)})" if subj and len(subj) <= 12 else "")
                    for c, subj in s["subjects_per_class"].items())
    lines = [f"## {title}", "", f"{s['cells']} cells — {who}.", "",
             f"| score | value | 95 % interval (bootstrap over {s['interval_unit']}) |", "|---|---|---|"]
    for name in CARD_SCORES:
        sc = s["scores"].get(name) or {}
        lines.append(f"| {metrics.SCORE_LABELS[name]} | {_num(sc.get('value'))} | "
                     f"{_num(sc.get('low'))} to {_num(sc.get('high'))} |")
    return lines + [""] + [f"Note: {n}" for n in s["notes"]] + ([""] if s["notes"] else [])


def markdown(c: dict[str, Any]) -> str:
    """The card as Markdown (MODEL CARD beside the exported weights)."""
    m, d, sp, cal, h = c["model"], c["data"], c["split"], c["calibration"], c["health"]
    lines = [f"# Model card: leukviz {m['backbone']}, run {m['run_id']}", "",
             f"**Intended use.** {c['intended_use']}", "", "**Limits.**", ""]
    lines += [f"- {limit}" for limit in c["limits"]]
    lines += ["", "## Model", "",
              f"- Backbone: {m['backbone']} ({m['parameters'] or 0:,} parameters), initialised from "
              f"`{m['weights_init']}`; classes {', '.join(m['classes'])} (positive: {m['positive_class']})",
              f"- Input: {m['image_size']} px, {'a fixed window around the cell' if m['crop'] else 'the whole image'}",
              f"- Kept model: epoch {m['kept_epoch']}; made with leukviz {m['leukviz']}",
              "- Training: " + ", ".join(f"{k} {v}" for k, v in c["training"].items() if v is not None), "",
              "## Training data", "",
              f"- Source: `{d['source']}`", f"- Content fingerprint: `{d['fingerprint']}` (the same data gives the "
              "same fingerprint; leukviz refuses to score a model on the cells it trained on)",
              f"- Split: {sp.get('description', sp.get('method', '?'))}; {sp.get('n_train', '?')} training and "
              f"{sp.get('n_val', '?')} validation images" + (" — LEAKY: one person's cells on both sides, scores "
                                                               "are inflated" if sp.get("leaky") else ""), ""]
    lines += _scores_md("Validation (chose the kept epoch: optimistic)", c["validation"])
    lines += _scores_md("Held-out test (scored once, chose nothing)", c["test"])
    before, after = cal.get("before") or {}, cal.get("after") or {}
    lines += ["## Calibration", "",
              f"Temperature {_num(cal['temperature'], 2)} ({'applied' if cal['applied'] else 'not applied'}): "
              f"{cal.get('note') or ''}", "",
              f"- ECE {_num(before.get('ece'))} → {_num(after.get('ece'))}; Brier score {_num(before.get('brier'))} → "
              f"{_num(after.get('brier'))} (validation cells)", "",
              "## Health", "",
              f"{h['health']}" + (f": {'; '.join(h['health_reasons'])}" if h["health_reasons"] else ""), "",
              f"_Made {c['made']} by `leukviz export`._", ""]
    return "\n".join(lines)


def card_path(weights: Path) -> Path:
    """Where the card goes beside exported weights: model.onnx -> model.card.md."""
    return weights.with_name(f"{weights.stem}.card.md")
