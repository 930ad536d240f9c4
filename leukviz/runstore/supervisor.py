"""Supervising training processes: launch one detached from the caller (two clicks, tabs or servers start
one), keep this process's launches known to the status (processes.LAUNCHES), stop and follow a run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Iterator

from filelock import FileLock, Timeout

from leukviz.core import filenames
from leukviz.core.storage import atomic_write_json
from leukviz.runstore import processes
from leukviz.runstore.runs import ACTIVE, Run, archive


def launch(run: Run, *, resume: bool = False, device: str = "auto", nproc: int = 1,
           env: dict[str, str] | None = None) -> subprocess.Popen | None:
    """Start the training process for a run, detached from the caller (it outlives a server restart).

    Returns None when the run is already being trained, or another launch of it is still starting
    (attach to it instead): two clicks, two tabs or two servers start one process.
    """
    try:
        with FileLock(str(run.dir / filenames.LAUNCH_LOCK), timeout=30):
            if run.is_locked() or processes.launch_pending(run.dir):
                return None
            (run.dir / filenames.STOP).unlink(missing_ok=True)  # an old Stop; a Stop from now on must hold
            proc = _spawn(run, resume, device, nproc, env)
            atomic_write_json(run.dir / filenames.LAUNCH, {"pid": proc.pid, "time": time.time()})
            return proc
    except Timeout:
        return None


def start(run: Run, *, resume: bool = False, nproc: int = 1, device: str = "auto",
          env: dict[str, str] | None = None) -> bool:
    """Launch the training process unless this run is already starting, queued or running, and keep it
    supervised (read_status). nproc > 1 launches through torchrun, one process per GPU; env: a device pool
    worker's variables. Returns True when a process was started; False means attach to the one that runs it."""
    with processes.LAUNCHES_LOCK:
        if run.state in ACTIVE:
            return False
        proc = launch(run, resume=resume, device=device, nproc=nproc, env=env)
        if proc is None:
            return False
        processes.LAUNCHES[run.dir] = processes.Launch(time.time(), proc)
        return True


def retrain(run: Run, *, nproc: int = 1) -> bool:
    """Retrain a configuration on purpose: its previous results are archived (moved aside), then launched."""
    with processes.LAUNCHES_LOCK:
        if run.state in ACTIVE:
            return False
        archive(run)
        processes.LAUNCHES.pop(run.dir, None)
    return start(run, nproc=nproc)


def _spawn(run: Run, resume: bool, device: str, nproc: int, env: dict[str, str] | None) -> subprocess.Popen:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    else:
        cmd = [sys.executable, "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    if resume:
        cmd.append("--resume-here")
    logf = open(run.dir / filenames.LOG, "ab")
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    finally:
        logf.close()


def request_stop(run: Run) -> None:
    """Ask the training process to stop after the current batch (it saves a resumable checkpoint)."""
    (run.dir / filenames.STOP).touch()


def follow(run: Run, *, poll: float = 0.5, timeout: float | None = None) -> Iterator[dict]:
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
