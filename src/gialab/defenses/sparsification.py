"""Sparsification: a client sends only a share of its update's entries (obfuscation by reduction).

Gradient compression was built to save bandwidth (Aji & Heafield 2017, top-k; Stich et al. 2018,
random-k; Lin et al. 2018, Deep Gradient Compression), and the survey (section 2.2) lists it
among the defenses because an attacker who matches or divides gradients sees fewer of them: DLG
(Zhu et al. 2019) reports that reconstruction degrades once most small entries are dropped. Both
rules here select **per tensor**: each layer keeps its own ``ratio`` of entries. A global top-k
would let the layers with the largest gradients (often the last) take the whole budget and send
a first layer or a bias vector as all zeros, which changes the model's training more than the
bandwidth saved and makes the defense's strength depend on the architecture; per tensor, the
ratio means the same for every layer (the choice of Lin et al.). ``scope: global`` is offered for
comparison. At least one entry per tensor is kept (k = ceil(ratio * numel)).

Random-k draws its subset from the protocol's seeded generator, so the same seed keeps the same
entries; with ``rescale`` the kept entries are multiplied by numel / k, which makes the
compressed update an unbiased estimate of the original (Stich et al. 2018; Wangni et al. 2018).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from pydantic import Field

from gialab.defenses.registry import DefenseParams, register_defense
from gialab.fl.client import ClientUpdate


def kept_count(numel: int, ratio: float) -> int:
    """How many of ``numel`` entries a ratio keeps: ceil(ratio * numel), at least 1, at most numel."""
    return min(numel, max(1, math.ceil(ratio * numel - 1e-9)))


def keep_largest(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """``tensor`` with all but its ``k`` largest-magnitude entries set to zero (exactly k survive)."""
    flat = tensor.reshape(-1)
    if k >= flat.numel():
        return tensor.clone()
    index = flat.abs().topk(k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[index] = flat[index]
    return out.reshape(tensor.shape)


class TopKParams(DefenseParams):
    ratio: float = Field(0.1, gt=0.0, le=1.0, description="share of entries kept")
    scope: Literal["tensor", "global"] = Field("tensor", description="select per tensor or over the whole update")


@register_defense
class TopK:
    """Keeps the ``ratio`` largest-magnitude entries of each tensor (or of the whole update)."""

    name = "topk"
    Params = TopKParams

    def __init__(self, params: TopKParams) -> None:
        self.params = params

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        if self.params.scope == "tensor":
            tensors = tuple(keep_largest(t, kept_count(t.numel(), self.params.ratio)) for t in update.tensors)
        else:
            flat = torch.cat([t.reshape(-1) for t in update.tensors])
            kept = keep_largest(flat, kept_count(flat.numel(), self.params.ratio))
            tensors = tuple(
                part.reshape(t.shape)
                for part, t in zip(kept.split([t.numel() for t in update.tensors]), update.tensors, strict=True)
            )
        return dataclasses.replace(update, tensors=tensors)


class RandomKParams(DefenseParams):
    ratio: float = Field(0.1, gt=0.0, le=1.0, description="share of entries kept")
    rescale: bool = Field(True, description="multiply kept entries by numel/k so the update stays unbiased")


@register_defense
class RandomK:
    """Keeps a seeded uniformly random ``ratio`` of each tensor's entries."""

    name = "randomk"
    Params = RandomKParams

    def __init__(self, params: RandomKParams) -> None:
        self.params = params

    def _sparsify(self, tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flat = tensor.reshape(-1)
        k = kept_count(flat.numel(), self.params.ratio)
        index = torch.randperm(flat.numel(), generator=generator)[:k].to(flat.device)
        out = torch.zeros_like(flat)
        out[index] = flat[index] * (flat.numel() / k if self.params.rescale else 1.0)
        return out.reshape(tensor.shape)

    def __call__(self, update: ClientUpdate, generator: torch.Generator) -> ClientUpdate:
        return dataclasses.replace(update, tensors=tuple(self._sparsify(t, generator) for t in update.tensors))
