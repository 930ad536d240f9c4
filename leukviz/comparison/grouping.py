"""Which runs go together: comparable groups (one dataset's content and one validation split), the repeats of
one configuration (runs that differ only in seed, pooled), their names, and what Compare selects first."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from leukviz.comparison.evaluation import Evaluation, Predictions, concat, same_cells
from leukviz.models import config
from leukviz.models.backbones import BACKBONES
from leukviz.runstore import best, runs
from leukviz.runstore.names import backbone_title, dataset_label, setting_text, split_text


def group_key(run: runs.Run) -> str:
    """Runs are comparable when they saw the same dataset content and the same validation split."""
    return config.split_key(run.config, run.info.get("dataset_fingerprint", "?"))


@dataclass
class Group:
    key: str
    label: str
    runs: list[runs.Run] = field(default_factory=list)

    @property
    def datasets(self) -> set[str]:
        return {r.config.data for r in self.runs}


def is_cross_validation(group: "Group") -> bool:
    """Runs of subject-grouped folds: their validation cells differ by fold and are pooled per seed."""
    return "|groups|" in group.key


def comparable_groups(candidates: Sequence[runs.Run]) -> dict[str, Group]:
    """Finished runs grouped by dataset fingerprint and split, the biggest group first."""
    groups: dict[str, Group] = {}
    for r in candidates:
        key = group_key(r)
        if key not in groups:
            fp = key.split("|", 1)[0]
            split = ("subject-grouped cross-validation (each fold's validation subjects, pooled)"
                     if r.config.split == "groups" else
                     split_text(r.config, r.meta().get("split")))
            label = f"{dataset_label(r.config.data)} · split {split} · data {fp[:8]}"
            groups[key] = Group(key, label)
        groups[key].runs.append(r)
    for g in groups.values():
        g.label += f" · {len(g.runs)} run{'s' if len(g.runs) != 1 else ''}"
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1].runs)))


def config_key(run: runs.Run) -> str:
    """Runs of one configuration that differ only in seed (repeats) share this key (config.repeat_key)."""
    return run.repeat_key


def setting_labels(firsts: Sequence[runs.Run], most: int = 3) -> list[str]:
    """Short names for configurations of one backbone: the settings in which they differ, in words
    (names.setting_text: "32 px, 1 epoch", "fine-tune head only, lr 0.0003"), at most `most` of them; the run id's start where that does not tell them apart."""
    settings = [config.repeat_settings(r.config) for r in firsts]
    differ = [k for k in settings[0] if len({json.dumps(d.get(k), sort_keys=True) for d in settings}) > 1]
    labels = [", ".join(setting_text(k, d.get(k)) for k in differ[:most]) for d in settings]
    if not all(labels) or len(set(labels)) < len(labels):
        labels = [f"{label} ({r.run_id[:6]})" if label else r.run_id[:6] for label, r in zip(labels, firsts)]
    return labels


@dataclass
class Repeats:
    """The runs of one configuration, by seed, and what they give pooled: the cells of every seed stacked,
    each cell keeping its subject, so a subject resampled brings its cells from every seed. Under
    subject-grouped cross-validation a seed's runs are its folds, and its predictions are every fold's
    validation cells together (each subject scored once, by a model that never saw it)."""

    name: str
    evals: list[Evaluation]

    @property
    def seeds(self) -> list[int]:
        return sorted({ev.run.config.seed for ev in self.evals})

    def per_seed(self, which: str = "val") -> dict[int, Predictions | None]:
        """Each seed's predictions on `which`, its folds concatenated (None when one lacks that set)."""
        out: dict[int, Predictions | None] = {}
        for seed in self.seeds:
            parts = [getattr(ev, which) for ev in self.evals if ev.run.config.seed == seed]
            out[seed] = None if any(p is None for p in parts) else concat(parts, sort=True)
        return out

    def pooled(self, which: str = "val", seeds: Sequence[int] | None = None) -> Predictions | None:
        parts = [p for seed, p in self.per_seed(which).items() if seeds is None or seed in seeds]
        if not parts or any(p is None for p in parts) or any(not same_cells(parts[0], p) for p in parts):
            return None
        return concat(parts)


def repeat_groups(evals: Sequence[Evaluation]) -> list[Repeats]:
    """The evaluations grouped by configuration (config_key), in registry order, each by seed. A group is
    named by its backbone, plus what sets it apart (setting_labels) when one backbone has several
    configurations."""
    by_key: dict[str, list[Evaluation]] = {}
    for ev in evals:
        by_key.setdefault(config_key(ev.run), []).append(ev)
    groups = list(by_key.values())
    for members in groups:
        members.sort(key=lambda ev: ev.run.config.seed)
    names = {id(m): backbone_title(m[0].run.config.backbone) for m in groups}
    for backbone in {m[0].run.config.backbone for m in groups}:
        same = [m for m in groups if m[0].run.config.backbone == backbone]
        if len(same) > 1:
            for members, label in zip(same, setting_labels([m[0].run for m in same])):
                names[id(members)] += f" · {label}"
    out = [Repeats(names[id(members)], members) for members in groups]
    order = list(BACKBONES)
    return sorted(out, key=lambda g: order.index(g.evals[0].run.config.backbone)
                  if g.evals[0].run.config.backbone in order else len(order))


def default_selection(candidates: Sequence[runs.Run]) -> list[runs.Run]:
    """What Compare selects first (runstore.best.preselect, the rule every page shares): for each backbone,
    every healthy seed of its healthy configuration with the best validation score among candidates (one
    comparable group: one dataset and split), in registry order."""
    by_id = {r.run_id: r for r in candidates}
    return [by_id[i] for i in best.preselect([best.entry(r) for r in candidates], None)]
