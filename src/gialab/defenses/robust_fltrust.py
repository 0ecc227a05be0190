"""FLTrust (Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
NDSS 2021).

Rules such as Krum and the median trust the majority; FLTrust instead trusts the server's own
update g0, computed on a small clean root data set. Each client update g_i gets the trust score
TS_i = ReLU(cos(g_i, g0)), is rescaled to g0's norm (so no client wins by size), and the
aggregate is sum_i TS_i * (||g0|| / ||g_i||) g_i / sum_i TS_i. An update pointing away from g0
gets weight zero whatever its size; if every score is zero the aggregate is zero (the model does
not move), as in the paper. No Byzantine count is needed.

Where g0 comes from: in this protocol the server does not train, and an aggregator is given only
the round's updates, not the model, so it cannot compute g0 itself. Two sources are offered:

* from a scenario, ``root_client`` names the client whose data stands for the server's root set;
  its update (which went through the same client-side transforms) is used as g0 only and is not
  aggregated. That client must take part in every round;
* from Python, ``FLTrust(params, root_update=fn)``: ``fn(updates)`` returns g0 as tensors
  aligned with the model (e.g. a gradient the caller computes on its own root data), and every
  client update is aggregated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from gialab.defenses.registry import DefenseParams, register_defense
from gialab.defenses.robust_rule import client_ids, stack_updates, unflatten
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate

RootUpdate = Callable[[Sequence[ClientUpdate]], Sequence[torch.Tensor]]


def trust_scores(rows: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """Each row's trust score ``ReLU(cos(row, root))``."""
    tiny = torch.finfo(rows.dtype).tiny
    return torch.relu(rows @ root / (rows.norm(dim=1) * root.norm()).clamp_min(tiny))


def fltrust(rows: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """FLTrust's aggregate of the client rows given the server's root update (all flat vectors)."""
    tiny = torch.finfo(rows.dtype).tiny
    root_norm = root.norm()
    norms = rows.norm(dim=1)
    trust = trust_scores(rows, root)
    if float(trust.sum()) == 0.0:
        return torch.zeros_like(root)
    rescaled = rows * (root_norm / norms.clamp_min(tiny)).unsqueeze(1)
    return (trust.unsqueeze(1) * rescaled).sum(dim=0) / trust.sum()


class FLTrustParams(DefenseParams):
    root_client: int = Field(0, ge=0, description="client whose update stands for the server's root-data update")


@register_defense
class FLTrust:
    """Trust-weighted mean of norm-equalized updates around the server's root update."""

    name = "fltrust"
    reveals_individual = True
    Params = FLTrustParams

    def __init__(self, params: FLTrustParams, root_update: RootUpdate | None = None) -> None:
        self.params = params
        self.root_update = root_update

    def check_round_size(self, participants: int) -> None:
        """With ``root_client`` the root update is not aggregated, so a round needs another client."""
        if self.root_update is None and participants < 2:
            raise GialabError(
                f"fltrust needs at least one client update besides the root update, but a round has n={participants}; "
                "use clients >= 2")

    def __call__(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return self.aggregate_with_acceptance(updates, generator)[0]

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """The aggregate, and the clients with a positive trust score as the ones accepted."""
        if self.root_update is not None:
            clients = list(updates)
            root = torch.cat([t.reshape(-1) for t in self.root_update(updates)])
        else:
            root_id = self.params.root_client
            roots = [u for u in updates if u.client_id == root_id]
            clients = [u for u in updates if u.client_id != root_id]
            if not roots:
                ids = sorted(u.client_id for u in updates)
                raise GialabError(f"fltrust root_client {root_id} did not take part in the round; participants: {ids}")
            root = torch.cat([t.reshape(-1) for t in roots[0].tensors])
        if not clients:
            raise GialabError("fltrust needs at least one client update besides the root update; use clients >= 2")
        rows = stack_updates(clients)
        trusted = (trust_scores(rows, root) > 0).nonzero().flatten().tolist()
        return unflatten(fltrust(rows, root), clients[0]), client_ids(clients, trusted)
