"""Plain FedAvg/FedSGD aggregation: the example-count weighted mean (McMahan et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gialab.defenses.registry import DefenseParams, register_defense
from gialab.fl.client import ClientUpdate


@register_defense
class WeightedMean:
    """Weights each update by its client's example count, so the mean is over examples, not clients."""

    name = "mean"
    reveals_individual = True
    Params = DefenseParams

    def __init__(self, params: DefenseParams | None = None) -> None:
        self.params = params or DefenseParams()

    def __call__(self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        total = sum(u.num_examples for u in updates)
        return tuple(
            sum(u.tensors[i] * (u.num_examples / total) for u in updates)
            for i in range(len(updates[0].tensors))
        )
