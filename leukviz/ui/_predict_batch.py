"""The Predict page's batch: the table of every uploaded image (predicted a chunk at a time, only its rows
kept) with its summary, and the cards' pages (a page of images at a time, decoded when shown). Kept apart so
that the page itself stays short."""

import tempfile
from pathlib import Path

import streamlit as st

from leukviz.app import dashboard
from leukviz.core import paths
from leukviz.serving import prediction

PAGE_SIZES = (6, 12, 24, 48)  # cards per page; the table has every image whatever the page


@st.cache_data(max_entries=16, show_spinner=False)
def own_images(_lm, key: str) -> set[str] | None:
    """The run's own training and validation images by content (key: run id and checkpoint time)."""
    return prediction.own_images(_lm, paths.cache_root())


def zip_entries(zips: list, folder: Path) -> list[tuple[str, prediction.ZipEntry]]:
    """Every uploaded zip's images, (shown name 'cells.zip/all/x.png', its entry), checked once per upload."""
    listed = st.session_state.setdefault("zip_members", {})
    for f in zips:
        if f.file_id not in listed:
            listed[f.file_id] = prediction.zip_members(f.getvalue(), folder)
    for gone in set(listed) - {f.file_id for f in zips}:  # a removed upload's list goes with it
        listed.pop(gone)
    return [(f"{f.name}/{m}", prediction.ZipEntry(f, m)) for f in zips for m in listed[f.file_id]]


def batch_section(models: list, stamps: list[str], uploads: list, zips: list) -> list[tuple[str, object]]:
    """The table of every uploaded image (loose files and zips' images) by every model, made once per set of
    uploads and models, with its summary above it and its CSV; returns the zips' images, (name, entry)."""
    st.subheader("All uploaded images")
    with tempfile.TemporaryDirectory(prefix="leukviz-batch-") as tmp:
        members = zip_entries(zips, Path(tmp))
    batch_key = (tuple(f.file_id for f in uploads + zips), tuple(stamps))
    if st.session_state.get("batch_key") != batch_key:
        items = [(f.name, f) for f in uploads] + members
        with st.spinner(f"Predicting {len(items):,} images with every model…"):
            try:
                with st.spinner("Checking which images the models trained or validated on…"):
                    seen = {lm.run_dir.name: own_images(lm, stamp) for lm, stamp in zip(models, stamps)}
                st.session_state["batch_table"] = prediction.predict_sources(models, items, seen)
            except (OSError, RuntimeError, ValueError, KeyError) as e:
                st.session_state["batch_table"] = None
                st.error(f"The table could not be made: {dashboard.plain(e)}")
        st.session_state["batch_key"] = batch_key
    table = st.session_state.get("batch_table")
    if table is not None:
        _summary(table, models)
        _table(table)
    return members


def _summary(table, models: list) -> None:
    """The answer first: counts per class and, where the truth is known, accuracy; per subject."""
    summary = prediction.batch_summary(table, models[0].classes)
    st.dataframe(prediction.summary_frame(summary), hide_index=True, width="stretch",
                 column_config={"Images": st.column_config.TextColumn(
                     help="Every readable image, then (when any) without those unlike the model's training "
                          "data, and without its own training or validation images"),
                                "Known": st.column_config.NumberColumn(help="Images whose true class is known")})
    sentences = prediction.summary_sentences(summary)
    if sentences:  # what the figures rest on: one box, a line per model and fact
        st.warning("\n\n".join(dashboard.plain(x) for x in sentences), icon=":material/warning:")
    st.caption("Known class: from a class folder on the image's path (all/, hem/) or a C-NMC file name. "
               "A model's own training or validation images are found by their bytes.")
    subjects = prediction.subjects_frame(summary)
    if len(subjects):
        st.markdown("**Per subject** (C-NMC file names): the share of each person's cells called `all`")
        st.dataframe(subjects, hide_index=True, width="stretch",
                     column_config={"Called all": st.column_config.NumberColumn(format="percent")})


def _table(table) -> None:
    """Every image's row (what fits a laptop screen; the CSV has every column) and the CSV."""
    st.dataframe(table, hide_index=True, width="stretch",
                 column_order=[c for c in ("file", "model", "predicted", "confidence", "ood", "seen", "error")
                               if c in table.columns],
                 column_config={"file": st.column_config.TextColumn("File"),
                                "model": st.column_config.TextColumn("Model"),
                                "predicted": st.column_config.TextColumn("Predicted"),
                                "ood": st.column_config.CheckboxColumn(
                                    "Unlike training", help="Out of distribution: the confidence is not reliable"),
                                "seen": st.column_config.CheckboxColumn(
                                    "Its own", help="One of the model's own training or validation images"),
                                "error": st.column_config.TextColumn("Error"),
                                "confidence": st.column_config.NumberColumn(
                                    "Confidence", format="percent", help="Calibrated on validation"),
                                "confidence_raw": st.column_config.NumberColumn("Raw confidence",
                                                                                format="percent")})
    st.caption("The CSV also has each class's probability (calibrated and raw), the temperature and why an "
               "image was called unlike the training images.")
    st.download_button("Download the table (CSV)", prediction.table_csv(table), file_name="predictions.csv",
                       mime="text/csv", icon=":material/download:", key="batch_csv")


def page_of(items: list) -> list:
    """The items of the page of cards shown: page size and page chosen above the cards (both kept across
    reruns; the page held within the pages there are), and which images they are."""
    if len(items) <= PAGE_SIZES[0]:
        return items
    state = st.session_state
    size = state.get("predict_page_size", PAGE_SIZES[0])
    pages = (len(items) + size - 1) // size
    if state.get("predict_page", 1) > pages:  # fewer images than before (an upload removed): the last page
        state["predict_page"] = pages
    left, right, rest = st.columns([1, 1, 3], vertical_alignment="bottom")
    left.selectbox("Cards per page", PAGE_SIZES, key="predict_page_size")
    shown = right.number_input(f"Page (of {pages})", 1, pages, key="predict_page")
    first = (shown - 1) * size
    rest.caption(f"Images {first + 1:,}–{min(first + size, len(items)):,} of {len(items):,}: cards for one page at "
                 "a time; the table above has every image.")
    return items[first:first + size]
