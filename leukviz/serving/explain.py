"""Why a model said what it said: Grad-CAM heat maps, overlays on the cell, and a run's error gallery."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image

from leukviz.core.filenames import PREDICTIONS, SIDECAR
from leukviz.core.storage import NAME_MAX, write_output
from leukviz.models import backbones
from leukviz.runstore import runfiles
from leukviz.scoring import predictions
from leukviz.serving.inference import LoadedModel, prepare

DISPLAY_MIN = 224  # overlays written to disk are upscaled to at least this many pixels, to be readable
# The hooks sit on a model that the dashboard shares between sessions (threads): one CAM at a time.
_CAM_LOCK = threading.Lock()


def _as_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {a.dtype} {a.shape}")
    return a


def _target_index(lm: LoadedModel, target: int | str | None) -> int | None:
    if target is None or isinstance(target, (int, np.integer)):
        if target is not None and not 0 <= int(target) < len(lm.classes):
            raise ValueError(f"target class {target} out of range; choose 0..{len(lm.classes) - 1} or one of "
                             f"{lm.classes}")
        return None if target is None else int(target)
    if target not in lm.classes:
        raise ValueError(f"unknown target class {target!r}; choose one of: {', '.join(lm.classes)}")
    return lm.classes.index(target)


def _cam(lm: LoadedModel, image: np.ndarray,
         target: int | str | None = None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(heat (H, W) in [0, 1] at the image's size, class probabilities, the hooked layer's grid (h, w))
    from one forward and backward pass."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    img = _as_image(image)
    h, w = img.shape[:2]
    size = lm.image_size
    if (h, w) != (size, size):
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    idx = _target_index(lm, target)
    layer = lm.model.get_submodule(backbones.get_spec(lm.backbone).cam_layer)
    # Grad-CAM needs gradients: leave any inference_mode a caller (a page, predict_arrays) may be in.
    with _CAM_LOCK, torch.inference_mode(False), torch.enable_grad():
        x = lm.preprocess.normalize(torch.from_numpy(np.array(img[None])).to(lm.device))
        # Gradients flow from the input, so the map works whether or not the weights are trainable; the
        # weights are switched off so backward computes no weight gradients: faster (docs/BENCHMARKS.md,
        # "Numbers behind the code"), and no .grad buffers left on a shared model.
        x.requires_grad_(True)
        trainable = [p for p in lm.model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        cam = GradCAM(model=lm.model, target_layers=[layer])
        try:
            heat = cam(input_tensor=x, targets=None if idx is None else [ClassifierOutputTarget(idx)])[0]
            probs = torch.softmax(cam.outputs.detach().float(), dim=1)[0].cpu().numpy()
            grid = tuple(int(n) for n in cam.activations_and_grads.activations[0].shape[-2:])
        finally:
            cam.activations_and_grads.release()
            for p in trainable:
                p.requires_grad_(True)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(heat, 0.0, 1.0).astype(np.float32), probs, grid


def gradcam(lm: LoadedModel, image_uint8: np.ndarray, target: int | str | None = None) -> np.ndarray:
    """Grad-CAM heat map (H, W), float32 in [0, 1], at the image's size, for `target` (default: the
    predicted class), hooked at the backbone's registered layer (BackboneSpec.cam_layer).

    Pass the image as the model sees it (`inference.prepare(lm, file)`); another size is resized to the
    model's for the pass and the heat map is resized back.
    """
    return _cam(lm, image_uint8, target)[0]


# viridis: perceptually uniform and readable in grey and by colour-blind readers (jet invents edges where
# its hue changes fastest); colour_bar draws its scale.
COLORMAP = cv2.COLORMAP_VIRIDIS


def colour_bar(width: int = 256, height: int = 12) -> np.ndarray:
    """The heat map's colour scale, low (left) to high (right), as a uint8 RGB strip to show beside a map."""
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8), (height, 1))
    return cv2.cvtColor(cv2.applyColorMap(ramp, COLORMAP), cv2.COLOR_BGR2RGB)


def overlay(image_uint8: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map in the viridis colour map blended over the image: uint8 RGB at the image's size."""
    img = _as_image(image_uint8)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != img.shape[:2]:
        heat = cv2.resize(heat, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), COLORMAP),
                          cv2.COLOR_BGR2RGB)
    # A plain blend, not pytorch_grad_cam's show_cam_on_image: that one rescales by the maximum, which
    # brightens dark cells differently from image to image.
    out = (1 - alpha) * img.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def explain_image(lm: LoadedModel, image_uint8: np.ndarray, target: int | str | None = None) -> dict:
    """Prediction and explanation of one prepared image in one pass, for a side-by-side view per model:
    {model, run_id, predicted, confidence, probs {class: p}, heat, overlay, grid}.

    grid is the (h, w) of the hooked layer: the heat map's true resolution before it is smoothed up to
    the image (the side over the backbone's cam_stride: 2x2 at 64 px for a stride of 32).
    """
    heat, probs, grid = _cam(lm, image_uint8, target)
    k = int(np.argmax(probs))
    return {"model": lm.name, "run_id": lm.run_dir.name, "predicted": lm.classes[k],
            "confidence": float(probs[k]),
            "probs": {c: float(p) for c, p in zip(lm.classes, probs)}, "heat": heat,
            "overlay": overlay(image_uint8, heat), "grid": grid}


def _display(image: np.ndarray) -> np.ndarray:
    side = image.shape[0]
    if side >= DISPLAY_MIN:
        return image
    return np.asarray(Image.fromarray(image).resize((DISPLAY_MIN, DISPLAY_MIN), Image.Resampling.BICUBIC))


def _fitted_stem(stem: str, room: int) -> str:
    """stem cut so that it and room more bytes fit one file name (NAME_MAX), a digest of the whole stem kept
    at its end so two long names that share their start stay two files."""
    if len((stem).encode()) + room <= NAME_MAX:
        return stem
    import hashlib

    digest = hashlib.sha1(stem.encode()).hexdigest()[:8]
    return stem.encode()[:NAME_MAX - room - 10].decode("utf-8", "ignore") + "~" + digest


def save_cams(lm: LoadedModel, files: Sequence[str | Path], out_dir: str | Path) -> list[dict]:
    """Write one PNG overlay per readable image for this model into out_dir, named
    `<image stem>.<backbone>-<run id>.png`. Returns one record per file: file, cam (path or None), error."""
    from leukviz.datasets import data

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{lm.backbone}-{lm.run_dir.name[:6]}"
    taken: set[str] = set()
    records = []
    for f in files:
        try:
            img = prepare(lm, f)
        except data.ImageError as e:
            records.append({"file": str(f), "cam": None, "error": str(e)})
            continue
        stem = _fitted_stem(re.sub(r"[^\w.-]+", "_", Path(f).stem), len(f".{tag}.png") + 8)
        name, n = f"{stem}.{tag}.png", 2
        while name in taken:  # same stem in two folders (all/ and hem/ of a zip): keep both
            name, n = f"{stem}_{n}.{tag}.png", n + 1
        taken.add(name)
        big = _display(img)
        buf = io.BytesIO()  # each overlay whole or not at all (a full disk)
        Image.fromarray(overlay(big, gradcam(lm, img))).save(buf, format="PNG")
        write_output(out_dir / name, buf.getvalue())  # the output rule
        records.append({"file": str(f), "cam": str(out_dir / name), "error": ""})
    return records


def top_losses(run_dir: str | Path, k: int = 16, only_wrong: bool = False) -> pd.DataFrame:
    """The run's validation images, most confidently wrong first (then the rest by loss), k rows.

    Columns: path, subject, true, predicted, confidence (probability of the predicted class),
    prob_true, loss (cross-entropy of the true class), correct.
    """
    run_dir = Path(run_dir)
    path = run_dir / PREDICTIONS
    if not path.exists():
        raise FileNotFoundError(f"run {run_dir.name} has no {PREDICTIONS} yet (is it finished?)")
    t = predictions.read(path, runfiles.read_sidecar(run_dir)["classes"] if (run_dir / SIDECAR).exists() else None)
    classes, probs, y = t.classes, t.probs, t.y.astype(int)
    pred = probs.argmax(axis=1)
    p_true = probs[np.arange(len(y)), y]
    out = pd.DataFrame({
        "path": t.paths, "subject": t.subjects,
        "true": [classes[i] for i in y], "predicted": [classes[i] for i in pred],
        "confidence": probs.max(axis=1), "prob_true": p_true,
        "loss": -np.log(np.clip(p_true, 1e-12, 1.0)), "correct": pred == y,
    })
    if only_wrong:
        out = out[~out["correct"]]
    # With three or more classes a wrong answer can have a lower loss than a hesitant right one: wrong first.
    out = out.sort_values(["correct", "loss"], ascending=[True, False], kind="stable")
    return out.head(k).reset_index(drop=True)
