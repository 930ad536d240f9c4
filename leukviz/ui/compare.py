"""Compare: the backbones side by side on the same data and split: metrics, curves, ROC, confusion."""

import pandas as pd
import streamlit as st

from leukviz.app import charts, dashboard
from leukviz.app.report import MATRIX_STYLE, html_report, matrix_html
from leukviz.comparison import answers, calibrationrows, compare, grouping, pairing, runtable, testset
from leukviz.runstore import names
from leukviz.scoring import registry
from leukviz.ui._common import active_dataset, figure, page, warn_damaged
from leukviz.ui._compare_parts import (
    calibration,
    error_gallery,
    evaluation,
    export_section,
    run_stamp,
    seconds_per_image,
    uncertainty,
)

CURVES = {"val_acc": "Validation accuracy", "val_loss": "Validation loss", "val_f1": "Validation weighted F1",
          "train_acc": "Training accuracy", "train_loss": "Training loss"}


st.title("Compare")
warn_damaged()
finished = dashboard.finished_runs()
if not finished:
    st.info("Nothing to compare yet: train at least one backbone.")
    st.page_link(page("train"), label="Train a model", icon=":material/model_training:")
    st.stop()

groups = grouping.comparable_groups(finished)
keys = list(groups)
dataset = active_dataset()
asked = [i for i in (st.query_params.get("runs") or "").split(",") if i]  # Train's "Compare this group" link
repeated = len(asked) != len(set(asked))
asked = list(dict.fromkeys(asked))  # one run named twice in the address is one run (issue 35)
first = next((k for k in keys if asked and asked[0] in {r.run_id for r in groups[k].runs}), None)
first = first or next((k for k in keys if dataset in groups[k].datasets), keys[0])
key = st.selectbox("Dataset and split", keys, index=keys.index(first), format_func=lambda k: groups[k].label,
                   help="Only runs trained on the same data (same content fingerprint) with the same "
                        "validation split are comparable: they are scored on the same validation images.")
group = groups[key]
by_id = {r.run_id: r for r in group.runs}
degenerate = {r.run_id: h for r in group.runs if (h := dashboard.run_health(r)) is not None and h.degenerate}
default = [i for i in asked if i in by_id] or [r.run_id for r in grouping.default_selection(dashboard.healthy_runs(group.runs))]
chosen = st.multiselect("Runs", list(by_id), format_func=lambda i: dashboard.run_label(by_id[i]),
                        default=default,
                        help="Runs of one configuration that differ only in seed (Repeats on the Train page) "
                             "are summarised together: mean ± sd over seeds. Degenerate runs are not selected "
                             "by default.")
if repeated:
    st.caption("The address named a run more than once: each is compared once.")
healthy_chosen = [i for i in chosen if i not in degenerate]
for run_id, h in degenerate.items():
    where = (": chosen, it is listed apart below, not ranked." if run_id in chosen and healthy_chosen else
             ": chosen alone, it is compared as it is." if run_id in chosen else ": left out unless you choose it.")
    st.warning(f"{dashboard.plain(names.run_name(by_id[run_id]))} is degenerate "
               f"({dashboard.plain('; '.join(h.reasons))}){where}", icon=":material/warning:")
if not chosen:
    st.info("Choose at least one run.")
    st.stop()
# Degenerate runs are listed apart, never ranked beside the others (unless they are all that was chosen).
apart = [by_id[i] for i in chosen if i in degenerate] if healthy_chosen else []
selected = [by_id[i] for i in (healthy_chosen or chosen)]
if apart:
    st.markdown("**Degenerate, not ranked** (their own validation scores)")
    st.dataframe(pd.DataFrame([{"Model": dashboard.run_label(r), **{k: v for k, v in r.final_metrics().items()
                                                                    if k in ("val_acc", "val_f1")},
                                "Why": "; ".join(degenerate[r.run_id].reasons)} for r in apart]),
                 hide_index=True, width="stretch",
                 column_config={"val_acc": st.column_config.NumberColumn("Acc.", format="%.3f"),
                                "val_f1": st.column_config.NumberColumn("F1", format="%.3f")})

if grouping.is_cross_validation(group):
    st.caption(f"{len(selected)} run(s) of subject-grouped cross-validation: each seed's folds together score every "
               f"subject once, by a model that never saw that subject: {dashboard.plain(group.label)}.")
else:
    st.caption(f"{len(selected)} run(s) scored on the same validation images: {dashboard.plain(group.label)}.")

with st.spinner("Scoring older runs on the dataset's held-out test set (once)…"):
    for problem in testset.backfill_test(selected):
        st.warning(dashboard.plain(problem))
evals, rows, timed = [], [], {}
with st.spinner("Scoring the runs and timing inference…"):
    for r in selected:
        stamp = run_stamp(r)
        try:
            ev = evaluation(str(r.dir), stamp)
            per_image = seconds_per_image(str(r.dir), stamp)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            st.warning(f"{dashboard.plain(names.run_name(r))} left out: {dashboard.plain(e)}")
            continue
        evals.append(ev)
        timed[r.run_id] = per_image
        rows.append(runtable.compare_row(ev, per_image))
if not evals:
    st.stop()

with st.spinner("Bootstrapping over subjects…"):
    try:
        report = uncertainty(tuple((str(ev.run.dir), run_stamp(ev.run)) for ev in evals))
    except compare.LabelConflict as e:
        st.error(dashboard.plain(e), icon=":material/rule:")
        st.stop()
scores = report["scores"]
unit = scores[0]["interval"].get("unit", "subjects") if scores else "subjects"
score = st.segmented_control("Score", list(answers.SCORE_TEXT), format_func=answers.SCORE_TEXT.get,
                             default="weighted_f1", key="compare_score") or "weighted_f1"
sets = [w for w in ("val", "test") if any(s["set"] == w for s in scores)]
for which, tab in zip(sets, st.tabs([answers.SET_TEXT[w].capitalize() for w in sets])):
    with tab:  # the answer first, in one sentence; then every pair at once
        sentences = answers.answer_sentences(report, score, which)
        if sentences:  # the verdict, then (in the same box) what the data cannot say
            st.info("\n\n".join(dashboard.plain(x) for x in sentences), icon=":material/emoji_events:")
        matrix = answers.pair_matrix(report, score, which)
        if not matrix.empty:  # two models or more (every pair once)
            st.markdown(f"**Row minus column**, {answers.SCORE_TEXT[score]} on {answers.SET_TEXT[which]}: "
                        f"{dashboard.plain(names.verdict_legend())}")
            # an HTML table that wraps (names, then the interval under the difference): fits 1366 px at 6 models
            st.html(f"<style>{MATRIX_STYLE}</style>{matrix_html(matrix)}")
        elif score not in pairing.PAIRED_SCORES:
            st.caption(f"Paired tests are run on {' and '.join(answers.SCORE_TEXT[k] for k in pairing.PAIRED_SCORES)}.")

st.download_button("Download the report (HTML)", lambda: html_report(evals, score=score, rep=report, per_image=timed).encode(),
                   file_name="leukviz-report.html", mime="text/html", icon=":material/download:",
                   key="compare_report", help="One self-contained file that opens offline: data and split, the "
                   "answer, every paired test, intervals, curves, ROC, confusion matrices, calibration, per-subject "
                   "accuracy, settings and run ids, software and hardware.")

st.subheader("Is the difference real?")
score_label = answers.SCORE_TEXT[score]
st.dataframe(answers.stats_table(scores, score), hide_index=True, width="stretch",
             column_config={score_label: st.column_config.TextColumn(f"{score_label} (mean ± sd)",
                                                                     help="Mean ± sd over the seeds"),
                            f"{score_label} 95 % CI": st.column_config.TextColumn(
                                f"{score_label} 95 % CI", help=f"Bootstrap over {unit}, the seeds pooled")})
st.markdown(dashboard.plain(answers.headline(scores)))
st.caption(
    f"Each score is the mean ± sd over a configuration's seeds (the seeds' spread: how much a rerun moves it), "
    f"and beside it the 95 % interval from a bootstrap over {unit}: the {unit} are resampled with all their "
    "cells, so it says how much the score could differ on other people like these. The ensemble is the mean "
    "of the selected runs' probabilities. Test rows, where the dataset has a test set, are scored once on "
    "cells that chose nothing (the kept epoch is chosen on validation).")
for note in report["notes"]:
    st.caption(f"Note: {dashboard.plain(note)}")
figure(charts.interval_figure(scores, score, answers.SCORE_TEXT[score]), "intervals", f"{score} intervals")
if report["paired"]:
    with st.expander("Every paired comparison in words"):
        for p in report["paired"]:
            where = "test" if p["set"] == "test" else "validation"
            for v in p["verdicts"]:
                st.markdown(f"- {dashboard.plain(v)} ({where})")
    st.caption(f"Differences are first minus second, pooled over the seeds both have. The interval resamples "
               f"{unit} together for both models; the p-value is from a {report['paired'][0]['test']}: how often "
               "a difference this large would arise if the two models were interchangeable. One model is "
               f"{names.VERDICT_WORDS['clear']} ({names.VERDICT_MARK['clear']}) when the interval excludes 0 and p < "
               f"0.05; {names.VERDICT_WORDS['weak']} ({names.VERDICT_MARK['weak']}) when only the interval excludes "
               f"0; with p of 0.5 or more, {names.VERDICT_WORDS['unclear']} ({names.VERDICT_MARK['unclear']}) "
               "whatever the interval.")

st.subheader("Each run")
table = runtable.compare_table(rows)
SETTINGS_COLUMNS = ["model", "weights", "split", "image_size", "epochs", "run_id"]
short = {  # short headers (each with its full name as help), so the table fits a laptop screen
    "model": st.column_config.TextColumn("Model"),
    "val_accuracy": st.column_config.NumberColumn("Acc.", format="%.3f", help="Validation accuracy"),
    "weighted_f1": st.column_config.NumberColumn("F1", format="%.3f", help="Validation weighted F1 (C-NMC's metric)"),
    "weighted_f1_ci": st.column_config.TextColumn("F1 95 % CI", help="Bootstrap over subjects"),
    **{k: st.column_config.NumberColumn(registry.get(k).short, format=registry.number_format(k), help=registry.get(k).help)
       for k in runtable.RUN_SCORES},  # as the score registry words them
    "train_time": st.column_config.TextColumn("Training", help="Training time (epochs and validation)"),
    "ms_per_image": st.column_config.NumberColumn("ms / img", format="%.1f",
                                                  help="Inference, one image at a time on this device"),
    "params_m": st.column_config.NumberColumn("Params (M)", format="%.1f", help="Parameters, millions"),
    "checkpoint_mb": st.column_config.NumberColumn("MB", format="%.1f", help="Checkpoint size"),
}
st.dataframe(table, hide_index=True, width="stretch", column_order=list(short), column_config=short)
with st.expander("Settings of each run"):
    st.dataframe(table[SETTINGS_COLUMNS], hide_index=True, width="stretch",
                 column_config={k: st.column_config.Column(label=runtable.COMPARE_COLUMNS[k]) for k in SETTINGS_COLUMNS})
st.caption("One run each, on the validation split at its kept epoch (the last, or the best by weighted F1, as "
           "the run was set); `all` (blast) is the positive class. Inference: one image at a time on this device.")

st.subheader("Calibration")
cals = [calibration(str(ev.run.dir), run_stamp(ev.run)) for ev in evals]
st.dataframe(calibrationrows.calibration_table(cals), hide_index=True, width="stretch",
             column_config={"Temperature": st.column_config.NumberColumn(format="%.2f")})
st.caption("Temperature scaling divides each run's logits by one number T fitted on its validation cells, so "
           "that a confidence of 80 % is right about 80 % of the time; the prediction itself never changes. ECE "
           "(expected calibration error: the gap between confidence and accuracy) and the Brier score (squared "
           "error of the probabilities; 0 is perfect), raw → calibrated, lower is better. On validation the "
           "'after' is flattering (T was fitted there); the test columns, where there are any, are the honest "
           "check. Predict shows the calibrated confidence.")
shown = st.selectbox("Reliability diagram of", range(len(cals)), format_func=lambda i: cals[i]["model"],
                     key="compare_reliability")
cal = cals[shown]
rep = cal["test"] or cal["val"]
if rep:
    fig = charts.reliability_figure(pd.DataFrame(rep["reliability_before"]), pd.DataFrame(rep["reliability_after"]))
    fig.update_layout(title=f"{'test (held out)' if cal['test'] else 'validation'}, T = {cal['temperature']:.2f}")
    figure(fig, "reliability", f"reliability {cal['model']}")
else:
    st.info(dashboard.plain(cal.get("note") or "This run is not calibrated."))

left, right = st.columns(2)
with left:
    st.subheader("Learning curves")
    metric = st.selectbox("Curve", list(CURVES), format_func=CURVES.get)
    fig = charts.compare_curves(runtable.histories(selected), metric)
    if metric in charts.FRACTION_METRICS:
        fig.update_yaxes(range=[0, 1.02])  # a fixed scale: one epoch alone would autorange to 0-150 %
    figure(fig.update_layout(title=None), "compare_curves", f"curves {CURVES[metric]}")
with right:
    st.subheader("ROC")
    figure(charts.roc_figure(runtable.roc_curves(evals)).update_layout(title=None), "roc", "ROC")

st.subheader("Confusion matrices")
per_row = 3
for start in range(0, len(evals), per_row):
    for col, ev in zip(st.columns(per_row), evals[start:start + per_row]):
        fig = charts.confusion_figure(ev.summary["confusion"], ev.classes, title=names.run_name(ev.run))
        figure(fig, f"cm_{ev.run.run_id}", f"confusion {names.run_name(ev.run)}", where=col)

error_gallery(evals)
export_section(selected)
