"""The processes the supervisor launched, as the run store sees them: launches made by this process (the
dashboard's server: runs by their folder, learning-rate sweeps by their result's path) and whether a launched
run's process is still starting. Read by the run's status (runs.read_status) and
written by the supervisor (supervisor.start); below both, so neither imports the other for it."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from leukviz.core import filenames
from leukviz.core.storage import read_json

LAUNCH_GRACE = 120.0  # seconds a launched process may take to start (import torch) and take the run lock


@dataclass
class Launch:
    time: float
    proc: subprocess.Popen
    kind: str = "run"  # or sweeps.SWEEP: a learning-rate sweep, supervised the same way


# Launches by this process (the dashboard's server): every session (tab, refresh) of it must see a
# just-launched run as starting rather than launch it again, and learn when its process died at once.
LAUNCHES: dict[Path, Launch] = {}
LAUNCHES_LOCK = threading.Lock()


def alive(pid: int) -> bool:
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


def launch_pending(run_dir: Path) -> bool:
    """A process launched for this run a moment ago that is alive but has not taken the run lock yet."""
    info = read_json(run_dir / filenames.LAUNCH, None)
    if not isinstance(info, dict):
        return False
    try:
        pid, started = int(info.get("pid", 0)), float(info.get("time", 0))
    except (TypeError, ValueError):
        return False
    return time.time() - started < LAUNCH_GRACE and alive(pid)


