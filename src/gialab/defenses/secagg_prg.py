"""Seed expansion for secure aggregation: AES-256 in counter mode as the PRG.

Bonawitz et al. 2017 (CCS) expand short seeds into full-length masks with a PRG: the
pairwise mask p_{u,v} = PRG(s_{u,v}) from a key-agreement secret, and the self mask
p_u = PRG(b_u). AES-CTR is the PRG here because it is a standard cryptographic one (a
statistical generator such as PCG would make the masks predictable from a few outputs) and
because ``cryptography`` runs it in C with AES-NI: one call yields the whole keystream, which
numpy reads as uint64 words, so a mask of a million coordinates costs milliseconds, with no
per-element Python. The low k bits of a uniform 64-bit word are uniform in Z_{2^k}.

``SeededRandomness`` is the same construction used as a deterministic random bit generator for
each client's key pairs, self-mask seed and Shamir coefficients: gialab draws it from the
scenario's seeded generator so that runs repeat; a deployment would seed it from ``os.urandom``.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def _keystream(key: bytes, nbytes: int) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(nbytes))


def derive_key(label: bytes, secret: bytes) -> bytes:
    """A 256-bit key bound to its use, so one secret never keys two different streams."""
    return hashlib.sha256(b"gialab-secagg/" + label + b"/" + secret).digest()


def expand_mask(seed: bytes, length: int, label: bytes) -> np.ndarray:
    """``length`` uniform uint64 words from ``seed`` (read-only): PRG(seed), reduced to the ring by the caller."""
    stream = _keystream(derive_key(label, seed), 8 * length)
    return np.frombuffer(stream, dtype="<u8")


class SeededRandomness:
    """A deterministic cryptographic bit source: successive bytes of AES-CTR under ``seed``."""

    def __init__(self, seed: bytes) -> None:
        self._encryptor = Cipher(algorithms.AES(derive_key(b"drbg", seed)), modes.CTR(bytes(16))).encryptor()

    def bytes(self, n: int) -> bytes:
        return self._encryptor.update(bytes(n))

    def below(self, bound: int) -> int:
        """Uniform integer in [0, bound), by rejection (no modulo bias)."""
        bits = bound.bit_length()
        nbytes = (bits + 7) // 8
        while True:
            value = int.from_bytes(self.bytes(nbytes), "little") & ((1 << bits) - 1)
            if value < bound:
                return value
