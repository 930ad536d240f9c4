"""Command line: python -m leukviz train | runs | data | predict | evaluate (see --help of each)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from leukviz import config as C


class CliError(Exception):
    """An error reported as one clear line, exit status 2."""


def _out(args, human: str, obj: dict) -> None:
    """Human text, or with --json one JSON object as the last line of stdout."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(human)


class Progress:
    """A one-line progress bar on stderr (a line per epoch when stderr is not a terminal)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.time()

    def __call__(self, ev: dict) -> None:
        if not self.enabled:
            return
        t = ev.get("type")
        if t == "batch" and self.tty:
            frac = ev["step"] / ev["steps"]
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\repoch {ev['epoch']} [{bar:<30}] {ev['step']}/{ev['steps']} "
                             f"loss {ev['loss']:.4f} acc {ev['acc']:.3f}")
            sys.stderr.flush()
        elif t == "epoch":
            sys.stderr.write(("\r" if self.tty else "") +
                             f"epoch {ev['epoch']}/{ev['epochs']}: train loss {ev['train_loss']:.4f} "
                             f"acc {ev['train_acc']:.3f} | val loss {ev['val_loss']:.4f} acc {ev['val_acc']:.3f} "
                             f"F1 {ev['val_f1']:.3f} | {ev['seconds']:.1f}s\n")
        elif t in ("start", "resume"):
            sys.stderr.write(f"{t}: {ev['n_train']} train / {ev['n_val']} val images on {ev['device']} "
                             f"({ev['precision']}), split {ev['split']['method']}\n")


def _train_result(run, cached: bool, t0: float) -> dict:
    st = run.status
    return {"run_id": run.run_id, "run_dir": str(run.dir), "status": st["state"], "cached": cached,
            "backbone": run.config.backbone, "metrics": run.final_metrics(), "error": st.get("error"),
            "seconds": round(time.time() - t0, 2)}


def cmd_train(args) -> int:
    from leukviz import runs

    t0 = time.time()
    rank = int(os.environ.get("RANK", "0"))
    log = (lambda s: print(s, file=sys.stderr)) if rank == 0 else (lambda s: None)
    progress = Progress(enabled=rank == 0)
    if args.run_dir:  # the launcher's form: the run folder and its config.json are ready
        run = runs.Run(Path(args.run_dir))
        try:
            runs.train(run, resume=args.resume_here, device=args.device, log=log, emit_hook=progress)
        except runs.AlreadyRunning as e:
            log(str(e))
        return 0 if run.state in ("finished", "stopped") else 1
    if args.resume:
        run = runs.get_run(args.resume, args.runs_dir)
        resume = True
    else:
        cfg = C.resolve(args.backbone, args.preset, args.weights, args.data,
                        epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
                        split=args.split, finetune=args.finetune, optimizer=args.optimizer, seed=args.seed,
                        precision=args.precision, augment=args.augment, val_fold=args.val_fold)
        run = runs.run_for(cfg, args.runs_dir)
        resume = False
        if run.state == "finished" and not args.force:
            res = _train_result(run, True, t0)
            _out(args, f"cached: run {run.run_id} already finished ({run.dir}); "
                       f"val acc {res['metrics'].get('val_acc', float('nan')):.3f}", res)
            return 0
        if args.force and run.state != "new" and rank == 0:
            if run.is_locked():
                raise CliError(f"run {run.run_id} is training right now; stop it before retraining")
            runs.archive(run)
        if run.state in ("stopped", "interrupted") and rank == 0:
            resume = True  # an unfinished run of this config continues rather than starting over
    if rank == 0 and run.is_locked():
        log(f"run {run.run_id} is already training in another process: attaching")
        for ev in runs.follow(run):
            progress(ev)
    else:
        if args.detach and rank == 0:
            runs.launch(run, resume=resume, device=args.device)
            _out(args, f"launched run {run.run_id} in the background ({run.dir})",
                 _train_result(run, False, t0))
            return 0
        try:
            runs.train(run, resume=resume, device=args.device, log=log, emit_hook=progress)
        except runs.AlreadyRunning:
            for ev in runs.follow(run):
                progress(ev)
        except KeyboardInterrupt:
            pass
        except Exception as e:  # recorded in status.json; one clear line here
            if rank == 0:
                res = _train_result(run, False, t0)
                _out(args, f"run {run.run_id} {res['status']}: {res['error'] or e}", res)
            return 1
    if rank != 0:
        return 0
    res = _train_result(run, False, t0)
    _out(args, f"run {run.run_id} {res['status']} ({run.dir}): " +
         ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items() if isinstance(v, float)), res)
    return 0 if res["status"] == "finished" else 1


def cmd_runs(args) -> int:
    from leukviz import runs

    rows = []
    for r in runs.list_runs(args.runs_dir):
        try:
            cfg = r.config
        except (KeyError, TypeError):
            continue
        st = r.status
        m = r.final_metrics()
        rows.append({"run_id": r.run_id, "backbone": cfg.backbone, "state": st["state"], "preset": cfg.preset,
                     "weights": cfg.weights, "image_size": cfg.image_size, "epochs": cfg.epochs, "split": cfg.split,
                     "data": cfg.data, "val_acc": m.get("val_acc"), "val_f1": m.get("val_f1"),
                     "error": st.get("error")})
    if args.json:
        print(json.dumps({"runs": rows}))
        return 0
    if not rows:
        print(f"no runs in {runs.runs_root(args.runs_dir)}")
    for r in rows:
        acc = f"{r['val_acc']:.3f}" if r["val_acc"] is not None else "-"
        print(f"{r['run_id']}  {r['backbone']:<10} {r['state']:<11} {r['preset']:<6} {r['weights']:<9} "
              f"{r['image_size']}px {r['epochs']}ep split={r['split']:<8} val_acc={acc}  data={r['data']}")
    return 0


def cmd_data(args) -> int:
    from leukviz import data, runs

    ds = data.open_dataset(args.path, runs.cache_root())
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
    print(f"  preliminary test (labelled): {info['prelim']['n']}; final test (unlabeled): {info['final_unlabeled']}")
    if info["skipped"]:
        print(f"  skipped files: {info['skipped']}")
    return 0


def _collect_images(items: list[str]) -> list[str]:
    from leukviz import data

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and data._is_image(f))
        elif p.suffix.lower() == ".zip":
            from leukviz import runs
            dest = runs.cache_root() / "predict-zips" / f"{p.stem}-{int(p.stat().st_mtime)}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            root = data.extract_zip(p, dest)
            out.extend(str(f) for f in sorted(root.rglob("*")) if f.is_file() and data._is_image(f))
        elif p.exists():
            out.append(str(p))
        else:
            raise CliError(f"no such file: {item}")
    return out


def _selected_runs(run_arg: str, runs_dir):
    from leukviz import runs

    if run_arg == "all":
        chosen = [r for r in runs.list_runs(runs_dir) if r.state == "finished" and r.has_checkpoint]
        if not chosen:
            raise CliError("no finished runs to predict with; train one first")
        return chosen
    return [runs.get_run(run_arg, runs_dir)]


def cmd_predict(args) -> int:
    from leukviz import inference

    files = _collect_images(args.images)
    if not files:
        raise CliError("no images given")
    table = []
    for run in _selected_runs(args.run, args.runs_dir):
        lm = inference.load_model(run.dir)
        for rec in inference.predict_files(lm, files, tta=args.tta):
            table.append({"run_id": run.run_id, "model": lm.backbone, **rec})
        if args.cam:
            from leukviz import explain
            explain.save_cams(lm, files, Path(args.cam))
    if args.csv:
        import pandas as pd
        pd.DataFrame(table).to_csv(args.csv, index=False)
    if args.json:
        print(json.dumps({"predictions": table}))
    else:
        for r in table:
            if r["error"]:
                print(f"{r['file']}  [{r['model']}]  ERROR {r['error']}")
            else:
                print(f"{r['file']}  [{r['model']}]  {r['predicted']}  {r['confidence'] * 100:.1f}%")
    return 1 if all(r["error"] for r in table) else 0


def cmd_evaluate(args) -> int:
    from leukviz import inference, runs

    run = runs.get_run(args.run, args.runs_dir)
    lm = inference.load_model(run.dir)
    res = inference.evaluate_dataset(lm, args.data, runs.cache_root(), tta=args.tta)
    human = (f"run {run.run_id} ({lm.backbone}) on {res['dataset']} [{res['set']}], n={res['n']}: "
             f"accuracy {res['accuracy']:.4f}, weighted F1 {res['weighted_f1']:.4f}, "
             f"sensitivity {res['sensitivity']:.4f}, specificity {res['specificity']:.4f}, "
             f"ROC AUC {res['roc_auc'] if res['roc_auc'] is None else round(res['roc_auc'], 4)}")
    _out(args, human, res)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from leukviz.backbones import BACKBONES

    p = argparse.ArgumentParser(prog="python -m leukviz", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", default=None, help="runs folder (default: $LEUKVIZ_HOME/runs)")
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    t = sub.add_parser("train", parents=[common], help="train a backbone (or return the cached run)")
    t.add_argument("--backbone", choices=list(BACKBONES), default="resnet50")
    t.add_argument("--data", default="demo", help="demo (built in), a C-NMC folder, a class-per-folder tree or a .zip")
    t.add_argument("--weights", default="imagenet", help="imagenet | none | path to a weights file")
    t.add_argument("--preset", choices=C.PRESETS, default="quick")
    t.add_argument("--epochs", type=int)
    t.add_argument("--image-size", type=int)
    t.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=C.OPTIMIZERS)
    t.add_argument("--split", choices=C.SPLITS, help="subject (default), folds, or image (leaky)")
    t.add_argument("--val-fold", type=int, help="validation fold for --split folds")
    t.add_argument("--finetune", choices=C.FINETUNE, help="train the full network, the last stage + head, or the head")
    t.add_argument("--augment", choices=C.AUGMENT)
    t.add_argument("--precision", choices=C.PRECISIONS)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a stopped or interrupted run")
    t.add_argument("--force", action="store_true", help="retrain even if this configuration finished before")
    t.add_argument("--detach", action="store_true", help="start in the background and return")
    t.add_argument("--run-dir", help=argparse.SUPPRESS)
    t.add_argument("--resume-here", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list runs")
    rs = r.add_subparsers(dest="runs_command", required=True)
    rl = rs.add_parser("list", parents=[common], help="list runs with their state and metrics")
    rl.set_defaults(func=cmd_runs)

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
    ev.add_argument("--tta", action="store_true")
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from leukviz.backbones import WeightsUnavailable
    from leukviz.data import DataError

    try:
        return int(args.func(args) or 0)
    except (CliError, C.ConfigError, DataError, WeightsUnavailable, KeyError, FileNotFoundError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if getattr(args, "json", False):
            print(json.dumps({"error": msg}))
        print(f"error: {msg}", file=sys.stderr)
        return 2
