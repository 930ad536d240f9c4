"""Moving runs aside, never deleting them: archive (a run's results, before retraining it on purpose) and
delete (the whole folder, refused while a process trains or starts it: delete_refusal), both into the runs
root's hidden archive folder (move_aside)."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from leukviz.core import filenames
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import atomic_write_json
from leukviz.runstore import processes, runfiles
from leukviz.runstore.folders import NoSuchRun, RunsFolderError
from leukviz.runstore.runfolder import AlreadyRunning, Run
from leukviz.runstore.states import ACTIVE


def archive(run: Run) -> Path:
    """Move a run's results aside (retraining on purpose) and leave its configuration in place, to train
    again; nothing is deleted. Returns where the results went (move_aside)."""
    info = runfiles.read_config(run.dir)[0]  # a damaged config.json is a RunFileError: never a folder without one
    dest = move_aside(run)
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
    """Remove a run: its whole folder moves into the runs root's archive (move_aside), so it leaves every
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
                dest = move_aside(run)
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


def move_aside(run: Run) -> Path:
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
