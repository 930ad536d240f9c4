"""Shared fixtures: an isolated LEUKVIZ_HOME, a tiny generated C-NMC-style dataset, the real cnmc-mini sample."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CNMC_MINI = (REPO / ".." / "shared" / "data" / "cnmc-mini" / "C-NMC_Leukemia").resolve()


@pytest.fixture(scope="session", autouse=True)
def leukviz_home(tmp_path_factory) -> Path:
    """Every test session gets its own home: no test reads or writes the user's runs or caches."""
    home = tmp_path_factory.mktemp("leukviz-home")
    os.environ["LEUKVIZ_HOME"] = str(home)
    os.environ["LEUKVIZ_OFFLINE"] = "1"  # tests never touch the network
    os.environ.setdefault("TORCH_HOME", str(home / "torch"))
    return home


@pytest.fixture(scope="session", autouse=True)
def streamlit_components_scanned_once():
    """Each new AppTest scans every installed distribution's metadata for Streamlit components (0.1-0.3 s, and
    the dashboard tests make about 70 AppTests); the installed packages do not change during a session, so
    the first scan's answer is reused. Nothing is imported here for a session without dashboard tests."""
    if "streamlit.testing.v1" not in sys.modules:
        yield
        return
    from streamlit.components.v2 import manifest_scanner

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest_scanner, "scan_component_manifests",
                   functools.cache(manifest_scanner.scan_component_manifests))
        yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small C-NMC-layout dataset (6 subjects, 64 px) made by the demo generator."""
    from leukviz.datasets.synthetic import generate_demo

    return generate_demo(tmp_path_factory.mktemp("tiny"), seed=1, n_subjects=6, image_size=64, workers=1)


def data_required() -> bool:
    """In CI (CI=true, as CI services set it, or LEUKVIZ_REQUIRE_DATA=1, as .ci/run sets it) the tests on the real
    data beside the repo must run: a missing folder fails them, as LEUKVIZ_REQUIRE_BROWSER does the browser test.
    A newcomer's clone without ../shared/data skips them, saying where the data is expected."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("LEUKVIZ_REQUIRE_DATA") == "1"


def missing_data(reason: str) -> None:
    """Skip (a clone without the data) or, where the data is required (data_required), fail, with the reason."""
    if data_required():
        pytest.fail(f"real data required in CI (CI=true or LEUKVIZ_REQUIRE_DATA=1) but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cnmc_mini() -> Path:
    if not (CNMC_MINI / "training_data").is_dir():
        missing_data(f"real C-NMC sample not found at {CNMC_MINI} (it lives in ../shared/data beside the repo)")
    return CNMC_MINI


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


CNMC_DEV = (REPO / ".." / "shared" / "data" / "cnmc-fold1-dev").resolve()


@pytest.fixture(scope="session")
def cnmc_dev() -> Path:
    """The real fold-1 development folder (one sub-folder per class, C-NMC names), beside the repo."""
    if not (CNMC_DEV / "all").is_dir() or not (CNMC_DEV / "hem").is_dir():
        missing_data(f"real C-NMC development folder not found at {CNMC_DEV} (it lives in ../shared/data)")
    return CNMC_DEV


@pytest.fixture(scope="session")
def real_subset(cnmc_dev, tmp_path_factory) -> Path:
    """A tiny real subset: 4 cells of each of 3 ALL subjects and of both normal subjects, linked (not copied)."""
    root = tmp_path_factory.mktemp("real-subset")
    for cls, subjects in (("all", ("2", "16", "23")), ("hem", ("H10", "H14"))):
        (root / cls).mkdir()
        for s in subjects:
            for f in sorted((cnmc_dev / cls).glob(f"UID_{s}_*"))[:4]:
                (root / cls / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """One runs folder for the session: a configuration any test module asks for is trained once."""
    return tmp_path_factory.getbasetemp() / "shared-runs"


@pytest.fixture(scope="session")
def trained_run(shared_runs):
    """Factory of finished runs: trained_run(cfg) trains cfg into the shared folder the first time any test
    asks for it (studyruns.finished_run: the run store's one driver) and returns the cached run after that."""
    from leukviz.comparison import studyruns

    return lambda cfg: studyruns.finished_run(cfg, shared_runs, log=lambda s: None)


@pytest.fixture(scope="session")
def app_runs(trained_run, tiny_data) -> dict:
    """The dashboard tests' two finished runs on tiny_data (helpers.tiny_config), by backbone."""
    from helpers import APP_FINETUNE, tiny_config

    return {b: trained_run(tiny_config(b, tiny_data)) for b in APP_FINETUNE}
