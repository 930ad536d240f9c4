"""python -m leukviz compare: finished runs of one comparable group side by side, and --report."""

from __future__ import annotations

import argparse
import sys

from leukviz.cli.common import _bounded, _out, _output_file


def cmd_compare(args) -> int:
    """Runs side by side: mean ± sd over seeds, subject-bootstrap intervals, paired tests, the ensemble
    (api.compare: the runs chosen as select_comparable says, the test backfill, the report)."""
    from leukviz import api

    report_path = _output_file(args.report, "--report", "report.html") if args.report is not None else None
    result = api.compare(args.runs, resamples=args.resamples, runs_dir=args.runs_dir,
                         note=lambda s: print(s, file=sys.stderr))
    if report_path is not None:
        from leukviz.core.storage import write_output

        write_output(report_path, result.html().encode())
        print(f"wrote the report to {report_path.shown}", file=sys.stderr)
    _out(args, str(result), result.data)
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The compare command: the runs, the bootstrap resamples, the HTML report."""
    co = sub.add_parser("compare", parents=[common],
                        help="finished runs side by side: intervals, paired tests, the ensemble")
    co.add_argument("runs", nargs="+", metavar="RUN", help="run ids (a unique prefix is enough), or 'all'")
    co.add_argument("--resamples", type=_bounded(100, 100_000), default=2000,
                    help="bootstrap resamples, 100 to 100000 (default 2000)")
    co.add_argument("--report", metavar="FILE.html",
                    help="also write one self-contained HTML report (opens offline): data and split, the answer and "
                         "every paired test, intervals, curves, ROC, confusion matrices, calibration, per-subject "
                         "accuracy, settings and run ids, software and hardware")
    co.set_defaults(func=cmd_compare)
