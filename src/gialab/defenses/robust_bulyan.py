"""Bulyan (El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
ICML 2018).

Krum bounds the distance to the honest updates, but in high dimension an attacker can stay
close in l2 while pushing a single coordinate far. Bulyan composes the two kinds of rule: it
first selects theta = n - 2f updates by applying Krum repeatedly (each pick leaves the candidate
set), then, coordinate by coordinate, averages the beta = theta - 2f selected values closest to
their median. It needs n >= 4f + 3. In the last selection steps the candidate set is smaller
than Krum's own n > 2f + 2, so the Krum score there uses at least one neighbour
(``robust_krum.krum_scores_from_distances``); the distances are computed once per round, a detail the paper leaves open.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gialab.defenses.registry import register_defense
from gialab.defenses.robust_coordinate import coordinate_median
from gialab.defenses.robust_krum import krum_scores_from_distances, squared_distances
from gialab.defenses.robust_rule import ByzantineParams, client_ids, require_clients, stack_updates, unflatten
from gialab.fl.client import ClientUpdate


def bulyan_selection(rows: torch.Tensor, byzantine: int) -> list[int]:
    """Indices of the theta = n - 2f rows picked by repeated Krum, in the order picked."""
    distances = squared_distances(rows)
    remaining = list(range(rows.shape[0]))
    chosen: list[int] = []
    for _ in range(rows.shape[0] - 2 * byzantine):
        index = torch.tensor(remaining)
        scores = krum_scores_from_distances(distances[index][:, index], byzantine)
        pick = remaining[int(scores.argmin())]
        chosen.append(pick)
        remaining.remove(pick)
    return chosen


def closest_to_median_mean(rows: torch.Tensor, keep: int) -> torch.Tensor:
    """Per column, the mean of the ``keep`` values closest to the column's median."""
    median = coordinate_median(rows)
    nearest = (rows - median).abs().topk(keep, dim=0, largest=False).indices
    return rows.gather(0, nearest).mean(dim=0)


def bulyan(rows: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Bulyan's aggregate of the rows with f = ``byzantine`` (needs n >= 4f + 3)."""
    selected = rows[bulyan_selection(rows, byzantine)]
    return closest_to_median_mean(selected, selected.shape[0] - 2 * byzantine)


@register_defense
class Bulyan:
    """Repeated Krum selection, then a coordinate-wise mean around the median."""

    name = "bulyan"
    reveals_individual = True
    Params = ByzantineParams

    def __init__(self, params: ByzantineParams) -> None:
        self.params = params

    def check_round_size(self, participants: int) -> None:
        f = self.params.byzantine
        require_clients(self.name, participants, f, "n >= 4f + 3", lambda n, f: n >= 4 * f + 3, 4 * f + 3)

    def __call__(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return self.aggregate_with_acceptance(updates, generator)[0]

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """Bulyan's aggregate, and the clients its repeated-Krum stage kept as the ones accepted."""
        f = self.params.byzantine
        self.check_round_size(len(updates))
        rows = stack_updates(updates)
        chosen = bulyan_selection(rows, f)
        selected = rows[chosen]
        aggregate = closest_to_median_mean(selected, selected.shape[0] - 2 * f)
        return unflatten(aggregate, updates[0]), client_ids(updates, chosen)
