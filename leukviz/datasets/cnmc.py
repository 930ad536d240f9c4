"""The C-NMC 2019 naming rules alone: its classes, its folders and its file names.

The reader (leukviz.data), the demo generator (leukviz.synthetic) and the benchmark's stand-in all follow
these, so the demo is laid out exactly as the download is read. No file is touched here.
"""

from __future__ import annotations

import re

CNMC_CLASSES = ("hem", "all")  # index = the C-NMC labels CSV's value: 0 = hem (normal), 1 = all (blast)

ROOT = "C-NMC_Leukemia"  # the folder the download unpacks to
TRAINING = "training_data"  # fold_<k>/<class>/<cell file>
FOLD_GLOB = "fold_*"
PRELIM_IMAGES = "validation_data/C-NMC_test_prelim_phase_data"  # labelled preliminary test: <n>.bmp
PRELIM_LABELS = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
FINAL_IMAGES = "testing_data/C-NMC_test_final_phase_data"  # the unlabeled final test set

# The preliminary set's labels CSV: each numbered file's original cell name and its label (1 = all, 0 = hem).
LABEL_SUBJECT, LABEL_FILE, LABEL_VALUE = "Patient_ID", "new_names", "labels"
LABEL_COLUMNS = (LABEL_SUBJECT, LABEL_FILE, LABEL_VALUE)

# A cell file: UID_<subject>_<image>_<cell>_<class>.<ext>. One normal subject is spelled in lower case
# (UID_h3_...). ASCII digits only, at most 9: int() of a 5000-digit number raises, and \d matches any
# script's digits.
CNMC_NAME = re.compile(r"UID_([A-Za-z]*[0-9]+)_([0-9]{1,9})_([0-9]{1,9})_(all|hem)\.[A-Za-z]+")


def parse_cnmc_name(name: str) -> tuple[str, int, int, str] | None:
    """'UID_h3_4_1_hem.bmp' -> ('h3', 4, 1, 'hem'); None when the name does not follow C-NMC."""
    m = CNMC_NAME.fullmatch(name) if isinstance(name, str) else None
    if not m:
        return None
    return m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)


def cell_name(subject: str, image: int, cell: int, cls: str, suffix: str = ".bmp") -> str:
    """The file name C-NMC gives a cell: cell_name('h3', 4, 1, 'hem') -> 'UID_h3_4_1_hem.bmp'."""
    return f"UID_{subject}_{image}_{cell}_{cls}{suffix}"


def fold_name(fold: int) -> str:
    """The training folder of an official fold: 0 -> 'fold_0'."""
    return f"fold_{fold}"


def parse_fold(name: str) -> int | None:
    """'fold_2' -> 2; None for a folder that is not a fold ('fold_x', 'fold_-1', 'fold_1_old')."""
    head, _, number = name.partition("_")
    return int(number) if head == "fold" and number.isascii() and number.isdigit() else None
