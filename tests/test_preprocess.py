"""Preprocessing declared once: the decode the cache and prediction share, the normalisation, the description."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leukviz.datasets import data
from leukviz.models import backbones
from leukviz.models.config import resolve
from leukviz.models.preprocess import Preprocess, normalize


def test_decode_and_cache_are_the_same_pixels(tiny_data, tmp_path):
    ds = data.open_dataset(str(tiny_data), tmp_path)
    pre = Preprocess.of_config(resolve("googlenet", "quick", "none", str(tiny_data), image_size=32))
    images, ok = pre.cache(ds, tmp_path)
    assert ok.all() and images.shape[1:] == (32, 32, 3)
    for i in (0, len(images) - 1):
        np.testing.assert_array_equal(images[i], pre.decode(ds.index["path"][i]))


@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_normalize_uses_the_backbones_mean_and_std(name):
    x = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    spec = backbones.get_spec(name)
    out = normalize(x, name)
    assert out.shape == (1, 3, 4, 4) and out.is_contiguous(memory_format=torch.channels_last)
    expected = (1 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(out[0, :, 0, 0], expected)
    assert torch.equal(Preprocess(name, 4, False).normalize(x), out)


def test_a_checkpoint_describes_its_preprocessing():
    meta = {"backbone": "resnet50", "image_size": 64, "crop": True, "crop_window": 0.75}
    pre = Preprocess.of_checkpoint(meta)
    assert pre.decoding == (64, True, 0.75)
    text = pre.describe(["hem", "all"])
    assert "resize to 64x64" in text and "0.75 x the image's shorter side" in text
    assert str(list(backbones.get_spec("resnet50").mean)) in text and "['hem', 'all']" in text
    old = Preprocess.of_checkpoint({**meta, "crop_window": None})  # a run of preprocessing version 1
    assert old.window is None and "4 % margin" in old.describe(["hem", "all"])
    assert "crop" not in Preprocess.of_checkpoint({**meta, "crop": False}).describe(["hem", "all"])
