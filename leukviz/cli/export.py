"""leukviz export: a finished run as ONNX (checked against PyTorch) or safetensors, with its model card."""

from __future__ import annotations

import argparse

from leukviz.cli.common import _out, _warn_unfinished


def cmd_export(args) -> int:
    from leukviz.runstore import runs
    from leukviz.serving import export

    run = _warn_unfinished(runs.get_run(args.run, args.runs_dir))
    res = {**export.export_run(run.dir, args.format, args.out), "unfinished": run.unfinished()}
    human = f"exported run {run.run_id} as {res['format']} to {res['path']} ({res['bytes'] / 1e6:.1f} MB)"
    if res["format"] == "safetensors":
        human += f"; sidecar {res['sidecar']}"
    else:
        human += (f"; ONNX Runtime vs PyTorch on {res['check_images']} images: max |difference| of probabilities "
                  f"{res['max_abs_diff']:.1e} (tolerance {res['tolerance']:g}); preprocessing in the metadata")
    if res.get("model_card"):
        human += f"\nmodel card (intended use and limits, scores with intervals): {res['model_card']}"
    _out(args, human, res)
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The export command: the run, the format, where."""
    ex = sub.add_parser("export", parents=[common], help="export a finished run as ONNX or safetensors, with its model card")
    ex.add_argument("--run", required=True, help="RUN_ID (a unique prefix is enough)")
    ex.add_argument("--format", choices=("onnx", "safetensors"), required=True)
    ex.add_argument("--out", required=True, help="a .onnx / .safetensors file, or a folder")
    ex.set_defaults(func=cmd_export)
