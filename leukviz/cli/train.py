"""python -m leukviz train: one run (cached, attached, detached or trained here; under torchrun on every
rank), --seeds N repeats of one configuration, --cv over the official folds. The hidden --run-dir and
--resume-here are the launcher's worker (supervisor.launch)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from leukviz.cli.common import (
    CliError,
    Progress,
    _device_value,
    _fmt,
    _health_text,
    _out,
    _resolve_cfg,
    _train_result,
    add_config_options,
    add_group_options,
    pool_envs,
)
from leukviz.core import paths
from leukviz.models import config as C


def _decide(args, runs) -> tuple[str, object, bool]:
    """Rank 0's decision for a train command: ('cached' | 'attach' | 'train' | 'detach', run, resume), by the
    one driver's decide (runstore.driver: the start policy, --force on it, --resume from any resumable state, a
    new start's weights checked) with --detach on top."""
    from leukviz.runstore import driver

    if args.run_dir:  # the launcher's form: the run folder and its config.json are ready
        return "train", runs.Run(Path(args.run_dir)), args.resume_here
    if args.resume:  # a finished run is never trained again by a resume (it has nothing left to resume)
        run = runs.get_run(args.resume, args.runs_dir)
        plan = driver.decide(run, resume=True)
    else:
        cfg = _resolve_cfg(args)
        for caution in C.cautions(cfg):
            print(f"warning: {caution}", file=sys.stderr)
        run = runs.run_for(cfg, args.runs_dir)
        plan = driver.decide(run, force=args.force)
    if not plan.starts:
        return plan.action, run, False
    return ("detach" if args.detach and not args.resume else "train"), run, plan.resume


def cmd_train(args) -> int:
    """Train, or return the cached run, or attach to the process already training it.

    Under torchrun every rank runs this; rank 0 decides (it alone reads and writes the run folder) and
    broadcasts the decision, so no rank waits for a collective the others never join.
    """
    from leukviz.runstore import driver, runs, trainer

    if getattr(args, "shard", None) and (args.seeds < 2 or args.cv):
        raise CliError("--shard splits a group of runs: use it with --seeds N (or with a study)")
    if args.cv:
        return cmd_cv(args)
    if args.seeds > 1:
        return cmd_repeats(args)
    t0 = time.time()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from leukviz.training import engine
        d, _ = engine.init_distributed(args.device)
    else:  # torch is not imported before it is needed: a cached answer comes back at once
        from types import SimpleNamespace
        d = SimpleNamespace(main=True, on=False)
    log = (lambda s: print(s, file=sys.stderr)) if d.main else (lambda s: None)
    progress = Progress(enabled=d.main)
    decision: list = [None]
    if d.main:
        try:
            action, run, resume = _decide(args, runs)
            decision = [(action, str(run.dir), resume)]
        except Exception as e:
            decision = [("error", str(e), False)]
    if d.on:
        import torch.distributed as dist
        dist.broadcast_object_list(decision, src=0)
    action, where, resume = decision[0]
    if action == "error":
        if d.main:
            raise CliError(where)
        return 2
    run = runs.Run(Path(where))
    if not d.main:
        if action == "train":
            trainer.train(run, resume=resume, device=args.device, log=log)
        return 0
    if action == "cached":
        res = _train_result(run, True, t0)
        _out(args, f"cached: run {run.run_id} already finished ({run.dir}); "
                   f"val acc {res['metrics'].get('val_acc', float('nan')):.3f}", res)
        return 0
    if action == "detach":
        driver.carry_out(run, driver.Plan("train", resume), where=driver.DETACHED, device=args.device)
        _out(args, f"launched run {run.run_id} in the background ({run.dir})", _train_result(run, False, t0))
        return 0
    from leukviz.training.protocol import Stopped  # torch-free: an attach imports no torch

    def said(what: str) -> None:
        if what == "attach":
            log(f"run {run.run_id} is already training in another process: attaching")

    try:  # the one driver: follow the process that has the run, or train it here
        done = driver.carry_out(run, driver.Plan(action, resume), device=args.device, log=log, progress=progress,
                                said=said)
    except KeyboardInterrupt:
        done = None
    if done is not None and done.error is not None and not isinstance(done.error, Stopped):
        res = _train_result(run, False, t0)  # recorded in status.json (traceback in train.log); one clear line here
        if args.json:
            print(json.dumps(res, default=str))
        print(f"error: run {run.run_id} {res['status']}: {res['error'] or done.error}", file=sys.stderr)
        return 1
    res = _train_result(run, False, t0)
    _out(args, f"run {run.run_id} {res['status']} ({run.dir}): " +
         ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items() if isinstance(v, float)) +
         (f"; {res['early_stop']}" if res["early_stop"] else "") + _health_text(res), res)
    return 0 if res["status"] == "finished" else 1


def cmd_repeats(args) -> int:
    """--seeds N: N cached runs of one configuration differing only in seed (config.repeats: one split for
    all), trained one after another here, or by the device pool (one per GPU, or --workers on CPU) as many at
    once as it has workers; then each run's validation scores and their mean and spread."""
    from leukviz.scoring import metrics

    if args.resume or args.run_dir or args.cv:
        raise CliError("--seeds makes new runs: it does not go with --resume or --cv")
    from leukviz.runstore import shards

    group = C.repeats(_resolve_cfg(args), args.seeds)
    cfgs = shards.pick(group, args.shard)  # a shard trains its part of the seeds; without one, all (cached or not)
    if not cfgs:
        raise CliError(f"shard {args.shard} of {len(group)} seeds holds none: use at most {len(group)} shards")
    envs = pool_envs(args)
    if len(envs) > 1:
        results, worst = _pooled_repeats(args, cfgs, envs)
    else:
        results, worst = _sequential_repeats(args, cfgs)
    spread = {k: metrics.seed_spread([r["metrics"][k] for r in results if r["metrics"].get(k) is not None])
              for k in ("val_acc", "val_f1")}
    lines = [f"{len(results)} seeds of {cfgs[0].backbone} (one split, seed {cfgs[0].split_rng_seed})"
             + (f", shard {args.shard} of a group of {len(group)}" if args.shard else "") + ":"]
    lines += [f"  seed {c.seed}: run {r['run_id']} {r['status']}  val acc {_fmt(r['metrics'].get('val_acc'), 3)}  "
              f"F1 {_fmt(r['metrics'].get('val_f1'), 3)}" for c, r in zip(cfgs, results)]
    lines += [f"  {k}: {_fmt(v['mean'], 3)} ± {_fmt(v['sd'], 3)} over {v['n']} seeds" for k, v in spread.items()]
    _out(args, "\n".join(lines), {"runs": results, "spread": spread, "shard": str(args.shard) if args.shard else None})
    return worst


def _pooled_repeats(args, cfgs: list, envs: list) -> tuple[list[dict], int]:
    """The seeds trained by the device pool, as many at once as it has workers, each its own process."""
    from leukviz.runstore import pool, runs

    t0 = time.time()
    group = [runs.run_for(cfg, args.runs_dir) for cfg in cfgs]
    p = pool.Pool(envs, args.device, log=lambda s: print(s, file=sys.stderr))
    print(f"{len(group)} runs on {len(envs)} workers", file=sys.stderr)
    p.run_or_stop(group)
    results = [_train_result(r, False, t0) for r in group]
    return results, 0 if all(r["status"] == "finished" for r in results) else 1


def _sequential_repeats(args, cfgs: list) -> tuple[list[dict], int]:
    """The seeds trained one after another in this process."""
    from leukviz.runstore import runs

    results, worst = [], 0
    for i, cfg in enumerate(cfgs, 1):
        one = argparse.Namespace(**{**vars(args), "seeds": 1, "shard": None, "json": False, "seed": cfg.seed,
                                    "split_seed": cfg.split_seed})
        print(f"seed {cfg.seed} ({i} of {len(cfgs)}):", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # each run's own line; stdout keeps the summary
            worst = max(worst, cmd_train(one))
        results.append(_train_result(runs.run_for(cfg, args.runs_dir), False, time.time()))
    return results, worst


def cmd_cv(args) -> int:
    """Cross-validation over the official folds: one cached run per validation fold, then mean and spread.

    With several GPUs (or --workers on CPU) the folds train in parallel on the device pool, one process per GPU
    (or worker); otherwise one after another here.
    """
    import dataclasses

    from leukviz.datasets import data
    from leukviz.runstore import driver, runs
    from leukviz.scoring import metrics

    t0 = time.time()
    if args.split not in (None, "folds"):
        raise CliError("--cv runs over the official folds: use it with --split folds")
    args.split = "folds"
    base = _resolve_cfg(args)
    ds = data.open_dataset(base.data, paths.cache_root())
    folds = sorted(set(ds.train_rows["fold"]) - {-1})
    if len(folds) < 2:
        raise CliError(f"cross-validation needs official folds; {base.data} has {folds or 'none'}")
    fold_runs = [runs.run_for(dataclasses.replace(base, val_fold=f), args.runs_dir, ds.fingerprint) for f in folds]
    envs = pool_envs(args)
    if len(envs) > 1:  # the folds in parallel on the device pool: one per GPU, or --workers on CPU
        from leukviz.runstore import pool

        pool.Pool(envs, args.device, log=lambda s: print(s, file=sys.stderr)).run_or_stop(fold_runs)
    for run in fold_runs if len(envs) == 1 else ():  # the one driver: cached kept, in progress followed, or trained
        out = driver.obtain(run, device=args.device, log=lambda s: print(s, file=sys.stderr), progress=Progress(),
                            said=lambda a, run=run: a in ("train", "resume") and print(
                                f"fold {run.config.val_fold}: run {run.run_id}", file=sys.stderr))
        if out.error is not None:  # recorded in the run; the other folds still run
            print(f"fold {run.config.val_fold} failed: {out.error}", file=sys.stderr)
    per_fold = [{"fold": r.config.val_fold, "run_id": r.run_id, "status": r.state, **r.final_metrics()}
                for r in fold_runs]
    done = [f for f in per_fold if f["status"] == "finished"]
    summary = {}
    for key in ("val_acc", "val_f1", "val_loss"):
        vals = [f[key] for f in done if key in f]
        if vals:
            summary[key] = metrics.mean_sd(vals)  # the one mean ± sd (sample sd; None for one fold)
    res = {"cv": True, "backbone": base.backbone, "folds": per_fold, "summary": summary,
           "status": "finished" if len(done) == len(per_fold) else "failed", "seconds": round(time.time() - t0, 2)}
    lines = [f"fold {f['fold']}: {f['status']} val_acc {f.get('val_acc', float('nan')):.4f} "
             f"val_f1 {f.get('val_f1', float('nan')):.4f}" for f in per_fold]
    lines += [f"{k}: mean {v['mean']:.4f} ± {_fmt(v['sd'], 4)} over {v['n']} folds" for k, v in summary.items()]
    _out(args, "\n".join(lines), res)
    return 0 if res["status"] == "finished" else 1


def _seed_count(text: str) -> int:
    n = int(text)
    if not 1 <= n <= C.MAX_REPEATS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {C.MAX_REPEATS}")
    return n


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The train command: the RunConfig options (add_config_options) and how to run it."""
    from leukviz.models.backbones import BACKBONES

    t = sub.add_parser("train", parents=[common], help="train a backbone (or return the cached run)")
    t.add_argument("--backbone", choices=list(BACKBONES), default="resnet50")
    t.add_argument("--data", default="demo", help="demo (built in), a C-NMC folder, a class-per-folder tree or a .zip")
    t.add_argument("--weights", default="imagenet", help="imagenet | none | path to a weights file")
    t.add_argument("--preset", choices=C.PRESETS, default="quick")
    add_config_options(t)
    t.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a stopped or interrupted run")
    t.add_argument("--force", action="store_true", help="retrain even if this configuration finished before")
    t.add_argument("--detach", action="store_true", help="start in the background and return")
    t.add_argument("--cv", action="store_true", help="cross-validate over the official folds (with --split folds)")
    t.add_argument("--seeds", type=_seed_count, default=1, metavar="N",
                   help="train N runs differing only in seed (--seed, --seed + 1, ...) on one split, one after another "
                        "or --workers at once; then their mean and spread")
    add_group_options(t, "the runs of --seeds (--workers: of --cv too)")
    t.add_argument("--run-dir", help=argparse.SUPPRESS)
    t.add_argument("--resume-here", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)
