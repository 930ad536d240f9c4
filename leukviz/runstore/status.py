"""A run's status, read and written: status.json as the trainer wrote it (recorded_status), the one read every
caller makes, checked against who holds the run and this process's launches (read_status), the trainer's
write (write_status) and the tail of the run's log for a process that died before starting (log_tail)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from leukviz.core import filenames
from leukviz.core.storage import atomic_write_json, read_json, read_text
from leukviz.runstore import processes, runfiles
from leukviz.runstore.checks import finished_by_its_files
from leukviz.runstore.states import ACTIVE, STATES

if TYPE_CHECKING:
    from leukviz.runstore.runfolder import Run


def recorded_status(run: Run) -> dict:
    """status.json as the trainer wrote it (fields of the wrong type dropped: runfiles.clean_status); never
    started, or the file lost or damaged (a power cut), otherwise."""
    st = read_json(run.dir / filenames.STATUS, None)
    if isinstance(st, dict) and st.get("state") in STATES:
        return runfiles.clean_status(st)[0]
    started = (run.dir / filenames.METRICS).exists() or (run.dir / filenames.RESUME).exists()  # progress on disk: cut short
    if started and finished_by_its_files(run):
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
    st = recorded_status(run)
    mine = processes.LAUNCHES.get(run.dir)
    if mine is not None and st.get("updated", 0) < mine.time:  # launched here, its status not written yet
        if mine.proc.poll() is None:
            return {**st, "state": "starting", "error": None}
        if run.is_locked():  # another process trains it (the launched one found it taken and left)
            return st
        tail = log_tail(run)
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


def log_tail(run: Run, lines: int = 8) -> str:
    try:
        text = read_text(run.dir / filenames.LOG, errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def write_status(run: Run, state: str, **extra) -> None:
    """The trainer's write of status.json (atomic): the state, its pid and time, the fields given."""
    assert state in STATES, state
    prev = read_json(run.dir / filenames.STATUS, {})
    prev = runfiles.clean_status(prev)[0] if isinstance(prev, dict) else {}
    atomic_write_json(run.dir / filenames.STATUS, {**prev, **extra, "state": state, "pid": os.getpid(),
                                                "updated": time.time()})
