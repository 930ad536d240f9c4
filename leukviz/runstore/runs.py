"""Run folders: run ids, the status lifecycle, the cache lookup and the start policy (plan, ensure),
one-process-per-run locking. Training a run in this process is trainer.py; launching, stopping and following
its process, supervisor.py."""

from __future__ import annotations

import enum
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from leukviz.core import events, filenames, paths
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import atomic_write_json, read_json, read_jsonl, read_text
from leukviz.datasets import data
from leukviz.models.config import RunConfig
from leukviz.runstore import processes, runfiles
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
            raise RunFileError(f"run {self.run_id}: {filenames.CONFIG} is damaged: {e}") from None

    @property
    def info(self) -> dict:
        """config.json as an object ({} when it is not one); its values checked only through .config."""
        obj = read_json(self.dir / filenames.CONFIG, {})
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
        odd = runfiles.not_regular_files(self.dir)  # a pipe or device in place of any run file: unusable
        return [p for p in check(self) if p.file in runfiles.REQUIRED or p.file == filenames.TEST_PREDICTIONS
                or p.file in odd]

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
        done = self.meta().get("epoch")
        try:
            of = self.config.epochs
        except (RunFileError, OSError):
            of = None
        reached = f"its model is from epoch {done} of {of}" if done is not None and of else "it did not finish"
        return f"run {self.run_id} is {state}, not finished: {reached}"

    @property
    def state(self) -> str:
        return self.status["state"]

    def events(self) -> list[dict]:
        """The usable events of metrics.jsonl: a line that is not JSON, or an event without the fields its
        readers need (events.FIELDS), is skipped (skipped_events counts them)."""
        return [e for e in read_jsonl(self.dir / filenames.METRICS) if events.problem(e) is None]

    def skipped_events(self) -> list[str]:
        """Why lines of metrics.jsonl were skipped, one entry per line."""
        out = []
        try:
            lines = read_text(self.dir / filenames.METRICS, errors="replace").splitlines()
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
        return FileLock(str(self.dir / filenames.RUN_LOCK))

    def is_locked(self) -> bool:
        """Whether a process holds the run lock. Creates nothing: a run folder nobody has locked yet (no
        lock file) is not locked, and a read-only folder is read with a read-only lock probe."""
        path = self.dir / filenames.RUN_LOCK
        if not path.exists():
            return False
        return _lock_held(path, self.lock())

    @property
    def has_checkpoint(self) -> bool:
        return (self.dir / filenames.CHECKPOINT).exists() and (self.dir / filenames.SIDECAR).exists()

    def sidecar(self) -> dict:
        """model.json, checked (runfiles.check_sidecar); RunFileError when it is missing or damaged."""
        return runfiles.read_sidecar(self.dir)

    def final_metrics(self) -> dict:
        """The kept epoch's validation metrics from model.json; {} when it is missing or damaged (meta)."""
        return dict(self.meta().get("metrics") or {})

    @property
    def can_resume(self) -> bool:
        return (self.dir / filenames.RESUME).exists()


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
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO in its place: no hang
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
    delete = f"delete the folder {run.dir}"
    odd = runfiles.not_regular_files(run.dir)
    if odd:  # a pipe, socket or device in place of a run file: named, and never opened (a FIFO would hang)
        return [Problem(name, f"is {kind}, not a regular file, so nothing reads it", f"remove it, or {delete}")
                for name, kind in odd.items()]
    out: list[Problem] = []
    try:
        runfiles.read_config(run.dir)
    except (RunFileError, OSError) as e:
        out.append(Problem(filenames.CONFIG, str(e), f"{delete}, or train its configuration again "
                                                  "(config.json is rewritten)"))
    st = read_json(run.dir / filenames.STATUS, None)
    if (run.dir / filenames.STATUS).exists() and not (isinstance(st, dict) and st.get("state") in STATES):
        if _finished_by_its_files(run):  # never advised to resume: that would train a finished run again
            st = {"state": "finished"}
            out.append(Problem(filenames.STATUS, "not a run status", "it reads as finished, since its epochs, "
                               "model, weights and predictions are whole: nothing to resume or train"))
        else:
            out.append(Problem(filenames.STATUS, "not a run status", f"it reads as interrupted; `train --resume "
                                                                  f"{run.run_id}` rewrites it"))
    elif isinstance(st, dict) and runfiles.clean_status(st)[1]:
        out.append(Problem(filenames.STATUS, ", ".join(runfiles.clean_status(st)[1]) + " (ignored)",
                           "the next training rewrites it"))
    skipped = run.skipped_events()
    if skipped:
        out.append(Problem(filenames.METRICS, f"{len(skipped)} line(s) skipped ({'; '.join(skipped[:3])})",
                           "the curves leave them out"))
    finished = isinstance(st, dict) and st.get("state") == "finished"
    if finished:
        out += _check_results(run, delete)
    if (run.dir / filenames.RESUME).exists():
        try:
            runfiles.check_resume_state(run.dir / filenames.RESUME)
        except RunFileError as e:
            out.append(Problem(filenames.RESUME, str(e), f"the model is intact, only resuming needs it: delete {filenames.RESUME}"
                               if finished else f"it cannot resume: delete {filenames.RESUME} and train it again"))
    return out


def _check_results(run: Run, delete: str) -> list[Problem]:
    """The files of a finished run: the sidecar, the weights, the predictions."""
    retrain = f"train its configuration again with --force, or {delete}"
    try:
        sidecar = runfiles.check_sidecar(runfiles._load(run.dir / filenames.SIDECAR))
    except FileNotFoundError:
        return [Problem(filenames.SIDECAR, "missing", retrain)]
    except (RunFileError, OSError) as e:
        return [Problem(filenames.SIDECAR, str(e), retrain)]
    out = []
    try:
        runfiles.check_weights(run.dir / filenames.CHECKPOINT, sidecar)
    except FileNotFoundError:
        out.append(Problem(filenames.CHECKPOINT, "missing", retrain))
    except (RunFileError, OSError) as e:
        out.append(Problem(filenames.CHECKPOINT, str(e), retrain))
    for name, repair in ((filenames.PREDICTIONS, retrain),
                         (filenames.TEST_PREDICTIONS, f"delete {filenames.TEST_PREDICTIONS}: Compare scores the test set again")):
        path = run.dir / name
        if name == filenames.TEST_PREDICTIONS and not path.exists():
            continue
        try:
            counts = runfiles.check_predictions(path, sidecar["classes"])
            odd = runfiles.agrees_with_sidecar(counts, sidecar) if name == filenames.PREDICTIONS else None
            if odd:
                out.append(Problem(name, odd, repair))
        except FileNotFoundError:
            out.append(Problem(name, "missing", repair))
        except (RunFileError, OSError) as e:
            out.append(Problem(name, str(e), repair))
    return out


def _results_sound(run: Run) -> bool:
    """status.json says finished and every file a finished run needs is sound."""
    st = read_json(run.dir / filenames.STATUS, None)
    return isinstance(st, dict) and st.get("state") == "finished" and \
        not [p for p in check(run) if p.file in runfiles.REQUIRED]


def _finished_by_its_files(run: Run) -> bool:
    """Whether a run whose status.json is lost or damaged finished, by what its other files say: no resumable
    state left, its epochs reached the configured number (or it stopped early), and the files a finished
    run needs (model.json, the weights, the predictions) whole and agreeing."""
    if (run.dir / filenames.RESUME).exists():
        return False
    try:
        epochs = run.config.epochs
    except (RunFileError, OSError):
        return False
    evs = run.events()
    done = max((e["epoch"] for e in evs if e.get("type") == events.EPOCH), default=0)
    if done < epochs and not any(e.get("type") == events.EARLY_STOP for e in evs):
        return False
    return not _check_results(run, "")


def _recorded_status(run: Run) -> dict:
    """status.json as the trainer wrote it (fields of the wrong type dropped: runfiles.clean_status); never
    started, or the file lost or damaged (a power cut), otherwise."""
    st = read_json(run.dir / filenames.STATUS, None)
    if isinstance(st, dict) and st.get("state") in STATES:
        return runfiles.clean_status(st)[0]
    started = (run.dir / filenames.METRICS).exists() or (run.dir / filenames.RESUME).exists()  # progress on disk: cut short
    if started and _finished_by_its_files(run):
        return {"state": "finished", "error": None}
    return {"state": "interrupted", "error": f"{filenames.STATUS} is missing or damaged"} if started else {"state": "new"}


def read_status(run: Run) -> dict:
    """The run's status, the one read every caller makes: status.json, checked against who holds the run.

    A launched process that has not written its status yet is "starting" (or "failed", with the log's tail,
    when this process launched it and it has already exited); an active state nobody holds the lock of any
    more is "interrupted" (the trainer was killed).
    """
    for other in list(processes.LAUNCHES.values()):
        other.proc.poll()  # reap ended children, so none lingers as a zombie
    st = _recorded_status(run)
    mine = processes.LAUNCHES.get(run.dir)
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
        if processes.launch_pending(run.dir):  # launched (by any process), still starting: not dead, not to launch again
            return {**st, "state": "starting", "error": None}
        if st["state"] in ACTIVE:
            return {**st, "state": "interrupted",
                    "error": st.get("error") or "the training process ended without finishing (killed?)"}
    return st


def _log_tail(run: Run, lines: int = 8) -> str:
    try:
        text = read_text(run.dir / filenames.LOG, errors="replace")
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


def ensure(run: Run, start: Callable[[Run, bool], object], *, force: bool = False) -> str:
    """The one start policy (the CLI's train and --cv, studies, the Train page): act on plan(run) and return
    it. "cached": nothing to do (force: its results are archived and it trains again); "attach": a process
    has it, the caller follows it (force: AlreadyRunning, stop it first); "resume" / "train": start(run,
    resume) is called, the caller's way of training (here, launched, or in the background)."""
    action = plan(run)
    if action == "attach":
        if force:
            raise AlreadyRunning(f"run {run.run_id} is training right now; stop it before retraining")
        return action
    if action == "cached" and not force:
        return action
    if force and run.state != State.NEW:
        archive(run)
        action = "train"
    start(run, action == "resume")
    return action


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


def _run_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / filenames.CONFIG).exists()]


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
    prev = read_json(run.dir / filenames.STATUS, {})
    prev = runfiles.clean_status(prev)[0] if isinstance(prev, dict) else {}
    atomic_write_json(run.dir / filenames.STATUS, {**prev, **extra, "state": state, "pid": os.getpid(),
                                                "updated": time.time()})


def archive(run: Run) -> Path:
    """Move a run's results aside (retraining on purpose) and leave its configuration in place, to train
    again; nothing is deleted. Returns where the results went (_move_aside)."""
    info = runfiles.read_config(run.dir)[0]  # a damaged config.json is a RunFileError: never a folder without one
    dest = _move_aside(run)
    run.dir.mkdir()
    atomic_write_json(run.dir / filenames.CONFIG, {**info, "created": time.time()})
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
        with processes.LAUNCHES_LOCK, FileLock(str(run.dir / filenames.LAUNCH_LOCK), timeout=30):
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
            processes.LAUNCHES.pop(run.dir, None)
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
    """Move a run folder into <runs root>/.archive/ (filenames.ARCHIVE; hidden, so no listing reads it) as
    <run id>-<YYYYmmdd-HHMMSS>, with -2, -3... when that name is taken: two removals of one id never collide.
    One rename, atomic, within a filesystem; a copy then delete (shutil.move) across filesystems."""
    root = run.dir.parent / filenames.ARCHIVE
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
