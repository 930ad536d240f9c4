"""Streamlit helpers shared by the pages: cached dataset and models, active dataset and split, device."""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from leukviz import dashboard, data, layout, runs


@st.cache_data(ttl=60, max_entries=8, show_spinner=False)
def _open(spec: str, cache_dir: str) -> data.Dataset:
    return data.open_dataset(spec, Path(cache_dir))


def open_dataset(spec: str) -> data.Dataset:
    """The dataset (cached a minute: a folder's fingerprint re-stats every file), with a spinner."""
    msg = "Indexing the dataset…"
    if spec == "demo":
        msg = "Opening the built-in demo dataset (generated on first use: about half a minute)…"
    with st.spinner(msg):
        return _open(spec, str(runs.cache_root()))


def active_dataset() -> str:
    return st.session_state.get("dataset", "demo")


def active_split() -> str:
    """The split chosen on the Data page; where the active dataset cannot have it (a given validation folder
    it lacks), the dataset's default (data.default_split)."""
    split = st.session_state.get("split", "subject")
    if split == "given":
        try:
            ds = open_dataset(active_dataset())
        except (data.DataError, OSError):
            return split
        if not ds.has_val:
            return data.default_split(ds)
    return split


def require_dataset() -> data.Dataset:
    """The active dataset, or an error where the user is looking and the page stops there."""
    spec = active_dataset()
    try:
        return open_dataset(spec)
    except (data.DataError, OSError) as e:
        st.error(f"The active dataset cannot be used: {dashboard.plain(e)}")
        st.page_link("views/data.py", label="Choose another dataset on the Data page",
                     icon=":material/folder_open:")
        st.stop()
        raise


@st.cache_resource(max_entries=12, show_spinner=False)
def _load_model(run_dir: str, mtime_ns: int):
    from leukviz import inference

    return inference.load_model(run_dir)


def load_model(run: runs.Run):
    """A finished run's model, loaded once per checkpoint (a retrained run has a new mtime) and shared
    read-only by every session."""
    ckpt = run.dir / layout.CHECKPOINT
    return _load_model(str(run.dir), ckpt.stat().st_mtime_ns)


@st.cache_resource(show_spinner=False)
def warm_imports() -> threading.Thread:
    """Once per server process, in the background: import what the other pages need first (torchvision's
    models for the Train page's weights check and for Predict; the comparison statistics, scipy.stats and
    scikit-learn, for Train's results and Compare), while the first page is being read. Their first visit
    then does not wait seconds for imports."""

    def work() -> None:
        import torchvision.models  # noqa: F401

        from leukviz import compare, inference  # noqa: F401

    thread = threading.Thread(target=work, name="leukviz-warm-imports", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def device_text() -> str:
    from leukviz import engine

    return engine.device_name(engine.pick_device())


def warn_damaged() -> None:
    """A warning for each run left out because a file it needs is damaged, with what is wrong and the repair."""
    for damaged in dashboard.damaged_runs():
        st.warning(f"Damaged, left out: {dashboard.plain(dashboard.damage_text(damaged))}", icon=":material/warning:")
