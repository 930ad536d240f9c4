"""Inputs that are not what they claim (issue 15, sections 2-4): checks that run once the data is known, copies
across a split, and the messages and paths users see. Grouped by cause; tiny images made in tmp_path."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukviz.cli import main
from leukviz.core import paths
from leukviz.datasets import cachedir, cnmc, data, imagecache
from leukviz.models import config, devices
from leukviz.serving import inference
from leukviz.training import engine
from tests.helpers import make_run, tiny_model


def cell_png(path: Path, seed: int, size: int = 32) -> Path:
    """A small bright blob on black, different bytes for every seed."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size, 3), np.uint8)
    r = size // 4 + seed % 3
    a[size // 2 - r:size // 2 + r, size // 2 - r:size // 2 + r] = rng.integers(60, 255, (2 * r, 2 * r, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def class_tree(root: Path, per_subject: int = 3, subjects: dict | None = None, folders: dict | None = None) -> Path:
    """all/ and hem/ (or the names in folders) with C-NMC file names, three subjects per class."""
    subjects = subjects or {"all": ("1", "2", "3"), "hem": ("H1", "H2", "H3")}
    folders = folders or {"all": "all", "hem": "hem"}
    k = 0
    for cls, subs in subjects.items():
        for s in subs:
            for i in range(per_subject):
                k += 1
                cell_png(root / folders[cls] / cnmc.cell_name(s, i, 1, cls, ".png"), k)
    return root


def cfg_for(root: Path, split: str = "image", **kw) -> config.RunConfig:
    return config.resolve("googlenet", "quick", "none", str(root), split=split, image_size=32, epochs=1, **kw)


# ------------------------------------------------------------------ 3. checks that run before the data is known

@pytest.mark.parametrize("junk", [b"", b"just some text, not a bitmap\n"], ids=["zero-byte", "text-named-bmp"])
def test_a_class_of_unreadable_files_fails_after_decoding(tmp_path, junk):
    root = class_tree(tmp_path / "ds", subjects={"all": ("1", "2", "3")})
    for i in range(6):
        (root / "hem" / cnmc.cell_name(f"H{i % 3}", i, 1, "hem")).parent.mkdir(exist_ok=True)
        (root / "hem" / cnmc.cell_name(f"H{i % 3}", i, 1, "hem")).write_bytes(junk)
    data.open_dataset(root, tmp_path / "cache")  # counted before decoding: two classes
    with pytest.raises(data.DataError, match="class 'hem' has no usable training images.*not a readable image"):
        engine.prepare_data(cfg_for(root), tmp_path / "cache")


def test_a_class_folder_linked_to_another_is_refused(tmp_path):
    root = class_tree(tmp_path / "ds", subjects={"all": ("1", "2", "3")})
    (root / "hem").symlink_to(root / "all", target_is_directory=True)
    with pytest.raises(data.DataError, match="all/ and hem/ .* are the same folder"):
        data.open_dataset(root, tmp_path / "cache")


def test_a_class_left_without_images_by_cross_class_copies_fails(tmp_path):
    root = class_tree(tmp_path / "ds", subjects={"all": ("1", "2", "3")})
    (root / "hem").mkdir()
    for f in sorted((root / "all").iterdir()):  # hem/ holds copies of all/'s files only
        shutil.copy(f, root / "hem" / f.name.replace("UID_", "UID_H").replace("_all.", "_hem."))
    with pytest.raises(data.DataError, match="has no usable training images.*same image in two classes"):
        engine.prepare_data(cfg_for(root), tmp_path / "cache")


@pytest.mark.parametrize("n,batch", [(9, 8), (17, 8), (5, 4), (8, 8)])
def test_a_last_batch_of_one_image_is_merged(n, batch):
    batches = engine.epoch_batches(n, batch, seed=0, epoch=1, d=engine.Dist(0, 1))
    assert min(len(b) for b in batches) >= 2
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))


@pytest.mark.parametrize("bad", [np.inf, np.nan, -np.inf])
def test_a_float_tiff_with_non_finite_pixels_is_refused(tmp_path, bad):
    a = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    a[3, 4] = bad
    path = tmp_path / "cell.tif"
    Image.fromarray(a, mode="F").save(path)
    with pytest.raises(data.ImageError, match="cell.tif: 1 pixel .* not a number"):
        data.load_image(path, 32)
    a[3, 4] = 0.5  # the same image without it decodes, and is not black
    Image.fromarray(a, mode="F").save(path)
    assert data.load_image(path, 32, crop=False).max() > 200


@pytest.fixture()
def cnmc_copy(tiny_data, tmp_path) -> Path:
    dest = tmp_path / "cnmc"
    shutil.copytree(tiny_data, dest, symlinks=True)
    return dest


@pytest.mark.parametrize("content", ["", ",".join(cnmc.LABEL_COLUMNS) + "\n"], ids=["empty", "header-only"])
def test_evaluate_with_an_empty_labels_csv_refuses_instead_of_scoring_training_images(cnmc_copy, tmp_path, content):
    (cnmc_copy / cnmc.PRELIM_LABELS).write_text(content)
    lm = tiny_model(tmp_path)
    with pytest.raises(data.DataError, match="labels CSV .* no labelled rows"):
        inference.evaluate_dataset(lm, cnmc_copy, tmp_path / "cache")


def test_evaluate_matches_classes_by_name_not_order(tmp_path):
    root = class_tree(tmp_path / "ds", per_subject=2, subjects={"all": ("1", "2", "3"), "hem": ("H1", "H2")})
    assert data.open_dataset(root, tmp_path / "cache").classes == ("all", "hem")  # the model's are hem, all
    lm = tiny_model(tmp_path)
    res = inference.evaluate_dataset(lm, root, tmp_path / "cache")
    assert res["classes"] == ["hem", "all"] and res["n"] == 10
    assert [sum(row) for row in res["confusion"]] == [4, 6]  # rows true, in the model's order: 4 hem, 6 all


def test_evaluate_refuses_classes_that_differ_by_name(tmp_path):
    root = class_tree(tmp_path / "ds", per_subject=2, folders={"all": "cats", "hem": "dogs"})
    with pytest.raises(data.DataError, match="classes .* differ"):
        inference.evaluate_dataset(tiny_model(tmp_path), root, tmp_path / "cache")


@pytest.mark.parametrize("flag,value", [("--seed", "-1"), ("--seed", str(2**64)), ("--seed", "1.5"),
                                        ("--split-seed", "-3"), ("--device", "bogus"), ("--device", "meta"),
                                        ("--device", "cpu:1")])
def test_bad_flags_are_refused_before_a_run_folder_is_made(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["train", "--backbone", "googlenet", "--weights", "none", "--runs-dir", str(tmp_path / "runs"),
              flag, value])
    assert e.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_pick_device_refuses_devices_that_cannot_train():
    with pytest.raises(ValueError, match="cannot train"):
        devices.pick_device("meta")
    assert devices.pick_device("cpu").type == "cpu"


# ------------------------------------------------------------------ 2. the same file on both sides of a split

def test_identical_files_in_two_official_folds_make_the_split_leaky(cnmc_copy, tmp_path):
    src = sorted((cnmc_copy / "training_data" / "fold_0" / "all").iterdir())[0]
    shutil.copy(src, cnmc_copy / "training_data" / "fold_1" / "all" / src.name)
    ds = data.open_dataset(cnmc_copy, tmp_path / "cache")
    sp = data.make_split(ds, "folds", val_fold=0)
    assert sp.leaky and "LEAKY: 1 validation image is the same file as a training image" in sp.warnings[0]
    assert f"fold_0/all/{src.name} = training_data/fold_1/all/{src.name}" in sp.warnings[0]
    assert sp.summary()["leaky"] is True and "LEAKY" in sp.description
    clean = data.make_split(data.open_dataset(cnmc_copy, tmp_path / "cache"), "folds", val_fold=2)
    assert not clean.leaky and not clean.warnings  # the copies are both in training there


def test_identical_files_in_train_and_val_or_test_are_flagged(tmp_path):
    root = tmp_path / "tree"
    class_tree(root / "train")
    class_tree(root / "val", per_subject=1, subjects={"all": ("7",), "hem": ("H7",)})
    copied = sorted((root / "train" / "all").iterdir())[0]
    shutil.copy(copied, root / "val" / "all" / copied.name)
    (root / "test" / "hem").mkdir(parents=True)
    shutil.copy(sorted((root / "train" / "hem").iterdir())[0], root / "test" / "hem" / "t1.png")
    cell_png(root / "test" / "all" / "t2.png", 99)
    ds = data.open_dataset(root, tmp_path / "cache")
    sp = data.make_split(ds, "given")
    assert sp.leaky and any(copied.name in w for w in sp.warnings)
    assert any(w.startswith("LEAKY test set: 1 held-out test image") and "t1.png" in w for w in ds.warnings)
    assert any("LEAKY test set" in w for w in data.inspect(ds)["warnings"])


# ------------------------------------------------------------------ 4. messages and paths users see

def test_a_cache_folder_that_cannot_be_written_falls_back_and_says_so_once(tmp_path, capsys):
    root = class_tree(tmp_path / "ds", per_subject=1)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    ds = data.open_dataset(root, blocked / "cache")
    images, ok = data.image_cache(ds, 32, True, blocked / "cache")
    assert ok.all() and images.shape == (6, 32, 32, 3)
    data.image_cache(data.open_dataset(root, blocked / "cache"), 32, True, blocked / "cache")
    assert capsys.readouterr().err.count("note: cannot write the cache folder") == 1


def test_a_read_only_cache_is_still_read(tmp_path, monkeypatch):
    root = class_tree(tmp_path / "ds", per_subject=1)
    ds = data.open_dataset(root, tmp_path / "cache")
    first, _ = data.image_cache(ds, 32, True, tmp_path / "cache")
    monkeypatch.setattr(cachedir.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(OSError(30, "Read-only")))
    again, _ = data.image_cache(data.open_dataset(root, tmp_path / "cache"), 32, True, tmp_path / "cache")
    assert np.array_equal(first, again)  # a hit needs no write


def test_data_inspect_demo_and_evaluate_with_an_unwritable_home(tmp_path, monkeypatch, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    root = class_tree(tmp_path / "ds", per_subject=1)
    monkeypatch.setenv("LEUKVIZ_CACHE", str(blocked / "cache"))
    assert main(["data", "inspect", str(root), "--json"]) == 0
    lm = tiny_model(tmp_path)
    lm.meta = {**lm.meta, "classes": ["all", "hem"]}  # the folder's order
    assert inference.evaluate_dataset(lm, root, None)["n"] == 6
    assert "note: cannot write the cache folder" in capsys.readouterr().err


def test_csv_into_a_missing_folder_is_made_before_the_work(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "p.csv"
    code = main(["predict", "--run", "nope", "--csv", str(out), str(tmp_path / "missing.png"),
                 "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and out.parent.is_dir()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    code = main(["predict", "--run", "nope", "--csv", str(blocked / "p.csv"), str(tmp_path / "missing.png")])
    err = capsys.readouterr().err
    assert code == 2 and "error: --csv" in err and "cannot make its folder" in err
    assert main(["predict", "--run", "nope", "--csv", str(tmp_path), "x.png"]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_upper_case_class_folders_are_recognised(tmp_path, tiny_data):
    root = class_tree(tmp_path / "ds", folders={"all": "ALL", "hem": "HEM"})
    ds = data.open_dataset(root, tmp_path / "cache")
    assert ds.classes == ("all", "hem") and ds.classes[ds.positive] == "all"
    cn = tmp_path / "cnmc"
    shutil.copytree(tiny_data, cn, symlinks=True)
    for fold in (cn / "training_data").iterdir():
        for cls, new in (("all", "ALL"), ("hem", "Hem")):
            if (fold / cls).is_dir():
                (fold / cls).rename(fold / new)
    ds = data.open_dataset(cn, tmp_path / "cache")
    assert ds.kind == "cnmc" and set(ds.train_rows["label"]) == {0, 1}


def test_one_stray_file_name_is_its_own_subject_and_named(tmp_path):
    root = class_tree(tmp_path / "ds")
    cell_png(root / "all" / "scan 0001.png", 77)
    ds = data.open_dataset(root, tmp_path / "cache")
    assert any("scan 0001.png" in w and "subject of its own" in w for w in ds.warnings)
    sp = data.make_split(ds, "subject")
    assert len(sp.train) + len(sp.val) == 19 and data.default_split(ds) == "subject"


def test_subject_split_impossible_names_the_files(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        cell_png(root / "all" / f"a{i}.png", i)
        cell_png(root / "hem" / f"h{i}.png", 10 + i)
    with pytest.raises(data.DataError, match=r"a0\.png, a1\.png, a2\.png and 5 more"):
        data.make_split(data.open_dataset(root, tmp_path / "cache"), "subject")


@pytest.mark.parametrize("blob,msg", [(b"", "not a readable zip"), (b"PK\x03\x04 fake", "not a readable zip"),
                                      (None, "the zip holds no files")], ids=["zero-byte", "fake", "empty"])
def test_uploaded_zips_that_are_not_datasets_are_named_by_their_upload(tmp_path, blob, msg):
    if blob is None:
        buf = io.BytesIO()
        zipfile.ZipFile(buf, "w").close()
        blob = buf.getvalue()
    saved = data.save_upload(blob, paths.uploads())
    with pytest.raises(data.DataError) as e:
        data.open_dataset(saved)
    text = data.as_uploaded(str(e.value), saved, "my cells.zip")
    assert msg in text and "my cells.zip" in text
    assert saved.stem not in text and str(paths.home()) not in text


def test_stopping_during_the_image_cache_build_is_prompt(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    for i in range(150):
        cell_png(root / ("all" if i % 2 else "hem") / f"c{i}.png", i, size=16)
    ds = data.open_dataset(root, tmp_path / "cache")
    decoded = []
    real = imagecache.load_image
    monkeypatch.setattr(imagecache, "load_image", lambda *a, **k: (decoded.append(1), real(*a, **k))[1])

    def interrupt(done, n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data.image_cache(ds, 16, True, tmp_path / "cache", workers=1, progress=interrupt)
    assert len(decoded) < 60 and not list((tmp_path / "cache").rglob("*.npy"))
    decoded.clear()
    with pytest.raises(data.CacheInterrupted, match="stopped while building the image cache"):
        data.image_cache(ds, 16, True, tmp_path / "cache", workers=2, should_stop=lambda: True)
    assert len(decoded) < 10


def test_a_stop_during_the_cache_build_stops_the_run(tmp_path):
    root = class_tree(tmp_path / "ds")
    with pytest.raises(engine.Stopped, match="image cache"):
        engine.prepare_data(cfg_for(root), tmp_path / "cache", should_stop=lambda: True)


def test_predict_all_with_a_damaged_run_predicts_with_the_others(tmp_path, monkeypatch, capsys):
    runs_dir = tmp_path / "runs"
    good, bad = make_run(runs_dir, seed=0), make_run(runs_dir, seed=1)
    lm = tiny_model(tmp_path, name=good.run_id)

    def load(run_dir, *a, **k):
        if Path(run_dir).name == bad.run_id:
            raise ValueError("model.safetensors: truncated")
        return lm

    monkeypatch.setattr(inference, "load_model", load)
    img = cell_png(tmp_path / "x.png", 1)
    assert main(["predict", "--run", "all", str(img), "--runs-dir", str(runs_dir), "--json"]) == 0
    out = capsys.readouterr()
    preds = json.loads(out.out.strip().splitlines()[-1])["predictions"]
    assert [p["run_id"] for p in preds] == [good.run_id]
    assert f"run {bad.run_id} left out" in out.err and "truncated" in out.err
    assert main(["predict", "--run", bad.run_id, str(img), "--runs-dir", str(runs_dir)]) == 2
    assert "cannot be loaded" in capsys.readouterr().err


def test_evaluate_leaves_out_byte_copies_of_the_runs_own_images_and_names_them(tmp_path):
    """Copies of the run's training images in another folder, under other names, are not held out: they are
    named and left out of the score (found by content digest); a folder of nothing else is refused."""
    import json

    trained_on = class_tree(tmp_path / "train", per_subject=2)
    lm = tiny_model(tmp_path)
    (lm.run_dir / "config.json").write_text(json.dumps({"config": {"data": str(trained_on)}}))
    other = class_tree(tmp_path / "other", per_subject=2, subjects={"all": ("7", "8"), "hem": ("H7", "H8")})
    # new pixels: class_tree numbers its cells, so shift the other tree's so none equals a training cell
    for i, p in enumerate(sorted(other.rglob("*.png"))):
        cell_png(p, 100 + i)
    copies = sorted(trained_on.rglob("*.png"))[:3]
    for i, p in enumerate(copies):
        shutil.copy(p, other / p.parent.name / f"renamed{i}.png")
    res = inference.evaluate_dataset(lm, other, tmp_path / "cache")
    assert res["n"] == 8 and sorted(res["not_held_out"]) == sorted(f"{p.parent.name}/renamed{i}.png"
                                                                      for i, p in enumerate(copies))
    only_copies = tmp_path / "copies"
    for p in sorted(trained_on.rglob("*.png")):
        (only_copies / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, only_copies / p.parent.name / f"x{p.name}")
    with pytest.raises(data.DataError, match=r"every one of the 12 labelled images is a copy"):
        inference.evaluate_dataset(lm, only_copies, tmp_path / "cache")
    assert res["copies_unchecked"] == ""
    # the run's own dataset gone: scored, and said to be unchecked (the CLI prints it as a warning)
    shutil.rmtree(trained_on)
    res = inference.evaluate_dataset(lm, other, tmp_path / "cache")
    assert res["n"] == 11 and "the run's own dataset" in res["copies_unchecked"] and "cannot be opened" in res["copies_unchecked"]
