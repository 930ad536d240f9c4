"""Command line: python -m leukviz train | lr-find | runs | data | predict | evaluate | study | export | bench (see --help)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from leukviz.core import layout, paths
from leukviz.core.errors import LeukvizError
from leukviz.core.events import BATCH, BEGINNINGS, EPOCH
from leukviz.core.storage import write_error_text
from leukviz.models import config as C


class CliError(LeukvizError):
    """An error reported as one clear line, exit status 2."""


def _out(args, human: str, obj: dict) -> None:
    """Human text, or with --json one JSON object as the last line of stdout."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(human)


class Progress:
    """Training progress on stderr: on a terminal one tqdm bar per epoch (images done, elapsed, ETA,
    images/s, running loss and accuracy), replaced by the epoch's summary line when it ends; otherwise only
    the summary lines, one per epoch, so a log stays readable."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.time()
        self.n_train = 0  # from the start event: the bar counts images, so tqdm's rate is images/s
        self.bar = None

    def __call__(self, ev: dict) -> None:
        if not self.enabled:
            return
        t = ev.get("type")
        if t == BATCH and self.tty:
            self._batch(ev)
        elif t == EPOCH:
            from leukviz.runstore.names import format_duration

            self._close()
            left = (ev["epochs"] - ev["epoch"]) * ev["seconds"]  # the next epochs take about as long
            eta = f", about {format_duration(left)} left" if left > 0 else ""
            sys.stderr.write(f"epoch {ev['epoch']}/{ev['epochs']}: train loss {ev['train_loss']:.4f} "
                             f"acc {ev['train_acc']:.3f} | val loss {ev['val_loss']:.4f} acc {ev['val_acc']:.3f} "
                             f"F1 {ev['val_f1']:.3f} | {ev['seconds']:.1f}s, "
                             f"{ev.get('images_per_s', 0):.0f} images/s{eta}\n")
        elif t in BEGINNINGS:
            self.n_train = int(ev.get("n_train") or 0)
            sys.stderr.write(f"{t}: {ev['n_train']} train / {ev['n_val']} val images on {ev['device']} "
                             f"({ev['precision']}), split {ev['split']['method']}\n")

    def _batch(self, ev: dict) -> None:
        from tqdm import tqdm

        total = self.n_train or ev["steps"]
        done = min(total, round(ev["step"] * total / ev["steps"]))  # batch events count steps, the bar images
        new = self.bar is None or self.bar.desc != f"epoch {ev['epoch']}"
        if new:
            self._close()
            # a resumed epoch starts part-way: tqdm's rate and ETA then count only what this process does
            self.bar = tqdm(total=total, initial=done, desc=f"epoch {ev['epoch']}", unit="img", leave=False,
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        # tqdm redraws at most every 0.1 s: the postfix waits for the next redraw, except on a new bar
        self.bar.set_postfix_str(f"loss {ev['loss']:.4f} acc {ev['acc']:.3f}", refresh=new)
        if not new:
            self.bar.update(done - self.bar.n)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _health(run) -> dict:
    """A run's health and its reasons (health.of_run_dir) for --json; None for a run that is not finished."""
    from leukviz.runstore import runs
    from leukviz.scoring import health

    if run.state != runs.State.FINISHED:
        return {"health": None, "health_reasons": []}
    return health.of_run_dir(run.dir).to_dict()


def _health_text(res: dict) -> str:
    """'; DEGENERATE: calls every validation cell hem' for a degenerate run's line, else nothing."""
    if res.get("health") == "degenerate":
        return "; DEGENERATE: " + "; ".join(res["health_reasons"])
    return ""


def _train_result(run, cached: bool, t0: float) -> dict:
    st = run.status
    return {"run_id": run.run_id, "run_dir": str(run.dir), "status": st["state"], "cached": cached,
            "backbone": run.config.backbone, "metrics": run.final_metrics(), "error": st.get("error"),
            "early_stop": st.get("early_stop"), **_health(run), "seconds": round(time.time() - t0, 2)}


# The RunConfig fields the train command sets, in its --help order; unset (None) means the preset's default.
TRAIN_FIELDS = ("epochs", "image_size", "batch_size", "lr", "optimizer", "split", "val_fold", "n_folds", "average",
                "select", "bn_stats", "finetune", "head_epochs", "augment", "precision", "freeze_bn", "class_balance", "seed",
                "split_seed", "patience")
FLAGS = {"n_folds": "--folds"}  # otherwise --the-field-name
MAX_SEED = 2**32 - 1  # numpy's and torch's generators take it; seeds derived from it stay under 2**64


def _seed_value(text: str) -> int:
    """--seed / --split-seed: a whole number from 0 to MAX_SEED, checked before any run folder is made."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= n <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{n} is out of range: a seed is from 0 to {MAX_SEED}")
    return n


DEVICES = ("auto", "cpu", "cuda", "mps")


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high, checked before any work."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{n} is out of range: from {low} to {high}")
        return n
    return parse


def _backbone_list(text: str | None) -> tuple[str, ...]:
    """--backbones a,b: each once, in the order given (googlenet,googlenet is one backbone)."""
    return tuple(dict.fromkeys(b.strip() for b in text.split(",") if b.strip())) if text else ()


def _device_value(text: str) -> str:
    """--device: auto, cpu, cuda, cuda:N or mps, checked before any run folder is made (torch accepts others,
    such as meta, that cannot train)."""
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose one of: {', '.join(DEVICES)} "
                                         "(or cuda:N for one GPU)")
    return text


def add_config_options(parser: argparse.ArgumentParser, names: tuple[str, ...] = TRAIN_FIELDS) -> None:
    """One option per RunConfig field, its type, choices and help taken from config."""
    import dataclasses

    types = {f.name: int if f.default is None else type(f.default) for f in dataclasses.fields(C.RunConfig)}
    for name in names:
        flag, kw = FLAGS.get(name, "--" + name.replace("_", "-")), {"dest": name, "help": C.HELP.get(name)}
        if types[name] is bool:
            parser.add_argument(flag, action="store_true", default=None, **kw)
        elif name in C.CHOICES:
            parser.add_argument(flag, choices=C.CHOICES[name], **kw)
        else:
            kind = _seed_value if name in ("seed", "split_seed") else types[name]
            parser.add_argument(flag, type=kind, metavar=flag.lstrip("-").replace("-", "_").upper(), **kw)


def _resolve_cfg(args) -> C.RunConfig:
    given = {name: getattr(args, name) for name in TRAIN_FIELDS}
    if given["split"] is None and args.data != "demo":  # a train/ + val/ tree: its own validation folder
        from leukviz.datasets import data
        if data.default_split(data.open_dataset(args.data, paths.cache_root())) == "given":
            given["split"] = "given"
    return C.resolve(args.backbone, args.preset, args.weights, args.data, **given)


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
    all), trained one after another; then each run's validation scores and their mean and spread."""
    from leukviz.runstore import runs
    from leukviz.scoring import metrics

    if args.resume or args.run_dir or args.cv:
        raise CliError("--seeds makes new runs: it does not go with --resume or --cv")
    cfgs = C.repeats(_resolve_cfg(args), args.seeds)
    results, worst = [], 0
    for i, cfg in enumerate(cfgs, 1):
        one = argparse.Namespace(**{**vars(args), "seeds": 1, "json": False, "seed": cfg.seed,
                                    "split_seed": cfg.split_seed})
        print(f"seed {cfg.seed} ({i} of {len(cfgs)}):", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # each run's own line; stdout keeps the summary
            worst = max(worst, cmd_train(one))
        results.append(_train_result(runs.run_for(cfg, args.runs_dir), False, time.time()))
    spread = {k: metrics.seed_spread([r["metrics"][k] for r in results if r["metrics"].get(k) is not None])
              for k in ("val_acc", "val_f1")}
    lines = [f"{len(results)} seeds of {cfgs[0].backbone} (one split, seed {cfgs[0].split_rng_seed}):"]
    lines += [f"  seed {c.seed}: run {r['run_id']} {r['status']}  val acc {_fmt(r['metrics'].get('val_acc'), 3)}  "
              f"F1 {_fmt(r['metrics'].get('val_f1'), 3)}" for c, r in zip(cfgs, results)]
    lines += [f"  {k}: {_fmt(v['mean'], 3)} ± {_fmt(v['sd'], 3)} over {v['n']} seeds" for k, v in spread.items()]
    _out(args, "\n".join(lines), {"runs": results, "spread": spread})
    return worst


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


def cmd_runs(args) -> int:
    """Every run folder, a damaged one too: what is wrong with it and how to repair it (runs.describe)."""
    from leukviz.runstore import runs

    rows = []
    for r in runs.list_runs(args.runs_dir):
        row = runs.describe(r)
        rows.append({**row, **(_health(r) if row["backbone"] is not None and not row["damaged"] else
                               {"health": None, "health_reasons": []})})
    if args.json:
        print(json.dumps({"runs": rows}))
        return 0
    if not rows:
        print(f"no runs in {runs.runs_root(args.runs_dir, create=False)}")
    for r in rows:
        acc = f"{r['val_acc']:.3f}" if r["val_acc"] is not None else "-"
        if r["backbone"] is None:  # config.json unreadable: nothing else to say about it
            print(f"{r['run_id']}  DAMAGED")
        else:
            print(f"{r['run_id']}  {r['backbone']:<10} {r['state'] + (' DAMAGED' if r['damaged'] else ''):<11} "
                  f"{r['preset']:<6} {r['weights']:<9} {r['image_size']}px {r['epochs']}ep split={r['split']:<8} "
                  f"val_acc={acc}  data={r['data']}" + (" DEGENERATE" if r["health"] == "degenerate" else ""))
        for problem in r["problems"]:
            print(f"    {problem}")
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


def cmd_data(args) -> int:
    from leukviz.datasets import data

    ds = data.open_dataset(args.path, paths.cache_root())
    info = data.inspect(ds)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['kind']} dataset at {info['root']}: {info['n_train']} training images, classes {info['classes']}")
    print("  per class: " + ", ".join(f"{k} {v}" for k, v in info["per_class"].items()))
    for fold, counts in info["per_fold"].items():
        print(f"  fold {fold}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"  subjects: {len(info['per_subject'])} (" +
          ", ".join(f"{s}:{v['n']}" for s, v in info["per_subject"].items()) + ")")
    if info["subjects_per_class"]:
        print("  subjects per class: " + ", ".join(f"{k} {v}" for k, v in info["subjects_per_class"].items()))
    for w in info["warnings"]:
        print(f"  warning: {w}")
    test = info["test"]
    print(f"  held-out test set (labelled): {test['n']}"
          + (" (" + ", ".join(f"{k} {v}" for k, v in test["per_class"].items()) + ")" if test["n"] else "")
          + (f"; C-NMC final test (unlabeled): {info['final_unlabeled']}" if info["kind"] == "cnmc" else ""))
    if ds.skipped:
        print(f"  skipped {data.skipped_text(ds.skipped)}")
    return 0


def _collect_images(items: list[str]) -> list[str]:
    from leukviz.datasets import data

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and data._is_image(f))
        elif p.suffix.lower() == ".zip":
            dest = paths.cache_root() / layout.PREDICT_ZIP_CACHE / f"{p.stem}-{int(p.stat().st_mtime)}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            root = data.extract_zip(p, dest)
            out.extend(str(f) for f in sorted(root.rglob("*")) if f.is_file() and data._is_image(f))
        elif p.is_file():  # a regular file: a FIFO or a device would block the read, or never end
            out.append(str(p))
        elif p.exists():
            raise CliError(f"{item} is not a regular file (a pipe, socket or device): give image files, folders or zips")
        else:
            raise CliError(f"no such file: {item}")
    return out


def _selected_runs(run_arg: str, runs_dir):
    from leukviz.runstore import runs

    if run_arg == "all":
        from leukviz.app import dashboard

        for r in dashboard.damaged_runs(runs_dir):
            print(f"left out, damaged: {dashboard.damage_text(r)}", file=sys.stderr)
        chosen = dashboard.finished_runs(runs_dir)
        if not chosen:
            raise CliError("no finished runs to predict with; train one first")
        return chosen
    return [_warn_unfinished(runs.get_run(run_arg, runs_dir))]


def _warn_unfinished(run):
    """The run, after a warning on stderr when its model is not a finished run's (stopped, interrupted)."""
    note = run.unfinished()
    if note:
        print(f"warning: {note}; its results are of an unfinished model", file=sys.stderr)
    return run


def _comparable(run_args: list[str], runs_dir) -> list:
    """The runs to compare: ids (a unique prefix is enough) or 'all'; they must share their validation
    cells (one comparable group), except that 'all' takes the largest group and says so."""
    from leukviz.comparison import compare
    from leukviz.scoring import health

    chosen = [r for arg in run_args for r in _selected_runs(arg, runs_dir)]
    chosen = list({r.run_id: r for r in chosen if r.is_usable}.values())
    if run_args == ["all"]:  # as the Compare page's default: a degenerate run only when named (or all there is)
        left = [r for r in chosen if health.of_run_dir(r.dir).degenerate]
        left = left if len(left) < len(chosen) else []
        for r in left:
            print(f"run {r.run_id} left out: degenerate ({'; '.join(health.of_run_dir(r.dir).reasons)}); name it to "
                  "compare it", file=sys.stderr)
        chosen = [r for r in chosen if r not in left]
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

    report_path = _output_file(args.report, "--report") if args.report else None
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
        from leukviz.core.storage import atomic_write_bytes

        atomic_write_bytes(report_path, report.html_report(evals, n_resamples=args.resamples).encode())
        print(f"wrote the report to {report_path}", file=sys.stderr)
    _out(args, compare.report_text(rep), rep.to_dict())
    return 0


def cmd_predict(args) -> int:
    from leukviz.scoring.metrics import nan_to_none
    from leukviz.serving import inference

    csv_path = _output_file(args.csv, "--csv") if args.csv else None
    if args.cam:
        _output_folder(args.cam, "--cam")
    files = _collect_images(args.images)
    if not files:
        raise CliError("no images given")
    models = _load_models(_selected_runs(args.run, args.runs_dir), args.run == "all")
    table = inference.predict_table(models, files, tta=args.tta)
    cams: list[dict] = []
    if args.cam:
        from leukviz.serving import explain
        for lm in models:
            cams.extend({"model": lm.backbone, "run_id": lm.run_dir.name, **rec}
                        for rec in explain.save_cams(lm, files, Path(args.cam)))
        print(f"wrote {sum(1 for c in cams if c['cam'])} Grad-CAM overlays to {args.cam}", file=sys.stderr)
    if csv_path is not None:
        from leukviz.core.storage import atomic_write_bytes
        from leukviz.serving.prediction import table_csv

        atomic_write_bytes(csv_path, table_csv(table))  # whole or not at all: a full disk leaves no cut-short table
    records = nan_to_none(table)
    for r in records:  # the table holds one text cell; a JSON reader gets the list back
        r["ood_reasons"] = r["ood_reasons"].split("; ") if r.get("ood_reasons") else []
    from leukviz.serving import prediction

    summary = prediction.batch_summary(table, models[0].classes) if len(files) > 1 else []
    if args.json:
        print(json.dumps({"predictions": records, "cams": cams, "summary": nan_to_none(summary)}))
    else:
        for r in records:
            if r["error"]:
                print(f"{r['file']}  [{r['model']} {r['run_id'][:6]}]  ERROR {r['error']}")
            else:
                how = (f" (calibrated, T = {r['temperature']:.2f}; raw {r['confidence_raw'] * 100:.1f}%)"
                       if r.get("calibrated") else " (not calibrated)")
                print(f"{r['file']}  [{r['model']} {r['run_id'][:6]}]  {r['predicted']}  "
                      f"{r['confidence'] * 100:.1f}%{how}{_ood_text(r)}")
        if summary:
            print("summary:")
            for line in prediction.summary_lines(summary):
                print(f"  {line}")
    return 1 if all(r["error"] for r in records) else 0


def _output_file(path: str, flag: str) -> Path:
    """Where a command will write a file, checked before the work: its folder is made when missing; a folder
    at the path itself, or a parent that cannot be made, is a CliError naming the flag."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise CliError(f"{flag} {path} is a folder; give a file name, e.g. {p / 'predictions.csv'}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{flag} {path}: cannot make its folder {p.parent} ({e.strerror or e})") from None
    return p


def _output_folder(path: str, flag: str) -> Path:
    """Where a command will write files, checked (and made) before the work: a file at the path, or a
    folder that cannot be made, is a CliError naming the flag."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CliError(f"{flag} {path} is a file; give a folder to write into")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{flag} {path}: cannot make this folder ({e.strerror or e})") from None
    return p


def _load_models(chosen: list, keep_going: bool) -> list:
    """The runs' models. With keep_going (--run all) a run that cannot be loaded (a damaged or missing file)
    is named on stderr and left out, and the others predict; a single run's failure is the error."""
    from leukviz.serving import inference

    models = []
    for run in chosen:
        try:
            models.append(inference.load_model(run.dir))
        except Exception as e:  # noqa: BLE001 - a damaged run folder can fail in any of its files
            if not keep_going:
                raise CliError(f"run {run.run_id} cannot be loaded: {e}") from None
            print(f"run {run.run_id} left out: it cannot be loaded ({e.__class__.__name__}: {e})", file=sys.stderr)
    if not models:
        raise CliError("none of the finished runs can be loaded; `runs list` names what is wrong with each")
    return models


def _ood_text(r: dict) -> str:
    """' (unlike the training data: ...)' when the image is unlike the run's training images; a run without
    reference statistics says it was not compared."""
    from leukviz.datasets import ood

    if r.get("ood"):
        return f" (unlike the training data: {'; '.join(r['ood_reasons'])})"
    return f" ({ood.NO_REFERENCE})" if r.get("ood") is None else ""


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _scores_text(res: dict) -> str:
    return (f"accuracy {_fmt(res['accuracy'])}, weighted F1 {_fmt(res['weighted_f1'])} (the C-NMC metric), "
            f"balanced accuracy {_fmt(res['balanced_accuracy'])}, sensitivity {_fmt(res['sensitivity'])}, "
            f"specificity {_fmt(res['specificity'])}, ROC AUC {_fmt(res['roc_auc'])}, ECE {_fmt(res['ece'])}")


def _vote_text(vote: dict) -> str:
    return (f"accuracy {_fmt(vote['subject_accuracy'])}, weighted F1 {_fmt(vote['subject_weighted_f1'])} "
            f"over {vote['n_subjects']} subjects")


def cmd_evaluate(args) -> int:
    from leukviz.runstore import runs
    from leukviz.serving import inference

    run = _warn_unfinished(runs.get_run(args.run, args.runs_dir))
    lm = inference.load_model(run.dir)
    res = {**inference.evaluate_dataset(lm, args.data, paths.cache_root(), tta=args.tta), "unfinished": run.unfinished()}
    pos = res["positive_class"]
    lines = [f"run {run.run_id} ({lm.backbone}) on {res['dataset']} [{res['set']} set], n={res['n']} cells"
             + (f", {res['skipped']} unreadable skipped" if res["skipped"] else ""),
             f"  cell level{' (no TTA)' if args.tta else ''}: {_scores_text(res)}; positive class {pos}",
             f"  confusion (rows true, columns predicted; {', '.join(res['classes'])}): {res['confusion']}"]
    if res["not_held_out"]:
        copies = res["not_held_out"]
        lines.insert(1, f"  left out: {len(copies)} image(s) whose bytes are in the run's own training or validation "
                        f"data, so not held out ({', '.join(copies[:3])}{' …' if len(copies) > 3 else ''})")
    if res["copies_unchecked"]:
        lines.insert(1, f"  warning: not checked for copies of the run's training images ({res['copies_unchecked']}): "
                        "if any are here, these scores are not of held-out data")
    if "subject_vote" in res:
        lines.append(f"  subject level{' (no TTA)' if args.tta else ''}, each subject diagnosed once by the mean "
                     f"probability of its cells: {_vote_text(res['subject_vote'])}")
        worst = ", ".join(f"{s['subject']} {s['accuracy']:.2f} (n={s['n']})" for s in res["per_subject"][:8])
        lines.append(f"  per-subject cell accuracy, worst first: {worst}")
    if "with_tta" in res:
        t = res["with_tta"]
        lines.append(f"  cell level WITH TTA (8 flips/rotations averaged): {_scores_text(t)}")
        if "subject_vote" in t:
            lines.append(f"  subject level WITH TTA: {_vote_text(t['subject_vote'])}")
    _out(args, "\n".join(lines), res)
    return 0


def _pct(v) -> str:
    return "   n/a" if v is None else f"{v * 100:5.1f} %"


def _points(v) -> str:
    return "n/a" if v is None else f"{v * 100:+.1f} points"


def _signed(v) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _paper_cell(col: dict | None) -> str:
    if col is None or col["val_acc"] is None:
        return "n/a"
    if len(col["seeds"]) == 1:
        return f"{_pct(col['val_acc'])} (F1 {_fmt(col['val_f1'], 3)}) {col['run_id'][:6]}"
    return (f"{_pct(col['val_acc_mean'])} ± {col['val_acc_sd'] * 100:.1f} "
            f"(F1 {_fmt(col['val_f1_mean'], 3)} ± {col['val_f1_sd']:.3f})")


def _study_subjects(args, log, progress) -> tuple[str, dict]:
    from leukviz.comparison import studies

    study = studies.SubjectStudy(args.data, _backbone_list(args.backbones), args.seeds,
                                 0 if args.no_plain else args.plain_seeds, args.image_size, args.epochs,
                                 args.weights, args.preset, args.folds,
                                 tuple(studies.parse_variant(v) for v in args.vary or ()))
    res = studies.subject_study(study, args.runs_dir, log, progress, args.device)
    human = studies.format_subject_table(res)
    return human, res


def _study_leakage(args, log, progress) -> tuple[str, dict]:
    from leukviz.comparison import studies

    weights, note = studies.resolve_weights(args.backbone, args.weights)
    if note:
        log(f"note: {note}")
    cfg = C.resolve(args.backbone, args.preset, weights, args.data, epochs=args.epochs,
                    image_size=args.image_size, batch_size=args.batch_size, seed=args.seed)
    res = studies.leakage(cfg, args.runs_dir, log, progress, args.device)
    res["notes"] = [note] if note else []
    i, s, inf = res["image"], res["subject"], res["inflation"]
    human = "\n".join([
        f"leakage study: {cfg.backbone}, weights {cfg.weights}, {cfg.image_size} px, {cfg.epochs} epochs, "
        f"data {cfg.data}",
        f"  split=image   (leaky)  run {i['run_id']}: accuracy {_pct(i['val_acc'])}, weighted F1 "
        f"{_fmt(i['val_f1'], 3)}  ({i['n_val']} validation cells)",
        f"  split=subject (honest) run {s['run_id']}: accuracy {_pct(s['val_acc'])}, weighted F1 "
        f"{_fmt(s['val_f1'], 3)}  ({s['n_val']} validation cells)",
        f"  inflation from leakage (image minus subject): accuracy {_points(inf['accuracy'])}, "
        f"weighted F1 {_signed(inf['weighted_f1'])}"])
    return human, res


def _study_paper(args, log, progress) -> tuple[str, dict]:
    from leukviz.comparison import studies

    study = studies.PaperStudy(args.data, args.epochs, args.image_size, args.weights,
                               _backbone_list(args.backbones), args.seeds,
                               args.with_defaults)
    res = studies.reproduce_paper(study, args.runs_dir, log, progress, args.device)
    columns = [("image_split", "reproduced (image split)"), ("subject_split", "subject split")]
    if args.with_defaults:
        columns.append(("defaults_subject_split", "leukviz defaults (subject)"))
    lines = [f"the paper reproduced on {res['data']}, seeds {res['seeds']}",
             *(f"  note: {n}" for n in res["notes"]),
             f"  {'backbone':<10} {'weights':<8} {'published':>9}   "
             + "   ".join(f"{title:<32}" for _, title in columns)]
    for r in res["rows"]:
        cells = [_paper_cell(r[key]) for key, _ in columns]
        lines.append(f"  {r['title']:<10} {r['weights']:<8} {_pct(r['published_val_acc']):>9}   "
                     + "   ".join(f"{c:<32}" for c in cells))
    lines.append("  published = validation accuracy reported by the paper (random image split: leaky); "
                 "each cell: accuracy (weighted F1), mean ± sd over seeds when more than one")
    human = "\n".join(line.rstrip() for line in lines)
    return human, res


STUDIES = {"subjects": _study_subjects, "leakage": _study_leakage, "paper": _study_paper}


def cmd_study(args) -> int:
    """A study made of ordinary cached runs; a run that does not finish is a StudyError (one clear line)."""
    human, res = STUDIES[args.study_command](args, lambda s: print(s, file=sys.stderr), Progress())
    _out(args, human, res)
    return 0


def cmd_export(args) -> int:
    from leukviz.runstore import runs
    from leukviz.serving import export

    run = _warn_unfinished(runs.get_run(args.run, args.runs_dir))
    res = {**export.export_run(run.dir, args.format, args.out), "unfinished": run.unfinished()}
    human = f"exported run {run.run_id} as {res['format']} to {res['path']} ({res['bytes'] / 1e6:.1f} MB)"
    if res["format"] == "safetensors":
        human += f"; sidecar {res['sidecar']}"
    else:
        human += (f"; ONNX Runtime vs PyTorch on {res['check_images']} images: max |difference| of probabilities "
                  f"{res['max_abs_diff']:.1e} (tolerance {res['tolerance']:g}); preprocessing in the metadata")
    _out(args, human, res)
    return 0


def cmd_bench(args) -> int:
    """Speed: the plain hand-written loop against leukviz's paths, measured in one process (see leukviz/bench.py)."""
    from leukviz.benchmarks import bench

    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.accuracy:
        names = [args.backbone] if args.backbone else ["googlenet"]
        rows = [r for nm in names for r in bench.precision_accuracy(
            nm, args.image_size or 64, args.epochs, tuple(range(args.seeds)), data_spec=args.data,
            cache_dir=paths.cache_root(), log=log)]
        _out(args, "\n".join(f"{r['backbone']} seed {r['seed']} {r['precision']}: val acc {r['val_acc']:.4f}, "
                             f"F1 {r['val_f1']:.4f}, {r['seconds']:.0f}s" for r in rows), {"accuracy": rows})
        return 0
    bc = bench.BenchConfig(
        backbones=(args.backbone,) if args.backbone else bench.BenchConfig.backbones,
        image_size=args.image_size or 128, batch_size=args.batch_size, data=args.data, fold=args.fold,
        quick=args.quick, device=args.device, precision=args.precision, weights=args.weights,
        threads=args.threads, plain_workers=tuple(args.plain_workers or ()), memory_files=args.memory_files,
        latency=not args.no_latency, ablation=args.ablation)
    res = bench.run(bc, paths.cache_root(), log)
    print(bench.format_table(res))
    if args.json:
        print(json.dumps(res, default=str))
    return 0


def _seed_count(text: str) -> int:
    n = int(text)
    if not 1 <= n <= C.MAX_REPEATS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {C.MAX_REPEATS}")
    return n


def _add_train(sub, common: argparse.ArgumentParser) -> None:
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
                   help="train N runs differing only in seed (--seed, --seed + 1, ...), one after another, on one "
                        "split; then their mean and spread")
    t.add_argument("--run-dir", help=argparse.SUPPRESS)
    t.add_argument("--resume-here", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)


def _add_study(sub, common: argparse.ArgumentParser) -> None:
    """The study commands: subjects, leakage and paper, each made of ordinary cached runs."""
    from leukviz.models.backbones import BACKBONES

    st = sub.add_parser("study", help="studies made of ordinary cached runs: subjects, leakage, paper")
    ss = st.add_subparsers(dest="study_command", required=True)
    su = ss.add_parser("subjects", parents=[common],
                       help="subject-grouped cross-validation: backbones x seeds x folds, beside the plain loop")
    su.add_argument("--data", required=True, help="a C-NMC folder or class-per-folder tree with C-NMC file names")
    su.add_argument("--backbones", help=f"comma-separated subset of: {', '.join(BACKBONES)} (default: all)")
    su.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    su.add_argument("--image-size", type=int, default=96)
    su.add_argument("--epochs", type=int, default=3)
    su.add_argument("--weights", default="none", help="none (default) | imagenet | path to a weights file")
    su.add_argument("--preset", choices=C.PRESETS, default="quick",
                    help="the recipe's other settings (optimizer, augmentation, averaging...); the study's image "
                         "size and epochs are its own --image-size and --epochs, whatever the preset")
    su.add_argument("--folds", type=int, default=0,
                    help="subject-grouped folds (default 0: as many as the class with the fewest subjects allows, "
                         "at most 5)")
    su.add_argument("--no-plain", action="store_true", help="leave out the plain hand-written loop")
    su.add_argument("--plain-seeds", type=int,
                    help="train the plain loop for the first N seeds only (default: all; it is slow)")
    su.add_argument("--vary", action="append", metavar="SETTING=VALUE[,...]",
                    help="leukviz's recipe again with these settings changed (e.g. augment=flips, crop=false, "
                         "average=none,select=best), on the same folds and seeds, compared with the defaults "
                         "paired over subjects; repeat for more variants")
    su.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    su.set_defaults(func=cmd_study)
    sl = ss.add_parser("leakage", parents=[common],
                       help="the same model and recipe split by image (leaky) and by subject, side by side")
    sl.add_argument("--backbone", choices=list(BACKBONES), required=True)
    sl.add_argument("--data", default="demo",
                    help="demo (built in), a C-NMC folder, a class-per-folder tree or a .zip")
    sl.add_argument("--weights", default="auto",
                    help="auto (ImageNet when cached, else none) | imagenet | none | path to a weights file")
    sl.add_argument("--preset", choices=C.PRESETS, default="quick")
    sl.add_argument("--epochs", type=int)
    sl.add_argument("--image-size", type=int)
    sl.add_argument("--batch-size", type=int)
    sl.add_argument("--seed", type=_seed_value)
    sl.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    sl.set_defaults(func=cmd_study)
    sp = ss.add_parser("paper", parents=[common],
                       help="every backbone with the paper's recipe, split by image (as published) and by subject")
    sp.add_argument("--data", default=None,
                    help="a C-NMC folder (its fold 0 is used, as in the paper); default: demo")
    sp.add_argument("--weights", default="auto",
                    help="auto (ImageNet when its file is cached, else none) | imagenet | none")
    sp.add_argument("--epochs", type=int, help="override the paper's epochs (5; VGG16 4)")
    sp.add_argument("--image-size", type=int, help="override the paper's 128 px")
    sp.add_argument("--backbones", help=f"comma-separated subset of: {', '.join(BACKBONES)}")
    sp.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    sp.add_argument("--with-defaults", action="store_true",
                    help="also leukviz's defaults at the paper's size and epochs, on the subject split")
    sp.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    sp.set_defaults(func=cmd_study)


def cmd_lrfind(args) -> int:
    """The learning-rate finder (lrfind): the cached sweep of this configuration, or a new one."""
    from leukviz.datasets import data
    from leukviz.training import lrfind

    if args.config:  # the page's form: the resolved config in a file (lrfind.launch)
        cfg = C.RunConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        cfg = _resolve_cfg(args)
    fingerprint = data.open_dataset(cfg.data, paths.cache_root()).fingerprint
    res, cached = lrfind.find(cfg, fingerprint, paths.cache_root(), args.device, args.steps,
                              lambda s: print(s, file=sys.stderr))
    res = {k: v for k, v in res.items() if k not in ("config", "dataset_fingerprint")}
    end = f"diverged after {res['steps_done']} steps" if res["diverged"] else f"{res['steps_done']} steps"
    advice = lrfind.advise(res, cfg.lr)  # the configuration's rate (the preset's, or --lr) checked against it
    _out(args, f"{'cached: ' if cached else ''}{cfg.backbone}: {advice.text} ({res['start']:g} to {res['end']:g}, "
               f"{end}; a tenth of the minimum: {res['suggestion']:.2g})",
         {**res, "cached": cached, "rate_checked": cfg.lr, "advice": advice.rate, "keep": advice.keep,
          "advice_text": advice.text})
    return 0


def _add_lrfind(sub, common: argparse.ArgumentParser) -> None:
    """The lr-find command: the train command's configuration options, and the sweep's length."""
    from leukviz.models.backbones import BACKBONES
    from leukviz.training import lrfind

    lf = sub.add_parser("lr-find", parents=[common],
                        help="sweep the learning rate exponentially over a short training and suggest one (cached)")
    lf.add_argument("--backbone", choices=list(BACKBONES), default="resnet50")
    lf.add_argument("--data", default="demo", help="demo (built in), a C-NMC folder, a class-per-folder tree or a .zip")
    lf.add_argument("--weights", default="imagenet", help="imagenet | none | path to a weights file")
    lf.add_argument("--preset", choices=C.PRESETS, default="quick")
    add_config_options(lf)
    lf.add_argument("--steps", type=_bounded(10, 1000), default=lrfind.STEPS,
                    help=f"steps of the sweep from {lrfind.START:g} to {lrfind.END:g} (default {lrfind.STEPS})")
    lf.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    lf.add_argument("--config", help=argparse.SUPPRESS)
    lf.set_defaults(func=cmd_lrfind)


def _add_bench(sub, common: argparse.ArgumentParser) -> None:
    """The bench command: speed of the plain PyTorch loop against leukviz's paths."""
    from leukviz.models.backbones import BACKBONES

    be = sub.add_parser("bench", parents=[common], help="measure speed: the plain PyTorch loop vs leukviz's paths")
    be.add_argument("--quick", action="store_true", help="a few batches per path, extrapolated (under a minute)")
    be.add_argument("--backbone", choices=list(BACKBONES), help="one backbone (default: all)")
    be.add_argument("--image-size", type=int, help="pixels (default 128; 64 with --accuracy)")
    be.add_argument("--batch-size", type=int, default=0, help="default 32 (16 with --quick)")
    be.add_argument("--data", default="demo", help="demo, or a C-NMC folder / class-per-folder tree")
    be.add_argument("--fold", type=int, default=0, help="the training_data/fold_<k> folder both paths read")
    be.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    be.add_argument("--precision", choices=C.PRECISIONS, default="auto", help="leukviz's paths (plain is fp32)")
    be.add_argument("--weights", default="none", help="none (default; speed does not depend on it) | imagenet")
    be.add_argument("--threads", type=int, default=0, help="torch threads (default: one per core)")
    be.add_argument("--plain-workers", type=int, nargs="+", help="DataLoader num_workers to try for the plain loop")
    be.add_argument("--memory-files", type=int, default=0,
                    help="files in the memory stand-in (default 15135, 1000 with --quick; -1 skips)")
    be.add_argument("--no-latency", action="store_true", help="skip the prediction latency")
    be.add_argument("--ablation", action="store_true",
                    help="also time full fine-tuning with each speed-up added in turn (NCHW fp32, channels-last, "
                         "bf16, allocator)")
    be.add_argument("--accuracy", action="store_true",
                    help="instead: train from scratch in fp32 and bf16 and compare validation accuracy")
    be.add_argument("--epochs", type=int, default=3, help="with --accuracy")
    be.add_argument("--seeds", type=int, default=2, help="with --accuracy: seeds 0..N-1")
    be.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m leukviz", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", default=None, help="runs folder (default: $LEUKVIZ_HOME/runs)")
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    _add_train(sub, common)
    r = sub.add_parser("runs", help="list or delete runs")
    rs = r.add_subparsers(dest="runs_command", required=True)
    rl = rs.add_parser("list", parents=[common], help="list runs with their state and metrics")
    rl.set_defaults(func=cmd_runs)
    rd = rs.add_parser("delete", parents=[common],
                       help="remove runs: each folder moves into the runs folder's .archive/ (refused while training)")
    rd.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids (a unique prefix is enough)")
    rd.set_defaults(func=cmd_runs_delete)

    d = sub.add_parser("data", help="inspect a dataset")
    ds = d.add_subparsers(dest="data_command", required=True)
    di = ds.add_parser("inspect", parents=[common], help="images per class, fold and subject")
    di.add_argument("path", help="demo, a C-NMC folder, a class-per-folder tree or a .zip")
    di.set_defaults(func=cmd_data)

    pr = sub.add_parser("predict", parents=[common], help="predict images with a finished run (or all)")
    pr.add_argument("--run", required=True, help="RUN_ID (a unique prefix is enough) or 'all'")
    pr.add_argument("images", nargs="+", help="image files, folders or .zip files")
    pr.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    pr.add_argument("--csv", help="write a table: file, model, predicted class, probability of each class")
    pr.add_argument("--cam", metavar="OUT_DIR", help="write Grad-CAM overlays here")
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", parents=[common], help="score a run on labelled data it did not train on")
    ev.add_argument("--run", required=True)
    ev.add_argument("--data", required=True, help="a C-NMC root (its preliminary test set) or a class-per-folder tree")
    ev.add_argument("--tta", action="store_true",
                    help="also score the 8 flips/rotations averaged, as its own numbers")
    ev.set_defaults(func=cmd_evaluate)

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

    _add_study(sub, common)
    ex = sub.add_parser("export", parents=[common], help="export a finished run as ONNX or safetensors")
    ex.add_argument("--run", required=True, help="RUN_ID (a unique prefix is enough)")
    ex.add_argument("--format", choices=("onnx", "safetensors"), required=True)
    ex.add_argument("--out", required=True, help="a .onnx / .safetensors file, or a folder")
    ex.set_defaults(func=cmd_export)

    _add_bench(sub, common)
    _add_lrfind(sub, common)
    return p


def main(argv: list[str] | None = None, *, process_entry: bool = False) -> int:
    """The CLI. process_entry (python -m leukviz, the launcher's worker): this process owns its signals, so for
    the commands that train, SIGTERM and SIGINT stop the training after its batch with its state saved
    (trainer.stop_on_signals). Called as a library (a test, a notebook), the caller keeps its own signals."""
    args = build_parser().parse_args(argv)
    trains = args.func in (cmd_train, cmd_study)
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
