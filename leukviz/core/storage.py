"""Atomic file writes (write a temporary file, fsync, rename), the one rule for every file written for a user
(output, output_path: a regular file or a new name is replaced whole; stdout, a pipe or a character device is
written as a stream; anything else is refused in one line), and readers that open only regular files (a FIFO
in a run folder never hangs a reader)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from leukviz.core.errors import LeukvizError

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def umask() -> int:
    """This process's umask, read without changing it where /proc tells it (os.umask must set it to read it,
    which races with other threads writing files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _new_file_mode() -> int:
    """The mode open() gives a new file (0666 less the umask): a temporary file (mkstemp makes them 0600) gets
    it before it is renamed into place, so a report is as readable as any file the user writes."""
    return 0o666 & ~umask()


def _temp_prefix(name: str) -> str:
    """A hidden temporary's prefix that keeps its name within NAME_MAX even beside a long final name."""
    return "." + name.encode()[:120].decode("utf-8", "ignore") + "."


def _write_temp(path: Path, blob: bytes) -> str:
    """Write blob to a synced temporary file beside path (removed again if that fails); returns its name. It
    has the mode of the file it replaces, or a new file's (umask) mode."""
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        _copy_mode(tmp, path)
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
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.stem), suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _copy_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)


def _copy_mode(tmp: str | Path, path: Path) -> None:
    """Give a temporary the mode (and, where allowed, the owner) of the file it will replace, or a new file's
    mode: an existing 0644 report stays 0644, a new one is 0666 less the umask, never mkstemp's 0600."""
    try:
        st = os.stat(path)
    except OSError:
        os.chmod(tmp, _new_file_mode())
        return
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.stat(tmp).st_uid, os.stat(tmp).st_gid):
        with contextlib.suppress(OSError):
            os.chown(tmp, st.st_uid, st.st_gid)


# ---------------------------------------------------------------------------------------------- user outputs

STDOUT = "-"


class OutputError(LeukvizError, ValueError):
    """A file for the user cannot be written there; the message is one line naming it and why."""


class NotRegularFile(OSError):
    """A file to read is a pipe, socket, device or folder: never opened for reading (a FIFO would block)."""

    def __str__(self) -> str:
        return f"{Path(str(self.filename)).name} is not a regular file ({self.strerror})"


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, words in ((stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


@dataclass(frozen=True)
class OutputTarget:
    """Where a file for the user goes. kind "file": a regular file or a new name, replaced whole by a rename
    (path is the real file: a symbolic link is written through to its target and stays a link); "stdout":
    this process's standard output; "stream": a pipe (FIFO) or a character device, opened and written in
    order, never renamed over."""

    shown: str
    kind: str
    path: Path | None = None

    @property
    def to_stdout(self) -> bool:
        return self.kind == "stdout"


def shorten(text: str, keep: int = 120) -> str:
    """A name for a one-line message: a name of hundreds of characters shown by its two ends."""
    return text if len(text) <= keep else f"{text[:keep // 2]}…{text[-(keep // 3):]}"


def _is_stdout(st: os.stat_result) -> bool:
    """Whether st is this process's standard output (file descriptor 1): /dev/stdout, /proc/self/fd/1."""
    with contextlib.suppress(OSError):
        return os.path.samestat(st, os.fstat(1))
    return False


_RESERVED: list[IO[str]] = []  # the real stdouts, while a user's file streams there


@contextlib.contextmanager
def stdout_reserved() -> Iterator[None]:
    """While a user's file streams to stdout (`--csv -`), the command's own text goes to stderr, so what a
    pipe reads is the file alone; output() writes to the stdout saved here."""
    _RESERVED.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESERVED.pop()


def output_target(path: str | Path, flag: str = "", example: str = "output") -> OutputTarget:
    """Classify where a user's file goes (the output rule), or OutputError in one line: an empty name, a
    folder, a socket or block device, a name over NAME_MAX bytes, a path through a file. `-` is stdout."""
    text = str(path)
    lead = f"{flag} {shorten(text)}".strip()
    if not text.strip():
        raise OutputError(f"{flag or 'the output'} is empty: give a file name (e.g. {example}), or - for standard "
                          "output")
    if text == STDOUT:
        return OutputTarget(text, "stdout")
    p = Path(text).expanduser()
    if len(p.name.encode()) > NAME_MAX:
        raise OutputError(f"{lead}: the file name is too long ({len(p.name.encode())} bytes; at most {NAME_MAX})")
    try:
        st = os.stat(p)  # follows a symbolic link: the kind of what it points at
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise OutputError(f"{lead}: cannot make its folder {shorten(str(p.parent))} (a part of that path is a "
                          "file, not a folder)") from None
    except OSError as e:
        raise OutputError(f"{lead} cannot be used: {e.strerror or e}") from None
    if st is None or stat.S_ISREG(st.st_mode):
        if text.endswith(("/", os.sep)):
            raise OutputError(f"{lead} names a folder; give a file name, e.g. {p / example}")
        real = Path(os.path.realpath(p))
        if len(real.name.encode()) > NAME_MAX:
            raise OutputError(f"{lead}: the file name is too long ({len(real.name.encode())} bytes; at most {NAME_MAX})")
        return OutputTarget(text, "file", real)
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{lead} is a folder; give a file name, e.g. {p / example}")
    if _is_stdout(st):
        return OutputTarget(text, "stdout")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return OutputTarget(text, "stream", p)
    raise OutputError(f"{lead} is {file_kind(st.st_mode)}: give a file name, a pipe, or - for standard output")


def prepare_output(path: str | Path, flag: str = "", example: str = "output") -> OutputTarget:
    """output_target, then (for a file) its folder made and probed with a temporary file, all before the
    work: a folder that cannot be made or written in (/proc, a read-only disk) is one OutputError naming it."""
    t = output_target(path, flag, example)
    if t.kind != "file":
        return t
    lead = f"{flag} {shorten(str(path))}".strip()
    folder = t.path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".leukviz-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{lead}: cannot write in the folder {folder} ({e.strerror or e})") from None
    return t


@contextlib.contextmanager
def _stream(t: OutputTarget) -> Iterator[IO[bytes]]:
    """A pipe or character device opened for writing; a pipe nobody reads is refused, not waited on."""
    try:
        fd = os.open(t.path, os.O_WRONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise OutputError(f"{t.shown} is a pipe that nobody reads: start its reader first") from None
        raise OutputError(f"{t.shown} cannot be opened: {e.strerror or e}") from None
    with contextlib.suppress(ImportError, OSError):
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    with os.fdopen(fd, "wb") as fh:
        yield fh


@contextlib.contextmanager
def output(dest: str | Path | OutputTarget) -> Iterator[IO[bytes]]:
    """A binary file to write a user's file into, by the output rule: a regular file or a new name is written
    to a hidden temporary beside it, synced and renamed into place once the block ends (an error, an
    interrupt or a kill's signal leaves the old file or nothing, and no temporary); stdout and pipes or
    character devices are written as streams. A write error on a stream is an OutputError naming it."""
    t = dest if isinstance(dest, OutputTarget) else output_target(dest)
    if t.kind == "file":
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(t.path.name), suffix=".partial", dir=t.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            _copy_mode(tmp, t.path)
            os.replace(tmp, t.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _sync_dir(t.path.parent)
        return
    try:
        if t.kind == "stdout":
            out = _RESERVED[-1] if _RESERVED else sys.stdout
            out.flush()
            yield out.buffer
            out.buffer.flush()
            return
        with _stream(t) as fh:
            yield fh
    except BrokenPipeError:
        if t.kind == "stdout":
            raise  # the reader of stdout went away: the CLI ends quietly
        raise OutputError(f"{t.shown}: its reader closed the pipe before the end") from None
    except OSError as e:
        if e.filename is not None or isinstance(e, NotRegularFile):
            raise
        raise OutputError(f"{t.shown} could not be written: {e.strerror or e}") from None


def write_output(dest: str | Path | OutputTarget, blob: bytes) -> None:
    """Write blob to a user's file by the output rule (output)."""
    with output(dest) as fh:
        fh.write(blob)


@contextlib.contextmanager
def output_path(dest: str | Path | OutputTarget) -> Iterator[Path]:
    """For a writer that needs a path of its own (an exporter): a temporary path; once the block ends it is
    renamed into place (a file, atomic_path) or copied into the stream (stdout, a pipe) and removed."""
    t = dest if isinstance(dest, OutputTarget) else output_target(dest)
    if t.kind == "file":
        with atomic_path(t.path) as tmp:
            yield tmp
        return
    folder = Path(tempfile.mkdtemp(prefix="leukviz-out-"))
    try:
        tmp = folder / (Path(t.shown).name or "output")
        yield tmp
        with open(tmp, "rb") as src, output(t) as fh:
            shutil.copyfileobj(src, fh)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- reading

def open_regular(path: str | Path) -> IO[bytes]:
    """path opened for reading in binary only if it is a regular file (a symbolic link to one is followed):
    it is opened without blocking and checked (fstat) before a byte is read, so a FIFO, socket or device
    put in place of a run file raises NotRegularFile at once instead of hanging the reader."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, file_kind(mode), str(path))
        with contextlib.suppress(ImportError, OSError):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path) -> bytes:
    """A regular file's bytes (open_regular): NotRegularFile for anything else, never a hang."""
    with open_regular(path) as fh:
        return fh.read()


def read_text(path: str | Path, errors: str = "strict") -> str:
    """A regular file's UTF-8 text (open_regular)."""
    return read_bytes(path).decode("utf-8", errors)


def is_regular_or_missing(path: str | Path) -> bool:
    """Whether path is a regular file (a link to one counts) or does not exist: what a reader may open."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # errors only a write can give


def write_error_text(e: OSError, what: str = "") -> str:
    """An OSError as one line: a full disk (or quota) says so and that nothing was left half-written; other
    errors only a write gives say the file could not be written; any other (a name too long, no permission,
    a loop of links, which a reading command gets too) names the file and the system's reason alone."""
    where = shorten(what or (str(e.filename) if e.filename else "the file"))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: {where} could not be written (nothing half-written was left); free space and retry"
    if e.errno in WRITE_ERRNOS:
        return f"{where} could not be written: {e.strerror or e}"
    if isinstance(e, NotRegularFile):
        return str(e)
    return f"{where}: {e.strerror or e}"


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
        text = read_text(path, errors="replace")
    except OSError:  # missing, or not a regular file (a FIFO would hang the reader)
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
        return json.loads(read_text(path))
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return default
