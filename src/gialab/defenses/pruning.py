"""Gradient pruning, the defense DLG evaluated (Zhu et al., "Deep Leakage from Gradients", 2019).

DLG's defense section prunes the smallest-magnitude gradient entries before sharing and reports
that its attack stops recovering recognizable images once more than about 20% are pruned, the
most effective of the defenses it tried. The parameter here is the
pruned share ``p`` as in that paper (top-k is parameterized by the kept share instead), applied
per tensor as in DLG's layer-wise thresholding: exactly floor(p * numel) entries of each tensor
become zero, the smallest in magnitude.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from pydantic import Field

from gialab.defenses.registry import DefenseParams, register_defense
from gialab.defenses.sparsification import keep_largest
from gialab.fl.client import ClientUpdate


def pruned_count(numel: int, share: float) -> int:
    """How many of ``numel`` entries a pruned share zeroes: floor(share * numel)."""
    return math.floor(share * numel + 1e-9)


class PruneParams(DefenseParams):
    share: float = Field(0.5, ge=0.0, lt=1.0, description="share of each tensor's entries set to zero (smallest first)")


@register_defense
class Prune:
    """Zeroes the smallest ``share`` of each tensor's entries by magnitude."""

    name = "prune"
    Params = PruneParams

    def __init__(self, params: PruneParams) -> None:
        self.params = params

    def __call__(self, update: ClientUpdate, generator: torch.Generator | None = None) -> ClientUpdate:
        tensors = tuple(keep_largest(t, t.numel() - pruned_count(t.numel(), self.params.share)) for t in update.tensors)
        return dataclasses.replace(update, tensors=tensors)
