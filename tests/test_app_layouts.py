"""No dead end, no traceback: every dataset layout the loader knows (and the odd ones: test/ only, a validation
folder of one class, an official fold of one class, one subject per class, names without subjects) draws the
Data and Train pages without an exception, on a split it can make, saying why when it is not the one asked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from leukviz.app import datapage
from leukviz.datasets import data

REPO = Path(__file__).resolve().parents[1]


def cells(tiny_data: Path, cls: str) -> list[Path]:
    """tiny_data's training images of one class (C-NMC names: UID_<subject>_<image>_<cell>_<class>)."""
    return sorted((tiny_data / "training_data").glob(f"fold_*/{cls}/*"))


def put(files: list[Path], folder: Path, plain: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        shutil.copy(f, folder / (f"cell{i}{f.suffix}" if plain else f.name))


def by_subject(files: list[Path], keep: int) -> list[Path]:
    """The files of the first `keep` subjects."""
    subjects = sorted({f.name.split("_")[1] for f in files})[:keep]
    return [f for f in files if f.name.split("_")[1] in subjects]


def make_layout(name: str, tiny_data: Path, root: Path) -> Path:
    """A small dataset of layout `name`, made of tiny_data's cells."""
    base = root / name
    a, h = cells(tiny_data, "all"), cells(tiny_data, "hem")
    if name == "cnmc (one class in fold_2)":
        return tiny_data
    if name == "class folders":
        put(a[:12], base / "all"), put(h[:12], base / "hem")
    elif name == "class folders without subjects":
        put(a[:8], base / "all", plain=True), put(h[:8], base / "hem", plain=True)
    elif name == "one subject per class":
        put(by_subject(a, 1)[:8], base / "all"), put(by_subject(h, 1)[:8], base / "hem")
    elif name == "train and val":
        put(a[:8], base / "train" / "all"), put(h[:8], base / "train" / "hem")
        put(a[8:12], base / "val" / "all"), put(h[8:12], base / "val" / "hem")
    elif name == "val of one class":
        put(a[:8], base / "train" / "all"), put(h[:8], base / "train" / "hem"), put(a[8:12], base / "val" / "all")
    elif name == "train and test":
        put(a[:8], base / "train" / "all"), put(h[:8], base / "train" / "hem")
        put(a[8:11], base / "test" / "all"), put(h[8:11], base / "test" / "hem")
    elif name == "test only":
        put(a[:6], base / "test" / "all"), put(h[:6], base / "test" / "hem")
    return base


LAYOUTS = ["cnmc (one class in fold_2)", "class folders", "class folders without subjects", "one subject per class",
           "train and val", "val of one class", "train and test", "test only"]


@pytest.fixture(scope="module")
def layouts(tiny_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: make_layout(name, tiny_data, root) for name in LAYOUTS}


@pytest.mark.parametrize("wanted", ["given", "subject", "folds"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_gets_a_split_it_can_make_or_a_reason(layouts, name, wanted):
    try:
        ds = data.open_dataset(str(layouts[name]))
    except data.DataError as e:  # the loader refuses it: one clear line, which the pages show
        assert name == "test only" and "\n" not in str(e)
        return
    offer = datapage.split_choice(ds, wanted)
    assert offer.chosen in offer.choices and offer.choices, offer
    data.make_split(ds, offer.chosen)  # it can be made
    if offer.chosen != wanted:
        assert offer.note and "is used instead" in offer.note
    assert data.default_split(ds) in offer.choices


def test_a_validation_folder_of_one_class_falls_back_and_says_why(layouts):
    ds = data.open_dataset(str(layouts["val of one class"]))
    offer = datapage.split_choice(ds, "given")
    assert offer.chosen != "given" and "has no images of class hem" in offer.note
    assert data.default_split(ds) != "given"


@pytest.mark.parametrize("name", LAYOUTS)
def test_data_and_train_pages_draw_every_layout(layouts, name):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["dataset"] = str(layouts[name])
    at.session_state["split"] = "given"  # what the user last chose elsewhere: not every layout can make it
    at.session_state["split_dataset"] = str(layouts[name])
    at.run()
    at.switch_page("leukviz/ui/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error or at.get("radio"), "the Data page offers a split or says why the dataset cannot be used"
    at.switch_page("leukviz/ui/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    if name == "test only":
        assert at.error  # the dataset cannot be used: said, with the way back to the Data page
    else:
        assert any(b.label == "Start training" for b in at.button)
