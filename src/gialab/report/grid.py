"""Image grids: true images on top, their matched reconstructions below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _tile(images: torch.Tensor, scale: int) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one uint8 row, 2-pixel white gaps, nearest-neighbour upscaled."""
    x = images.detach().float().nan_to_num(0.0).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = x[:, :3].repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    n, _, h, w = x.shape
    row = torch.ones(3, h, n * (w + 2) - 2)
    for i in range(n):
        row[:, :, i * (w + 2) : i * (w + 2) + w] = x[i]
    return (row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(truth: torch.Tensor, recon: torch.Tensor, path: Path, *, max_images: int = 16) -> None:
    """Write ``truth`` above ``recon`` (same order, blanks where nothing was matched) as a PNG."""
    truth, recon = truth[:max_images], recon[:max_images]
    scale = max(1, 96 // truth.shape[-1])
    top, bottom = _tile(truth, scale), _tile(recon, scale)
    gap = np.full((6, top.shape[1], 3), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([top, gap, bottom])).save(path)
