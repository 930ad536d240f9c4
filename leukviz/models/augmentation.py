"""The training augmentation, on uint8 NHWC batches: the dihedral transforms (cells have no orientation) and
the colour / stain jitter. Prediction's test-time augmentation uses the same transforms."""

from __future__ import annotations

import torch

# Colour / stain jitter of the 'full' augmentation, as fractions: cells of different people (and slides)
# differ in stain intensity and hue, so each training image gets its own brightness, contrast and
# per-channel gain. The black background stays black (it is no stain).
JITTER_BRIGHTNESS, JITTER_CONTRAST, JITTER_CHANNEL = 0.15, 0.15, 0.08


def draw_jitter(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 5) colour factors: brightness, contrast, and the gains of R, G and B, each around 1."""
    spread = torch.tensor([JITTER_BRIGHTNESS, JITTER_CONTRAST, JITTER_CHANNEL, JITTER_CHANNEL, JITTER_CHANNEL])
    return 1.0 + (torch.rand((n, 5), generator=g) * 2 - 1) * spread


def augment(x: torch.Tensor, codes: torch.Tensor, jitter: torch.Tensor | None) -> torch.Tensor:
    """Per-sample dihedral transforms of a uint8 NHWC batch (cells have no orientation), then colour jitter.

    codes[i] in 0..7: bit 0 = horizontal flip, bits 1-2 = number of 90-degree turns. Applied by group so
    it stays vectorised. jitter (B, 5) (draw_jitter): brightness, contrast around the cell's mean, and a
    gain per channel, applied to the cell's pixels only (the background stays black).
    """
    out = x.clone()
    for code in codes.unique().tolist():
        sel = (codes == code).nonzero().flatten()
        part = out[sel]
        if code & 1:
            part = part.flip(2)
        k = code >> 1
        if k:
            part = torch.rot90(part, k, dims=(1, 2))
        out[sel] = part
    if jitter is not None:
        f = out.float()
        cell = f.amax(dim=3, keepdim=True) > 10
        n_cell = cell.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1) * 3
        mean = (f * cell).sum(dim=(1, 2, 3), keepdim=True) / n_cell
        f = (f - mean) * jitter[:, 1].view(-1, 1, 1, 1) + mean * jitter[:, 0].view(-1, 1, 1, 1)
        f = f * jitter[:, 2:5].reshape(-1, 1, 1, 3)
        out = torch.where(cell, f.clamp_(0, 255), 0.0).to(torch.uint8)
    return out
