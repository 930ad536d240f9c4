"""The subject study: subject-grouped cross-validation, every backbone x seed x fold (and variant of leukviz's
recipe) as an ordinary cached run, beside the plain hand-written loop on the same folds and budget, scored on
the validation subjects (subjectscores) and paired over subjects; a shard's part of it (--shard)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from leukviz.comparison import studyruns
from leukviz.comparison.studyruns import Log, Progress, finished_run, pool_train
from leukviz.comparison.subjectscores import (
    LEUKVIZ,
    PLAIN,
    leukviz_record,
    methods_of,
    paired_test,
    plain_record,
    summarize_subjects,
)
from leukviz.core import paths
from leukviz.datasets import data
from leukviz.models import backbones, config
from leukviz.models.config import RunConfig
from leukviz.runstore import shards

# What a variant (--vary) may not change: these define the study itself (its people, folds, seeds, budget).
STUDY_FIXED = ("backbone", "weights", "data", "preset", "image_size", "epochs", "split", "val_fold", "n_folds",
               "val_fraction", "seed", "split_seed")

# A variant of leukviz's recipe: settings changed from the defaults, as ((field, value), ...).
Variant = config.Settings


def _fixed_by_the_study(name: str) -> str | None:
    return (f"the study sets {name} itself (its folds, seeds and budget are the same for every row); give it to "
            f"the study, not to a variant") if name in STUDY_FIXED else None


def parse_variant(text: str) -> Variant:
    """'augment=flips' or 'average=none,select=best' as a Variant (config.parse_settings), each value of its
    RunConfig field's type. A ConfigError (one line) for an unknown setting, a malformed one, or one the study
    fixes."""
    return config.parse_settings(text, "--vary", _fixed_by_the_study)


def variant_label(variant: Variant) -> str:
    """How a variant is named in the table: 'leukviz augment=flips'."""
    text = lambda v: str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"{LEUKVIZ} " + ",".join(f"{k}={text(v)}" for k, v in variant)


@dataclass(frozen=True)
class SubjectStudy:
    """What a subject study trains: the data, backbones (empty: all registered), seeds 0..seeds-1, the plain
    loop for its first plain_seeds seeds (None: all; 0: none; it is slow), and the budget."""

    data: str
    backbones: tuple[str, ...] = ()
    seeds: int = 3
    plain_seeds: int | None = None
    image_size: int = 96
    epochs: int = 3
    weights: str = "none"
    preset: str = "quick"
    n_folds: int = 0
    # leukviz's recipe again with settings changed (parse_variant), each compared with the defaults,
    # paired on the same folds and seeds: what one change is worth.
    variants: tuple[Variant, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.backbones) or tuple(backbones.BACKBONES)

    @property
    def n_plain(self) -> int:
        return self.seeds if self.plain_seeds is None else min(self.plain_seeds, self.seeds)


def study_config(study: SubjectStudy, name: str, seed: int = 0, k: int = 0, variant: Variant = ()) -> RunConfig:
    """The run of one backbone, seed and fold of the study (split 'groups', validating on fold k), with a
    variant's settings changed."""
    return config.resolve(name, study.preset, study.weights, study.data, image_size=study.image_size,
                          epochs=study.epochs, split="groups", val_fold=k, n_folds=study.n_folds, seed=seed,
                          **dict(variant))


def check_subject_study(study: SubjectStudy) -> tuple[set, list[str]]:
    """Refuse, before anything trains, what the study cannot do: no seeds, weights it cannot have, a bad
    setting, the same variant twice, a variant that changes nothing for every backbone. A variant that changes
    nothing for some backbones only (its default there) is skipped for those: ({(backbone, variant)}, notes)."""
    if study.seeds < 1 or (study.plain_seeds is not None and study.plain_seeds < 0):
        raise config.ConfigError(f"the study needs at least one seed (--seeds {study.seeds}) and --plain-seeds "
                                 f"0 or more (got {study.plain_seeds})")
    labels = [variant_label(v) for v in study.variants]
    if twice := sorted({x for x in labels if labels.count(x) > 1}):
        raise config.ConfigError(f"--vary {twice[0].removeprefix(LEUKVIZ + ' ')} is given twice")
    for name in study.names:
        try:
            backbones.ensure_weights(name, study.weights)
        except FileNotFoundError as e:
            raise config.ConfigError(str(e)) from None
    defaults = {name: study_config(study, name) for name in study.names}
    skipped, notes = set(), []
    for variant, label in zip(study.variants, labels):
        same = [name for name, base in defaults.items() if study_config(study, name, variant=variant) == base]
        for name in same:
            base, title = defaults[name], backbones.get_spec(name).title
            why = (f"that is {title}'s default already" if all(getattr(base, k) == v for k, v in variant)
                   else f"it changes nothing in {title}'s recipe (the setting has no effect with the others)")
            if len(same) == len(study.names):
                raise config.ConfigError(f"--vary {label.removeprefix(LEUKVIZ + ' ')}: {why}; the variant would "
                                         f"be the same runs")
            skipped.add((name, variant))
            notes.append(f"{label} is not run for {title}: {why}")
    return skipped, notes


def study_runs(study: SubjectStudy, n_folds: int) -> list[RunConfig]:
    """Every leukviz run of a subject study, in its one fixed order (seed, backbone, fold, variant): the order
    shards split (runstore.shards)."""
    skipped, _ = check_subject_study(study)
    return [study_config(study, name, seed, k, variant)
            for seed in range(study.seeds) for name in study.names for k in range(n_folds)
            for variant in ((),) + tuple(v for v in study.variants if (name, v) not in skipped)]


def train_shard(study: SubjectStudy, shard: shards.Shard, runs_dir: str | Path | None = None, log: Log = print,
                progress: Progress | None = None, device: str = "auto", envs: Sequence[dict] = ({},)) -> dict:
    """A shard's part of a subject study: its runs trained (or found cached, or followed when another process
    has one), nothing scored; the last call without a shard gathers every run and scores the study."""
    ds = data.open_dataset(study.data, paths.cache_root())
    group = study_runs(study, len(data.group_folds(ds, study.n_folds)))
    done = studyruns.train_shard(group, shard, runs_dir, log=log, progress=progress, device=device, envs=envs)
    return {"study": "subjects", "shard": str(shard), "runs": done, "study_runs": len(group)}


def subject_study(study: SubjectStudy, runs_dir: str | Path | None = None, log: Log = print,
                  progress: Progress | None = None, device: str = "auto", envs: Sequence[dict] = ({},)) -> dict:
    """Subject-grouped cross-validation: every backbone x seed x fold as an ordinary cached run (split
    'groups'), and the plain hand-written loop on the same folds and budget; scored on the validation
    subjects, which training never saw."""
    from leukviz.training import plain

    skipped, notes = check_subject_study(study)  # what is not valid fails before anything trains
    resolve = partial(study_config, study)
    ds = data.open_dataset(study.data, paths.cache_root())
    folds = data.group_folds(ds, study.n_folds)  # the same folds as each run's split 'groups' makes
    pool_train(study_runs(study, len(folds)), envs, runs_dir, log, device)  # several workers: all at once first
    rows = ds.train_rows.index.to_numpy()
    records: list[dict] = []
    ok = None
    for seed in range(study.seeds):
        for name in study.names:
            for k, val in enumerate(folds):
                cfg = resolve(name, seed, k)
                run = finished_run(cfg, runs_dir, log=log, progress=progress, device=device)
                base = {"backbone": name, "seed": seed, "fold": k}
                records.append({**base, **leukviz_record(run, ds.classes)})
                line = f"{name} seed {seed} fold {k}: leukviz F1 {records[-1]['weighted_f1']:.3f}"
                for variant in (v for v in study.variants if (name, v) not in skipped):
                    vrun = finished_run(resolve(name, seed, k, variant), runs_dir, log=log, progress=progress, device=device)
                    records.append({**base, **leukviz_record(vrun, ds.classes), "method": variant_label(variant)})
                    line += f", {records[-1]['method']} {records[-1]['weighted_f1']:.3f}"
                if seed < study.n_plain:
                    if ok is None:  # the rows the runs could decode (read from the image cache; built if absent)
                        _, ok = data.image_cache(ds, cfg.image_size, cfg.crop, paths.cache_root())
                    train = np.setdiff1d(rows, val)
                    spec = plain.PlainRun(name, study.weights, study.image_size, study.epochs, seed)
                    records.append({**base, **plain_record(ds, train[ok[train]], val[ok[val]], spec, log)})
                    line += f", plain {records[-1]['weighted_f1']:.3f}"
                log(line)
    idx = ds.train_rows
    fold_info = [{"fold": k, "n_val": int(len(v)),
                  "val_subjects": sorted(map(str, set(idx.loc[v, "subject"]))),
                  "val_classes": {c: int((idx.loc[v, "label"] == i).sum()) for i, c in enumerate(ds.classes)}}
                 for k, v in enumerate(folds)]
    summary = summarize_subjects(records)
    for name, per in summary.items():  # every comparison with its uncertainty: paired over subjects
        pairs = [(m, LEUKVIZ) for m in methods_of(per) if m not in (LEUKVIZ, PLAIN)]
        pairs += [(LEUKVIZ, PLAIN)] if PLAIN in per else []
        tested = {(a, b): paired_test(records, name, a, b, ds.classes) for a, b in pairs}
        per["tests"] = [t for t in tested.values() if t is not None]
        notes += [f"{backbones.get_spec(name).title}: {a} − {b} has no paired test (they scored different cells)"
                  for (a, b), t in tested.items() if t is None]
    return {"study": "subjects", "data": str(study.data), "fingerprint": ds.fingerprint,
            "backbones": list(study.names), "seeds": study.seeds, "plain_seeds": study.n_plain,
            "image_size": study.image_size, "epochs": study.epochs, "weights": study.weights,
            "preset": study.preset, "variants": [variant_label(v) for v in study.variants],
            "folds": fold_info, "notes": data.subject_warnings(ds) + notes,
            "plain_recipe": plain.RECIPE if study.n_plain else None,
            "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in records], "summary": summary}
