"""Prediction streamed in batches (serving.stream): every row written for a folder larger than its batch, the
same table and summary as predicting it whole, the summary kept as counts, progress with time left."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers import tiny_config
from leukviz.cli import main
from leukviz.serving import inference, prediction, stream

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_run(trained_run, tiny_data):
    return trained_run(tiny_config("googlenet", tiny_data))


@pytest.fixture()
def folder(tiny_data, tmp_path):
    """11 cells with C-NMC names in class folders (truth and subjects known) and one unreadable file."""
    root = tmp_path / "cells"
    for cls in ("all", "hem"):
        (root / cls).mkdir(parents=True)
        for f in sorted((tiny_data / "training_data" / "fold_0" / cls).glob("*.png"))[:5 + (cls == "all")]:
            shutil.copy(f, root / cls / f.name)
    (root / "hem" / "broken.png").write_bytes(b"not an image")
    return root


def _files(folder):
    return sorted(str(f) for f in folder.rglob("*.png"))


def test_predict_writes_every_row_for_a_folder_larger_than_its_batch(model_run, folder, shared_runs, tmp_path,
                                                                      capsys):
    out = tmp_path / "table.csv"
    code = main(["predict", "--run", model_run.run_id, str(folder), "--csv", str(out), "--batch-size", "3",
                 "--runs-dir", str(shared_runs)])
    assert code == 0
    err = capsys.readouterr().err
    assert "predicted 12 of 12 images (100%)" in err
    streamed = pd.read_csv(out, keep_default_na=False)
    files = _files(folder)
    assert len(streamed) == len(files) == 12 and sorted(streamed["file"]) == files
    whole = inference.predict_table([inference.load_model(model_run.dir)], files)
    assert out.read_bytes() == prediction.table_csv(whole)  # row for row what predicting it whole writes
    assert (streamed["error"] != "").sum() == 1


def test_the_running_summary_is_the_batch_summary(model_run, folder):
    lm = inference.load_model(model_run.dir)
    files = _files(folder)
    res = stream.predict_stream([lm], files, batch_size=4)
    expected = prediction.batch_summary(inference.predict_table([lm], files), lm.classes)
    assert res.summary == expected
    assert res.rows == 12 and res.errors == 1 and res.summary[0]["unreadable"] == 1
    assert res.summary[0]["subjects"] and res.summary[0]["labelled"] == 11


def test_json_is_streamed_as_one_object(model_run, folder, shared_runs, capsys):
    assert main(["predict", "--run", model_run.run_id, str(folder), "--json", "--batch-size", "5",
                 "--runs-dir", str(shared_runs)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["predictions"]) == 12 and out["cams"] == []
    bad = [p for p in out["predictions"] if p["error"]]
    assert len(bad) == 1 and bad[0]["predicted"] is None
    assert out["summary"][0]["images"] == 12 and isinstance(out["predictions"][0]["ood_reasons"], list)


def test_a_table_cut_short_leaves_no_file(model_run, folder, shared_runs, tmp_path, capsys, monkeypatch):
    """The disk fills at the second batch: no half table, the error in one line, and a --json line stays whole."""
    real = inference.table_rows
    calls = []

    def full(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "t.csv"))
        return real(*a, **k)

    monkeypatch.setattr(inference, "table_rows", full)
    table = tmp_path / "t.csv"
    assert main(["predict", "--run", model_run.run_id, str(folder), "--csv", str(table), "--batch-size", "5",
                 "--json", "--runs-dir", str(shared_runs)]) == 2
    assert not table.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name or p.name.startswith(".t")]
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["error"].startswith("the disk is full")


def test_progress_says_how_long_is_left():
    t = [0.0]
    written = []
    p = stream.ProgressLine(100, written.append, tty=False, every=10, clock=lambda: t[0])
    t[0] = 5.0
    p.update(25)  # the first line: at once
    t[0] = 6.0
    p.update(30)  # within 10 s of the last: not written
    t[0] = 20.0
    p.update(100)  # the last: always
    assert len(written) == 2
    assert written[0].startswith("predicted 25 of 100 images (25%) · 5.0 images/s · about 15") and "left" in written[0]
    assert "100 of 100" in written[1] and "left" not in written[1]


def test_batches_cover_every_file_once():
    files = [str(i) for i in range(10)]
    assert [list(b) for b in stream.batches(files, 4)] == [files[:4], files[4:8], files[8:]]
    with pytest.raises(ValueError):
        list(stream.batches(files, 0))


@pytest.mark.integration
def test_predict_loads_no_compiler_statistics_or_learning_libraries(model_run, folder, shared_runs, tmp_path):
    """What predicting costs in memory is torch, the model and a batch: neither TorchDynamo (with sympy and triton,
    about 145 MB that torchvision's import pulls in; backbones.torchvision_models keeps it out), nor scipy or
    scikit-learn (about 70 MB, for scores a prediction does not compute). A fresh process, as the CLI runs."""
    import subprocess
    import sys

    code = ("import sys\nfrom leukviz.cli import main\n"
            f"rc = main(['predict', '--run', {model_run.run_id!r}, {str(folder)!r}, '--json', '--batch-size', '5', "
            f"'--csv', {str(tmp_path / 't.csv')!r}, '--runs-dir', {str(shared_runs)!r}])\n"
            "heavy = ('torch._dynamo', 'sympy', 'triton', 'scipy', 'sklearn')\n"
            "print('LOADED', rc, [m for m in heavy if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "LOADED 0 []"
    # the stand-ins are gone once torchvision is in: a later torch.compile gets the real TorchDynamo
    check = ("import sys\nfrom leukviz.models import backbones\nnet = backbones.build_model('googlenet', 2)\n"
             "assert 'torch._dynamo' not in sys.modules\nimport torch, torch._dynamo\n"
             "assert callable(torch._dynamo.optimize) and not hasattr(torch._dynamo, '__leukviz_stand_in__')\n"
             "from torchvision.ops import roi_align\n"
             "print(tuple(roi_align(torch.rand(1, 3, 8, 8), torch.tensor([[0, 0., 0., 4., 4.]]), 2).shape))\n")
    out = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "(1, 3, 2, 2)", out.stderr[-2000:]


def test_the_cli_process_ends_at_once_after_its_exit_handlers(tmp_path):
    """cli.finish: with torch imported, the atexit handlers run and the output is flushed, then the process
    ends with the command's status, skipping the native libraries' exit-time destructors."""
    import subprocess
    import sys

    mark = tmp_path / "atexit-ran"
    code = ("import atexit, sys, types\nsys.modules['torch'] = types.ModuleType('torch')\n"
            "from leukviz.cli import finish\n"
            f"atexit.register(lambda: open({str(mark)!r}, 'w').write('yes'))\n"
            "sys.stdout.write('unflushed output'); sys.stderr.write('and its error line')\n"
            "finish(3)\nprint('never')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout == "unflushed output" and out.stderr == "and its error line"
    assert mark.read_text() == "yes"
