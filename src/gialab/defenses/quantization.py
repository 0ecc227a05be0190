"""Quantization: a client sends each entry of its update with a few bits (obfuscation by reduction).

``sign`` is signSGD (Bernstein et al., ICML 2018): one bit per entry. By default each tensor's
signs are scaled by the tensor's mean absolute value, as in EF-signSGD (Karimireddy et al.,
ICML 2019, the l1 norm over the dimension): the server then steps with the scenario's learning
rate at the gradient's own scale, whereas bare signs (``scaled: false``) make every coordinate's
step as large as the largest one. Either way the attacker sees only signs and one scale per
tensor; entries that are exactly zero stay zero (torch's sign).

``qsgd`` is QSGD (Alistarh et al., NeurIPS 2017): with ``levels`` s, entry v_i of a tensor v is
sent as ||v||_2 * sign(v_i) * l/s, where l is floor(s |v_i| / ||v||_2) or that plus one, rounded
up with probability equal to the remainder. That rounding makes the quantized tensor an unbiased
estimate of v (E[Q(v)] = v), which is why QSGD keeps SGD's convergence guarantees; its random
draws come from the protocol's seeded generator. As in the paper, each tensor is cut into buckets
of ``bucket`` consecutive entries (default 512), each with its own
norm: with one norm over millions of entries (a first layer), |v_i| / ||v|| is tiny for almost
every entry, so nearly all round to level 0 or 1 and the variance grows like sqrt(d) / s.
``bucket: 0`` takes the whole tensor as one bucket. The cost is one float per bucket plus about
log2(s) + 1 bits per entry.
"""

from __future__ import annotations

import dataclasses

import torch
from pydantic import Field

from gialab.defenses.registry import DefenseParams, register_defense
from gialab.fl.client import ClientUpdate


def sign_compress(tensor: torch.Tensor, *, scaled: bool) -> torch.Tensor:
    """Signs of ``tensor``, times its mean absolute value when ``scaled``."""
    signs = torch.sign(tensor)
    return signs * tensor.abs().mean() if scaled else signs


def qsgd_quantize(tensor: torch.Tensor, levels: int, generator: torch.Generator, bucket: int = 0) -> torch.Tensor:
    """QSGD's stochastic quantization of ``tensor`` to ``levels`` levels of each bucket's l2 norm.

    Buckets are ``bucket`` consecutive entries of the flattened tensor (0: the whole tensor).
    Unbiased: the expectation over the generator's draws is ``tensor``.
    """
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return tensor.clone()
    size = bucket if 0 < bucket < flat.numel() else flat.numel()
    padded = torch.cat([flat, flat.new_zeros(-flat.numel() % size)]).reshape(-1, size)
    norms = padded.norm(dim=1, keepdim=True)
    scaled = padded.abs() / norms.clamp_min(torch.finfo(padded.dtype).tiny) * levels  # in [0, s]
    lower = scaled.floor()
    draw = torch.rand(padded.shape, generator=generator, dtype=padded.dtype).to(padded.device)
    level = lower + (draw < scaled - lower).to(padded.dtype)
    quantized = torch.sign(padded) * level * (norms / levels)
    return quantized.reshape(-1)[: flat.numel()].reshape(tensor.shape)


class SignParams(DefenseParams):
    scaled: bool = Field(True, description="multiply the signs by the tensor's mean absolute value")


@register_defense
class Sign:
    """signSGD: each tensor's entries become their signs (scaled by the mean magnitude by default)."""

    name = "sign"
    Params = SignParams

    def __init__(self, params: SignParams) -> None:
        self.params = params

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        tensors = tuple(sign_compress(t, scaled=self.params.scaled) for t in update.tensors)
        return dataclasses.replace(update, tensors=tensors)


class QSGDParams(DefenseParams):
    levels: int = Field(4, ge=1, description="quantization levels s per sign (about log2(s) + 1 bits per entry)")
    bucket: int = Field(512, ge=0, description="entries sharing one norm; 0 quantizes each tensor as one bucket")


@register_defense
class QSGD:
    """QSGD: unbiased stochastic quantization to ``levels`` levels of each bucket's norm."""

    name = "qsgd"
    Params = QSGDParams

    def __init__(self, params: QSGDParams) -> None:
        self.params = params

    def __call__(self, update: ClientUpdate, generator: torch.Generator) -> ClientUpdate:
        tensors = tuple(qsgd_quantize(t, self.params.levels, generator, self.params.bucket) for t in update.tensors)
        return dataclasses.replace(update, tensors=tensors)
