"""The one job supervisor of the run store: a run's training and a learning-rate sweep (sweeps) are launched,
stopped, cancelled and followed here, the same way:

- spawn: the job's process, detached from the caller (it outlives a server restart), its output appended to its
  log, a Stop left from before cleared, kept in this process's launches (processes.LAUNCHES) for its status;
- Stop (ask_stop, request_stop for a run): the job's stop file; its worker ends after the current step (a run
  with a resumable state; a sweep with nothing cached);
- Cancel (cancel): a Stop, then SIGTERM to the job's process group (both workers take it as a Stop or end), and
  SIGKILL after TERM_WAIT seconds; the process is reaped;
- follow (watch): what the job has written so far, until it is done.

For a run, launch starts one process however many clicks, tabs or servers ask (launch.lock, launch.json)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from leukviz.core import filenames
from leukviz.core.storage import atomic_write_json
from leukviz.runstore import processes
from leukviz.runstore.archive import archive
from leukviz.runstore.runfolder import Run
from leukviz.runstore.states import ACTIVE


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
            proc = spawn(_command(run, resume, device, nproc), run.dir / filenames.LOG, run.dir / filenames.STOP, env)
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


def _command(run: Run, resume: bool, device: str, nproc: int) -> list[str]:
    """A run's worker: python -m leukviz train --run-dir (through torchrun with nproc > 1)."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    else:
        cmd = [sys.executable, "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    return cmd + ["--resume-here"] if resume else cmd


def spawn(command: list[str], log: Path, stop_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a job's process (a run's training, a sweep): detached from the caller in a session (a process
    group) of its own, its output appended to log, unbuffered, env added to this process's environment. A Stop
    left from before (stop_file) is cleared first: a Stop from now on must hold."""
    stop_file.unlink(missing_ok=True)
    logf = open(log, "ab")
    try:
        return subprocess.Popen(command, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    finally:
        logf.close()


def ask_stop(stop_file: Path) -> None:
    """Stop a job: its worker ends after the current step (a run with a resumable state, a sweep uncached)."""
    stop_file.touch()


def request_stop(run: Run) -> None:
    """Ask the training process to stop after the current batch (it saves a resumable checkpoint)."""
    ask_stop(run.dir / filenames.STOP)


TERM_WAIT = 5.0  # seconds Cancel gives a job to end on SIGTERM before SIGKILL


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send sig to the job's process group (it leads one: spawn), or to it alone without process groups
    (Windows). Its pid stays reserved until it is reaped, so no other process gets it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:
            proc.terminate()
    except OSError:  # already gone
        pass


def end(proc: subprocess.Popen) -> None:
    """End a job's process and its group: SIGTERM, SIGKILL after TERM_WAIT seconds; then reap it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(TERM_WAIT)
        except subprocess.TimeoutExpired:
            _signal_group(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
            proc.kill()
    proc.wait()


def cancel(key: Path, stop_file: Path) -> bool:
    """Cancel a job this process launched (processes.LAUNCHES[key]): a Stop, then its process ended (end) and
    reaped. Returns whether a running job was ended; False when there was none, or it had ended first."""
    with processes.LAUNCHES_LOCK:
        mine = processes.LAUNCHES.get(key)
        if mine is None or mine.proc.poll() is not None:
            return False
        ask_stop(stop_file)
        end(mine.proc)
        return True


def watch(read: Callable[[], list[dict]], done: Callable[[], bool], *, poll: float = 0.5,
          timeout: float | None = None) -> Iterator[dict]:
    """Follow a job: yield what read() (a list its worker only appends to) has new, until done() (then the
    rest) or timeout seconds."""
    seen, t0 = 0, time.time()
    while True:
        written = read()
        yield from written[seen:]
        seen = len(written)
        if done():
            yield from read()[seen:]
            return
        if timeout is not None and time.time() - t0 > timeout:
            return
        time.sleep(poll)


def follow(run: Run, *, poll: float = 0.5, timeout: float | None = None) -> Iterator[dict]:
    """Yield new events of a run as they are written, until it is no longer active."""
    settle = time.time() + 10  # a just-launched process may not hold its lock yet

    def done() -> bool:
        state = run.state
        return (state not in ACTIVE and state != "new" or (state == "new" and time.time() > settle)) \
            and not run.is_locked()

    return watch(run.events, done, poll=poll, timeout=timeout)
