"""How well an isolation attack isolated one sample or one client: truth-side, never seen by the attack.

Wen et al. 2022 (fishing) judge isolation by the cosine similarity of the isolated gradient to the
target's own single-sample gradient. The attack cannot compute it (it would need the private
sample), so it hands over what it isolated (:class:`gialab.attacks.base.IsolatedGradient`) and this
module compares it with every true sample's own gradient through the same model and label.
The best match is the target; the margin over the second best says whether the isolation
actually singled it out (through one model, unrelated samples' gradients can be very similar).

An attack that isolates a whole client (Pasquini et al. 2022, model inconsistency: every other
client's update is made to vanish, so the secure-aggregation sum is the victim's) hands over the
aggregate instead (:class:`gialab.attacks.base.IsolatedUpdate`), and ``update_isolation_scores``
compares it with what that client really sent, its whole-batch update (after any client-side
defense), on the parameters the attack vouches for and on all of them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from gialab.fl.update_vector import flatten

if TYPE_CHECKING:  # the contract types only; metrics import no attack code
    from gialab.attacks.base import IsolatedGradient, IsolatedUpdate


def isolation_scores(isolated: IsolatedGradient, images: torch.Tensor) -> dict[str, float | None]:
    """``isolation_cosine`` (best cosine to a true sample's own gradient), ``isolation_margin``
    (best minus second best) and ``isolation_index`` (which true sample, in truth order)."""
    # The sample's own gradient as a client training on it alone would compute it (train mode, on
    # a copy, so BatchNorm's running statistics of the attack's model stay untouched).
    model = copy.deepcopy(isolated.model).train()
    params = list(model.parameters())
    target = flatten(isolated.gradient, torch.float64)
    label = torch.tensor([isolated.label])
    cosines = []
    for x in images:
        loss = F.cross_entropy(model(x.unsqueeze(0)), label)
        own = flatten(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True), torch.float64)
        cosines.append(float(F.cosine_similarity(own, target, dim=0)))
    ranked = sorted(range(len(cosines)), key=lambda i: -cosines[i])
    best = cosines[ranked[0]]
    margin = best - cosines[ranked[1]] if len(ranked) > 1 else None
    return {"isolation_cosine": best, "isolation_margin": margin, "isolation_index": float(ranked[0])}


def update_isolation_scores(
    isolated: IsolatedUpdate, true_update: Sequence[torch.Tensor]
) -> dict[str, float | None]:
    """``victim_update_cosine``: cosine of the aggregate to the client's true update over the
    parameters the attack claims; ``victim_update_cosine_all``: the same over every parameter
    (what other clients still leave in the aggregate shows here); ``victim_update_claimed``: the
    share of the update's entries the attack claims. Cosines are ``None`` for a zero vector."""
    if len(isolated.update) != len(true_update):
        raise ValueError(f"the isolated update has {len(isolated.update)} tensors, the client sent {len(true_update)}")
    claimed = sorted(set(isolated.claimed))

    def cosine(indices: Sequence[int]) -> float | None:
        if not indices:
            return None
        a = flatten([isolated.update[i] for i in indices], torch.float64)
        b = flatten([true_update[i] for i in indices], torch.float64)
        if a.norm() == 0 or b.norm() == 0:
            return None
        return min(1.0, max(-1.0, float(F.cosine_similarity(a, b, dim=0))))  # float64 can overshoot 1

    total = sum(t.numel() for t in true_update)
    return {
        "victim_update_cosine": cosine(claimed),
        "victim_update_cosine_all": cosine(range(len(true_update))),
        "victim_update_claimed": sum(true_update[i].numel() for i in claimed) / total if total else 0.0,
    }
