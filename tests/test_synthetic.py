"""Tests for leukviz.synthetic: the demo set is deterministic, laid out like C-NMC, and its classes differ."""

import csv
import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukviz.datasets import synthetic
from leukviz.datasets.synthetic import DEMO_VERSION, ensure_demo, generate_demo

NAME = re.compile(r"UID_([A-Za-z]*\d+)_(\d+)_(\d+)_(all|hem)\.png")


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """The default set (20 subjects) at 64 px: cheap enough to build once for the layout checks."""
    return generate_demo(tmp_path_factory.mktemp("full"), seed=0, image_size=64, workers=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("small"), seed=0, n_subjects=6, image_size=48, workers=1)


@pytest.mark.integration
def test_same_seed_same_bytes_whatever_the_workers(small, tmp_path):
    again = generate_demo(tmp_path / "again", seed=0, n_subjects=6, image_size=48, workers=2)
    assert again == tmp_path / "again" / "C-NMC_Leukemia"
    first, second = digests(small), digests(again)
    assert len(first) > 100
    assert first == second


def test_different_seed_different_images(small, tmp_path):
    other = digests(generate_demo(tmp_path, seed=1, n_subjects=6, image_size=48, workers=1))
    first = digests(small)
    shared = set(first) & set(other)
    assert sum(first[k] != other[k] for k in shared) > 0.9 * len(shared)


@pytest.mark.integration
def test_training_layout_parses_as_cnmc(full):
    files = sorted((full / "training_data").rglob("*.png"))
    folds_of = defaultdict(set)
    counts = {"all": 0, "hem": 0}
    classes_per_fold = defaultdict(set)
    for p in files:
        m = NAME.fullmatch(p.name)
        assert m, p.name
        subject, _, _, cls = m.groups()
        assert p.parent.name == cls
        assert re.fullmatch(r"fold_[012]", p.parent.parent.name)
        assert subject.isdigit() == (cls == "all")  # C-NMC spelling: "11" is a blast donor, "H10" normal
        folds_of[subject].add(p.parent.parent.name)
        classes_per_fold[p.parent.parent.name].add(cls)
        counts[cls] += 1
    assert all(len(f) == 1 for f in folds_of.values()), "a subject spans several folds"
    assert 15 <= len(folds_of) <= 25
    assert 600 <= len(files) <= 1000
    assert 1.5 <= counts["all"] / counts["hem"] <= 3
    assert all(classes_per_fold[f"fold_{k}"] == {"all", "hem"} for k in range(3))


def test_class_ratio_holds_for_other_seeds():
    for seed in range(5):
        train, prelim = synthetic._plan(seed, 20)
        cells = {0: 0, 1: 0}
        for s in train:
            cells[s["cls"]] += len(s["cells"])
        assert 1.5 <= cells[1] / cells[0] <= 3
        assert 60 <= sum(len(s["cells"]) for s in prelim) <= 100


@pytest.mark.integration
def test_prelim_set_is_labelled_and_held_out(full):
    folder = full / "validation_data" / "C-NMC_test_prelim_phase_data"
    with open(full / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["Patient_ID", "new_names", "labels"]
    assert sorted(r["new_names"] for r in rows) == sorted(p.name for p in folder.glob("*.png"))
    assert all(re.fullmatch(r"\d+\.png", r["new_names"]) for r in rows)
    train_subjects = {NAME.fullmatch(p.name).group(1) for p in (full / "training_data").rglob("*.png")}
    prelim_subjects = set()
    for r in rows:
        subject, _, _, cls = NAME.fullmatch(r["Patient_ID"]).groups()
        assert r["labels"] == ("1" if cls == "all" else "0")
        prelim_subjects.add(subject)
    assert not prelim_subjects & train_subjects
    assert {r["labels"] for r in rows} == {"0", "1"}
    assert 2 <= len(prelim_subjects) <= 3


@pytest.mark.integration
def test_cells_on_black_and_classes_differ(full):
    area = {"all": [], "hem": []}
    nucleus = {"all": [], "hem": []}
    for p in sorted((full / "training_data").rglob("*.png")):
        img = load(p)
        assert img.shape == (64, 64, 3)
        assert not img[[0, 0, -1, -1], [0, -1, 0, -1]].any(), f"{p.name}: corners not black"
        cell = img.any(axis=2)
        assert cell.mean() > 0.05, f"{p.name}: no cell"
        cls = NAME.fullmatch(p.name).group(4)
        area[cls].append(cell.sum())
        # The darkest third of the cell's interior is nucleus in both classes; its brightness is the stain.
        inner = cell[1:-1, 1:-1] & cell[:-2, 1:-1] & cell[2:, 1:-1] & cell[1:-1, :-2] & cell[1:-1, 2:]
        values = np.sort(img[1:-1, 1:-1][inner].sum(axis=1))
        nucleus[cls].append(values[: len(values) // 3].mean())
    assert np.mean(area["all"]) > 1.3 * np.mean(area["hem"])
    assert np.mean(nucleus["all"]) > 1.1 * np.mean(nucleus["hem"])
    # The classes overlap: some normal cells are bigger than a typical blast, so no single cue is enough.
    overlap = np.mean(np.array(area["hem"]) > np.median(area["all"]))
    assert 0.01 < overlap < 0.4


def test_ensure_demo_builds_once(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate_demo

    def tiny(root, seed=0, **_):
        calls.append(root)
        return real(root, seed=seed, n_subjects=3, image_size=32, workers=1)

    monkeypatch.setattr(synthetic, "generate_demo", tiny)
    root = ensure_demo(tmp_path, seed=3)
    target = tmp_path / f"demo-v{DEMO_VERSION}-s3"
    assert root == target / "C-NMC_Leukemia"
    assert (target / "COMPLETE").exists()
    assert len(list((root / "training_data").rglob("*.png"))) > 50
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "temporary folder left behind"
    probe = next((root / "training_data").rglob("*.png"))
    mtime = probe.stat().st_mtime_ns

    assert ensure_demo(tmp_path, seed=3) == root
    assert len(calls) == 1
    assert probe.stat().st_mtime_ns == mtime


def test_ensure_demo_replaces_a_partial_folder(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate_demo

    def tiny(root, seed=0, **_):
        calls.append(root)
        return real(root, seed=seed, n_subjects=3, image_size=32, workers=1)

    monkeypatch.setattr(synthetic, "generate_demo", tiny)
    partial = tmp_path / f"demo-v{DEMO_VERSION}-s0" / "C-NMC_Leukemia" / "training_data"
    partial.mkdir(parents=True)
    (partial / "leftover.txt").write_text("interrupted")
    root = ensure_demo(tmp_path)
    assert len(calls) == 1
    assert not (root / "training_data" / "leftover.txt").exists()
    assert (root.parent / "COMPLETE").exists()
    assert any((root / "training_data").rglob("*.png"))
