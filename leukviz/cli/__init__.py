"""Command line: python -m leukviz train | lr-find | runs | data | predict | evaluate | study | export | bench (see --help)."""

# One module per command family, each with its command functions and its add_parser(sub, common); what
# they share is in common. Torch is imported inside functions only: `--help` and a cached answer stay fast.

from __future__ import annotations

import argparse
import json
import sys

from leukviz.cli import bench, compare, dataset, export, lrfind, predict, runfolders, study, train
from leukviz.cli.common import CliError, Progress, _backbone_list, _resolve_cfg
from leukviz.core.errors import LeukvizError
from leukviz.core.storage import write_error_text

__all__ = ["CliError", "Progress", "_backbone_list", "_resolve_cfg", "build_parser", "main"]

# The subcommands in their --help order (predict adds predict and evaluate).
COMMANDS = (train, runfolders, dataset, predict, compare, study, export, bench, lrfind)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m leukviz", description=__doc__)
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
    args = build_parser().parse_args(argv)
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
