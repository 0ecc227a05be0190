"""Distributed differential privacy: each of the M clients of a round adds a share of the noise.

Central DP's noise N(0, sigma^2 C^2) on the aggregate needs a trusted party to add it. Distributed
DP splits it: every client clips its update to norm C and adds N(0, sigma^2 C^2 / (M - 1)), and
secure aggregation hides the single, lightly noised updates, so only the sum is seen. The share is
the one the survey gives in its account of Boenisch et al. 2023a ("Reconstructing individual data
points in federated learning hardened with differential privacy and secure aggregation"), section 3:
"its sampled local Gaussian noise is dependent on the number of participants: N(0, sigma^2/(M-1) c^2)".

Why M - 1 and not M: the survey does not derive it. It states only that the share shrinks as M
grows, and that a malicious server which fills a round with M - 1 sybils adding less noise or none
leaves the target with its own share alone, so its protection "could significantly diminish,
approaching a negligible level". Dividing by M - 1 makes any M - 1 honest shares sum to exactly
sigma^2 C^2, so the intended noise survives one client that adds none (a dropout, or the view of
one client that knows its own noise); with all M honest the sum carries sigma^2 C^2 M / (M - 1).
The guarantee therefore holds only if (almost) all clients are honest and the server cannot isolate
one update; ``privacy`` reports both the aggregate's epsilon and the isolated update's.

M is the round's participant count as the server announces it (the protocol tells the defense
through ``with_cohort`` before clients train; a malicious server that picks the cohort fixes M),
unless ``clients`` pins it. The runner's privacy report uses ``clients`` or else
``fl.clients_per_round`` (else all clients), and refuses M < 2 before any round.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from pydantic import Field

from gialab.defenses.dp_accounting import GaussianMechanismParams, privacy_report, rdp_epsilon
from gialab.defenses.dp_local import add_gaussian_noise, clip_to_norm
from gialab.defenses.registry import register_defense
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate
from gialab.fl.setup import FLSetup


class DistributedDPParams(GaussianMechanismParams):
    clients: int | None = Field(
        None, ge=2, description="M, the cohort size each share is computed for; None: the round's participants")


def _check_cohort(m: int) -> int:
    if m < 2:
        raise GialabError(
            f"dp_distributed splits the noise over M - 1 clients and needs M >= 2 per round, got M={m}; "
            "raise fl.clients_per_round (or clients), or use dp_local")
    return m


@register_defense
class DistributedDP:
    """Clip to ``clip``, then add this client's share N(0, sigma^2 C^2 / (M - 1)) of the round's noise."""

    name = "dp_distributed"
    Params = DistributedDPParams

    def __init__(self, params: DistributedDPParams) -> None:
        self.params = params

    def check_round_size(self, participants: int) -> None:
        _check_cohort(self.params.clients or participants)

    def with_cohort(self, participants: int) -> DistributedDP:
        """This defense for a round of ``participants`` clients (kept if ``clients`` pins M)."""
        if self.params.clients is not None:
            return self
        return DistributedDP(self.params.model_copy(update={"clients": _check_cohort(participants)}))

    def share_std(self) -> float:
        """Std of one client's noise share, sigma * C / sqrt(M - 1)."""
        if self.params.clients is None:
            raise GialabError("dp_distributed does not know the round's client count M; set dp_distributed.clients")
        return self.params.noise_multiplier * self.params.clip / math.sqrt(self.params.clients - 1)

    def __call__(self, update: ClientUpdate, generator: torch.Generator) -> ClientUpdate:
        clipped = clip_to_norm(update.tensors, self.params.clip)
        return dataclasses.replace(update, tensors=add_gaussian_noise(clipped, self.share_std(), generator))

    def privacy(
        self, setup: FLSetup, *, clients: int, batch_size: int, local_examples: int
    ) -> dict[str, float | None]:
        """User-level guarantee of the honest aggregate, and of one update a server isolates.

        ``epsilon``: all M shares in the sum, noise multiplier sigma * sqrt(M / (M - 1)).
        ``epsilon_isolated``: one update alone (no secure aggregation, or M - 1 sybils adding no
        noise, Boenisch et al. 2023a), noise multiplier sigma / sqrt(M - 1). Sample rate 1 and one
        step per round, as for ``dp_local`` (the server picks the cohort).
        ``noise_std_promised``: the per-coordinate noise std the protocol promises each update in
        the sum, sigma * C (any M - 1 honest shares); ``noise_std_isolated``: what an isolated
        update carries, its own share sigma * C / sqrt(M - 1).
        """
        m = _check_cohort(self.params.clients or setup.clients_per_round or clients)
        sigma = self.params.noise_multiplier
        report = privacy_report(self.params, noise_multiplier=sigma * math.sqrt(m / (m - 1)), sample_rate=1.0,
                                steps=setup.rounds)
        isolated = rdp_epsilon(sigma / math.sqrt(m - 1), 1.0, setup.rounds, self.params.delta)
        return report | {
            "clients_per_round": float(m), "epsilon_isolated": isolated,
            "noise_std_promised": sigma * self.params.clip,
            "noise_std_isolated": sigma * self.params.clip / math.sqrt(m - 1),
        }
