"""Command line: leukviz (or python -m leukviz) train | lr-find | runs | data | predict | evaluate | compare | study |
export | tensorboard | bench | app (see --help)."""

# One module per command family, each with its command functions and its add_parser(sub, common); what
# they share is in common. Torch is imported inside functions only: `--help` and a cached answer stay fast.

from __future__ import annotations

import argparse
import json
import sys

from leukviz import __version__
from leukviz.cli import app, bench, compare, dataset, export, lrfind, predict, runfolders, study, tblog, train
from leukviz.cli.common import CliError, Progress, _backbone_list, _resolve_cfg
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import write_error_text

__all__ = ["CliError", "Progress", "_backbone_list", "_resolve_cfg", "build_parser", "entry", "main"]

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


def main(argv: list[str] | None = None, *, process_entry: bool = False) -> int:
    """The CLI. process_entry (python -m leukviz, the launcher's worker): this process owns its signals, so for
    the commands that train, SIGTERM and SIGINT stop the training after its batch with its state saved
    (trainer.stop_on_signals). Called as a library (a test, a notebook), the caller keeps its own signals."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.func is app.cmd_app:  # `leukviz app --server.port 8502`: Streamlit's own options, passed through
        args.streamlit_options = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    trains = args.func in (train.cmd_train, study.cmd_study)
    try:
        if process_entry and trains:
            from leukviz.runstore import trainer

            with trainer.stop_on_signals():
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except (LeukvizError, KeyError, FileNotFoundError, ValueError, OSError) as e:
        # an OSError that is not a missing input (a full disk, no permission) is one line naming the file
        plain = isinstance(e, FileNotFoundError) or not isinstance(e, OSError) or isinstance(e, LeukvizError)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e) if plain else write_error_text(e)
        if getattr(args, "json", False):
            print(json.dumps({"error": msg}))
        print(f"error: {msg}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `leukviz` console command (pip's launcher): the same as `python -m leukviz`."""
    sys.exit(main(process_entry=True))
