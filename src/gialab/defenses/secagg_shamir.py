"""Shamir t-out-of-n secret sharing over the prime field GF(2^521 - 1).

Bonawitz et al. 2017 (CCS) share two secrets of every client with threshold t: the
self-mask seed b_u and the mask key-agreement secret key s_u^SK. Any t shares rebuild a secret by
Lagrange interpolation at 0; any t - 1 shares are consistent with every secret (for each
candidate there is exactly one polynomial of degree t - 1 through it and the t - 1 points), so
they reveal nothing. That is what lets the server undo the masks of clients that drop out while
no coalition smaller than t learns anything.

Why this prime: both secrets are 256-bit strings, and the Mersenne prime 2^521 - 1 holds any of
them as one field element, so a secret is one polynomial and not a vector of chunks. Python's
integers do the field arithmetic; the cost is O(n t) multiplications per secret to share and
O(t^2) to rebuild, negligible next to mask expansion for the n <= a few hundred of one round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

PRIME = (1 << 521) - 1
SECRET_BYTES = 32


@dataclass(frozen=True)
class Share:
    """The point (x, f(x)) of the sharing polynomial f, held by the client at x."""

    x: int
    y: int


def split(secret: int, threshold: int, xs: Sequence[int], draw: Callable[[int], int]) -> list[Share]:
    """Shares of ``secret`` at the points ``xs`` of a random polynomial of degree ``threshold - 1``.

    ``draw(PRIME)`` supplies the uniformly random coefficients (the client's own randomness).
    """
    if not 0 <= secret < PRIME:
        raise ValueError("the secret is not a field element")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} needs 1..{len(xs)} share holders")
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    coefficients = [secret] + [draw(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in xs]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):  # Horner
        value = (value * x + c) % PRIME
    return value


@lru_cache(maxsize=64)
def _lagrange_weights(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """Weights w_i with f(at) = sum_i w_i f(x_i) for every f of degree < len(xs)."""
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def interpolate(points: Sequence[Share], at: int) -> int:
    """The value at ``at`` of the unique polynomial of degree < len(points) through ``points``."""
    xs = tuple(p.x for p in points)
    if len(set(xs)) != len(xs):
        raise ValueError("interpolation points must have distinct x")
    weights = _lagrange_weights(xs, at % PRIME)
    return sum(w * p.y for w, p in zip(weights, points, strict=True)) % PRIME


def reconstruct(shares: Sequence[Share], threshold: int) -> int:
    """The secret from ``threshold`` shares (extra shares are ignored; fewer is an error)."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares cannot rebuild a secret shared with threshold {threshold}")
    return interpolate(sorted(shares, key=lambda s: s.x)[:threshold], 0)


def secret_to_int(secret: bytes) -> int:
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes")
    return int.from_bytes(secret, "big")


def int_to_secret(value: int) -> bytes:
    return value.to_bytes(SECRET_BYTES, "big")
