"""leukviz as a package a lab installs: the declared dependencies hold the tested pins, the console command, `leukviz
app` (the repo's Streamlit settings passed as options), and (integration) a wheel built from this checkout,
installed into a fresh virtual environment, working from another folder: --help, a tiny train, the app served
and drawn, and the API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from leukviz import __version__, cli
from leukviz.cli import app as app_cmd
from leukviz.runstore import supervisor

REPO = Path(__file__).resolve().parents[1]


def _toml(path: Path) -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; on 3.10 these checks are skipped
    return tomllib.loads(path.read_text())


def _pyproject() -> dict:
    return _toml(REPO / "pyproject.toml")


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            pins[req.name.lower()] = str(req.specifier).removeprefix("==")
    return pins


def test_the_declared_dependencies_hold_what_requirements_txt_pins():
    """Every runtime pin is declared in pyproject, inside its range, and nothing is declared that is not pinned."""
    declared = {Requirement(r).name.lower(): Requirement(r).specifier for r in _pyproject()["project"]["dependencies"]}
    pins = _pins("requirements.txt")
    assert set(declared) == set(pins), set(declared) ^ set(pins)
    outside = [f"{n}=={v} not in {declared[n]}" for n, v in pins.items() if not declared[n].contains(v)]
    assert not outside, outside
    extras = _pyproject()["project"]["optional-dependencies"]
    dev = {Requirement(r).name.lower(): Requirement(r).specifier for r in extras["dev"]}
    dev_pins = {n: v for n, v in _pins("requirements-dev.txt").items()}
    assert set(dev_pins) <= set(dev) and all(dev[n].contains(v) for n, v in dev_pins.items()), (dev, dev_pins)


def test_the_command_and_the_version_have_one_source(capsys):
    project = _pyproject()["project"]
    assert project["scripts"] == {"leukviz": "leukviz.cli:entry"} and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "leukviz.__version__"}
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"leukviz {__version__}"


def test_leukviz_app_passes_the_repo_settings_and_lets_the_user_override_them():
    """The repo's .streamlit/config.toml is not read when an installed leukviz serves from another folder: the
    same settings go as options (one list, kept equal to the file here), and the user's own win."""
    flat = {f"{section}.{k}": str(v).lower() if isinstance(v, bool) else str(v)
            for section, values in _toml(REPO / ".streamlit" / "config.toml").items()
            for k, v in values.items()}
    assert flat == app_cmd.STREAMLIT_OPTIONS
    cmd = app_cmd.streamlit_command(["--server.port", "8502", "--server.address=0.0.0.0"])
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == REPO / "leukviz" / "ui" / "app.py"
    assert cmd[-3:] == ["--server.port", "8502", "--server.address=0.0.0.0"]
    assert [c for c in cmd if "server.address" in c] == ["--server.address=0.0.0.0"]
    assert "--server.fileWatcherType=none" in cmd


def test_leukviz_app_refuses_a_short_option_and_other_commands_refuse_unknown_ones(capsys):
    assert cli.main(["app", "-p", "8502"]) == 2
    assert "--section.name VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["runs", "list", "--server.port", "1"])
    assert "unrecognized arguments: --server.port 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the installed wheel

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkout_copy(dest: Path) -> Path:
    """The checkout's files (tracked, and new ones git does not ignore), so building leaves the repo untouched."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file() and not name.startswith(".venv"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _fresh_venv(where: Path) -> Path:
    """A virtual environment of its own whose only borrowed packages are the installed dependencies (this
    environment's site-packages through a .pth file, so torch is not downloaded again); leukviz itself comes
    from the wheel alone."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _run(args: list[str], env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


API_SCRIPT = """
import json, sys
import leukviz
settings = dict(weights="none", epochs=1, image_size=32, batch_size=16)
first = leukviz.train("googlenet", sys.argv[1], **settings)
second = leukviz.train("googlenet", sys.argv[1], seed=1, split_seed=0, **settings)  # the same split
table = leukviz.runs(dataset=sys.argv[1])
result = leukviz.compare(table, resamples=200)
print(json.dumps({"file": leukviz.__file__, "first": first.id, "second": second.id, "epochs": len(first.history),
                  "listed": sorted(table["run_id"]), "answer": result.answer, "rows": len(result.table)}))
"""


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_wheel_installs_into_a_fresh_venv_and_works_from_another_folder(tmp_path, tiny_data):
    src = _checkout_copy(tmp_path / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(src)], dict(os.environ), tmp_path)
    wheel = next((tmp_path / "dist").glob("leukviz-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("leukviz/ui/app.py", "leukviz/ui/train.py", "leukviz/ui/_common.py", "leukviz/cli/app.py",
                   "leukviz/api.py", "leukviz/py.typed"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("tests/")]

    python = _fresh_venv(tmp_path / "venv")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
         dict(os.environ), tmp_path)
    _run([sys.executable, "-m", "pip", "--python", str(python), "check"], dict(os.environ), tmp_path)  # ranges hold

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LEUKVIZ_RUNS", "LEUKVIZ_CACHE")}
    env.update(PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}", LEUKVIZ_HOME=str(tmp_path / "home"),
               LEUKVIZ_OFFLINE="1", PYTHONUNBUFFERED="1")
    leukviz = str(python.parent / "leukviz")
    helped = _run([leukviz, "--help"], env, elsewhere).stdout
    assert "usage: leukviz" in helped and " app " in helped and "tensorboard" in helped
    assert _run([leukviz, "--version"], env, elsewhere).stdout.strip() == f"leukviz {__version__}"
    trained = _run([leukviz, "train", "--backbone", "googlenet", "--data", str(tiny_data), "--weights", "none",
                    "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--json"], env, elsewhere)
    res = json.loads(trained.stdout.strip().splitlines()[-1])
    assert res["status"] == "finished" and (tmp_path / "home" / "runs" / res["run_id"]).is_dir()

    api = json.loads(_run([str(python), "-c", API_SCRIPT, str(tiny_data)], env, elsewhere).stdout.strip()
                     .splitlines()[-1])
    assert api["file"].startswith(str(tmp_path / "venv"))  # the installed package, not this checkout
    assert api["first"] == res["run_id"] and api["listed"] == sorted([api["first"], api["second"]])
    assert api["epochs"] == 1 and "best on validation weighted F1" in api["answer"] and api["rows"] >= 2

    _serve_and_draw(leukviz, env, elsewhere, tmp_path)


def _serve_and_draw(leukviz: str, env: dict, cwd: Path, tmp_path: Path) -> None:
    """`leukviz app --server.port P`: the health endpoint answers, the page is Streamlit's, and (with Chromium and
    Playwright) the Overview is drawn with the run trained above, without an exception."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "app.log", "wb") as log:
        server = subprocess.Popen([leukviz, "app", "--server.port", str(port)], env=env, cwd=cwd, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            assert server.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            assert time.time() < deadline, "leukviz app did not answer within 90 s"
            time.sleep(0.5)
        with urllib.request.urlopen(base, timeout=10) as r:
            assert r.status == 200 and '<div id="root">' in r.read().decode()
        _draw(base)
    finally:
        supervisor.end(server)  # SIGTERM to its group, SIGKILL if it lingers, reaped


def _draw(base: str) -> None:
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    if not chromium.exists():
        return
    out = Path(os.environ.get("LEUKVIZ_ARTIFACTS") or REPO / "artifacts" / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(base)
        page.get_by_role("heading", name="Backbones").wait_for(timeout=90_000)
        page.get_by_text("GoogLeNet").first.wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        assert not page.locator('[data-testid="stException"]').count()
        page.screenshot(path=str(out / "0-installed-overview.png"))
        browser.close()


def test_citation_cff_names_this_version_and_the_data_it_trains_on():
    text = (REPO / "CITATION.cff").read_text()
    assert text.startswith("cff-version: 1.2.0") and f"\nversion: {__version__}\n" in text
    for key in ("\ntitle:", "\nauthors:", "\nmessage:", "\nreferences:"):
        assert key in text, key
    readme = (REPO / "README.md").read_text()
    assert "10.7937/tcia.2019.dc64i46r" in text and "10.7937/tcia.2019.dc64i46r" in readme  # C-NMC 2019 on TCIA
    assert "docs/img/overview.png" in readme and (REPO / "docs" / "img" / "overview.png").stat().st_size < 200_000
