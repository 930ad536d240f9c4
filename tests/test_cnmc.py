"""Tests for leukviz.cnmc: the names it builds are the names it (and the dataset reader) parses."""

import pytest

from leukviz.datasets import cnmc, data


@pytest.mark.parametrize("subject", ["11", "H10", "h3"])
def test_cell_names_round_trip(subject):
    name = cnmc.cell_name(subject, 4, 2, "hem")
    assert name == f"UID_{subject}_4_2_hem.bmp"
    assert cnmc.parse_cnmc_name(name) == (subject, 4, 2, "hem")
    assert cnmc.parse_cnmc_name(cnmc.cell_name(subject, 4, 2, "all", ".png")) == (subject, 4, 2, "all")


def test_folds_round_trip_and_other_folders_are_no_fold():
    assert [cnmc.parse_fold(cnmc.fold_name(k)) for k in range(3)] == [0, 1, 2]
    assert cnmc.parse_fold("fold_x") is None and cnmc.parse_fold("notes") is None


def test_the_reader_follows_the_rules(tmp_path):
    root = tmp_path / cnmc.ROOT
    for k, (subject, cls) in enumerate([("1", "all"), ("H1", "hem")]):
        folder = root / cnmc.TRAINING / cnmc.fold_name(k) / cls
        folder.mkdir(parents=True)
        (folder / cnmc.cell_name(subject, 1, 1, cls, ".png")).write_bytes(b"")
    (root / cnmc.PRELIM_IMAGES).mkdir(parents=True)
    (root / cnmc.PRELIM_IMAGES / "1.png").write_bytes(b"")
    (root / cnmc.PRELIM_LABELS).write_text(",".join(cnmc.LABEL_COLUMNS) + "\n"
                                           + cnmc.cell_name("H2", 1, 1, "hem", ".png") + ",1.png,0\n")
    index = data._index_cnmc(data.find_cnmc_root(tmp_path), [])
    assert list(zip(index["subject"], index["label"], index["fold"], index["set"])) == [
        ("1", cnmc.CNMC_CLASSES.index("all"), 0, "train"), ("H1", cnmc.CNMC_CLASSES.index("hem"), 1, "train"),
        ("H2", 0, -1, "prelim")]
