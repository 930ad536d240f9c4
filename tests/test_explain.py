"""Grad-CAM heat maps and overlays for every backbone, and the error gallery of a run."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import fresh_model
from leukviz.models.backbones import BACKBONES
from leukviz.models.config import resolve
from leukviz.serving import explain, inference


@pytest.fixture(scope="module")
def trained(tiny_data, trained_run):
    """googlenet trained one epoch at 64 px (a 2x2 CAM grid); the other test modules reuse this run.

    Batch 4 gives 68 steps: enough for BatchNorm's running statistics to leave their initial values. After
    17 steps (batch 16) a net trained from scratch is input-independent in eval mode, and so is its CAM.
    """
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=1, image_size=64, batch_size=4)
    return trained_run(cfg)


@pytest.fixture(scope="module")
def lm(trained):
    return inference.load_model(trained.dir)


def centre_of_mass(heat: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: heat.shape[0], : heat.shape[1]]
    return np.array([(heat * ys).sum(), (heat * xs).sum()]) / heat.sum()


# ------------------------------------------------------------------------------- a CAM to reason about

class Brightness(nn.Module):
    """Class 'all' scores the mean brightness of the frame; its Grad-CAM is the brightness map itself."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 27)
            self.features[0].bias.zero_()  # black (normalised below 0) -> 0 after the ReLU; the cell -> > 0
            self.fc.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture()
def toy(monkeypatch, tmp_path):
    # ResNet50's entry with another name and CAM layer: its preprocessing, the toy's hooked layer
    spec = dataclasses.replace(BACKBONES["resnet50"], name="toy", title="Toy", cam_layer="features.1")
    monkeypatch.setitem(BACKBONES, "toy", spec)
    meta = {"backbone": "toy", "classes": ["hem", "all"], "image_size": 64, "crop": True}
    model = Brightness().to(memory_format=torch.channels_last).eval()
    return inference.LoadedModel(model, meta, torch.device("cpu"), tmp_path)


def cell_at(oy: int, ox: int, size: int = 64, cell: int = 24) -> np.ndarray:
    """A synthetic stained cell (pale cytoplasm, violet nucleus) on black, its top-left corner at (oy, ox)."""
    yy, xx = np.mgrid[:cell, :cell] - (cell - 1) / 2
    r = np.hypot(yy, xx)
    img = np.zeros((cell, cell, 3), np.uint8)
    img[r <= cell / 2] = (200, 170, 220)
    img[r <= cell / 3] = (110, 60, 160)
    frame = np.zeros((size, size, 3), np.uint8)
    frame[oy:oy + cell, ox:ox + cell] = img
    return frame


def test_the_heat_map_follows_the_cell(toy):
    left, right = cell_at(20, 2), cell_at(20, 38)
    top, bottom = cell_at(2, 20), cell_at(38, 20)
    maps = {k: explain.gradcam(toy, v, "all") for k, v in
            {"left": left, "right": right, "top": top, "bottom": bottom}.items()}
    com = {k: centre_of_mass(h) for k, h in maps.items()}
    # the cell moved 36 px; the heat moves the same way, most of that distance, not transposed
    assert com["right"][1] - com["left"][1] > 25 and abs(com["right"][0] - com["left"][0]) < 3
    assert com["bottom"][0] - com["top"][0] > 25 and abs(com["bottom"][1] - com["top"][1]) < 3
    heat = maps["left"]
    assert heat.shape == (64, 64) and heat.dtype == np.float32 and heat.max() == pytest.approx(1.0)
    inside = left.max(axis=2) > 0
    assert heat[inside].mean() > 5 * heat[~inside].mean()


def test_heat_map_comes_back_at_the_size_of_the_image_given(toy):
    big = np.asarray(Image.fromarray(cell_at(20, 38)).resize((200, 200)))
    heat = explain.gradcam(toy, big, 1)
    assert heat.shape == (200, 200)
    assert centre_of_mass(heat)[1] > 110  # still on the right


# ------------------------------------------------------------------------------- every backbone

def _random_model(name: str, size: int) -> inference.LoadedModel:
    model = fresh_model(name).to(memory_format=torch.channels_last).eval()
    meta = {"backbone": name, "classes": ["hem", "all"], "image_size": size, "crop": True}
    return inference.LoadedModel(model, meta, torch.device("cpu"), Path("random"))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_cam_layer_gives_a_map_that_in_place_relus_do_not_corrupt(name, tiny_data):
    """The hook sees one consistent tensor: the same map with every ReLU made out-of-place (a hook on a
    layer whose output a later in-place ReLU overwrites would pair post-ReLU activations with pre-ReLU
    gradients on CPU, and pre-ReLU ones on CUDA)."""
    lm = _random_model(name, 64)
    img = inference.prepare(lm, sorted(Path(tiny_data).rglob("*.png"))[0])
    plain = copy.deepcopy(lm)
    for m in plain.model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    maps = [explain.gradcam(lm, img, t) for t in (0, 1)]
    for t, heat in enumerate(maps):
        assert heat.shape == (64, 64) and np.isfinite(heat).all()
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        np.testing.assert_allclose(heat, explain.gradcam(plain, img, t), atol=1e-4)
    assert any(h.max() - h.min() > 0.05 for h in maps), "neither class gives a map with any structure"
    grid = {"resnet50": (2, 2), "googlenet": (2, 2), "vgg16": (4, 4)}.get(name)
    assert grid is None or explain.explain_image(lm, img)["grid"] == grid  # the last spatial layer of each
    assert all(p.requires_grad for p in lm.model.parameters()), "requires_grad of the weights is restored"


# ------------------------------------------------------------------------------- a trained run

def test_cam_of_a_trained_model_has_the_image_size_and_is_not_constant(lm, trained):
    paths = pd.read_csv(trained.dir / "val_predictions.csv")["path"][:3]
    for p in paths:
        img = inference.prepare(lm, p)
        maps = [explain.gradcam(lm, img, t) for t in (0, 1)]
        for heat in maps:
            assert heat.shape == img.shape[:2] == (64, 64)
            assert heat.min() >= 0 and heat.max() <= 1
        # A class with no positive evidence anywhere has an all-zero map (ReLU); the other one has structure.
        assert max(h.std() for h in maps) > 0.05
    np.testing.assert_array_equal(explain.gradcam(lm, img, "all"), explain.gradcam(lm, img, 1))
    with pytest.raises(ValueError, match="hem, all"):
        explain.gradcam(lm, img, "blast")


def test_cam_works_inside_inference_mode(lm, trained):
    img = inference.prepare(lm, pd.read_csv(trained.dir / "val_predictions.csv")["path"][0])
    with torch.inference_mode():
        heat = explain.gradcam(lm, img)
    np.testing.assert_allclose(heat, explain.gradcam(lm, img), atol=1e-6)


def test_overlay_and_explain_image(lm, trained):
    img = inference.prepare(lm, pd.read_csv(trained.dir / "val_predictions.csv")["path"][0])
    res = explain.explain_image(lm, img)
    ov = res["overlay"]
    assert res["grid"] == (2, 2)  # GoogLeNet's last block sees 1/32 of the side
    assert ov.shape == img.shape and ov.dtype == np.uint8 and not np.array_equal(ov, img)
    # the one pass gives the same prediction as the prediction path
    prob = inference.predict_arrays(lm, img[None])[0]
    assert res["predicted"] == lm.classes[int(prob.argmax())]
    assert res["probs"]["all"] == pytest.approx(float(prob[1]), abs=1e-5)
    cold = explain.overlay(img, np.zeros((16, 16), np.float32))  # a heat map of another size is resized
    assert cold.shape == img.shape


def test_save_cams_writes_one_png_per_image_and_reports_unreadable_files(lm, trained, tmp_path):
    paths = pd.read_csv(trained.dir / "val_predictions.csv")["path"][:2].tolist()
    twin = tmp_path / "other" / Path(paths[0]).name  # same stem in another folder
    twin.parent.mkdir()
    twin.write_bytes(Path(paths[0]).read_bytes())
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    recs = explain.save_cams(lm, [*paths, str(twin), str(bad)], tmp_path / "cams")
    written = [r["cam"] for r in recs if r["cam"]]
    assert len(written) == 3 and len(set(written)) == 3
    assert recs[-1]["cam"] is None and "broken.png" in recs[-1]["error"]
    with Image.open(written[0]) as im:
        assert im.size == (explain.DISPLAY_MIN, explain.DISPLAY_MIN) and im.mode == "RGB"


def test_top_losses_puts_the_most_confidently_wrong_first(trained):
    df = explain.top_losses(trained.dir, k=1000)
    preds = pd.read_csv(trained.dir / "val_predictions.csv")
    assert len(df) == len(preds)
    assert list(df.columns) == ["path", "subject", "true", "predicted", "confidence", "prob_true", "loss",
                                "correct"]
    n_wrong = int((~df["correct"]).sum())
    assert n_wrong == int((preds["label"] != preds["pred"]).sum())
    assert not df["correct"][:n_wrong].any()  # wrong first
    assert df["loss"][:n_wrong].is_monotonic_decreasing and df["loss"][n_wrong:].is_monotonic_decreasing
    row = df.iloc[0]
    assert row["loss"] == pytest.approx(-math.log(row["prob_true"]))
    assert set(df["true"]) <= {"hem", "all"}
    assert len(explain.top_losses(trained.dir, k=3)) == 3
    assert explain.top_losses(trained.dir, k=1000, only_wrong=True)["correct"].sum() == 0


def test_maps_use_a_perceptual_colour_map_with_its_scale():
    from leukviz.serving import explain

    bar = explain.colour_bar(64, 4)
    assert bar.shape == (4, 64, 3) and bar.dtype == np.uint8
    lum = bar[0].astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(lum) >= -1.0) and lum[-1] - lum[0] > 100  # viridis: brightness rises steadily (jet does not)
    hot = explain.overlay(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8)), alpha=1.0)
    assert tuple(hot[0, 0]) == tuple(bar[0, -1])  # the highest heat is the scale's right end
