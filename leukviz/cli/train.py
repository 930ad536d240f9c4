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
    _bounded,
    _device_value,
    _fmt,
    _health_text,
    _out,
    _resolve_cfg,
    _train_result,
    add_config_options,
)
from leukviz.core import paths
from leukviz.models import config as C


def _decide(args, runs) -> tuple[str, object, bool]:
    """Rank 0's decision for a train command: ('cached' | 'attach' | 'train' | 'detach', run, resume), by the
    one start policy (runs.ensure, --force on it) with --detach on top."""
    if args.run_dir:  # the launcher's form: the run folder and its config.json are ready
        return "train", runs.Run(Path(args.run_dir)), args.resume_here
    chosen: list = []

    def start(run, resume: bool) -> None:
        if not args.resume:  # a resume trains what is there; a new start needs its weights first
            from leukviz.models.backbones import ensure_weights
            ensure_weights(run.config.backbone, run.config.weights)
        # --resume continues from the resumable state whenever there is one (a failed run's too: a full disk
        # leaves its last complete checkpoint), where the policy would resume only a stopped run
        chosen.append(("detach" if args.detach and not args.resume else "train", run, resume or bool(args.resume)))

    if args.resume:  # a finished run is never trained again by a resume (it has nothing left to resume)
        run = runs.get_run(args.resume, args.runs_dir)
        action = runs.ensure(run, start)
        return chosen[0] if chosen else (action, run, False)
    cfg = _resolve_cfg(args)
    for caution in C.cautions(cfg):
        print(f"warning: {caution}", file=sys.stderr)
    run = runs.run_for(cfg, args.runs_dir)
    action = runs.ensure(run, start, force=args.force)
    return chosen[0] if chosen else (action, run, False)


def cmd_train(args) -> int:
    """Train, or return the cached run, or attach to the process already training it.

    Under torchrun every rank runs this; rank 0 decides (it alone reads and writes the run folder) and
    broadcasts the decision, so no rank waits for a collective the others never join.
    """
    from leukviz.runstore import runs, supervisor, trainer

    if args.cv:
        return cmd_cv(args)
    if getattr(args, "shard", None) and args.seeds < 2:
        raise CliError("--shard splits a group of runs: use it with --seeds N (or with study subjects)")
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
        supervisor.launch(run, resume=resume, device=args.device)
        _out(args, f"launched run {run.run_id} in the background ({run.dir})", _train_result(run, False, t0))
        return 0
    if action == "attach":
        log(f"run {run.run_id} is already training in another process: attaching")
        for ev in supervisor.follow(run):
            progress(ev)
    else:
        from leukviz.training import engine
        try:
            trainer.train(run, resume=resume, device=args.device, log=log, emit_hook=progress)
        except runs.AlreadyRunning:
            log(f"run {run.run_id} is already training in another process: attaching")
            for ev in supervisor.follow(run):
                progress(ev)
        except (KeyboardInterrupt, engine.Stopped):
            pass
        except Exception as e:  # recorded in status.json (traceback in train.log); one clear line here
            res = _train_result(run, False, t0)
            if args.json:
                print(json.dumps(res, default=str))
            print(f"error: run {run.run_id} {res['status']}: {res['error'] or e}", file=sys.stderr)
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
    envs = _pool_envs(args)
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


def _pool_envs(args) -> list[dict[str, str]]:
    """The device pool's workers for a group: one per GPU, or --workers on CPU (runstore.pool)."""
    from leukviz.runstore import pool

    if args.device not in ("auto", "cuda", "cpu") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return [{}]  # a named device (cuda:1, mps) or under torchrun: one run at a time, as asked
    return pool.worker_envs(args.device, args.workers)


def _pooled_repeats(args, cfgs: list, envs: list) -> tuple[list[dict], int]:
    """The seeds trained by the device pool, as many at once as it has workers, each its own process."""
    from leukviz.runstore import pool, runs

    t0 = time.time()
    group = [runs.run_for(cfg, args.runs_dir) for cfg in cfgs]
    p = pool.Pool(envs, args.device, log=lambda s: print(s, file=sys.stderr))
    print(f"{len(group)} runs on {len(envs)} workers", file=sys.stderr)
    try:
        p.run(group)
    except KeyboardInterrupt:
        print("stopping every run in flight (each keeps a resumable checkpoint)", file=sys.stderr)
        p.run(group, should_stop=lambda: True)
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

    With several GPUs the folds train in parallel, one process per GPU; otherwise one after another.
    """
    import dataclasses

    from leukviz.datasets import data
    from leukviz.models import devices
    from leukviz.runstore import runs, supervisor, trainer
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
    n_gpu = __import__("torch").cuda.device_count() if devices.pick_device(args.device).type == "cuda" else 0
    procs: list = []

    def on_a_gpu(run, resume: bool) -> None:  # the folds in parallel, one process per GPU, round robin
        procs.append(supervisor.launch(run, resume=resume, env={"CUDA_VISIBLE_DEVICES": str(len(procs) % n_gpu)}))

    def here(run, resume: bool) -> None:
        print(f"fold {run.config.val_fold}: run {run.run_id}", file=sys.stderr)
        try:
            trainer.train(run, resume=resume, device=args.device, log=lambda s: print(s, file=sys.stderr),
                          emit_hook=Progress())
        except Exception as e:  # noqa: BLE001 - recorded in the run; the other folds still run
            print(f"fold {run.config.val_fold} failed: {e}", file=sys.stderr)

    for run in fold_runs:  # the one start policy: a cached fold is kept, one in progress followed below
        runs.ensure(run, on_a_gpu if n_gpu > 1 else here)
    for p in procs:
        if p is not None:
            p.wait()
    for run in fold_runs:
        if run.is_locked():
            for _ in supervisor.follow(run):
                pass
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
    from leukviz.runstore import shards

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
                   help="train N runs differing only in seed (--seed, --seed + 1, ...), one after another, on one "
                        "split; then their mean and spread")
    t.add_argument("--workers", type=_bounded(1, 64), default=1,
                   help="with --seeds on CPU: train this many runs at once, each its own process, the cores split "
                        "between them (with several GPUs: one run per GPU at once, whatever this says)")
    t.add_argument("--shard", type=shards.parse, metavar="I/N",
                   help="with --seeds: train only every N-th seed starting at the I-th (a Slurm array task, or one "
                        "of N machines sharing the runs folder); a last call without --shard gathers them")
    t.add_argument("--run-dir", help=argparse.SUPPRESS)
    t.add_argument("--resume-here", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)
