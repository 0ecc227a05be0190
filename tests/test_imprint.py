"""The imprint module's exact math: lone samples come back exactly, and the closed-form share of
lone samples matches a Monte Carlo estimate (Fowl et al. 2021; survey eqs. 6-7)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gialab.attacks.sparsification.imprint import (
    ImprintBlock, ImprintedModel, bin_differences, bin_thresholds, expected_single_fraction,
)
from gialab.errors import GialabError
from gialab.fl import fedsgd_update

SHAPE = (3, 8, 8)


def _imprinted(num_bins: int, seed: int = 0) -> tuple[ImprintedModel, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(3 * 8 * 8, generator=generator, dtype=torch.float64)
    direction /= direction.norm()
    torch.manual_seed(seed)
    tail = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))
    # Measurement stats of uniform [0, 1] pixels: mean sum(a)/2, std |a| / sqrt(12).
    block = ImprintBlock(SHAPE, direction, float(direction.sum()) / 2, 1 / 12**0.5, num_bins)
    return ImprintedModel(block, tail), direction


def test_a_sample_alone_in_its_bin_is_recovered_to_float64_precision() -> None:
    model, direction = _imprinted(num_bins=32)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.rand(24, *SHAPE, generator=generator), torch.randint(0, 4, (24,), generator=generator)
    update = fedsgd_update(model, F.cross_entropy, x, y)
    dw, db = bin_differences(update[0].double(), update[1].double())

    # Which bin each sample falls in, known here from the truth (the attack never needs it).
    block = model.block
    z = x.flatten(1).double() @ block.imprint.weight.double().T + block.imprint.bias.double()
    bins = (z > 0).sum(dim=1) - 1  # units are cumulative: sample fires units 0..bin
    counts = torch.bincount(bins, minlength=32)
    alone = [int(n) for n in range(24) if counts[bins[n]] == 1]
    assert len(alone) >= 8  # measured 19 of 24 for this seed
    for n in alone:
        estimate = dw[bins[n]] / db[bins[n]]
        relative = (estimate - x[n].flatten().double()).norm() / x[n].norm()
        assert relative < 1e-4  # measured <= 2e-14 (float64 block); eq. 7's cancellation is exact
    shared = [b for b in range(32) if counts[b] >= 2]
    for b in shared:  # a shared bin gives a mixture, far from each of its samples
        estimate = dw[b] / db[b]
        members = (bins == b).nonzero().flatten()
        assert all((estimate - x[m].flatten().double()).norm() / x[m].norm() > 1e-3 for m in members)


def test_unit_zero_fires_for_every_sample_and_bins_are_equiprobable() -> None:
    thresholds = bin_thresholds(8)
    assert thresholds[0] == float("-inf")
    probabilities = torch.distributions.Normal(0.0, 1.0).cdf(torch.cat([thresholds[1:], torch.tensor([9.0])]).double())
    probabilities = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), probabilities]))
    assert torch.allclose(probabilities, torch.full((8,), 1 / 8, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize(("batch", "bins"), [(64, 128), (256, 128), (16, 8)])
def test_closed_form_lone_fraction_matches_monte_carlo(batch: int, bins: int) -> None:
    generator = torch.Generator().manual_seed(batch + bins)
    trials = 4000
    cuts = bin_thresholds(bins)[1:].float()
    samples = torch.randn(trials, batch, generator=generator)
    which = torch.bucketize(samples, cuts)
    counts = torch.zeros(trials, bins).scatter_add_(1, which, torch.ones_like(samples))
    lone = (counts.gather(1, which) == 1).float().mean()
    expected = expected_single_fraction(batch, bins)
    # Standard error of the mean over 4000 trials is below 0.004 for these sizes; allow 4 of them.
    assert abs(float(lone) - expected) < 0.016


def test_closed_form_with_unequal_bins_matches_monte_carlo() -> None:
    p = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05], dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    which = torch.multinomial(p.float(), 20000 * 6, replacement=True, generator=generator).view(20000, 6)
    counts = torch.zeros(20000, 5).scatter_add_(1, which, torch.ones(20000, 6))
    lone = float((counts.gather(1, which) == 1).float().mean())
    assert abs(lone - expected_single_fraction(6, p)) < 0.01
    assert expected_single_fraction(6, 5) == pytest.approx(0.8**5)


def test_imprint_refuses_a_direction_of_the_wrong_size_and_a_zero_std() -> None:
    with pytest.raises(GialabError, match="3x8x8 = 192"):
        ImprintBlock(SHAPE, torch.ones(10), 0.0, 1.0, 4)
    with pytest.raises(GialabError, match="std must be positive"):
        ImprintBlock(SHAPE, torch.ones(192), 0.0, 0.0, 4)
