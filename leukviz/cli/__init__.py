"""Command line: leukviz (or python -m leukviz) train | lr-find | runs | data | predict | evaluate | compare | study |
export | tensorboard | bench | app (see --help)."""

# One module per command family, each with its command functions and its add_parser(sub, common); what
# they share is in common. Torch is imported inside functions only: `--help` and a cached answer stay fast.

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

from leukviz import __version__
from leukviz.cli import app, bench, compare, dataset, export, lrfind, predict, runfolders, study, tblog, train
from leukviz.cli.common import CliError, Progress, _backbone_list, _resolve_cfg
from leukviz.core import storage
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import write_error_text

__all__ = ["CliError", "Progress", "_backbone_list", "_resolve_cfg", "build_parser", "entry", "finish", "main"]

# The subcommands in their --help order (predict adds predict and evaluate).
COMMANDS = (train, runfolders, dataset, predict, compare, study, export, tblog, bench, lrfind, app)


def build_parser(prog: str = "leukviz") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--version", action="version", version=f"leukviz {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", default=None, help="runs folder (default: $LEUKVIZ_HOME/runs)")
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    for command in COMMANDS:
        command.add_parser(sub, common)
    return p


class Terminated(BaseException):
    """SIGTERM or SIGHUP in a command that does not train: raised like KeyboardInterrupt, so every writer's
    cleanup runs (storage removes its temporaries on any BaseException) before the process ends."""


@contextlib.contextmanager
def _signals_as_exceptions(active: bool) -> Iterator[None]:
    """For python -m leukviz's commands that do not train: SIGTERM and SIGHUP raise Terminated instead of
    killing the process on the spot (which left a hidden report temporary and a 0-byte .partial.onnx)."""
    if not active:
        yield
        return

    def stop(signum, frame):
        raise Terminated(signum)

    wanted = [sig for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if sig]
    old = {sig: signal.signal(sig, stop) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _stdout_outputs(args) -> bool:
    """Whether one of the command's files (--csv, --report, --out) goes to standard output."""
    for name in ("csv", "report", "out"):
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            with contextlib.suppress(storage.OutputError):
                if storage.output_target(value).to_stdout:
                    return True
    return False


def _say(args, msg: str) -> None:
    """The one error line on stderr (and as JSON on stdout with --json); a closed pipe is not an error more."""
    with contextlib.suppress(OSError, ValueError):
        if getattr(args, "json", False):
            print(json.dumps({"error": msg}), flush=True)
    with contextlib.suppress(OSError, ValueError):
        print(f"error: {msg}", file=sys.stderr, flush=True)


def _pipe_closed() -> int:
    """The reader of stdout went away (`| head`): stop quietly. stdout now points at /dev/null, so the
    interpreter's last flush does not raise a second BrokenPipeError; the status is a SIGPIPE death's."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + getattr(signal, "SIGPIPE", 13)


def main(argv: list[str] | None = None, *, process_entry: bool = False) -> int:
    """The CLI. process_entry (python -m leukviz, the launcher's worker): this process owns its signals, so for
    the commands that train, SIGTERM and SIGINT stop the training after its batch with its state saved
    (trainer.stop_on_signals); the other commands turn SIGTERM and SIGHUP into Terminated. Called as a library
    (a test, a notebook), the caller keeps its own signals. Every command ends a closed stdout pipe quietly
    (exit 141), an interrupt with one line (exit 130; 143 for SIGTERM), an error with one line (exit 2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.func is app.cmd_app:  # `leukviz app --server.port 8502`: Streamlit's own options, passed through
        args.streamlit_options = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    trains = args.func in (train.cmd_train, study.cmd_study)
    reserve = storage.stdout_reserved() if _stdout_outputs(args) else contextlib.nullcontext()
    try:
        with _signals_as_exceptions(process_entry and not trains), reserve:
            if process_entry and trains:
                from leukviz.runstore import trainer

                with trainer.stop_on_signals():
                    return int(args.func(args) or 0)
            return int(args.func(args) or 0)
    except BrokenPipeError:
        return _pipe_closed()
    except KeyboardInterrupt:
        _say(args, "interrupted: stopped before the end; no file was left half-written")
        return 130
    except Terminated as e:
        _say(args, f"terminated by signal {e.args[0] if e.args else ''}: stopped before the end; no file was left "
                   "half-written")
        return 128 + (e.args[0] if e.args else 15)
    except (LeukvizError, KeyError, FileNotFoundError, ValueError, OSError) as e:
        # an OSError that is not a missing input (a full disk, no permission) is one line naming the file
        plain = isinstance(e, FileNotFoundError) or not isinstance(e, OSError) or isinstance(e, LeukvizError)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e) if plain else write_error_text(e)
        _say(args, msg)
        return 2


def entry() -> None:
    """The `leukviz` console command (pip's launcher): the same as `python -m leukviz`."""
    finish(main(process_entry=True))


def finish(code: int) -> NoReturn:
    """End the command's process with code. Where torch was imported and no other thread runs, the
    interpreter's exit handlers (atexit: temporary folders, logging, multiprocessing) run and the output is
    flushed, then the process ends at once (os._exit), without the native libraries' exit-time destructors:
    on a CUDA build of torch those page in about 130 MB more than the command ever used and take seconds
    after it is done (docs/BENCHMARKS.md, "Scale"). Otherwise, the interpreter's own exit (sys.exit)."""
    if "torch" in sys.modules and threading.active_count() == 1:
        atexit._run_exitfuncs()
        for out in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                out.flush()
        os._exit(code)
    sys.exit(code)
