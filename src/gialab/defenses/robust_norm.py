"""Norm bounding (Sun et al., "Can You Really Backdoor Federated Learning?", 2019).

Sun et al. find that a backdoor needs updates much larger than honest ones, and that clipping
every update to a norm bound M before averaging removes most of that effect at little cost to
the main task. Each client's whole update (all tensors together) is scaled by
min(1, M / ||update||_2), then the clipped updates are averaged, unweighted over clients (see
``robust_rule``): f Byzantine clients can then move the aggregate by at most f * M / n in norm.
No Byzantine count is needed. Unlike local DP clipping this runs on the server, which sees every
update; Sun et al.'s optional "weak DP" noise is left to the DP defenses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from gialab.defenses.registry import DefenseParams, register_defense
from gialab.defenses.robust_rule import client_ids, stack_updates, unflatten
from gialab.fl.client import ClientUpdate


def clip_rows(rows: torch.Tensor, bound: float) -> torch.Tensor:
    """Each row scaled down to l2 norm at most ``bound`` (rows within it are unchanged)."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows * torch.clamp(bound / norms.clamp_min(torch.finfo(rows.dtype).tiny), max=1.0)


class NormBoundParams(DefenseParams):
    bound: float = Field(1.0, gt=0.0, description="l2 norm M each client's whole update is clipped to")


@register_defense
class NormBound:
    """Clips each update to norm ``bound``, then takes the mean over clients."""

    name = "norm_bound"
    reveals_individual = True
    Params = NormBoundParams

    def __init__(self, params: NormBoundParams) -> None:
        self.params = params

    def __call__(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return self.aggregate_with_acceptance(updates, generator)[0]

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """The mean of the clipped updates, and the clients within the bound (not clipped) as accepted."""
        rows = stack_updates(updates)
        within = (rows.norm(dim=1) <= self.params.bound).nonzero().flatten().tolist()
        return unflatten(clip_rows(rows, self.params.bound).mean(dim=0), updates[0]), client_ids(updates, within)
