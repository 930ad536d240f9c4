"""Run folders: run ids, the status lifecycle, the cache lookup, one-process-per-run locking, launching and stopping."""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from leukviz.core import events, layout, paths
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import append_jsonl, atomic_write_json, read_json, read_jsonl
from leukviz.datasets import data
from leukviz.models.config import RunConfig
from leukviz.runstore import runfiles
from leukviz.runstore.runfiles import Problem, RunFileError


class State(str, enum.Enum):
    """A run's state. A trainer writes the first six into status.json; reading a run's status (read_status)
    adds two: NEW (never started) and STARTING (a process was launched for it and has not taken the run yet).
    Nothing else. A str: equal to its value, and written as it in JSON."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    NEW = "new"
    STARTING = "starting"

    __str__ = str.__str__


STATES = tuple(s.value for s in (State.QUEUED, State.RUNNING, State.FINISHED, State.FAILED, State.STOPPED,
                                  State.INTERRUPTED))  # the ones status.json may hold
ACTIVE = (State.STARTING, State.QUEUED, State.RUNNING)  # a process has the run, or is about to: attach, never launch
RESUMABLE = (State.STOPPED, State.INTERRUPTED)
PLANS = ("cached", "attach", "resume", "train")
LAUNCH_GRACE = 120.0  # seconds a launched process may take to start (import torch) and take the run lock


class AlreadyRunning(LeukvizError, RuntimeError):
    """Another process holds this run's lock."""


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


@dataclass
class Run:
    """A view of one run folder; every property re-reads the files (another process writes them)."""

    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def config(self) -> RunConfig:
        """The run's configuration; RunFileError when config.json is damaged (runfiles.check_config)."""
        try:
            return runfiles.read_config(self.dir)[1]
        except RunFileError as e:
            raise RunFileError(f"run {self.run_id}: {layout.CONFIG} is damaged: {e}") from None

    @property
    def info(self) -> dict:
        """config.json as an object ({} when it is not one); its values checked only through .config."""
        obj = read_json(self.dir / layout.CONFIG, {})
        return obj if isinstance(obj, dict) else {}

    def meta(self) -> dict:
        """model.json (the sidecar) as runfiles.read_sidecar checks it; {} when it is missing or damaged (what
        is wrong is named by Run.problems). The one reader of the sidecar above the run store."""
        try:
            return runfiles.read_sidecar(self.dir)
        except (RunFileError, OSError):
            return {}

    @property
    def created(self) -> float:
        c = self.info.get("created")
        return float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) and c == c else 0.0

    @property
    def damage(self) -> list[Problem]:
        """What makes this run unusable (a required file damaged): empty for a sound run."""
        return [p for p in check(self) if p.file in runfiles.REQUIRED or p.file == layout.TEST_PREDICTIONS]

    @property
    def problems(self) -> list[str]:
        """Every damaged file of the run, with what is wrong and the repair (damage and notes alike)."""
        return [str(p) for p in check(self)]

    @property
    def is_damaged(self) -> bool:
        return bool(self.damage)

    @property
    def is_usable(self) -> bool:
        """Finished, with a checkpoint and every file a finished run's readers need sound: Predict and Compare
        take these runs."""
        return self.state == "finished" and self.has_checkpoint and not self.damage

    @property
    def status(self) -> dict:
        return read_status(self)

    def unfinished(self) -> str:
        """Why this run's model is not a finished one (empty when it is): a stopped or interrupted run keeps the
        checkpoint of the epoch it reached, and what is exported or scored from it must say so."""
        state = self.state
        if state == "finished":
            return ""
        try:
            done = runfiles.read_sidecar(self.dir).get("epoch")
            of = self.config.epochs
        except (RunFileError, OSError):
            done = of = None
        reached = f"its model is from epoch {done} of {of}" if done is not None and of else "it did not finish"
        return f"run {self.run_id} is {state}, not finished: {reached}"

    @property
    def state(self) -> str:
        return self.status["state"]

    def events(self) -> list[dict]:
        """The usable events of metrics.jsonl: a line that is not JSON, or an event without the fields its
        readers need (events.FIELDS), is skipped (skipped_events counts them)."""
        return [e for e in read_jsonl(self.dir / layout.METRICS) if events.problem(e) is None]

    def skipped_events(self) -> list[str]:
        """Why lines of metrics.jsonl were skipped, one entry per line."""
        out = []
        try:
            lines = (self.dir / layout.METRICS).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return out
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                out.append(f"line {i} is not JSON")
                continue
            why = events.problem(ev) if isinstance(ev, dict) else f"a JSON {type(ev).__name__}"
            if why:
                out.append(f"line {i}: {why}")
        return out

    def epochs(self) -> list[dict]:
        """Epoch events, one per epoch (after a resume the later record wins)."""
        return events.epoch_events(self.events())

    def lock(self) -> FileLock:
        return FileLock(str(self.dir / layout.RUN_LOCK))

    def is_locked(self) -> bool:
        """Whether a process holds the run lock. Creates nothing: a run folder nobody has locked yet (no
        lock file) is not locked, and a read-only folder is read with a read-only lock probe."""
        path = self.dir / layout.RUN_LOCK
        if not path.exists():
            return False
        return _lock_held(path, self.lock())

    @property
    def has_checkpoint(self) -> bool:
        return (self.dir / layout.CHECKPOINT).exists() and (self.dir / layout.SIDECAR).exists()

    def sidecar(self) -> dict:
        """model.json, checked (runfiles.check_sidecar); RunFileError when it is missing or damaged."""
        return runfiles.read_sidecar(self.dir)

    def final_metrics(self) -> dict:
        """The kept epoch's validation metrics from model.json; {} when it is missing or damaged."""
        try:
            return dict(self.sidecar().get("metrics") or {})
        except RunFileError:
            return {}

    @property
    def can_resume(self) -> bool:
        return (self.dir / layout.RESUME).exists()


def _lock_held(path: Path, lock: FileLock) -> bool:
    """Whether another process holds an existing lock file, probed without write access where possible."""
    try:
        import fcntl
    except ImportError:  # not POSIX: filelock's own probe
        fcntl = None
    if fcntl is None:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def check(run: Run) -> list[Problem]:
    """Every damaged file of a run folder, checked against its schema (runfiles): what is wrong and the
    repair. The files a finished run's readers need (runfiles.REQUIRED) are checked once it says finished."""
    out: list[Problem] = []
    delete = f"delete the folder {run.dir}"
    try:
        runfiles.read_config(run.dir)
    except (RunFileError, OSError) as e:
        out.append(Problem(layout.CONFIG, str(e), f"{delete}, or train its configuration again "
                                                  "(config.json is rewritten)"))
    st = read_json(run.dir / layout.STATUS, None)
    if (run.dir / layout.STATUS).exists() and not (isinstance(st, dict) and st.get("state") in STATES):
        out.append(Problem(layout.STATUS, "not a run status", f"it reads as interrupted; `train --resume "
                                                              f"{run.run_id}` rewrites it"))
    elif isinstance(st, dict) and runfiles.clean_status(st)[1]:
        out.append(Problem(layout.STATUS, ", ".join(runfiles.clean_status(st)[1]) + " (ignored)",
                           "the next training rewrites it"))
    skipped = run.skipped_events()
    if skipped:
        out.append(Problem(layout.METRICS, f"{len(skipped)} line(s) skipped ({'; '.join(skipped[:3])})",
                           "the curves leave them out"))
    finished = isinstance(st, dict) and st.get("state") == "finished"
    if finished:
        out += _check_results(run, delete)
    if (run.dir / layout.RESUME).exists():
        try:
            runfiles.check_resume_state(run.dir / layout.RESUME)
        except RunFileError as e:
            out.append(Problem(layout.RESUME, str(e), f"the model is intact, only resuming needs it: delete {layout.RESUME}"
                               if finished else f"it cannot resume: delete {layout.RESUME} and train it again"))
    return out


def _check_results(run: Run, delete: str) -> list[Problem]:
    """The files of a finished run: the sidecar, the weights, the predictions."""
    retrain = f"train its configuration again with --force, or {delete}"
    try:
        sidecar = runfiles.check_sidecar(runfiles._load(run.dir / layout.SIDECAR))
    except FileNotFoundError:
        return [Problem(layout.SIDECAR, "missing", retrain)]
    except (RunFileError, OSError) as e:
        return [Problem(layout.SIDECAR, str(e), retrain)]
    out = []
    try:
        runfiles.check_weights(run.dir / layout.CHECKPOINT, sidecar)
    except FileNotFoundError:
        out.append(Problem(layout.CHECKPOINT, "missing", retrain))
    except (RunFileError, OSError) as e:
        out.append(Problem(layout.CHECKPOINT, str(e), retrain))
    for name, repair in ((layout.PREDICTIONS, retrain),
                         (layout.TEST_PREDICTIONS, f"delete {layout.TEST_PREDICTIONS}: Compare scores the test set again")):
        path = run.dir / name
        if name == layout.TEST_PREDICTIONS and not path.exists():
            continue
        try:
            runfiles.check_predictions(path, sidecar["classes"])
        except FileNotFoundError:
            out.append(Problem(name, "missing", repair))
        except (RunFileError, OSError) as e:
            out.append(Problem(name, str(e), repair))
    return out


def _results_sound(run: Run) -> bool:
    """status.json says finished and every file a finished run needs is sound."""
    st = read_json(run.dir / layout.STATUS, None)
    return isinstance(st, dict) and st.get("state") == "finished" and \
        not [p for p in check(run) if p.file in runfiles.REQUIRED]


def _recorded_status(run: Run) -> dict:
    """status.json as the trainer wrote it (fields of the wrong type dropped: runfiles.clean_status); never
    started, or the file lost or damaged (a power cut), otherwise."""
    st = read_json(run.dir / layout.STATUS, None)
    if isinstance(st, dict) and st.get("state") in STATES:
        return runfiles.clean_status(st)[0]
    started = (run.dir / layout.METRICS).exists() or (run.dir / layout.RESUME).exists()  # progress on disk: cut short
    return {"state": "interrupted", "error": f"{layout.STATUS} is missing or damaged"} if started else {"state": "new"}


def read_status(run: Run) -> dict:
    """The run's status, the one read every caller makes: status.json, checked against who holds the run.

    A launched process that has not written its status yet is "starting" (or "failed", with the log's tail,
    when this process launched it and it has already exited); an active state nobody holds the lock of any
    more is "interrupted" (the trainer was killed).
    """
    for other in list(_LAUNCHES.values()):
        other.proc.poll()  # reap ended children, so none lingers as a zombie
    st = _recorded_status(run)
    mine = _LAUNCHES.get(run.dir)
    if mine is not None and st.get("updated", 0) < mine.time:  # launched here, its status not written yet
        if mine.proc.poll() is None:
            return {**st, "state": "starting", "error": None}
        if run.is_locked():  # another process trains it (the launched one found it taken and left)
            return st
        tail = _log_tail(run)
        return {**st, "state": "failed",
                "error": f"the training process exited (status {mine.proc.returncode}) before starting"
                         + (f":\n{tail}" if tail else "")}
    if st["state"] != "finished" and not run.is_locked():
        if _launch_pending(run):  # launched (by any process), still starting: not dead, not to launch again
            return {**st, "state": "starting", "error": None}
        if st["state"] in ACTIVE:
            return {**st, "state": "interrupted",
                    "error": st.get("error") or "the training process ended without finishing (killed?)"}
    return st


def _log_tail(run: Run, lines: int = 8) -> str:
    try:
        text = (run.dir / layout.LOG).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def plan(run: Run, status: dict | None = None) -> str:
    """What starting this run does now, one of PLANS: "cached" (finished: show it), "attach" (a process has
    it or is starting it), "resume" (stopped or interrupted, with a resumable state) or "train"."""
    return plan_why(run, status)[0]


def plan_why(run: Run, status: dict | None = None) -> tuple[str, str]:
    """plan(run) and why, in words: a finished run whose model is missing or damaged trains again (it is
    not cached), and the reason names the file."""
    state = (status or run.status)["state"]
    if state == "finished":
        broken = [p for p in check(run) if p.file in runfiles.REQUIRED]
        if not broken:
            return "cached", "finished"
        why = f"status.json says finished, but {broken[0].file} is {broken[0].what}"
        return "train", f"{why}: it trains again"
    return _plan_unfinished(run, state), state


def _plan_unfinished(run: Run, state: str) -> str:
    if state in ACTIVE or run.is_locked():
        return "attach"
    if state in RESUMABLE and run.can_resume:
        return "resume"
    return "train"


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
        atomic_write_json(run.dir / layout.CONFIG, {"run_id": run_id, "config": cfg.to_dict(),
                                                   "dataset_fingerprint": fingerprint, "created": time.time()})
    return run


class NoSuchRun(LeukvizError, KeyError):
    """No run, or several, answer to an id or prefix; the message lists what there is."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _run_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / layout.CONFIG).exists()]


def get_run(run_id: str, runs_dir: str | Path | None = None) -> Run:
    """The run of an id, or of a unique prefix of one; NoSuchRun (empty, unknown or ambiguous) otherwise."""
    root = runs_root(runs_dir, create=False)
    run_id = str(run_id).strip()
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise NoSuchRun(f"give a run id (or a unique prefix of one), not {run_id!r}; `runs list` shows them")
    folders = _run_folders(root)
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
    runs = [Run(p) for p in _run_folders(runs_root(runs_dir, create=False))]
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


def write_status(run: Run, state: str, **extra) -> None:
    assert state in STATES, state
    prev = read_json(run.dir / layout.STATUS, {})
    prev = runfiles.clean_status(prev)[0] if isinstance(prev, dict) else {}
    atomic_write_json(run.dir / layout.STATUS, {**prev, **extra, "state": state, "pid": os.getpid(),
                                                "updated": time.time()})


def archive(run: Run) -> Path:
    """Move a run's results aside (retraining on purpose) and leave its configuration in place, to train
    again; nothing is deleted. Returns where the results went (_move_aside)."""
    info = runfiles.read_config(run.dir)[0]  # a damaged config.json is a RunFileError: never a folder without one
    dest = _move_aside(run)
    run.dir.mkdir()
    atomic_write_json(run.dir / layout.CONFIG, {**info, "created": time.time()})
    return dest


_STOP_FIRST = "stop it first (Stop on its Train page, or Ctrl-C where it trains)"


def delete_refusal(run: Run) -> str | None:
    """Why this run cannot be deleted now (a process trains it, or is starting it), in words; None when it
    can. delete() asks it again under the locks: callers ask first to refuse several runs before moving any."""
    state = run.state
    if state not in ACTIVE and not run.is_locked():
        return None
    doing = state if state in ("starting", "queued") else "training"  # otherwise a trainer holds the run lock
    return f"run {run.run_id} is {doing}: {_STOP_FIRST}"


def delete(run: Run) -> Path:
    """Remove a run: its whole folder moves into the runs root's archive (_move_aside), so it leaves every
    listing and nothing is lost until someone empties the archive. A damaged run (config.json unreadable)
    goes too. NoSuchRun when the folder is not there; AlreadyRunning (delete_refusal) when a process trains
    the run or is starting it. Returns where the folder went."""
    if not run.dir.is_dir():
        raise NoSuchRun(f"no run {run.run_id!r} in {run.dir.parent}; `runs list` shows them")
    try:
        # The launch lock keeps launch() from starting it meanwhile; the run lock, held through the move, keeps
        # a trainer from taking it. The state is read before taking the run lock: held by us, a stale
        # "running" would read as running.
        with _LAUNCHES_LOCK, FileLock(str(run.dir / layout.LAUNCH_LOCK), timeout=30):
            why = delete_refusal(run)
            if why:
                raise AlreadyRunning(why)
            lock = run.lock()
            try:
                lock.acquire(timeout=0)
            except Timeout:  # a trainer took it since delete_refusal looked
                raise AlreadyRunning(delete_refusal(run) or f"run {run.run_id} is training") from None
            try:
                dest = _move_aside(run)
            finally:
                lock.release()
            _LAUNCHES.pop(run.dir, None)
            return dest
    except Timeout:  # the launch lock: a launch is under way
        raise AlreadyRunning(f"run {run.run_id} is starting: {_STOP_FIRST}") from None
    except OSError as e:
        if isinstance(e, LeukvizError):
            raise
        if not run.dir.exists():  # removed meanwhile (another delete)
            raise NoSuchRun(f"no run {run.run_id!r} in {run.dir.parent} (removed meanwhile)") from None
        raise RunsFolderError(f"cannot delete run {run.run_id}: {e.strerror or e} ({e.filename or run.dir})") from None


def _move_aside(run: Run) -> Path:
    """Move a run folder into <runs root>/.archive/ (layout.ARCHIVE; hidden, so no listing reads it) as
    <run id>-<YYYYmmdd-HHMMSS>, with -2, -3... when that name is taken: two removals of one id never collide.
    One rename, atomic, within a filesystem; a copy then delete (shutil.move) across filesystems."""
    root = run.dir.parent / layout.ARCHIVE
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{run.run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        dest = root / (stem if n == 1 else f"{stem}-{n}")
        if dest.exists():
            continue
        try:
            os.rename(run.dir, dest)  # POSIX would replace an empty folder made meanwhile: it holds nothing
            return dest
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):  # taken meanwhile (another removal): the next name
                continue
            if e.errno != errno.EXDEV:
                raise
        shutil.move(str(run.dir), str(dest))
        return dest
    raise RunsFolderError(f"cannot archive run {run.run_id}: {root} already holds 999 folders named {stem}-*")


# ---------------------------------------------------------------------------------------------- training process

def _truncate_after(run: Run, epoch: int, step: int) -> None:
    """Drop events past the resumable checkpoint (epoch in progress, steps done), so history stays one line."""
    keep = events.until_resume_point(run.events(), epoch, step)
    import json

    from leukviz.core.storage import atomic_write_bytes
    atomic_write_bytes(run.dir / layout.METRICS, "".join(json.dumps(e) + "\n" for e in keep).encode())


def _file_log(run: Run, console: Callable[[str], None]) -> Callable[[str], None]:
    """A log that also appends to the run's train.log (a launched process's output already goes there)."""
    def log(msg: str) -> None:
        console(msg)
        with contextlib.suppress(OSError), open(run.dir / layout.LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
    return log


# Set by the signal handlers of stop_on_signals (the CLI's, the worker entry's); every training in this
# process stops after its batch when it is set. Never set by a library caller: a test runner's own SIGTERM
# or a notebook's Ctrl-C stays theirs.
_SIGNALLED = threading.Event()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """The worker entry's signal handling (python -m leukviz train / study): while inside, SIGTERM and SIGINT
    ask every training of this process to stop after its batch, its resumable state saved (a Stop). Only the
    main thread may set handlers; the previous ones are put back afterwards."""
    previous: dict = {}
    _SIGNALLED.clear()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: _SIGNALLED.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _SIGNALLED.clear()


def _prepare_folder(run: Run, resume: bool, log: Callable[[str], None]) -> bool:
    """Before training: temporary files of cut-short writes go, and the metrics keep exactly what the
    resumable state covers (or start empty; a damaged line is dropped, with a note). Returns whether the
    run resumes."""
    for leftover in run.dir.glob(".*.*"):
        if leftover.name.startswith(tuple(f".{name}." for name in layout.TRAINER_FILES)):
            leftover.unlink(missing_ok=True)
    resume = resume and run.can_resume
    if resume:
        from leukviz.training import engine

        st = engine.load_resume_state(run.dir / layout.RESUME)
        skipped = run.skipped_events()
        if skipped:
            log(f"{layout.METRICS}: {len(skipped)} damaged line(s) dropped on resume ({'; '.join(skipped[:3])})")
        _truncate_after(run, int(st["epoch"]), int(st["step"]))
    else:
        (run.dir / layout.METRICS).unlink(missing_ok=True)
    return resume


def _record_failure(run: Run, e: BaseException, log: Callable[[str], None]) -> None:
    """The failure in status.json as one line for the user; the traceback in train.log."""
    if isinstance(e, LeukvizError):  # written for the user: shown as it is
        msg = str(e)
    else:
        msg = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = (f"{e.strerror} while writing the run files in {run.dir.parent}: free some disk space, "
               "then resume the run (its last complete checkpoint is intact)")
    with contextlib.suppress(OSError):
        with open(run.dir / layout.LOG, "a", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())
    try:
        write_status(run, "failed", error=msg)
    except OSError as status_error:  # the disk may be full: the log still holds the reason
        log(f"could not record the failure in {layout.STATUS}: {status_error}")


def train(run: Run, resume: bool = False, device: str = "auto", log: Callable[[str], None] = print,
          emit_hook: Callable[[dict], None] | None = None) -> dict:
    """Train this run in this process: take the run lock, wait for the device, fit, record the outcome.

    Under torchrun only rank 0 touches the run folder; every rank trains. The dataset the trainer opens
    must be the one the run was created for (its fingerprint in config.json), else the run fails saying so.
    """
    from leukviz.training import engine

    rank = int(os.environ.get("RANK", "0"))
    cfg, fingerprint = run.config, run.info.get("dataset_fingerprint")
    stop_file = run.dir / layout.STOP
    launch_info = read_json(run.dir / layout.LAUNCH, None)
    launched = isinstance(launch_info, dict) and launch_info.get("pid") in (os.getpid(), os.getppid())
    if rank == 0 and not launched:
        log = _file_log(run, log)

    def should_stop() -> bool:
        return _SIGNALLED.is_set() or stop_file.exists()

    def emit(ev: dict) -> None:
        append_jsonl(run.dir / layout.METRICS, ev)
        if ev.get("type") == events.EPOCH:
            write_status(run, "running", epoch=ev["epoch"], epochs=ev["epochs"])
        elif ev.get("type") == events.EARLY_STOP:  # kept in the status when the run then finishes
            write_status(run, "running", early_stop=ev["reason"])
        if emit_hook:
            emit_hook(ev)

    if rank != 0:
        return engine.fit(cfg, run.dir, lambda e: None, should_stop=should_stop, cache_dir=paths.cache_root(),
                          resume=resume, device_pref=device, log=log, fingerprint=fingerprint)
    lock = run.lock()
    try:
        lock.acquire(timeout=3)
    except Timeout:
        raise AlreadyRunning(f"run {run.run_id} is already being trained by another process") from None
    try:
        if not launched:  # launch() cleared old Stops; one sent while this process started must hold
            stop_file.unlink(missing_ok=True)
        if _results_sound(run) and not resume:
            # Another process finished it between our caller's cache check and our lock: don't train twice.
            log(f"run {run.run_id} is already finished")
            return run.final_metrics()
        resume = _prepare_folder(run, resume, log)
        write_status(run, "queued", error=None, early_stop=None, epoch=0, epochs=cfg.epochs,
                     world_size=int(os.environ.get("WORLD_SIZE", 1)))
        with _device_slot(run, device, should_stop):
            write_status(run, "running")
            t0 = time.time()
            result = engine.fit(cfg, run.dir, emit, should_stop=should_stop, cache_dir=paths.cache_root(),
                                resume=resume, device_pref=device, log=log, fingerprint=fingerprint)
        write_status(run, "finished", metrics=result, seconds=time.time() - t0)
        _drop_resume_state(run, log)
        return result
    except engine.Stopped as e:
        write_status(run, "stopped", error=str(e))
        raise
    except BaseException as e:
        _record_failure(run, e, log)
        raise
    finally:
        lock.release()


def _drop_resume_state(run: Run, log: Callable[[str], None]) -> None:
    """A finished run is served from its checkpoint and never resumes: its resumable state (layout.RESUME:
    the raw weights, the average and the optimizer's moments, about 1.6 GB for VGG16) goes. Best effort:
    one left behind only costs disk."""
    try:
        (run.dir / layout.RESUME).unlink(missing_ok=True)
    except OSError as e:
        log(f"could not delete {layout.RESUME} of the finished run ({e.strerror or e}); it is not needed")


class _device_slot:
    """One training at a time per device: later runs wait here, as 'queued', until the device is free."""

    def __init__(self, run: Run, device: str, should_stop: Callable[[], bool]):
        from leukviz.models import devices

        kind = devices.pick_device(device).type
        if kind == "cuda":  # one queue per visible GPU set, so folds pinned to different GPUs run in parallel
            kind += os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "-")
        self.lock = FileLock(str(run.dir.parent / layout.device_lock(kind)))
        self.should_stop = should_stop
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) == 1

    def __enter__(self):
        from leukviz.training import engine

        while self.enabled:
            try:
                self.lock.acquire(timeout=1)
                return self
            except Timeout:
                if self.should_stop():
                    raise engine.Stopped("stopped while queued")
        return self

    def __exit__(self, *exc):
        if self.enabled and self.lock.is_locked:
            self.lock.release()


# ---------------------------------------------------------------------------------------------- launching

def launch(run: Run, resume: bool = False, device: str = "auto", nproc: int = 1,
           env: dict[str, str] | None = None) -> subprocess.Popen | None:
    """Start the training process for a run, detached from the caller (it outlives a server restart).

    Returns None when the run is already being trained, or another launch of it is still starting
    (attach to it instead): two clicks, two tabs or two servers start one process.
    """
    try:
        with FileLock(str(run.dir / layout.LAUNCH_LOCK), timeout=30):
            if run.is_locked() or _launch_pending(run):
                return None
            (run.dir / layout.STOP).unlink(missing_ok=True)  # an old Stop; a Stop from now on must hold
            proc = _spawn(run, resume, device, nproc, env)
            atomic_write_json(run.dir / layout.LAUNCH, {"pid": proc.pid, "time": time.time()})
            return proc
    except Timeout:
        return None


@dataclass
class _Launch:
    time: float
    proc: subprocess.Popen


# Launches by this process (the dashboard's server): every session (tab, refresh) of it must see a
# just-launched run as starting rather than launch it again, and learn when its process died at once.
_LAUNCHES: dict[Path, _Launch] = {}
_LAUNCHES_LOCK = threading.Lock()


def start(run: Run, resume: bool = False, nproc: int = 1) -> bool:
    """Launch the training process unless this run is already starting, queued or running, and keep it
    supervised (read_status). nproc > 1 launches through torchrun, one process per GPU. Returns True when a
    process was started; False means attach to the one that runs it."""
    with _LAUNCHES_LOCK:
        if run.state in ACTIVE:
            return False
        proc = launch(run, resume=resume, nproc=nproc)
        if proc is None:
            return False
        _LAUNCHES[run.dir] = _Launch(time.time(), proc)
        return True


def retrain(run: Run, nproc: int = 1) -> bool:
    """Retrain a configuration on purpose: its previous results are archived (moved aside), then launched."""
    with _LAUNCHES_LOCK:
        if run.state in ACTIVE:
            return False
        archive(run)
        _LAUNCHES.pop(run.dir, None)
    return start(run, nproc=nproc)


def _spawn(run: Run, resume: bool, device: str, nproc: int, env: dict[str, str] | None) -> subprocess.Popen:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    else:
        cmd = [sys.executable, "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    if resume:
        cmd.append("--resume-here")
    logf = open(run.dir / layout.LOG, "ab")
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    finally:
        logf.close()


def _alive(pid: int) -> bool:
    """Whether a process exists and has not exited (an exited child nobody has waited for is a zombie)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows; trust the grace period there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _launch_pending(run: Run) -> bool:
    """A process launched for this run a moment ago that is alive but has not taken the run lock yet."""
    info = read_json(run.dir / layout.LAUNCH, None)
    if not isinstance(info, dict):
        return False
    try:
        pid, started = int(info.get("pid", 0)), float(info.get("time", 0))
    except (TypeError, ValueError):
        return False
    return time.time() - started < LAUNCH_GRACE and _alive(pid)


def request_stop(run: Run) -> None:
    """Ask the training process to stop after the current batch (it saves a resumable checkpoint)."""
    (run.dir / layout.STOP).touch()


def follow(run: Run, poll: float = 0.5, timeout: float | None = None) -> Iterator[dict]:
    """Yield new events of a run as they are written, until it is no longer active."""
    seen = 0
    t0 = time.time()
    settle = time.time() + 10  # a just-launched process may not hold its lock yet
    while True:
        written = run.events()
        yield from written[seen:]
        seen = len(written)
        if run.state not in ACTIVE and run.state != "new" or (run.state == "new" and time.time() > settle):
            if not run.is_locked():
                yield from run.events()[seen:]
                return
        if timeout is not None and time.time() - t0 > timeout:
            return
        time.sleep(poll)
