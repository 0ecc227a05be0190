"""(epsilon, delta) of a Gaussian mechanism repeated over rounds, from Opacus' RDP accountant.

Every DP defense here adds Gaussian noise of standard deviation ``noise_multiplier * C`` to a sum
whose sensitivity is the clipping norm C, possibly on a random subsample, and repeats it each
round. Renyi differential privacy (Mironov 2017, "Renyi Differential Privacy") composes such
steps by adding their Renyi divergences, and the sampled Gaussian mechanism's bound (Mironov,
Talwar and Zhang 2019) is what Abadi et al. 2016's moments accountant became; Opacus'
``RDPAccountant`` implements both and converts the total to (epsilon, delta). Using it rather than
our own arithmetic keeps the reported epsilon the number a practitioner would get from Opacus.

Opacus' analysis assumes Poisson sampling with rate q; clients here take a fixed-size random
batch, the usual approximation (as in Opacus' own fixed-batch data loaders).
"""

from __future__ import annotations

import warnings

from opacus.accountants import RDPAccountant
from pydantic import Field

from gialab.defenses.registry import DefenseParams


class GaussianMechanismParams(DefenseParams):
    """Clipping norm C, noise multiplier sigma (noise std sigma*C) and the delta epsilon is quoted at."""

    clip: float = Field(1.0, gt=0, description="L2 norm C every clipped vector is scaled down to")
    noise_multiplier: float = Field(1.0, ge=0, description="sigma: Gaussian noise std is sigma * clip")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta at which epsilon is reported")


_ALPHAS = [1 + x / 100 for x in range(1, 10)] + list(RDPAccountant.DEFAULT_ALPHAS)


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float | None:
    """Epsilon after ``steps`` sampled Gaussian mechanisms; ``None`` when there is no noise (no guarantee)."""
    if noise_multiplier <= 0:
        return None
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        # Tiny noise puts the optimal Renyi order below the smallest one tried; the finer orders
        # near 1 tighten that case, and the bound left is still valid, only loose (and huge).
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        return float(accountant.get_epsilon(delta=delta, alphas=_ALPHAS))


def privacy_report(
    params: GaussianMechanismParams, *, noise_multiplier: float, sample_rate: float, steps: int
) -> dict[str, float | None]:
    """What a run records: epsilon at the defense's delta, and the accountant's inputs that produced it."""
    return {
        "epsilon": rdp_epsilon(noise_multiplier, sample_rate, steps, params.delta),
        "delta": params.delta,
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "steps": float(steps),
    }
