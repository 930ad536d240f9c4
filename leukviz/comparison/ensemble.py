"""The ensemble: the selected models' probabilities averaged cell by cell, compared as one more model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leukviz.comparison.evaluation import Evaluation, Predictions, same_cells
from leukviz.comparison.grouping import Repeats, repeat_groups

ENSEMBLE = "Ensemble"


def ensemble(evals: Sequence[Evaluation]) -> Repeats | None:
    """The mean of the selected models' probabilities, cell by cell, as one more model (None when fewer than
    two models or they were not scored on the same cells); a model is a run, or under cross-validation one
    seed's folds. Its test predictions likewise, when every run has them."""
    members = [(g, seed) for g in repeat_groups(evals) for seed in g.seeds]
    if len(members) < 2:
        return None

    def mean(which: str) -> Predictions | None:
        per_seed = {id(g): g.per_seed(which) for g, _ in members}
        parts = [per_seed[id(g)][seed] for g, seed in members]
        if any(p is None for p in parts) or any(not same_cells(parts[0], p) for p in parts):
            return None
        first = parts[0]
        return Predictions(first.classes, first.paths, first.y, np.mean([p.probs for p in parts], axis=0),
                           first.subjects)

    val = mean("val")
    if val is None:
        return None
    first = evals[0]
    ev = Evaluation(first.run, val.classes, val.y, val.probs, val.summary, val, mean("test"))
    return Repeats(f"{ENSEMBLE} of {len(members)}", [ev])
