"""Training a run in this process: the run lock, the device queue, the folder made ready for a resume, the
outcome in status.json, and the signal handling of the process entry (stop_on_signals)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
import traceback
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from leukviz.core import events, filenames, paths
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import append_jsonl, read_json
from leukviz.runstore import summary
from leukviz.runstore.checks import results_sound
from leukviz.runstore.runfolder import AlreadyRunning, Run
from leukviz.runstore.status import write_status


def _truncate_after(run: Run, epoch: int, step: int) -> None:
    """Drop events past the resumable checkpoint (epoch in progress, steps done), so history stays one line."""
    keep = events.until_resume_point(run.events(), epoch, step)
    import json

    from leukviz.core.storage import atomic_write_bytes
    atomic_write_bytes(run.dir / filenames.METRICS, "".join(json.dumps(e) + "\n" for e in keep).encode())


def _file_log(run: Run, console: Callable[[str], None]) -> Callable[[str], None]:
    """A log that also appends to the run's train.log (a launched process's output already goes there)."""
    def log(msg: str) -> None:
        console(msg)
        with contextlib.suppress(OSError), open(run.dir / filenames.LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
    return log


# Set by the signal handlers of stop_on_signals (the CLI's, the worker entry's); every training in this
# process stops after its batch when it is set. Never set by a library caller: a test runner's own SIGTERM
# or a notebook's Ctrl-C stays theirs.
_SIGNALLED = threading.Event()


def stop_requested() -> bool:
    """Whether a signal asked this process's trainings to stop (inside stop_on_signals): the device pool stops
    the runs it launched then, which run in sessions of their own and never see the terminal's Ctrl-C."""
    return _SIGNALLED.is_set()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """The worker entry's signal handling (python -m leukviz train / study): while inside, SIGTERM and SIGINT
    ask every training of this process to stop after its batch, its resumable state saved (a Stop). Only the
    main thread may set handlers; the previous ones are put back afterwards."""
    previous: dict = {}
    _SIGNALLED.clear()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: _SIGNALLED.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _SIGNALLED.clear()


def _prepare_folder(run: Run, resume: bool, log: Callable[[str], None]) -> bool:
    """Before training: temporary files of cut-short writes go, and the metrics keep exactly what the
    resumable state covers (or start empty; a damaged line is dropped, with a note). Returns whether the
    run resumes."""
    for leftover in run.dir.glob(".*.*"):
        if leftover.name.startswith(tuple(f".{name}." for name in filenames.TRAINER_FILES)):
            leftover.unlink(missing_ok=True)
    resume = resume and run.can_resume
    if resume:
        from leukviz.training import checkpoints

        st = checkpoints.load_resume_state(run.dir / filenames.RESUME)
        skipped = run.skipped_events()
        if skipped:
            log(f"{filenames.METRICS}: {len(skipped)} damaged line(s) dropped on resume ({'; '.join(skipped[:3])})")
        _truncate_after(run, int(st["epoch"]), int(st["step"]))
    else:
        (run.dir / filenames.METRICS).unlink(missing_ok=True)
    return resume


def _record_failure(run: Run, e: BaseException, log: Callable[[str], None]) -> None:
    """The failure in status.json as one line for the user; the traceback in train.log."""
    if isinstance(e, LeukvizError):  # written for the user: shown as it is
        msg = str(e)
    else:
        msg = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = (f"{e.strerror} while writing the run files in {run.dir.parent}: free some disk space, "
               "then resume the run (its last complete checkpoint is intact)")
    with contextlib.suppress(OSError):
        with open(run.dir / filenames.LOG, "a", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())
    try:
        write_status(run, "failed", error=msg)
    except OSError as status_error:  # the disk may be full: the log still holds the reason
        log(f"could not record the failure in {filenames.STATUS}: {status_error}")


def train(run: Run, *, resume: bool = False, device: str = "auto", log: Callable[[str], None] = print,
          emit_hook: Callable[[dict], None] | None = None) -> dict:
    """Train this run in this process: take the run lock, wait for the device, fit, record the outcome.

    Under torchrun only rank 0 touches the run folder; every rank trains. The dataset the trainer opens
    must be the one the run was created for (its fingerprint in config.json), else the run fails saying so.
    """
    from leukviz.training import engine

    rank = int(os.environ.get("RANK", "0"))
    cfg, fingerprint = run.config, run.info.get("dataset_fingerprint")
    stop_file = run.dir / filenames.STOP
    launch_info = read_json(run.dir / filenames.LAUNCH, None)
    launched = isinstance(launch_info, dict) and launch_info.get("pid") in (os.getpid(), os.getppid())
    if rank == 0 and not launched:
        log = _file_log(run, log)

    def should_stop() -> bool:
        return _SIGNALLED.is_set() or stop_file.exists()

    def emit(ev: dict) -> None:
        append_jsonl(run.dir / filenames.METRICS, ev)
        if ev.get("type") == events.EPOCH:
            write_status(run, "running", epoch=ev["epoch"], epochs=ev["epochs"])
        elif ev.get("type") == events.EARLY_STOP:  # kept in the status when the run then finishes
            write_status(run, "running", early_stop=ev["reason"])
        if emit_hook:
            emit_hook(ev)

    if rank != 0:
        return engine.fit(cfg, run.dir, lambda e: None, should_stop=should_stop, cache_dir=paths.cache_root(),
                          resume=resume, device_pref=device, log=log, fingerprint=fingerprint)
    lock = run.lock()
    try:
        lock.acquire(timeout=3)
    except Timeout:
        raise AlreadyRunning(f"run {run.run_id} is already being trained by another process") from None
    try:
        if not launched:  # launch() cleared old Stops; one sent while this process started must hold
            stop_file.unlink(missing_ok=True)
        if results_sound(run) and not resume:
            # Another process finished it between our caller's cache check and our lock: don't train twice.
            log(f"run {run.run_id} is already finished")
            return run.final_metrics()
        resume = _prepare_folder(run, resume, log)
        write_status(run, "queued", error=None, early_stop=None, epoch=0, epochs=cfg.epochs,
                     world_size=int(os.environ.get("WORLD_SIZE", 1)))
        with _device_slot(run, device, should_stop):
            write_status(run, "running")
            t0 = time.time()
            result = engine.fit(cfg, run.dir, emit, should_stop=should_stop, cache_dir=paths.cache_root(),
                                resume=resume, device_pref=device, log=log, fingerprint=fingerprint)
        write_status(run, "finished", metrics=result, seconds=time.time() - t0)
        _drop_resume_state(run, log)
        _summarise(run, log)
        return result
    except engine.Stopped as e:
        write_status(run, "stopped", error=str(e))
        raise
    except BaseException as e:
        _record_failure(run, e, log)
        raise
    finally:
        lock.release()


def _drop_resume_state(run: Run, log: Callable[[str], None]) -> None:
    """A finished run is served from its checkpoint and never resumes: its resumable state (filenames.RESUME:
    the raw weights, the average and the optimizer's moments: docs/BENCHMARKS.md for its size) goes. Best effort:
    one left behind only costs disk."""
    try:
        (run.dir / filenames.RESUME).unlink(missing_ok=True)
    except OSError as e:
        log(f"could not delete {filenames.RESUME} of the finished run ({e.strerror or e}); it is not needed")


def _summarise(run: Run, log: Callable[[str], None]) -> None:
    """Summarise the finished run once (runstore.summary), so listings read the summary and not its files.
    Best effort: the run is finished either way, and a listing computes a missing summary itself."""
    try:
        summary.refresh(run)
    except Exception as e:  # noqa: BLE001 - never turn a finished run into a failed one
        log(f"could not store the run's summary ({e}); listings compute it when they first read the run")


class _device_slot:
    """One training at a time per device: later runs wait here, as 'queued', until the device is free."""

    def __init__(self, run: Run, device: str, should_stop: Callable[[], bool]):
        from leukviz.models import devices

        kind = devices.pick_device(device).type
        if kind == "cuda":  # one queue per visible GPU set, so folds pinned to different GPUs run in parallel
            kind += os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "-")
        kind += os.environ.get(paths.DEVICE_SLOT, "")  # a device pool's worker: a queue of its own
        self.lock = FileLock(str(run.dir.parent / filenames.device_lock(kind)))
        self.should_stop = should_stop
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) == 1

    def __enter__(self):
        from leukviz.training import engine

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

