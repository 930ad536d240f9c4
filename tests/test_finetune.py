"""The staged fine-tune schedule: the head alone first (the backbone unchanged, its statistics too), then the
whole network with discriminative rates, lower for earlier layers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import fresh_model
from leukviz.models import backbones, config
from leukviz.models.backbones import BACKBONES
from leukviz.runstore import runs, trainer
from leukviz.training import engine


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_stages_give_every_parameter_one_rate_rising_from_the_input_to_the_head(name):
    model = fresh_model(name)
    groups = backbones.param_groups(model, name, 1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # each parameter exactly once
    rates = [g["lr"] for g in groups]
    assert rates == sorted(rates) and len(set(rates)) == len(rates)  # strictly rising, input to output
    assert rates[-1] == 1e-3 and groups[-1]["name"].startswith("head")
    assert rates[0] == pytest.approx(1e-3 / backbones.DISCRIMINATIVE_SPREAD)
    head = {id(p) for p in model.get_submodule(backbones.get_spec(name).head).parameters()}
    assert {id(p) for p in groups[-1]["params"]} == head
    # the first stage holds the first layer the input meets
    first = next(iter(model.named_parameters()))[1]
    assert any(p is first for p in groups[0]["params"])


def test_a_backbone_without_stages_trains_its_body_as_one_group(monkeypatch):
    spec = dataclasses.replace(backbones.get_spec("resnet50"), name="resnet50_flat", stages=())
    monkeypatch.setitem(BACKBONES, spec.name, spec)
    model = backbones.build_model("resnet50", 2, "none")
    groups = backbones.param_groups(model, spec.name, 1e-3)
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _state(epochs: int = 2, head_epochs: int = 1):
    cfg = config.resolve("resnet50", "quick", "none", finetune="staged", epochs=epochs, head_epochs=head_epochs,
                         image_size=32, batch_size=8, augment="none", average="none", weight_decay=0.0)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 8)
    model = backbones.build_model("resnet50", 2, "none")
    return engine.setup_training(cfg, model, x, y, 2, torch.device("cpu"))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_staged_trains_the_head_alone_first_then_every_layer_at_lower_rates_for_earlier_ones():
    state = _state()
    model, head = state.model, backbones.get_spec("resnet50").head
    start = _snapshot(model)

    # the head-only epoch: the backbone's weights and BatchNorm statistics stay exactly as they were
    engine.begin_epoch(state, 1)
    engine.set_train_mode(state.train_model, state.frozen, False)
    batches = engine.epoch_batches(16, 8, 0, 1, state.dist)
    engine.train_one_epoch(state, batches, 1)
    after_head = _snapshot(model)
    body = [k for k in start if not k.startswith(head + ".")]
    assert body and all(torch.equal(start[k], after_head[k]) for k in body)
    assert not torch.equal(start[f"{head}.weight"], after_head[f"{head}.weight"])
    assert state.opt.param_groups[-1]["lr"] == pytest.approx(1e-3)  # the head at the full rate

    # then the whole network: every stage moves, each by about its own rate (Adam's first step is lr * sign(g))
    engine.begin_epoch(state, 2)
    assert state.frozen == [] and all(p.requires_grad for p in model.parameters())
    engine.set_train_mode(state.train_model, state.frozen, False)
    engine.train_one_epoch(state, batches[:1], 2)
    moved, rates = [], []
    for group in state.opt.param_groups[:-1]:
        steps = torch.cat([(p.detach() - before).abs().flatten()
                           for p in group["params"] for before in [_find(start, model, p)] if p.dim() > 1])
        moved.append(float(steps[steps > 0].median()))
        rates.append(group["initial_lr"])
    assert rates == sorted(rates) and rates[0] < rates[-1] < 1e-3
    for m, r in zip(moved, rates):
        assert m == pytest.approx(r, rel=0.15), (moved, rates)
    bn = next(k for k in body if k.endswith("running_mean"))
    assert not torch.equal(after_head[bn], model.state_dict()[bn])  # statistics update once it all trains


def _find(snapshot: dict[str, torch.Tensor], model: torch.nn.Module, p: torch.Tensor) -> torch.Tensor:
    name = next(k for k, q in model.named_parameters() if q is p)
    return snapshot[name]


def test_the_schedule_holds_the_head_rate_then_decays_every_group_alike():
    state = _state(epochs=3, head_epochs=1)
    spe = state.steps_per_epoch
    seen = []
    for _ in range(3 * spe):
        seen.append([g["lr"] for g in state.opt.param_groups])
        state.opt.step()
        state.sched.step()
    seen = np.array(seen)
    assert np.allclose(seen[:spe], seen[0])  # head-only steps: constant
    ratio = seen / seen[0]
    assert np.allclose(ratio, ratio[:, :1])  # every group scaled by the same factor
    assert ratio[-1, 0] < 0.2 and np.all(np.diff(ratio[spe:, 0]) <= 1e-12)  # the cosine over the rest


def test_staged_is_validated_and_other_depths_ignore_head_epochs():
    with pytest.raises(config.ConfigError, match="head_epochs"):
        config.resolve("googlenet", "quick", "none", finetune="staged", epochs=2, head_epochs=2)
    full = config.resolve("googlenet", "quick", "none", epochs=3)
    assert config.resolve("googlenet", "quick", "none", epochs=3, head_epochs=2) == full  # no other run id
    staged = config.resolve("googlenet", "quick", "none", finetune="staged", epochs=3)
    assert staged.identity("fp") != dataclasses.replace(staged, head_epochs=2).identity("fp")


@pytest.mark.integration
def test_a_staged_run_trains_end_to_end_and_says_when_the_whole_network_starts(tiny_data, tmp_path):
    cfg = config.resolve("googlenet", "quick", "none", str(tiny_data), finetune="staged", epochs=2, head_epochs=1,
                         image_size=32, batch_size=16)
    run = runs.run_for(cfg, tmp_path / "runs")
    lines: list[str] = []
    trainer.train(run, log=lines.append)
    assert run.state == "finished", run.status
    switch = [s for s in lines if "the whole network trains now" in s]
    assert len(switch) == 1 and switch[0].startswith("epoch 2")
    stored = json.loads((run.dir / "config.json").read_text())["config"]
    assert stored["finetune"] == "staged" and stored["head_epochs"] == 1


def test_a_depth_that_needs_pretrained_features_is_cautioned_from_scratch():
    assert "random" in config.cautions(config.resolve("resnet50", "quick", "none", finetune="staged", epochs=3,
                                                      head_epochs=1))[0]
    assert config.cautions(config.resolve("resnet50", "quick", "none")) == []  # full from scratch: fine
