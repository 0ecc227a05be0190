"""The gradient-matching objective shared by the optimization family.

Survey eq. (19): ``argmin_x D(grad_W L(f(x), y), G) + sum_i lambda_i R_i(x)``. The distance ``D``
is either DLG's squared L2 (survey eq. 1; Zhu et al. 2019) or Geiping et al.'s cosine distance
(2020, "Inverting Gradients", eq. 4, the first term of survey eq. 19), which ignores the gradient's
magnitude and so is robust to the unknown scale a trained network's gradient has. The priors are
total variation (Geiping et al.'s image prior), a pixel L2 prior and a box penalty (Wei et al. 2020,
Yin et al. 2021's "clip" term).

One place for these terms, because every attack in the family mixes the same few and must mix
them identically for results to be comparable. All functions are plain tensor code with no
in-place ops or Python-side data-dependent branches, so they work under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

Distance = Literal["l2", "cosine"]

_EPS = 1e-12


def gradient_distance(observed: Sequence[Tensor], dummy: Sequence[Tensor], kind: Distance = "l2") -> Tensor:
    """The distance between two gradients given as parameter-aligned sequences (a scalar tensor).

    ``l2``: sum of squared differences over all parameters (survey eq. 1).
    ``cosine``: ``1 - <d, o> / (|d| |o|)`` with all parameters concatenated (Geiping et al. eq. 4).
    """
    if len(observed) != len(dummy):
        raise ValueError(f"gradients have {len(observed)} and {len(dummy)} parameters")
    if kind == "l2":
        return sum(((d - o) ** 2).sum() for d, o in zip(dummy, observed))  # type: ignore[return-value]
    if kind == "cosine":
        dot = sum((d * o).sum() for d, o in zip(dummy, observed))
        dummy_sq = sum(d.pow(2).sum() for d in dummy)
        observed_sq = sum(o.pow(2).sum() for o in observed)
        return 1 - dot / (dummy_sq.sqrt() * observed_sq.sqrt()).clamp_min(_EPS)  # type: ignore[union-attr,operator]
    raise ValueError(f"unknown gradient distance {kind!r}; use 'l2' or 'cosine'")


def total_variation(x: Tensor) -> Tensor:
    """Mean anisotropic total variation of images ``(..., H, W)``: Geiping et al.'s definition.

    The mean absolute difference between horizontal neighbours plus that between vertical
    neighbours, each averaged over all pixels, channels and images, so its weight does not depend
    on the image size or batch (Geiping et al.'s ``tv`` weights apply unchanged).
    """
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def l2_prior(x: Tensor) -> Tensor:
    """Mean squared pixel value (a scalar)."""
    return x.pow(2).mean()


def clip_penalty(x: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Mean squared excess of the pixels outside ``[low, high]``; zero inside the box."""
    excess = (x - high).clamp_min(0) + (low - x).clamp_min(0)
    return excess.pow(2).mean()


class Regularizers(BaseModel):
    """Weights of the image priors in survey eq. (19); zero switches a term off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tv: float = Field(0.0, ge=0, description="weight of total variation")
    l2: float = Field(0.0, ge=0, description="weight of the mean squared pixel value")
    clip: float = Field(0.0, ge=0, description="weight of the squared excess outside [0, 1]")


def regularized(distance: Tensor, x: Tensor, reg: Regularizers) -> Tensor:
    """Survey eq. (19): ``distance + tv * TV(x) + l2 * L2(x) + clip * CLIP(x)``; zero weights cost nothing."""
    total = distance
    if reg.tv:
        total = total + reg.tv * total_variation(x)
    if reg.l2:
        total = total + reg.l2 * l2_prior(x)
    if reg.clip:
        total = total + reg.clip * clip_penalty(x)
    return total
