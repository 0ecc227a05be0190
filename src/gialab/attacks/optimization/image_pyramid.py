"""Images optimized as a sum of upsampled coarse levels: a Laplacian-pyramid parametrization.

Why: signed Adam (Geiping et al. 2020) moves every number it optimizes by about ``lr`` per step,
whatever the gradient's size. On raw pixels, a smooth change over a block of k x k pixels needs k^2
pixels to each make their own way there, so large, smooth structure (most of a natural image's
energy, and most of its PSNR) comes last. With the image written as ``x = sum_l up(z_l)``, where
``z_l`` has 1/2^l of the resolution and ``up`` is bilinear upsampling, a step of level l moves a
whole 2^l x 2^l block at once, and coarse structure settles in a few hundred steps. The objective is
untouched: only the coordinates the optimizer steps in change (a preconditioner), so a level-1
pyramid is exactly the paper's per-pixel optimization.

Each level's gradient is the adjoint of its upsampling applied to the image gradient (autograd
through ``compose``); the signed step then acts on every level. The box projection clips the
composed image and puts the difference into the finest level, so the image stays in the box and
the coarse levels keep the structure they found.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pyramid_factors(levels: int, height: int, width: int) -> tuple[int, ...]:
    """Downsampling factors 1, 2, 4, ... of the ``levels`` levels, none coarser than one pixel."""
    return tuple(2**level for level in range(levels) if 2**level <= min(height, width))


class ImagePyramid:
    """Optimizable levels whose upsampled sum is an image batch of shape ``(..., C, H, W)``."""

    def __init__(self, start: Tensor, levels: int) -> None:
        height, width = start.shape[-2:]
        self.shape = start.shape
        self.levels = [start.detach().clone()] + [
            torch.zeros(*start.shape[:-2], -(-height // f), -(-width // f), dtype=start.dtype, device=start.device)
            for f in pyramid_factors(levels, height, width)[1:]
        ]
        for level in self.levels:
            level.requires_grad_(True)

    def compose(self) -> Tensor:
        """The image: the finest level plus every coarser level upsampled to full size."""
        image = self.levels[0]
        for level in self.levels[1:]:
            flat = level.reshape(-1, *level.shape[-3:])
            up = F.interpolate(flat, size=tuple(self.shape[-2:]), mode="bilinear", align_corners=False)
            image = image + up.reshape(self.shape)
        return image

    def image(self) -> Tensor:
        """The current image, detached from the levels."""
        with torch.no_grad():
            return self.compose().detach()

    def set_signed_gradient(self, image_gradient: Tensor) -> None:
        """Give each level the sign of its own gradient (the adjoint of its upsampling)."""
        if len(self.levels) == 1:
            self.levels[0].grad = image_gradient.sign()
            return
        with torch.enable_grad():
            grads = torch.autograd.grad(self.compose(), self.levels, grad_outputs=image_gradient)
        for level, g in zip(self.levels, grads, strict=True):
            level.grad = g.sign()

    def project(self, low: Tensor, high: Tensor) -> None:
        """Clip the composed image into ``[low, high]``, moving the difference into the finest level."""
        with torch.no_grad():
            if len(self.levels) == 1:
                torch.clamp(self.levels[0], low, high, out=self.levels[0])
                return
            image = self.compose()
            self.levels[0].add_(torch.maximum(torch.minimum(image, high), low) - image)
