"""leukviz tensorboard: runs' curves and final scores as TensorBoard event files, written afresh from each run's
metrics.jsonl (for runs trained before, or without, the tensorboard extra), then `tensorboard --logdir ...`."""

from __future__ import annotations

import argparse
import sys

from leukviz.cli.common import CliError, _out, _output_folder


def cmd_tensorboard(args) -> int:
    from leukviz.core.filenames import TENSORBOARD
    from leukviz.runstore import runs
    from leukviz.training import tblog

    if not tblog.available():
        raise CliError("TensorBoard event files need the tensorboard package: pip install 'leukviz[tensorboard]' "
                       "(or pip install tensorboard)")
    chosen = runs.list_runs(args.runs_dir) if args.runs == ["all"] else [runs.get_run(r, args.runs_dir)
                                                                           for r in args.runs]
    chosen = [r for r in chosen if not r.is_damaged and r.epochs()] if args.runs == ["all"] else chosen
    if not chosen:
        raise CliError("no runs with a finished epoch to export; `leukviz runs list` shows them")
    out = _output_folder(args.logdir, "--logdir") if args.logdir else None
    written = []
    for run in chosen:
        epochs = run.epochs()
        if not epochs:
            print(f"run {run.run_id} left out: no finished epoch yet", file=sys.stderr)
            continue
        logdir = out / run.run_id if out is not None else run.dir / TENSORBOARD
        tblog.write_run(logdir, epochs, run.config.to_dict(), run.final_metrics())
        written.append({"run_id": run.run_id, "epochs": len(epochs), "logdir": str(logdir)})
    root = out if out is not None else runs.runs_root(args.runs_dir, create=False)
    _out(args, "\n".join(f"run {w['run_id']}: {w['epochs']} epoch(s) -> {w['logdir']}" for w in written)
         + f"\nview them: tensorboard --logdir {root}", {"written": written, "logdir": str(root)})
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The tensorboard command: runs (or all), and where."""
    tb = sub.add_parser("tensorboard", parents=[common],
                        help="write runs' curves and scores as TensorBoard event files (needs tensorboard)")
    tb.add_argument("runs", nargs="+", metavar="RUN", help="run ids (a unique prefix is enough), or 'all'")
    tb.add_argument("--logdir", default=None,
                    help="write into LOGDIR/<run id> (default: each run's own folder, tensorboard/ beside its "
                         "metrics; `tensorboard --logdir` on the runs folder then shows every run)")
    tb.set_defaults(func=cmd_tensorboard)
