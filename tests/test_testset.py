"""The held-out test set: scored once by training, and the backfill (testset.score_run) for older runs."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import make_run
from leukviz.comparison import testset
from leukviz.core import filenames, paths
from leukviz.datasets import cnmc, data
from leukviz.datasets.cnmc import parse_cnmc_name
from leukviz.models import config
from leukviz.runstore import runs, trainer


def split_tree(tiny_data: Path, root: Path, test: bool = True, per_subject: int = 6) -> Path:
    """A train/ valid/ [test/] tree of tiny_data's cells, one sub-folder per class: train/ subjects 1, 2 and
    H1; valid/ subjects 3 and H2; test/ subject 4 and the first labelled normal cells of the prelim set."""
    sets = {"1": "train", "2": "train", "H1": "train", "3": "valid", "H2": "valid", "4": "test"}
    taken: dict[str, int] = {}
    for f in sorted((tiny_data / cnmc.TRAINING).rglob("*.png")):
        subject, *_, cls = parse_cnmc_name(f.name)
        where = sets[subject]
        if (where == "test" and not test) or taken.get(subject, 0) >= per_subject:
            continue
        taken[subject] = taken.get(subject, 0) + 1
        (root / where / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / where / cls / f.name)
    if test:
        with open(tiny_data / cnmc.PRELIM_LABELS, newline="") as fh:
            hem = [r for r in csv.DictReader(fh) if r[cnmc.LABEL_VALUE] == "0"][:per_subject]
        (root / "test" / "hem").mkdir(parents=True, exist_ok=True)
        for r in hem:
            shutil.copy(tiny_data / cnmc.PRELIM_IMAGES / r[cnmc.LABEL_FILE], root / "test" / "hem" / r[cnmc.LABEL_SUBJECT])
    return root


def tiny_cfg(dataset: Path, **kw) -> config.RunConfig:
    """GoogLeNet from scratch at 32 px on the given split: a few batches of 8 per epoch."""
    settings = {"epochs": 1, "image_size": 32, "batch_size": 8, "split": "given", "select": "best",
                "average": "none", **kw}
    return config.resolve("googlenet", "quick", "none", str(dataset), **settings)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> tuple[runs.Run, Path]:
    """A finished run on a train/valid/test tree, and its cache folder."""
    tree = split_tree(tiny_data, tmp_path_factory.mktemp("tree") / "cells")
    run = runs.run_for(tiny_cfg(tree), tmp_path_factory.mktemp("runs"))
    trainer.train(run, log=lambda s: None)
    assert run.state == "finished"
    return run, paths.cache_root()  # where trainer.train decoded the images


def test_training_writes_one_test_prediction_per_test_image(trained):
    run, cache = trained
    ds = data.open_dataset(run.config.data, cache)
    df = pd.read_csv(run.dir / filenames.TEST_PREDICTIONS, dtype={"subject": str}, keep_default_na=False)
    val = pd.read_csv(run.dir / filenames.PREDICTIONS)
    assert list(df.columns) == list(val.columns) == ["path", "subject", "label", "pred", "prob_all", "prob_hem"]
    assert sorted(df["path"]) == sorted(ds.test_rows["path"]) and len(df) == 12
    assert set(df["path"].map(lambda p: Path(p).parent.parent.name)) == {"test"}
    assert not set(df["path"]) & set(val["path"]), "the test images are not the validation images"
    assert np.allclose(df[["prob_all", "prob_hem"]].sum(1), 1, atol=1e-5)


def test_backfill_writes_the_same_file_for_a_run_trained_without_it(trained, tmp_path):
    run, cache = trained
    old = runs.Run(tmp_path / run.run_id)
    shutil.copytree(run.dir, old.dir, ignore=shutil.ignore_patterns("*.lock"))
    (old.dir / filenames.TEST_PREDICTIONS).unlink()  # as a run that finished before training scored its test set
    out = testset.score_run(old.dir, cache)
    assert out == old.dir / filenames.TEST_PREDICTIONS
    a, b = pd.read_csv(run.dir / filenames.TEST_PREDICTIONS), pd.read_csv(out)
    assert a[["path", "subject", "label", "pred"]].equals(b[["path", "subject", "label", "pred"]])
    assert np.allclose(a[["prob_all", "prob_hem"]], b[["prob_all", "prob_hem"]], atol=1e-5)
    mtime = out.stat().st_mtime_ns
    assert testset.score_run(old.dir, cache) == out and out.stat().st_mtime_ns == mtime, "idempotent"
    os.utime(old.dir / filenames.CHECKPOINT, ns=(mtime + 10**9, mtime + 10**9))  # a newer checkpoint: scored again
    assert testset.score_run(old.dir, cache) == out and out.stat().st_mtime_ns > mtime


def test_backfill_is_none_without_a_labelled_test_set_or_dataset(tmp_path):
    for cls in ("all", "hem"):
        (tmp_path / "cells" / cls).mkdir(parents=True)
        for i in range(3):
            data.Image.new("RGB", (20, 20), (60 * i, 90, 40)).save(tmp_path / "cells" / cls / f"{i}.png")
    ds = data.open_dataset(tmp_path / "cells", tmp_path / "cache")
    plain = make_run(tmp_path / "runs", fingerprint=ds.fingerprint, split="image", data_spec=str(tmp_path / "cells"))
    assert testset.score_run(plain.dir, tmp_path / "cache") is None
    gone = make_run(tmp_path / "runs", fingerprint="fp1", data_spec=str(tmp_path / "nowhere"))
    assert testset.score_run(gone.dir, tmp_path / "cache") is None
    assert not (plain.dir / filenames.TEST_PREDICTIONS).exists()
