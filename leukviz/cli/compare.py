"""python -m leukviz compare: finished runs of one comparable group side by side, and --report."""

from __future__ import annotations

import argparse
import sys

from leukviz.cli.common import CliError, _bounded, _out, _output_file, _selected_runs, _without_degenerate


def _comparable(run_args: list[str], runs_dir) -> list:
    """The runs to compare: ids (a unique prefix is enough) or 'all'; they must share their validation
    cells (one comparable group), except that 'all' takes the largest group and says so."""
    from leukviz.comparison import compare

    chosen = [r for arg in run_args for r in _selected_runs(arg, runs_dir)]
    chosen = list({r.run_id: r for r in chosen if r.is_usable}.values())
    if run_args == ["all"]:  # as the Compare page's default: a degenerate run only when named (or all there is)
        chosen = _without_degenerate(chosen, "compare")
    if not chosen:
        raise CliError("no finished runs among those given; `runs list` shows them")
    groups = compare.comparable_groups(chosen)
    if len(groups) > 1:
        listing = "; ".join(f"{g.label}: {' '.join(r.run_id for r in g.runs)}" for g in groups.values())
        if run_args != ["all"]:
            raise CliError(f"these runs were not scored on the same validation cells, so they cannot be "
                           f"compared; give runs of one group: {listing}")
        print(f"comparing the largest of {len(groups)} groups (others: {listing})", file=sys.stderr)
    return next(iter(groups.values())).runs


def cmd_compare(args) -> int:
    """Runs side by side: mean ± sd over seeds, subject-bootstrap intervals, paired tests, the ensemble."""
    from leukviz.comparison import compare

    report_path = _output_file(args.report, "--report", "report.html") if args.report is not None else None
    evals, chosen = [], _comparable(args.runs, args.runs_dir)
    for problem in compare.backfill_test(chosen):
        print(problem, file=sys.stderr)
    for run in chosen:
        try:
            evals.append(compare.evaluate_run(run))
        except (OSError, KeyError, ValueError) as e:
            print(f"run {run.run_id} left out: {e}", file=sys.stderr)
    if not evals:
        raise CliError("none of the runs could be read")
    rep = compare.build_report(evals, n_resamples=args.resamples)
    if report_path is not None:
        from leukviz.app import report
        from leukviz.core.storage import write_output

        write_output(report_path, report.html_report(evals, rep=rep.to_dict()).encode())
        print(f"wrote the report to {report_path.shown}", file=sys.stderr)
    _out(args, compare.report_text(rep), rep.to_dict())
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
