"""Export: safetensors with its sidecar, ONNX that ONNX Runtime runs like PyTorch, with its preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from leukviz import backbones, cli, export, inference, studies
from leukviz.config import resolve


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "shared-runs"
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=1, image_size=64, batch_size=16)
    return studies.ensure_trained(cfg, root, log=lambda s: None)


@pytest.fixture(scope="module")
def onnx_export(trained, tmp_path_factory):
    return export.export_run(trained.dir, "onnx", tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_agrees_with_pytorch_and_has_a_dynamic_batch(onnx_export, trained):
    import onnxruntime as ort

    res = onnx_export
    assert res["agrees"] and res["max_abs_diff"] <= 1e-4 and res["check_images"] >= 2
    lm = inference.load_model(trained.dir)
    paths = pd.read_csv(trained.dir / "val_predictions.csv")["path"][:5]
    imgs = np.stack([inference.prepare(lm, p) for p in paths])
    x = backbones.normalize(torch.as_tensor(imgs), lm.backbone).contiguous().numpy()
    sess = ort.InferenceSession(res["path"], providers=["CPUExecutionProvider"])
    logits, probs = sess.run(None, {"image": x})
    assert probs.shape == (5, 2) and logits.shape == (5, 2)
    np.testing.assert_allclose(probs, inference.predict_arrays(lm, imgs), atol=1e-4)
    one = sess.run(["probabilities"], {"image": x[:1]})[0]
    np.testing.assert_allclose(one, probs[:1], atol=1e-5)


def test_onnx_metadata_documents_the_preprocessing(onnx_export, trained):
    import onnx

    meta = json.loads((trained.dir / "model.json").read_text())
    props = {p.key: p.value for p in onnx.load(onnx_export["path"]).metadata_props}
    assert json.loads(props["leukviz.classes"]) == ["hem", "all"]
    assert json.loads(props["leukviz.mean"]) == pytest.approx(meta["mean"])
    assert json.loads(props["leukviz.std"]) == pytest.approx(meta["std"])
    assert props["leukviz.image_size"] == "64" and props["leukviz.backbone"] == "googlenet"
    assert "64x64" in props["leukviz.preprocessing"] and "crop" in props["leukviz.preprocessing"]


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


def test_cli_export(trained, tmp_path, capsys):
    rc = cli.main(["export", "--run", trained.run_id[:8], "--format", "onnx", "--out", str(tmp_path),
                   "--runs-dir", str(trained.dir.parent)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "max |difference| of probabilities" in text and (tmp_path / "model.onnx").exists()
