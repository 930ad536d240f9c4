"""The backbone registry: each entry holds every fact about one backbone (torchvision builder, weights, head,
last stage, CAM layer and stride, training recipe, colour, title), and build_model is the one way to build it."""

from __future__ import annotations

import importlib
import os
import socket
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from leukviz.core import paths
from leukviz.core.errors import LeukvizError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch and torchvision are imported inside the functions that need them: the registry itself is
# read by the CLI's fast paths (a cached run answers in a moment) without paying for their import.


class WeightsUnavailable(LeukvizError, RuntimeError):
    """ImageNet weights are neither cached nor downloadable; the message says what to do."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    title: str
    builder_name: str  # torchvision.models.<builder_name>
    weights_name: str  # torchvision.models.<weights_name>, a WeightsEnum member
    head: str  # dotted path of the final Linear layer, replaced for our classes
    last_stage: tuple[str, ...]  # module prefixes trained with finetune="last" (plus the head)
    cam_layer: str  # dotted path of the layer Grad-CAM hooks
    cam_stride: int  # input pixels per cell of the CAM layer's map (its resolution: image side / stride)
    color: str  # its line in every chart
    # The body's layer groups from input to output, as module prefixes (the head is not in them): with
    # finetune="staged" each group gets its own learning rate, lower for earlier ones (param_groups).
    # Empty: the whole body is one group.
    stages: tuple[tuple[str, ...], ...] = ()
    pretrained_kwargs: dict[str, Any] = field(default_factory=dict)  # with weights=<enum>
    scratch_kwargs: dict[str, Any] = field(default_factory=dict)  # with weights=None
    # The recipe: what this backbone changes in config.preset_defaults' settings, for the paper preset, and
    # for the quick and full presets with pretrained weights or from scratch.
    paper_recipe: dict[str, Any] = field(default_factory=dict)
    pretrained_recipe: dict[str, Any] = field(default_factory=dict)
    scratch_recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def builder(self) -> Callable[..., "nn.Module"]:
        return getattr(torchvision_models(), self.builder_name)

    @property
    def weights(self) -> Any:
        enum, _, member = self.weights_name.partition(".")
        return getattr(getattr(torchvision_models(), enum), member)

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.weights.transforms().mean)  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.weights.transforms().std)  # type: ignore[return-value]


def torchvision_models() -> Any:
    """torchvision.models, imported without importing torch._dynamo on the way.

    torchvision's package import runs `from torch._dynamo.utils import is_compile_supported` at the top of
    torchvision/ops/roi_align.py (a detection op leukviz never calls), and that one line imports TorchDynamo,
    sympy and triton: about 145 MB of resident memory and 1-6 s in every process that builds a model
    (docs/BENCHMARKS.md, "Numbers behind the code"). While torchvision is imported, `torch._dynamo` and
    `torch._dynamo.utils` are stand-ins whose `is_compile_supported` imports the real function when first
    called; any other use of a stand-in loads the real module. The stand-ins are gone from sys.modules as soon
    as the import is done, so a later `import torch._dynamo` (torch.compile) gets the real one."""
    import sys

    if "torchvision" in sys.modules or "torch._dynamo" in sys.modules:
        from torchvision import models
        return models
    import types

    import torch  # noqa: F401 - the stand-ins' parent package

    def real(module: str) -> Any:
        for name in ("torch._dynamo.utils", "torch._dynamo"):
            if getattr(sys.modules.get(name), "__leukviz_stand_in__", False):
                del sys.modules[name]
        return importlib.import_module(module)

    def is_compile_supported(device_type: Any) -> Any:
        return real("torch._dynamo.utils").is_compile_supported(device_type)

    def forward(module: str) -> Callable[[str], Any]:
        def attr(name: str) -> Any:
            if name.startswith("__"):  # what the import system and inspect probe (__file__, __spec__...)
                raise AttributeError(name)
            return getattr(real(module), name)
        return attr

    dynamo, utils = types.ModuleType("torch._dynamo"), types.ModuleType("torch._dynamo.utils")
    dynamo.__path__ = []  # type: ignore[attr-defined]  # a package: its submodule utils can be imported
    dynamo.__getattr__ = forward("torch._dynamo")  # type: ignore[method-assign]
    utils.__getattr__ = forward("torch._dynamo.utils")  # type: ignore[method-assign]
    utils.is_compile_supported = is_compile_supported  # type: ignore[attr-defined]
    dynamo.utils = utils  # type: ignore[attr-defined]
    for m in (dynamo, utils):
        m.__leukviz_stand_in__ = True  # type: ignore[attr-defined]
    sys.modules.setdefault("torch._dynamo", dynamo)
    sys.modules.setdefault("torch._dynamo.utils", utils)
    try:
        from torchvision import models
    finally:
        for name in ("torch._dynamo.utils", "torch._dynamo"):
            if getattr(sys.modules.get(name), "__leukviz_stand_in__", False):
                del sys.modules[name]
    return models


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


register(BackboneSpec(
    name="resnet50", title="ResNet50", builder_name="resnet50", weights_name="ResNet50_Weights.DEFAULT",
    head="fc", last_stage=("layer4",), stages=(("conv1", "bn1", "layer1"), ("layer2",), ("layer3",), ("layer4",)),
    cam_layer="layer4", cam_stride=32, color="#636EFA",
))
# GoogLeNet's ImageNet weights expect transform_input=True (they were trained with a different
# normalisation, which the model re-applies itself); with weights torchvision drops the auxiliary
# classifiers itself, and from scratch we drop them too (aux_logits=False): one head, one output.
register(BackboneSpec(
    name="googlenet", title="GoogLeNet", builder_name="googlenet", weights_name="GoogLeNet_Weights.DEFAULT",
    head="fc", last_stage=("inception5a", "inception5b"),
    stages=(("conv1", "conv2", "conv3"), ("inception3a", "inception3b"),
            ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "aux1", "aux2"),
            ("inception5a", "inception5b")),
    cam_layer="inception5b", cam_stride=32, color="#00CC96",
    pretrained_kwargs={"transform_input": True},
    scratch_kwargs={"aux_logits": False, "transform_input": False, "init_weights": True},
))
# VGG16's CAM hooks the ReLU after the last conv (features.29), not the conv (features.28): that ReLU is
# in place, so a hook on the conv saw post-ReLU activations on CPU (shared storage) but pre-ReLU ones on
# CUDA (copied first), each paired with pre-ReLU gradients. The ReLU's own output is one consistent tensor.
# Its recipe: the seed paper trained it 4 epochs with Adam 3e-3; pretrained it takes a gentler rate; from
# scratch (no batch norm) it stays at the majority class with Adam 1e-3, and with SGD 1e-2 and momentum it
# learnt slowly and unsteadily on real cells (training accuracy 0.51-0.75 after 3 epochs against AdamW 1e-4's
# 0.72-0.82, validation F1 falling 0.10-0.15 between epochs; docs/REALDATA.md), so it gets AdamW at 1e-4.
register(BackboneSpec(
    name="vgg16", title="VGG16", builder_name="vgg16", weights_name="VGG16_Weights.DEFAULT",
    head="classifier.6", last_stage=("features.24", "features.26", "features.28", "classifier"),
    # its five conv blocks (features.N: the convs; the ReLUs and pools hold no weights), the first two as one
    stages=(("features.0", "features.2", "features.5", "features.7"), ("features.10", "features.12", "features.14"),
            ("features.17", "features.19", "features.21"), ("features.24", "features.26", "features.28"),
            ("classifier.0", "classifier.3")),
    cam_layer="features.29", cam_stride=16, color="#EF553B",
    paper_recipe={"epochs": 4, "optimizer": "adam", "lr": 3e-3},
    pretrained_recipe={"lr": 1e-4},
    scratch_recipe={"lr": 1e-4},
))


def get_spec(name: str | BackboneSpec) -> BackboneSpec:
    """A backbone's registry entry by name; a spec already resolved (a run's TrainState.spec) is itself."""
    if isinstance(name, BackboneSpec):
        return name
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def weights_cache_path(spec: BackboneSpec) -> Path:
    """Where torchvision keeps (or will download) this backbone's ImageNet weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.weights.url)


def imagenet_available(spec: BackboneSpec) -> bool:
    return weights_cache_path(spec).is_file()


def _offline_message(spec: BackboneSpec, reason: str) -> str:
    path = weights_cache_path(spec)
    return (f"ImageNet weights for {spec.title} are not cached and could not be downloaded ({reason}). "
            f"torchvision expects the file {path.name} in {path.parent} (from {spec.weights.url}). "
            f"Copy it there, or set TORCH_HOME to a folder that holds hub/checkpoints/{path.name}, "
            f"or train from scratch with --weights none, or pass a weights file with --weights FILE.")


def _get_submodule_parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = dotted.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attr


def _replace_head(model: nn.Module, spec: BackboneSpec, num_classes: int) -> None:
    from torch import nn

    parent, attr = _get_submodule_parent(model, spec.head)
    old = model.get_submodule(spec.head)
    assert isinstance(old, nn.Linear), f"{spec.name}: head {spec.head} is not Linear"
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def _load_imagenet(spec: BackboneSpec) -> nn.Module:
    if not imagenet_available(spec) and paths.offline():
        raise WeightsUnavailable(_offline_message(spec, f"{paths.OFFLINE}=1"))
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # torch.hub has no timeout of its own: never hang on a dead network
    try:
        return spec.builder(weights=spec.weights, **spec.pretrained_kwargs)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        if imagenet_available(spec) and not isinstance(e, (urllib.error.URLError, socket.timeout)):
            raise
        reason = getattr(e, "reason", None) or e.__class__.__name__
        raise WeightsUnavailable(_offline_message(spec, str(reason))) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def ensure_weights(name: str, weights: str) -> None:
    """Fail early, before any run starts, if the weights cannot be had: fetch ImageNet weights into
    torchvision's cache once (or raise WeightsUnavailable), check a weights file exists."""
    spec = get_spec(name)
    if weights == "imagenet":
        if not imagenet_available(spec):
            _load_imagenet(spec)
    elif weights != "none" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights} (use imagenet, none, or a path to a file)")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file without running code from it: safetensors, or torch.load(weights_only=True)."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # an unsafe pickle lands here: weights_only refuses to execute it
        raise ValueError(f"refusing to load {path.name}: not a plain tensor file ({str(e).splitlines()[0]}). "
                         "Use a .safetensors file or a state_dict saved with torch.save.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path.name} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_file_weights(model: nn.Module, spec: BackboneSpec, path: Path) -> None:
    """Load matching tensors; every non-head tensor must match, the head only when its shape does."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith(spec.head + ".")]
    if missing:
        raise ValueError(f"{Path(path).name} does not fit {spec.title}: {len(missing)} tensors missing or of "
                         f"another shape (first: {missing[0]}). Is it a {spec.title} state_dict?")
    # Checked here, where the cause is known: NaN or infinite weights give NaN outputs, which training would
    # report later as a loss that "became nan" (and advise a lower rate, the wrong cure).
    bad = [k for k, v in usable.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ValueError(f"{Path(path).name} holds NaN or infinite values in {len(bad)} tensor(s) (first: {bad[0]}): "
                         "the file is damaged, or was saved from a run that diverged; use another weights file")
    model.load_state_dict(usable, strict=False)


def build_model(name: str, num_classes: int, weights: str = "none", arch: dict[str, Any] | None = None) -> nn.Module:
    """Build a backbone with a head for num_classes: the one build path of training and inference.

    weights: "imagenet" (loaded first: torchvision refuses num_classes with weights, so the head is replaced
    after), "none" (from scratch) or a file (our own checkpoint, head fitting, or an ImageNet-style
    state_dict, head dropped). arch: the builder arguments of a recorded architecture (a checkpoint's
    build_kwargs, rebuilt without weights); by default those the weights choice needs.
    """
    spec = get_spec(name)
    if weights == "imagenet":
        model = _load_imagenet(spec)
    else:
        model = spec.builder(weights=None, **(build_kwargs(name, weights) if arch is None else arch))
    _replace_head(model, spec, num_classes)
    if weights not in ("imagenet", "none"):
        _load_file_weights(model, spec, Path(weights))
    return model


def build_kwargs(name: str, weights: str) -> dict[str, Any]:
    """Builder arguments (for weights=None) that rebuild the architecture a run was trained with: from
    scratch, the scratch ones; ImageNet weights, or an ImageNet-style weights file, the pretrained ones; a
    leukviz checkpoint (a model.safetensors with its sidecar beside it), the ones its weights were trained
    with (a GoogLeNet trained from scratch must not get ImageNet's input transform when fine-tuned further)."""
    spec = get_spec(name)
    if weights == "none":
        return dict(spec.scratch_kwargs)
    recorded = _recorded_kwargs(Path(weights), name) if weights != "imagenet" else None
    return recorded if recorded is not None else {**spec.scratch_kwargs, **spec.pretrained_kwargs}


def _recorded_kwargs(path: Path, name: str) -> dict[str, Any] | None:
    """The builder arguments a leukviz checkpoint's sidecar (filenames.SIDECAR beside it) records for this
    backbone; None for any other file."""
    import json

    from leukviz.core.filenames import CHECKPOINT, SIDECAR

    side = path.with_name(SIDECAR)
    if path.name != CHECKPOINT or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    kwargs = meta.get("build_kwargs") if isinstance(meta, dict) and meta.get("backbone") == name else None
    return dict(kwargs) if isinstance(kwargs, dict) else None


def set_finetune(model: nn.Module, name: str, mode: str) -> list[nn.Module]:
    """Freeze what the fine-tuning depth excludes; returns the frozen modules (kept in eval mode)."""
    spec = get_spec(name)
    if mode == "staged":
        mode = "head"  # its first epochs; the engine unfreezes the rest (engine.begin_epoch)
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return []
    keep = (spec.head,) + (spec.last_stage if mode == "last" else ())
    frozen: list[nn.Module] = []
    for mod_name, module in model.named_modules():
        if not mod_name or any(mod_name == k or mod_name.startswith(k + ".") for k in keep):
            continue
        if any(k.startswith(mod_name + ".") for k in keep):
            continue  # an ancestor of a trainable module: freeze only its own direct params
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        frozen.append(module)
    for mod_name, module in model.named_modules():
        if any(mod_name == k or mod_name.startswith(k + ".") for k in keep):
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
    return frozen


# finetune="staged": the earliest layer group learns at 1/DISCRIMINATIVE_SPREAD of the head's rate, the
# groups between on a geometric ladder (fastai spreads its groups' rates over 100x, ULMFiT divides by 2.6
# per layer; earlier layers hold the generic features a new task should disturb least).
DISCRIMINATIVE_SPREAD = 10.0


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in prefixes)


def param_groups(model: nn.Module, name: str, lr: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups of finetune="staged": one per stage of the body (spec.stages; the
    whole body when it names none), input to output, with rates rising geometrically from
    lr / DISCRIMINATIVE_SPREAD towards lr, then the head at lr. Every parameter is in exactly one group,
    whether it trains now or not (the head-only epochs freeze the body: its groups wait without
    gradients). Each group is named (its "name" key)."""
    spec = get_spec(name)
    owner = {k: k.rsplit(".", 1)[0] for k, _ in model.named_parameters()}
    params = dict(model.named_parameters())
    head = [k for k in params if _in(owner[k], (spec.head,))]
    body = [k for k in params if k not in head]
    stages = spec.stages or (("the body",),)
    n = len(stages)
    groups = []
    for i, prefixes in enumerate(stages):
        members = [k for k in body if _in(owner[k], prefixes)] if spec.stages else body
        body = [k for k in body if k not in members]
        groups.append({"params": [params[k] for k in members], "lr": lr * DISCRIMINATIVE_SPREAD ** (-(n - i) / n),
                       "name": f"stage {i + 1}: {', '.join(prefixes)}"})
    if body:
        raise ValueError(f"{spec.title}'s stages leave {len(body)} parameters without a rate (first: {body[0]})")
    groups.append({"params": [params[k] for k in head], "lr": lr, "name": f"head: {spec.head}"})
    return [g for g in groups if g["params"]]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
