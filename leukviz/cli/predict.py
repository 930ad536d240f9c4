"""python -m leukviz predict (images, folders or zips with one finished run or all: the table, --csv,
Grad-CAM) and evaluate (a run scored on labelled data it did not train on)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from leukviz.cli.common import (
    CliError,
    _bounded,
    _fmt,
    _out,
    _output_file,
    _output_folder,
    _selected_runs,
    _warn_unfinished,
    _without_degenerate,
)
from leukviz.core import filenames, paths


def _collect_images(items: list[str]) -> list[str]:
    from leukviz.datasets import data

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            images, odd = _folder_images(p)
            out.extend(images)
            if odd:
                print(f"skipped {len(odd)} file(s) in {item} that are not regular files (a pipe, socket, device or "
                      f"broken link): {', '.join(odd[:3])}{' …' if len(odd) > 3 else ''}", file=sys.stderr)
        elif p.suffix.lower() == ".zip":
            dest = paths.cache_root() / filenames.PREDICT_ZIP_CACHE / f"{p.stem}-{int(p.stat().st_mtime)}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            root = data.extract_zip(p, dest)
            out.extend(str(f) for f in sorted(root.rglob("*")) if f.is_file() and data.is_image(f))
        elif p.is_file():  # a regular file: a FIFO or a device would block the read, or never end
            out.append(str(p))
        elif p.exists():
            raise CliError(f"{item} is not a regular file (a pipe, socket or device): give image files, folders or zips")
        else:
            raise CliError(f"no such file: {item}")
    return out


def _folder_images(root: Path) -> tuple[list[str], list[str]]:
    """The image files under a folder as strings, in sorted(Path.rglob) order (part by part; symbolic links to
    folders not followed), and the names of the entries that are neither files nor folders (pipes, sockets,
    devices, broken links). Strings from os.walk, not a Path per entry: 50,000 Path objects held to be sorted
    cost about 25 MB that the process keeps (docs/BENCHMARKS.md, "Scale")."""
    from leukviz.datasets import data

    images, odd = [], []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                if data.is_image(Path(name)):
                    images.append(path)
            elif not os.path.isdir(path):
                odd.append(name)
    images.sort(key=lambda f: f.split(os.sep))
    return images, sorted(odd)


def cmd_predict(args) -> int:
    """Predict in batches (serving.stream): each batch is predicted, printed, added to the table and to the
    running summary, then dropped, so a folder of any size predicts in the memory of one batch; progress and
    time left on stderr."""
    from leukviz.serving import prediction, stream

    csv_path = _output_file(args.csv, "--csv", "predictions.csv") if args.csv is not None else None
    if args.cam is not None:
        _output_folder(args.cam, "--cam")
    files = _collect_images(args.images)
    if not files:
        raise CliError("no images given")
    chosen = _selected_runs(args.run, args.runs_dir)
    if args.run == "all":  # as compare all: a degenerate run only when named (or when all are)
        chosen = _without_degenerate(chosen, "predict")
    models = _load_models(chosen, args.run == "all")
    out = _JsonRecords() if args.json else _print_records
    progress = stream.ProgressLine(len(files), _stderr, sys.stderr.isatty()) if len(files) > 1 else None
    try:
        res = stream.predict_stream(models, files, csv_path, tta=args.tta, batch_size=args.batch_size,
                                    on_rows=out, progress=progress)
    except BaseException:
        if isinstance(out, _JsonRecords):
            out.abandon()
        raise
    cams: list[dict] = []
    if args.cam is not None:
        from leukviz.serving import explain
        for lm in models:
            cams.extend({"model": lm.backbone, "run_id": lm.run_dir.name, **rec}
                        for rec in explain.save_cams(lm, files, Path(args.cam)))
        print(f"wrote {sum(1 for c in cams if c['cam'])} Grad-CAM overlays to {args.cam}", file=sys.stderr)
    summary = res.summary if len(files) > 1 else []
    if isinstance(out, _JsonRecords):
        out.close(cams, summary)
    elif summary:
        print("summary:")
        for line in prediction.summary_lines(summary):
            print(f"  {line}")
    return 1 if res.errors == res.rows else 0


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


class _JsonRecords:
    """--json streamed: one JSON object on one line, its predictions written batch by batch as they come,
    the Grad-CAM records and the summary at the end (close). A failure part-way ends the line (abandon), so
    the error's own JSON line stays the last line, whole."""

    def __init__(self):
        self.started = False

    def __call__(self, rows: list[dict]) -> None:
        from leukviz.scoring.scores import nan_to_none
        from leukviz.serving import inference

        records = nan_to_none(inference.table_frame(rows))
        for r in records:
            r["ood_reasons"] = r["ood_reasons"].split("; ") if r.get("ood_reasons") else []
            sys.stdout.write(", " if self.started else '{"predictions": [')
            sys.stdout.write(json.dumps(r, default=str))
            self.started = True

    def close(self, cams: list[dict], summary: list[dict]) -> None:
        from leukviz.scoring.scores import nan_to_none

        head = "" if self.started else '{"predictions": ['
        sys.stdout.write(f'{head}], "cams": {json.dumps(cams, default=str)}, '
                         f'"summary": {json.dumps(nan_to_none(summary), default=str)}}}\n')
        sys.stdout.flush()

    def abandon(self) -> None:
        if self.started:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _print_records(rows: list[dict]) -> None:
    """One line per prediction, printed as each batch is done."""
    for r in rows:
        if r["error"]:
            print(f"{r['file']}  [{r['model']} {r['run_id'][:6]}]  ERROR {r['error']}")
        else:
            how = (f" (calibrated, T = {r['temperature']:.2f}; raw {r['confidence_raw'] * 100:.1f}%)"
                   if r.get("calibrated") else " (not calibrated)")
            print(f"{r['file']}  [{r['model']} {r['run_id'][:6]}]  {r['predicted']}  "
                  f"{r['confidence'] * 100:.1f}%{how}{_ood_text(r)}")


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


def _scores_text(res: dict) -> str:
    from leukviz.scoring import registry

    return registry.scores_text(res, _fmt)


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
             + (f", {res['skipped']} file(s) skipped (unreadable, or listed wrongly: `data inspect` names each and why)"
                if res["skipped"] else ""),
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


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The predict and evaluate commands."""
    pr = sub.add_parser("predict", parents=[common], help="predict images with a finished run (or all)")
    pr.add_argument("--run", required=True, help="RUN_ID (a unique prefix is enough) or 'all'")
    pr.add_argument("images", nargs="+", help="image files, folders or .zip files")
    pr.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    pr.add_argument("--csv", help="write a table: file, model, predicted class, probability of each class")
    pr.add_argument("--cam", metavar="OUT_DIR", help="write Grad-CAM overlays here")
    pr.add_argument("--batch-size", type=_bounded(1, 100_000), default=512,
                    help="images decoded and predicted at a time (default 512): memory holds one batch, "
                         "whatever the folder's size")
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", parents=[common], help="score a run on labelled data it did not train on")
    ev.add_argument("--run", required=True)
    ev.add_argument("--data", required=True, help="a C-NMC root (its preliminary test set) or a class-per-folder tree")
    ev.add_argument("--tta", action="store_true",
                    help="also score the 8 flips/rotations averaged, as its own numbers")
    ev.set_defaults(func=cmd_evaluate)
