"""How well a disaggregation attack read the participant matrix and the victim's update: truth-side.

Lam et al. 2021 judge gradient disaggregation by how many users' participation vectors (columns
of P in G_aggregated = P G_individual, survey eq. 3) come back exactly, and by how close the
disaggregated update is to the user's own. The attack cannot compute either (it never learns who
took part), so it hands over its claim (:class:`gialab.attacks.base.Disaggregation`) and this
module compares it with the protocol's participation log and the victim's sent update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the contract type only; metrics import no attack code
    from gialab.attacks.base import Disaggregation


def participation_matrix(log: Sequence[Sequence[int]], clients: int, rounds: Sequence[int]) -> torch.Tensor:
    """The true 0/1 matrix P (len(rounds) x clients) from the protocol's participation log."""
    matrix = torch.zeros(len(rounds), clients, dtype=torch.bool)
    for row, r in enumerate(rounds):
        matrix[row, list(log[r])] = True
    return matrix


def disaggregation_scores(
    claim: Disaggregation, log: Sequence[Sequence[int]], clients: int,
    true_update: Sequence[torch.Tensor], victim: int,
) -> dict[str, float]:
    """``participation_exact_fraction`` (users whose whole vector is right), ``participation_entry_accuracy``,
    ``victim_participation_exact``, and the victim update's ``victim_update_cosine`` and
    ``victim_update_relative_error`` (||recovered - true|| / ||true||)."""
    truth = participation_matrix(log, clients, claim.rounds)
    claimed = claim.participation.bool()
    if claimed.shape != truth.shape:
        raise ValueError(f"claimed participation has shape {tuple(claimed.shape)}, the truth {tuple(truth.shape)}")
    exact = (claimed == truth).all(dim=0)
    recovered = torch.cat([t.reshape(-1).double() for t in claim.update])
    true = torch.cat([t.reshape(-1).double() for t in true_update])
    return {
        "participation_exact_fraction": float(exact.double().mean()),
        "participation_entry_accuracy": float((claimed == truth).double().mean()),
        "victim_participation_exact": float(exact[victim]),
        "victim_update_cosine": float(torch.nn.functional.cosine_similarity(recovered, true, dim=0)),
        "victim_update_relative_error": float((recovered - true).norm() / true.norm().clamp_min(1e-30)),
    }
