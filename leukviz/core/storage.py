"""Atomic file writes (write a temporary file, fsync, rename) and tolerant readers for run files."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _write_temp(path: Path, blob: bytes) -> str:
    """Write blob to a synced temporary file beside path (removed again if that fails); returns its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _sync_dir(folder: Path) -> None:
    """Make a rename durable: without this, a power cut can bring back the old directory entry."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    """Replace path with blob, or leave the old file untouched if anything fails (a full disk, say)."""
    atomic_write_files({Path(path): blob})


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Replace several files that belong together (a checkpoint and its sidecar).

    Every new file is written and synced before any is renamed into place, so a full disk or a crash
    while writing leaves all the old files, never a new weights file beside an old sidecar.
    """
    temps: dict[Path, str] = {}
    try:
        for path, blob in files.items():
            temps[Path(path)] = _write_temp(Path(path), blob)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for folder in {p.parent for p in temps}:
        _sync_dir(folder)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside path (same suffix) for a writer that wants a path of its own (an exporter); once
    the block ends without error it is synced and renamed into place, else removed: path is either the
    whole new file or what it was before (nothing, or the old file), never a cut-short one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)


def write_error_text(e: OSError, what: str = "") -> str:
    """An OSError from writing a user's file as one line: a full disk (or quota) says so and that nothing was
    left half-written; anything else names the file and the system's reason."""
    where = what or (str(e.filename) if e.filename else "the file")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: {where} could not be written (nothing half-written was left); free space and retry"
    return f"{where} could not be written: {e.strerror or e}"


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=_default) + "\n").encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def append_jsonl(path: Path, event: dict) -> None:
    """Append one event as a line, flushed and synced, so a reader never waits for a buffer."""
    line = json.dumps(event, default=_default, allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> Iterator[dict]:
    """Events of a metrics.jsonl; a truncated or corrupt line (a crash mid-write) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in path, or default when it is missing, unreadable, not UTF-8 or not JSON (the caller checks
    what it holds: runfiles has a schema per run file)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return default
