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
draws come from the protocol's seeded generator. The norm is taken per tensor (QSGD's "bucket"
is the whole tensor), so a tensor costs one float plus about log2(s) + 1 bits per entry.
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


def qsgd_quantize(tensor: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """QSGD's stochastic quantization of ``tensor`` to ``levels`` levels of its l2 norm; unbiased."""
    norm = tensor.norm()
    if norm == 0:
        return torch.zeros_like(tensor)
    scaled = tensor.abs() / norm * levels  # in [0, s]
    lower = scaled.floor()
    draw = torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype).to(tensor.device)
    level = lower + (draw < scaled - lower).to(tensor.dtype)
    return torch.sign(tensor) * level * (norm / levels)


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


@register_defense
class QSGD:
    """QSGD: unbiased stochastic quantization of each tensor to ``levels`` levels of its norm."""

    name = "qsgd"
    Params = QSGDParams

    def __init__(self, params: QSGDParams) -> None:
        self.params = params

    def __call__(self, update: ClientUpdate, generator: torch.Generator) -> ClientUpdate:
        tensors = tuple(qsgd_quantize(t, self.params.levels, generator) for t in update.tensors)
        return dataclasses.replace(update, tensors=tensors)
