"""A run summarised once: what every listing needs of a run (its settings, state, final metrics, health and
reasons, counts, every problem of its files) is computed from the run's files when it finishes (the trainer
calls refresh) or when a run without one is first read, and stored in the run folder (filenames.SUMMARY,
written atomically). It is trusted while the files it came from are unchanged: each source file's size,
mtime_ns and inode are stamped in it, and a summary whose stamps differ from the files on disk is computed
again (and stored again). A listing of 1,000 runs then reads 1,000 small JSON files and stats their sources,
never a predictions file.

Only runs at rest are stored (not queued or running: their files change by the second). The state of a run
that is not finished is never taken from the summary: it is read live (runs.read_status: the lock, the launch),
the rest of its summary still comes from the files. SummarisedRun is a runs.Run whose listing properties read
the summary, so a page or command handed one draws from it without knowing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from leukviz.core import events, filenames
from leukviz.core.storage import atomic_write_json, read_json, read_jsonl
from leukviz.models.config import RunConfig
from leukviz.runstore import runfiles
from leukviz.runstore.checks import check
from leukviz.runstore.folders import run_folders, runs_root
from leukviz.runstore.runfiles import Problem, RunFileError
from leukviz.runstore.runfolder import Run
from leukviz.runstore.states import STATES, State
from leukviz.runstore.status import read_status, recorded_status

VERSION = 1  # a stored summary of another version is computed again
# The files a summary is computed from: a change to any of them (written, replaced, appearing, removed)
# makes the stored summary stale.
SOURCES = (filenames.CONFIG, filenames.STATUS, filenames.METRICS, filenames.SIDECAR, filenames.CHECKPOINT,
           filenames.PREDICTIONS, filenames.TEST_PREDICTIONS, filenames.CALIBRATION, filenames.RESUME)
_MEMO: dict[str, tuple[dict, dict]] = {}  # run folder -> (stamps, summary): this process's copy
_MEMO_MAX = 20_000


def stamps(run_dir: Path) -> dict[str, list[int] | None]:
    """[size, mtime_ns, inode] of each source file, None for one that is not there. An atomic replace is a new
    inode, so a rewrite of the same size within one clock tick is still a change."""
    out: dict[str, list[int] | None] = {}
    for name in SOURCES:
        try:
            st = os.stat(run_dir / name)
        except OSError:
            out[name] = None
            continue
        out[name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def _problem_dict(p: Problem) -> dict:
    return {"file": p.file, "what": p.what, "repair": p.repair}


def compute(run: Run) -> dict:
    """The summary of a run from its files (the costly part: every file checked, the predictions read)."""
    run = Run(run.dir)  # the files themselves, never a summary
    obj = read_json(run.dir / filenames.CONFIG, {})
    try:
        cfg = runfiles.check_config(obj)[0].to_dict()
        config_error = None
    except RunFileError as e:
        cfg, config_error = None, f"run {run.run_id}: {filenames.CONFIG} is damaged: {e}"
    status = recorded_status(run)
    problems = check(run)
    odd = runfiles.not_regular_files(run.dir)  # as Run.damage: a pipe or device in place of any run file
    damage = [p for p in problems if p.file in runfiles.REQUIRED or p.file == filenames.TEST_PREDICTIONS
              or p.file in odd]
    usable_events = [e for e in read_jsonl(run.dir / filenames.METRICS) if events.problem(e) is None]
    meta = run.meta()
    out = {"version": VERSION, "run_id": run.run_id, "info": obj if isinstance(obj, dict) else {},
           "config": cfg, "config_error": config_error, "status": status, "state": status["state"],
           "meta": meta, "final_metrics": dict(meta.get("metrics") or {}),
           "has_checkpoint": run.has_checkpoint, "can_resume": run.can_resume,
           "problems": [_problem_dict(p) for p in problems], "damage": [_problem_dict(p) for p in damage],
           "counts": {"events": len(usable_events), "epochs": len(events.epoch_events(usable_events)),
                      "skipped_events": len(run.skipped_events()),
                      "val_cells": _rows(run.dir / filenames.PREDICTIONS),
                      "test_cells": _rows(run.dir / filenames.TEST_PREDICTIONS)},
           "health": None}
    if status["state"] == "finished" and not any(p.file in runfiles.REQUIRED for p in damage):
        from leukviz.scoring import health

        out["health"] = health.of_run_dir(run.dir).to_dict()
    return out


def _rows(path: Path) -> int | None:
    """The data lines of a CSV (None when there is none): what the pages count as scored cells."""
    try:
        with open(path, "rb") as fh:
            return max(0, sum(1 for line in fh if line.strip()) - 1)
    except OSError:
        return None


def _computed(run: Run) -> dict:
    """compute(run) with the stamps of the files it came from, taken before it read them: a file written
    meanwhile (a trainer still at work) leaves the summary stale, to be computed again. calibration.json is
    the exception: computing the health fits and caches it (calibration.run_calibration), and that write must
    not make the new summary stale at once."""
    before = stamps(run.dir)
    summary = compute(run)
    after = stamps(run.dir)
    if all(before[k] == after[k] for k in SOURCES if k != filenames.CALIBRATION):
        before = after
    return {**summary, "sources": before}


def _fresh(stored: Any, now: dict) -> bool:
    return isinstance(stored, dict) and stored.get("version") == VERSION and stored.get("sources") == now \
        and isinstance(stored.get("status"), dict) and stored.get("state") in STATES + ("new",)


def _store(run: Run, summary: dict) -> None:
    """Write the summary beside the run's files; a read-only folder keeps none (it is computed per process)."""
    try:
        atomic_write_json(run.dir / filenames.SUMMARY, summary)
    except OSError:
        pass


def stored(run: Run) -> dict:
    """The run's summary as recorded (its recorded state, not the live one): this process's copy or the stored
    file while the sources are unchanged, else computed from the files and stored (when the run is at rest)."""
    now = stamps(run.dir)
    key = str(run.dir)
    memo = _MEMO.get(key)
    if memo is not None and memo[0] == now:
        return memo[1]
    summary = read_json(run.dir / filenames.SUMMARY, None)
    if not _fresh(summary, now):
        summary = _computed(run)
        now = summary["sources"]
        if summary["state"] not in (State.QUEUED, State.RUNNING):
            _store(run, summary)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[key] = (now, summary)
    return summary


def _summary_of(run: Run) -> dict:
    """A SummarisedRun's summary (held by its listing, or read afresh); stored(run) for any other Run."""
    return run.summary if isinstance(run, SummarisedRun) else stored(run)


def refresh(run: Run) -> dict:
    """Compute and store the summary now (the trainer, once a run has finished)."""
    _MEMO.pop(str(run.dir), None)
    summary = _computed(run)
    _store(run, summary)
    _MEMO[str(run.dir)] = (summary["sources"], summary)
    return summary


def status(run: Run) -> dict:
    """The run's status: the summary's for a finished run (nothing about it is live any more), read live
    (runs.read_status) otherwise."""
    s = _summary_of(run)
    return s["status"] if s["state"] == State.FINISHED else read_status(run)


def health(run: Run):
    """A finished run's health (health.Health) from its summary; None for a run that is not finished."""
    from leukviz.scoring.health import Health

    h = _summary_of(run)["health"]
    if h is None or status(run)["state"] != State.FINISHED:
        return None
    return Health(h["health"], tuple(h["health_reasons"]))


_CONFIGS: dict[str, tuple[dict, RunConfig]] = {}  # the RunConfig built from a summary's config, per run folder


class SummarisedRun(Run):
    """A runs.Run whose listing properties (config, state, metrics, problems, health) come from its summary,
    trusted while its files are unchanged. Made directly, every access stats its files; listed (list_runs), a
    finished run's summary is held as the listing read it: one stat of each file per listing, not per property
    (a change after it is seen by the next listing; a run not finished is read afresh at every access, its
    state always live). Anything else reads the files, as a Run."""

    _held: dict | None = None  # the summary its listing read, for a run finished then

    @classmethod
    def listed(cls, folder: Path) -> SummarisedRun:
        """The run of a folder as a listing reads it: its sources stat'ed once, a finished run's summary held."""
        run = cls(folder)
        s = stored(run)
        if s["state"] == State.FINISHED:
            run._held = s
        return run

    @property
    def summary(self) -> dict:
        return self._held if self._held is not None else stored(self)

    @property
    def config(self) -> RunConfig:
        s = self.summary
        if s["config"] is None:
            raise RunFileError(s["config_error"] or f"run {self.run_id}: {filenames.CONFIG} is damaged")
        memo = _CONFIGS.get(str(self.dir))
        if memo is None or memo[0] is not s["config"]:
            memo = (s["config"], runfiles.check_config(s["info"])[0])
            _CONFIGS[str(self.dir)] = memo
        return memo[1]

    @property
    def info(self) -> dict:
        return self.summary["info"]

    def meta(self) -> dict:
        return dict(self.summary["meta"])

    def final_metrics(self) -> dict:
        return dict(self.summary["final_metrics"])

    @property
    def status(self) -> dict:
        return status(self)

    @property
    def state(self) -> str:
        return self.status["state"]

    @property
    def damage(self) -> list[Problem]:
        return [Problem(**p) for p in self.summary["damage"]]

    @property
    def problems(self) -> list[str]:
        return [str(Problem(**p)) for p in self.summary["problems"]]

    @property
    def has_checkpoint(self) -> bool:
        return bool(self.summary["has_checkpoint"])

    @property
    def health(self):
        return health(self)

    def counts(self) -> dict:
        return dict(self.summary["counts"])


def list_runs(runs_dir: str | Path | None = None) -> list[SummarisedRun]:
    """Every run folder (runs.list_runs: damaged ones too), newest first, each read through its summary: a
    snapshot, each finished run's files stat'ed once (SummarisedRun.listed); list again to see later changes."""
    folders = run_folders(runs_root(runs_dir, create=False))
    out = [SummarisedRun.listed(p) for p in folders]
    return sorted(out, key=lambda r: _created(r.info), reverse=True)


def _created(info: dict) -> float:
    c = info.get("created")
    return float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) and c == c else 0.0


def describe(run: Run) -> dict:
    """One run for `runs list` (runs.describe's fields) and its health, from the summary."""
    s = _summary_of(run)
    cfg = s["config"] or {}
    st = status(run)
    keys = ("backbone", "preset", "weights", "image_size", "epochs", "split", "data")
    m = s["final_metrics"]
    damaged = bool(s["damage"])
    h = s["health"] if st["state"] == State.FINISHED and s["config"] is not None and not damaged else None
    return {"run_id": run.run_id, **{k: cfg.get(k) for k in keys}, "state": st["state"],
            "val_acc": m.get("val_acc"), "val_f1": m.get("val_f1"), "error": st.get("error"),
            "damaged": damaged, "problems": [str(Problem(**p)) for p in s["problems"]],
            "health": h["health"] if h else None, "health_reasons": list(h["health_reasons"]) if h else [],
            "counts": dict(s["counts"])}
