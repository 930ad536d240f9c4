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
from leukviz.comparison import answers, calibrationrows, compare, evaluation, runtable
from leukviz.runstore.names import dataset_label, run_name, sorted_subjects, split_text, verdict_legend
from leukviz.scoring import metrics

PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "scipy", "plotly", "streamlit")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222;
  line-height: 1.45; overflow-wrap: anywhere; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { max-width: 100%; overflow-x: auto; }
.answer { background: #eef5ff; padding: 0.8rem; border-radius: 6px; }
.note { color: #555; font-size: 0.9rem; } figure.fig { margin: 0.5rem 0; max-width: 100%; }
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


MATRIX_STYLE = """
table.lv-matrix { width: 100%; table-layout: fixed; border-collapse: collapse; font-size: 0.85rem; }
table.lv-matrix th, table.lv-matrix td { border: 1px solid rgba(128, 128, 128, 0.35); padding: 0.3rem 0.45rem;
  text-align: left; vertical-align: top; white-space: normal; overflow-wrap: anywhere; color: inherit; }
table.lv-matrix th { font-weight: 600; background: rgba(128, 128, 128, 0.08); }
table.lv-matrix td .lv-ci { opacity: 0.75; font-size: 0.8rem; }
"""


def matrix_html(matrix: pd.DataFrame) -> str:
    """answers.pair_matrix as an HTML table that wraps instead of scrolling: a column per model sharing the
    width (model names break across lines), each cell the mark and difference on one line, the interval and
    p under it; so the matrix of five or six models fits a laptop's 1366 px (the page and the report)."""
    def cell(text: str) -> str:
        head, _, rest = str(text).partition(" [")
        if not rest:
            return html.escape(head)
        return f"<b>{html.escape(head)}</b><br><span class='lv-ci'>[{html.escape(rest)}</span>"

    header = "<tr><th></th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in matrix.columns) + "</tr>"
    rows = "".join("<tr><th>" + html.escape(str(i)) + "</th>" + "".join(f"<td>{cell(v)}</td>" for v in row)
                   + "</tr>" for i, row in zip(matrix.index, matrix.itertuples(index=False)))
    return f"<table class='lv-matrix'>{header}{rows}</table>"


def _cell(v: object, digits: int = 3) -> str:
    """A value as the report prints it: numbers to `digits` decimals (right-aligned), nothing as '–'."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "<td>–</td>"
    if isinstance(v, (bool, np.bool_)):
        return f"<td>{'yes' if v else 'no'}</td>"
    if isinstance(v, (int, np.integer)):
        return f"<td class='num'>{int(v)}</td>"
    if isinstance(v, (float, np.floating)):
        return f"<td class='num'>{float(v):.{digits}f}</td>"
    return f"<td>{html.escape(str(v))}</td>"


def _table(df: pd.DataFrame, index: bool = False, digits: dict[str, int] | None = None) -> str:
    """A table that reads in a document: headers as given (human names), numbers to 3 decimals (digits: other
    places per column), wrapped in a box that scrolls on its own rather than widening the page."""
    digits = digits or {}
    head = ("<th></th>" if index else "") + "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for i, row in zip(df.index, df.itertuples(index=False)):
        cells = "".join(_cell(v, digits.get(str(c), 3)) for c, v in zip(df.columns, row))
        body.append("<tr>" + (f"<th>{html.escape(str(i))}</th>" if index else "") + cells + "</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


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


def _data_section(evals: Sequence[evaluation.Evaluation]) -> str:
    ev = evals[0]
    cfg = ev.run.config
    meta = ev.run.meta()
    split = split_text(cfg, meta.get("split"))
    rows = []
    val = ev.val
    if val is not None and val.subjects is not None:
        for i, c in enumerate(val.classes):
            subjects = sorted_subjects(val.subjects[val.y == i])
            rows.append({"class": c, "validation cells": int((val.y == i).sum()), "subjects": len(subjects),
                         "subject ids": ", ".join(map(str, subjects))})
    fingerprint = ev.run.info.get("dataset_fingerprint", "?")
    text = (f"<p>Dataset <b>{html.escape(dataset_label(cfg.data))}</b> ({html.escape(cfg.data)}), content "
            f"fingerprint {html.escape(str(fingerprint)[:16])}; validation split {html.escape(split)}.</p>")
    return text + (_table(pd.DataFrame(rows)) if rows else "<p class='note'>File names carry no subjects.</p>")


def _answer_section(rep: dict, score: str) -> str:
    parts = []
    for which in rep["sets"]:
        sentences = answers.answer_sentences(rep, score, which)
        if sentences:
            parts.append("<div class='answer'>" + "".join(f"<p>{html.escape(x)}</p>" for x in sentences) + "</div>")
        matrix = answers.pair_matrix(rep, score, which)
        if not matrix.empty:  # two models or more (every pair once)
            parts.append(f"<p>Row minus column, {answers.SCORE_TEXT[score]} on {answers.SET_TEXT[which]} "
                         f"({html.escape(verdict_legend())}):</p>" + matrix_html(matrix))
    words = [f"<li>{html.escape(v)} ({'test' if p['set'] == 'test' else 'validation'})</li>"
             for p in rep["paired"] for v in p["verdicts"]]
    if words:
        parts.append("<p>Every paired comparison in words:</p><ul>" + "".join(words) + "</ul>")
    return "".join(parts)


def _settings_section(evals: Sequence[evaluation.Evaluation]) -> str:
    """A row per setting, a column per run (so many settings stay in the page's width): the full run id, then
    every setting under its own name."""
    columns = {run_name(ev.run): {"run id": ev.run.run_id, **ev.run.config.to_dict()} for ev in evals}
    table = pd.DataFrame(columns)
    table.index = [str(i).replace("_", " ") for i in table.index]
    return _table(table.astype(object).where(table.notna(), None).map(_setting_value), index=True)


def _setting_value(v: object) -> object:
    return f"{v:g}" if isinstance(v, float) else v


RUN_SCORES = ("model", "val_accuracy", "weighted_f1", "weighted_f1_ci", "sensitivity", "specificity", "roc_auc")
RUN_COSTS = ("model", "train_time", "ms_per_image", "params_m", "checkpoint_mb", "image_size", "epochs", "weights")


def _runs_section(evals: Sequence[evaluation.Evaluation], per_image: dict[str, float | None]) -> str:
    """Each run's own scores (0-1, 3 decimals) and its costs, as two tables under human column names."""
    table = runtable.compare_table([runtable.compare_row(ev, per_image.get(ev.run.run_id)) for ev in evals])
    scores = table[list(RUN_SCORES)].rename(columns=runtable.COMPARE_COLUMNS)
    costs = table[list(RUN_COSTS)].rename(columns=runtable.COMPARE_COLUMNS)
    untimed = [run_name(ev.run) for ev in evals if per_image.get(ev.run.run_id) is None]
    note = (f"<p class='note'>Not timed: {html.escape(', '.join(untimed))} (the model could not be loaded).</p>"
            if untimed else "<p class='note'>Inference: one image at a time on the device below.</p>")
    one = {runtable.COMPARE_COLUMNS[k]: 1 for k in ("ms_per_image", "params_m", "checkpoint_mb")}
    return (_table(scores) + "<p class='note'>Validation, at the kept epoch; scores from 0 to 1; the interval from a "
            "bootstrap over subjects.</p>" + _table(costs, digits=one) + note)


def inference_times(evals: Sequence[evaluation.Evaluation]) -> dict[str, float | None]:
    """Seconds per image of each run (runtable.time_per_image on its loaded model); None where it cannot load."""
    from leukviz.serving import inference

    out: dict[str, float | None] = {}
    for ev in evals:
        try:
            out[ev.run.run_id] = runtable.time_per_image(inference.load_model(ev.run.dir, calibrate=False))
        except (OSError, RuntimeError, ValueError, KeyError):
            out[ev.run.run_id] = None
    return out


def _scores_table(scores: Sequence[dict]) -> str:
    """answers.stats_table with each score's mean ± sd and its interval in one cell (the interval on a second
    line): eight columns instead of thirteen, so the table fits the page."""
    table = answers.stats_table(scores)
    for k in metrics.SCORES:
        name = answers.SCORE_TEXT[k]
        if name in table:
            table[name] = [f"{a} ({b})" if b != "–" else a for a, b in zip(table[name], table[f"{name} 95 % CI"])]
            table = table.drop(columns=[f"{name} 95 % CI"])
    return _table(table.rename(columns={answers.SCORE_TEXT[k]: f"{answers.SCORE_TEXT[k]}: mean ± sd (95 % CI)"
                                        for k in metrics.SCORES}))


def html_report(evals: Sequence[evaluation.Evaluation], n_resamples: int = 2000, score: str = "weighted_f1",
                title: str = "leukviz comparison", rep: dict | None = None,
                per_image: dict[str, float | None] | None = None) -> str:
    """The whole report as one HTML document (runs that share their validation cells: one comparable group).
    rep: these runs' compare.build_report(...).to_dict() when the caller has it (the bootstrap is not run
    again); otherwise it is built here with n_resamples. per_image: seconds per image by run id, as the
    caller timed them (Compare's page); otherwise each model is loaded and timed here (inference_times)."""
    rep = rep if rep is not None else compare.build_report(evals, n_resamples).to_dict()
    per_image = per_image if per_image is not None else inference_times(evals)
    figure = _Figures()
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='note'>Made {datetime.datetime.now().isoformat(timespec='seconds')} by leukviz from "
            f"{len(evals)} run(s).</p>",
            "<h2>Data and split</h2>", _data_section(evals),
            "<h2>The answer</h2>", _answer_section(rep, score),
            "<h2>Scores with their intervals</h2>",
            "<p class='note'>Mean ± sd over each configuration's seeds, and the 95 % interval from a bootstrap over "
            "subjects (all of a person's cells resampled together).</p>",
            _scores_table(rep["scores"]),
            figure(charts.interval_figure(rep["scores"], score, answers.SCORE_TEXT[score]), "intervals")]
    for note in rep["notes"]:
        body.append(f"<p class='warn'>Note: {html.escape(note)}</p>")
    body += ["<h2>Each run</h2>", _runs_section(evals, per_image), "<h2>Learning curves</h2>"]
    hist = runtable.histories([ev.run for ev in evals])
    for metric in ("val_f1", "val_loss"):
        body.append(figure(charts.compare_curves(hist, metric), f"curves {charts.METRIC_LABELS[metric]}"))
    body += ["<h2>ROC</h2>", figure(charts.roc_figure(runtable.roc_curves(evals)), "ROC"),
             "<h2>Confusion matrices</h2>"]
    body.append("<div style='display:flex;flex-wrap:wrap;gap:1rem'>" + "".join(
        figure(charts.confusion_figure(ev.summary["confusion"], ev.classes, title=run_name(ev.run))
                .update_layout(width=380, height=340)) for ev in evals) + "</div>")
    cals = [calibrationrows.calibration_of(ev) for ev in evals]
    body += ["<h2>Calibration</h2>", _table(calibrationrows.calibration_table(cals)),
             "<p class='note'>T: the temperature fitted on validation; ECE and Brier score raw → calibrated, lower is "
             "better (on validation the 'after' is flattering: T was fitted there).</p>"]
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
                title=f"{run_name(ev.run)}: accuracy per validation subject")))
    env = environment()
    body += ["<h2>Settings and run ids</h2>", _settings_section(evals),
             "<h2>Software and hardware</h2>", _table(pd.DataFrame([env]).T.reset_index().set_axis(["", "version"], axis=1))]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}{MATRIX_STYLE}</style></head><body>{''.join(body)}</body></html>")
