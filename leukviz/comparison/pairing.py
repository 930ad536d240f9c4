"""The numbers of groups of repeats: each group's scores on a set (mean and spread over seeds, the subject-
bootstrap interval of its pooled predictions) and every pair of groups compared on the same cells (a − b,
resampled and permuted by subject)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from leukviz.comparison.evaluation import Predictions, same_cells
from leukviz.comparison.grouping import Repeats
from leukviz.scoring import metrics

# The scores compared in pairs (paired interval and permutation test).
PAIRED_SCORES = ("weighted_f1", "accuracy")


@dataclass
class Stats:
    """What Compare shows of one configuration on one set: each score's mean and spread over seeds (each
    seed's value too) and its subject-bootstrap interval, pooled over the seeds."""

    name: str
    which: str  # "val" or "test"
    seeds: list[int]
    spread: dict  # score -> metrics.seed_spread (its values in the order of seeds)
    interval: dict  # metrics.subject_bootstrap of the pooled predictions

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


def stats(group: Repeats, which: str = "val", n_resamples: int = 2000, seed: int = 0) -> Stats | None:
    """The group's scores on 'val' or 'test' (None when a run lacks that set's predictions)."""
    parts = list(group.per_seed(which).values())
    pooled = group.pooled(which)
    if pooled is None or any(p is None for p in parts):
        return None
    spread = {k: metrics.seed_spread([metrics.score(k, p.y, p.probs, p.classes) for p in parts])
              for k in metrics.SCORES}
    interval = metrics.subject_bootstrap(pooled.y, pooled.probs, pooled.classes, pooled.subjects,
                                         n_resamples=n_resamples, seed=seed)
    return Stats(group.name, which, group.seeds, spread, interval)


@dataclass
class Paired:
    a: str
    b: str
    which: str
    seeds: list[int]
    result: dict  # metrics.paired_comparison
    verdicts: list[str]


def _tile(p: Predictions, times: int) -> Predictions:
    subjects = None if p.subjects is None else np.tile(p.subjects, times)
    return Predictions(p.classes, np.tile(p.paths, times), np.tile(p.y, times), np.tile(p.probs, (times, 1)), subjects)


def _paired_predictions(a: Repeats, b: Repeats, which: str) -> tuple[Predictions, Predictions, list[int]] | None:
    """The two sides lined up cell for cell: seed against the same seed where both have it, else the i-th
    seed of one against the i-th of the other; a single model (one run, the ensemble) against every seed of
    the other side."""
    if len(a.seeds) == 1 or len(b.seeds) == 1:
        pa, pb, seeds = a.pooled(which), b.pooled(which), (a.seeds if len(b.seeds) == 1 else b.seeds)
        if pa is None or pb is None:
            return None
        pa, pb = (_tile(pa, len(b.seeds)), pb) if len(a.seeds) == 1 else (pa, _tile(pb, len(a.seeds)))
    else:
        common = sorted(set(a.seeds) & set(b.seeds))
        m = min(len(a.seeds), len(b.seeds))
        sa, sb = (common, common) if common else (a.seeds[:m], b.seeds[:m])
        pa, pb, seeds = a.pooled(which, sa), b.pooled(which, sb), sa
    if pa is None or pb is None or not same_cells(pa, pb):
        return None
    return pa, pb, list(seeds)


def paired(a: Repeats, b: Repeats, which: str = "val", n_resamples: int = 2000, seed: int = 0) -> Paired | None:
    """a − b on the same cells (_paired_predictions), the predictions pooled over the paired seeds,
    resampled and permuted by subject (metrics.paired_comparison). None when they share no cells."""
    lined = _paired_predictions(a, b, which)
    if lined is None:
        return None
    pa, pb, common = lined
    res = metrics.paired_comparison(pa.y, pa.probs, pb.probs, pa.classes, pa.subjects, scores=PAIRED_SCORES,
                                    n_resamples=n_resamples, seed=seed)
    texts = [metrics.verdict(a.name, b.name, k, res) for k in PAIRED_SCORES]
    return Paired(a.name, b.name, which, common, res, texts)


def all_pairs(groups: Sequence[Repeats], which: str = "val", n_resamples: int = 2000) -> list[Paired]:
    """Every pair of groups, in the order given (the ensemble, when it is one of them, last)."""
    out = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            p = paired(a, b, which, n_resamples)
            if p is not None:
                out.append(p)
    return out
