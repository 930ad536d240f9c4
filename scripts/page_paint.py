"""Each dashboard page's first paint with few and with many runs (issue 33: every page's first paint with 500
runs on its dataset within 3 s of the same page with 10 runs).

    flock /work/measure.lock .venv/bin/python scripts/page_paint.py [--sizes 10 500] [--run DIR --data DIR]

Without --run, a small demo-layout dataset is generated and one GoogLeNet (32 px, one epoch) trained on it, in
a temporary folder. For each size N, the run is cloned N times (benchmarks.scale.clone_runs: hard links and a
config.json of each clone's own, as N repeats of one configuration) into the runs folder of a fresh
LEUKVIZ_HOME, `streamlit run app.py` is started headless on a free port, and Chromium (Playwright, 1366x900)
opens every page at its own address with the dataset in the URL, as a fresh session each time. A page is
painted when its main content is on screen and the app root says the script is no longer running. Each page is timed
twice per server: its first visit ("cold": the page's own imports and caches) and its second ("warm").
The Overview is opened once before the timing, so the server's start-up and first imports are counted in
neither. Screenshots of the largest size go to --shots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1366, "height": 900}
EXCEPTION = '[data-testid="stException"]'
# Page: (address, what shows its main content is there).
PAGES = {
    "Overview": ("", lambda p: p.get_by_text(re.compile("^Weighted F1"))),  # a backbone card's score
    "Data": ("data", lambda p: p.get_by_role("heading", name="What the network is fed")),  # below the samples
    "Train": ("train", lambda p: p.get_by_role("button", name=re.compile(r"^Start"))),
    "Predict": ("predict", lambda p: p.get_by_text("Cell images", exact=True)),  # after the models load
    "Compare": ("compare", lambda p: p.get_by_role("heading", name="Confusion matrices")),  # near the end
}
# The app root says whether the script is running (Streamlit's own attribute, what its status widget shows).
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source_run(work: Path, log) -> tuple[Path, Path]:
    """A small dataset and one finished run on it (trained here: seconds)."""
    from leukviz import api
    from leukviz.datasets.synthetic import generate_demo

    data = generate_demo(work / "data", seed=1, n_subjects=6, image_size=64, workers=1)
    log(f"training one GoogLeNet (32 px, 1 epoch) on {data}")
    run = api.train("googlenet", data, weights="none", epochs=1, image_size=32, batch_size=64,
                    runs_dir=work / "source-runs")
    run = run[0] if isinstance(run, list) else run
    return Path(run.dir), data


@contextlib.contextmanager
def server(home: Path, port: int, log_path: Path):
    env = {**os.environ, "LEUKVIZ_HOME": str(home), "LEUKVIZ_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "TORCH_HOME": str(home / "torch")}
    for name in ("LEUKVIZ_RUNS", "LEUKVIZ_CACHE", "LEUKVIZ_DATA_ROOTS"):
        env.pop(name, None)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                 "--server.headless", "true", "--server.fileWatcherType", "none",
                                 "--browser.gatherUsageStats", "false"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"streamlit did not start: see {log_path}") from None
                    time.sleep(0.2)
            yield proc
        finally:
            from leukviz.runstore import supervisor

            supervisor.end(proc)  # SIGTERM to its group, SIGKILL if it lingers, reaped


def paint(page, url: str, ready, timeout_s: float) -> float:
    """Seconds from navigating to url until ready(page) is visible and the running indicator is gone."""
    t0 = time.perf_counter()
    page.goto(url)
    ready(page).first.wait_for(state="visible", timeout=timeout_s * 1000)
    # Idle twice 100 ms apart: the run (and any rerun it asked for) has ended.
    while True:
        page.locator(IDLE).wait_for(state="attached", timeout=timeout_s * 1000)
        page.wait_for_timeout(100)
        if page.locator(IDLE).count():
            break
    took = time.perf_counter() - t0 - 0.1
    if page.locator(EXCEPTION).count():
        raise RuntimeError(f"exception on {url}: {page.locator(EXCEPTION).first.inner_text()[:800]}")
    return took


def config_variant(source: Path, root: Path, g: int) -> Path:
    """source's files (hard links) under a config.json whose learning rate is g thousandths higher: another
    configuration, so its clones form a repeat group of their own."""
    from dataclasses import replace

    from leukviz.benchmarks.scale import _link
    from leukviz.core import filenames
    from leukviz.core.storage import atomic_write_json
    from leukviz.runstore import runfiles

    folder = root / f"lr-{g}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file() and f.name != filenames.CONFIG and not f.name.endswith(".lock"):
                _link(f, folder / f.name)
        obj, cfg, fp = runfiles.read_config(source)
        c = replace(cfg, lr=cfg.lr * (1 + g / 1000))
        atomic_write_json(folder / filenames.CONFIG, {**obj, "run_id": c.identity(fp), "config": c.to_dict()})
    return folder


def measure(source: Path, data: Path, n: int, work: Path, shots: Path | None, timeout_s: float, log,
            seeds_per_config: int = 0) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from leukviz.benchmarks.scale import clone_runs

    home = work / f"home-{n}-{seeds_per_config or n}"
    if not seeds_per_config:
        clone_runs(source, home / "runs", n)
    else:
        for g, start in enumerate(range(0, n, seeds_per_config)):
            clone_runs(config_variant(source, work / "variants", g), home / "runs",
                       min(seeds_per_config, n - start), start=start)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    query = "?" + urllib.parse.urlencode({"dataset": str(data)})
    out: dict[str, dict] = {}
    with server(home, port, work / f"streamlit-{n}.log"), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        # start-up, first imports and the first read of every run (its summary computed and stored)
        first = round(paint(page, f"{base}/{query}", PAGES["Overview"][1], timeout_s * 4), 2)
        log(f"  {n} runs  the server's first Overview (summaries computed): {first:5.2f} s")
        for visit in ("cold", "warm"):
            for name, (path, ready) in PAGES.items():
                try:
                    took = round(paint(page, f"{base}/{path}{query}", ready, timeout_s), 2)
                except PlaywrightTimeout:  # not painted within --timeout: said, and the next page measured
                    took = None
                out.setdefault(name, {})[visit] = took
                log(f"  {n} runs  {name:8s} {visit}: " + (f"{took:5.2f} s" if took is not None else
                                                         f"not painted within {timeout_s:.0f} s"))
                if shots is not None and visit == "warm":
                    page.screenshot(path=str(shots / f"paint-{n}-{name.lower()}.png"), full_page=False)
        browser.close()
    out["first"] = first
    return out


def _s(x: float | None) -> str:
    return "timeout" if x is None else f"{x:.2f}"


def table(res: dict[int, dict], sizes: list[int]) -> str:
    small, big = sizes[0], sizes[-1]
    head = (f"| Page | {small} runs cold | {big} runs cold | difference | {small} runs warm | {big} runs warm "
            "| difference |")
    lines = [head, "|" + "---|" * 7]
    def cells(a, b) -> str:
        if a is None or b is None:
            return f"{_s(a)} | {_s(b)} | ?"
        return f"{a:.2f} | {b:.2f} | {b - a:+.2f}"

    for name in PAGES:
        a, b = res[small][name], res[big][name]
        lines.append(f"| {name} | {cells(a['cold'], b['cold'])} | {cells(a['warm'], b['warm'])} |")
    lines.append(f"\nThe server's first Overview (start-up, imports, every run's summary computed): {small} runs "
                 f"{res[small]['first']:.2f} s, {big} runs {res[big]['first']:.2f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 500])
    ap.add_argument("--run", type=Path, help="a finished run folder to clone (default: train one)")
    ap.add_argument("--data", type=Path, help="the dataset the run was trained on, as its config.json records it "
                                              "(default with --run: read from it)")
    ap.add_argument("--work", type=Path, help="a folder to work in (default: a temporary one)")
    ap.add_argument("--shots", type=Path, help="save a screenshot of each page at the largest size here")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a page may take")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--seeds-per-config", type=int, default=0,
                    help="clone into configurations (learning rates) of this many seeds each, as a lab's runs "
                         "are; default 0: every clone a seed of the source's one configuration (the pages "
                         "then preselect all N as one repeat group)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} not found", file=sys.stderr)
        return 2

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="page-paint-")))
        work.mkdir(parents=True, exist_ok=True)
        if args.run:
            from leukviz.runstore import runfiles

            source = args.run.resolve()
            # the dataset as the run recorded it (pages match runs to the active dataset by that string)
            data = args.data or Path(runfiles.read_config(source)[1].data)
        else:
            os.environ["LEUKVIZ_HOME"] = str(work / "train-home")
            source, data = source_run(work, log)
        if args.shots:
            args.shots.mkdir(parents=True, exist_ok=True)
        sizes = sorted(args.sizes)
        res = {n: measure(source, data, n, work, args.shots if n == sizes[-1] else None, args.timeout, log,
                          args.seeds_per_config) for n in sizes}
    print(table(res, sizes))
    if args.json:
        args.json.write_text(json.dumps({str(n): r for n, r in res.items()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
