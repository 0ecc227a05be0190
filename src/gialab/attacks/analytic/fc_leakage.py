"""Natural leakage of a fully connected layer with bias.

Paper: Phong et al. 2018, "Privacy-Preserving Deep Learning via Additively Homomorphic
Encryption" (IEEE TIFS); survey section 2 ("linear layers with ReLU activation functions can
naturally leak input information").

For a first layer ``z = W x + b`` and one sample, the chain rule gives
``dL/dW_i = (dL/dz_i) x^T`` and ``dL/db_i = dL/dz_i``, so every row with a non-zero bias
gradient yields the input exactly: ``x = (dL/dW_i) / (dL/db_i)``. We take the least-squares
combination over all rows, ``x = sum_i g_i dW_i / sum_i g_i^2`` with ``g = dL/db``, which is the
same exact answer for one sample and is numerically the best conditioned.

With a batch the rows mix the samples, ``dL/dW_i = (1/B) sum_n delta_{n,i} x_n^T``, except for
rows where the ReLU fired for exactly one sample: those still give that sample exactly. Such
rows agree with each other, so we group row estimates that coincide and return the largest
groups, as many as the attacker believes the batch holds (the example count when it is declared
side information, else ``max_images``). That is the natural-leakage effect the malicious-server
attacks (trap weights, Robbing the Fed) later amplify on purpose.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.input_layer import input_linear
from gialab.attacks.registry import register
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.threats import Capability, Observation


class FCLeakageParams(AttackParams):
    max_images: int = Field(1, ge=1, description="images to return when the example count is unknown")
    min_bias_grad: float = Field(1e-6, gt=0, description="rows with |dL/db_i| below this times the max are skipped")
    group_tol: float = Field(1e-3, gt=0, description="relative distance under which row estimates are one image")


@register
class FCLeakage(Attack):
    name = "fc-leakage"
    requires = frozenset({Capability.OBSERVE_INDIVIDUAL})
    Params = FCLeakageParams

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        input_linear(model, data, self.name)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        params: FCLeakageParams = self.params  # type: ignore[assignment]
        _, index = input_linear(observation.model, observation.data, self.name)
        update = observation.target_update()
        grad_w, grad_b = update[index].double(), update[index + 1].double()
        counts = observation.example_counts
        wanted = counts[observation.target] if counts else params.max_images

        keep = grad_b.abs() > params.min_bias_grad * grad_b.abs().max()
        if not keep.any():
            raise GialabError("fc-leakage: every bias gradient is zero; the update carries no input")
        rows = grad_w[keep] / grad_b[keep, None]  # one input estimate per active row
        weights = grad_b[keep] ** 2
        groups = _group_rows(rows, params.group_tol)
        ranked = sorted(groups, key=lambda g: (-len(g), -float(weights[g].sum())))[:wanted]
        images = torch.stack([
            (weights[g, None] * rows[g]).sum(0) / weights[g].sum() for g in ranked
        ])
        shape = observation.data.shape
        images = images.reshape(len(ranked), *shape).float().clamp(0, 1)
        return Reconstruction(
            images=images,
            labels=None,
            source=observation.target,
            details={"active_rows": float(keep.sum()), "groups": float(len(groups))},
        )


def _group_rows(rows: torch.Tensor, tol: float) -> list[torch.Tensor]:
    """Greedy grouping of row estimates that coincide up to ``tol`` (relative L2 distance).

    One matrix product gives all pairwise distances; the greedy pass then only reads booleans.
    """
    norms = rows.norm(dim=1).clamp_min(1e-12)
    close = (torch.cdist(rows, rows) < tol * norms[:, None]).numpy()
    unassigned = np.ones(len(rows), dtype=bool)
    groups: list[torch.Tensor] = []
    for seed in range(len(rows)):
        if not unassigned[seed]:
            continue
        members = np.flatnonzero(unassigned & close[seed])
        groups.append(torch.from_numpy(members))
        unassigned[members] = False
    return groups
