"""Predict: drop in cell images (or try demo cells) and read every trained model's class and calibrated
confidence, and with several models their ensemble."""

from pathlib import Path

import streamlit as st

from leukviz.app import charts, dashboard, datapage
from leukviz.core import filenames
from leukviz.datasets import data
from leukviz.runstore import names
from leukviz.serving import prediction
from leukviz.serving.explain import colour_bar
from leukviz.ui import _predict_batch
from leukviz.ui._common import (
    active_dataset,
    active_split,
    figure,
    load_model,
    open_dataset,
    page,
    warn_damaged,
)

st.title("Predict")
finished = dashboard.finished_runs()  # damaged runs left out, and named:
warn_damaged()
if not finished:
    st.info("No trained model yet: train one first, then come back to predict with it.")
    st.page_link(page("train"), label="Train a model", icon=":material/model_training:")
    st.stop()

by_id = {r.run_id: r for r in finished}
chosen = st.multiselect("Models", list(by_id), format_func=lambda i: dashboard.run_label(by_id[i]),
                        default=[r.run_id for r in dashboard.default_models(finished, active_dataset(), active_split())],
                        help="Finished runs, each named with the data it was trained on; by default the best "
                             "healthy run or repeat group of each backbone on the active dataset and split (a "
                             "degenerate run, or one from another dataset, only when you choose it).")
for run_id in chosen:
    h = dashboard.run_health(by_id[run_id])
    if h is not None and h.degenerate:
        st.warning(f"{dashboard.plain(names.run_name(by_id[run_id]))} is degenerate "
                   f"({dashboard.plain('; '.join(h.reasons))}): its predictions, and the ensemble's, carry little "
                   "information.", icon=":material/warning:")
if not chosen:
    st.info(dashboard.plain(dashboard.no_default_text(finished, active_dataset())))
    st.stop()

models, stamps = [], []
with st.spinner("Loading the models…"):
    for run_id in chosen:
        try:
            models.append(load_model(by_id[run_id]))
            stamps.append(f"{run_id}:{(by_id[run_id].dir / filenames.CHECKPOINT).stat().st_mtime_ns}")
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            name = dashboard.plain(names.run_name(by_id[run_id]))
            st.error(f"{name} cannot be loaded: {dashboard.plain(e)}")
if not models:
    st.stop()

# any type: each name is checked below (data.upload_refusal), so one odd name (a NUL byte) cannot stop the page
uploads = st.file_uploader("Cell images", accept_multiple_files=True,
                           help="PNG, JPEG, BMP or TIFF; one cell per image, like the training data. "
                                "Several files or a zip of images also give a table to download as CSV.")
show_cam = st.toggle("Show Grad-CAM", value=False, key="predict_cam",
                     help="Where each model looked: about 0.1-1 s per model per image on a CPU. Maps are "
                          f"{prediction.cam_resolution_text()}: models trained at 128 px or more give "
                          "readable maps.")
uploads = uploads or []
KINDS = (*prediction.UPLOAD_TYPES, "zip")
for refusal in filter(None, (data.upload_refusal(f.name, KINDS) for f in uploads)):
    st.warning(dashboard.plain(refusal))
uploads = [f for f in uploads if data.upload_refusal(f.name, KINDS) is None]
zips = [f for f in uploads if f.name.lower().endswith(".zip")]
uploads = [f for f in uploads if f not in zips]

members = _predict_batch.batch_section(models, stamps, uploads, zips) if len(uploads) > 1 or zips else []
if st.button("Try demo cells", icon=":material/science:",
             help="A few labelled cells from the demo dataset's held-out test set."):
    demo = open_dataset("demo")
    st.session_state["demo_draw"] = st.session_state.get("demo_draw", -1) + 1
    st.session_state["demo_cells"] = datapage.demo_cells(demo, n=3, seed=st.session_state["demo_draw"])

# The demo cells first (a click shows them at once, above any uploads), then the uploads.
items = [(f"demo cell {Path(path).name}", path, truth, path)
         for path, truth in st.session_state.get("demo_cells", [])]
classes = models[0].classes
items += [(f.name, f, prediction.truth_of(f.name, classes)[0], f.file_id) for f in uploads]
# the zips' images, in the table's order: each read from its zip (and decoded) only when its page is shown
items += [(name, entry, prediction.truth_of(name, classes)[0], f"{entry.archive.file_id}/{name}")
          for name, entry in members]
if not items:
    st.info("Drop one or more cell images above, or try the demo cells.")
    st.stop()
items = _predict_batch.page_of(items)

# Results kept per file and model set, so a rerun (another widget, a new upload) predicts only what is new.
done = st.session_state.setdefault("predictions", {})
for i, (name, src, truth, file_key) in enumerate(items):
    st.divider()
    key = (file_key, tuple(stamps))
    if key not in done:
        with st.spinner("Predicting…"):
            done[key] = prediction.predict_image(models, name, src)
        while len(done) > 60:
            done.pop(next(iter(done)))
    result = done[key]
    if result.error:
        st.error(f"Could not read {dashboard.plain(name)}: {dashboard.plain(result.error)}",
                 icon=":material/broken_image:")
        continue
    cams = []
    if show_cam:
        cam_key = (file_key, tuple(stamps), "cam")
        if cam_key not in done:
            with st.spinner("Computing Grad-CAM…"):
                done[cam_key] = prediction.cam_views(models, result)
        cams = done[cam_key]
    truth_text = f" · true class **{dashboard.plain(truth)}**" if truth else ""
    st.markdown(f"#### {dashboard.plain(name)}{truth_text}")
    for j, (col, p) in enumerate(zip(st.columns(len(result.results)), result.results)):
        with col.container(border=True):
            st.markdown(f"**{dashboard.plain(p.model)}**")
            left, right = st.columns([1, 2])
            left.image(p.image, caption=f"as fed ({p.image.shape[0]} px)", width="stretch")
            if j < len(cams) and isinstance(cams[j], prediction.CamView):
                left.image(cams[j].overlay, caption=cams[j].caption, width="stretch")
                left.image(colour_bar(), caption="Grad-CAM: low → high", width="stretch")
            elif j < len(cams):
                left.error(f"Grad-CAM failed: {dashboard.plain(cams[j])}")
            right.metric("Prediction", dashboard.plain(p.predicted))
            if prediction.confidence_reliable(p):
                right.markdown(f"{p.confidence:.1%} confidence")
                right.caption(dashboard.plain(prediction.calibration_text(p)))
            else:  # greyed, and says why: a number that means nothing here must not read as one
                right.markdown(f":gray[{p.confidence:.1%} confidence]")
                right.markdown(f":orange[{dashboard.plain(prediction.UNRELIABLE_TEXT)}]")
            if p.ood is None:  # flagged images are said once under the cards (image_ood_text)
                st.caption(dashboard.plain(p.ood_note))
            bars = charts.probability_bars(p.probs).update_layout(margin={"l": 10, "r": 10, "t": 10, "b": 10})
            figure(bars, f"probs_{i}_{p.run_id}", f"probabilities {name} {p.model}", height=180)
    unlike = prediction.image_ood_text(result)
    if unlike:  # once for the image, beside the predictions, never instead of them
        st.warning(dashboard.plain(unlike), icon=":material/warning:")
    mix = prediction.ensemble(result)
    if mix is not None:
        with st.container(border=True):
            st.markdown(f"**{mix.title}**")
            st.metric("Ensemble prediction", dashboard.plain(mix.predicted))
            if mix.reliable:
                st.markdown(dashboard.plain(mix.text))
            else:
                st.markdown(f":gray[{dashboard.plain(mix.text)}]")
                st.markdown(f":orange[{mix.n_unreliable} of {mix.n} models: "
                            f"{dashboard.plain(prediction.UNRELIABLE_TEXT)}]")
            st.caption(dashboard.plain(" · ".join(f"{c} {v:.1%}" for c, v in mix.probs.items())
                                       + f" · {mix.agreement}"))
