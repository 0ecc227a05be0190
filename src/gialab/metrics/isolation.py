"""How well an isolation attack isolated one sample: truth-side, never seen by the attack.

Wen et al. 2022 (fishing) judge isolation by the cosine similarity of the isolated gradient to the
target's own single-sample gradient. The attack cannot compute it (it would need the private
sample), so it hands over what it isolated (:class:`gialab.attacks.base.IsolatedGradient`) and this
module compares it with every true sample's own gradient through the same model and label.
The best match is the target; the margin over the second best says whether the isolation
actually singled it out (through one model, unrelated samples' gradients can be very similar).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the contract type only; metrics import no attack code
    from gialab.attacks.base import IsolatedGradient


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])


def isolation_scores(isolated: IsolatedGradient, images: torch.Tensor) -> dict[str, float | None]:
    """``isolation_cosine`` (best cosine to a true sample's own gradient), ``isolation_margin``
    (best minus second best) and ``isolation_index`` (which true sample, in truth order)."""
    # The sample's own gradient as a client training on it alone would compute it (train mode, on
    # a copy, so BatchNorm's running statistics of the attack's model stay untouched).
    model = copy.deepcopy(isolated.model).train()
    params = list(model.parameters())
    target = _flat(isolated.gradient)
    label = torch.tensor([isolated.label])
    cosines = []
    for x in images:
        loss = F.cross_entropy(model(x.unsqueeze(0)), label)
        own = _flat(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))
        cosines.append(float(F.cosine_similarity(own, target, dim=0)))
    ranked = sorted(range(len(cosines)), key=lambda i: -cosines[i])
    best = cosines[ranked[0]]
    margin = best - cosines[ranked[1]] if len(ranked) > 1 else None
    return {"isolation_cosine": best, "isolation_margin": margin, "isolation_index": float(ranked[0])}
