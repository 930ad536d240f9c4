"""The error gallery: a run's most confidently wrong validation images, as the model saw them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leukviz.datasets import data
from leukviz.models.preprocess import Preprocess
from leukviz.runstore import runs


@dataclass
class GalleryCell:
    image: np.ndarray | None
    caption: str  # plain text: true, predicted, confidence, subject
    error: str = ""


def error_gallery(run: runs.Run, k: int = 8) -> list[GalleryCell]:
    """The run's most confidently wrong validation images (then the highest-loss right ones), each loaded
    at the model's input size, as explain.top_losses orders them."""
    from leukviz.serving import explain

    meta = run.meta()
    pre = Preprocess.of_checkpoint({"backbone": run.config.backbone, "image_size": run.config.image_size,
                                    "crop": True, **meta})
    cells = []
    for row in explain.top_losses(run.dir, k=k).itertuples(index=False):
        verdict = "wrong" if not row.correct else "right"
        caption = (f"true {row.true} · predicted {row.predicted} ({row.confidence:.0%}, {verdict}) · "
                   f"subject {row.subject}")
        try:
            cells.append(GalleryCell(pre.decode(row.path), caption))
        except (data.ImageError, OSError) as e:
            cells.append(GalleryCell(None, caption, str(e)))
    return cells
