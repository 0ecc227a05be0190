"""Shamir sharing for secure aggregation: t shares rebuild the secret, t - 1 reveal nothing."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from scipy import stats

from gialab.defenses.secagg_prg import SeededRandomness
from gialab.defenses.secagg_shamir import PRIME, Share, interpolate, reconstruct, split

SECRETS = [0, 1, (1 << 256) - 1, 0x1234_5678_9ABC_DEF0 << 100]


def _draw(seed: int):
    return SeededRandomness(seed.to_bytes(32, "big")).below


@pytest.mark.parametrize("secret", SECRETS)
def test_any_t_shares_rebuild_the_secret_exactly(secret: int) -> None:
    xs, t = list(range(1, 8)), 4
    shares = split(secret, t, xs, _draw(secret % 1000))
    for subset in itertools.combinations(shares, t):
        assert reconstruct(list(subset), t) == secret
    assert reconstruct(shares, t) == secret  # extra shares are harmless


def test_fewer_than_t_shares_are_refused_and_interpolate_to_something_else() -> None:
    secret, t = 987654321, 4
    shares = split(secret, t, [1, 2, 3, 4, 5], _draw(1))
    with pytest.raises(ValueError, match="cannot rebuild"):
        reconstruct(shares[:t - 1], t)
    assert interpolate(shares[:t - 1], 0) != secret


@pytest.mark.parametrize("t", [2, 3, 5])
def test_any_t_minus_1_shares_are_consistent_with_every_secret(t: int) -> None:
    """For every candidate secret there is a degree t-1 polynomial through it and the seen shares.

    That polynomial is a valid sharing of the candidate: its full set of shares rebuilds the
    candidate and agrees with the t - 1 shares an adversary holds, so those shares cannot tell
    the true secret from any other (information-theoretic hiding).
    """
    xs = list(range(1, t + 3))
    true_secret = 42
    seen = split(true_secret, t, xs, _draw(t))[:t - 1]
    for candidate in [0, 7, (1 << 256) - 1, PRIME - 1]:
        anchor = [Share(0, candidate), *seen]
        full = [Share(x, interpolate(anchor, x)) for x in xs]
        assert full[:t - 1] == seen  # identical to what the adversary sees
        for subset in itertools.combinations(full, t):
            assert reconstruct(list(subset), t) == candidate


def _low_bytes_of_two_shares(secret: int, draw, trials: int) -> np.ndarray:
    return np.array([[s.y & 0xFF for s in split(secret, 3, [1, 2, 3], draw)[:2]] for _ in range(trials)])


def test_two_of_three_shares_look_the_same_for_two_secrets() -> None:
    """Empirically: t-1 = 2 shares are uniform whatever the secret; a scheme without randomness is caught."""
    draw = _draw(99)
    for secret in (0, (1 << 256) - 1):
        low = _low_bytes_of_two_shares(secret, draw, 3000).ravel()
        assert stats.chisquare(np.bincount(low, minlength=256)).pvalue > 1e-3
    broken = _low_bytes_of_two_shares((1 << 256) - 1, lambda bound: 0, 50).ravel()  # constant polynomial
    assert stats.chisquare(np.bincount(broken, minlength=256)).pvalue < 1e-10


def test_share_points_must_be_distinct_and_nonzero() -> None:
    draw = random.Random(0).randrange
    with pytest.raises(ValueError):
        split(5, 2, [0, 1, 2], draw)
    with pytest.raises(ValueError):
        split(5, 2, [1, 1, 2], draw)
    with pytest.raises(ValueError):
        split(5, 4, [1, 2, 3], draw)
