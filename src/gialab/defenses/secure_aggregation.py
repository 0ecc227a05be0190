"""Secure aggregation as a gialab aggregator: the server learns the example-weighted mean, nothing else.

Runs the message-level protocol of Bonawitz et al. 2017 ("Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS; rounds 0 AdvertiseKeys, 1 ShareKeys, 2
MaskedInputCollection and 4 Unmasking, see ``secagg_protocol``) over the round's updates.
``reveals_individual = False``, so the threat layer withdraws ``observe_individual``: an
honest-but-curious server sees only what the protocol's server object outputs.

Design choices, and why:

* Weighting. FedAvg wants sum_u n_u x_u / sum_u n_u. Each client pre-scales its update by its own
  example count n_u and appends n_u as one more (integer) coordinate, both masked; the server
  learns the two sums and divides. It so learns the round's total example count but no client's.
* Dropouts. ``dropouts`` clients (chosen with the protocol's seeded generator) vanish after
  sharing keys, before sending their masked input: they are not in the aggregate, which is the
  example-weighted mean over the clients whose masked input arrived. ``late_dropouts`` vanish
  after sending it: their input is in the aggregate (the server rebuilds their self mask from the
  others' shares). More than n - t dropouts in all abort the round with a one-line error, as the
  protocol must; a scenario that asks for that many is refused before its first round
  (``check_round_size``). The protocol still records every participant's update in the
  transcript; only the aggregate reaches an attacker under this aggregator.
* Threshold. Default max(n // 2 + 1, ceil(2n / 3)); any t with n // 2 + 1 <= t <= n is accepted.
  More than half is required so that no two disjoint groups of clients can each answer the
  server, which is what would let a server that lies about who dropped out obtain both the
  s^SK and the b shares of one client.
* Randomness. Key pairs, seeds and Shamir coefficients come from a per-client AES-CTR generator
  seeded from the protocol's torch generator, so runs repeat with the scenario's seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from gialab.defenses.registry import DefenseParams, register_defense
from gialab.defenses.secagg_encoding import RingEncoding
from gialab.defenses.secagg_prg import SeededRandomness
from gialab.defenses.secagg_protocol import SecAggClient, SecAggServer, run_rounds
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate


class SecureAggregationParams(DefenseParams):
    threshold: int | None = Field(
        None, ge=1, description="Shamir threshold t; default max(n//2+1, ceil(2n/3)) for n clients in the round")
    dropouts: int = Field(0, ge=0, description="clients that drop after sharing keys, before their masked input")
    late_dropouts: int = Field(0, ge=0, description="clients that drop after their masked input, before unmasking")
    ring_bits: int = Field(64, ge=8, le=64, description="k of the ring Z_2^k")
    frac_bits: int = Field(24, ge=0, le=62, description="fractional bits of the fixed-point encoding")


def default_threshold(clients: int) -> int:
    return max(clients // 2 + 1, math.ceil(2 * clients / 3))


@dataclass(frozen=True)
class SecureSum:
    """What the protocol's server outputs, decoded: sum_u n_u x_u and sum_u n_u over U3."""

    weighted_sum: np.ndarray
    total_examples: int
    contributors: tuple[int, ...]  # positions (0-based) of the clients whose input is in the sum


def secure_sum(
    vectors: Sequence[np.ndarray], counts: Sequence[int], *, threshold: int, encoding: RingEncoding, seed: bytes,
    drop_before_masking: Sequence[int] = (), drop_before_unmasking: Sequence[int] = (),
) -> SecureSum:
    """Run the protocol on float ``vectors`` weighted by ``counts``; drops name 0-based positions."""
    n = len(vectors)
    length = (int(np.asarray(vectors[0]).size) if n else 0) + 1  # the update, then the example count
    clients = []
    for i, (vector, count) in enumerate(zip(vectors, counts, strict=True)):
        weighted = encoding.encode(vector, n, f"client {i}'s example-weighted update", weight=count)
        ring = np.concatenate([weighted, encoding.encode_integers(np.array([count]), n, f"client {i}'s example count")])
        randomness = SeededRandomness(hashlib.sha256(seed + i.to_bytes(4, "big")).digest())
        clients.append(SecAggClient(i + 1, ring, threshold=threshold, encoding=encoding, randomness=randomness))
    server = SecAggServer(threshold, encoding, length)
    ring_sum = run_rounds(
        server, clients,
        drop_before_masking=[i + 1 for i in drop_before_masking],
        drop_before_unmasking=[i + 1 for i in drop_before_unmasking],
    )
    return SecureSum(
        weighted_sum=encoding.decode(ring_sum[:-1]),
        total_examples=int(encoding.decode_integers(ring_sum[-1:])[0]),
        contributors=tuple(u - 1 for u in sorted(server.masked)),
    )


@register_defense
class SecureAggregation:
    """Bonawitz et al. 2017 secure aggregation; the aggregate is the weighted mean over survivors."""

    name = "secure_aggregation"
    reveals_individual = False
    Params = SecureAggregationParams

    def __init__(self, params: SecureAggregationParams | None = None) -> None:
        self.params = params or SecureAggregationParams()
        self.encoding = RingEncoding(self.params.ring_bits, self.params.frac_bits)

    def threshold_for(self, clients: int) -> int:
        """The round's threshold t for n = ``clients``; refuses t outside n//2+1..n."""
        t = self.params.threshold if self.params.threshold is not None else default_threshold(clients)
        low = clients // 2 + 1
        if t > clients:
            raise GialabError(
                f"secure_aggregation threshold t={t} exceeds the n={clients} clients of the round; "
                f"use {low}..{clients}")
        if t < low:
            raise GialabError(
                f"secure_aggregation threshold t={t} is not more than half of the n={clients} clients; "
                f"use {low}..{clients}")
        return t

    def check_round_size(self, participants: int) -> None:
        """Refuse a round of n clients the protocol cannot finish: t outside n//2+1..n, or > n - t dropouts."""
        t = self.threshold_for(participants)
        dropped = self.params.dropouts + self.params.late_dropouts
        if dropped > participants - t:
            raise GialabError(
                f"secure_aggregation with threshold t={t} survives at most n - t = {participants - t} dropouts of the "
                f"n={participants} clients, but dropouts + late_dropouts = {dropped}; drop fewer or lower the threshold")

    def __call__(self, updates: Sequence[ClientUpdate], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        ordered = sorted(updates, key=lambda u: u.client_id)
        n = len(ordered)
        t = self.threshold_for(n)
        seed = bytes(torch.randint(0, 256, (32,), generator=generator, dtype=torch.uint8).tolist())
        order = torch.randperm(n, generator=generator).tolist()
        early = order[:self.params.dropouts]
        late = order[self.params.dropouts:self.params.dropouts + self.params.late_dropouts]
        template = ordered[0].tensors
        vectors = [
            torch.cat([x.detach().reshape(-1) for x in u.tensors]).cpu().numpy()  # widened to float64 when encoded
            for u in ordered
        ]
        result = secure_sum(
            vectors, [u.num_examples for u in ordered], threshold=t, encoding=self.encoding, seed=seed,
            drop_before_masking=early, drop_before_unmasking=late,
        )
        mean = torch.from_numpy(result.weighted_sum / result.total_examples)
        out, start = [], 0
        for x in template:
            out.append(mean[start:start + x.numel()].reshape(x.shape).to(dtype=x.dtype, device=x.device))
            start += x.numel()
        return tuple(out)
