"""Datasets: the C-NMC layout (real sample), class folders, zips, splits, the decode-once cache."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from leukviz.datasets import data
from leukviz.datasets.data import DataError, make_split, open_dataset


def test_cnmc_mini_index_counts(cnmc_mini):
    ds = open_dataset(cnmc_mini)
    info = data.inspect(ds)
    assert ds.kind == "cnmc" and info["classes"] == ["hem", "all"]
    assert info["per_class"] == {"all": 30, "hem": 27}
    assert info["per_fold"]["0"] == {"hem": 0, "all": 6}
    assert info["per_fold"]["2"] == {"hem": 3, "all": 0}
    assert info["per_subject"]["h3"] == {"class": "hem", "n": 2}  # the lower-case subject is kept
    assert set(info["per_subject"]) == {"1", "2", "3", "11", "16", "H10", "H2", "h3"}
    assert info["prelim"] == {"n": 10, "per_class": {"hem": 5, "all": 5}}
    assert info["final_unlabeled"] == 4


def test_prelim_labels_follow_the_csv(cnmc_mini):
    ds = open_dataset(cnmc_mini)
    prelim = ds.index[ds.index["set"] == "prelim"].set_index(ds.index[ds.index["set"] == "prelim"]["path"].map(
        lambda p: p.rsplit("/", 1)[-1]))
    assert prelim.loc["1.bmp", "label"] == 0 and prelim.loc["1.bmp", "subject"] == "H10"
    assert prelim.loc["2.bmp", "label"] == 1 and prelim.loc["2.bmp", "subject"] == "2"


@pytest.mark.parametrize("seed", range(5))
def test_subject_split_never_shares_a_subject(cnmc_mini, tiny_data, seed):
    for root in (cnmc_mini, tiny_data):
        ds = open_dataset(root)
        s = make_split(ds, "subject", 0.25, seed)
        tr, va = set(ds.index.loc[s.train, "subject"]), set(ds.index.loc[s.val, "subject"])
        assert tr and va and not (tr & va)
        assert set(ds.index.loc[s.val, "label"]) == {0, 1}, "both classes in validation"
        assert len(s.train) + len(s.val) == len(ds.train_rows) and not s.leaky


def test_image_split_is_labelled_leaky_and_folds_follow_the_folders(tiny_data):
    ds = open_dataset(tiny_data)
    s = make_split(ds, "image", 0.2, 0)
    assert s.leaky and "LEAKY" in s.description
    f = make_split(ds, "folds", val_fold=1)
    assert set(ds.index.loc[f.val, "fold"]) == {1} and 1 not in set(ds.index.loc[f.train, "fold"])


def test_subject_split_impossible_without_subject_names(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 40, 10, 10)).save(tmp_path / cls / f"img{i}.png")
    ds = open_dataset(tmp_path)
    assert ds.kind == "folder" and ds.classes == ("a", "b")
    with pytest.raises(DataError, match="subject split impossible.*split 'image'"):
        make_split(ds, "subject")
    assert make_split(ds, "image").leaky


def test_bad_dataset_paths_have_clear_messages(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        open_dataset(tmp_path / "f.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no sub-folders"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "one" / "all").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "all" / "x.png")
    with pytest.raises(DataError, match="one class only"):
        open_dataset(tmp_path / "one")


def test_zip_of_a_cnmc_folder_opens_like_the_folder(cnmc_mini, tmp_path):
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(cnmc_mini.rglob("*")):
            if f.is_file():
                zf.write(f, "top/C-NMC_Leukemia/" + str(f.relative_to(cnmc_mini)))
    ds = open_dataset(z, tmp_path / "cache")
    assert ds.kind == "cnmc" and len(ds.train_rows) == 57


def test_zip_slip_is_refused(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(DataError, match="unsafe entry"):
        open_dataset(z, tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists()


def test_cache_decodes_once_and_matches_load_image(tiny_data, tmp_path):
    ds = open_dataset(tiny_data)
    imgs, ok = data.image_cache(ds, 32, True, tmp_path, workers=2)
    assert imgs.shape == (len(ds.index), 32, 32, 3) and ok.all()
    i = len(ds.index) // 2
    np.testing.assert_array_equal(imgs[i], data.load_image(ds.index["path"][i], 32, True))
    again, _ = data.image_cache(ds, 32, True, tmp_path)
    assert again.filename == imgs.filename  # reused, not rebuilt
    other, _ = data.image_cache(ds, 48, True, tmp_path)
    assert other.shape[1] == 48


def test_changed_dataset_changes_fingerprint(tiny_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    a = open_dataset(copy).fingerprint
    victim = next((copy / "training_data").rglob("*.png"))
    victim.unlink()
    assert open_dataset(copy).fingerprint != a


def test_fingerprint_is_the_content_not_the_file_times(tiny_data, tmp_path):
    """A dataset provisioned anew (same bytes, new mtimes) keeps its runs; other bytes at the same size do not."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    a = open_dataset(copy).fingerprint
    victim = next((copy / "training_data").rglob("*.png"))
    os.utime(victim, ns=(1, 1))
    assert open_dataset(copy).fingerprint == a
    raw = bytearray(victim.read_bytes())
    raw[-5] ^= 0xFF  # same size, another byte
    victim.write_bytes(bytes(raw))
    os.utime(victim, ns=(1, 1))
    assert open_dataset(copy).fingerprint != a


def test_unreadable_files_are_skipped_and_counted(tiny_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    bad = next((copy / "training_data").rglob("*_all.png"))
    bad.write_bytes(b"not an image")
    (bad.parent / "notes.txt").write_text("hello")
    ds = open_dataset(copy)
    imgs, ok = data.image_cache(ds, 32, True, tmp_path / "c")
    assert (~ok).sum() == 1 and any("notes.txt" in p for p, _ in ds.skipped)
    assert any("not a readable image" in r for _, r in ds.skipped)


def test_crop_to_cell_centres_the_cell_in_a_fixed_window():
    a = np.zeros((100, 100, 3), np.uint8)
    a[10:30, 60:90] = 200
    c = data.crop_to_cell(a)
    assert c.shape == (75, 75, 3)  # CELL_WINDOW of the image's side, whatever the cell's size
    assert c[c.shape[0] // 2, c.shape[1] // 2].max() == 200
    legacy = data.crop_to_cell(a, window=None)  # version 1: a square just around the cell
    assert legacy.shape[0] == legacy.shape[1] and 30 <= legacy.shape[0] <= 34


def _disc(radius: int, side: int = 450) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    a = np.zeros((side, side, 3), np.uint8)
    a[(yy - side // 2 + 17) ** 2 + (xx - side // 2 - 9) ** 2 <= radius ** 2] = (180, 120, 200)
    return a


@pytest.mark.parametrize("crop", [True, False])
def test_preprocessing_keeps_the_cells_scale(tmp_path, crop):
    """A small and a large cell stay different in size after preprocessing (cell size is a class cue)."""
    areas = {}
    for r in (60, 110):
        Image.fromarray(_disc(r)).save(tmp_path / f"r{r}.png")
        x = data.load_image(tmp_path / f"r{r}.png", 64, crop=crop)
        areas[r] = int((x.max(axis=2) > 10).sum())
    ratio = areas[110] / areas[60]
    assert ratio == pytest.approx((110 / 60) ** 2, rel=0.1)  # per-cell zoom would make it ~1
    window = data.CELL_WINDOW if crop else 1.0
    assert areas[110] == pytest.approx(np.pi * (110 * 64 / (450 * window)) ** 2, rel=0.1)


def test_image_modes_all_become_rgb(tmp_path):
    a16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(a16).save(tmp_path / "g16.tif")
    Image.new("RGBA", (30, 40), (255, 0, 0, 128)).save(tmp_path / "rgba.png")
    Image.new("P", (30, 30)).save(tmp_path / "p.gif")
    Image.new("CMYK", (30, 30), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    for f in tmp_path.iterdir():
        out = data.load_image(f, 16, crop=False)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8, f.name
    assert data.load_image(tmp_path / "g16.tif", 16, False).max() > 200  # 16-bit rescaled, not clipped to black


def test_save_upload_names_by_content(tmp_path):
    a = data.save_upload(b"zip-bytes", tmp_path)
    assert a.read_bytes() == b"zip-bytes" and a.suffix == ".zip"
    assert data.save_upload(b"zip-bytes", tmp_path) == a
    assert data.save_upload(b"other", tmp_path) != a
    assert not list(tmp_path.glob("*.part"))


# ---------------------------------------------------------------------------------------------- train/val/test trees

def _tree(root, sets: dict[str, dict[str, list[str]]]):
    """root/<set folder>/<class>/<file>: tiny PNGs, each its own colour (no two files alike)."""
    n = 0
    for folder, by_class in sets.items():
        for cls, names in by_class.items():
            (root / folder / cls).mkdir(parents=True, exist_ok=True)
            for name in names:
                n += 1
                Image.new("RGB", (16, 16), (n % 250, n // 250 * 7 % 250, 90)).save(root / folder / cls / name)
    return root


def _cells(cls: str, subjects: tuple[str, ...], n: int = 2) -> list[str]:
    return [f"UID_{s}_{i}_1_{cls}.png" for s in subjects for i in range(n)]


TRAIN = {"all": _cells("all", ("1", "2", "3")), "hem": _cells("hem", ("H1", "H2", "H3"))}
VAL = {"all": _cells("all", ("4",)), "hem": _cells("hem", ("H4",))}
TEST = {"all": _cells("all", ("5",), 3), "hem": _cells("hem", ("H5",), 1)}


@pytest.mark.parametrize("names", [("train", "val", "test"), ("train", "valid", None), ("Train", "Validation", "TEST"),
                                   ("train", "VAL", None), ("train", None, "test")])
def test_train_val_test_trees_are_recognised_with_their_sets(tmp_path, names):
    tr, va, te = names
    _tree(tmp_path, {tr: TRAIN, **({va: VAL} if va else {}), **({te: TEST} if te else {})})
    ds = open_dataset(tmp_path, tmp_path / "cache")
    assert ds.kind == "splits" and ds.classes == ("all", "hem")
    counts = ds.index.groupby(["set", "label"]).size().to_dict()
    expected = {("train", 0): 6, ("train", 1): 6}
    expected.update({("val", 0): 2, ("val", 1): 2} if va else {})
    expected.update({("test", 0): 3, ("test", 1): 1} if te else {})
    assert counts == expected
    assert ds.has_val == bool(va) and len(ds.test_rows) == (4 if te else 0)
    assert ds.folders == {"train": tr, **({"val": va} if va else {}), **({"test": te} if te else {})}
    assert data.default_split(ds) == ("given" if va else "subject")
    info = data.inspect(ds)
    assert info["per_set"]["train"] == {"all": 6, "hem": 6} and info["default_split"] == data.default_split(ds)
    assert info["test"]["n"] == (4 if te else 0) and info["prelim"]["n"] == 0
    assert set(ds.index.loc[ds.index["set"] == "train", "subject"]) == {"1", "2", "3", "H1", "H2", "H3"}


def test_given_split_is_exactly_the_validation_folder(tmp_path):
    _tree(tmp_path, {"train": TRAIN, "valid": VAL, "test": TEST})
    ds = open_dataset(tmp_path, tmp_path / "cache")
    s = make_split(ds, "given")
    paths = lambda rows: {os.path.relpath(p, tmp_path) for p in ds.index.loc[rows, "path"]}  # noqa: E731
    assert paths(s.val) == {f"valid/{c}/{n}" for c, names in VAL.items() for n in names}
    assert paths(s.train) == {f"train/{c}/{n}" for c, names in TRAIN.items() for n in names}
    assert s.method == "given" and not s.leaky and not s.warnings and "valid/" in s.description
    assert "warnings" not in s.summary()
    # the other splits pool train/ and the validation folder, and never touch test/
    sub = make_split(ds, "subject", 0.25, 0)
    assert set(sub.train) | set(sub.val) == set(ds.train_rows.index) and len(ds.train_rows) == 16
    assert not (set(sub.train) | set(sub.val)) & set(ds.test_rows.index)


def test_given_split_warns_when_a_subject_is_on_both_sides(tmp_path):
    _tree(tmp_path, {"train": TRAIN, "val": {"all": _cells("all", ("3", "4")), "hem": _cells("hem", ("H4",))}})
    s = make_split(open_dataset(tmp_path, tmp_path / "cache"), "given")
    assert s.leaky and len(s.warnings) == 1 and "LEAKY: 1 subject (3) on both sides" in s.warnings[0]
    assert "LEAKY" in s.description and s.summary()["warnings"] == s.warnings


def test_given_split_without_a_validation_folder_is_a_clear_error(tmp_path, cnmc_mini, tiny_data):
    _tree(tmp_path, {"train": TRAIN, "test": TEST})
    for ds in (open_dataset(tmp_path, tmp_path / "cache"), open_dataset(cnmc_mini), open_dataset(tiny_data)):
        with pytest.raises(DataError, match="split 'given' validates on the dataset's own validation folder.*has none"):
            make_split(ds, "given")


def test_class_folders_must_match_across_sets(tmp_path):
    _tree(tmp_path / "extra", {"train": TRAIN, "val": {**VAL, "blast": ["b.png"]}})
    with pytest.raises(DataError, match="val/ has class folders that train/ lacks: blast"):
        open_dataset(tmp_path / "extra", tmp_path / "cache")
    _tree(tmp_path / "noval", {"train": TRAIN, "val": {"all": VAL["all"]}, "test": {"all": TEST["all"]}})
    ds = open_dataset(tmp_path / "noval", tmp_path / "cache")  # opens: the other splits still work
    assert ds.warnings == ["the test folder test/ has no images of class hem: its score says nothing about that class"]
    assert data.inspect(ds)["warnings"][0] == ds.warnings[0]
    with pytest.raises(DataError, match="validation folder val/ has no images of class hem"):
        make_split(ds, "given")
    assert len(make_split(ds, "subject").val) > 0
    _tree(tmp_path / "two", {"train": TRAIN, "val": VAL, "valid": VAL})
    with pytest.raises(DataError, match="2 val folders .*keep one"):
        open_dataset(tmp_path / "two", tmp_path / "cache")


def test_zip_of_a_train_val_test_tree_opens_like_the_folder(tmp_path):
    tree = _tree(tmp_path / "tree" / "cells", {"train": TRAIN, "validation": VAL, "test": TEST})
    z = tmp_path / "cells.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(tree.rglob("*.png")):
            zf.write(f, "cells/" + str(f.relative_to(tree)))
    ds, folder = open_dataset(z, tmp_path / "cache"), open_dataset(tree, tmp_path / "cache")
    assert ds.kind == "splits" and ds.fingerprint == folder.fingerprint
    assert ds.index["set"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}


def test_existing_layouts_keep_their_sets_and_default_split(tmp_path, cnmc_mini, tiny_data):
    mini = open_dataset(cnmc_mini)
    assert mini.kind == "cnmc" and not mini.has_val and data.default_split(mini) == "subject"
    assert len(mini.test_rows) == 10 and set(mini.test_rows["set"]) == {"prelim"}  # final (unlabelled) is not
    assert len(mini.train_rows) == 57 and set(mini.index["set"]) == {"train", "prelim", "final"}
    tiny = open_dataset(tiny_data)
    assert len(tiny.test_rows) == data.inspect(tiny)["prelim"]["n"] > 0 and data.default_split(tiny) == "subject"
    # plain class folders, one named like a set folder: still one class per folder, all training
    _tree(tmp_path / "plain", {"all": {"x": ["a.png", "b.png"]}, "test": {"y": ["c.png"]}})
    plain = open_dataset(tmp_path / "plain", tmp_path / "cache")
    assert plain.kind == "folder" and plain.classes == ("all", "test") and set(plain.index["set"]) == {"train"}
    assert data.default_split(plain) == "image" and len(plain.test_rows) == 0 and not plain.warnings


def test_only_the_splits_a_dataset_can_make_are_offered_and_a_one_class_side_is_named(tmp_path, cnmc_mini):
    ds = data.open_dataset(str(cnmc_mini), tmp_path)
    options = data.split_options(ds)
    assert options["given"] is not None and "no validation folder" in options["given"]
    assert options["subject"] is None and options["folds"] is None and options["image"] is None
    problems = data.split_problems(ds, data.make_split(ds, "folds"))
    assert any("validation set has no 'hem' cells" in p for p in problems)


def test_a_folder_without_folds_is_not_offered_official_folds(tmp_path):
    for cls in ("all", "hem"):
        for s in range(2):
            (tmp_path / "d" / cls).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (s * 40, i * 60, 90)).save(
                    tmp_path / "d" / cls / f"UID_{'H' if cls == 'hem' else ''}{s + 1}_{i}_1_{cls}.bmp")
    ds = data.open_dataset(str(tmp_path / "d"), tmp_path / "cache")
    options = data.split_options(ds)
    assert "no official folds" in options["folds"] and options["subject"] is None


def test_an_empty_or_loose_validation_folder_and_a_one_class_test_folder_each_get_one_message(tmp_path, capsys):
    """val/ with no class folder (empty, or files lying loose in it) is named as such with what to do, never as
    missing; a test/ without a class is warned about on inspect and when a run starts; skipped files say why."""
    from leukviz import cli

    empty = _tree(tmp_path / "empty", {"train": TRAIN})
    (empty / "val").mkdir()
    ds = open_dataset(empty, tmp_path / "cache")
    assert any(w.startswith("the validation folder val/ holds no images in class folders: put them in one "
                            "sub-folder per class (val/all/, val/hem/)") for w in ds.warnings)
    with pytest.raises(DataError, match=r"split 'given' validates on val/, and it holds no images in class folders"):
        data.make_split(ds, "given", 0.2, 0)
    loose = _tree(tmp_path / "loose", {"train": TRAIN})
    for i in range(3):
        Image.new("RGB", (16, 16), (200, i, 9)).save((loose / "val").mkdir(exist_ok=True) or loose / "val" / f"v{i}.png")
    assert cli.main(["data", "inspect", str(loose)]) == 0
    out = capsys.readouterr().out
    assert "val/ holds no images in class folders (3 file(s) lie directly in it, skipped)" in out
    assert "skipped 3 files: 3 directly in val/, not in a class folder (v0.png, v1.png, v2.png)" in out
    one_class = _tree(tmp_path / "oneclass", {"train": TRAIN, "test": {"all": TEST["all"]}})
    assert cli.main(["data", "inspect", str(one_class)]) == 0
    out = capsys.readouterr().out
    assert "warning: the test folder test/ has no images of class hem" in out
    assert "held-out test set (labelled): 3 (all 3, hem 0)" in out
    from leukviz.models.config import resolve
    from leukviz.training import engine

    logged = []
    engine.prepare_data(resolve("googlenet", "quick", "none", str(one_class), image_size=16), tmp_path / "cache",
                        logged.append)
    assert "warning: the test folder test/ has no images of class hem: its score says nothing about that class" in logged
