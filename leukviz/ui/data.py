"""Data: choose the dataset (demo, folder, zip); see its classes, sets, subjects, folds, split and sample cells."""

from pathlib import Path

import pandas as pd
import streamlit as st

from leukviz.app import dashboard, datapage
from leukviz.core import paths
from leukviz.datasets import data
from leukviz.models.config import AUGMENT
from leukviz.runstore import names
from leukviz.ui._common import active_dataset, open_dataset

SOURCES = ("Built-in demo", "Folder path", "Zip upload")
SET_TEXT = {"train": "train", "val": "validation (given)", "test": "test (held out)",
            "prelim": "preliminary test (held out)"}


def shown(text: object, spec: str) -> str:
    """text as the browser may see it: an uploaded zip called by its own name (data.as_uploaded)."""
    name = data.upload_name(spec)
    return data.as_uploaded(str(text), spec, name) if name else str(text)


def use(spec: str) -> bool:
    """Make spec the active dataset, on its default split, if it opens; otherwise keep the active one and
    leave the reason for the page to show where the user acted."""
    try:
        ds = open_dataset(spec)
    except (data.DataError, OSError) as e:
        st.session_state["data_error"] = dashboard.plain(shown(e, spec))
        return False
    st.session_state.pop("data_error", None)
    st.session_state["dataset"] = spec
    st.session_state["split"], st.session_state["split_dataset"] = data.default_split(ds), spec
    return True


def chose_source() -> None:
    """One click on the built-in demo selects it."""
    if st.session_state["data_source"] == SOURCES[0]:
        use("demo")


st.title("Data")
current = active_dataset()

state = st.session_state
state.setdefault("data_source", SOURCES[0 if current == "demo" else 2 if data.upload_name(current) else 1])
source = st.segmented_control("Dataset source", SOURCES, required=True, key="data_source", on_change=chose_source)
if source == SOURCES[1]:
    # A form: Enter in the field submits it, as the button does.
    with st.form("data_folder", border=False, enter_to_submit=True):
        path = st.text_input("Folder path", value="" if current == "demo" or data.upload_name(current) else current,
                             placeholder="/data/C-NMC_Leukemia",
                             help="The C-NMC folder as downloaded (training_data/fold_*/all|hem), a folder "
                                  "with one sub-folder per class, or train/ and val/ (valid/, validation/) and "
                                  "test/, each with one sub-folder per class. Enter or the button uses it.")
        if st.form_submit_button("Use this folder", type="primary"):
            if not path.strip():
                state["data_error"] = "Give the path of a dataset folder."
            elif use(str(Path(path.strip()).expanduser())):
                st.rerun()
elif source == SOURCES[2]:
    # any type, its name checked here (data.upload_refusal): Streamlit's own check raises on a NUL byte
    upload = st.file_uploader("Dataset zip", max_upload_size=1024, key="data_zip",
                              help="A zip of the C-NMC folder or of a class-per-folder tree; it is used as soon as "
                                   "it is uploaded. For large datasets give the folder path instead.")
    refusal = data.upload_refusal(upload.name, ("zip",)) if upload is not None else None
    if refusal:
        st.error(dashboard.plain(refusal))
    elif upload is not None and state.get("data_zip_used") != upload.file_id:
        state["data_zip_used"] = upload.file_id  # once per upload: a rerun does not take it again
        with st.spinner(f"Saving and checking {upload.name}…"):
            saved = data.save_upload(upload.getvalue(), paths.uploads(), name=upload.name)
        if use(str(saved)):
            st.rerun()
if state.get("data_error"):
    st.error(state.pop("data_error"))

try:
    ds = open_dataset(current)
except (data.DataError, OSError) as e:
    st.error(f"The active dataset cannot be used: {dashboard.plain(shown(e, current))}")
    st.info("Choose another source above; the built-in demo always works.")
    st.stop()

info = data.inspect(ds)
st.subheader(f"{dashboard.plain(names.dataset_label(current))} · {info['n_train']} training images")
st.caption(f"{ds.kind} layout at {dashboard.plain(shown(info['root'], current))}; fingerprint {info['fingerprint']}")
if info["skipped"]:
    st.warning(f"{info['skipped']} files were skipped (not images, or listed but missing).")

cols = st.columns(len(info["per_class"]) + 2)
for col, (cls, n) in zip(cols, info["per_class"].items()):
    col.metric(f"Class {dashboard.plain(cls)}", n)
cols[-2].metric("Subjects", len(info["per_subject"]) or "unknown",
                help=", ".join(f"{dashboard.plain(c)}: {n}" for c, n in info["subjects_per_class"].items()) or None)
cols[-1].metric("Held-out test (labelled)", info["test"]["n"],
                help="Scored once by every run after its last epoch; never used to choose anything.")
for warning in ds.warnings:
    st.warning(dashboard.plain(warning))

if set(info["per_set"]) != {"train"}:
    st.markdown("**Images per set**")
    sets = pd.DataFrame(info["per_set"]).T
    sets.index = [SET_TEXT.get(s, s) for s in sets.index]
    st.dataframe(sets.rename_axis("set"), width="stretch")

left, right = st.columns(2)
with left:
    st.markdown("**Images per official fold**")
    if info["per_fold"]:
        st.dataframe(pd.DataFrame(info["per_fold"]).T.rename_axis("fold"), width="stretch")
    else:
        st.caption("No official folds (not the C-NMC layout).")
with right:
    st.markdown("**Images per subject**")
    if info["per_subject"]:
        subjects = datapage.subjects_frame(info["per_subject"])
        st.dataframe(subjects, width="stretch", height=220 if len(subjects) > 5 else "auto")
    else:
        st.caption("No subject ids (file names are not C-NMC style): only the leaky image split is possible.")

if info["subjects_per_class"]:
    st.caption("Subjects per class: " + " · ".join(f"{dashboard.plain(c)} {n}"
                                                   for c, n in info["subjects_per_class"].items()))

st.subheader("Validation split")
for warning in datapage.few_subjects_messages(ds):
    st.warning(dashboard.plain(warning), icon=":material/group:")
default = info["default_split"]
st.caption(f"By default a run on this dataset uses **{dashboard.plain(names.SPLIT_CHOICE[default])}** ({default}).")
if st.session_state.get("split_dataset") != current:  # a dataset seen here first starts on its default split
    st.session_state["split"], st.session_state["split_dataset"] = default, current
offer = datapage.split_choice(ds, st.session_state.get("split"))  # the engine says what it can make, and why not
if offer.chosen is None:
    st.error(dashboard.plain(offer.note), icon=":material/rule:")
    st.stop()
if offer.note:
    st.info(dashboard.plain(offer.note), icon=":material/rule:")
split = st.radio("Split used for training", offer.choices, format_func=names.SPLIT_CHOICE.get, horizontal=True,
                 index=offer.choices.index(offer.chosen), key="data_split_radio")
st.session_state["split"] = split
if offer.impossible:
    st.caption("Not possible on this dataset: " + dashboard.plain(offer.impossible_text))
try:
    sp = data.make_split(ds, split)
except data.DataError as e:
    st.error(dashboard.plain(e))
else:
    for message in datapage.split_messages(ds, sp):
        st.warning(dashboard.plain(message), icon=":material/rule:")
    a, b, c = st.columns([1, 1, 3])
    n_train, n_val = sp.summary()["n_train"], sp.summary()["n_val"]
    a.metric("Training images", n_train)
    b.metric("Validation images", n_val, help=f"{n_val / max(1, n_train + n_val):.0%} of the images")
    c.markdown(f"  \n{dashboard.plain(datapage.split_description(sp))}")

st.subheader("Sample cells")
samples = datapage.sample_cells(ds, per_class=6)
for cls, files in samples.items():
    st.markdown(f"**{dashboard.plain(cls)}**")
    st.image([data.load_image(p, 96, crop=False) for p in files], width=96)

st.subheader("What the network is fed")
size, size_source = datapage.preview_size(st.session_state)
c1, c2 = st.columns([2, 1])
mode = c1.segmented_control("Augmentation", [a for a in AUGMENT if a != "none"], default="full",
                            required=True,
                            help="flips: the 8 flips and quarter turns (cells have no orientation); full (the "
                                 "default): plus stain jitter (brightness, contrast and a gain per colour "
                                 "channel), as cells of different people differ in stain.")
crop = c2.toggle("Window around the cell", value=True,
                 help=f"A square of {data.CELL_WINDOW:g} x the image's side centred on the cell, the same for "
                      "every image; off: the whole image. Either way every cell keeps its scale.")
st.caption(f"Cells of the active dataset at the training size ({size} px, {size_source}), exactly as the "
           "network receives them before normalisation: a large cell stays larger than a small one, since cell "
           "size tells the classes apart.")
for cls, files in samples.items():
    original = data.load_image(files[0], size, crop=crop)
    views = datapage.augment_preview(original, mode, n=5, seed=len(files[0]))
    st.image([original] + [v for _, v in views], caption=[f"{dashboard.plain(cls)}: as cached"] + [c for c, _ in views],
             width=max(96, size))
