"""Coordinate-wise median and trimmed mean (Yin et al., "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018).

Instead of choosing whole updates as Krum does, these rules treat each coordinate on its own:
the median of the n clients' values, or their mean after dropping the f largest and the f
smallest. An outlier can then only move a coordinate within the range of honest values, and Yin
et al. show both reach order-optimal error rates. The median is exact for even n too (the mean
of the two middle values; torch.median would return the lower one). The median tolerates any
f < n/2; ``byzantine`` only states the assumed f so that too small a round is refused. The
trimmed mean drops ``byzantine`` values at each end and so needs n > 2f.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gialab.defenses.registry import register_defense
from gialab.defenses.robust_rule import (
    ByzantineParams, coordinate_acceptance, require_clients, stack_updates, unflatten,
)
from gialab.fl.client import ClientUpdate


def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """Median of each column of ``rows``; the mean of the two middle values when n is even."""
    ordered = rows.sort(dim=0).values
    n = rows.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(rows: torch.Tensor, trim: int) -> torch.Tensor:
    """Mean of each column after dropping its ``trim`` largest and ``trim`` smallest values."""
    ordered = rows.sort(dim=0).values
    return ordered[trim: rows.shape[0] - trim].mean(dim=0)


def _require_majority(rule: str, n: int, f: int) -> None:
    require_clients(rule, n, f, "n > 2f", lambda n, f: n > 2 * f, 2 * f + 1)


@register_defense
class Median:
    """Coordinate-wise median of the round's updates."""

    name = "median"
    reveals_individual = True
    Params = ByzantineParams

    def __init__(self, params: ByzantineParams) -> None:
        self.params = params

    def check_round_size(self, participants: int) -> None:
        _require_majority(self.name, participants, self.params.byzantine)

    def __call__(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return self.aggregate_with_acceptance(updates, generator)[0]

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """The median, and the clients whose values are a middle value often enough (``robust_rule``)."""
        self.check_round_size(len(updates))
        rows = stack_updates(updates)
        n = rows.shape[0]
        ordered = rows.sort(dim=0).values
        low, high = ordered[(n - 1) // 2], ordered[n // 2]
        accepted = coordinate_acceptance(updates, rows, low, high, 2 - n % 2)
        return unflatten((low + high) / 2, updates[0]), accepted


@register_defense
class TrimmedMean:
    """Coordinate-wise mean after trimming ``byzantine`` values at each end."""

    name = "trimmed_mean"
    reveals_individual = True
    Params = ByzantineParams

    def __init__(self, params: ByzantineParams) -> None:
        self.params = params

    def check_round_size(self, participants: int) -> None:
        _require_majority(self.name, participants, self.params.byzantine)

    def __call__(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return self.aggregate_with_acceptance(updates, generator)[0]

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """The trimmed mean, and the clients whose values survive the trim often enough (``robust_rule``)."""
        f = self.params.byzantine
        self.check_round_size(len(updates))
        rows = stack_updates(updates)
        n = rows.shape[0]
        ordered = rows.sort(dim=0).values
        kept = ordered[f: n - f]
        accepted = coordinate_acceptance(updates, rows, kept[0], kept[-1], n - 2 * f)
        return unflatten(kept.mean(dim=0), updates[0]), accepted
