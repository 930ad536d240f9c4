"""One run folder as the run store sees it: Run, a view whose every property re-reads the files (another
process writes them), its lock (one process trains a run: AlreadyRunning otherwise). Its status is read by
status.read_status, its files checked by checks.check."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from leukviz.core import events, filenames
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import read_json, read_jsonl, read_text
from leukviz.models.config import RunConfig, repeat_key
from leukviz.runstore import runfiles
from leukviz.runstore.checks import check
from leukviz.runstore.runfiles import Problem, RunFileError
from leukviz.runstore.status import read_status


class AlreadyRunning(LeukvizError, RuntimeError):
    """Another process holds this run's lock."""


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
    def repeat_key(self) -> str:
        """Runs of one configuration that differ only in seed (repeats) share this key (config.repeat_key with
        the dataset's fingerprint): the one key of the Overview's repeat groups and Compare's."""
        return repeat_key(self.config, self.info.get("dataset_fingerprint", "?"))

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
        return lock_held(path, self.lock())

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


def lock_held(path: Path, lock: FileLock) -> bool:
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
