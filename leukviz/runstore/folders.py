"""Where run folders are: the runs root (runs_root), the folder of a configuration, made when new (run_for),
the run of an id or a unique prefix of one (get_run), every run folder newest first (list_runs) and the
damaged ones; `runs list`'s row of a run read from its files (describe; listings read summary.describe)."""

from __future__ import annotations

import time
from pathlib import Path

from leukviz.core import filenames, paths
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import atomic_write_json
from leukviz.datasets import data
from leukviz.models.config import RunConfig
from leukviz.runstore import runfiles
from leukviz.runstore.runfiles import RunFileError
from leukviz.runstore.runfolder import Run


class RunsFolderError(LeukvizError, OSError):
    """The runs folder cannot be used (a file, not a folder; not writable where a run must be written)."""


def runs_root(runs_dir: str | Path | None = None, create: bool = True) -> Path:
    """The folder of the run folders (--runs-dir, $LEUKVIZ_RUNS or $LEUKVIZ_HOME/runs). Readers pass
    create=False: listing runs needs no write access (a read-only home lists its runs, or none)."""
    root, where = (Path(runs_dir).expanduser(), "--runs-dir") if runs_dir else paths.runs_default()
    blocker = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RunsFolderError(f"the runs folder {root} cannot be used: {blocker} is a file, not a folder "
                              f"(check {where})")
    if create and not root.is_dir():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunsFolderError(f"cannot create the runs folder {root}: {e.strerror or e} (check {where})") from None
    return root


def run_for(cfg: RunConfig, runs_dir: str | Path | None = None, fingerprint: str | None = None) -> Run:
    """The run folder for a config (created with its config.json if new, and config.json written again when
    it is damaged: the config and fingerprint that name the folder are known). The id needs the dataset
    fingerprint."""
    if fingerprint is None:
        fingerprint = data.open_dataset(cfg.data, paths.cache_root()).fingerprint
    run_id = cfg.identity(fingerprint)
    run = Run(runs_root(runs_dir) / run_id)
    run.dir.mkdir(parents=True, exist_ok=True)
    try:
        runfiles.read_config(run.dir)
    except (RunFileError, OSError):
        atomic_write_json(run.dir / filenames.CONFIG, {"run_id": run_id, "config": cfg.to_dict(),
                                                   "dataset_fingerprint": fingerprint, "created": time.time()})
    return run


class NoSuchRun(LeukvizError, KeyError):
    """No run, or several, answer to an id or prefix; the message lists what there is."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def run_folders(root: Path) -> list[Path]:
    """The run folders under root (each with a config.json; hidden ones, the archive among them, left out)."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / filenames.CONFIG).exists()]


def get_run(run_id: str, runs_dir: str | Path | None = None) -> Run:
    """The run of an id, or of a unique prefix of one; NoSuchRun (empty, unknown or ambiguous) otherwise."""
    root = runs_root(runs_dir, create=False)
    run_id = str(run_id).strip()
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise NoSuchRun(f"give a run id (or a unique prefix of one), not {run_id!r}; `runs list` shows them")
    folders = run_folders(root)
    exact = [p for p in folders if p.name == run_id]
    matches = exact or [p for p in folders if p.name.startswith(run_id)]
    if len(matches) > 1:
        raise NoSuchRun(f"run id prefix {run_id!r} is ambiguous: it matches {', '.join(sorted(p.name for p in matches))}; "
                        "give more of the id")
    if not matches:
        known = ", ".join(sorted(p.name for p in folders)[:10]) or "none"
        raise NoSuchRun(f"no run {run_id!r} in {root} (runs: {known})")
    return Run(matches[0])


def list_runs(runs_dir: str | Path | None = None) -> list[Run]:
    """Every run folder (one with a config.json, damaged or not), newest first; a read-only or missing runs
    folder is read as it is, never created."""
    runs = [Run(p) for p in run_folders(runs_root(runs_dir, create=False))]
    return sorted(runs, key=lambda r: r.created, reverse=True)


def describe(run: Run) -> dict:
    """One run for `runs list`: its settings (None where config.json is damaged), state, final metrics, and
    every problem of its files with the repair; damaged: a file it needs is damaged."""
    try:
        cfg = run.config.to_dict()
    except (RunFileError, OSError):
        cfg = {}
    st = run.status
    m = run.final_metrics()
    keys = ("backbone", "preset", "weights", "image_size", "epochs", "split", "data")
    return {"run_id": run.run_id, **{k: cfg.get(k) for k in keys}, "state": st["state"],
            "val_acc": m.get("val_acc"), "val_f1": m.get("val_f1"), "error": st.get("error"),
            "damaged": run.is_damaged, "problems": run.problems}


def damaged_runs(runs_dir: str | Path | None = None) -> list[Run]:
    """The runs that cannot be used because a file they need is damaged (Run.damage says which)."""
    return [r for r in list_runs(runs_dir) if r.is_damaged]
