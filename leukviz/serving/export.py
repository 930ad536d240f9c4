"""Export a finished run: its safetensors checkpoint with the sidecar, or ONNX checked against PyTorch; either way
with its model card (serving/modelcard.py) beside the weights in Markdown and in the exported metadata. Also what
the Compare page's export section offers of a run: its ONNX file and the check's result in words, its checkpoint."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from leukviz.core import storage
from leukviz.core.errors import LeukvizError
from leukviz.core.filenames import CHECKPOINT, CONFIG, PREDICTIONS, SIDECAR
from leukviz.runstore import runfiles
from leukviz.serving import inference, modelcard

if TYPE_CHECKING:
    from leukviz.runstore.runs import Run

FORMATS = ("onnx", "safetensors")
ONNX_TOLERANCE = 1e-4  # max abs difference of probabilities, ONNX Runtime vs PyTorch
N_CHECK = 8  # sample images for the agreement check


class ExportError(LeukvizError, RuntimeError):
    """The export could not be written or does not agree with the PyTorch model."""


def _target(out: Path | str, suffix: str) -> storage.OutputTarget:
    """Where the export goes, by the output rule (storage.OutputTarget), checked before any work: a path with
    the format's suffix is the file; `-`, a pipe or a character device takes an ONNX file as a stream (a
    safetensors export is two files); anything else is a folder to write into. An existing file that is not
    one of the format's is refused, never overwritten."""
    text = str(out)
    if not text.strip():
        raise ExportError(f"--out is empty: give a folder, or a path ending in {suffix}")
    p = Path(text).expanduser()
    if text == storage.STDOUT or (p.exists() and not p.is_dir() and not p.is_file()):
        if suffix != ".onnx":
            raise ExportError(f"{text}: a safetensors export is two files (the weights and their {SIDECAR}): give "
                              "a folder, or a path ending in .safetensors")
        return _checked(text)
    if p.exists() and not p.is_dir() and p.suffix != suffix:
        raise ExportError(f"{p} is an existing file: give a folder, or a path ending in {suffix}")
    if p.suffix == suffix:
        return _checked(p)
    if p.suffix and not p.is_dir():
        raise ExportError(f"{p.name}: a {suffix.lstrip('.')} export is a {suffix} file or a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"--out {text}: cannot make this folder ({e.strerror or e})") from None
    return _checked(p / f"model{suffix}")


def _checked(path: Path | str) -> storage.OutputTarget:
    try:
        return storage.prepare_output(path, "--out", "model.onnx")
    except storage.OutputError as e:
        raise ExportError(str(e)) from None


def _shown(target: storage.OutputTarget) -> str:
    return str(target.path) if target.kind == "file" else target.shown


def _export_safetensors(run_dir: Path, out: Path | str, card: dict) -> dict:
    target = _target(out, ".safetensors")
    sidecar = target.path.with_suffix(".json")
    meta = runfiles.read_sidecar(run_dir)  # checked (export_run refused a damaged one already)
    meta["run_id"] = run_dir.name
    meta["config"] = json.loads(storage.read_text(run_dir / CONFIG)).get("config", {})
    meta["model_card"] = card
    # each file whole or not at all (a full disk): the weights first, then the sidecar that describes them
    with storage.output_path(target) as tmp:
        try:
            storage.open_regular(run_dir / CHECKPOINT).close()  # a pipe in its place is refused, not read
            shutil.copyfile(run_dir / CHECKPOINT, tmp)
        except OSError as e:  # a full disk is the target's, not the run's file
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OSError(e.errno, e.strerror, str(target.path)) from None
            raise
    storage.write_output(sidecar, json.dumps(meta, indent=1).encode())
    return {"format": "safetensors", "path": str(target.path), "sidecar": str(sidecar),
            "bytes": target.path.stat().st_size}


class _WithProbabilities(nn.Module):
    """The classifier with softmax appended, so ONNX consumers get probabilities without extra code."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


def _sample_images(lm: inference.LoadedModel, n: int) -> np.ndarray:
    """Up to n of the run's validation images as the model sees them; random pixels when none can be read."""
    import pandas as pd

    from leukviz.datasets import data

    images = []
    path = lm.run_dir / PREDICTIONS
    if path.exists():
        for p in pd.read_csv(io.BytesIO(storage.read_bytes(path)))["path"]:
            try:
                images.append(inference.prepare(lm, p))
            except (data.ImageError, FileNotFoundError):
                continue
            if len(images) == n:
                break
    if len(images) < 2:
        rng = np.random.default_rng(0)
        shape = (n - len(images), lm.image_size, lm.image_size, 3)
        images += list(rng.integers(0, 256, shape, dtype=np.uint8))
    return np.stack(images)


def _export_onnx(run_dir: Path, out: Path | str, card: dict) -> dict:
    import onnx
    import onnxruntime as ort

    target = _target(out, ".onnx")
    lm = inference.load_model(run_dir, device="cpu")
    meta = lm.meta
    model = _WithProbabilities(lm.model.to(memory_format=torch.contiguous_format)).eval()
    images = _sample_images(lm, N_CHECK)
    x = lm.preprocess.normalize(torch.as_tensor(images)).contiguous()
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError:
        raise ExportError("ONNX export needs the onnxscript package: pip install onnxscript "
                          "(pinned in requirements.txt)") from None
    t0 = time.time()
    props = {"leukviz.backbone": lm.backbone, "leukviz.run_id": run_dir.name,
             "leukviz.classes": json.dumps(lm.classes),
             "leukviz.positive_class": lm.classes[meta["positive"]],
             "leukviz.image_size": str(lm.image_size), "leukviz.crop": json.dumps(lm.crop),
             "leukviz.mean": json.dumps(meta["mean"]), "leukviz.std": json.dumps(meta["std"]),
             "leukviz.input_layout": "NCHW float32, normalised",
             "leukviz.preprocessing": lm.preprocess.describe(lm.classes),
             "leukviz.model_card": json.dumps(card), "leukviz.intended_use": modelcard.INTENDED_USE}
    # Written beside the target and checked there; published whole only when ONNX Runtime agrees with PyTorch
    # (a full disk, or a graph that disagrees, leaves nothing at the target).
    with storage.output_path(target) as tmp:
        # The default (dynamo) exporter, not the deprecated TorchScript one (dynamo=False): that one cannot
        # export VGG16's AdaptiveAvgPool2d(7) from a feature map whose side does not divide 7, which is
        # every input size but multiples of 224 (the 64 px quick and 128 px paper presets among them).
        # One self-contained file: no external data (VGG16, the largest, fits ONNX's 2 GB limit:
        # docs/BENCHMARKS.md, "Numbers behind the code").
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's chatter about its own internals
            torch.onnx.export(model, (x[:2],), str(tmp), dynamo=True, external_data=False, verbose=False,
                              input_names=["image"], output_names=["logits", "probabilities"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        proto = onnx.load(str(tmp))
        for k, v in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.doc_string = f"leukviz {lm.backbone} run {run_dir.name}. Input: {lm.preprocess.describe(lm.classes)}"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        seconds = time.time() - t0

        with torch.inference_mode():
            torch_probs = model(x)[1].numpy()
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        ort_batch = session.run(["probabilities"], {"image": x.numpy()})[0]  # the batch axis is dynamic
        ort_single = np.concatenate([session.run(["probabilities"], {"image": x[i:i + 1].numpy()})[0]
                                     for i in range(len(x))])
        diff = float(max(np.abs(ort_batch - torch_probs).max(), np.abs(ort_single - torch_probs).max()))
        if diff > ONNX_TOLERANCE:
            raise ExportError(f"ONNX Runtime's probabilities differ from PyTorch's by {diff:.2e} "
                              f"(tolerance {ONNX_TOLERANCE:g}); nothing was written to {_shown(target)}")
        size = Path(tmp).stat().st_size
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    res = {"format": "onnx", "path": _shown(target), "bytes": size, "opset": opset,
           "inputs": ["image"], "outputs": ["logits", "probabilities"], "metadata": props,
           "check_images": int(len(x)), "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE,
           "agrees": diff <= ONNX_TOLERANCE, "export_seconds": round(seconds, 2)}
    return res


def export_run(run_dir: str | Path, fmt: str, out: str | Path) -> dict:
    """Export a finished run to `out` (a file with the format's suffix, or a folder).

    safetensors: the checkpoint and its JSON sidecar (a folder export loads with inference.load_model).
    onnx: a graph with a dynamic batch axis, outputs logits and probabilities, the preprocessing in its
    metadata, checked against PyTorch with ONNX Runtime on sample images (max_abs_diff in the result).
    Both: the model card beside the weights (model.card.md for model.onnx) and in the metadata (the sidecar's
    model_card, the ONNX property leukviz.model_card), written after the weights.
    """
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not (run_dir / CHECKPOINT).exists() or not (run_dir / SIDECAR).exists():
        raise FileNotFoundError(f"run {run_dir.name} has no checkpoint yet (is it finished?)")
    from leukviz.runstore import runs

    damage = [str(p) for p in runs.check(runs.Run(run_dir)) if p.file in (SIDECAR, CHECKPOINT)]
    if damage:
        raise ExportError(f"run {run_dir.name} cannot be exported: {'; '.join(damage)}")
    _target(out, ".onnx" if fmt == "onnx" else ".safetensors")  # a bad target fails before the work
    write = _export_safetensors if fmt == "safetensors" else _export_onnx
    card = modelcard.card(run_dir)
    res = write(run_dir, out, card)
    weights = Path(res["path"])
    if weights.is_file():  # beside the weights; a stream (stdout, a pipe) carries the card in its metadata only
        card_file = modelcard.card_path(weights)
        storage.write_output(card_file, modelcard.markdown(card).encode())
        res["model_card"] = str(card_file)
    return {"run_id": run_dir.name, **res}


# ---------------------------------------------------------------------------------------------- a run, for the pages

def export_onnx(run: Run, folder: Path) -> tuple[bytes, dict]:
    """Export the run to ONNX in folder (export_run, checked against PyTorch): (file bytes, result)."""
    folder.mkdir(parents=True, exist_ok=True)
    res = export_run(run.dir, "onnx", folder / f"{run.config.backbone}-{run.run_id}.onnx")
    return Path(res["path"]).read_bytes(), res


def export_text(res: dict) -> str:
    """An ONNX export's result in one sentence, as the Compare page shows it."""
    verdict = "agrees" if res.get("agrees") else "DISAGREES"
    return (f"ONNX opset {res.get('opset')}, {res.get('bytes', 0) / 1e6:.1f} MB; {verdict} with PyTorch on "
            f"{res.get('check_images')} images: max probability difference {res.get('max_abs_diff', float('nan')):.2e} "
            f"(tolerance {res.get('tolerance', float('nan')):g}).")


def checkpoint_bytes(run: Run) -> bytes:
    """The run's kept checkpoint, as Compare's download button gives it."""
    return storage.read_bytes(run.dir / CHECKPOINT)
