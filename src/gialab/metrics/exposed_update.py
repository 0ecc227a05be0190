"""What still covers a client's update that an attack exposed: truth-side, never seen by the attack.

Boenisch et al. 2023a's sybils isolate one victim in an aggregate protected by distributed DP: the
victim's update then carries its own noise share, sigma * C / sqrt(M - 1), instead of the
sigma * C the honest protocol promises every update in the sum. This module measures the noise
the exposed update actually carries against the victim's own clean update, recomputed from its
private batch through the model it received.

Clipping only rescales the clean update (by min(1, C / ||g||)), so the clean part of the exposed
update is its least-squares projection onto the clean update's direction, and the rest is what
covers it: added noise, and any other client's update the isolation failed to remove. That needs
no knowledge of C. The residual's per-coordinate std is ``victim_noise_std``; the projection
takes one of the d degrees of freedom, so the sum of squares is divided by d - 1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gialab.fl.training import LossFn, fedsgd_update
from gialab.fl.update_vector import flatten


def exposed_update_scores(
    update: Sequence[torch.Tensor], model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
    promised_noise_std: float | None = None, loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float | None]:
    """``victim_noise_std`` (per coordinate), ``victim_clean_cosine`` (exposed vs clean FedSGD
    update, before clipping and noise) and, given the protocol's promise, ``noise_std_promised`` and ``victim_noise_ratio``."""
    clean = flatten(fedsgd_update(copy.deepcopy(model), loss_fn, images, labels), torch.float64)
    exposed = flatten(update, torch.float64)
    scale = float(exposed @ clean / (clean @ clean)) if clean.any() else 0.0
    residual = exposed - scale * clean
    noise = math.sqrt(float(residual @ residual) / max(residual.numel() - 1, 1))
    cosine = float(F.cosine_similarity(exposed, clean, dim=0)) if clean.any() and exposed.any() else None
    out: dict[str, float | None] = {"victim_noise_std": noise, "victim_clean_cosine": cosine}
    if promised_noise_std is not None:
        out["noise_std_promised"] = promised_noise_std
        out["victim_noise_ratio"] = noise / promised_noise_std if promised_noise_std > 0 else None
    return out
