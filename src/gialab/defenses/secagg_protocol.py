"""The message-level secure aggregation protocol of Bonawitz et al. 2017.

"Practical Secure Aggregation for Privacy-Preserving Machine Learning" (Bonawitz, Ivanov, Kreuter,
Marcedone, McMahan, Patel, Ramage, Segal, Seth; ACM CCS 2017), in its honest-but-curious form:
without the signatures and the consistency-check round that only an active server makes
necessary. Key names follow the paper (c for the share channel, s for the masks). Clients are
numbered 1..n; that number is also the point at which each holds Shamir shares. Rounds, as in
the paper:

0. AdvertiseKeys: each client u makes two X25519 key pairs, (c_u^PK, c_u^SK) for the channel that
   carries shares and (s_u^PK, s_u^SK) for the pairwise masks, and sends both public keys. The
   server broadcasts the roster U1 (aborts if |U1| < t).
1. ShareKeys: u draws a self-mask seed b_u, splits s_u^SK and b_u into t-out-of-|U1| Shamir shares,
   and seals the pair of shares meant for v with AES-GCM under KA(c_u^SK, c_v^PK). The server only
   forwards ciphertexts, so it never holds a share in clear before unmasking. U2 = senders.
2. MaskedInputCollection: u sends y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} +-PRG(KA(s_u^SK, s_v^PK))
   in Z_{2^k}, with + when u < v and - when u > v, so every pairwise mask cancels in the sum of two
   clients who both send. U3 = senders.
3. ConsistencyCheck: only needed against an active server (it makes clients sign U3); skipped.
4. Unmasking: the server tells survivors U3 and dropped clients U2 \\ U3. Each responding client
   returns its shares of b_v for v in U3 and of s_v^SK for v in U2 \\ U3, never both for one v (it
   refuses a request that asks for both). With t responses (U5) the server rebuilds s_v^SK of every
   dropped v and recomputes the masks it left on the survivors, rebuilds b_u of every survivor and
   removes its self mask, and obtains sum_{u in U3} x_u.

Why both masks: with pairwise masks alone, a client whose masked input merely arrives late,
after the server has rebuilt its s_u^SK to recover from its presumed dropout, would be unmasked
outright. The self mask b_u makes that useless without b_u's shares, and honest clients never
release both for one client. Shares travel AES-GCM-sealed, so the forwarding server cannot read them early.
Why real X25519 and AES: the point of gialab's defenses is that they are the real
mechanism, so what the server object holds is what a real server would hold.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gialab.defenses.secagg_encoding import RingEncoding
from gialab.defenses.secagg_prg import SeededRandomness, derive_key, expand_mask
from gialab.defenses.secagg_shamir import PRIME, Share, int_to_secret, reconstruct, secret_to_int, split
from gialab.errors import GialabError

_FIELD_BYTES = (PRIME.bit_length() + 7) // 8
_AAD = b"gialab-secagg-shares"


@dataclass(frozen=True)
class AdvertisedKeys:
    """Round 0, client -> server -> all: the two public keys of ``sender``."""

    sender: int
    c_public: bytes
    s_public: bytes


@dataclass(frozen=True)
class SealedShares:
    """Round 1, client -> server -> ``recipient``: shares of the sender's s^SK and b, encrypted."""

    sender: int
    recipient: int
    ciphertext: bytes


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client -> server: y_u, a vector of ring elements (uint64, reduced mod 2^k)."""

    sender: int
    vector: np.ndarray


@dataclass(frozen=True)
class UnmaskingRequest:
    """Round 4, server -> clients: who sent a masked input (U3) and who did not (U2 \\ U3)."""

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskingResponse:
    """Round 4, client -> server: shares of b_v for survivors and of s_v^SK for dropped clients."""

    sender: int
    self_mask_shares: Mapping[int, Share]
    key_shares: Mapping[int, Share]


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def pairwise_mask(own: X25519PrivateKey, other_public: bytes, length: int) -> np.ndarray:
    """PRG(KA.agree(s_u^SK, s_v^PK)): the same words for u and v (read-only array)."""
    secret = own.exchange(X25519PublicKey.from_public_bytes(other_public))
    return expand_mask(secret, length, b"pairwise")


def self_mask(seed: bytes, length: int) -> np.ndarray:
    """PRG(b_u) (read-only array)."""
    return expand_mask(seed, length, b"self")


def _nonce(sender: int, recipient: int) -> bytes:
    # u->v and v->u share one channel key, so the direction goes into the nonce: never reused.
    return sender.to_bytes(6, "big") + recipient.to_bytes(6, "big")


class SecAggClient:
    """One client's side of the protocol; its input never leaves it except masked.

    ``vector`` is already in the ring (the caller encodes the example-weighted update and its
    example count with a :class:`RingEncoding`); ``randomness`` draws the keys, b_u and the
    Shamir coefficients.
    """

    def __init__(
        self, index: int, vector: np.ndarray, *, threshold: int, encoding: RingEncoding,
        randomness: SeededRandomness,
    ) -> None:
        if index < 1:
            raise ValueError("client numbers start at 1 (they are Shamir share points)")
        self.index = index
        self.threshold = threshold
        self._encoding = encoding
        self._vector = encoding.reduce(np.asarray(vector, dtype=np.uint64))
        self._random = randomness
        self._c_key = X25519PrivateKey.from_private_bytes(randomness.bytes(32))
        self._s_key = X25519PrivateKey.from_private_bytes(randomness.bytes(32))
        self._b_seed = randomness.bytes(32)
        self._roster: dict[int, AdvertisedKeys] = {}
        self._held: dict[int, tuple[Share, Share]] = {}  # sender -> (share of s^SK, share of b)
        self._u2: tuple[int, ...] = ()
        self._channels: dict[int, AESGCM] = {}

    # Round 0
    def advertise_keys(self) -> AdvertisedKeys:
        return AdvertisedKeys(self.index, _public_bytes(self._c_key), _public_bytes(self._s_key))

    # Round 1
    def share_keys(self, roster: Mapping[int, AdvertisedKeys]) -> list[SealedShares]:
        if self.index not in roster or len(roster) < self.threshold:
            raise GialabError(f"client {self.index} got a roster of {len(roster)} below threshold {self.threshold}")
        keys = [k for a in roster.values() for k in (a.c_public, a.s_public)]
        if len(set(keys)) != len(keys):
            raise GialabError(f"client {self.index} got a roster with repeated public keys; aborting")
        self._roster = dict(roster)
        points = sorted(roster)
        s_shares = split(secret_to_int(_private_bytes(self._s_key)), self.threshold, points, self._random.below)
        b_shares = split(secret_to_int(self._b_seed), self.threshold, points, self._random.below)
        sealed = []
        for v, s_share, b_share in zip(points, s_shares, b_shares, strict=True):
            if v == self.index:
                self._held[v] = (s_share, b_share)
                continue
            plain = (self.index.to_bytes(4, "big") + v.to_bytes(4, "big")
                     + s_share.y.to_bytes(_FIELD_BYTES, "big") + b_share.y.to_bytes(_FIELD_BYTES, "big"))
            sealed.append(SealedShares(self.index, v, self._channel(v).encrypt(_nonce(self.index, v), plain, _AAD)))
        return sealed

    def _channel(self, other: int) -> AESGCM:
        """AES-GCM under KA.agree(c_u^SK, c_v^PK); agreed once per peer, used both ways."""
        if other not in self._channels:
            secret = self._c_key.exchange(X25519PublicKey.from_public_bytes(self._roster[other].c_public))
            self._channels[other] = AESGCM(derive_key(b"channel", secret))
        return self._channels[other]

    # Round 2
    def masked_input(self, inbox: Sequence[SealedShares]) -> MaskedInput:
        for message in inbox:
            u = message.sender
            if message.recipient != self.index or u not in self._roster or u == self.index:
                raise GialabError(f"client {self.index} got shares addressed to {message.recipient} from {u}")
            plain = self._channel(u).decrypt(_nonce(u, self.index), message.ciphertext, _AAD)
            if int.from_bytes(plain[:4], "big") != u or int.from_bytes(plain[4:8], "big") != self.index:
                raise GialabError(f"client {self.index} got shares whose header does not match their sender {u}")
            s_y = int.from_bytes(plain[8:8 + _FIELD_BYTES], "big")
            b_y = int.from_bytes(plain[8 + _FIELD_BYTES:], "big")
            self._held[u] = (Share(self.index, s_y), Share(self.index, b_y))
        self._u2 = tuple(sorted({m.sender for m in inbox} | {self.index}))
        if len(self._u2) < self.threshold:
            raise GialabError(
                f"client {self.index}: only {len(self._u2)} clients shared keys, below threshold {self.threshold}")
        length = self._vector.shape[0]
        y = self._vector.copy()
        np.add(y, self_mask(self._b_seed, length), out=y)
        for v in self._u2:
            if v == self.index:
                continue
            mask = pairwise_mask(self._s_key, self._roster[v].s_public, length)
            (np.add if self.index < v else np.subtract)(y, mask, out=y)
        return MaskedInput(self.index, self._encoding.reduce(y))

    # Round 4
    def unmask(self, request: UnmaskingRequest) -> UnmaskingResponse:
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            both = sorted(survivors & dropped)
            raise GialabError(f"client {self.index} refuses to reveal both masks of clients {both}")
        if not survivors | dropped <= set(self._u2) or self.index not in survivors:
            raise GialabError(f"client {self.index} got an unmasking request for clients it never shared with")
        if len(survivors) < self.threshold:
            raise GialabError(f"client {self.index}: {len(survivors)} survivors are below threshold {self.threshold}")
        return UnmaskingResponse(
            self.index,
            self_mask_shares={v: self._held[v][1] for v in sorted(survivors)},
            key_shares={v: self._held[v][0] for v in sorted(dropped)},
        )


class SecAggServer:
    """The server's side: it only ever holds public keys, sealed shares in transit, masked ring
    vectors and the shares returned for unmasking; its one output is the sum over survivors."""

    def __init__(self, threshold: int, encoding: RingEncoding, length: int) -> None:
        self.threshold = threshold
        self.encoding = encoding
        self.length = length
        self.roster: dict[int, AdvertisedKeys] = {}
        self.shared: tuple[int, ...] = ()  # U2
        self.masked: dict[int, np.ndarray] = {}  # U3 -> y_u
        self.responses: dict[int, UnmaskingResponse] = {}  # U5

    def _need(self, count: int, stage: str) -> None:
        n = len(self.roster)
        if count < self.threshold:
            raise GialabError(
                f"secure aggregation aborted at {stage}: {count} of n={n} clients remain, fewer than "
                f"threshold t={self.threshold} (at most n - t = {n - self.threshold} may drop out)"
            )

    # Round 0
    def collect_keys(self, adverts: Sequence[AdvertisedKeys]) -> dict[int, AdvertisedKeys]:
        self.roster = {a.sender: a for a in adverts}
        self._need(len(self.roster), "key advertisement")
        return dict(self.roster)

    # Round 1
    def route_shares(self, outboxes: Sequence[Sequence[SealedShares]]) -> dict[int, list[SealedShares]]:
        self.shared = tuple(sorted({m.sender for box in outboxes for m in box}))
        self._need(len(self.shared), "key sharing")
        inboxes: dict[int, list[SealedShares]] = {u: [] for u in self.shared}
        for box in outboxes:
            for message in box:
                if message.recipient in inboxes:
                    inboxes[message.recipient].append(message)
        return inboxes

    # Round 2
    def collect_masked_inputs(self, inputs: Sequence[MaskedInput]) -> UnmaskingRequest:
        for message in inputs:
            if message.sender not in self.shared or message.vector.shape != (self.length,):
                raise GialabError(f"masked input from client {message.sender} is not part of this round")
            self.masked[message.sender] = self.encoding.reduce(np.asarray(message.vector, dtype=np.uint64))
        self._need(len(self.masked), "masked input collection")
        survivors = tuple(sorted(self.masked))
        return UnmaskingRequest(survivors, tuple(u for u in self.shared if u not in self.masked))

    # Round 4
    def unmask(self, responses: Sequence[UnmaskingResponse]) -> np.ndarray:
        """sum_{u in U3} x_u in the ring, from t unmasking responses."""
        self.responses = {r.sender: r for r in responses if r.sender in self.masked}
        self._need(len(self.responses), "unmasking")
        total = np.zeros(self.length, dtype=np.uint64)
        for y in self.masked.values():
            np.add(total, y, out=total)
        for u in self.masked:
            seed = reconstruct([r.self_mask_shares[u] for r in self.responses.values()], self.threshold)
            np.subtract(total, self_mask(int_to_secret(seed), self.length), out=total)
        for v in (u for u in self.shared if u not in self.masked):
            secret = reconstruct([r.key_shares[v] for r in self.responses.values()], self.threshold)
            key = X25519PrivateKey.from_private_bytes(int_to_secret(secret))
            if _public_bytes(key) != self.roster[v].s_public:
                raise GialabError(f"the shares returned for dropped client {v} do not rebuild its key")
            for u in self.masked:  # y_u holds +PRG(s_uv) when u < v, -PRG(s_uv) when u > v
                mask = pairwise_mask(key, self.roster[u].s_public, self.length)
                (np.subtract if u < v else np.add)(total, mask, out=total)
        return self.encoding.reduce(total)


def run_rounds(
    server: SecAggServer, clients: Sequence[SecAggClient], *,
    drop_before_masking: Collection[int] = (), drop_before_unmasking: Collection[int] = (),
) -> np.ndarray:
    """Carry the messages of rounds 0-4 between ``clients`` and ``server``; returns the ring sum.

    Clients numbered in ``drop_before_masking`` vanish after sharing keys (their input is left
    out; their pairwise masks are rebuilt); those in ``drop_before_unmasking`` vanish after
    sending their masked input (their input counts; their self mask is rebuilt from others' shares).
    """
    by_index = {c.index: c for c in clients}
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inboxes = server.route_shares([c.share_keys(roster) for c in clients])
    sending = [by_index[u] for u in inboxes if u not in set(drop_before_masking)]
    request = server.collect_masked_inputs([c.masked_input(inboxes[c.index]) for c in sending])
    answering = [c for c in sending if c.index not in set(drop_before_unmasking)]
    return server.unmask([c.unmask(request) for c in answering])
