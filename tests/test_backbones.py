"""Every registered backbone builds, runs, trains a step, freezes as asked, and fails clearly offline."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from helpers import fresh_model
from leukviz.models import backbones
from leukviz.models.backbones import BACKBONES, WeightsUnavailable, build_model, set_finetune
from leukviz.models.preprocess import normalize
from leukviz.runstore import names


@pytest.mark.parametrize("name", list(BACKBONES))
def test_builds_forwards_and_trains_one_step(name):
    model = fresh_model(name)  # build_model(name, 2, "none") after manual_seed(0), built once a session
    assert model.get_submodule(BACKBONES[name].head).out_features == 2
    x = normalize(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8), name)
    model.train()
    out = model(x)
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    head = model.get_submodule(BACKBONES[name].head)
    before = head.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    assert not torch.equal(before, head.weight), "one training step must change the head"


@pytest.mark.parametrize("name", list(BACKBONES))
def test_finetune_depths_freeze_the_right_parameters(name):
    model = fresh_model(name)
    spec = BACKBONES[name]
    set_finetune(model, name, "head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(spec.head + ".") for n in trainable)
    set_finetune(model, name, "last")
    last = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable < last
    assert all(any(n.startswith(k + ".") for k in (spec.head, *spec.last_stage)) for n in last)
    set_finetune(model, name, "full")
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_cam_layer_exists(name):
    model = fresh_model(name)
    assert isinstance(model.get_submodule(BACKBONES[name].cam_layer), torch.nn.Module)


def test_offline_imagenet_message_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("LEUKVIZ_OFFLINE", raising=False)

    def no_network(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailable) as e:
        build_model("resnet50", 2, "imagenet")
    msg = str(e.value)
    assert "resnet50-11ad3fa6.pth" in msg and str(tmp_path) in msg
    assert "--weights none" in msg and "Traceback" not in msg


def test_offline_flag_fails_fast_without_touching_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("LEUKVIZ_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("network touched"))
    with pytest.raises(WeightsUnavailable, match="googlenet-1378be20.pth"):
        build_model("googlenet", 2, "imagenet")


def test_imagenet_weights_load_from_torchvision_cache(monkeypatch, tmp_path):
    """A weights file in torchvision's cache is used the normal way (here one this test writes itself)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = BACKBONES["googlenet"]
    ref = spec.builder(weights=None, aux_logits=True, init_weights=True, num_classes=1000)
    path = backbones.weights_cache_path(spec)
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("network touched"))
    monkeypatch.setattr("torch.hub.check_hash", lambda *a, **k: None, raising=False)
    model = build_model("googlenet", 2, "imagenet")
    assert torch.equal(model.conv1.conv.weight, ref.conv1.conv.weight)
    assert model.fc.out_features == 2 and model.transform_input and model.aux1 is None


def test_a_leukviz_checkpoint_as_weights_file_keeps_the_architecture_it_was_trained_with(tmp_path):
    """A GoogLeNet trained from scratch (no ImageNet input transform) fine-tuned further keeps its own input
    transform, recorded in the sidecar; an ImageNet-style state_dict gets the pretrained one."""
    import json

    from leukviz.core import filenames

    src = build_model("googlenet", 2, "none")
    assert not src.transform_input
    run = tmp_path / "run"
    run.mkdir()
    torch.save(src.state_dict(), tmp_path / "imagenet_style.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, run / filenames.CHECKPOINT)
    (run / filenames.SIDECAR).write_text(json.dumps({"backbone": "googlenet",
                                                  "build_kwargs": backbones.build_kwargs("googlenet", "none")}))
    assert not build_model("googlenet", 2, str(run / filenames.CHECKPOINT)).transform_input
    assert build_model("googlenet", 2, str(tmp_path / "imagenet_style.pt")).transform_input
    (run / filenames.SIDECAR).write_text(json.dumps({"backbone": "resnet50", "build_kwargs": {}}))  # another backbone's
    assert build_model("googlenet", 2, str(run / filenames.CHECKPOINT)).transform_input


def test_weights_file_loads_backbone_and_rejects_wrong_architecture(tmp_path):
    src = build_model("resnet50", 2, "none")
    f = tmp_path / "w.pt"
    torch.save(src.state_dict(), f)
    model = build_model("resnet50", 2, str(f))
    assert torch.equal(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert torch.equal(model.fc.weight, src.fc.weight)  # same head shape: kept
    with pytest.raises(ValueError, match="does not fit VGG16"):
        build_model("vgg16", 2, str(f))


def test_unsafe_pickle_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    f = tmp_path / "evil.pt"
    f.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(ValueError, match="refusing to load"):
        backbones.load_state_dict_file(f)


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="resnet50, googlenet, vgg16"):
        backbones.get_spec("alexnet")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_cam_stride_is_the_cam_layers_resolution(name):
    model = fresh_model(name).eval()
    spec = BACKBONES[name]
    seen = []
    model.get_submodule(spec.cam_layer).register_forward_hook(lambda m, i, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        model(normalize(torch.zeros((1, 128, 128, 3), dtype=torch.uint8), name))
    assert seen == [128 // spec.cam_stride]


# A further backbone, registered here alone: nothing else in the code base names it.
EXTRA = backbones.BackboneSpec(
    name="mobilenet_v3_small", title="MobileNetV3-Small", builder_name="mobilenet_v3_small",
    weights_name="MobileNet_V3_Small_Weights.DEFAULT", head="classifier.3",
    last_stage=("features.12", "classifier"), cam_layer="features.12", cam_stride=32, color="#123456")


@pytest.mark.integration
def test_a_backbone_registered_at_test_time_trains_predicts_compares_and_exports(tiny_data, tmp_path,
                                                                                 monkeypatch):
    from leukviz.app import charts, dashboard
    from leukviz.comparison import evaluation, runtable
    from leukviz.models import config
    from leukviz.runstore import runs, trainer
    from leukviz.serving import export, inference, prediction

    monkeypatch.setitem(BACKBONES, EXTRA.name, EXTRA)
    cfg = config.resolve(EXTRA.name, "quick", "none", str(tiny_data), image_size=32, epochs=1, batch_size=16)
    run = runs.run_for(cfg, tmp_path / "runs")
    trainer.train(run, log=lambda s: None)
    assert run.state == "finished" and runs.plan(run) == "cached"

    lm = inference.load_model(run.dir)  # the same build path as training
    assert lm.model.get_submodule(EXTRA.head).out_features == 2 and lm.name.startswith("MobileNetV3-Small")
    image = next((tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))
    pred = prediction.predict_image([lm], image.name, image)
    assert pred.error is None and pred.results[0].predicted in lm.classes
    assert abs(sum(pred.results[0].probs.values()) - 1) < 1e-5
    cams = prediction.cam_views([lm], pred)
    assert isinstance(cams[0], prediction.CamView) and cams[0].grid == (1, 1)  # 32 px / stride 32

    ev = evaluation.evaluate_run(run)
    row = runtable.compare_row(ev)
    assert row["model"] == names.run_name(run) and 0 <= row["val_accuracy"] <= 1
    curves = charts.compare_curves(runtable.histories([run]))
    assert [t.line.color for t in curves.data] == [EXTRA.color]
    roc = charts.roc_figure(runtable.roc_curves([ev]))
    assert roc.data[1].line.color == EXTRA.color
    cards = {c.backbone: c for c in dashboard.backbone_cards(str(tiny_data), tmp_path / "runs")}
    assert cards[EXTRA.name].state == "finished" and cards[EXTRA.name].title == EXTRA.title
    assert "MobileNetV3-Small" in prediction.cam_resolution_text()

    res = export.export_run(run.dir, "onnx", tmp_path / "extra.onnx")
    assert res["agrees"]


def test_a_weights_file_of_nans_is_refused_when_loaded_naming_the_cause(tmp_path):
    from safetensors.torch import save_file

    model = backbones.build_model("googlenet", 2, "none")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["conv1.conv.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nans.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match="holds NaN or infinite values in 1 tensor.*conv1.conv.weight"):
        backbones.build_model("googlenet", 2, str(path))
