"""A comparison as one self-contained HTML file (Plotly's JavaScript inlined, so it opens offline): the dataset
and split, the answer and every pairwise test, the scores with their intervals, curves, ROC, confusion matrices,
calibration, per-subject accuracy, each run's settings and id, and the software and hardware. What a
researcher pastes into a paper's supplement; `compare --report FILE` and Compare's button write it."""

from __future__ import annotations

import datetime
import html
import platform
from collections.abc import Sequence
from importlib import metadata

import numpy as np
import pandas as pd

from leukviz.app import charts
from leukviz.comparison import compare
from leukviz.runstore.names import dataset_label, split_text
from leukviz.scoring import metrics

PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "scipy", "plotly", "streamlit")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f4f4f4; } .answer { background: #eef5ff; padding: 0.8rem; border-radius: 6px; }
.note { color: #555; font-size: 0.9rem; } figure.fig { margin: 0.5rem 0; }
figcaption button { margin-left: 0.3rem; } .warn { background: #fff6df; padding: 0.6rem; border-radius: 6px; }
"""


def environment() -> dict[str, str]:
    """The software and hardware the report was made with."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()
           or platform.machine()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import torch

        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    except ImportError:
        out["device"] = "unknown"
    return out


def _table(df: pd.DataFrame, index: bool = False) -> str:
    return df.to_html(index=index, escape=True, border=0, na_rep="–")


class _Figures:
    """The report's figures as HTML fragments, numbered, each with a PNG and an SVG button under it (drawn by
    Plotly in the browser, so they work offline); the first carries Plotly's JavaScript, inlined."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig, name: str = "") -> str:
        self.count += 1
        name = name or fig.layout.title.text or f"figure {self.count}"
        div_id = f"fig-{self.count}"
        buttons = "".join(
            f"<button onclick=\"Plotly.downloadImage('{div_id}', {{format: '{fmt}', scale: {scale}, "
            f"filename: '{charts.image_filename(name)}'}})\">{fmt.upper()}</button>"
            for fmt, scale in (("png", charts.PNG_SCALE), ("svg", 1)))
        drawn = fig.to_html(full_html=False, include_plotlyjs=self.count == 1, div_id=div_id,
                            config=charts.figure_config(name))
        return f"<figure class='fig'>{drawn}<figcaption class='note'>Download {html.escape(name)}: {buttons}</figcaption></figure>"


def _data_section(evals: Sequence[compare.Evaluation]) -> str:
    ev = evals[0]
    cfg = ev.run.config
    meta = ev.run.meta()
    split = split_text(cfg, meta.get("split"))
    rows = []
    val = ev.val
    if val is not None and val.subjects is not None:
        for i, c in enumerate(val.classes):
            subjects = sorted(set(val.subjects[val.y == i]))
            rows.append({"class": c, "validation cells": int((val.y == i).sum()), "subjects": len(subjects),
                         "subject ids": ", ".join(map(str, subjects))})
    fingerprint = ev.run.info.get("dataset_fingerprint", "?")
    text = (f"<p>Dataset <b>{html.escape(dataset_label(cfg.data))}</b> ({html.escape(cfg.data)}), content "
            f"fingerprint {html.escape(str(fingerprint)[:16])}; validation split {html.escape(split)}.</p>")
    return text + (_table(pd.DataFrame(rows)) if rows else "<p class='note'>File names carry no subjects.</p>")


def _answer_section(rep: dict, score: str) -> str:
    parts = []
    for which in rep["sets"]:
        sentence = compare.answer(rep, score, which)
        if sentence:
            parts.append(f"<p class='answer'>{html.escape(sentence)}</p>")
        matrix = compare.pair_matrix(rep, score, which)
        if not matrix.empty:  # two models or more (every pair once)
            parts.append(f"<p>Row minus column, {compare.SCORE_TEXT[score]} on {compare.SET_TEXT[which]} "
                         "(✓ clearly different, ~ suggestive, = no clear difference):</p>" + _table(matrix, index=True))
    words = [f"<li>{html.escape(v)} ({'test' if p['set'] == 'test' else 'validation'})</li>"
             for p in rep["paired"] for v in p["verdicts"]]
    if words:
        parts.append("<p>Every paired comparison in words:</p><ul>" + "".join(words) + "</ul>")
    return "".join(parts)


def _settings_section(evals: Sequence[compare.Evaluation]) -> str:
    rows = [{"run": ev.run.run_id, "model": compare.run_name(ev.run), **ev.run.config.to_dict()} for ev in evals]
    return _table(pd.DataFrame(rows))


def html_report(evals: Sequence[compare.Evaluation], n_resamples: int = 2000, score: str = "weighted_f1",
                title: str = "leukviz comparison", rep: dict | None = None) -> str:
    """The whole report as one HTML document (runs that share their validation cells: one comparable group).
    rep: these runs' compare.build_report(...).to_dict() when the caller has it (the bootstrap is not run
    again); otherwise it is built here with n_resamples."""
    rep = rep if rep is not None else compare.build_report(evals, n_resamples).to_dict()
    figure = _Figures()
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='note'>Made {datetime.datetime.now().isoformat(timespec='seconds')} by leukviz from "
            f"{len(evals)} run(s).</p>",
            "<h2>Data and split</h2>", _data_section(evals),
            "<h2>The answer</h2>", _answer_section(rep, score),
            "<h2>Scores with their intervals</h2>",
            "<p class='note'>Mean ± sd over each configuration's seeds, and the 95 % interval from a bootstrap over "
            "subjects (all of a person's cells resampled together).</p>",
            _table(compare.stats_table(rep["scores"])),
            figure(charts.interval_figure(rep["scores"], score, compare.SCORE_TEXT[score]), "intervals")]
    for note in rep["notes"]:
        body.append(f"<p class='warn'>Note: {html.escape(note)}</p>")
    body += ["<h2>Each run</h2>", _table(compare.compare_table([compare.compare_row(ev) for ev in evals])),
             "<h2>Learning curves</h2>"]
    hist = compare.histories([ev.run for ev in evals])
    for metric in ("val_f1", "val_loss"):
        body.append(figure(charts.compare_curves(hist, metric), f"curves {charts.METRIC_LABELS[metric]}"))
    body += ["<h2>ROC</h2>", figure(charts.roc_figure(compare.roc_curves(evals)), "ROC"),
             "<h2>Confusion matrices</h2>"]
    body.append("<div style='display:flex;flex-wrap:wrap;gap:1rem'>" + "".join(
        figure(charts.confusion_figure(ev.summary["confusion"], ev.classes, title=compare.run_name(ev.run))
                .update_layout(width=380, height=340)) for ev in evals) + "</div>")
    cals = [compare.calibration_of(ev) for ev in evals]
    body += ["<h2>Calibration</h2>", _table(compare.calibration_table(cals))]
    for cal in cals:
        rep_cal = cal["test"] or cal["val"]
        if rep_cal:
            fig = charts.reliability_figure(pd.DataFrame(rep_cal["reliability_before"]),
                                            pd.DataFrame(rep_cal["reliability_after"]))
            body.append(figure(fig.update_layout(title=f"{cal['model']}: {'test' if cal['test'] else 'validation'}, "
                                                        f"T = {cal['temperature']:.2f}")))
    body.append("<h2>Accuracy per subject</h2>")
    for ev in evals:
        if ev.val is not None and ev.val.subjects is not None:
            df = metrics.per_subject(ev.val.y, np.asarray(ev.val.probs).argmax(1), ev.val.subjects)
            body.append(figure(charts.per_subject_figure(df, ev.classes).update_layout(
                title=f"{compare.run_name(ev.run)}: accuracy per validation subject")))
    env = environment()
    body += ["<h2>Settings and run ids</h2>", _settings_section(evals),
             "<h2>Software and hardware</h2>", _table(pd.DataFrame([env]).T.reset_index().set_axis(["", "version"], axis=1))]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
