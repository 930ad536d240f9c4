"""python -m leukviz study subjects | leakage | paper: studies made of ordinary cached runs."""

from __future__ import annotations

import argparse
import sys

from leukviz.cli.common import (
    Progress,
    _backbone_list,
    _device_value,
    _fmt,
    _out,
    _seed_value,
    add_group_options,
    pool_envs,
)
from leukviz.models import config as C


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


def _shard_text(res: dict) -> str:
    return (f"shard {res['shard']}: {len(res['runs'])} of the study's {res['study_runs']} runs finished here "
            f"(trained or cached); `study {res['study']}` without --shard gathers them")


def _shard_of(name: str, cfgs: list, args, log, progress) -> tuple[str, dict]:
    """A shard's part of a study's runs (leakage, paper): trained or cached here, nothing compared."""
    from leukviz.comparison import studyruns

    done = studyruns.train_shard(cfgs, args.shard, args.runs_dir, log=log, progress=progress, device=args.device,
                                 envs=pool_envs(args))
    res = {"study": name, "shard": str(args.shard), "runs": done, "study_runs": len(cfgs)}
    return _shard_text(res), res


def _study_subjects(args, log, progress) -> tuple[str, dict]:
    from leukviz.comparison import studytext, subjectstudy

    study = subjectstudy.SubjectStudy(args.data, _backbone_list(args.backbones), args.seeds,
                                      0 if args.no_plain else args.plain_seeds, args.image_size, args.epochs,
                                      args.weights, args.preset, args.folds,
                                      tuple(subjectstudy.parse_variant(v) for v in args.vary or ()))
    envs = pool_envs(args)
    if args.shard:  # its part of the runs only; the last call without --shard gathers and scores them all
        res = subjectstudy.train_shard(study, args.shard, args.runs_dir, log, progress, args.device, envs)
        return _shard_text(res), res
    res = subjectstudy.subject_study(study, args.runs_dir, log, progress, args.device, envs)
    human = studytext.format_subject_table(res)
    return human, res


def _study_leakage(args, log, progress) -> tuple[str, dict]:
    from leukviz.comparison import leakage, studyruns

    weights, note = studyruns.resolve_weights(args.backbone, args.weights)
    if note:
        log(f"note: {note}")
    cfg = C.resolve(args.backbone, args.preset, weights, args.data, epochs=args.epochs,
                    image_size=args.image_size, batch_size=args.batch_size, seed=args.seed)
    if args.shard:
        return _shard_of("leakage", list(leakage.leakage_configs(cfg).values()), args, log, progress)
    res = leakage.leakage(cfg, args.runs_dir, log, progress, args.device, pool_envs(args))
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
    from leukviz.comparison import paperstudy

    study = paperstudy.PaperStudy(args.data, args.epochs, args.image_size, args.weights,
                                  _backbone_list(args.backbones), args.seeds,
                                  args.with_defaults)
    if args.shard:
        cfgs, notes = paperstudy.paper_configs(study)
        for n in notes:
            log(f"note: {n}")
        return _shard_of("paper", list(cfgs.values()), args, log, progress)
    res = paperstudy.reproduce_paper(study, args.runs_dir, log, progress, args.device, pool_envs(args))
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


def add_parser(sub, common: argparse.ArgumentParser) -> None:
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
    add_group_options(su, "the study's runs", "gathers and scores them")
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
    add_group_options(sl, "the study's runs", "gathers and compares them")
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
    add_group_options(sp, "the study's runs", "gathers and compares them")
    sp.set_defaults(func=cmd_study)
