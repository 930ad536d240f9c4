"""Run folders: run ids, the status lifecycle, the cache lookup, one-process-per-run locking, launching and stopping."""

from __future__ import annotations

import errno
import contextlib
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

from leukviz import data, events, layout
from leukviz.config import RunConfig
from leukviz.errors import LeukvizError
from leukviz.storage import append_jsonl, atomic_write_json, read_json, read_jsonl

STATES = ("queued", "running", "finished", "failed", "stopped", "interrupted")
ACTIVE = ("queued", "running")
LAUNCH_GRACE = 120.0  # seconds a launched process may take to start (import torch) and take the run lock


class AlreadyRunning(LeukvizError, RuntimeError):
    """Another process holds this run's lock."""


def home() -> Path:
    return data.default_home()


def runs_root(runs_dir: str | Path | None = None) -> Path:
    root = Path(runs_dir).expanduser() if runs_dir else Path(os.environ.get("LEUKVIZ_RUNS", home() / "runs"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_root() -> Path:
    return data.default_cache()


@dataclass
class Run:
    """A view of one run folder; every property re-reads the files (another process writes them)."""

    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(read_json(self.dir / layout.CONFIG, {})["config"])

    @property
    def info(self) -> dict:
        return read_json(self.dir / layout.CONFIG, {})

    @property
    def status(self) -> dict:
        st = read_json(self.dir / layout.STATUS, None)
        if not isinstance(st, dict) or st.get("state") not in STATES:
            # Never started, or the status file was lost (a power cut): progress on disk means cut short.
            started = (self.dir / layout.METRICS).exists() or (self.dir / layout.RESUME).exists()
            st = ({"state": "interrupted", "error": f"{layout.STATUS} is missing or damaged"} if started
                  else {"state": "new"})
        if st["state"] != "finished" and not self.is_locked():
            if _launch_pending(self):  # launched, still starting: not dead, and not to be launched again
                st = {**st, "state": "queued", "error": None}
            elif st["state"] in ACTIVE:
                st = {**st, "state": "interrupted",
                      "error": st.get("error") or "the training process ended without finishing (killed?)"}
        return st

    @property
    def state(self) -> str:
        return self.status["state"]

    def events(self) -> list[dict]:
        return list(read_jsonl(self.dir / layout.METRICS))

    def epochs(self) -> list[dict]:
        """Epoch events, one per epoch (after a resume the later record wins)."""
        return events.epoch_events(self.events())

    def lock(self) -> FileLock:
        return FileLock(str(self.dir / layout.RUN_LOCK))

    def is_locked(self) -> bool:
        lock = self.lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    @property
    def has_checkpoint(self) -> bool:
        return (self.dir / layout.CHECKPOINT).exists() and (self.dir / layout.SIDECAR).exists()

    def final_metrics(self) -> dict:
        return read_json(self.dir / layout.SIDECAR, {}).get("metrics", {})


def run_for(cfg: RunConfig, runs_dir: str | Path | None = None, fingerprint: str | None = None) -> Run:
    """The run folder for a config (created with its config.json if new). The id needs the dataset fingerprint."""
    if fingerprint is None:
        fingerprint = data.open_dataset(cfg.data, cache_root()).fingerprint
    run_id = cfg.identity(fingerprint)
    run = Run(runs_root(runs_dir) / run_id)
    run.dir.mkdir(parents=True, exist_ok=True)
    if not (run.dir / layout.CONFIG).exists():
        atomic_write_json(run.dir / layout.CONFIG, {"run_id": run_id, "config": cfg.to_dict(),
                                                   "dataset_fingerprint": fingerprint, "created": time.time()})
    return run


def get_run(run_id: str, runs_dir: str | Path | None = None) -> Run:
    root = runs_root(runs_dir)
    path = root / run_id
    if not (path / layout.CONFIG).exists():
        matches = [p for p in root.iterdir() if p.name.startswith(run_id) and (p / layout.CONFIG).exists()]
        if len(matches) != 1:
            known = ", ".join(sorted(p.name for p in root.iterdir() if (p / layout.CONFIG).exists())[:10]) or "none"
            raise KeyError(f"no run {run_id!r} in {root} (runs: {known})")
        path = matches[0]
    return Run(path)


def list_runs(runs_dir: str | Path | None = None) -> list[Run]:
    root = runs_root(runs_dir)
    runs = [Run(p) for p in root.iterdir() if p.is_dir() and (p / layout.CONFIG).exists()]
    return sorted(runs, key=lambda r: r.info.get("created", 0), reverse=True)


def write_status(run: Run, state: str, **extra) -> None:
    assert state in STATES, state
    prev = read_json(run.dir / layout.STATUS, {}) or {}
    atomic_write_json(run.dir / layout.STATUS, {**prev, **extra, "state": state, "pid": os.getpid(),
                                                "updated": time.time()})


def archive(run: Run) -> None:
    """Move a run's results aside (retraining on purpose); nothing is deleted."""
    trash = run.dir.parent / layout.ARCHIVE / f"{run.run_id}-{int(time.time())}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    info = run.info
    shutil.move(str(run.dir), trash)
    run.dir.mkdir()
    atomic_write_json(run.dir / layout.CONFIG, {**info, "created": time.time()})


# ---------------------------------------------------------------------------------------------- training process

def _truncate_after(run: Run, epoch: int, step: int) -> None:
    """Drop events past the resumable checkpoint (epoch in progress, steps done), so history stays one line."""
    keep = events.until_resume_point(run.events(), epoch, step)
    from leukviz.storage import atomic_write_bytes
    import json
    atomic_write_bytes(run.dir / layout.METRICS, "".join(json.dumps(e) + "\n" for e in keep).encode())


def train(run: Run, resume: bool = False, device: str = "auto", log: Callable[[str], None] = print,
          emit_hook: Callable[[dict], None] | None = None) -> dict:
    """Train this run in this process: take the run lock, wait for the device, fit, record the outcome.

    Under torchrun only rank 0 touches the run folder; every rank trains.
    """
    from leukviz import engine

    rank = int(os.environ.get("RANK", "0"))
    cfg = run.config
    stop_file = run.dir / layout.STOP
    launch_info = read_json(run.dir / layout.LAUNCH, None)
    launched = isinstance(launch_info, dict) and launch_info.get("pid") in (os.getpid(), os.getppid())
    previous_handlers: dict = {}
    stop = {"flag": False}
    if rank == 0 and not launched:  # a launched process's output already goes to train.log
        console = log

        def log(msg: str) -> None:
            console(msg)
            with contextlib.suppress(OSError), open(run.dir / layout.LOG, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    def on_signal(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    def should_stop() -> bool:
        return stop["flag"] or stop_file.exists()

    def emit(ev: dict) -> None:
        append_jsonl(run.dir / layout.METRICS, ev)
        if ev.get("type") == events.EPOCH:
            write_status(run, "running", epoch=ev["epoch"], epochs=ev["epochs"])
        if emit_hook:
            emit_hook(ev)

    def restore_signals() -> None:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    # Only the main thread may set handlers; they are put back afterwards, so a caller that goes on (a
    # test, a CLI attaching to another trainer) keeps its Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous_handlers[sig] = signal.signal(sig, on_signal)
    if rank != 0:
        try:
            return engine.fit(cfg, run.dir, lambda e: None, should_stop, cache_root(), resume, device, log)
        finally:
            restore_signals()

    lock = run.lock()
    try:
        lock.acquire(timeout=3)
    except Timeout:
        restore_signals()
        raise AlreadyRunning(f"run {run.run_id} is already being trained by another process") from None
    try:
        if not launched:  # launch() cleared old Stops; one sent while this process started must hold
            stop_file.unlink(missing_ok=True)
        finished = read_json(run.dir / layout.STATUS, {}).get("state") == "finished" and run.has_checkpoint
        if finished and not resume:
            # Another process finished it between our caller's cache check and our lock: don't train twice.
            log(f"run {run.run_id} is already finished")
            return run.final_metrics()
        for leftover in run.dir.glob(".*.*"):  # temporary files of writes that a crash cut short
            if leftover.name.startswith(tuple(f".{name}." for name in layout.TRAINER_FILES)):
                leftover.unlink(missing_ok=True)
        resume = resume and (run.dir / layout.RESUME).exists()
        if resume:
            st = engine.load_resume_state(run.dir / layout.RESUME)
            _truncate_after(run, int(st["epoch"]), int(st["step"]))
        else:
            (run.dir / layout.METRICS).unlink(missing_ok=True)
        write_status(run, "queued", error=None, epoch=0, epochs=cfg.epochs,
                     world_size=int(os.environ.get("WORLD_SIZE", 1)))
        with _device_slot(run, device, should_stop):
            write_status(run, "running")
            t0 = time.time()
            result = engine.fit(cfg, run.dir, emit, should_stop, cache_root(), resume, device, log)
        write_status(run, "finished", metrics=result, seconds=time.time() - t0)
        return result
    except engine.Stopped as e:
        write_status(run, "stopped", error=str(e))
        raise
    except BaseException as e:
        if isinstance(e, LeukvizError):  # written for the user: shown as it is
            msg = str(e)
        else:
            msg = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            msg = (f"{e.strerror} while writing the run files in {run.dir.parent}: free some disk space, "
                   "then resume the run (its last complete checkpoint is intact)")
        with contextlib.suppress(OSError):  # the details go to train.log; the console gets one line
            with open(run.dir / layout.LOG, "a", encoding="utf-8") as fh:
                fh.write(traceback.format_exc())
        try:
            write_status(run, "failed", error=msg)
        except OSError as status_error:  # the disk may be full: the log still holds the reason
            log(f"could not record the failure in {layout.STATUS}: {status_error}")
        raise
    finally:
        lock.release()
        restore_signals()


class _device_slot:
    """One training at a time per device: later runs wait here, as 'queued', until the device is free."""

    def __init__(self, run: Run, device: str, should_stop: Callable[[], bool]):
        from leukviz import engine

        kind = engine.pick_device(device).type
        if kind == "cuda":  # one queue per visible GPU set, so folds pinned to different GPUs run in parallel
            kind += os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "-")
        self.lock = FileLock(str(run.dir.parent / layout.device_lock(kind)))
        self.should_stop = should_stop
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) == 1

    def __enter__(self):
        from leukviz import engine

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
