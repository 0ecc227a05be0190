"""Krum and Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017).

An average can be moved anywhere by a single client. Krum instead picks the one update whose
n - f - 2 nearest neighbours (squared Euclidean distance) are closest: honest updates cluster, so
an outlier's neighbourhood is far, and with n > 2f + 2 the chosen update is provably close to the
honest ones. Multi-Krum averages the m best-scored updates (m = n - f by default), trading part
of that guarantee for the variance reduction of averaging. Scores are computed once on the whole
round, as in the paper. The server still sees every update (``reveals_individual``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from gialab.defenses.registry import register_defense
from gialab.defenses.robust_rule import ByzantineParams, client_ids, require_clients, stack_updates, unflatten
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate


def squared_distances(rows: torch.Tensor) -> torch.Tensor:
    """(n, n) squared Euclidean distances between the rows, computed row by row (exact, O(n d) memory)."""
    return torch.stack([((rows - row) ** 2).sum(dim=1) for row in rows])


def krum_scores(rows: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Each row's Krum score: the sum of squared distances to its n - f - 2 nearest other rows."""
    return krum_scores_from_distances(squared_distances(rows), byzantine)


def krum_scores_from_distances(distances: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Krum scores from an (n, n) squared-distance matrix (Bulyan reuses one matrix for every pick).

    At least one neighbour is used, so the score stays informative on the small sets Bulyan
    hands it in its last selection steps.
    """
    n = distances.shape[0]
    distances = distances.clone()
    distances.fill_diagonal_(float("inf"))
    neighbours = min(max(n - byzantine - 2, 1), n - 1)
    if neighbours < 1:
        return torch.zeros(n, dtype=distances.dtype, device=distances.device)
    return distances.topk(neighbours, dim=1, largest=False).values.sum(dim=1)


def krum_select(rows: torch.Tensor, byzantine: int) -> int:
    """Index of the row Krum selects (lowest score; the first on ties)."""
    return int(krum_scores(rows, byzantine).argmin())


def _krum_condition(n: int, f: int) -> bool:
    return n > 2 * f + 2


@register_defense
class Krum:
    """Returns the single update with the lowest Krum score."""

    name = "krum"
    reveals_individual = True
    Params = ByzantineParams

    def __init__(self, params: ByzantineParams) -> None:
        self.params = params

    def check_round_size(self, participants: int) -> None:
        f = self.params.byzantine
        require_clients(self.name, participants, f, "n > 2f + 2", _krum_condition, 2 * f + 3)

    def __call__(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return self.aggregate_with_acceptance(updates, generator)[0]

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """The selected update, and its client as the one accepted."""
        f = self.params.byzantine
        self.check_round_size(len(updates))
        rows = stack_updates(updates)
        pick = krum_select(rows, f)
        return unflatten(rows[pick], updates[0]), client_ids(updates, [pick])


class MultiKrumParams(ByzantineParams):
    select: int | None = Field(None, ge=1, description="number m of best-scored updates averaged; default n - f")


@register_defense
class MultiKrum:
    """Averages the ``select`` updates with the lowest Krum scores."""

    name = "multikrum"
    reveals_individual = True
    Params = MultiKrumParams

    def __init__(self, params: MultiKrumParams) -> None:
        self.params = params

    def check_round_size(self, participants: int) -> None:
        f, n = self.params.byzantine, participants
        require_clients(self.name, n, f, "n > 2f + 2", _krum_condition, 2 * f + 3)
        m = self.params.select if self.params.select is not None else n - f
        if m > n:
            raise GialabError(f"multikrum select={m} exceeds the round's n={n} client updates; use select <= {n}")

    def __call__(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return self.aggregate_with_acceptance(updates, generator)[0]

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """The mean of the ``select`` best-scored updates, and their clients as the ones accepted."""
        f, n = self.params.byzantine, len(updates)
        self.check_round_size(n)
        m = self.params.select if self.params.select is not None else n - f
        rows = stack_updates(updates)
        chosen = krum_scores(rows, f).argsort(stable=True)[:m]
        return unflatten(rows[chosen].mean(dim=0), updates[0]), client_ids(updates, chosen.tolist())
