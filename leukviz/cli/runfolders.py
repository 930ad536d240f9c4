"""python -m leukviz runs list | delete: the run folders, a damaged one too; deleting moves them into the
runs folder's archive. (Named so that the run store's `runs` module keeps its name inside these commands.)"""

from __future__ import annotations

import argparse
import json

from leukviz.cli.common import CliError, _health_text, _out
from leukviz.core.errors import LeukvizError

_HEALTH_MARK = {"degenerate": " DEGENERATE", "unknown": " HEALTH-UNKNOWN"}


def cmd_runs(args) -> int:
    """Every run folder, a damaged one too: what is wrong with it and how to repair it (api.run_rows: read
    from each run's stored summary, computed once and again only when the run's files change); BEST marks each
    backbone's healthy run or repeat group with the best validation F1 on its dataset and split (runstore.best,
    the rule of every page), and a run that is not healthy says why, as --json does."""
    from leukviz import api
    from leukviz.runstore import runs

    rows = api.run_rows(args.runs_dir)
    if args.json:
        print(json.dumps({"runs": rows}))
        return 0
    if not rows:
        print(f"no runs in {runs.runs_root(args.runs_dir, create=False)}")
    for r in rows:
        acc = f"{r['val_acc']:.3f}" if r["val_acc"] is not None else "-"
        f1 = f"{r['val_f1']:.3f}" if r["val_f1"] is not None else "-"
        if r["backbone"] is None:  # config.json unreadable: nothing else to say about it
            print(f"{r['run_id']}  DAMAGED")
        else:
            print(f"{r['run_id']}  {r['backbone']:<10} {r['state'] + (' DAMAGED' if r['damaged'] else ''):<11} "
                  f"{r['preset']:<6} {r['weights']:<9} {r['image_size']}px {r['epochs']}ep split={r['split']:<8} "
                  f"val_acc={acc} val_f1={f1}  data={r['data']}" + ("  BEST" if r["best"] else "")
                  + _health_text(r))
        for problem in r["problems"]:
            print(f"    {problem}")
        if r["health"] == "unknown":  # as --json says: the text listing hides no health
            print(f"    health unknown: {'; '.join(r['health_reasons'])}")
    return 0


def cmd_runs_delete(args) -> int:
    """Remove runs: each folder moves into the runs folder's archive (runs.delete). Every id is resolved and
    checked first, so a typo or a run still training deletes none of them."""
    from leukviz.runstore import runs

    chosen: list = []
    for arg in args.run_ids:  # a unique prefix is enough, as everywhere; the same run named twice goes once
        run = runs.get_run(arg, args.runs_dir)
        if all(r.dir != run.dir for r in chosen):
            chosen.append(run)
    refused = [why for why in map(runs.delete_refusal, chosen) if why]
    if refused:
        raise CliError("; ".join(refused) + ("; nothing was deleted" if len(chosen) > 1 else ""))
    moved: list[dict] = []
    for run in chosen:
        try:
            moved.append({"run_id": run.run_id, "archived_to": str(runs.delete(run))})
        except LeukvizError as e:  # it started meanwhile: say which went before it
            done = ", ".join(m["run_id"] for m in moved)
            raise CliError(f"{e}" + (f" (already deleted: {done})" if done else "")) from None
    _out(args, "\n".join(f"deleted run {m['run_id']}: moved to {m['archived_to']}" for m in moved),
         {"deleted": moved})
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The runs commands: list and delete."""
    r = sub.add_parser("runs", help="list or delete runs")
    rs = r.add_subparsers(dest="runs_command", required=True)
    rl = rs.add_parser("list", parents=[common], help="list runs with their state and metrics")
    rl.set_defaults(func=cmd_runs)
    rd = rs.add_parser("delete", parents=[common],
                       help="remove runs: each folder moves into the runs folder's .archive/ (refused while training)")
    rd.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids (a unique prefix is enough)")
    rd.set_defaults(func=cmd_runs_delete)
