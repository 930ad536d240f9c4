"""Export: safetensors with its sidecar, ONNX that ONNX Runtime runs like PyTorch, with its preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from leukviz import cli
from leukviz.models import backbones
from leukviz.models.config import resolve
from leukviz.serving import export, inference


@pytest.fixture(scope="module")
def trained(tiny_data, trained_run):
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=1, image_size=64, batch_size=4)
    return trained_run(cfg)


@pytest.fixture(scope="module")
def onnx_export(trained, tmp_path_factory):
    return export.export_run(trained.dir, "onnx", tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.mark.integration
def test_onnx_agrees_with_pytorch_and_has_a_dynamic_batch(onnx_export, trained):
    import onnxruntime as ort

    res = onnx_export
    assert res["agrees"] and res["max_abs_diff"] <= 1e-4 and res["check_images"] >= 2
    lm = inference.load_model(trained.dir)
    paths = pd.read_csv(trained.dir / "val_predictions.csv")["path"][:5]
    imgs = np.stack([inference.prepare(lm, p) for p in paths])
    x = lm.preprocess.normalize(torch.as_tensor(imgs)).contiguous().numpy()
    sess = ort.InferenceSession(res["path"], providers=["CPUExecutionProvider"])
    logits, probs = sess.run(None, {"image": x})
    assert probs.shape == (5, 2) and logits.shape == (5, 2)
    np.testing.assert_allclose(probs, inference.predict_arrays(lm, imgs), atol=1e-4)
    one = sess.run(["probabilities"], {"image": x[:1]})[0]
    np.testing.assert_allclose(one, probs[:1], atol=1e-5)


@pytest.mark.integration
def test_onnx_metadata_documents_the_preprocessing(onnx_export, trained):
    import onnx

    meta = json.loads((trained.dir / "model.json").read_text())
    props = {p.key: p.value for p in onnx.load(onnx_export["path"]).metadata_props}
    assert json.loads(props["leukviz.classes"]) == ["hem", "all"]
    assert json.loads(props["leukviz.mean"]) == pytest.approx(meta["mean"])
    assert json.loads(props["leukviz.std"]) == pytest.approx(meta["std"])
    assert props["leukviz.image_size"] == "64" and props["leukviz.backbone"] == "googlenet"
    assert "64x64" in props["leukviz.preprocessing"] and "crop" in props["leukviz.preprocessing"]
    card = json.loads(props["leukviz.model_card"])  # the model card travels inside the graph too
    assert card["model"]["run_id"] == trained.run_id and "diagnosis" in " ".join(card["limits"])
    assert Path(onnx_export["model_card"]).name == "model.card.md" and Path(onnx_export["model_card"]).exists()


def test_safetensors_export_loads_back_and_predicts_the_same(trained, tmp_path):
    res = export.export_run(trained.dir, "safetensors", tmp_path / "bundle")
    assert res["path"].endswith("model.safetensors")
    side = json.loads(open(res["sidecar"]).read())
    assert side["run_id"] == trained.run_id and side["config"]["backbone"] == "googlenet"
    a, b = inference.load_model(trained.dir), inference.load_model(tmp_path / "bundle")
    img = inference.prepare(a, pd.read_csv(trained.dir / "val_predictions.csv")["path"][0])[None]
    np.testing.assert_array_equal(inference.predict_arrays(a, img), inference.predict_arrays(b, img))
    named = export.export_run(trained.dir, "safetensors", tmp_path / "g.safetensors")
    assert named["sidecar"].endswith("g.json")


def test_bad_format_names_the_choices(trained, tmp_path):
    with pytest.raises(ValueError, match="onnx, safetensors"):
        export.export_run(trained.dir, "tflite", tmp_path / "x")


@pytest.mark.integration
def test_cli_export(trained, onnx_export, tmp_path, capsys, monkeypatch):
    rc = cli.main(["export", "--run", trained.run_id[:8], "--format", "safetensors", "--out", str(tmp_path),
                   "--runs-dir", str(trained.dir.parent), "--json"])
    assert rc == 0 and (tmp_path / "model.safetensors").exists() and (tmp_path / "model.json").exists()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"] == trained.run_id
    # the ONNX report, from the export above rather than a second one (exporting takes seconds)
    monkeypatch.setattr(export, "export_run", lambda run_dir, fmt, out: onnx_export)
    assert cli.main(["export", "--run", trained.run_id, "--format", "onnx", "--out", str(tmp_path),
                     "--runs-dir", str(trained.dir.parent)]) == 0
    text = capsys.readouterr().out
    assert "max |difference| of probabilities" in text and f"{onnx_export['max_abs_diff']:.1e}" in text


def _fake_run(name: str, size: int, run_dir) -> None:
    """A run folder holding a randomly initialised backbone, as training would leave it."""
    from leukviz.training import checkpoints

    torch.manual_seed(0)
    model = backbones.build_model(name, 2, "none")
    spec = backbones.get_spec(name)
    meta = {"backbone": name, "classes": ["hem", "all"], "positive": 1, "image_size": size, "crop": True,
            "build_kwargs": backbones.build_kwargs(name, "none"), "mean": list(spec.mean),
            "std": list(spec.std)}
    run_dir.mkdir(parents=True)
    checkpoints.save_checkpoint(model, run_dir, meta)
    (run_dir / "config.json").write_text(json.dumps({"config": {"backbone": name}}))


@pytest.mark.integration
def test_vgg16_exports_to_onnx_at_the_quick_size(tmp_path):
    """At 64 px VGG16's 7x7 adaptive pooling upsamples a 2x2 map, which the legacy exporter refuses.
    (GoogLeNet is exported above; ResNet50 has no such layer.)"""
    _fake_run("vgg16", 64, tmp_path / "run")
    res = export.export_run(tmp_path / "run", "onnx", tmp_path / "m.onnx")
    assert res["agrees"] and res["max_abs_diff"] <= 1e-4


def test_an_export_cut_short_by_a_full_disk_leaves_nothing_and_says_so_in_one_line(trained, tmp_path, capsys,
                                                                                   monkeypatch):
    """The weights are copied into a temporary file that a full disk cuts short: the target never appears
    (no 1.4 MB stub), no temporary is left, and the CLI says it in one line."""
    import errno
    import os

    def half_then_full(src, dst, *a, **k):
        with open(dst, "wb") as fh:
            fh.write(open(src, "rb").read()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(export.shutil, "copyfile", half_then_full)
    out = tmp_path / "out" / "m.safetensors"
    rc = cli.main(["export", "--run", trained.run_id, "--format", "safetensors", "--out", str(out),
                   "--runs-dir", str(trained.dir.parent)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: the disk is full:") and "nothing half-written" in err[-1]
    assert list(out.parent.iterdir()) == []  # neither the target nor a temporary, nor a sidecar

    def onnx_half_then_full(model, args, f, **k):
        open(f, "wb").write(b"\x08" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f)

    monkeypatch.setattr(torch.onnx, "export", onnx_half_then_full)
    with pytest.raises(OSError):
        export.export_run(trained.dir, "onnx", tmp_path / "onnx" / "m.onnx")
    assert list((tmp_path / "onnx").iterdir()) == []  # no 0-byte .onnx


def test_a_stopped_run_is_exported_with_a_warning_that_it_is_unfinished(trained, tmp_path, capsys):
    import shutil

    from leukviz.runstore import runs

    copy = tmp_path / "runs" / trained.run_id
    shutil.copytree(trained.dir, copy)
    runs.write_status(runs.Run(copy), "stopped", error="stopped by the user")
    rc = cli.main(["export", "--run", trained.run_id, "--format", "safetensors", "--out", str(tmp_path / "x"),
                   "--runs-dir", str(tmp_path / "runs"), "--json"])
    out = capsys.readouterr()
    assert rc == 0 and f"warning: run {trained.run_id} is stopped, not finished: its model is from epoch 1 of 1" in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["unfinished"].startswith(f"run {trained.run_id} is stopped")


def test_export_writes_a_model_card_beside_the_weights_and_in_the_sidecar(trained, tmp_path):
    """The card's numbers are the run's own: the validation weighted F1 of its predictions file, inside its
    interval, the subjects that file holds, the fingerprint of its data; and it says what it is not for."""
    from sklearn.metrics import f1_score

    from leukviz.serving import modelcard

    res = export.export_run(trained.dir, "safetensors", tmp_path / "g.safetensors")
    card_file = tmp_path / "g.card.md"
    assert res["model_card"] == str(card_file) and card_file.exists()
    card = json.loads(open(res["sidecar"]).read())["model_card"]
    val = pd.read_csv(trained.dir / "val_predictions.csv", dtype={"subject": str})
    f1 = f1_score(val["label"], val["pred"], average="weighted")
    scored = card["validation"]["scores"]["weighted_f1"]
    assert scored["value"] == pytest.approx(f1) and scored["low"] <= f1 <= scored["high"]
    assert card["validation"]["interval_unit"] == "subjects"
    by_class = card["validation"]["subjects_per_class"]
    assert sorted(s for subj in by_class.values() for s in subj) == sorted(set(val["subject"]))
    info = json.loads((trained.dir / "config.json").read_text())
    assert card["data"]["fingerprint"] == info["dataset_fingerprint"] and card["model"]["backbone"] == "googlenet"
    assert card["health"]["health"] in ("healthy", "degenerate") and card["calibration"]["temperature"] > 0
    text = card_file.read_text()
    assert "not for diagnosis" in text and info["dataset_fingerprint"] in text and "googlenet" in text
    assert f"{f1:.3f}" in text and all(s in text for s in set(val["subject"]))
    assert text == modelcard.markdown(card)  # the file says what the metadata holds


def test_the_model_card_says_when_there_is_no_held_out_test_set(trained, tmp_path):
    from leukviz.serving import modelcard

    card = modelcard.card(trained.dir)
    has_test = (trained.dir / "test_predictions.csv").exists()
    assert (card["test"] is None) == (not has_test)
    if card["test"] is None:
        assert "None: the run has no such predictions." in modelcard.markdown(card)
