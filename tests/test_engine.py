"""The training loop: honest validation, augmentation, batching, class weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from leukviz.datasets import data
from leukviz.models import config, devices
from leukviz.models.augmentation import augment
from leukviz.models.config import resolve
from leukviz.training import callbacks, checkpoints, engine
from leukviz.training.engine import Dist, epoch_batches, evaluate
from leukviz.training.optim import class_weights


def test_validation_runs_in_eval_mode_without_gradients():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            seen.append((torch.is_grad_enabled(), self.training))
            return self.lin(x.mean(dim=(2, 3)))

    model = Probe().train()
    model.lin.eval()  # a frozen layer: it keeps its statistics, so it stays in eval mode after validation
    imgs = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)
    loss, probs = evaluate(model, imgs, np.array([0, 1] * 5), "resnet50", torch.device("cpu"),
                           criterion=torch.nn.CrossEntropyLoss(), batch_size=4)
    assert seen and all(g is False and t is False for g, t in seen)
    assert model.training, "evaluate restores the training mode"
    assert not model.lin.training, "and each module's own mode: a frozen layer is not put back in training"
    assert probs.shape == (10, 2) and np.allclose(probs.sum(1), 1, atol=1e-5) and loss > 0


def test_augment_is_the_dihedral_group():
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3)
    same = augment(x, torch.tensor([0, 0]), None)
    assert torch.equal(same, x)
    flipped = augment(x, torch.tensor([1, 0]), None)
    assert torch.equal(flipped[0], x[0].flip(1)) and torch.equal(flipped[1], x[1])
    rot = augment(x, torch.tensor([2, 6]), None)
    assert torch.equal(rot[0], torch.rot90(x[0], 1, (0, 1))) and torch.equal(rot[1], torch.rot90(x[1], 3, (0, 1)))
    views = {augment(x[:1], torch.tensor([c]), None).numpy().tobytes() for c in range(8)}
    assert len(views) == 8


def test_one_and_two_processes_see_the_same_global_batches():
    one = epoch_batches(37, 8, seed=3, epoch=2, d=Dist(0, 1))
    r0 = epoch_batches(37, 8, seed=3, epoch=2, d=Dist(0, 2))
    r1 = epoch_batches(37, 8, seed=3, epoch=2, d=Dist(1, 2))
    for k, batch in enumerate(one[:4]):
        assert sorted(batch) == sorted(np.concatenate([r0[k], r1[k]]))
    assert sorted(np.concatenate(one)) == list(range(37))
    assert not np.array_equal(np.concatenate(one), np.concatenate(epoch_batches(37, 8, 3, 3, Dist())))


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0] * 10 + [1] * 30), 2)
    assert w[0] == pytest.approx(2.0) and w[1] == pytest.approx(2 / 3)
    assert float(w[0] * 10) == pytest.approx(float(w[1] * 30))


def test_presets_resolve_and_overrides_win():
    cfg = resolve("vgg16", "quick", "none", epochs=1)
    assert cfg.epochs == 1 and (cfg.optimizer, cfg.lr) == ("adamw", 1e-4)  # VGG16 from scratch: not Adam 1e-3
    paper = resolve("vgg16", "paper", "imagenet")
    assert (paper.image_size, paper.batch_size, paper.epochs) == (128, 128, 4)
    assert resolve("resnet50", "paper", "imagenet").epochs == 5
    from leukviz.models.config import ConfigError
    with pytest.raises(ConfigError, match="choose one of: subject, groups, folds, image"):
        resolve("resnet50", split="random")


def test_run_id_depends_on_config_and_data_not_on_path():
    a = resolve("resnet50", data="/a/b")
    b = resolve("resnet50", data="/c/d")
    assert a.identity("fp1") == b.identity("fp1")
    assert a.identity("fp1") != a.identity("fp2")
    assert a.identity("fp1") != resolve("resnet50", epochs=7).identity("fp1")


def test_split_seed_keeps_a_repeat_on_the_same_split_and_old_ids_unchanged(tiny_data):
    """Repeats differ in seed only: with split_seed they draw the same validation subjects. A split_seed
    equal to the seed, or on a split that draws nothing, is no split_seed at all (the same run id)."""
    base = resolve("resnet50", weights="none", data=str(tiny_data), seed=0)
    assert resolve("resnet50", weights="none", data=str(tiny_data), seed=0, split_seed=0) == base
    assert resolve("resnet50", split="groups", seed=3, split_seed=0).split_seed is None
    repeat = dataclasses.replace(base, seed=5, split_seed=0)
    assert repeat.split_rng_seed == 0 and repeat.identity("fp") != base.identity("fp")
    assert dataclasses.replace(base, seed=5).split_rng_seed == 5
    # the id of a config without split_seed is the hash it had before the field existed (patience and
    # head_epochs came later)
    d = base.to_dict()
    d.pop("data"), d.pop("split_seed"), d.pop("patience"), d.pop("head_epochs")
    blob = json.dumps({"config": d, "dataset": "fp", "preprocess": config.PREPROCESS_VERSION}, sort_keys=True)
    assert base.identity("fp") == hashlib.sha256(blob.encode()).hexdigest()[:12]
    ds = data.open_dataset(tiny_data)
    for seed in (1, 2):
        split = data.make_split(ds, "subject", seed=dataclasses.replace(base, seed=seed, split_seed=0).split_rng_seed)
        assert list(split.val) == list(data.make_split(ds, "subject", seed=0).val)


def test_autocast_choice():
    assert devices.autocast_dtype("fp32", torch.device("cpu")) is None
    assert devices.autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16


# ---------------------------------------------------------------------------------------------- the held-out test set

def _fit_run(cfg, run_dir, cache, logs=None, **kw):
    run_dir.mkdir(parents=True, exist_ok=True)
    return engine.fit(cfg, run_dir, lambda e: None, cache_dir=cache, log=(logs if logs is not None else []).append,
                      **kw)


def _checkpoint_predicts(run_dir, ds, rows, cache):
    """What the saved checkpoint predicts for these rows, through inference (as a user would load it)."""
    from leukviz.serving import inference

    lm = inference.load_model(run_dir, device="cpu")
    images, _ = lm.preprocess.cache(ds, cache)
    return inference.predict_arrays(lm, images[rows])


@pytest.mark.integration  # trains runs of its own
@pytest.mark.parametrize("average", ["none", "ema"])
def test_test_set_is_scored_once_with_the_kept_model(tiny_data, tmp_path, monkeypatch, average):
    """select="best" with epoch 1 made the best: the test predictions are the checkpoint's (epoch 1's
    weights, or their average), not the last epoch's, and the test set never enters the choice."""
    import pandas as pd
    from test_testset import split_tree, tiny_cfg

    from leukviz.core.filenames import RESUME, SIDECAR, TEST_PREDICTIONS

    tree, cache = split_tree(tiny_data, tmp_path / "cells"), tmp_path / "cache"
    scores = iter([0.9, 0.1])  # epoch 1 scores best; the test set's own line gets the real F1
    real_f1 = engine.weighted_f1
    monkeypatch.setattr(engine, "weighted_f1", lambda y, p: next(scores, None) or real_f1(y, p))
    logs: list[str] = []
    cfg = tiny_cfg(tree, epochs=2, average=average)
    _fit_run(cfg, tmp_path / "run", cache, logs)
    run = tmp_path / "run"
    assert json.loads((run / SIDECAR).read_text())["epoch"] == 1
    ds = data.open_dataset(tree, cache)
    df = pd.read_csv(run / TEST_PREDICTIONS)
    rows = ds.index.index[ds.index["path"].isin(df["path"])].to_numpy()
    assert list(df["path"]) == list(ds.index.loc[rows, "path"]) and len(df) == len(ds.test_rows) == 12
    kept = _checkpoint_predicts(run, ds, rows, cache)
    assert np.allclose(df[["prob_all", "prob_hem"]].to_numpy(), kept, atol=1e-5)
    last = checkpoints.load_resume_state(run / RESUME)["model"]  # epoch 2's weights
    model = engine.backbones.build_model("googlenet", 2, "none")
    model.load_state_dict(last)
    _, last_probs = evaluate(model, ds_images(ds, rows, cache), None, "googlenet", torch.device("cpu"))
    assert not np.allclose(last_probs, kept, atol=1e-4), "not the last epoch's model"
    line = [s for s in logs if s.startswith("test (held out, not used to choose anything)")]
    assert len(line) == 1 and "accuracy" in line[0] and "weighted F1" in line[0] and "epoch 1" in line[0]


def ds_images(ds, rows, cache):
    images, _ = data.image_cache(ds, 32, True, cache)
    return images[rows]


@pytest.mark.integration  # trains runs of its own
def test_a_test_folder_changes_nothing_that_is_chosen(tiny_data, tmp_path):
    """The same tree with and without test/: the same validation predictions and kept epoch."""
    import os

    import pandas as pd
    from test_testset import split_tree, tiny_cfg

    from leukviz.core.filenames import PREDICTIONS, SIDECAR, TEST_PREDICTIONS

    out = {}
    for name, test in (("with", True), ("without", False)):
        tree = split_tree(tiny_data, tmp_path / name / "cells", test=test)
        res = _fit_run(tiny_cfg(tree, epochs=2), tmp_path / name / "run", tmp_path / "cache")
        run = tmp_path / name / "run"
        val = pd.read_csv(run / PREDICTIONS)
        val["path"] = val["path"].map(lambda p: os.path.relpath(p, tree))
        out[name] = (res, val, json.loads((run / SIDECAR).read_text())["epoch"], (run / TEST_PREDICTIONS).exists())
    (res_a, val_a, epoch_a, test_a), (res_b, val_b, epoch_b, test_b) = out["with"], out["without"]
    assert test_a and not test_b
    assert res_a == res_b and epoch_a == epoch_b
    pd.testing.assert_frame_equal(val_a, val_b)


def test_a_resume_past_the_last_epoch_still_scores_and_a_failure_does_not_fail_it(tiny_data, tmp_path, monkeypatch):
    import pandas as pd
    from test_testset import split_tree, tiny_cfg

    from leukviz.core.filenames import TEST_PREDICTIONS

    tree, cache, run = split_tree(tiny_data, tmp_path / "cells"), tmp_path / "cache", tmp_path / "run"
    bad = sorted((tree / "test" / "all").iterdir())[0]
    bad.write_bytes(b"not an image")  # one unreadable test image: skipped, the rest scored
    cfg = tiny_cfg(tree)
    res = _fit_run(cfg, run, cache)
    first = pd.read_csv(run / TEST_PREDICTIONS)
    assert len(first) == 11 and str(bad) not in set(first["path"])
    (run / TEST_PREDICTIONS).unlink()  # a crash after the last epoch, before the test set was scored
    logs: list[str] = []
    assert _fit_run(cfg, run, cache, logs, resume=True) == res
    assert any(s.startswith("resuming at epoch 2") for s in logs)
    pd.testing.assert_frame_equal(pd.read_csv(run / TEST_PREDICTIONS), first)
    (run / TEST_PREDICTIONS).unlink()

    def boom(*a, **k):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(checkpoints, "evaluate", boom)
    logs = []
    assert _fit_run(cfg, run, cache, logs, resume=True) == res  # the finished training stands
    assert not (run / TEST_PREDICTIONS).exists()
    assert any("test set not scored (RuntimeError: decoder exploded)" in s for s in logs)


# ---------------------------------------------------------------------------------------------- early stopping

def test_patience_leaves_old_run_ids_unchanged_and_is_validated():
    """patience was added after runs existed: a config without it hashes as before the field existed."""
    base = resolve("resnet50", weights="none", data="demo", seed=0)
    assert base.patience == 0
    d = base.to_dict()
    d.pop("data"), d.pop("split_seed"), d.pop("patience"), d.pop("head_epochs")
    blob = json.dumps({"config": d, "dataset": "fp", "preprocess": config.PREPROCESS_VERSION}, sort_keys=True)
    assert base.identity("fp") == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert dataclasses.replace(base, patience=3).identity("fp") != base.identity("fp")
    with pytest.raises(config.ConfigError, match="patience"):
        resolve("resnet50", patience=-1)
    assert dataclasses.replace(base, select="last", patience=2).keeps_best
    assert not dataclasses.replace(base, select="last").keeps_best


def test_early_stopping_stops_at_the_right_epoch_on_a_made_up_sequence():
    f1 = [0.50, 0.62, 0.60, 0.61, 0.62, 0.70, 0.69]  # the best is epoch 2 (0.62 again at 5 is no better)
    best, stopped = (0.0, 0), None
    for epoch, score in enumerate(f1, start=1):
        if score > best[0]:
            best = (score, epoch)
        if callbacks.stops_early(best[1], epoch, patience=3):
            stopped = epoch
            break
    assert (stopped, best[1]) == (5, 2)
    assert not any(callbacks.stops_early(1, e, patience=0) for e in range(1, 50))  # 0 is off


def test_a_run_with_patience_stops_early_and_keeps_the_best_checkpoint(tiny_data, tmp_path, monkeypatch):
    """F1 0.5, 0.8, 0.6, 0.7 with patience 2: the run ends after epoch 4 of 8, says why, and keeps epoch 2,
    though the preset asks for the last epoch (patience implies the best)."""
    from leukviz.core import events
    from leukviz.core.filenames import SIDECAR

    scores = iter([0.5, 0.8, 0.6, 0.7])
    real_f1 = engine.weighted_f1
    monkeypatch.setattr(engine, "weighted_f1", lambda y, p: next(scores, None) or real_f1(y, p))
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=8, image_size=32, batch_size=64,
                  finetune="head", augment="none", select="last", patience=2)
    written: list[dict] = []
    run = tmp_path / "run"
    run.mkdir()
    result = engine.fit(cfg, run, written.append, cache_dir=tmp_path / "cache", log=lambda s: None)
    assert [e["epoch"] for e in events.epoch_events(written)] == [1, 2, 3, 4]
    stop = events.early_stop(written)
    assert stop and (stop["epoch"], stop["best_epoch"], stop["patience"]) == (4, 2, 2)
    assert stop["reason"].startswith("stopped early at epoch 4: no better validation weighted F1 for 2 epochs")
    assert json.loads((run / SIDECAR).read_text())["epoch"] == 2
    assert result["best_epoch"] == 2 and result["val_f1"] == 0.8


def test_recomputed_batchnorm_statistics_replace_the_stale_running_ones():
    """After a few steps a BatchNorm's running variance still carries its initial 1.0 (momentum 0.1): measured
    anew on training images it is the images' own; a layer that did not train (eval mode) keeps its values."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4))
    model.train()
    model[4].eval()  # frozen: keeps its statistics
    frozen_before = model[4].running_var.clone()
    images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8)
    state = SimpleNamespace(train_model=model, scored=model, feats=None, train_x=images, amp=None,
                            cfg=SimpleNamespace(backbone="googlenet"),
                            spec=engine.backbones.get_spec("googlenet"), device=torch.device("cpu"))
    assert engine.recompute_bn_stats(state) == 1
    with torch.no_grad():
        x = engine.to_input(images, "googlenet", torch.device("cpu"))
        expected = model[0](x).var(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_var, expected, rtol=1e-3)
    assert torch.equal(model[4].running_var, frozen_before) and model[1].momentum == 0.1
    assert model.training and not model[4].training  # modes as they were


def test_the_presets_recompute_batchnorm_statistics_and_old_runs_keep_their_ids():
    cfg = config.resolve("googlenet", "quick", "none", "demo")
    assert cfg.bn_stats == "recomputed" and config.resolve("googlenet", "paper", "none", "demo").bn_stats == "running"
    old = dataclasses.replace(cfg, bn_stats="running")
    assert old.identity("fp") != cfg.identity("fp")
    stored = old.to_dict()
    del stored["bn_stats"]  # a run written before the field: read back, it is the same run
    assert config.RunConfig.from_dict(stored).identity("fp") == old.identity("fp")


# ---------------------------------------------------------------------------------------------- the loop protocol

class _Listener(callbacks.Callback):
    """Records every event it hears (with the epoch), and ends the run after the epoch `stop_after`."""

    def __init__(self, stop_after: int = 0):
        self.heard: list[tuple[str, int]] = []
        self.stop_after = stop_after
        for event in callbacks.EVENTS:
            setattr(self, event, lambda state, event=event: self._hear(event, state))

    def _hear(self, event: str, state) -> None:
        self.heard.append((event, state.epoch))
        if event == "after_epoch" and state.epoch == self.stop_after:
            state.stop_fit = True


def test_fit_announces_named_events_to_extra_callbacks_and_a_callback_ends_the_run(tiny_data, tmp_path):
    """fit(..., callbacks=[...]): an extra listener hears the events in the protocol's order (a step's two
    events inside their epoch), and one that sets stop_fit after epoch 1 of 3 ends the run there, after_fit
    still announced; the run's own callbacks ran too (its checkpoint and epoch event exist)."""
    from leukviz.core import events as ev_types
    from leukviz.core.filenames import CHECKPOINT

    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=3, image_size=32, batch_size=32,
                  average="none", select="best")
    listener, emitted = _Listener(stop_after=1), []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    engine.fit(cfg, run_dir, emitted.append, cache_dir=tmp_path / "cache", log=lambda s: None,
               callbacks=[listener])
    names = [e for e, _ in listener.heard]
    assert names[0] == "before_fit" and names[-1] == "after_fit" and names[1] == "before_epoch"
    steps = [e for e in names if e.endswith("_step")]
    assert steps and steps[::2] == ["before_step"] * (len(steps) // 2) and len(steps) % 2 == 0
    assert names.index("after_epoch") > max(i for i, e in enumerate(names) if e == "after_step")
    assert {epoch for e, epoch in listener.heard if e == "after_epoch"} == {1}  # ended after epoch 1 of 3
    assert [e["epoch"] for e in emitted if e["type"] == ev_types.EPOCH] == [1]
    assert (run_dir / CHECKPOINT).is_file()
    with pytest.raises(ValueError, match="unknown loop event"):
        callbacks.Callbacks([listener])("after_batch", None)
