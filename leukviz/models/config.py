"""Run configuration: one frozen dataclass, the presets, and the rules that resolve them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from leukviz.core.errors import LeukvizError

PRESETS = ("quick", "paper", "full")
WEIGHTS_CHOICES = ("imagenet", "none")  # or a path to a weights file
SPLITS = ("subject", "groups", "folds", "image", "given")  # given: the dataset's own validation folder
FINETUNE = ("full", "last", "head", "staged")  # staged: the head alone first, then all layers (discriminative rates)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine")
AUGMENT = ("none", "flips", "full")
CLASS_BALANCE = ("weighted_loss", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AVERAGING = ("none", "ema")
SELECT = ("last", "best")
BN_STATS = ("running", "recomputed")
# The choices of every RunConfig field that has them, in the order validate() checks them; the CLI offers them.
CHOICES = {"split": SPLITS, "finetune": FINETUNE, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "augment": AUGMENT,
           "class_balance": CLASS_BALANCE, "precision": PRECISIONS, "average": AVERAGING, "select": SELECT, "bn_stats": BN_STATS}
# What a field means, where its name alone does not say (the CLI's help).
HELP = {
    "batch_size": "global batch size (split across torchrun processes)",
    "split": "subject, groups (subject-grouped folds), folds (official), image (leaky), or given (the dataset's own "
             "val/ folder beside train/). Default: given when the dataset has one, else subject",
    "val_fold": "validation fold for --split folds or groups",
    "n_folds": "number of subject-grouped folds for --split groups (default: automatic)",
    "average": "ema: validate and keep a moving average of the weights",
    "select": "keep the last epoch's model or the best on validation (--patience always keeps the best)",
    "bn_stats": "recomputed: before each validation, the kept model's BatchNorm statistics are measured anew on "
                "training images (running: the moving averages gathered while training)",
    "finetune": "train the full network, the last stage + head, the head, or staged: the head alone for "
                "--head-epochs, then the whole network with lower rates for earlier layers (for pretrained weights)",
    "head_epochs": "finetune staged: how many epochs train the head alone before the whole network (default 1)",
    "freeze_bn": "keep BatchNorm statistics fixed (ImageNet's, when fine-tuning)",
    "class_balance": "weighted loss (default) or none",
    "patience": "early stopping: end the run when validation weighted F1 has not improved for this many epochs "
                "(0, the default, is off); the best epoch's model is then kept, whatever --select says",
    "split_seed": "seed of the random split (subject, image); default: the run's seed. Repeats share it, so "
                  "they are scored on the same cells",
}
# Splits that draw at random, so depend on a seed; the others (groups, folds) are the same for every seed.
SEEDED_SPLITS = ("subject", "image")
MOMENTUM = 0.9  # SGD's default momentum
IMAGE_SIZES = (16, 1024)  # the smallest and largest image side a run accepts, in pixels
# What a run's preprocessing means, hashed into every run id: version 2 keeps the cells' scale (a fixed
# window around the cell for the whole dataset) where version 1 zoomed every cell to fill the frame.
PREPROCESS_VERSION = 2


class ConfigError(LeukvizError, ValueError):
    """A bad option; the message lists the valid choices."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run. Its hash (with the dataset fingerprint) is the run id."""

    backbone: str
    weights: str = "imagenet"
    data: str = "demo"
    preset: str = "quick"
    image_size: int = 64
    epochs: int = 3
    batch_size: int = 32  # global batch: split across processes under torchrun
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = MOMENTUM  # SGD's; the other optimizers ignore it, so it is MOMENTUM for them
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    finetune: str = "full"
    split: str = "subject"
    val_fraction: float = 0.2
    val_fold: int = 0  # the validation fold of split "folds" (official) or "groups" (subject-grouped CV)
    n_folds: int = 0  # split "groups": how many subject-grouped folds; 0 = as many as the rarest class allows, at most 5
    augment: str = "flips"
    crop: bool = True
    class_balance: str = "weighted_loss"
    freeze_bn: bool = False
    average: str = "none"  # "ema": validate and keep an exponential moving average of the weights
    select: str = "best"  # which epoch's model is kept: "best" on validation, or the "last"
    # "recomputed": before each validation the kept model's BatchNorm statistics are measured anew on training
    # images (as torch.optim.swa_utils.update_bn does for an averaged model). The running averages carry their
    # initial values (mean 0, variance 1) for the first hundred steps, and an average of running statistics
    # does not match averaged weights: either can make a short run call every cell one class (docs/REALDATA.md).
    bn_stats: str = "running"
    precision: str = "auto"
    seed: int = 0
    # The seed of a random split (SEEDED_SPLITS) when it is not the run's seed: repeats that differ only in
    # seed keep one split, so they are scored on the same validation cells and can be paired. None (the
    # default, and what any other value becomes where it makes no difference) leaves the run id as it was.
    split_seed: int | None = None
    # Early stopping on validation weighted F1: stop after this many epochs without a better one (0: off).
    # It implies keeping the best epoch (keeps_best): stopping on a plateau and then keeping the epoch
    # where it was noticed would throw away the model the stop was waiting for.
    patience: int = 0
    # finetune="staged": the epochs that train the head alone (the backbone frozen, its statistics too)
    # before the whole network trains with discriminative rates (backbones.param_groups). Other depths
    # ignore it, so it is 1 for them (one run id whatever was asked).
    head_epochs: int = 1

    def __post_init__(self) -> None:
        if self.split_seed is not None and (self.split_seed == self.seed or self.split not in SEEDED_SPLITS):
            object.__setattr__(self, "split_seed", None)
        if self.finetune != "staged":
            object.__setattr__(self, "head_epochs", 1)
        if self.optimizer != "sgd":  # only SGD has a momentum setting (Adam's betas are its own): one run id
            object.__setattr__(self, "momentum", MOMENTUM)

    @property
    def keeps_best(self) -> bool:
        """Whether the kept model is the best epoch on validation: select="best", or early stopping on."""
        return self.select == "best" or self.patience > 0

    @property
    def split_rng_seed(self) -> int:
        """The seed the split is drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (all scalars: what dataclasses.asdict gives, without its deep copy, which a
        listing of 1,000 runs' repeat keys paid for)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def identity(self, fingerprint: str) -> str:
        """Short hash of what the run depends on: the config (not the data path) and the dataset content."""
        d = self.to_dict()
        d.pop("data")  # the fingerprint stands for the data; a moved dataset keeps its runs
        if d["split_seed"] is None:
            d.pop("split_seed")  # added later: runs without one keep their ids
        if d["patience"] == 0:
            d.pop("patience")  # added later too: runs without early stopping keep their ids
        if d["head_epochs"] == 1:
            d.pop("head_epochs")  # and this one (every depth but staged has 1)
        if d["bn_stats"] == "running":
            d.pop("bn_stats")  # and this one
        ident = {"config": d, "dataset": fingerprint, "preprocess": PREPROCESS_VERSION}
        if self.weights not in WEIGHTS_CHOICES:  # a weights file: its bytes, as the dataset's (imagenet/none: as before)
            ident["weights_file"] = weights_digest(self.weights)
        blob = json.dumps(ident, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_DIGESTS: dict[tuple, str] = {}


def weights_digest(path: str) -> str:
    """The content hash of a weights file, so replacing the file's bytes is another run (remembered per path,
    size and modification time: the dashboard asks on every rerun); an unreadable file is named by why."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _DIGESTS:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            _DIGESTS[key] = h.hexdigest()
        return _DIGESTS[key]
    except OSError as e:
        return f"unreadable:{e.errno}"


def from_stored(d: Any) -> RunConfig:
    """A RunConfig from a stored dict (a run folder's config.json), each field's type checked (a number is
    not text, null is not a weights choice), then validate(): a ConfigError names the field."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config is an object, got {type(d).__name__}")
    if "backbone" not in d:
        raise ConfigError("the config has no backbone")
    for f in fields(RunConfig):
        if f.name not in d:
            continue
        v, kind = d[f.name], type(f.default) if f.default is not dataclasses.MISSING else str
        if f.name == "split_seed":
            ok = v is None or (isinstance(v, int) and not isinstance(v, bool))
        elif kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, kind)
        if not ok:
            raise ConfigError(f"{f.name} is {v!r}, not a {'number' if kind in (int, float) else kind.__name__}")
    cfg = RunConfig.from_dict(d)
    validate(cfg)
    return cfg


def parse_value(text: str, kind: type, low: float | None = None, high: float | None = None) -> Any:
    """The one parser of a setting's value from text (CLI flags, a study's --vary): bool (true/yes/on/1,
    false/no/off/0), int, or a finite float, within [low, high] when given. A ValueError whose message
    completes the setting's name: 'takes an int (a whole number), got 'big'', '5 is out of range: from 10 to 1000'."""
    if kind is bool:
        low_text = text.strip().lower()
        if low_text in ("true", "yes", "on", "1"):
            return True
        if low_text in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"is true or false, got {text!r}")
    try:
        value = kind(text)
    except ValueError:
        words = "an int (a whole number)" if kind is int else f"a{'n' if kind.__name__[0] in 'aeiou' else ''} {kind.__name__}"
        raise ValueError(f"takes {words}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"takes a finite number, got {text!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{value} is out of range: from {low} to {high}")
    return value


Settings = tuple[tuple[str, Any], ...]  # settings changed from RunConfig's defaults, as ((field, value), ...)


def parse_settings(text: str, flag: str = "--vary", fixed: Callable[[str], str | None] = lambda name: None) -> Settings:
    """'augment=flips' or 'average=none,select=best' as Settings, each value of its RunConfig field's type
    (parse_value, the one parser); '-' in a name is '_'. fixed(name) says why the caller does not let a setting
    change (None: it may). A ConfigError (one line) for an unknown, malformed, repeated or fixed setting."""
    defaults = {f.name: f.default for f in fields(RunConfig) if fixed(f.name) is None}
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = (x.strip() for x in part.partition("="))
        name = name.replace("-", "_")
        if not eq or not name or not value:
            raise ConfigError(f"{flag} takes SETTING=VALUE[,SETTING=VALUE...], got {text!r}")
        if fixed(name) is not None:
            raise ConfigError(f"{flag} {name}: {fixed(name)}")
        if name not in defaults:
            raise ConfigError(f"{flag}: no setting {name!r}; one of: {', '.join(sorted(defaults))}")
        if name in out:
            raise ConfigError(f"{flag} {text!r} sets {name} twice; give each setting once per variant")
        try:
            out[name] = parse_value(value, type(defaults[name]))
        except ValueError as e:
            raise ConfigError(f"{name} {e}") from None
    if not out:
        raise ConfigError(f"{flag} needs at least one SETTING=VALUE")
    return tuple(out.items())

def _check(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"invalid {name} {value!r}; choose one of: {', '.join(map(str, choices))}")


def preset_defaults(preset: str, backbone: str, weights: str) -> dict[str, Any]:
    """Defaults that learn for each preset, backbone and weights choice: the preset's settings, then what
    the backbone's registry entry changes in them (its paper, pretrained or from-scratch recipe)."""
    from leukviz.models.backbones import get_spec

    _check("preset", preset, PRESETS)
    spec = get_spec(backbone)
    if preset == "paper":
        # The seed paper's recipe: 128 px, batch 128, 5 epochs, SGD 1e-3 momentum 0.9 (VGG16: its own, in
        # its entry). No augmentation, no class weighting, no schedule.
        d: dict[str, Any] = dict(image_size=128, batch_size=128, epochs=5, optimizer="sgd", lr=1e-3, momentum=0.9,
                                 weight_decay=0.0, scheduler="none", augment="none", class_balance="none",
                                 crop=False)
        d.update(spec.paper_recipe)
        return d
    # Both presets: flips, quarter turns and stain jitter (people differ in stain); an exponential moving
    # average of the weights, validated and kept, and the last epoch's model kept rather than the one that
    # scored best on the validation subjects (choosing on them flatters them; the average keeps late
    # epochs steady). Measured on real cells of unseen subjects: docs/REALDATA.md.
    if preset == "quick":
        d = dict(image_size=64, epochs=3, batch_size=32)
    else:  # full
        d = dict(image_size=224, epochs=15, batch_size=32)
    d.update(augment="full", average="ema", select="last", bn_stats="recomputed")
    # pretrained nets get gentle rates
    d.update(optimizer="adamw", lr=3e-4 if weights != "none" else 1e-3, weight_decay=1e-4)
    d.update(spec.pretrained_recipe if weights != "none" else spec.scratch_recipe)
    d.update(scheduler="cosine", class_balance="weighted_loss", crop=True)
    return d


def resolve(backbone: str, preset: str = "quick", weights: str = "imagenet", data: str = "demo",
            **overrides: Any) -> RunConfig:
    """Preset defaults for this backbone and weights, then explicit overrides (None means 'not given')."""
    from leukviz.models.backbones import BACKBONES

    _check("backbone", backbone, tuple(BACKBONES))
    base = preset_defaults(preset, backbone, weights)
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = RunConfig(backbone=backbone, weights=weights, data=str(data), preset=preset, **base)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    from leukviz.models.backbones import BACKBONES

    _check("backbone", cfg.backbone, tuple(BACKBONES))
    for name, choices in CHOICES.items():
        _check(name, getattr(cfg, name), choices)
    if not 0 <= cfg.n_folds <= 20 or cfg.n_folds == 1:
        raise ConfigError(f"n_folds must be 0 (automatic) or between 2 and 20, got {cfg.n_folds}")
    low, high = IMAGE_SIZES
    if not low <= cfg.image_size <= high:
        raise ConfigError(f"image_size must be between {low} and {high} pixels, got {cfg.image_size}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError("epochs and batch_size must be at least 1")
    if cfg.patience < 0:
        raise ConfigError(f"patience must be 0 (off) or a number of epochs, got {cfg.patience}")
    if cfg.finetune == "staged" and not 1 <= cfg.head_epochs < cfg.epochs:
        raise ConfigError(f"finetune staged trains the head alone for head_epochs, then the whole network: "
                          f"head_epochs must be at least 1 and below epochs ({cfg.epochs}), got {cfg.head_epochs}")
    numbers = {f.name: getattr(cfg, f.name) for f in fields(cfg) if isinstance(getattr(cfg, f.name), float)}
    if bad := [f"{k}={v}" for k, v in numbers.items() if not math.isfinite(v)]:
        raise ConfigError(f"settings must be finite numbers, got {', '.join(bad)}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise ConfigError(f"momentum must be from 0 up to (not including) 1, got {cfg.momentum}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay must be 0 or more, got {cfg.weight_decay}")
    if cfg.val_fold < 0:
        raise ConfigError(f"val_fold is a fold number, 0 or more, got {cfg.val_fold}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {cfg.val_fraction}")


def cautions(cfg: RunConfig) -> list[str]:
    """Settings that run but are unlikely to be what was meant, in plain words (shown before a run starts)."""
    out = []
    if cfg.finetune in ("staged", "head", "last") and cfg.weights == "none":
        what = {"staged": "trains the head alone first", "head": "trains only the head",
                "last": "trains only the last stage and the head"}[cfg.finetune]
        out.append(f"fine-tuning depth '{cfg.finetune}' {what} on the backbone's features, and from scratch those "
                   "are random: use 'full' with --weights none, or pretrained weights")
    return out


def repeats(cfg: RunConfig, n: int) -> list[RunConfig]:
    """n runs of one configuration that differ only in the training seed (cfg.seed, cfg.seed + 1, ...),
    all drawing their split with cfg's split seed: the same validation cells, so a comparison can pair
    them. The first is cfg itself."""
    if not 1 <= n <= MAX_REPEATS:
        raise ConfigError(f"repeats must be between 1 and {MAX_REPEATS}, got {n}")
    base = cfg.split_rng_seed
    return [dataclasses.replace(cfg, seed=cfg.seed + i, split_seed=base) for i in range(n)]


MAX_REPEATS = 10


def split_key(cfg: RunConfig, fingerprint: str) -> str:
    """Runs are comparable (scored on the same validation cells) when they saw the same dataset content
    and the same validation split."""
    if cfg.split == "folds":
        return f"{fingerprint}|folds|{cfg.val_fold}"
    if cfg.split == "groups":  # cross-validation: the same folds for every seed, all folds together
        return f"{fingerprint}|groups|{cfg.n_folds}"
    return f"{fingerprint}|{cfg.split}|{cfg.val_fraction}|{cfg.split_rng_seed}"


def repeat_settings(cfg: RunConfig) -> dict[str, Any]:
    """Every setting but what repeats of one configuration differ in: the seeds, the data path (the
    fingerprint stands for the data) and, under subject-grouped cross-validation, the fold."""
    d = cfg.to_dict()
    for name in ("seed", "split_seed", "data") + (("val_fold",) if cfg.split == "groups" else ()):
        d.pop(name, None)
    return d


def repeat_key(cfg: RunConfig, fingerprint: str) -> str:
    """Runs of one configuration that differ only in seed (repeats, one group on Train, Overview and
    Compare) share this key: the same data and validation cells, and every setting but the seeds."""
    return split_key(cfg, fingerprint) + "|" + json.dumps(repeat_settings(cfg), sort_keys=True)
