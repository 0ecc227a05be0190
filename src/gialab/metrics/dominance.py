"""How much of an aggregate a class's examples make up: truth-side, never seen by the attack.

A class-targeted attack on the aggregate (CGI, Wei et al. 2023) works by making one class's
examples dominate what the server aggregates: the gradient of those examples alone should point
the way the aggregate does. ``target_cosine`` is that cosine: the aggregate against the gradient
of the mean loss over the claimed examples (their true class) through the model of the round.
Near 1, inverting the aggregate is inverting those examples' batch gradient; near 0, they are a
small part of it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def target_cosine(aggregate: Sequence[torch.Tensor], model: nn.Module, images: torch.Tensor,
                  labels: torch.Tensor) -> float:
    """Cosine between ``aggregate`` and the mean-loss gradient of ``images`` (labels ``labels``)."""
    model = copy.deepcopy(model).train()
    params = list(model.parameters())
    loss = F.cross_entropy(model(images), labels)
    own = torch.cat([g.reshape(-1).double() for g in torch.autograd.grad(loss, params)])
    agg = torch.cat([t.reshape(-1).double() for t in aggregate])
    return float(F.cosine_similarity(own, agg, dim=0))
