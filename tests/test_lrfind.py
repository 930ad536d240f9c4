"""The learning-rate finder: the sweep's rates, the smoothing, the suggestion rule, the cache, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from leukviz import cli, config, lrfind


def synthetic_curve(lrs: np.ndarray) -> np.ndarray:
    """A typical finder curve: flat, a fall centred on 1e-4, the lowest loss near 1e-2, then a blow-up."""
    x = np.log10(lrs)
    fall = 1.0 / (1.0 + np.exp(-(x + 4) * 3))  # 0 -> 1 around 1e-4
    rise = np.exp((x + 2) * 2.5) * 0.05  # grows past 1e-2
    return 2.0 - 1.5 * fall + rise


def test_the_sweep_is_geometric_from_start_to_end():
    r = lrfind.rates(1e-7, 1.0, 100)
    assert r[0] == pytest.approx(1e-7) and r[-1] == pytest.approx(1.0) and len(r) == 100
    assert np.allclose(r[1:] / r[:-1], r[1] / r[0])


def test_smoothing_is_bias_corrected_and_keeps_the_minimum_in_place():
    assert lrfind.ema([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])  # no pull towards 0
    assert lrfind.smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    noisy = 1.0 + np.random.default_rng(0).normal(0, 0.3, 300)
    assert np.std(lrfind.smooth(noisy)[20:-20]) < 0.2 * np.std(noisy)
    v = np.abs(np.arange(101) - 60.0)  # a V with its lowest point at step 60
    assert int(np.argmin(lrfind.smooth(v))) == 60 and int(np.argmin(lrfind.ema(v))) > 60


def test_the_suggestion_on_a_synthetic_curve_is_a_tenth_of_the_minimum():
    lrs = lrfind.rates(1e-7, 1.0, 200)
    loss = synthetic_curve(lrs)
    at_min = lrs[int(np.argmin(loss))]
    assert 3e-3 < at_min < 3e-2  # the curve is what it says
    s = lrfind.suggest(lrs, loss)
    assert s == pytest.approx(at_min / 10)
    assert 3e-4 < s < 3e-3  # on the fall, below the blow-up
    # noise and smoothing leave it within a factor of two
    noisy = loss + np.random.default_rng(1).normal(0, 0.05, len(loss))
    assert at_min / 20 < lrfind.suggest(lrs, lrfind.smooth(noisy)) < at_min / 5
    # a low first step (few losses averaged) is not taken for the minimum
    early = loss.copy()
    early[2] = 0.1
    assert lrfind.suggest(lrs, early) == pytest.approx(s)


def test_the_cache_key_ignores_what_the_sweep_does_not_use():
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    same = dataclasses.replace(cfg, lr=3e-4, epochs=9, patience=2, select="best")
    assert lrfind.cache_key(cfg, "fp") == lrfind.cache_key(same, "fp")
    assert lrfind.cache_key(cfg, "fp") != lrfind.cache_key(dataclasses.replace(cfg, batch_size=8), "fp")
    assert lrfind.cache_key(cfg, "fp") != lrfind.cache_key(cfg, "other data")


def test_lr_find_cli_runs_end_to_end_and_is_cached(tiny_data, capsys):
    args = ["lr-find", "--backbone", "googlenet", "--data", str(tiny_data), "--weights", "none",
            "--image-size", "32", "--batch-size", "32", "--steps", "30", "--json"]
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["cached"] is False and 3 <= res["steps_done"] <= 30
    assert len(res["rates"]) == len(res["losses"]) == len(res["smoothed"]) == res["steps_done"]
    assert res["rates"][0] == pytest.approx(lrfind.START)
    assert res["rates"][0] <= res["suggestion"] <= res["rates"][-1]
    assert res["suggestion"] == pytest.approx(lrfind.suggest(res["rates"], res["smoothed"]))
    assert cli.main(args[:-1] + ["--lr", "0.01", "--json"]) == 0  # another rate: the same sweep, cached
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["cached"] is True and again["suggestion"] == res["suggestion"]
    assert cli.main(args[:-1]) == 0
    assert "suggested learning rate" in capsys.readouterr().out
