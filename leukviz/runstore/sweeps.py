"""Learning-rate sweeps in the background, supervised as runs are (supervisor): launched as a process of their
own (python -m leukviz lr-find --config FILE, the worker in training/lrfind.py), kept in this process's launches
(processes.LAUNCHES, beside the runs it launched), stopped by their stop file (<key>.stop: the sweep ends after
its step, nothing cached), cancelled (a Stop, SIGTERM to its process group, SIGKILL after supervisor.TERM_WAIT)
and followed. A sweep's files sit beside its cached result in the cache's lr-find folder: <key>.config.json (the
settings it sweeps), .progress.json (how far it is), .log, .stop."""

from __future__ import annotations

import glob
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from leukviz.core import paths
from leukviz.core.storage import atomic_write_json, read_json
from leukviz.models.config import RunConfig
from leukviz.runstore import processes, supervisor
from leukviz.training import lrfind
from leukviz.training.lrfind import STEPS

SWEEP = "sweep"  # processes.Launch.kind of a sweep
_LAUNCH_LOCK = threading.Lock()  # one launch (or cancel) of a sweep at a time in this process


def _command(config_file: Path, steps: int) -> list[str]:
    """The worker's command line: the CLI's lr-find with the config file launch wrote."""
    return [sys.executable, "-m", "leukviz", "lr-find", "--config", str(config_file), "--steps", str(steps)]


def _key(cfg: RunConfig, fingerprint: str, cache_dir: Path | None, steps: int) -> Path:
    """The sweep's key in this process's launches: the path of its result."""
    return lrfind.result_path(cfg, fingerprint, cache_dir, steps)


def _reap() -> None:
    """Collect the exit status of every launched child of this process that ended (poll waits for it), so none
    stays a zombie of the server. Call with processes.LAUNCHES_LOCK held."""
    for launch in list(processes.LAUNCHES.values()):
        launch.proc.poll()


def _mine(key: Path) -> processes.Launch | None:
    """This process's launch of the sweep (its children reaped first)."""
    _reap()
    return processes.LAUNCHES.get(key)


def launch(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> bool:
    """Sweep in a child process, so a page stays responsive on a CPU where it takes a minute or two. The child
    sweeps exactly cfg (cfg.to_dict() in its config file) and writes to cache_dir (LEUKVIZ_CACHE in its
    environment). Returns False when it is cached or already sweeping."""
    out = _key(cfg, fingerprint, cache_dir, steps)
    with _LAUNCH_LOCK, processes.LAUNCHES_LOCK:
        mine = _mine(out)
        if mine is not None and mine.proc.returncode is None or lrfind.cached(cfg, fingerprint, cache_dir, steps):
            return False
        out.parent.mkdir(parents=True, exist_ok=True)
        config_file = out.with_suffix(".config.json")
        atomic_write_json(config_file, cfg.to_dict())
        # at once, before the child has even imported torch: the page says it prepares
        atomic_write_json(out.with_suffix(".progress.json"), lrfind.progress_info(steps, time.time()))
        env = {paths.CACHE: str(Path(cache_dir).resolve())} if cache_dir is not None else {}
        out.with_suffix(".log").unlink(missing_ok=True)  # the log of this sweep only
        proc = supervisor.spawn(_command(config_file, steps), out.with_suffix(".log"), lrfind.stop_path(out), env)
        processes.LAUNCHES[out] = processes.Launch(time.time(), proc, SWEEP)
        return True


def running_any() -> bool:
    """Whether a sweep this process launched is still running (a page disables its Start meanwhile)."""
    with processes.LAUNCHES_LOCK:
        _reap()
        return any(la.kind == SWEEP and la.proc.returncode is None for la in processes.LAUNCHES.values())


def status(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> tuple[str, dict]:
    """Where this sweep stands: ("done", result), ("running", progress: progress_info's content, for
    lrfind.progress_text), ("failed", {"error": ...}) or ("none", {}): never launched here, or cancelled, or
    stopped."""
    out = _key(cfg, fingerprint, cache_dir, steps)
    with processes.LAUNCHES_LOCK:
        mine = _mine(out)
    hit = lrfind.cached(cfg, fingerprint, cache_dir, steps)
    if hit is not None:
        return "done", hit
    if mine is None:
        return "none", {}
    if mine.proc.returncode is None:
        info = read_json(out.with_suffix(".progress.json"), None)
        return "running", info if isinstance(info, dict) else lrfind.progress_info(steps, time.time())
    if mine.proc.returncode == lrfind.STOPPED_EXIT:  # it took a Stop: nothing cached, nothing failed
        return "none", {}
    try:
        tail = out.with_suffix(".log").read_text(errors="replace").strip().splitlines()[-6:]
    except OSError:
        tail = []
    return "failed", {"error": "\n".join(tail) or f"the sweep exited with status {mine.proc.returncode}"}


def stop(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> None:
    """Ask the sweep to stop after its current step (its stop file, as a run's Stop): it caches nothing."""
    supervisor.ask_stop(lrfind.stop_path(_key(cfg, fingerprint, cache_dir, steps)))


def cancel(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS) -> bool:
    """Cancel this sweep if this process launched it and it still runs (supervisor.cancel): its process (group)
    ends and is reaped, its progress file, stop file and any half-written file go, nothing is cached, and status
    says "none" (the page offers the button again). Returns whether a running sweep was ended; False when there
    was none, or it ended first (a result it stored in time stays: status then says "done", or "failed")."""
    out = _key(cfg, fingerprint, cache_dir, steps)
    with _LAUNCH_LOCK:
        if not supervisor.cancel(out, lrfind.stop_path(out)):
            return False
        lrfind.stop_path(out).unlink(missing_ok=True)
        for tmp in out.parent.glob(f".{glob.escape(out.stem)}.*"):  # atomic writes cut short (storage)
            tmp.unlink(missing_ok=True)
        if lrfind.cached(cfg, fingerprint, cache_dir, steps) is not None:  # it stored its result before the signal
            return False
        with processes.LAUNCHES_LOCK:
            processes.LAUNCHES.pop(out, None)
        out.with_suffix(".progress.json").unlink(missing_ok=True)
        return True


def follow(cfg: RunConfig, fingerprint: str, cache_dir: Path | None = None, steps: int = STEPS, *,
           poll: float = 0.5, timeout: float | None = None) -> Iterator[dict]:
    """Follow a sweep as supervisor.follow does a run: each new progress (progress_info's content) as it is
    written, until it is no longer running; then its outcome, {"state": "done" | "failed" | "none", ...}."""
    seen: list[dict] = []

    def read() -> list[dict]:
        where, info = status(cfg, fingerprint, cache_dir, steps)
        if where == "running" and (not seen or info != seen[-1]):
            seen.append(info)
        return seen

    def done() -> bool:
        return status(cfg, fingerprint, cache_dir, steps)[0] != "running"

    yield from supervisor.watch(read, done, poll=poll, timeout=timeout)
    where, info = status(cfg, fingerprint, cache_dir, steps)
    if where != "running":
        yield {"state": where, **info}
