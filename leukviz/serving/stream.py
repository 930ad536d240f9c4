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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leukviz.core import storage
from leukviz.runstore.names import format_duration
from leukviz.serving import batchsummary, inference

BATCH = 512  # images per batch: each decoded once for every model (inference.table_rows), then dropped


def batches(files: Sequence[str | Path], size: int = BATCH) -> Iterator[Sequence[str | Path]]:
    """The files in consecutive slices of size (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"a batch holds at least one image, not {size}")
    for i in range(0, len(files), size):
        yield files[i:i + size]


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
    running = batchsummary.RunningSummary(models[0].classes)
    n_rows = n_errors = done = 0

    def one_batch(chunk: Sequence[str | Path], sink) -> None:
        nonlocal n_rows, n_errors, done
        rows = inference.table_rows(models, chunk, tta=tta)
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
