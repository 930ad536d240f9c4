"""The Python API for notebooks and scripts: train, runs, compare, predict, load.

    import leukviz
    run = leukviz.train(backbone="resnet50", data="demo", weights="none", epochs=1, image_size=32)
    run.metrics, run.health, run.history          # a dict, a word, a DataFrame of epochs
    leukviz.runs(dataset="demo")                   # a DataFrame, one row per run
    result = leukviz.compare(leukviz.runs(dataset="demo", health="healthy"))
    result.answer, result.table, result.figures    # words, a DataFrame, Plotly figures
    result.report("report.html")
    leukviz.predict(run, ["cell.bmp"])             # a DataFrame, one row per image per run
    leukviz.load("2e5b2e")                         # a run by id (a unique prefix is enough)

These are the functions the command line calls (`leukviz train`, `runs list`, `compare`, `predict`): one way to
do each thing. The module imports without torch; torch loads when a model trains or predicts.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukviz.core import paths
from leukviz.core.errors import LeukvizError
from leukviz.models import config as C
from leukviz.runstore import runs as _runs

if TYPE_CHECKING:  # pandas and plotly load when a function needs them: `import leukviz.api` stays light
    import pandas as pd
    import plotly.graph_objects as go

    from leukviz.comparison.compare import Report
    from leukviz.comparison.evaluation import Evaluation

__all__ = ["ApiError", "Comparison", "Run", "compare", "config", "health_of", "load", "predict", "run_rows", "runs",
           "sample_images", "select_comparable", "train", "without_degenerate"]

class ApiError(LeukvizError, ValueError):
    """A call that cannot be done as asked, in one line (the CLI prints it as its error)."""


# ---------------------------------------------------------------------------------------------- one run

@dataclasses.dataclass(frozen=True)
class Run:
    """A run as a notebook sees it: read from its folder each time a property is asked (a run training in
    another process moves on)."""

    dir: Path

    @classmethod
    def of(cls, run: Run | _runs.Run | str, runs_dir: str | Path | None = None) -> Run:
        if isinstance(run, Run):
            return run
        if isinstance(run, _runs.Run):
            return cls(run.dir)
        return cls(_runs.get_run(str(run), runs_dir).dir)

    @property
    def _run(self) -> _runs.Run:
        return _runs.Run(self.dir)

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def state(self) -> str:
        """queued, running, finished, failed, stopped or interrupted."""
        return self._run.state

    @property
    def config(self) -> dict[str, Any]:
        return self._run.config.to_dict()

    @property
    def backbone(self) -> str:
        return self._run.config.backbone

    @property
    def metrics(self) -> dict[str, Any]:
        """The kept model's validation scores (val_acc, val_f1, val_loss, best_epoch, ...)."""
        return self._run.final_metrics()

    @property
    def health(self) -> str | None:
        """'ok' or 'degenerate' for a finished run (health_reasons says why); None before it finishes."""
        return health_of(self._run)["health"]

    @property
    def health_reasons(self) -> list[str]:
        return health_of(self._run)["health_reasons"]

    @property
    def error(self) -> str | None:
        return self._run.status.get("error")

    @property
    def history(self) -> pd.DataFrame:
        """One row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, val_f1, lr, seconds, ..."""
        import pandas as pd

        rows = [{k: v for k, v in ev.items() if k != "type"} for ev in self._run.epochs()]
        return pd.DataFrame(rows)

    def predict(self, images: str | Path | Sequence[str | Path], tta: bool = False) -> pd.DataFrame:
        return predict(self, images, tta=tta)

    def __repr__(self) -> str:
        m = self.metrics
        scores = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k in ("val_acc", "val_f1") and v is not None)
        return (f"leukviz.Run({self.id!r}, {self.backbone}, {self.state}"
                + (f", {scores}" if scores else "") + (f", health {self.health}" if self.health else "") + ")")


def health_of(run: _runs.Run) -> dict[str, Any]:
    """{"health", "health_reasons"} of a run as the pages decide it (dashboard.run_health); None before it
    finishes."""
    from leukviz.app import dashboard

    h = dashboard.run_health(run)
    return h.to_dict() if h is not None else {"health": None, "health_reasons": []}


def load(run_id: str, runs_dir: str | Path | None = None) -> Run:
    """A run by id (a unique prefix is enough); NoSuchRun names the runs there are."""
    return Run.of(run_id, runs_dir)


# ---------------------------------------------------------------------------------------------- training

def config(backbone: str = "resnet50", data: str | Path = "demo", weights: str = "imagenet", preset: str = "quick",
           **settings: Any) -> C.RunConfig:
    """The run configuration of `leukviz train`'s options (the preset's defaults for what is not given; a
    train/ + val/ tree validates on its own val/ unless split= says otherwise). Unknown settings are refused
    with the valid ones named."""
    known = {f.name for f in dataclasses.fields(C.RunConfig)} - {"backbone", "data", "weights", "preset"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ApiError(f"unknown training setting(s) {', '.join(unknown)}; the settings are: {', '.join(sorted(known))}")
    given = {k: v for k, v in settings.items() if v is not None}
    data = str(data)
    if given.get("split") is None and data != "demo":
        from leukviz.datasets import data as D
        if D.default_split(D.open_dataset(data, paths.cache_root())) == "given":
            given["split"] = "given"
    return C.resolve(backbone, preset, str(weights), data, **given)


def train(backbone: str = "resnet50", data: str | Path = "demo", *, weights: str = "imagenet", preset: str = "quick",
          seeds: int = 1, workers: int = 1, device: str = "auto", force: bool = False,
          runs_dir: str | Path | None = None, progress: bool | Callable[[dict], None] = True,
          **settings: Any) -> Run | list[Run]:
    """Train a backbone here (or return the cached run: the same configuration on the same data never trains
    twice), with `leukviz train`'s options as keywords: epochs=, image_size=, batch_size=, lr=, split=,
    finetune=, seed=, patience=, ... seeds=N trains N runs differing only in seed and returns them all, as many
    at once as the device pool has workers (one per GPU, or workers= on CPU: `train --workers`).
    progress: True (the default) prints each epoch on stderr, False nothing, or a function that gets every event."""
    cfg = config(backbone, data, weights, preset, **settings)
    for caution in C.cautions(cfg):
        print(f"warning: {caution}", file=sys.stderr)
    if seeds > 1:
        group = C.repeats(cfg, seeds)
        pooled = _pool_train(group, workers, device, force, runs_dir)  # then each comes back cached
        return [_train_one(c, device, force and not pooled, runs_dir, progress) for c in group]
    return _train_one(cfg, device, force, runs_dir, progress)


def _pool_train(cfgs: list[C.RunConfig], workers: int, device: str, force: bool, runs_dir: str | Path | None) -> bool:
    """A seeds group on the device pool (runstore.pool), when it has more than one worker (force: the finished
    runs archived first, by the one start policy); whether it did."""
    from leukviz.runstore import pool

    envs = pool.worker_envs(device, workers) if device in ("auto", "cuda", "cpu") else [{}]
    if len(envs) < 2:
        return False
    from leukviz.runstore import driver

    group = [_runs.run_for(c, runs_dir) for c in cfgs]
    for run in group if force else ():  # the one start policy's --force: a finished run archived, trained again
        driver.decide(run, force=True)
    p = pool.Pool(envs, device)
    p.run_or_stop(group)
    if p.stopped:
        raise ApiError("stopped: every run in flight was asked to stop (each keeps a resumable checkpoint)")
    return True


def _train_one(cfg: C.RunConfig, device: str, force: bool, runs_dir: str | Path | None,
               progress: bool | Callable[[dict], None]) -> Run:
    """One run by the run store's one driver (runstore.driver.obtain): cached, followed while another process
    trains it, or trained in this process (trainer.train: the run lock, the device queue, status.json)."""
    from leukviz.runstore import driver
    from leukviz.training.protocol import Stopped

    hook = progress if callable(progress) else _stderr_progress() if progress else None
    run = _runs.run_for(cfg, runs_dir)
    out = driver.obtain(run, force=force, device=device, log=lambda s: None, progress=hook)
    if out.error is not None and not isinstance(out.error, Stopped):
        raise out.error  # as training raised it (also recorded in status.json)
    result = Run(run.dir)
    if result.state != "finished":
        raise ApiError(f"run {result.id} {result.state}: {result.error or 'see its train.log'}")
    return result


def _stderr_progress() -> Callable[[dict], None]:
    """One line per epoch on stderr (what the CLI prints when its output is not a terminal)."""
    from leukviz.core.events import EPOCH

    def hook(ev: dict) -> None:
        if ev.get("type") == EPOCH:
            print(f"epoch {ev['epoch']}/{ev['epochs']}: train loss {ev['train_loss']:.4f} | val acc "
                  f"{ev['val_acc']:.3f} F1 {ev['val_f1']:.3f} | {ev['seconds']:.1f}s", file=sys.stderr)
    return hook


# ---------------------------------------------------------------------------------------------- the runs

def run_rows(runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every run folder (a damaged one too) as `runs list` shows it: settings, state, validation scores, health
    and the problems of its files with their repair, read from each run's stored summary (runstore.summary:
    computed once, again only when the run's files change); "best" marks each backbone's best run or group."""
    from leukviz.runstore import best, summary

    listed = summary.list_runs(runs_dir)
    rows = [{**summary.describe(r), "run_dir": str(r.dir)} for r in listed]
    marked = best.best_ids([best.entry(r) for r, row in zip(listed, rows) if row["backbone"] is not None])
    for row in rows:  # each backbone's best run or repeat group on its dataset and split (every page's rule)
        row["best"] = row["run_id"] in marked
    return rows


COLUMNS = ["run_id", "backbone", "state", "health", "val_acc", "val_f1", "data", "preset", "weights", "image_size",
           "epochs", "split", "damaged", "health_reasons", "problems", "error", "run_dir"]


def runs(dataset: str | Path | None = None, backbone: str | Iterable[str] | None = None,
         health: str | None = None, state: str | None = None, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """The runs as a DataFrame (newest first, indexed by nothing: run_id is a column), filtered by dataset (as
    given to train: "demo" or a path), backbone (one or several), health ("healthy" / "degenerate") and state. Pass
    it (or its run_id column) to compare()."""
    import pandas as pd

    df = pd.DataFrame(run_rows(runs_dir), columns=COLUMNS)
    if dataset is not None:
        df = df[df["data"] == str(dataset)]
    if backbone is not None:
        df = df[df["backbone"].isin([backbone] if isinstance(backbone, str) else list(backbone))]
    if health is not None:
        df = df[df["health"] == health]
    if state is not None:
        df = df[df["state"] == state]
    return df.reset_index(drop=True)


def _resolve(chosen: Any, runs_dir: str | Path | None = None) -> list[Run]:
    """Runs from a DataFrame of runs() (its run_dir column), a Run, a run id (a unique prefix), or a list of
    them; each once, in the order given."""
    if hasattr(chosen, "columns"):  # a DataFrame of runs()
        chosen = [Path(d) for d in chosen["run_dir"]] if "run_dir" in chosen.columns else list(chosen["run_id"])
    elif isinstance(chosen, (str, Path, Run, _runs.Run)):
        chosen = [chosen]
    out = [Run(c) if isinstance(c, Path) else Run.of(c, runs_dir) for c in chosen]
    return list({r.dir: r for r in out}.values())


# ---------------------------------------------------------------------------------------------- comparing

def without_degenerate(chosen: list[_runs.Run], verb: str, note: Callable[[str], None]) -> list[_runs.Run]:
    """The runs of 'all' less the degenerate ones (scoring.health), each named (note) with why; when every run is
    degenerate, all of them, each still named. compare all and predict --run all choose alike."""
    from leukviz.scoring import health

    left = [r for r in chosen if health.of_run_dir(r.dir).degenerate]
    for r in left:
        why = "; ".join(health.of_run_dir(r.dir).reasons)
        if len(left) < len(chosen):
            note(f"run {r.run_id} left out: degenerate ({why}); name it to {verb} with it")
        else:
            note(f"warning: run {r.run_id} is degenerate ({why}), and so is every finished run")
    return [r for r in chosen if r not in left] if len(left) < len(chosen) else chosen


def select_comparable(chosen: Any, runs_dir: str | Path | None = None,
                      note: Callable[[str], None] = lambda s: None) -> list[_runs.Run]:
    """The finished, usable runs to compare: 'all', or what _resolve takes (ids, Runs, a DataFrame of runs());
    they must share their validation cells (one comparable group), except that 'all' takes the largest group and
    says so (note). 'all' leaves out degenerate runs (as the Compare page's default) unless nothing else is left."""
    from leukviz.app import dashboard
    from leukviz.comparison import grouping

    everything = isinstance(chosen, str) and chosen == "all" or (isinstance(chosen, (list, tuple))
                                                                 and list(chosen) == ["all"])
    if everything:
        for r in dashboard.damaged_runs(runs_dir):
            note(f"left out, damaged: {dashboard.damage_text(r)}")
        chosen = dashboard.finished_runs(runs_dir)
        if not chosen:
            raise ApiError("no usable finished runs (`runs list` names what is wrong with each); train one first")
        chosen = without_degenerate([r for r in chosen if r.is_usable], "compare", note)
    else:
        chosen = [r._run for r in _resolve(chosen, runs_dir)]
        for r in chosen:
            if r.unfinished():
                note(f"warning: {r.unfinished()}; its results are of an unfinished model")
        chosen = list({r.run_id: r for r in chosen if r.is_usable}.values())
    if not chosen:
        raise ApiError("no finished runs among those given; `leukviz runs list` shows them")
    groups = grouping.comparable_groups(chosen)
    if len(groups) > 1:
        listing = "; ".join(f"{g.label}: {' '.join(r.run_id for r in g.runs)}" for g in groups.values())
        if not everything:
            raise ApiError(f"these runs were not scored on the same validation cells, so they cannot be compared; "
                           f"give runs of one group: {listing}")
        note(f"comparing the largest of {len(groups)} groups (others: {listing})")
    return next(iter(groups.values())).runs


@dataclasses.dataclass
class Comparison:
    """compare()'s result: the answer in words, the table, every pair, figures, and the HTML report."""

    evaluations: list[Evaluation]
    result: Report
    notes: list[str]

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        """Everything as plain data (what `leukviz compare --json` prints): the report's numbers, the answer's
        sentences, the pairwise matrix and each run's calibration (compare.report_json)."""
        from leukviz.comparison.compare import report_json

        return report_json(self.result, self.evaluations)

    @property
    def answer(self) -> str:
        """One sentence per set for weighted F1: the best model, and whether its lead over each other is clear."""
        from leukviz.comparison import answers

        rep = self.data
        return " ".join(a for which in rep["sets"] if (a := answers.answer(rep, "weighted_f1", which)))

    @property
    def table(self) -> pd.DataFrame:
        """A row per model and set: every score as mean ± sd over seeds beside its 95 % subject-bootstrap
        interval (as text, as on the Compare page; .data holds the numbers)."""
        from leukviz.comparison import answers

        return answers.stats_table(self.data["scores"])

    @property
    def pairs(self) -> pd.DataFrame:
        """Every pair once on validation weighted F1: row minus column, interval and p."""
        from leukviz.comparison import answers

        return answers.pair_matrix(self.data)

    @property
    def figures(self) -> dict[str, go.Figure]:
        """The Compare page's Plotly figures: intervals, validation F1 and loss curves, ROC."""
        from leukviz.app import charts
        from leukviz.comparison import answers, runtable

        hist = runtable.histories([ev.run for ev in self.evaluations])
        return {"intervals": charts.interval_figure(self.data["scores"], "weighted_f1", answers.SCORE_TEXT["weighted_f1"]),
                "val_f1": charts.compare_curves(hist, "val_f1"), "val_loss": charts.compare_curves(hist, "val_loss"),
                "roc": charts.roc_figure(runtable.roc_curves(self.evaluations))}

    def html(self) -> str:
        """The self-contained HTML report (Plotly inlined: it opens offline), from this comparison's numbers."""
        from leukviz.app import report

        return report.html_report(self.evaluations, rep=self.data)

    def report(self, path: str | Path) -> Path:
        """Write the HTML report (`leukviz compare --report`) and return its path."""
        from leukviz.core.storage import atomic_write_bytes

        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.html().encode())
        return path

    def __str__(self) -> str:
        from leukviz.comparison import answers

        return answers.report_text(self.result)

    def __repr__(self) -> str:
        return f"leukviz.Comparison({len(self.evaluations)} runs: {self.answer})"


def compare(chosen: Any = "all", resamples: int = 2000, runs_dir: str | Path | None = None,
            note: Callable[[str], None] | None = None) -> Comparison:
    """Compare finished runs scored on the same validation cells: a DataFrame from runs(), Runs, run ids, or
    'all'. Mean ± sd over seeds, 95 % intervals from a bootstrap over subjects, every pair tested on the same
    cells, the ensemble. Notes (runs left out, ...) go to note, else to stderr."""
    from leukviz.comparison import evaluation, testset
    from leukviz.comparison.compare import build_report

    notes: list[str] = []

    def say(text: str) -> None:
        notes.append(text)
        (note or (lambda s: print(s, file=sys.stderr)))(text)

    chosen_runs = select_comparable(chosen, runs_dir, say)
    for problem in testset.backfill_test(chosen_runs):
        say(problem)
    evals = []
    for run in chosen_runs:
        try:
            evals.append(evaluation.evaluate_run(run))
        except (OSError, KeyError, ValueError) as e:
            say(f"run {run.run_id} left out: {e}")
    if not evals:
        raise ApiError("none of the runs could be read")
    return Comparison(evals, build_report(evals, n_resamples=resamples), notes)


# ---------------------------------------------------------------------------------------------- predicting

def _image_files(images: str | Path | Sequence[str | Path]) -> list[str]:
    from leukviz.datasets import data

    items = [images] if isinstance(images, (str, Path)) else list(images)
    out: list[str] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and data.is_image(f))
        elif p.is_file():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    if not out:
        raise ApiError("no images given")
    return out


def sample_images(data: str | Path = "demo", n: int = 4, seed: int = 0) -> list[tuple[Path, str]]:
    """(path, true class) of n labelled cells of a dataset to try predict() on, the classes in turn, from its
    held-out test set when it has one (the cells the Predict page offers: datapage.demo_cells)."""
    from leukviz.app import datapage
    from leukviz.datasets import data as D

    ds = D.open_dataset(str(data), paths.cache_root())
    return [(Path(p), c) for p, c in datapage.demo_cells(ds, n, seed)]


def predict(run_or_runs: Any, images: str | Path | Sequence[str | Path], tta: bool = False,
            runs_dir: str | Path | None = None) -> pd.DataFrame:
    """Predict image files (or every image in a folder) with one run or several (a Run, an id, a list, a
    DataFrame from runs()): one row per image per run, with the predicted class, its calibrated confidence and
    probabilities (the raw ones beside them), and whether the image is unlike the run's training images."""
    from leukviz.serving import inference

    files = _image_files(images)
    chosen = _resolve(run_or_runs, runs_dir)
    for r in chosen:
        if not r._run.has_checkpoint:
            raise ApiError(f"run {r.id} has no model yet ({r.state}): nothing to predict with")
        if r._run.unfinished():
            print(f"warning: {r._run.unfinished()}; its results are of an unfinished model", file=sys.stderr)
    return inference.predict_table([r.dir for r in chosen], files, tta=tta)
