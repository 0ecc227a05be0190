"""Plain FedAvg/FedSGD aggregation: the example-count weighted mean (McMahan et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gialab.fl.client import ClientUpdate


class WeightedMean:
    """Weights each update by its client's example count, so the mean is over examples, not clients."""

    name = "mean"
    reveals_individual = True

    def __call__(self, updates: Sequence[ClientUpdate]) -> tuple[torch.Tensor, ...]:
        total = sum(u.num_examples for u in updates)
        return tuple(
            sum(u.tensors[i] * (u.num_examples / total) for u in updates)
            for i in range(len(updates[0].tensors))
        )
