"""Fixed-point encoding of float updates into the ring Z_{2^k} for secure aggregation.

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS) mask vectors in Z_R; masks only hide a value perfectly if the value lives in the same finite
group, so float updates are first mapped to integers: ``round(x * 2^f) mod 2^k``. Why 2^k and not
a prime: additions then wrap for free in numpy's uint64 arithmetic (k <= 64, reduced by one bit
mask), and a PRG's output bits map to ring elements with no rejection sampling.

Why the sum cannot overflow: decoding lifts a ring element to the centred range
[-2^{k-1}, 2^{k-1}), so the sum decodes correctly whenever its true integer value lies there. Each
client refuses (one-line error) to encode a coordinate whose integer exceeds
``(2^{k-1} - 1) // n`` in magnitude, where n is the number of clients in the round; n such terms
cannot leave the range. With the defaults (k = 64, f = 24) a client may send |x| up to 2^39 / n
(about 8.6e9 at n = 64), far above any gradient, while the rounding error is 2^{-25} per client.
Example counts travel as exact integers in one extra coordinate, bounded the same way.
"""

from __future__ import annotations

import numpy as np

from gialab.errors import GialabError


class RingEncoding:
    """Fixed point with ``frac_bits`` fractional bits inside Z_{2^ring_bits}, held in uint64."""

    def __init__(self, ring_bits: int, frac_bits: int) -> None:
        if not 2 <= ring_bits <= 64:
            raise GialabError(f"secure_aggregation ring_bits {ring_bits} is out of range; use 2..64")
        if not 0 <= frac_bits <= ring_bits - 2:
            raise GialabError(
                f"secure_aggregation frac_bits {frac_bits} leaves no integer bits in a {ring_bits}-bit ring; "
                f"use 0..{ring_bits - 2}"
            )
        self.ring_bits = ring_bits
        self.frac_bits = frac_bits
        self.mask = np.uint64((1 << ring_bits) - 1)

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """``values mod 2^k`` (uint64 arithmetic already wraps mod 2^64, a multiple of 2^k)."""
        if self.ring_bits == 64:
            return values
        return np.bitwise_and(values, self.mask)

    def max_integer(self, clients: int) -> int:
        """The largest |integer| one of ``clients`` may encode so that their sum cannot wrap."""
        return ((1 << (self.ring_bits - 1)) - 1) // clients

    def client_bound(self, clients: int) -> float:
        """The largest |float| one of ``clients`` may encode (``max_integer`` in fixed point)."""
        return self.max_integer(clients) / 2.0**self.frac_bits

    def encode(self, values: np.ndarray, clients: int, what: str = "value", weight: float = 1.0) -> np.ndarray:
        """Round ``weight * values * 2^f`` into the ring; refuses what could overflow the sum of ``clients``."""
        scaled = np.multiply(values, weight * 2.0**self.frac_bits, dtype=np.float64)
        np.rint(scaled, out=scaled)
        return self._to_ring(scaled, clients, what, unit=2.0**self.frac_bits)

    def encode_integers(self, values: np.ndarray, clients: int, what: str = "count") -> np.ndarray:
        """Exact integers (example counts) in the ring, under the same no-overflow bound."""
        return self._to_ring(np.array(values, dtype=np.float64), clients, what, unit=1.0)

    def _to_ring(self, scaled: np.ndarray, clients: int, what: str, unit: float) -> np.ndarray:
        """Rounded floats to ring elements, in place; ``unit`` converts them back for the error message."""
        limit = float(self.max_integer(clients))
        if int(limit) > self.max_integer(clients):  # float rounding went up; stay inside int64
            limit = float(np.nextafter(limit, 0.0))
        low, high = (float(scaled.min()), float(scaled.max())) if scaled.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)):  # min/max propagate NaN and Inf
            raise GialabError(f"{what} contains NaN or Inf; secure aggregation can only sum finite values")
        if max(-low, high) > limit:
            raise GialabError(
                f"{what} reaches |{max(-low, high) / unit:.3g}| but a {self.ring_bits}-bit ring with "
                f"frac_bits={self.frac_bits} holds at most {self.max_integer(clients) / unit:.3g} per client for "
                f"{clients} clients; raise ring_bits or lower frac_bits"
            )
        return self.reduce(scaled.astype(np.int64).view(np.uint64))

    def decode(self, ring: np.ndarray) -> np.ndarray:
        """Centred lift of ring elements to floats: [2^{k-1}, 2^k) stands for negative numbers."""
        signed = self.decode_integers(ring)
        return signed.astype(np.float64) / 2.0**self.frac_bits

    def decode_integers(self, ring: np.ndarray) -> np.ndarray:
        """Centred lift of ring elements to int64."""
        ring = self.reduce(np.asarray(ring, dtype=np.uint64))
        if self.ring_bits == 64:
            return ring.view(np.int64)
        half = np.uint64(1 << (self.ring_bits - 1))
        signed = ring.astype(np.int64)
        return np.where(ring >= half, signed - np.int64(1 << self.ring_bits), signed)

    def quantization_bound(self, clients: int) -> float:
        """Largest error of the decoded sum of ``clients`` encodings: half a step per client."""
        return clients * 0.5 / 2.0**self.frac_bits
