"""python -m leukviz lr-find: the cached learning-rate sweep of a configuration and its advice."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leukviz.cli.common import _bounded, _device_value, _out, _resolve_cfg, add_config_options
from leukviz.core import paths
from leukviz.models import config as C


def cmd_lrfind(args) -> int:
    """The learning-rate finder (lrfind): the cached sweep of this configuration, or a new one."""
    from leukviz.datasets import data
    from leukviz.training import lrfind

    if args.config:  # the page's form: the resolved config in a file (runstore.sweeps.launch)
        cfg = C.RunConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        cfg = _resolve_cfg(args)
    fingerprint = data.open_dataset(cfg.data, paths.cache_root()).fingerprint
    try:
        res, cached = lrfind.find(cfg, fingerprint, paths.cache_root(), args.device, args.steps,
                                  lambda s: print(s, file=sys.stderr))
    except lrfind.SweepStopped as e:  # a Stop (its stop file): nothing wrong, nothing cached
        print(e, file=sys.stderr)
        return lrfind.STOPPED_EXIT
    res = {k: v for k, v in res.items() if k not in ("config", "dataset_fingerprint")}
    end = f"diverged after {res['steps_done']} steps" if res["diverged"] else f"{res['steps_done']} steps"
    advice = lrfind.advise(res, cfg.lr)  # the configuration's rate (the preset's, or --lr) checked against it
    _out(args, f"{'cached: ' if cached else ''}{cfg.backbone}: {advice.text} ({res['start']:g} to {res['end']:g}, "
               f"{end}; a tenth of the minimum: {res['suggestion']:.2g})",
         {**res, "cached": cached, "rate_checked": cfg.lr, "advice": advice.rate, "keep": advice.keep,
          "advice_text": advice.text})
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The lr-find command: the train command's configuration options, and the sweep's length."""
    from leukviz.models.backbones import BACKBONES
    from leukviz.training import lrfind

    lf = sub.add_parser("lr-find", parents=[common],
                        help="sweep the learning rate exponentially over a short training and suggest one (cached)")
    lf.add_argument("--backbone", choices=list(BACKBONES), default="resnet50")
    lf.add_argument("--data", default="demo", help="demo (built in), a C-NMC folder, a class-per-folder tree or a .zip")
    lf.add_argument("--weights", default="imagenet", help="imagenet | none | path to a weights file")
    lf.add_argument("--preset", choices=C.PRESETS, default="quick")
    add_config_options(lf)
    lf.add_argument("--steps", type=_bounded(10, 1000), default=lrfind.STEPS,
                    help=f"steps of the sweep from {lrfind.START:g} to {lrfind.END:g} (default {lrfind.STEPS})")
    lf.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    lf.add_argument("--config", help=argparse.SUPPRESS)
    lf.set_defaults(func=cmd_lrfind)
