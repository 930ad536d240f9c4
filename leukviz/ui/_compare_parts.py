"""The Compare page's parts that only draw or cache: the cached evaluations of runs, the error gallery and the
export section (kept apart so that the page itself stays short)."""

import functools
import tempfile
from pathlib import Path

import streamlit as st

from leukviz.app import dashboard
from leukviz.comparison import calibrationrows, compare, gallery, runtable
from leukviz.comparison.evaluation import Evaluation, evaluate_run
from leukviz.core import filenames
from leukviz.runstore import names, runs
from leukviz.ui._common import load_model


@st.cache_data(max_entries=64, show_spinner=False)
def evaluation(run_dir: str, stamp: tuple[int, int]) -> Evaluation:
    return evaluate_run(runs.Run(Path(run_dir)))


def run_stamp(run: runs.Run) -> tuple[int, int]:
    """What a run's cached numbers depend on: its checkpoint and its test predictions (written later)."""
    test = run.dir / filenames.TEST_PREDICTIONS
    return (run.dir / filenames.CHECKPOINT).stat().st_mtime_ns, test.stat().st_mtime_ns if test.exists() else 0


@st.cache_data(max_entries=64, show_spinner=False)
def calibration(run_dir: str, stamp: tuple[int, int]) -> dict:
    return calibrationrows.calibration_of(evaluation(run_dir, stamp))


@st.cache_data(max_entries=16, show_spinner=False)
def uncertainty(run_dirs: tuple[tuple[str, tuple[int, int]], ...]) -> dict:
    """compare.build_report of the runs (their folders and checkpoint times, so a retrain recomputes it)."""
    return compare.build_report([evaluation(d, stamp) for d, stamp in run_dirs]).to_dict()


@st.cache_data(max_entries=64, show_spinner=False)
def seconds_per_image(run_dir: str, stamp: tuple[int, int]) -> float:
    return runtable.time_per_image(load_model(runs.Run(Path(run_dir))))



def error_gallery(evals: list[Evaluation]) -> None:
    """Each run's most confidently wrong validation cells, then its least sure right ones."""
    st.subheader("Error gallery")
    st.caption("Each run's most confidently wrong validation cells (then its least sure right ones), as the "
               "model saw them.")
    for ev in evals:
        with st.expander(dashboard.plain(names.run_name(ev.run)), expanded=len(evals) == 1):
            try:
                cells = gallery.error_gallery(ev.run, k=8)
            except (OSError, KeyError, ValueError) as e:
                st.error(f"No gallery for this run: {dashboard.plain(e)}")
                continue
            if not cells:
                st.info("No validation predictions to show.")
            for start in range(0, len(cells), 4):
                for col, cell in zip(st.columns(4), cells[start:start + 4]):
                    if cell.image is None:
                        col.error(dashboard.plain(cell.error))
                        col.caption(dashboard.plain(cell.caption))
                    else:
                        col.image(cell.image, caption=dashboard.plain(cell.caption), width="stretch")


def export_section(selected: list[runs.Run]) -> None:
    """The checkpoint of each selected run, and its ONNX export on demand."""
    from leukviz.serving import export

    st.subheader("Export")
    st.caption("The safetensors checkpoint is the run's own file; ONNX is exported on demand (a minute or so on "
               "a CPU) and checked against PyTorch with ONNX Runtime.")
    exports = st.session_state.setdefault("onnx_exports", {})
    for r in selected:
        stamp = (r.dir / filenames.CHECKPOINT).stat().st_mtime_ns
        with st.container(border=True):
            st.markdown(f"**{dashboard.plain(names.run_name(r))}**")
            cols = st.columns(3)
            cols[0].download_button("Checkpoint (safetensors)", functools.partial(export.checkpoint_bytes, r),
                                    file_name=f"{r.config.backbone}-{r.run_id}.safetensors",
                                    mime="application/octet-stream", on_click="ignore",
                                    icon=":material/download:", key=f"st_{r.run_id}")
            key = (r.run_id, stamp)
            if cols[1].button("Export to ONNX", key=f"onnx_{r.run_id}", icon=":material/upload_file:"):
                with st.spinner("Exporting to ONNX and checking it against PyTorch…"), \
                        tempfile.TemporaryDirectory(prefix="leukviz-onnx-") as tmp:
                    try:
                        exports[key] = export.export_onnx(r, Path(tmp))
                    except Exception as e:  # noqa: BLE001 (export raises ExportError, onnx and torch errors alike)
                        st.error(f"ONNX export failed: {dashboard.plain(e)}")
            if key in exports:
                blob, res = exports[key]
                cols[2].download_button("Download ONNX", blob, file_name=f"{r.config.backbone}-{r.run_id}.onnx",
                                        mime="application/octet-stream", on_click="ignore",
                                        icon=":material/download:", key=f"onnx_dl_{r.run_id}")
                st.caption(dashboard.plain(export.export_text(res)))
