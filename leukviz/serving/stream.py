"""Prediction of any number of images in batches: each batch is decoded, predicted by every model, written to
the table (CSV) and added to running counts, then dropped; memory stays that of one batch whatever the folder
holds (docs/BENCHMARKS.md, "Prediction at scale"). The table is the one inference.predict_table and
prediction.table_csv make, row for row, and the summary prediction.batch_summary's, from counts.

The CSV is written to a temporary file beside its destination and renamed once the last batch is in
(storage.output, the output rule; `-` or a pipe is written as a stream): a stopped run or a full disk never
leaves a table cut short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukviz.core import storage
from leukviz.models import backbones
from leukviz.runstore import names
from leukviz.runstore.names import format_duration
from leukviz.serving import batchsummary, inference

BATCH = 512  # images per batch: decoded once for every model, then dropped


def batches(files: Sequence[str | Path], size: int = BATCH) -> Iterator[Sequence[str | Path]]:
    """The files in consecutive slices of size (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"a batch holds at least one image, not {size}")
    for i in range(0, len(files), size):
        yield files[i:i + size]


def batch_rows(models: Sequence[Any], files: Sequence[str | Path], tta: bool = False) -> list[dict]:
    """One batch predicted by every model: inference.predict_table's rows, models first."""
    rows = []
    for lm in models:
        for rec in inference.predict_files(lm, files, tta=tta):
            rows.append({"file": rec["file"], "model": lm.backbone, "run_id": lm.run_dir.name,
                         "calibrated": lm.calibrated, "temperature": float(lm.temperature), **rec})
    return rows


@dataclass
class _Figures:
    """prediction._figures kept as counts: each predicted class, and where the truth is known the hits per
    true class."""

    classes: list[str]
    readable: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    truth: dict[str, int] = field(default_factory=dict)  # labelled images per true class
    hits: dict[str, int] = field(default_factory=dict)  # of those, called their class

    def add(self, called: Any, truth: str | None) -> None:
        self.readable += 1
        if called in self.classes:
            self.counts[called] = self.counts.get(called, 0) + 1
        if truth is not None:
            self.truth[truth] = self.truth.get(truth, 0) + 1
            self.hits[truth] = self.hits.get(truth, 0) + int(called == truth)

    def result(self) -> dict[str, Any]:
        counts = {c: self.counts.get(c, 0) for c in self.classes}
        out: dict[str, Any] = {"readable": self.readable, "counts": counts,
                               "shares": {c: counts[c] / self.readable if self.readable else None
                                          for c in self.classes}}
        labelled = sum(self.truth.values())
        if labelled:
            correct = sum(self.hits.values())
            out.update(labelled=labelled, correct=correct, accuracy=correct / labelled)
            out["recall"] = {c: self.hits[c] / self.truth[c] if self.truth.get(c) else None for c in self.classes}
            out["recall_n"] = {c: [self.hits.get(c, 0), self.truth.get(c, 0)] for c in self.classes}
            out["recall_why"] = {c: f"no known {c} image" for c in self.classes if not self.truth.get(c)}
        return out


@dataclass
class _ModelCounts:
    model: str
    every: _Figures
    without_unlike: _Figures
    held_out: _Figures
    images: int = 0
    unreadable: int = 0
    unlike: int = 0
    seen: int = 0
    seen_unchecked: int = 0
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> [called positive, cells]


def _flag(value: Any) -> bool:
    """As prediction._flagged: only a real True flags (empty and False alike do not)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


class RunningSummary:
    """prediction.batch_summary kept as counts while batches stream by: the same result for the same rows,
    holding a few numbers per model (and per subject), never the rows."""

    def __init__(self, classes: Sequence[str], positive: str = "all"):
        self.classes, self.positive = list(classes), positive
        self.models: dict[str, _ModelCounts] = {}

    def _model(self, r: dict) -> _ModelCounts:
        run_id = str(r["run_id"])
        if run_id not in self.models:
            model = str(r["model"])
            name = names.model_name(model, run_id) if model in backbones.BACKBONES else model
            self.models[run_id] = _ModelCounts(name, *(_Figures(self.classes) for _ in range(3)))
        return self.models[run_id]

    def add(self, rows: Sequence[dict]) -> None:
        for r in rows:
            m = self._model(r)
            m.images += 1
            if r.get("error"):
                m.unreadable += 1
                continue
            called = r.get("predicted")
            truth, subject = batchsummary.truth_of(r["file"], self.classes)
            unlike, seen = _flag(r.get("ood")), _flag(r.get("seen"))
            m.unlike += unlike
            m.seen += seen
            m.seen_unchecked += "seen" in r and r["seen"] is None
            m.every.add(called, truth)
            if not unlike:
                m.without_unlike.add(called, truth)
            if not seen:
                m.held_out.add(called, truth)
            if subject:
                s = m.subjects.setdefault(subject, [0, 0])
                s[0] += int(called == self.positive)
                s[1] += 1

    def result(self) -> list[dict]:
        """batch_summary's list, key for key (prediction.batch_summary says what each holds)."""
        out = []
        for run_id, m in self.models.items():
            item: dict[str, Any] = {"model": m.model, "run_id": run_id, "unreadable": m.unreadable,
                                    **m.every.result(), "images": m.images, "unlike": m.unlike, "seen": m.seen}
            if m.seen_unchecked:
                item["seen_unchecked"] = m.seen_unchecked
            if m.unlike:
                item["without_unlike"] = m.without_unlike.result()
            if m.seen:
                item["held_out"] = m.held_out.result()
            if m.subjects:
                per = []
                for s in names.sorted_subjects(m.subjects):
                    k, n = m.subjects[s]
                    low, high = batchsummary._wilson(k, n)
                    per.append({"subject": s, "cells": n, f"called_{self.positive}": k, "share": k / n,
                                "low": low, "high": high})
                item["subjects"] = per
            out.append(item)
        return out


class ProgressLine:
    """Images done, rate and time left, on stderr: one line rewritten in place on a terminal, else a line
    at most every `every` seconds (and the last), so a log stays short."""

    def __init__(self, total: int, write: Callable[[str], None], tty: bool, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.write, self.tty, self.every, self.clock = total, write, tty, every, clock
        self.t0 = clock()
        self.last = -float("inf")

    def text(self, done: int) -> str:
        elapsed = self.clock() - self.t0
        line = f"predicted {done:,} of {self.total:,} images ({done / max(1, self.total):.0%})"
        if done and elapsed > 0:
            rate = done / elapsed
            line += f" · {rate:.1f} images/s"
            if done < self.total:
                line += f" · about {format_duration((self.total - done) / rate)} left"
        return line

    def update(self, done: int) -> None:
        now = self.clock()
        final = done >= self.total
        if self.tty:
            self.write("\r" + self.text(done) + ("\n" if final else ""))
        elif final or now - self.last >= self.every:
            self.write(self.text(done) + "\n")
        else:
            return
        self.last = now


class _CsvSink:
    """The table written batch by batch into a binary file (storage.output's): the header once, then rows in
    inference.table_frame's columns, as prediction.table_csv writes a whole table."""

    def __init__(self, fh, columns: list[str]):
        self.fh, self.columns, self.header = fh, columns, True

    def write(self, rows: list[dict]) -> None:
        frame = inference.table_frame(rows).reindex(columns=self.columns)
        self.fh.write(frame.to_csv(index=False, header=self.header).encode("utf-8"))
        self.header = False


@dataclass
class StreamResult:
    """What a streamed prediction leaves behind besides its table: the summary and the row counts."""

    summary: list[dict]
    rows: int
    errors: int
    images: int


def predict_stream(models: Sequence[Any], files: Sequence[str | Path], csv_path: Any = None, *,
                   tta: bool = False, batch_size: int = BATCH, on_rows: Callable[[list[dict]], None] | None = None,
                   progress: ProgressLine | None = None) -> StreamResult:
    """Predict files with every model batch by batch: each batch's rows go to the CSV (when csv_path is given;
    whole or not at all), to on_rows (a printer) and to the running summary, then are dropped."""
    columns = inference.table_columns(models)
    running = RunningSummary(models[0].classes)
    n_rows = n_errors = done = 0

    def one_batch(chunk: Sequence[str | Path], sink) -> None:
        nonlocal n_rows, n_errors, done
        rows = batch_rows(models, chunk, tta=tta)
        running.add(rows)
        n_rows += len(rows)
        n_errors += sum(1 for r in rows if r.get("error"))
        if sink is not None:
            sink.write(rows)
        if on_rows is not None:
            on_rows(rows)
        done += len(chunk)
        if progress is not None:
            progress.update(done)

    if csv_path is None:
        for chunk in batches(files, batch_size):
            one_batch(chunk, None)
    else:
        with storage.output(csv_path) as fh:  # the output rule: a file whole or not at all, or a stream
            sink = _CsvSink(fh, columns)
            if not files:
                sink.write([])
            for chunk in batches(files, batch_size):
                one_batch(chunk, sink)
    return StreamResult(running.result(), n_rows, n_errors, len(files))
