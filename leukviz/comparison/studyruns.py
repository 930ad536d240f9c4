"""What every study shares: the finished run of a configuration (finished_run: the run store's one driver,
driver.obtain, with the study's words and a StudyError when it does not finish), a group of them trained on the
device pool first (train_group), a shard's part of them (train_shard), what a study reports of a run, the weights it starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from leukviz.core import paths
from leukviz.core.errors import LeukvizError
from leukviz.datasets import data
from leukviz.models import backbones
from leukviz.models.config import RunConfig
from leukviz.runstore import driver, runs, shards

Log = Callable[[str], None]
Progress = Callable[[dict], None]
WORDS = {"cached": "cached", "attach": "being trained by another process, waiting for it", "train": "training",
         "resume": "training"}


class StudyError(LeukvizError, RuntimeError):
    """A run of a study did not finish; the message names it and says why."""


def finished_run(cfg: RunConfig, runs_dir: str | Path | None = None, *, log: Log = print,
                 progress: Progress | None = None, device: str = "auto") -> runs.Run:
    """The finished run of this config: cached if it exists, else trained here (or waited for, when another
    process is training it), by the one driver (runstore.driver). Raises StudyError if it does not finish."""
    run = runs.run_for(cfg, runs_dir)
    what = f"{cfg.backbone} split={cfg.split} ({run.run_id})"
    done = driver.obtain(run, device=device, log=log, progress=progress, said=lambda a: log(f"{what}: {WORDS[a]}"))
    if not done.finished:
        raise StudyError(f"run {run.run_id} ({what}) ended {run.state}: {done.why()}")
    return run


def train_group(cfgs: Sequence[RunConfig], runs_dir: str | Path | None = None, *, log: Log = print,
                progress: Progress | None = None, device: str = "auto", envs: Sequence[dict] = ({},)) -> list[runs.Run]:
    """Every run of a group finished, in its order: with several workers (runstore.pool.worker_envs) the pool
    trains them first, as many at once as it has workers, each its own process; then each is finished_run (a
    cached one at once; one the pool did not finish is trained again here, and a second failure named)."""
    pool_train(cfgs, envs, runs_dir, log, device)
    return [finished_run(cfg, runs_dir, log=log, progress=progress, device=device) for cfg in cfgs]


def train_shard(cfgs: Sequence[RunConfig], shard: shards.Shard, runs_dir: str | Path | None = None, *,
                log: Log = print, progress: Progress | None = None, device: str = "auto",
                envs: Sequence[dict] = ({},)) -> list[str]:
    """A shard's part of a study's runs (shards.pick of its fixed order) finished: trained on the pool, found cached,
    or followed when another process has one; their ids. Nothing is scored: a last call without a shard gathers."""
    mine = shards.pick(cfgs, shard)
    pool_train(mine, envs, runs_dir, log, device)
    done = []
    for i, cfg in enumerate(mine, 1):
        log(f"shard {shard}: run {i} of {len(mine)} ({len(cfgs)} in the study)")
        done.append(finished_run(cfg, runs_dir, log=log, progress=progress, device=device).run_id)
    return done


def pool_train(cfgs: Sequence[RunConfig], envs: Sequence[dict], runs_dir: str | Path | None = None,
               log: Log = print, device: str = "auto") -> None:
    """Train runs on the device pool's workers (runstore.pool), as many at once as it has; nothing with one
    worker (the runs then train one after another, here, through finished_run). A stop (Ctrl-C, a signal) is a
    StudyError once the runs in flight have stopped."""
    from leukviz.runstore import pool

    if len(envs) < 2 or not cfgs:
        return
    fp = data.open_dataset(cfgs[0].data, paths.cache_root()).fingerprint
    group = [runs.run_for(c, runs_dir, fingerprint=fp) for c in cfgs]
    log(f"{len(group)} runs on {len(envs)} workers")
    p = pool.Pool(envs, device, log=log)
    p.run_or_stop(group)
    if p.stopped:  # nothing more trains: the runs keep their resumable state for the next call
        raise StudyError("stopped: every run in flight was asked to stop (each keeps a resumable checkpoint) and no "
                         "other started; the same command resumes the study")


def run_scores(run: runs.Run) -> dict:
    """What a study reports of one run: its id, best-epoch validation scores and what the split held."""
    m = run.final_metrics()
    split = run.meta().get("split") or {}
    return {"run_id": run.run_id, "split": run.config.split, "val_acc": m.get("val_acc"),
            "val_f1": m.get("val_f1"), "best_epoch": m.get("best_epoch"), "n_train": split.get("n_train"),
            "n_val": split.get("n_val"), "split_description": split.get("description")}


def resolve_weights(backbone: str, weights: str) -> tuple[str, str | None]:
    """'auto' is ImageNet when its file is cached and from scratch otherwise; returns (weights, note)."""
    if weights != "auto":
        return weights, None
    spec = backbones.get_spec(backbone)
    if backbones.imagenet_available(spec):
        return "imagenet", None
    return "none", (f"ImageNet weights for {spec.title} are not cached "
                    f"({backbones.weights_cache_path(spec)}): trained from scratch (weights none)")
