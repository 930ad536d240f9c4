"""Reliability and security: bad input, faults, concurrency, nothing lost (the table: docs/RELIABILITY.md)."""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import pickletools
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from leukviz.core import filenames
from leukviz.core.storage import read_jsonl
from leukviz.datasets import archives, cnmc, data
from leukviz.datasets.cnmc import parse_cnmc_name
from leukviz.datasets.data import DataError, ImageError, load_image, open_dataset
from leukviz.models.config import resolve
from leukviz.runstore import runs, trainer
from leukviz.serving import inference
from leukviz.training import checkpoints, engine

REPO = Path(__file__).resolve().parents[1]
WAIT = 240  # seconds: the bound on every wait for another process, so nothing can hang CI
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
_REAL_FSYNC = os.fsync
linux_only = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")


# ---------------------------------------------------------------------------------------------- helpers

def _png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels with almost no data: how a decompression bomb looks before decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _cell(seed: int = 0, size: int = 24) -> Image.Image:
    """A small 'cell on black' picture, different for every seed."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size, 3), np.uint8)
    a[4:-4, 4:-4] = rng.integers(40, 255, (size - 8, size - 8, 3), dtype=np.uint8)
    return Image.fromarray(a)


BMP = _encode(_cell(1, 64), "BMP")
PNG = _encode(_cell(2, 24), "PNG")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), c).convert("P") for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (24, 24), 1)
    img.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    return _encode(img, "PNG", transparency=0)


def _named(blob: bytes, name: str) -> io.BytesIO:
    """What Streamlit hands over for an upload: bytes with the client's file name."""
    buf = io.BytesIO(blob)
    buf.name = name
    return buf


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, blob in entries:
            zf.writestr(info, blob)
    return path


def _class_folder_zip_entries(prefix: str = "") -> list[tuple[str, bytes]]:
    return [(f"{prefix}{cls}/{cls}{i}.png", _encode(_cell(10 * k + i), "PNG"))
            for k, cls in enumerate(("all", "hem")) for i in range(3)]


def _no_extraction_left(cache: Path) -> bool:
    zips = cache / "zips"
    return not zips.exists() or not [p for p in zips.iterdir() if not p.name.endswith(".lock")]


def micro_cfg(data_dir: Path, **kw):
    """GoogLeNet from scratch at 32 px on the micro set: each epoch is a few batches of 8."""
    base = {"epochs": 2, "image_size": 32, "batch_size": 8, **kw}
    return resolve("googlenet", "quick", "none", str(data_dir), **base)


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT,
              proc: subprocess.Popen | None = None, poll: float = 0.05) -> None:
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None and not cond():
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def _check_continuous_history(run: runs.Run, epochs: int) -> list[dict]:
    """Every epoch recorded exactly once, batch steps strictly increasing, no event unreadable."""
    raw = (run.dir / "metrics.jsonl").read_text()
    assert all(json.loads(line) for line in raw.splitlines()), "every line of metrics.jsonl is whole"
    ev = run.events()
    assert [e["epoch"] for e in ev if e["type"] == "epoch"] == list(range(1, epochs + 1))
    steps = [(e["epoch"], e["step"]) for e in ev if e["type"] == "batch"]
    assert all(a < b for a, b in itertools.pairwise(steps)), "batch steps strictly increasing"
    assert {s[0] for s in steps} == set(range(1, epochs + 1))
    return ev


@pytest.fixture(scope="module")
def micro(tiny_data, tmp_path_factory) -> Path:
    """A C-NMC-layout copy of tiny_data, 8 cells per subject and 2 prelim cells: training takes seconds."""
    root = tmp_path_factory.mktemp("micro") / "C-NMC_Leukemia"
    by_subject: dict[str, int] = {}
    for f in sorted((tiny_data / "training_data").rglob("*.png")):
        subject = parse_cnmc_name(f.name)[0]
        if by_subject.get(subject, 0) < 8:
            by_subject[subject] = by_subject.get(subject, 0) + 1
            dest = root / f.relative_to(tiny_data)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    val = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    val.mkdir(parents=True)
    for n in (1, 2):
        name = f"{n}.png"
        shutil.copy(tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data" / name, val / name)
    (root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_text(
        "Patient_ID,new_names,labels\nUID_H9_1_1_hem.png,1.png,0\nUID_9_1_1_all.png,2.png,1\n")
    return root


@pytest.fixture(scope="module")
def finished_micro(micro, tmp_path_factory) -> runs.Run:
    run = runs.run_for(micro_cfg(micro, epochs=1), tmp_path_factory.mktemp("runs"))
    trainer.train(run, log=lambda s: None)
    assert run.state == "finished"
    return run


# ---------------------------------------------------------------------------------------------- bad images

def _thin_png() -> bytes:
    return _encode(Image.new("L", (30_000, 1_000), 90), "PNG")


BAD_IMAGES = {
    # id: (file name, bytes or a maker, None = decodes to a (size, size, 3) image, else the error's pattern)
    "zero-byte": ("empty.png", b"", "empty: 0 bytes"),
    "text-renamed-png": ("notes.png", b"hello, I am text\n" * 20, "not a readable image"),
    "truncated-bmp": ("half.bmp", BMP[: len(BMP) // 2], "not a readable image"),
    "bmp-header-only": ("head.bmp", BMP[:54], "not a readable image"),
    "truncated-png": ("half.png", PNG[: len(PNG) // 2], "not a readable image"),
    "html-name": ('<img src=x onerror="alert(1)">.png', b"junk", "not a readable image"),
    "bomb-png-50000px": ("bomb.png", _png_header(50_000, 50_000), "too large"),
    "bomb-bmp-60000px": ("bomb.bmp", BMP[:18] + struct.pack("<ii", 60_000, 60_000) + BMP[26:], "too large"),
    "bomb-png-7000px": ("big.png", _png_header(7_000, 7_000), "too large"),  # Pillow only warns here
    "animated-gif": ("anim.gif", _animated_gif, None),
    "palette-transparency": ("p.png", _palette_with_transparency, None),
    "gray-alpha-LA": ("la.png", lambda: _encode(Image.new("LA", (24, 20), (120, 200)), "PNG"), None),
    "16-bit-png": ("g16.png", lambda: _encode(Image.fromarray(np.full((20, 24), 40000, np.uint16)), "PNG"),
                   None),
    "1-bit": ("bw.bmp", lambda: _encode(Image.new("1", (24, 24), 1), "BMP"), None),
    "float-tiff": ("f.tif", lambda: _encode(Image.fromarray(np.linspace(0, 1, 576, dtype=np.float32)
                                                            .reshape(24, 24)), "TIFF"), None),
    "cmyk-tiff": ("c.tif", lambda: _encode(Image.new("CMYK", (24, 24), (0, 200, 0, 0)), "TIFF"), None),
    "thin-30000x1000": ("thin.png", _thin_png, None),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_input(case, tmp_path):
    """From a file on disk and from an upload: a (32, 32, 3) uint8 image or one clear ImageError."""
    name, blob, expected = BAD_IMAGES[case]
    blob = blob() if callable(blob) else blob
    safe_name = "x" + Path(name).suffix  # some test names are not valid file names on every system
    (tmp_path / safe_name).write_bytes(blob)
    for src in (tmp_path / safe_name, _named(blob, name)):
        if expected is None:
            a = load_image(src, 32, crop=False)
            assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        else:
            with pytest.raises(ImageError, match=expected) as err:
                load_image(src, 32)
            msg = str(err.value)
            assert "\n" not in msg and str(tmp_path) not in msg, "one line, no server path"
    assert sorted(p.name for p in tmp_path.iterdir()) == [safe_name], "decoding writes nothing"


def test_animated_gif_uses_the_first_frame():
    a = load_image(_named(_animated_gif(), "a.gif"), 16, crop=False)
    r, g, b = a[8, 8].astype(int)
    assert r > 150 and g < 60 and b < 60


@pytest.mark.parametrize("crop", [False, True])
def test_long_thin_image_decodes_in_bounded_memory(crop):
    """30000 x 1000 is under the pixel limit, but a square of its long side (padding, the crop) is 2.7 GB."""
    blob = _thin_png()
    tracemalloc.start()
    try:
        load_image(_named(blob, "thin.png"), 32, crop=crop)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 600e6, f"peak {peak / 1e6:.0f} MB"


def test_a_large_16_bit_image_is_rescaled_in_blocks_not_in_float64():
    """A 3000 x 3000 16-bit PNG: rescaled to 8 bits a block of rows at a time in float32 (it was the whole image
    in float64, 8 bytes a pixel, beside the other copies): under 8 bytes a pixel at the peak, decode included."""
    rng = np.random.default_rng(0)
    a = np.zeros((3000, 3000), np.uint16)
    a[1000:2000, 1000:2000] = rng.integers(1000, 60000, (1000, 1000), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    tracemalloc.start()
    try:
        full = data.decode_rgb(_named(buf.getvalue(), "big16.png"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert full.dtype == np.uint8 and full.shape == (3000, 3000, 3) and full.max() == 255
    assert peak < 8 * a.size, f"peak {peak / a.size:.1f} bytes a pixel"


@pytest.mark.parametrize("name", ["../../etc/passwd.png", "/abs/dir/evil.png", "..\\..\\win\\evil.png",
                                  "<script>alert(1)</script>.png", "a\nb.png"])
def test_upload_names_are_only_shown_never_followed(name, tmp_path, monkeypatch):
    """A path or HTML in an upload's name: the message names the bare file, and no file is opened by name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageError) as err:
        load_image(_named(b"not an image", name), 32)
    bare = Path(name.replace("\\", "/")).name
    assert str(err.value).startswith(f"{bare}: not a readable image") and "/" not in bare
    assert list(tmp_path.iterdir()) == []
    ok = load_image(_named(PNG, name), 32)
    assert ok.shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------- fuzzing

def _decodes_or_refuses(src) -> None:
    try:
        a = load_image(src, 32)
    except ImageError as e:
        assert str(e)
        return
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes_decode_or_image_error(blob):
    _decodes_or_refuses(_named(blob, "fuzz.png"))


SEEDS = {"png": PNG, "bmp": BMP, "gif": _animated_gif(), "jpeg": _encode(_cell(3), "JPEG")}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(kind=st.sampled_from(sorted(SEEDS)),
       flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
       cut=st.none() | st.integers(0, 1 << 20))
def test_fuzz_mutated_images_decode_or_image_error(kind, flips, cut):
    blob = bytearray(SEEDS[kind])
    for pos, value in flips:  # two in three in the first 96 bytes: headers hold the sizes, depths and offsets
        blob[pos % (len(blob) if pos % 3 == 0 else min(len(blob), 96))] = value
    if cut is not None:
        blob = blob[: cut % (len(blob) + 1)]
    _decodes_or_refuses(_named(bytes(blob), f"m.{kind}"))


@FUZZ
@given(st.text(max_size=80)
       | st.from_regex(r"UID_[A-Za-z0-9]{0,4}_[0-9]{0,12}_[0-9]{0,3}_(all|hem|ALL)\.[a-z]{0,4}\n?"))
def test_fuzz_cnmc_name_parsing_never_raises(name):
    parsed = parse_cnmc_name(name)
    if parsed is not None:
        subject, image, cell, cls = parsed
        assert isinstance(subject, str) and subject and isinstance(image, int) and isinstance(cell, int)
        assert cls in cnmc.CNMC_CLASSES and name.isascii() and "\n" not in name


@FUZZ
@given(subject=st.from_regex(r"[A-Za-z]{0,2}[0-9]{1,4}", fullmatch=True), image=st.integers(0, 10**9 - 1),
       cell=st.integers(0, 999), cls=st.sampled_from(cnmc.CNMC_CLASSES),
       ext=st.sampled_from(["bmp", "png", "BMP"]))
def test_fuzz_cnmc_names_round_trip(subject, image, cell, cls, ext):
    assert parse_cnmc_name(f"UID_{subject}_{image}_{cell}_{cls}.{ext}") == (subject, image, cell, cls)


@pytest.mark.parametrize("name", ["UID_1_2_3_all.bmp\n", "UID_1_" + "9" * 5000 + "_1_all.bmp",
                                  "UID_\u0663_1_1_all.bmp", "UID_1_2_3_all.bmp.txt", "", "UID__1_1_hem.bmp"],
                         ids=["trailing-newline", "5000-digit-number", "arabic-indic-digit",
                              "double-extension", "empty", "no-subject"])
def test_cnmc_name_edge_cases_are_not_cnmc(name):
    assert parse_cnmc_name(name) is None


# ---------------------------------------------------------------------------------------------- datasets

def _class_tree(root: Path, per_class: int = 4) -> Path:
    for k, cls in enumerate(("all", "hem")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _cell(10 * k + i).save(root / cls / f"{cls}{i}.png")
    return root


def test_junk_files_are_skipped_and_counted_also_when_the_cache_is_reused(tmp_path):
    root = _class_tree(tmp_path / "ds")
    (root / "all" / "empty.png").write_bytes(b"")
    (root / "all" / "notes.png").write_text("text renamed")
    (root / "hem" / "half.bmp").write_bytes(BMP[:100])
    (root / "hem" / "folder.bmp").mkdir()
    (root / "hem" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    for junk in (".DS_Store", "Thumbs.db", "readme.txt"):
        (root / "all" / junk).write_bytes(b"x")
    ds = open_dataset(root, tmp_path / "cache")
    imgs, ok = data.image_cache(ds, 32, True, tmp_path / "cache")
    assert len(ds.index) == 11 and int(ok.sum()) == 8
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert set(reasons) == {"empty.png", "notes.png", "half.bmp", "gone.png", ".DS_Store", "Thumbs.db",
                            "readme.txt"}
    assert "empty" in reasons["empty.png"] and "regular file" in reasons["gone.png"]
    again = open_dataset(root, tmp_path / "cache")
    imgs2, ok2 = data.image_cache(again, 32, True, tmp_path / "cache")
    assert imgs2.filename == imgs.filename and (ok2 == ok).all()
    assert {Path(p).name for p, _ in again.skipped} == set(reasons), "a reused cache reports what it skipped"


def test_broken_link_in_the_cnmc_layout_is_skipped_not_fatal(micro, tmp_path):
    copy = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(micro, copy)
    link = copy / "training_data" / "fold_0" / "all" / "UID_4_99_1_all.png"
    link.symlink_to(tmp_path / "moved-away.png")
    (copy / "training_data" / "fold_0" / "hem" / "UID_H2_99_1_hem.bmp").mkdir()
    ds = open_dataset(copy, tmp_path / "cache")
    assert len(ds.train_rows) == len(open_dataset(micro, tmp_path / "cache").train_rows)
    assert {Path(p).name: r for p, r in ds.skipped} == {"UID_4_99_1_all.png": "not a regular file",
                                                         "UID_H2_99_1_hem.bmp": "not a regular file"}


def test_same_image_in_two_classes_is_dropped_and_reported(tmp_path):
    root = _class_tree(tmp_path / "ds")
    shutil.copy(root / "all" / "all0.png", root / "hem" / "copy_of_all0.png")  # conflicting labels
    shutil.copy(root / "all" / "all1.png", root / "all" / "all1_again.png")  # same label: kept
    ds = open_dataset(root, tmp_path / "cache")
    _, ok = data.image_cache(ds, 32, True, tmp_path / "cache")
    names = ds.index["path"].map(lambda p: Path(p).name)
    dropped = set(names[~ok])
    assert dropped == {"all0.png", "copy_of_all0.png"}
    why = next(r for p, r in ds.skipped if Path(p).name == "all0.png")
    assert "same image in two classes" in why and "copy_of_all0.png (hem)" in why and "dropped" in why
    cfg = resolve("googlenet", "quick", "none", str(root), image_size=32, split="image")
    ds2, _, _, train_idx, val_idx = engine.prepare_data(cfg, tmp_path / "cache")
    used = set(ds2.index["path"].iloc[np.concatenate([train_idx, val_idx])].map(lambda p: Path(p).name))
    assert not used & dropped and {"all1.png", "all1_again.png"} <= used


def test_a_few_names_without_subjects_are_named_and_the_splits_still_work(micro, tmp_path):
    copy = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(micro, copy)
    for i, f in enumerate(sorted((copy / "training_data").rglob("*.png"))[::5]):
        f.rename(f.with_name(f"cell{i}.png"))
    ds = open_dataset(copy, tmp_path / "cache")
    # A minority of stray names no longer blocks the subject split (issue 15): each is a subject of its own,
    # and a warning names them; when most names carry no subject the split is refused, naming the files
    # (tests/test_inputs.py).
    assert any("cell0.png" in w and "subject of its own" in w for w in ds.warnings)
    assert len(data.make_split(ds, "subject").val) > 0
    assert len(data.make_split(ds, "folds", val_fold=0).val) > 0 and data.make_split(ds, "image").leaky


@pytest.mark.parametrize("case", ["cnmc-empty-training", "cnmc-one-class", "only-junk", "not-a-zip"])
def test_unusable_datasets_have_clear_messages(case, tmp_path):
    """Beyond test_data.py::test_bad_dataset_paths_have_clear_messages (missing, a file, empty, one class)."""
    root = tmp_path / "ds"
    if case == "cnmc-empty-training":
        (root / "training_data" / "fold_0").mkdir(parents=True)
        expected = "no training images"
    elif case == "cnmc-one-class":
        (root / "training_data" / "fold_0" / "all").mkdir(parents=True)
        _cell().save(root / "training_data" / "fold_0" / "all" / "UID_1_1_1_all.png")
        expected = "one class only"
    elif case == "only-junk":
        for cls in ("all", "hem"):
            (root / cls).mkdir(parents=True)
            (root / cls / "readme.txt").write_text("x")
        expected = "no training images"
    else:
        root = tmp_path / "data.zip"
        root.write_bytes(b"PK but not really a zip")
        expected = "not a readable zip"
    with pytest.raises(DataError, match=expected):
        open_dataset(root, tmp_path / "cache")


def test_labels_csv_rows_that_are_junk_or_paths_are_skipped(micro, tmp_path):
    copy = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(micro, copy)
    csv_path = copy / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    (tmp_path / "secret.png").write_bytes(PNG)
    csv_path.write_text("Patient_ID,new_names,labels\nUID_H9_1_1_hem.png,1.png,0\nx,../../../secret.png,1\n"
                        "y,2.png,maybe\nz,999.png,1\n")
    ds = open_dataset(copy, tmp_path / "cache")
    prelim = ds.index[ds.index["set"] == "prelim"]
    assert [Path(p).name for p in prelim["path"]] == ["1.png"]
    reasons = " | ".join(r for _, r in ds.skipped)
    assert "not a plain file name" in reasons and "missing" in reasons
    assert "'maybe' is not 0 (hem) or 1 (all)" in reasons
    csv_path.write_text("file,class\n1.png,0\n")
    with pytest.raises(DataError, match="lacks the columns new_names and labels"):
        open_dataset(copy, tmp_path / "cache2")


# ---------------------------------------------------------------------------------------------- zips

def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("all/link.png")
    info.external_attr = (0o120777 << 16)
    return info


ZIPS = {
    "absolute-path": (lambda: [("/tmp/evil.png", PNG)] + _class_folder_zip_entries(), "unsafe entry"),
    "dotdot": (lambda: _class_folder_zip_entries() + [("all/../../evil.png", PNG)], "unsafe entry"),
    "backslash-dotdot": (lambda: _class_folder_zip_entries() + [("..\\..\\evil.png", PNG)], "unsafe entry"),
    "drive-letter": (lambda: _class_folder_zip_entries() + [("C:/evil.png", PNG)], "unsafe entry"),
    "symlink": (lambda: _class_folder_zip_entries() + [(_symlink_entry(), "/etc/passwd")], "symbolic link"),
    "ratio-bomb": (lambda: _class_folder_zip_entries() + [("all/bomb.bmp", b"\0" * (24 << 20))], "zip bomb"),
    "nested-zip": (lambda: [("cells/cells.zip", _zip_bytes(_class_folder_zip_entries()))],
                   r"d.zip holds another zip \(cells.zip\) and no images"),
    "duplicate-entry": (lambda: _class_folder_zip_entries() + [("all/all0.png", PNG)],
                        r"d.zip: the entry 'all/all0.png' appears twice"),
}


def _zip_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, blob in entries:
            zf.writestr(name, blob)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(ZIPS))
def test_unsafe_zips_are_refused_and_nothing_is_extracted(case, tmp_path):
    """Beyond tests/test_data.py::test_zip_slip_is_refused (a '../../' entry)."""
    make, expected = ZIPS[case]
    z = _zip(tmp_path / "d.zip", make())
    with pytest.raises(DataError, match=expected):
        open_dataset(z, tmp_path / "cache")
    assert _no_extraction_left(tmp_path / "cache")
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_zip_total_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_ZIP_BYTES", 2000)
    z = _zip(tmp_path / "d.zip", _class_folder_zip_entries())
    with pytest.raises(DataError, match="expands to over"):
        open_dataset(z, tmp_path / "cache")
    assert _no_extraction_left(tmp_path / "cache")


def test_zip_larger_than_the_free_disk_is_refused_before_writing(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    z = _zip(tmp_path / "d.zip", _class_folder_zip_entries())
    with pytest.raises(DataError, match="only 0.0 MB is free"):
        open_dataset(z, tmp_path / "cache")
    assert _no_extraction_left(tmp_path / "cache")


def test_zip_entry_whose_size_lies_is_refused(tmp_path):
    """A header may declare a small size for a big entry; zipfile stops there and the CRC check fails."""
    entries = _class_folder_zip_entries()
    entries.append(("all/liar.bmp", BMP))
    blob = bytearray(_zip(tmp_path / "d.zip", entries).read_bytes())
    local = blob.rindex(b"PK\x03\x04")
    central = blob.rindex(b"PK\x01\x02")
    blob[local + 22:local + 26] = struct.pack("<I", 100)  # local header: uncompressed size
    blob[central + 24:central + 28] = struct.pack("<I", 100)  # central directory: uncompressed size
    (tmp_path / "d.zip").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="cannot extract 'all/liar.bmp'"):
        open_dataset(tmp_path / "d.zip", tmp_path / "cache")
    assert _no_extraction_left(tmp_path / "cache")


def test_zip_with_a_nested_top_folder_and_mac_metadata_opens(tmp_path):
    entries = _class_folder_zip_entries("export/") + [("__MACOSX/export/._all0.png", b"\0\5\26\7")]
    ds = open_dataset(_zip(tmp_path / "d.zip", entries), tmp_path / "cache")
    assert ds.kind == "folder" and ds.classes == ("all", "hem") and len(ds.train_rows) == 6
    assert ds.root.name == "export"


def test_one_zip_opened_by_several_processes_at_once_is_extracted_once(tmp_path):
    """The app and a trainer may open the same uploaded zip together: neither sees a half-made folder."""
    z = _zip(tmp_path / "d.zip", _class_folder_zip_entries("top/"))
    results: list = []

    def open_it() -> None:
        try:
            results.append(open_dataset(z, tmp_path / "cache").fingerprint)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            results.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(results) == 4 and len(set(results)) == 1 and isinstance(results[0], str), results


# ---------------------------------------------------------------------------------------------- cache faults

def test_full_disk_while_building_the_image_cache_is_a_clear_error(micro, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    ds = open_dataset(micro, tmp_path / "cache")
    with pytest.raises(DataError, match="not enough disk space for the image cache"):
        data.image_cache(ds, 32, True, tmp_path / "cache")
    assert list((tmp_path / "cache" / "images").iterdir()) == [], "no partial cache file is left"


def test_a_damaged_image_cache_is_rebuilt_not_fatal(micro, tmp_path):
    ds = open_dataset(micro, tmp_path / "cache")
    imgs, ok = data.image_cache(ds, 32, True, tmp_path / "cache")
    expected = np.array(imgs)
    ok_file = next((tmp_path / "cache" / "images").glob("*.ok.npy"))
    ok_file.write_bytes(ok_file.read_bytes()[:20])  # a crash or a full disk cut it short
    again, ok2 = data.image_cache(open_dataset(micro, tmp_path / "cache"), 32, True, tmp_path / "cache")
    np.testing.assert_array_equal(np.array(again), expected)
    assert (ok2 == ok).all()


# ---------------------------------------------------------------------------------------------- run faults

def _fail_writes_of(monkeypatch, name: str, after: int) -> dict:
    """Make the fsync of the (after+1)-th temporary file for `name` fail with ENOSPC, as on a full disk."""
    real = os.fsync
    state = {"seen": 0, "failed": 0}

    def fsync(fd: int) -> None:
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        except OSError:
            target = ""
        if target.startswith(f".{name}."):
            state["seen"] += 1
            if state["seen"] > after:
                state["failed"] += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return state


@pytest.mark.integration
@linux_only
@pytest.mark.parametrize("target", [filenames.CHECKPOINT, filenames.SIDECAR, engine.RESUME])
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(target, micro, tmp_path, monkeypatch):
    run = runs.run_for(micro_cfg(micro, seed=3), tmp_path)
    scores = itertools.count(0.5, 0.1)  # every epoch 'improves', so every epoch writes model.safetensors
    monkeypatch.setattr(engine, "weighted_f1", lambda y, p: next(scores))
    fault = _fail_writes_of(monkeypatch, target, after=1)
    after_epoch_1: dict[str, bytes] = {}

    def remember(ev: dict) -> None:
        if ev["type"] == "epoch" and ev["epoch"] == 1:
            for name in (filenames.CHECKPOINT, filenames.SIDECAR):
                after_epoch_1[name] = (run.dir / name).read_bytes()

    with pytest.raises(OSError):
        trainer.train(run, log=lambda s: None, emit_hook=remember)
    assert fault["failed"] == 1
    st_ = run.status
    assert st_["state"] == "failed" and "No space left on device" in st_["error"] and "resume" in st_["error"]
    assert not [p.name for p in run.dir.iterdir() if p.name.startswith(".")], "no temporary file left"
    lm = inference.load_model(run.dir)  # the previous checkpoint still loads
    resume_state = checkpoints.load_resume_state(run.dir / engine.RESUME)
    if target == engine.RESUME:
        assert (resume_state["epoch"], resume_state["step"]) == (2, 0) and lm.meta["epoch"] == 2
    else:
        assert lm.meta["epoch"] == 1, "weights and sidecar stay a matching pair"
        assert (run.dir / filenames.CHECKPOINT).read_bytes() == after_epoch_1[filenames.CHECKPOINT]
        assert (run.dir / filenames.SIDECAR).read_bytes() == after_epoch_1[filenames.SIDECAR]
    monkeypatch.setattr(os, "fsync", _REAL_FSYNC)  # space freed: the run resumes from what was kept
    trainer.train(run, resume=True, log=lambda s: None)
    assert run.state == "finished"
    _check_continuous_history(run, 2)
    assert inference.load_model(run.dir).meta["epoch"] == 2



def test_truncated_last_line_and_lost_status_are_tolerated(finished_micro, tmp_path):
    copy = runs.Run(tmp_path / finished_micro.run_id)
    shutil.copytree(finished_micro.dir, copy.dir, ignore=shutil.ignore_patterns("*.lock"))
    n = len(copy.events())
    with open(copy.dir / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "batch", "epoch": 2, "st')  # the writer died mid-line
    assert len(copy.events()) == n and [e["epoch"] for e in copy.epochs()] == [1]
    (copy.dir / "status.json").write_bytes(b"")  # lost to a power cut
    assert copy.state == "finished"  # its other files say it finished (issue 35): never resumed nor retrained
    (copy.dir / filenames.CHECKPOINT).unlink()  # a run whose results are not whole was cut short
    assert copy.state == "interrupted" and "status.json" in copy.status["error"]
    (copy.dir / "status.json").unlink()
    assert copy.state == "interrupted"
    fresh = runs.Run(tmp_path / "fresh")
    fresh.dir.mkdir()
    assert fresh.state == "new"


def test_a_finished_run_is_never_trained_again_by_a_late_second_trainer(finished_micro):
    """The second of two racing trainers gets the lock only after the first finished: it must not retrain."""
    before = (finished_micro.dir / "metrics.jsonl").read_bytes()
    stamp = (finished_micro.dir / filenames.CHECKPOINT).stat().st_mtime_ns
    metrics = trainer.train(finished_micro, log=lambda s: None)
    assert metrics == finished_micro.final_metrics() and metrics["val_acc"] >= 0
    assert (finished_micro.dir / "metrics.jsonl").read_bytes() == before
    assert (finished_micro.dir / filenames.CHECKPOINT).stat().st_mtime_ns == stamp


def test_train_gives_back_signal_handlers_and_runs_off_the_main_thread(finished_micro):
    """An in-process caller keeps its Ctrl-C afterwards; a worker thread (a server) may call train at all."""
    mine = signal.getsignal(signal.SIGINT)
    trainer.train(finished_micro, log=lambda s: None)
    assert signal.getsignal(signal.SIGINT) is mine
    out: list = []
    worker = threading.Thread(target=lambda: out.append(trainer.train(finished_micro, log=lambda s: None)))
    worker.start()
    worker.join(WAIT)
    assert out == [finished_micro.final_metrics()]


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"),
], ids=["cuda", "mps"])
def test_out_of_device_memory_names_the_batch_size_and_a_smaller_one(error, micro, tmp_path, monkeypatch):
    def forward(self, x):
        raise error

    monkeypatch.setattr(torchvision.models.GoogLeNet, "forward", forward)
    run = runs.run_for(micro_cfg(micro, epochs=1, seed=4), tmp_path)
    with pytest.raises(engine.OutOfMemory) as err:
        trainer.train(run, log=lambda s: None)
    assert "batch size 8" in str(err.value) and "--batch-size 4" in str(err.value)
    assert run.state == "failed" and run.status["error"] == str(err.value)
    assert "googlenet" in run.status["error"] and "32 px" in run.status["error"]


def test_infinite_loss_stops_with_a_clear_message(micro, tmp_path, monkeypatch):
    """NaN is covered by tests/test_runs.py::test_nan_loss_stops_with_a_clear_message; infinity here."""
    real = torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward",
                        lambda self, a, b: real(self, a, b) * float("inf"))
    run = runs.run_for(micro_cfg(micro, epochs=1, seed=6), tmp_path)
    with pytest.raises(engine.TrainingDiverged):
        trainer.train(run, log=lambda s: None)
    assert run.state == "failed" and "loss became inf" in run.status["error"]
    assert not (run.dir / filenames.CHECKPOINT).exists(), "nothing trained on garbage is saved"


def test_a_malicious_last_pt_is_refused_on_resume(micro, tmp_path):
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    run = runs.run_for(micro_cfg(micro, epochs=1, seed=7), tmp_path / "runs")
    torch.save({"model": {}, "epoch": 1, "step": 0, "payload": RunsCode()}, run.dir / engine.RESUME)
    runs.write_status(run, "stopped")
    with pytest.raises(checkpoints.CheckpointError):
        trainer.train(run, resume=True, log=lambda s: None)
    assert not marker.exists(), "no code from the checkpoint ran"
    assert run.state == "failed" and "refusing to resume from last.pt" in run.status["error"]
    # proof that the file does carry code, read without running it: its pickle calls os.mkdir on the marker
    with zipfile.ZipFile(run.dir / engine.RESUME) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl)]
    assert ("GLOBAL", f"{os.name} mkdir") in ops and ("BINUNICODE", str(marker)) in ops
    assert any(name == "REDUCE" for name, _ in ops) and not marker.exists()


# ---------------------------------------------------------------------------------------------- processes

def _cli(args: list[str], out: Path) -> subprocess.Popen:
    with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "leukviz", *args], cwd=REPO, env=ENV,
                                stdout=stdout, stderr=stderr)


def _train_args(micro: Path, runs_dir: Path, epochs: int, seed: int) -> list[str]:
    return ["train", "--backbone", "googlenet", "--weights", "none", "--data", str(micro),
            "--epochs", str(epochs), "--image-size", "32", "--batch-size", "8", "--seed", str(seed),
            "--runs-dir", str(runs_dir), "--json"]


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    stdout, stderr = out.with_suffix(".out").read_text(), out.with_suffix(".err").read_text()
    assert stdout.strip(), f"no output (exit {proc.returncode}); stderr:\n{stderr[-3000:]}"
    return {**json.loads(stdout.strip().splitlines()[-1]), "exit": proc.returncode, "stderr": stderr}


@pytest.mark.integration
def test_kill_9_mid_epoch_then_resume_keeps_one_continuous_history(micro, tmp_path):
    runs_dir = tmp_path / "runs"
    proc = _cli(_train_args(micro, runs_dir, epochs=4, seed=11), tmp_path / "trainer")
    try:
        def in_epoch_2() -> bool:
            return any(e.get("type") == "batch" and e["epoch"] >= 2 for f in runs_dir.glob("*/metrics.jsonl")
                       for e in read_jsonl(f))
        _wait_for(in_epoch_2, "a batch of epoch 2", proc=proc, poll=0.02)
        os.kill(proc.pid, signal.SIGKILL)  # no handler, no cleanup: like a power cut for this process
        killed_at = time.time()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = runs.Run(next(runs_dir.glob("*/metrics.jsonl")).parent)
    assert run.state == "interrupted" and "killed" in run.status["error"]
    with open(run.dir / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "batch", "epoch": 9')  # and it died in the middle of a line
    before = [e for e in run.epochs() if e["time"] < killed_at]
    assert before and before[0]["epoch"] == 1
    trainer.train(run, resume=True, log=lambda s: None)
    assert run.state == "finished"
    ev = _check_continuous_history(run, 4)
    assert [e["type"] for e in ev if e["type"] in ("start", "resume")] == ["start", "resume"]
    assert run.epochs()[0] == before[0], "epochs finished before the kill are kept as they were"
    lm = inference.load_model(run.dir)
    probs = inference.predict_arrays(lm, np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.integration
def test_two_cli_trainers_of_one_config_train_once_and_report_the_same_run(micro, tmp_path):
    runs_dir = tmp_path / "runs"
    args = _train_args(micro, runs_dir, epochs=2, seed=12)
    procs = [_cli(args, tmp_path / f"cli{i}") for i in range(2)]
    try:
        results = [_finish(p, tmp_path / f"cli{i}") for i, p in enumerate(procs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [r["exit"] for r in results] == [0, 0], [r["stderr"][-2000:] for r in results]
    assert results[0]["run_id"] == results[1]["run_id"]
    assert [r["status"] for r in results] == ["finished", "finished"]
    assert results[0]["metrics"] == results[1]["metrics"]
    run = runs.Run(Path(results[0]["run_dir"]))
    ev = _check_continuous_history(run, 2)
    assert [e["type"] for e in ev if e["type"] in ("start", "resume")] == ["start"], "exactly one training"
    joined = [r["cached"] or "attaching" in r["stderr"] or "already finished" in r["stderr"] for r in results]
    assert sorted(joined) == [False, True], "one trained; the other attached to it, or found it finished"


PARENT = """
import json, os, signal, sys, threading
from pathlib import Path
from leukviz.runstore import runs, supervisor
run = runs.Run(Path(sys.argv[1]))
out = []
clicks = [threading.Thread(target=lambda: out.append(supervisor.launch(run))) for _ in range(2)]
for t in clicks: t.start()
for t in clicks: t.join()
started = [p.pid for p in out if p is not None]
print(json.dumps({"started": started, "state": run.state, "sid": os.getsid(0),
                  "child_sid": os.getsid(started[0]) if started else None}), flush=True)
os.killpg(0, signal.SIGKILL)  # the server dies with its whole process group, as on a crash or Ctrl-C
"""


@pytest.mark.integration
def test_two_launches_start_one_process_that_outlives_the_server(micro, tmp_path):
    """Two Start clicks at once on a server that then dies: one training process, and it finishes."""
    run = runs.run_for(micro_cfg(micro, seed=13), tmp_path / "runs")
    parent = subprocess.run([sys.executable, "-c", PARENT, str(run.dir)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=WAIT, start_new_session=True, check=False)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    report = json.loads(parent.stdout.strip().splitlines()[-1])
    assert len(report["started"]) == 1, "the second click attached instead of starting another process"
    assert report["state"] in ("starting", "queued", "running") and report["child_sid"] != report["sid"]
    assert run.state in ("starting", "queued", "running", "finished"), "a starting run is neither new nor interrupted"
    _wait_for(lambda: run.state == "finished" and not run.is_locked(), "the orphaned run to finish", poll=0.2)
    ev = _check_continuous_history(run, 2)
    assert [e["type"] for e in ev if e["type"] in ("start", "resume")] == ["start"]
    assert json.loads((run.dir / "launch.json").read_text())["pid"] == report["started"][0]


# ---------------------------------------------------------------------------------------------- server

def test_server_settings_are_safe():
    """The dashboard's .streamlit/config.toml: local only, XSRF on, no usage stats, a bounded upload size."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server = cfg.get("server", {})
    assert server.get("address") in ("127.0.0.1", "localhost")
    assert server.get("enableXsrfProtection", True) is True
    assert 1 <= server.get("maxUploadSize", 200) <= 200
    assert cfg.get("browser", {}).get("gatherUsageStats") is False
