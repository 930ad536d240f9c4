"""Run folders, second pass (issue 15): a damaged file of one run never takes the listing, the pages or the
other runs down, and is named with its repair; a run id stands for everything the run depends on; the
runs folder's paths and ids give clear messages. One tiny run is trained once for the module."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers import link_run, link_runs, tiny_config
from leukviz import cli
from leukviz.app import dashboard
from leukviz.core import filenames, paths
from leukviz.datasets import data, synthetic
from leukviz.models import config
from leukviz.runstore import runfiles, runs, trainer
from leukviz.serving import export

REPO = Path(__file__).resolve().parents[1]
DAMAGED_ID = "dddddddddddd"


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_data, app_runs) -> Path:
    """This module's LEUKVIZ_HOME: a small demo dataset in its cache and the session's finished GoogLeNet run
    on tiny_data (linked, not trained again)."""
    path = tmp_path_factory.mktemp("runfolders-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEUKVIZ_HOME", str(path))
        with pytest.MonkeyPatch.context() as demo:  # the real demo takes half a minute: a smaller one
            small = functools.partial(synthetic.generate_demo, n_subjects=6, image_size=64, workers=1)
            demo.setattr(synthetic, "generate_demo", lambda root, seed=0, **_: small(root, seed=seed))
            data.open_dataset("demo", paths.cache_root())
        link_runs([app_runs["googlenet"]], runs.runs_root())
        yield path


@pytest.fixture()
def good(home, tiny_data, monkeypatch) -> runs.Run:
    monkeypatch.setenv("LEUKVIZ_HOME", str(home))
    run = runs.run_for(tiny_config("googlenet", tiny_data))
    assert run.is_usable and not run.problems, run.problems
    return run


def replace(path: Path, blob: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(blob)


def damages(path: Path) -> dict[str, bytes]:
    blob = path.read_bytes() if path.exists() else a_resume_state()
    return {"garbage": b"\x00\xffnot this file\x01" * 7, "empty": b"", "truncated": blob[: max(1, len(blob) // 2)],
            "wrong-type": b"[1, 2]\n"}


def a_resume_state() -> bytes:
    """A small whole last.pt: a finished run deletes its own, but one kept by an older version can be damaged."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(64)}, "epoch": 2, "step": 0}, buf)
    return buf.getvalue()


FILES = (filenames.CONFIG, filenames.STATUS, filenames.METRICS, filenames.SIDECAR, filenames.CHECKPOINT, filenames.PREDICTIONS,
         filenames.TEST_PREDICTIONS, filenames.RESUME)
# What still works with one damaged file: the model is usable (a note only) or the run is left out. A finished
# run's damaged status.json is a note: its other files say it finished (issue 35), so it reads as finished.
NOTES_ONLY = (filenames.METRICS, filenames.RESUME, filenames.STATUS)


def runs_list(runs_dir: Path, capsys) -> str:
    assert cli.main(["runs", "list", "--runs-dir", str(runs_dir)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", FILES)
def test_every_damaged_file_is_named_and_the_good_run_still_listed(good, tmp_path, capsys, name):
    for kind, blob in damages(good.dir / name).items():
        root = tmp_path / kind
        link_run(good, root)
        bad = link_run(good, root, DAMAGED_ID)
        replace(bad.dir / name, blob)
        if name == filenames.METRICS and kind == "truncated":  # a cut JSON line, and a well-formed incomplete one
            replace(bad.dir / name, blob + b'{"type": "epoch"}\n{"type": "epo')
        out = runs_list(root, capsys)
        assert good.run_id in out and DAMAGED_ID in out, (kind, out)
        if name == filenames.METRICS and kind == "empty":
            continue  # an empty history is not damage
        lines = [line for line in out.splitlines() if DAMAGED_ID in line or line.startswith("    ")]
        assert any(name in line for line in lines) or name == filenames.STATUS and "interrupted" in out, (kind, out)
        usable = [r.run_id for r in dashboard.finished_runs(root)]
        assert good.run_id in usable, (kind, usable)
        assert (DAMAGED_ID in usable) == (name in NOTES_ONLY), (kind, usable, bad.problems)
        if name not in NOTES_ONLY and name != filenames.STATUS:
            assert DAMAGED_ID in [r.run_id for r in dashboard.damaged_runs(root)], kind
        as_json = json.loads(_json_list(root, capsys))
        assert {r["run_id"] for r in as_json["runs"]} == {good.run_id, DAMAGED_ID}


def _json_list(root: Path, capsys) -> str:
    assert cli.main(["runs", "list", "--runs-dir", str(root), "--json"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("change", [
    ("config", [1, 2]), ("config.weights", None), ("created", "yesterday"), ("config.image_size", "big"),
    ("config.backbone", "alexnet"), ("config.lr", -1)])
def test_bad_values_in_config_json_are_named(good, tmp_path, capsys, change):
    key, value = change
    bad = link_run(good, tmp_path, DAMAGED_ID)
    info = json.loads((bad.dir / filenames.CONFIG).read_text())
    if key == "config":
        info = value
    elif key.startswith("config."):
        info["config"][key.split(".", 1)[1]] = value
    else:
        info[key] = value
    replace(bad.dir / filenames.CONFIG, json.dumps(info).encode())
    out = runs_list(tmp_path, capsys)
    assert f"{DAMAGED_ID}" in out and "config.json" in out and "delete the folder" in out
    assert DAMAGED_ID not in [r.run_id for r in dashboard.finished_runs(tmp_path)]


@pytest.mark.parametrize("change", [("val_acc", "high"), ("image_size", 100000), ("classes", []), ("backbone", None),
                                    ("positive", 5), ("mean", "x")])
def test_bad_values_in_model_json_are_named(good, tmp_path, capsys, change):
    bad = link_run(good, tmp_path, DAMAGED_ID)
    meta = json.loads((bad.dir / filenames.SIDECAR).read_text())
    if change[0] == "val_acc":
        meta["metrics"]["val_acc"] = change[1]
    else:
        meta[change[0]] = change[1]
    replace(bad.dir / filenames.SIDECAR, json.dumps(meta).encode())
    out = runs_list(tmp_path, capsys)
    assert "model.json" in out and "--force" in out
    assert DAMAGED_ID not in [r.run_id for r in dashboard.finished_runs(tmp_path)]
    with pytest.raises(runfiles.RunFileError, match="model.json"):
        bad.sidecar()


def test_wrong_shaped_weights_are_a_clear_error(good, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from leukviz.models import backbones

    bad = link_run(good, tmp_path, DAMAGED_ID)
    state = load_file(str(good.dir / filenames.CHECKPOINT))
    state["fc.weight"], state["fc.bias"] = torch.zeros(3, state["fc.weight"].shape[1]), torch.zeros(3)
    (bad.dir / filenames.CHECKPOINT).unlink()
    save_file(state, str(bad.dir / filenames.CHECKPOINT))
    assert any("classifier has 3 outputs" in p for p in bad.problems)
    meta = good.sidecar()
    model = backbones.build_model(meta["backbone"], 2, arch=meta["build_kwargs"])
    with pytest.raises(runfiles.RunFileError, match=r"fc\.weight is \[3, "):
        runfiles.load_weights(model, bad.dir / filenames.CHECKPOINT, bad.run_id)
    runfiles.load_weights(model, good.dir / filenames.CHECKPOINT, good.run_id)  # the good one loads


def test_finished_without_weights_is_not_cached_and_says_why(good, tmp_path):
    bad = link_run(good, tmp_path)
    (bad.dir / filenames.CHECKPOINT).unlink()
    action, why = runs.plan_why(bad)
    assert action == "train" and "model.safetensors" in why and "finished" in why
    assert runs.plan(good) == "cached"


def test_an_incomplete_metrics_line_never_breaks_a_resume(good, tmp_path):
    bad = link_run(good, tmp_path)
    replace(bad.dir / filenames.METRICS, (good.dir / filenames.METRICS).read_bytes() + b'{"type": "epoch"}\n')
    assert len(bad.events()) == len(good.events())
    trainer._truncate_after(bad, 1, 0)  # was KeyError: 'epoch'
    assert not bad.skipped_events()


def test_a_garbage_config_is_rewritten_by_its_configuration_and_never_archived_without_one(good, tmp_path, tiny_data):
    bad = link_run(good, tmp_path)
    replace(bad.dir / filenames.CONFIG, b"garbage")
    with pytest.raises(runfiles.RunFileError):
        runs.archive(bad)
    assert (bad.dir / filenames.CONFIG).read_bytes() == b"garbage"  # nothing moved
    again = runs.run_for(tiny_config("googlenet", tiny_data), tmp_path, good.info["dataset_fingerprint"])
    assert again.dir == bad.dir and again.config == good.config and not again.problems


def test_overview_predict_and_compare_pages_work_beside_a_damaged_run(good, home, tiny_data):
    root = runs.runs_root()
    bad = link_run(good, root, DAMAGED_ID)
    replace(bad.dir / filenames.CHECKPOINT, (good.dir / filenames.CHECKPOINT).read_bytes()[:1000])
    broken = link_run(good, root, "cccccccccccc")
    replace(broken.dir / filenames.CONFIG, b"[1, 2]")
    try:
        for page in (None, "predict", "compare"):
            at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
            at.session_state["dataset"] = str(tiny_data)
            at.run()
            if page:
                at.switch_page(f"leukviz/ui/{page}.py").run()
            assert not at.exception, [e.value for e in at.exception]
            warnings = " ".join(w.value for w in at.warning).replace("\\", "")  # markdown escapes off
            assert DAMAGED_ID in warnings and "model.safetensors" in warnings, warnings
            assert "cccccccccccc" in warnings and "config.json" in warnings
            if page in ("compare", "predict"):
                offered = [o for m in at.multiselect for o in m.options]  # (preselected only when healthy)
                assert any(good.run_id[:6] in str(o) for o in offered), "the good run is offered"
            else:
                assert any(m.value.startswith("Finished") for m in at.markdown)  # (a head-only tiny run may be degenerate)
    finally:
        shutil.rmtree(bad.dir)
        shutil.rmtree(broken.dir)


# ---------------------------------------------------------------------------------------------- run ids

def test_ids_of_imagenet_and_none_configs_are_unchanged():
    """Computed by the code before weights files were hashed by content (commit 754a9c9). The presets now
    recompute BatchNorm statistics (a new recipe, so new ids); with the statistics as they were, the ids are."""
    old = {"bn_stats": "running"}
    assert config.resolve("googlenet", "quick", "imagenet", "demo", **old).identity("fp") == "f087c9cbf680"
    assert config.resolve("googlenet", "quick", "none", "demo", **old).identity("fp") == "e412195b6bb7"
    assert config.resolve("googlenet", "quick", "imagenet", "demo", patience=2, **old).identity("fp") == "b3b541d06768"
    assert config.resolve("googlenet", "quick", "none", "demo", split_seed=5, **old).identity("fp") == "01abc52643cf"
    assert config.resolve("googlenet", "quick", "none", "demo").identity("fp") != "e412195b6bb7"


def test_the_run_id_hashes_the_content_of_a_weights_file(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    cfg = config.resolve("googlenet", "quick", str(weights), "demo")
    first = cfg.identity("fp")
    weights.write_bytes(b"two")
    os.utime(weights, ns=(1, 1))
    assert cfg.identity("fp") != first
    weights.write_bytes(b"one")
    os.utime(weights, ns=(2, 2))
    assert cfg.identity("fp") == first  # the same bytes: the same run


@pytest.mark.integration  # trains runs of its own
def test_resume_after_the_dataset_changed_is_refused(tiny_data, tmp_path, capsys):
    ds = tmp_path / "data"
    shutil.copytree(tiny_data, ds)
    run = runs.run_for(tiny_config("googlenet", ds, epochs=2), tmp_path / "runs")

    def stop_after_one(ev):
        if ev.get("type") == "epoch":
            (run.dir / filenames.STOP).touch()

    with pytest.raises(Exception, match="stopped"):
        trainer.train(run, log=lambda s: None, emit_hook=stop_after_one)
    assert runs.plan(run) == "resume"
    for f in sorted(ds.rglob("*.png"))[:5]:
        f.unlink()
    assert cli.main(["train", "--resume", run.run_id, "--runs-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "not the one this run was created for" in err
    assert len(run.epochs()) == 1  # nothing trained on the new data


# ---------------------------------------------------------------------------------------------- paths and ids

def test_listing_creates_no_file(good, tmp_path, capsys):
    copy = link_run(good, tmp_path / "runs")
    before = sorted(p.name for p in copy.dir.iterdir())
    runs_list(tmp_path / "runs", capsys)
    assert sorted(p.name for p in copy.dir.iterdir()) == before  # no lock file: a read-only home lists its runs
    missing = tmp_path / "nothing-here"
    assert "no runs" in runs_list(missing, capsys) and not missing.exists()


def test_a_runs_folder_that_is_a_file_is_a_clear_message(tmp_path, monkeypatch, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(["runs", "list", "--runs-dir", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setenv("LEUKVIZ_HOME", str(f))
    monkeypatch.delenv("LEUKVIZ_RUNS", raising=False)
    assert cli.main(["runs", "list"]) == 2
    assert "LEUKVIZ_HOME" in capsys.readouterr().err


def test_an_ambiguous_or_empty_run_id_is_refused(good, tmp_path, capsys):
    for name in ("abc111111111", "abc222222222"):
        link_run(good, tmp_path, name)
    with pytest.raises(runs.NoSuchRun, match="ambiguous.*abc111111111, abc222222222"):
        runs.get_run("abc", tmp_path)
    for given in ("", " "):
        with pytest.raises(runs.NoSuchRun, match="give a run id"):
            runs.get_run(given, tmp_path)
    assert runs.get_run("abc1", tmp_path).run_id == "abc111111111"
    assert cli.main(["export", "--run", "abc", "--format", "safetensors", "--out", str(tmp_path / "x"),
                     "--runs-dir", str(tmp_path)]) == 2
    assert "ambiguous" in capsys.readouterr().err


def test_export_onto_an_existing_file_without_extension_is_refused_first(good, tmp_path):
    target = tmp_path / "model"
    target.write_text("keep me")
    with pytest.raises(export.ExportError, match="existing file"):
        export.export_run(good.dir, "onnx", target)
    assert target.read_text() == "keep me"
    res = export.export_run(good.dir, "safetensors", tmp_path / "folder")
    assert Path(res["path"]).exists()


def test_predict_run_all_predicts_with_the_good_runs_and_names_the_damaged_one(good, tiny_data, capsys):
    bad = link_run(good, runs.runs_root(), DAMAGED_ID)
    replace(bad.dir / filenames.SIDECAR, b'{"backbone": "googlenet", "classes": [], "image_size": 100000}')
    try:
        image = str(next(Path(tiny_data).rglob("*.png")))
        assert cli.main(["predict", "--run", "all", image, "--json"]) == 0
        out = capsys.readouterr()
        preds = json.loads(out.out.strip().splitlines()[-1])["predictions"]
        assert [p["run_id"] for p in preds] == [good.run_id] and not preds[0]["error"]
        assert f"left out, damaged: run {DAMAGED_ID}" in out.err and "model.json" in out.err
    finally:
        shutil.rmtree(bad.dir)
