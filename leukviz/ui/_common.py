"""Streamlit helpers shared by the pages: cached dataset and models, active dataset and split, device."""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from leukviz.app import charts, dashboard
from leukviz.core import filenames, paths
from leukviz.datasets import data
from leukviz.runstore import runs

UI = Path(__file__).resolve().parent


def page(name: str) -> str:
    """A page's script by name ('train'), as st.Page and st.page_link take it, wherever the entry script is:
    `streamlit run app.py` in a checkout or `leukviz app` from the installed package."""
    return str(UI / f"{name}.py")

# Choices that outlive their widgets. Streamlit forgets a widget's value when a run does not draw it (a visit
# to another page); saving each again at the top of every run makes it the session's, so it survives.
KEPT = tuple(dashboard.URL_SETTINGS.values()) + ("train_weights_file", "train_nproc", "figure_format")


def keep_choices() -> None:
    """Every run, before any page: the user's choices (KEPT) saved again, and on a session's first run the
    dataset, split and Train settings that the URL names (a reload or a bookmark)."""
    state = st.session_state
    if not state.get("url_read"):
        state["url_read"] = True
        values, notes = dashboard.read_url(st.query_params)
        for key, value in values.items():
            state[key] = value
        state["url_notes"] = notes
        if "split" in state:
            state["split_dataset"] = state.get("dataset", "demo")  # the URL's split is for the URL's dataset
    for key in KEPT:
        if key in state:
            state[key] = state[key]
    for note in state.pop("url_notes", []):  # shown on the page the link opened, once
        st.warning(dashboard.plain(note), icon=":material/link_off:")


def figure(fig, key: str, name: str, where=None, **kwargs) -> None:
    """A Plotly figure on a page, its camera button saving it as PNG or SVG (the sidebar's choice), named
    after `name`."""
    config = charts.figure_config(name, st.session_state.get("figure_format", "png"))
    (where or st).plotly_chart(fig, key=key, config=config, **kwargs)


def dataset_to_url() -> None:
    """The active dataset and split in the URL of every page (a reload keeps them)."""
    st.query_params.update(dashboard.settings_to_url(st.session_state, dashboard.URL_DATA))


@st.cache_data(ttl=60, max_entries=8, show_spinner=False)
def _open(spec: str, cache_dir: str) -> data.Dataset:
    return data.open_dataset(spec, Path(cache_dir))


def open_dataset(spec: str) -> data.Dataset:
    """The dataset (cached a minute: a folder's fingerprint re-stats every file), with a spinner."""
    refusal = paths.data_refusal(spec)  # LEUKVIZ_DATA_ROOTS: the one gate for the URL, the folder field and state
    if refusal:
        raise data.DataError(refusal)
    msg = "Indexing the dataset…"
    if spec == "demo":
        msg = "Opening the built-in demo dataset (generated on first use: about half a minute)…"
    with st.spinner(msg):
        return _open(spec, str(paths.cache_root()))


def active_dataset() -> str:
    return st.session_state.get("dataset", "demo")


def active_split() -> str:
    """The split chosen on the Data page; where the active dataset cannot make it (data.usable_split: a given
    validation folder it lacks or one missing a class, official folds it does not have, a subject split
    without subjects), the dataset's default. The Train page says so when they differ."""
    split = st.session_state.get("split", "subject")
    try:
        ds = open_dataset(active_dataset())
    except (data.DataError, OSError):
        return split
    return wanted_split(ds)[0] or split


def wanted_split(ds: data.Dataset) -> tuple[str | None, str | None]:
    """(the split a run on ds uses, why the Data page's choice cannot be made): data.usable_split of the
    session's choice; (None, why) when ds can make no split at all."""
    return data.usable_split(ds, st.session_state.get("split", "subject"))


def require_dataset() -> data.Dataset:
    """The active dataset, or an error where the user is looking and the page stops there."""
    spec = active_dataset()
    try:
        return open_dataset(spec)
    except (data.DataError, OSError) as e:
        st.error(f"The active dataset cannot be used: {dashboard.plain(e)}")
        st.page_link(page("data"), label="Choose another dataset on the Data page",
                     icon=":material/folder_open:")
        st.stop()
        raise


@st.cache_resource(max_entries=12, show_spinner=False)
def _load_model(run_dir: str, mtime_ns: int):
    from leukviz.serving import inference

    return inference.load_model(run_dir)


def load_model(run: runs.Run):
    """A finished run's model, loaded once per checkpoint (a retrained run has a new mtime) and shared
    read-only by every session."""
    ckpt = run.dir / filenames.CHECKPOINT
    return _load_model(str(run.dir), ckpt.stat().st_mtime_ns)


@st.cache_resource(show_spinner=False)
def warm_imports() -> threading.Thread:
    """Once per server process, in the background: import what the other pages need first (torchvision's
    models for the Train page's weights check and for Predict; the comparison statistics, scipy.stats and
    scikit-learn, for Train's results and Compare), while the first page is being read. Their first visit
    then does not wait seconds for imports."""

    def work() -> None:
        import torchvision.models  # noqa: F401

        from leukviz.comparison import compare  # noqa: F401
        from leukviz.serving import inference  # noqa: F401

    thread = threading.Thread(target=work, name="leukviz-warm-imports", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def device_text() -> str:
    from leukviz.models import devices

    return devices.device_name(devices.pick_device())


def warn_damaged() -> None:
    """A warning for each run left out because a file it needs is damaged, with what is wrong and the repair."""
    for damaged in dashboard.damaged_runs():
        st.warning(f"Damaged, left out: {dashboard.plain(dashboard.damage_text(damaged))}", icon=":material/warning:")
