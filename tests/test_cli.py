"""The command line as a user types it: train (and the cache), data inspect, predict, evaluate, cv, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leukviz.cli import main
from leukviz.core import paths

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukviz", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("cli-runs")
    args = ("train", "--backbone", "googlenet", "--weights", "none", "--epochs", "1", "--image-size", "32",
            "--data", str(tiny_data), "--runs-dir", str(runs_dir), "--json")
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    t = time.time()
    second = cli(*args)
    return runs_dir, json.loads(first.stdout.strip().splitlines()[-1]), \
        json.loads(second.stdout.strip().splitlines()[-1]), time.time() - t


@pytest.mark.integration  # trains through the CLI in a child process
def test_train_json_then_cached(trained):
    runs_dir, first, second, seconds = trained
    assert first["status"] == "finished" and first["cached"] is False
    assert {"run_id", "run_dir", "status", "cached", "metrics"} <= set(first)
    assert 0.0 <= first["metrics"]["val_acc"] <= 1.0 and "val_f1" in first["metrics"]
    assert second["cached"] is True and second["run_id"] == first["run_id"]
    assert seconds < 15, f"a cached answer took {seconds:.1f}s"
    assert (Path(first["run_dir"]) / "model.safetensors").exists()


@pytest.mark.integration  # trains through the CLI in a child process
def test_runs_list_shows_the_run(trained, capsys):
    runs_dir, first, _, _ = trained
    assert main(["runs", "list", "--runs-dir", str(runs_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert [r["run_id"] for r in rows] == [first["run_id"]] and rows[0]["state"] == "finished"


def test_data_inspect_cnmc_mini(cnmc_mini, capsys):
    assert main(["data", "inspect", str(cnmc_mini), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["per_class"] == {"hem": 27, "all": 30}
    assert info["per_subject"]["h3"]["n"] == 2 and info["prelim"]["n"] == 10
    assert set(info["per_fold"]) == {"0", "1", "2"}


@pytest.mark.integration  # trains through the CLI in a child process
def test_predict_and_evaluate(trained, cnmc_mini, capsys):
    runs_dir, first, _, _ = trained
    img = str(next((cnmc_mini / "training_data" / "fold_1" / "hem").iterdir()))
    assert main(["predict", "--run", first["run_id"][:6], img, "--runs-dir", str(runs_dir), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert len(preds) == 1 and preds[0]["predicted"] in ("hem", "all")
    assert preds[0]["prob_hem"] + preds[0]["prob_all"] == pytest.approx(1.0, abs=1e-5)
    assert main(["evaluate", "--run", first["run_id"], "--data", str(cnmc_mini), "--runs-dir", str(runs_dir),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 10 and res["set"] == "prelim" and 0 <= res["weighted_f1"] <= 1


@pytest.mark.parametrize("args,msg", [
    (["train", "--data", "/no/such/folder", "--weights", "none"], "does not exist"),
    (["train", "--backbone", "googlenet", "--weights", "imagenet", "--data", "SELF"], "googlenet-1378be20.pth"),
    (["train", "--split", "folds", "--val-fold", "7", "--weights", "none", "--data", "SELF"], "fold"),
    (["predict", "--run", "nope", "x.png"], "no such file"),
])
def test_errors_exit_nonzero_with_one_clear_line(args, msg, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    args = [str(tiny_data) if a == "SELF" else a for a in args]
    code = main([*args, "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert code != 0 and last.startswith("error:") and msg in last
    assert "Traceback" not in err


@pytest.mark.integration
def test_cross_validation_over_folds(tiny_data, tmp_path, capsys):
    code = main(["train", "--backbone", "googlenet", "--weights", "none", "--epochs", "1", "--image-size", "32",
                 "--data", str(tiny_data), "--split", "folds", "--cv", "--runs-dir", str(tmp_path), "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and res["status"] == "finished"
    assert [f["fold"] for f in res["folds"]] == [0, 1, 2] and len({f["run_id"] for f in res["folds"]}) == 3
    accs = [f["val_acc"] for f in res["folds"]]
    assert res["summary"]["val_acc"]["mean"] == pytest.approx(sum(accs) / 3)
    import statistics  # the sample sd, as every page and study gives it (it was the population sd here)

    assert res["summary"]["val_acc"]["sd"] == pytest.approx(statistics.stdev(accs)) and res["summary"]["val_acc"]["n"] == 3


@pytest.mark.integration
def test_train_seeds_makes_repeats_on_one_split(tiny_data, tmp_path, capsys):
    """--seeds 2: two cached runs differing only in seed, scored on the same validation cells, then their
    mean and spread; run again, both come back cached."""
    args = ["train", "--backbone", "googlenet", "--weights", "none", "--epochs", "1", "--image-size", "32",
            "--data", str(tiny_data), "--seeds", "2", "--seed", "4", "--runs-dir", str(tmp_path), "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ids = [r["run_id"] for r in res["runs"]]
    assert len(set(ids)) == 2 and all(r["status"] == "finished" for r in res["runs"])
    cfgs = [json.loads((tmp_path / i / "config.json").read_text())["config"] for i in ids]
    assert [c["seed"] for c in cfgs] == [4, 5] and [c["split_seed"] for c in cfgs] == [None, 4]
    vals = [(tmp_path / i / "val_predictions.csv").read_text().splitlines()[1:] for i in ids]
    assert sorted(v.split(",")[0] for v in vals[0]) == sorted(v.split(",")[0] for v in vals[1])
    f1s = [r["metrics"]["val_f1"] for r in res["runs"]]
    assert res["spread"]["val_f1"]["n"] == 2 and res["spread"]["val_f1"]["mean"] == pytest.approx(sum(f1s) / 2)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["run_id"] for r in again["runs"]] == ids
    with pytest.raises(SystemExit):  # argparse refuses it with the valid range
        main([*args, "--seeds", "11"])
    assert "between 1 and 10" in capsys.readouterr().err


@pytest.mark.integration
def test_a_train_val_test_tree_trains_on_its_own_split_and_compares_on_its_test_set(tmp_path, capsys):
    """The ImageFolder / Keras layout: train uses val/ for validation unless told otherwise, scores test/
    once, and compare shows the test rows beside validation."""
    from test_data import TEST, TRAIN, VAL, _tree

    tree = _tree(tmp_path / "tree", {"train": TRAIN, "val": VAL, "test": TEST})
    base = ["train", "--weights", "none", "--epochs", "1", "--image-size", "32", "--data", str(tree),
            "--runs-dir", str(tmp_path / "runs"), "--json"]
    for backbone in ("googlenet", "resnet50"):
        assert main([*base, "--backbone", backbone]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        cfg = json.loads((Path(res["run_dir"]) / "config.json").read_text())["config"]
        assert cfg["split"] == "given"
        val = (Path(res["run_dir"]) / "val_predictions.csv").read_text()
        assert val.count("\n") == 1 + 4 and "/val/" in val and "/train/" not in val
        assert (Path(res["run_dir"]) / "test_predictions.csv").read_text().count("\n") == 1 + 4
    assert main(["compare", "all", "--runs-dir", str(tmp_path / "runs"), "--resamples", "200", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["sets"] == ["val", "test"] and {s["set"] for s in rep["scores"]} == {"val", "test"}


def test_patience_flag_reaches_the_config_and_off_leaves_the_run_id(tiny_data):
    from leukviz import cli as lv_cli

    parse = lv_cli.build_parser().parse_args
    base = ["train", "--backbone", "googlenet", "--data", str(tiny_data), "--weights", "none"]
    on, off = lv_cli._resolve_cfg(parse(base + ["--patience", "3"])), lv_cli._resolve_cfg(parse(base))
    assert (on.patience, off.patience) == (3, 0)
    assert lv_cli._resolve_cfg(parse(base + ["--patience", "0"])).identity("fp") == off.identity("fp")
    assert parse(["lr-find", "--backbone", "googlenet", "--patience", "2", "--steps", "20"]).steps == 20


def test_runs_delete_removes_two_runs_and_says_where_they_went(tmp_path, capsys):
    from helpers import make_run

    a, b = make_run(tmp_path), make_run(tmp_path, seed=1, state="failed")
    kept = make_run(tmp_path, seed=2)
    assert main(["runs", "delete", a.run_id, b.run_id[:8], "--runs-dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    moved = json.loads(out[-1])["deleted"]
    assert [m["run_id"] for m in moved] == [a.run_id, b.run_id]
    assert all(Path(m["archived_to"]).parent == tmp_path / ".archive" and Path(m["archived_to"]).is_dir()
               for m in moved)
    assert not a.dir.exists() and not b.dir.exists()
    assert main(["runs", "list", "--runs-dir", str(tmp_path), "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]] == [kept.run_id]
    assert main(["runs", "delete", kept.run_id, "--runs-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"deleted run {kept.run_id}: moved to {tmp_path / '.archive'}")


def test_runs_delete_deletes_none_when_one_is_unknown_or_training(tmp_path, capsys):
    from helpers import make_run

    done, busy = make_run(tmp_path), make_run(tmp_path, seed=1, state="running")
    assert main(["runs", "delete", done.run_id, "nope", "--runs-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: no run 'nope' in {tmp_path} (runs: "
                                                            f"{', '.join(sorted((done.run_id, busy.run_id)))})"]
    lock = busy.lock()
    lock.acquire()
    try:
        assert main(["runs", "delete", done.run_id, busy.run_id, "--runs-dir", str(tmp_path), "--json"]) == 2
    finally:
        lock.release()
    captured = capsys.readouterr()
    assert f"run {busy.run_id} is training: stop it first" in json.loads(captured.out.strip().splitlines()[-1])["error"]
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and err[0].endswith("nothing was deleted")
    assert done.dir.is_dir() and busy.dir.is_dir()


def test_resume_of_a_finished_run_answers_that_it_is_finished_and_trains_nothing(tmp_path, capsys):
    """Finished runs no longer keep last.pt: a resume used to fall back to training from scratch."""
    import json

    from helpers import make_run

    run = make_run(tmp_path, "googlenet")
    before = (run.dir / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", run.run_id, "--runs-dir", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["cached"] is True and res["status"] == "finished" and res["run_id"] == run.run_id
    assert (run.dir / "metrics.jsonl").read_bytes() == before  # nothing retrained, nothing rewritten


def test_bounded_options_are_checked_before_any_work(capsys):
    for argv in (["lr-find", "--backbone", "googlenet", "--steps", "0"],
                 ["compare", "all", "--resamples", "1"], ["compare", "all", "--resamples", "1000000000"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "out of range" in capsys.readouterr().err


def test_a_fifo_given_to_predict_is_refused_not_read(tmp_path, capsys):
    import os

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    assert main(["predict", "--run", "all", str(fifo), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_an_empty_leukviz_home_is_unset_never_the_current_folder(tmp_path, monkeypatch):
    from leukviz.runstore import runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEUKVIZ_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert paths.home() == tmp_path / "user" / ".leukviz"
    assert runs.runs_root(create=False) == tmp_path / "user" / ".leukviz" / "runs"
    assert paths.cache_root() == tmp_path / "user" / ".leukviz" / "cache"


def test_a_backbone_named_twice_is_one_backbone():
    from leukviz.cli import _backbone_list

    assert _backbone_list("googlenet,googlenet, resnet50") == ("googlenet", "resnet50")


@pytest.mark.integration  # trains through the CLI in a child process
def test_predict_outputs_are_checked_before_the_work_and_written_whole(trained, tiny_data, tmp_path, capsys,
                                                                       monkeypatch):
    """--csv onto a folder, --cam onto a file: one line naming the option, before any model is loaded; a
    table cut short by a full disk leaves no file and says so."""
    import errno

    from leukviz.core import storage
    from leukviz.serving import inference

    runs_dir, first, _, _ = trained
    img = str(sorted((tiny_data / "training_data" / "fold_0" / "all").glob("*.png"))[0])
    loaded = []
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(AssertionError))
    base = ["predict", "--run", first["run_id"], img, "--runs-dir", str(runs_dir)]
    assert main([*base, "--csv", str(tmp_path)]) == 2
    assert "--csv" in capsys.readouterr().err and not loaded
    (tmp_path / "afile").write_text("x")
    assert main([*base, "--cam", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "--cam" in err and "is a file" in err and not loaded
    monkeypatch.undo()

    real = storage._copy_mode

    def full(tmp, path):
        if path.suffix == ".csv":  # the disk fills at the end of the table's temporary (output's last step)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(tmp, path)

    monkeypatch.setattr(storage, "_copy_mode", full)
    table = tmp_path / "t" / "table.csv"
    assert main([*base, "--csv", str(table)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the disk is full:") and not table.exists()
