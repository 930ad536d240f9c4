"""Reliability, fourth pass (issue 35): one output rule for every file written for a user, run-file readers
that open only regular files, one line for a closed pipe, an interrupt or a kill's signal, and run files
checked against each other. The table: docs/RELIABILITY.md, rows O1 on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import link_run, make_run, tiny_config
from leukviz.cli import main
from leukviz.core import filenames, storage

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
linux_only = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc and FIFOs (Linux)")


class Hung(BaseException):
    """Raised by no_hang's alarm. Not an OSError (as TimeoutError is) nor an Exception, so the product's own
    `except OSError` around a read cannot swallow it and let a hang pass as a slow success."""


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    """Fail, instead of hanging the suite, when the block blocks on a FIFO."""
    def fail(*_):
        raise Hung(f"blocked for {seconds} s (a FIFO opened?)")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "partial" in p.name)


@pytest.fixture(scope="module")
def finished(trained_run, tiny_data):
    """One finished 32 px run (the session's shared googlenet run of tiny_data)."""
    return trained_run(tiny_config("googlenet", tiny_data))


@pytest.fixture()
def own_runs(finished, tmp_path) -> tuple[Path, str]:
    """A runs folder of this test's own holding the finished run (hard links), and its id."""
    root = tmp_path / "runs"
    root.mkdir()
    return root, link_run(finished, root).run_id


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leukviz", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


# ---------------------------------------------------------------------------------------------- the output rule

@linux_only
def test_output_rule_files_keep_their_mode_links_are_written_through_and_streams_are_never_renamed_over(tmp_path):
    old_umask = os.umask(0o022)
    try:
        new = tmp_path / "new.csv"
        storage.write_output(new, b"a\n")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644 and new.read_bytes() == b"a\n"  # not mkstemp's 0600
        shared = tmp_path / "shared.html"
        shared.write_text("old")
        os.chmod(shared, 0o664)
        storage.write_output(shared, b"new")
        assert stat.S_IMODE(shared.stat().st_mode) == 0o664 and shared.read_text() == "new"
    finally:
        os.umask(old_umask)

    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    storage.write_output(link, b"through")
    assert link.is_symlink() and target.read_text() == "through"  # written through to the target; still a link

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(storage.OutputError, match="nobody reads"):
        storage.write_output(fifo, b"x")  # no reader: refused at once, not waited on
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))  # noqa: SIM115
    reader.start()
    time.sleep(0.2)
    with no_hang():
        storage.write_output(fifo, b"streamed")
    reader.join(10)
    assert got == [b"streamed"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the reader got it; still a FIFO

    storage.write_output("/dev/null", b"x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if Path("/dev/full").exists():
        with pytest.raises(storage.OutputError, match="/dev/full could not be written: No space left"):
            storage.write_output("/dev/full", b"x" * 100_000)
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # the device stays a device
    assert _leftovers(tmp_path) == []


@linux_only
@pytest.mark.parametrize("case, message", [
    ("", "is empty: give a file name"),
    ("rep/", "names a folder; give a file name, e.g. rep/report.html"),
    ("folder", "is a folder; give a file name, e.g. folder/report.html"),
    ("sock", "is a socket"),
    ("x" * 300 + ".html", "the file name is too long (305 bytes; at most 255)"),
    ("/proc/r.html", "cannot write in the folder /proc"),
])
def test_an_output_that_cannot_be_written_is_one_line_before_the_work(case, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("sock")
        with pytest.raises(storage.OutputError) as e:
            storage.prepare_output(case, "--report", "report.html")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "rep").exists()


def test_an_interrupt_inside_an_output_leaves_the_old_file_and_no_temporary(tmp_path):
    report = tmp_path / "r.html"
    report.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with storage.output(report) as fh:
            fh.write(b"half")
            raise KeyboardInterrupt
    assert report.read_text() == "old" and _leftovers(tmp_path) == []


def test_stdout_as_an_output_carries_the_file_alone(tmp_path, capfd):
    with storage.stdout_reserved():
        print("the command's own text")
        storage.write_output("-", b"file,bytes\n")
    out, err = capfd.readouterr()
    assert out == "file,bytes\n" and "the command's own text" in err


def test_predict_csv_to_stdout_or_a_fifo_streams_and_leaves_the_link_a_link(own_runs, tiny_data, tmp_path):
    root, run_id = own_runs
    img = str(sorted((tiny_data / "training_data" / "fold_0" / "all").glob("*.png"))[0])
    base = ("predict", "--run", run_id, img, "--runs-dir", str(root))
    # Both commands at once: each is mostly interpreter and torch start-up, so two cores finish both in the
    # time of one. Each still has its own stdout pipe and its own /dev/stdout.
    procs = {dest: _cli(*base, "--csv", dest) for dest in ("-", "/dev/stdout")}
    for dest, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (dest, err.decode()[-2000:])
        lines = out.decode().splitlines()
        assert lines[0].startswith("file,") and len(lines) == 2, (dest, out.decode())  # the CSV alone on stdout
        assert "[googlenet" in err.decode()  # the human table went to stderr
    assert Path("/dev/stdout").is_symlink()


# ---------------------------------------------------------------------------------------------- run files

@linux_only
@pytest.mark.parametrize("name", [filenames.STATUS, filenames.SIDECAR, filenames.PREDICTIONS, filenames.METRICS,
                                  filenames.CONFIG, filenames.CALIBRATION, filenames.CHECKPOINT])
def test_a_fifo_in_place_of_a_run_file_is_named_and_never_opened(name, tmp_path, capsys):
    from leukviz.app import dashboard
    from leukviz.runstore import runs
    from leukviz.scoring import health

    root = tmp_path / "runs"
    good, bad = make_run(root, seed=0), make_run(root, seed=1)
    (bad.dir / name).unlink(missing_ok=True)
    os.mkfifo(bad.dir / name)
    with no_hang():
        assert main(["runs", "list", "--runs-dir", str(root), "--json"]) == 0
        listed = {r["run_id"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]}
        assert [r.run_id for r in dashboard.finished_runs(root)] == [good.run_id]
        assert [r.run_id for r in runs.damaged_runs(root)] == [bad.run_id]
        health.of_run_dir(bad.dir)
        with contextlib.suppress(Exception):
            storage.read_json(bad.dir / name)
    assert any(f"{name}: is a pipe, not a regular file" in p for p in listed[bad.run_id]["problems"])
    assert stat.S_ISFIFO(os.lstat(bad.dir / name).st_mode)


# ---------------------------------------------------------------------------------------------- one line each

@linux_only
def test_a_closed_pipe_ends_quietly(tmp_path):
    root = tmp_path / "runs"
    for seed in range(30):
        make_run(root, seed=seed)
    proc = _cli("runs", "list", "--json", "--runs-dir", str(root))
    proc.stdout.close()  # `| head -c 0`: the reader goes away before the command writes
    err = proc.stderr.read().decode()
    proc.wait(120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141


def test_an_interrupt_is_one_line_and_exit_130_with_no_temporary(own_runs, tmp_path, capsys, monkeypatch):
    from leukviz.app import report

    root, run_id = own_runs
    out = tmp_path / "r.html"

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "html_report", interrupted)
    assert main(["compare", run_id, "--runs-dir", str(root), "--report", str(out), "--resamples", "100"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: interrupted") and not any("Traceback" in line for line in err)
    assert _leftovers(tmp_path) == [] and not out.exists()


@linux_only
@pytest.mark.integration  # a child process exporting ONNX, killed part-way
def test_sigterm_during_an_onnx_export_leaves_no_partial_file(own_runs, tmp_path):
    root, run_id = own_runs
    out = tmp_path / "export"
    out.mkdir()
    proc = _cli("export", "--run", run_id, "--format", "onnx", "--out", str(out / "m.onnx"), "--runs-dir", str(root))
    deadline = time.time() + 240
    while not any("partial" in p.name for p in out.iterdir()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: terminated")
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------- uploads

def test_an_upload_name_holding_a_nul_byte_gets_a_message_and_the_other_files_go_on(finished, tiny_data,
                                                                                    tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from helpers import link_runs

    monkeypatch.setenv("LEUKVIZ_HOME", str(tmp_path / "home"))
    from leukviz.runstore import runs

    link_runs([finished], runs.runs_root())
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["dataset"] = str(tiny_data)
    at.run()
    at.switch_page("leukviz/ui/predict.py").run()
    cells = sorted((tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))[:2]
    at.file_uploader[0].upload("evil\x00name.png", cells[0].read_bytes(), "image/png")
    at.file_uploader[0].upload(cells[1].name, cells[1].read_bytes(), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning if "NUL byte" in w.value]
    assert len(warnings) == 1 and "evil" in warnings[0]
    from leukviz.datasets import data
    assert data.upload_refusal("evil\x00name.png", ("png",)).startswith("evil\\x00name.png: the file name holds a NUL")
    assert any(cells[1].name in m.value.replace("\\", "") for m in at.markdown)  # the other file is predicted


# ---------------------------------------------------------------------------------------------- cross-checks

def _replace(path: Path, text: str) -> None:
    """Replace a run file (never edit in place: the run's files are hard links shared with the session)."""
    path.unlink(missing_ok=True)
    path.write_text(text)


def test_run_files_are_checked_against_each_other(finished, tmp_path):
    from leukviz.runstore import runs
    from leukviz.scoring import calibration

    def fresh(name: str) -> runs.Run:
        return link_run(finished, tmp_path / name)

    # calibration.json whose T lies outside its own bounds, or is not a number: never applied, fitted again
    run = fresh("cal")
    good = calibration.run_calibration(run.dir)
    for bad, why in ((1e-9, "outside its own bounds"), ("abc", "is not a number")):
        _replace(run.dir / filenames.CALIBRATION, json.dumps({**good, "temperature": bad}))
        got = calibration.run_calibration(run.dir)
        assert got["temperature"] == good["temperature"] and why in got["note"]
        assert got["note"].startswith("calibration.json was not applied")
        assert calibration.run_calibration(run.dir)["note"] == good["note"]  # repaired: named once

    # val_predictions.csv cut at a line end: fewer rows than model.json's validation count, so DAMAGED
    run = fresh("cut")
    lines = (run.dir / filenames.PREDICTIONS).read_text().splitlines(keepends=True)
    n_val = run.sidecar()["split"]["n_val"]
    assert len(lines) - 1 == n_val > 9
    _replace(run.dir / filenames.PREDICTIONS, "".join(lines[:10]))
    assert [p.what for p in run.damage] == [f"holds 9 predictions, model.json says the validation set has {n_val} "
                                            "cells (cut short?)"]

    # a hand-edited predictions file whose accuracy is not model.json's: DAMAGED, so neither healthy nor compared
    run = fresh("edited")
    import pandas as pd
    df = pd.read_csv(run.dir / filenames.PREDICTIONS)
    classes = run.sidecar()["classes"]
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = (df["label"] == i).astype(float)  # perfect scores
    (run.dir / filenames.PREDICTIONS).unlink()
    df.to_csv(run.dir / filenames.PREDICTIONS, index=False)
    assert run.sidecar()["metrics"]["val_acc"] < 1
    assert any("its accuracy is 1.000, model.json says the model scored" in p.what for p in run.damage)
    assert not run.is_usable

    # a finished run whose status.json was cut in half: read as finished, never advised to resume
    run = fresh("half")
    _replace(run.dir / filenames.STATUS, '{"state": "fini')
    assert run.state == "finished" and runs.plan(run) == "cached" and run.is_usable
    assert any("reads as finished" in p and "resume" not in p.split("reads as finished")[0] for p in run.problems)
    assert not any("train --resume" in p for p in run.problems)


# ---------------------------------------------------------------------------------------------- the served dashboard

def test_data_roots_keep_every_other_path_shut_and_bad_link_values_are_noted(tmp_path, monkeypatch):
    from leukviz.app import dashboard
    from leukviz.core import paths
    from leukviz.datasets import data
    from leukviz.ui import _common

    inside = tmp_path / "data" / "cells"
    inside.mkdir(parents=True)
    (inside / "escape").symlink_to("/etc")
    monkeypatch.setenv("LEUKVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(paths.DATA_ROOTS, raising=False)
    assert paths.data_refusal("/etc") is None  # unset: a dashboard on localhost opens what its user names
    monkeypatch.setenv(paths.DATA_ROOTS, str(tmp_path / "data"))
    for spec in ("/etc/shadow", "/root", str(inside / "escape"), str(inside / ".." / ".." / "x.zip")):
        assert "outside the data folders this dashboard may open" in paths.data_refusal(spec)
        with pytest.raises(data.DataError, match="outside the data folders"):
            _common.open_dataset(spec)  # the one gate of every page (URL, folder field, session state)
    for spec in ("demo", str(inside), str(paths.uploads() / "abc" / "cells.zip")):
        assert paths.data_refusal(spec) is None

    values, notes = dashboard.read_url({"dataset": "/root", "epochs": "-5", "lr": "nan", "size": "99999999",
                                        "backbone": "alexnet", "batch": "8", "split": "subject"})
    assert values == {"train_batch_size": 8, "split": "subject"}
    assert len(notes) == 5 and all("was not used" in n and "the default is kept" in n for n in notes)
    assert any("epochs=-5" in n and "from 1 to 500" in n for n in notes)
    assert any("backbone=alexnet" in n and "resnet50" in n for n in notes)


# ---------------------------------------------------------------------------------------------- runs and predictions

@linux_only
def test_predict_all_leaves_degenerate_runs_out_names_odd_files_and_runs_list_shows_unknown_health(tmp_path, capsys,
                                                                                                   monkeypatch):
    from leukviz.cli import predict as cli_predict
    from leukviz.scoring import health

    root = tmp_path / "runs"
    good, bad, odd = make_run(root, seed=0), make_run(root, seed=1), make_run(root, seed=2)
    verdict = {bad.run_id: health.Health(health.DEGENERATE, ("calls every validation cell hem",)),
               odd.run_id: health.Health(health.UNKNOWN, ("too few validation cells to judge",))}
    monkeypatch.setattr(health, "of_run_dir", lambda d: verdict.get(Path(d).name, health.Health(health.HEALTHY)))
    folder = tmp_path / "cells"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not read here")
    os.mkfifo(folder / "b.png")
    loaded: list[str] = []

    class Stop(Exception):
        pass

    def load(chosen, keep_going):
        loaded.extend(r.run_id for r in chosen)
        raise Stop
    monkeypatch.setattr(cli_predict, "_load_models", load)
    with no_hang(), pytest.raises(Stop):
        main(["predict", "--run", "all", str(folder), "--runs-dir", str(root)])
    err = capsys.readouterr().err
    assert sorted(loaded) == sorted([good.run_id, odd.run_id])
    assert f"run {bad.run_id} left out: degenerate (calls every validation cell hem); name it to predict" in err
    assert "skipped 1 file(s) in" in err and "not regular files" in err and "b.png" in err

    assert main(["runs", "list", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(odd.run_id))
    assert "WARNING, health unknown: too few validation cells to judge" in line  # as --json says


def test_an_overlong_overlay_name_is_cut_to_fit_and_the_others_are_written(tmp_path):
    from helpers import png_bytes, tiny_model
    from leukviz.serving import explain

    lm = tiny_model(tmp_path)
    src = tmp_path / "in"
    src.mkdir()
    long_a, long_b, short = src / ("a" * 249 + "1.png"), src / ("a" * 249 + "2.png"), src / "s.png"
    for f in (long_a, long_b, short):
        f.write_bytes(png_bytes())
    records = explain.save_cams(lm, [long_a, long_b, short], tmp_path / "cams")
    written = [Path(r["cam"]) for r in records]
    assert all(r["error"] == "" for r in records) and all(p.exists() for p in written)
    assert len(set(written)) == 3 and all(len(p.name.encode()) <= storage.NAME_MAX for p in written)


def test_a_reading_command_never_says_it_could_not_write_an_input(tmp_path, capsys):
    name = "/" + "b" * 300 + ".png"
    assert main(["predict", "--run", "all", name, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "File name too long" in err and "could not be written" not in err and len(err) < 300


# ---------------------------------------------------------------------------------------------- splits and labels

def test_labels_and_names_that_contradict_each_other_are_named_not_counted(tiny_data, tmp_path):
    import csv

    from leukviz.datasets import cnmc, data

    root = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(tiny_data, root)
    labels = root / cnmc.PRELIM_LABELS
    rows = list(csv.DictReader(labels.open()))
    flipped = {**rows[1], cnmc.LABEL_VALUE: "0" if rows[1][cnmc.LABEL_VALUE].strip() == "1" else "1"}
    with labels.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerows([rows[0], flipped])
    moved = sorted((root / cnmc.TRAINING / "fold_0" / "all").glob("*_all.*"))[0]
    moved.rename(root / cnmc.TRAINING / "fold_0" / "hem" / moved.name)  # hem/UID_…_all.png
    for odd in ("fold_x", "fold_-1"):
        shutil.copytree(root / cnmc.TRAINING / "fold_0", root / cnmc.TRAINING / odd)
    ds = data.open_dataset(str(root), tmp_path / "cache")
    why = {Path(p).name: reason for p, reason in ds.skipped}
    assert why[rows[0][cnmc.LABEL_FILE]].endswith("listed 2 times with one label: counted once")
    assert "listed 2 times with different labels (0, 1)" in why[rows[1][cnmc.LABEL_FILE]]
    assert why[moved.name].startswith("its name says all, its folder hem")
    assert why["fold_x"].startswith("not a fold folder") and why["fold_-1"].startswith("not a fold folder")
    prelim = ds.index[ds.index["set"] == "prelim"]["path"].map(lambda p: Path(p).name).tolist()
    assert prelim.count(rows[0][cnmc.LABEL_FILE]) == 1 and rows[1][cnmc.LABEL_FILE] not in prelim
    assert moved.name not in ds.index["path"].map(lambda p: Path(p).name).tolist()
    assert set(ds.index[ds.index["set"] == "train"]["fold"]) == {0, 1, 2}


def test_dataset_shapes_that_explain_a_refusal_say_so(tiny_data, tmp_path, capsys):
    import zipfile

    from helpers import png_bytes
    from leukviz.datasets import data

    only_test = tmp_path / "only-test"
    for cls in ("all", "hem"):
        (only_test / "test" / cls).mkdir(parents=True)
        (only_test / "test" / cls / "a.png").write_bytes(png_bytes())
    with pytest.raises(data.DataError, match=r"holds test/ but no train/"):
        data.open_dataset(str(only_test), tmp_path / "cache")

    nested = tmp_path / "nested"
    deep = nested.joinpath(*["d"] * 30)
    deep.mkdir(parents=True)
    (deep / "a.png").write_bytes(png_bytes())
    with pytest.raises(data.DataError, match=r"a chain of 30 folders each holding one folder"):
        data.open_dataset(str(nested), tmp_path / "cache")

    clash = tmp_path / "clash.zip"
    with zipfile.ZipFile(clash, "w") as zf:
        zf.writestr("cells/all", b"a file")
        zf.writestr("cells/all/a.png", png_bytes())
        zf.writestr("cells/hem/b.png", png_bytes())
    with pytest.raises(data.DataError, match=r"'cells/all' is both a file and a folder in the zip"):
        data.open_dataset(str(clash), tmp_path / "cache")

    runs_dir = tmp_path / "runs"
    assert main(["train", "--backbone", "googlenet", "--weights", "none", "--data", str(tiny_data), "--split", "folds",
                 "--val-fold", "-1", "--runs-dir", str(runs_dir)]) == 2
    assert "val_fold is a fold number, 0 or more, got -1" in capsys.readouterr().err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # refused before any run folder


def test_stray_one_image_subjects_never_make_up_the_validation_set(tmp_path):
    import numpy as np
    from PIL import Image

    from leukviz.datasets import data

    rng = np.random.default_rng(0)

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)

    root = tmp_path / "cells"
    for cls, subjects in (("all", ("1", "2", "3")), ("hem", ("h1", "h2", "h3"))):
        for s in subjects:
            for i in range(8):
                image(root / cls / f"UID_{s}_{i}_1_{cls}.png")
    for i in range(4):
        image(root / "hem" / f"stray{i}.png")  # names without a subject: four one-image subjects
    ds = data.open_dataset(str(root), tmp_path / "cache")
    assert any("do not follow the C-NMC pattern" in w for w in ds.warnings)
    for seed in range(12):
        sp = data.make_split(ds, "subject", 0.2, seed)
        val = ds.index.loc[sp.val]
        hem = val[val["label"] == ds.classes.index("hem")]
        assert len(hem) and not hem["subject"].str.startswith(data.STRAY_PREFIX).any(), (seed, hem["subject"].tolist())


def test_a_process_the_demo_generator_spawns_never_draws_the_dashboard(monkeypatch):
    """Spawned workers import the entry script again as __mp_main__; drawing the pages there only logged ~130
    "missing ScriptRunContext" warnings per demo generation."""
    import runpy

    from leukviz.ui import app as ui_app

    drawn: list[str] = []
    monkeypatch.setattr(ui_app, "main", lambda: drawn.append("drawn"))
    runpy.run_path(str(REPO / "app.py"), run_name="__mp_main__")
    assert drawn == []
    runpy.run_path(str(REPO / "app.py"), run_name="__main__")
    assert drawn == ["drawn"]
