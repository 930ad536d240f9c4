"""Run folders: run ids, the status lifecycle, the cache lookup, one-process-per-run locking, launching and stopping."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from leukviz import data
from leukviz.config import RunConfig
from leukviz.storage import append_jsonl, atomic_write_json, read_json, read_jsonl

STATES = ("queued", "running", "finished", "failed", "stopped", "interrupted")
ACTIVE = ("queued", "running")


class AlreadyRunning(RuntimeError):
    """Another process holds this run's lock."""


def home() -> Path:
    return data.default_home()


def runs_root(runs_dir: str | Path | None = None) -> Path:
    root = Path(runs_dir).expanduser() if runs_dir else Path(os.environ.get("LEUKVIZ_RUNS", home() / "runs"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_root() -> Path:
    return Path(os.environ.get("LEUKVIZ_CACHE", home() / "cache"))


@dataclass
class Run:
    """A view of one run folder; every property re-reads the files (another process writes them)."""

    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(read_json(self.dir / "config.json", {})["config"])

    @property
    def info(self) -> dict:
        return read_json(self.dir / "config.json", {})

    @property
    def status(self) -> dict:
        st = read_json(self.dir / "status.json", None) or {"state": "new"}
        if st.get("state") in ACTIVE and not self.is_locked():
            st = {**st, "state": "interrupted",
                  "error": st.get("error") or "the training process ended without finishing (killed?)"}
        return st

    @property
    def state(self) -> str:
        return self.status["state"]

    def events(self) -> list[dict]:
        return list(read_jsonl(self.dir / "metrics.jsonl"))

    def epochs(self) -> list[dict]:
        """Epoch events, one per epoch (after a resume the later record wins)."""
        by_epoch = {e["epoch"]: e for e in self.events() if e.get("type") == "epoch"}
        return [by_epoch[k] for k in sorted(by_epoch)]

    def lock(self) -> FileLock:
        return FileLock(str(self.dir / "run.lock"))

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
        return (self.dir / "model.safetensors").exists() and (self.dir / "model.json").exists()

    def final_metrics(self) -> dict:
        return read_json(self.dir / "model.json", {}).get("metrics", {})


def run_for(cfg: RunConfig, runs_dir: str | Path | None = None, fingerprint: str | None = None) -> Run:
    """The run folder for a config (created with its config.json if new). The id needs the dataset fingerprint."""
    if fingerprint is None:
        fingerprint = data.open_dataset(cfg.data, cache_root()).fingerprint
    run_id = cfg.identity(fingerprint)
    run = Run(runs_root(runs_dir) / run_id)
    run.dir.mkdir(parents=True, exist_ok=True)
    if not (run.dir / "config.json").exists():
        atomic_write_json(run.dir / "config.json", {"run_id": run_id, "config": cfg.to_dict(),
                                                   "dataset_fingerprint": fingerprint, "created": time.time()})
    return run


def get_run(run_id: str, runs_dir: str | Path | None = None) -> Run:
    root = runs_root(runs_dir)
    path = root / run_id
    if not (path / "config.json").exists():
        matches = [p for p in root.iterdir() if p.name.startswith(run_id) and (p / "config.json").exists()]
        if len(matches) != 1:
            known = ", ".join(sorted(p.name for p in root.iterdir() if (p / "config.json").exists())[:10]) or "none"
            raise KeyError(f"no run {run_id!r} in {root} (runs: {known})")
        path = matches[0]
    return Run(path)


def list_runs(runs_dir: str | Path | None = None) -> list[Run]:
    root = runs_root(runs_dir)
    runs = [Run(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]
    return sorted(runs, key=lambda r: r.info.get("created", 0), reverse=True)


def write_status(run: Run, state: str, **extra) -> None:
    assert state in STATES, state
    prev = read_json(run.dir / "status.json", {}) or {}
    atomic_write_json(run.dir / "status.json", {**prev, **extra, "state": state, "pid": os.getpid(),
                                                "updated": time.time()})


def archive(run: Run) -> None:
    """Move a run's results aside (retraining on purpose); nothing is deleted."""
    trash = run.dir.parent / ".archive" / f"{run.run_id}-{int(time.time())}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    info = run.info
    shutil.move(str(run.dir), trash)
    run.dir.mkdir()
    atomic_write_json(run.dir / "config.json", {**info, "created": time.time()})


# ---------------------------------------------------------------------------------------------- training process

def _truncate_after(run: Run, epoch: int, step: int) -> None:
    """Drop events past the resumable checkpoint (epoch in progress, steps done), so history stays one line."""
    keep = []
    for e in run.events():
        t = e.get("type")
        if t == "epoch" and e["epoch"] >= epoch:
            continue
        if t == "batch" and (e["epoch"], e["step"]) > (epoch, step) and e["epoch"] >= epoch:
            continue
        keep.append(e)
    from leukviz.storage import atomic_write_bytes
    import json
    atomic_write_bytes(run.dir / "metrics.jsonl", "".join(json.dumps(e) + "\n" for e in keep).encode())


def train(run: Run, resume: bool = False, device: str = "auto", log: Callable[[str], None] = print,
          emit_hook: Callable[[dict], None] | None = None) -> dict:
    """Train this run in this process: take the run lock, wait for the device, fit, record the outcome.

    Under torchrun only rank 0 touches the run folder; every rank trains.
    """
    from leukviz import engine

    rank = int(os.environ.get("RANK", "0"))
    cfg = run.config
    stop_file = run.dir / "stop"
    stop = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    def should_stop() -> bool:
        return stop["flag"] or stop_file.exists()

    def emit(ev: dict) -> None:
        append_jsonl(run.dir / "metrics.jsonl", ev)
        if ev.get("type") == "epoch":
            write_status(run, "running", epoch=ev["epoch"], epochs=ev["epochs"])
        if emit_hook:
            emit_hook(ev)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if rank != 0:
        return engine.fit(cfg, run.dir, lambda e: None, should_stop, cache_root(), resume, device, log)

    lock = run.lock()
    try:
        lock.acquire(timeout=3)
    except Timeout:
        raise AlreadyRunning(f"run {run.run_id} is already being trained by another process") from None
    try:
        stop_file.unlink(missing_ok=True)
        resume = resume and (run.dir / engine.RESUME).exists()
        if resume:
            import torch
            st = torch.load(run.dir / engine.RESUME, map_location="cpu", weights_only=True)
            _truncate_after(run, int(st["epoch"]), int(st["step"]))
        else:
            (run.dir / "metrics.jsonl").unlink(missing_ok=True)
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
        msg = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
        if isinstance(e, (data.DataError, engine.TrainingDiverged)) or "WeightsUnavailable" in msg:
            msg = str(e)
        write_status(run, "failed", error=msg)
        log(traceback.format_exc())
        raise
    finally:
        lock.release()


class _device_slot:
    """One training at a time per device: later runs wait here, as 'queued', until the device is free."""

    def __init__(self, run: Run, device: str, should_stop: Callable[[], bool]):
        from leukviz import engine

        kind = engine.pick_device(device).type
        self.lock = FileLock(str(run.dir.parent / f".device-{kind}.lock"))
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

def launch(run: Run, resume: bool = False, device: str = "auto", nproc: int = 1) -> subprocess.Popen | None:
    """Start the training process for a run, detached from the caller (it outlives a server restart).

    Returns None when the run is already being trained (attach to it instead).
    """
    if run.is_locked():
        return None
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    else:
        cmd = [sys.executable, "-m", "leukviz", "train", "--run-dir", str(run.dir), "--device", device]
    if resume:
        cmd.append("--resume-here")
    logf = open(run.dir / "train.log", "ab")
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        logf.close()


def request_stop(run: Run) -> None:
    """Ask the training process to stop after the current batch (it saves a resumable checkpoint)."""
    (run.dir / "stop").touch()


def follow(run: Run, poll: float = 0.5, timeout: float | None = None) -> Iterator[dict]:
    """Yield new events of a run as they are written, until it is no longer active."""
    seen = 0
    t0 = time.time()
    settle = time.time() + 10  # a just-launched process may not hold its lock yet
    while True:
        events = run.events()
        yield from events[seen:]
        seen = len(events)
        if run.state not in ACTIVE and run.state != "new" or (run.state == "new" and time.time() > settle):
            if not run.is_locked():
                yield from run.events()[seen:]
                return
        if timeout is not None and time.time() - t0 > timeout:
            return
        time.sleep(poll)
