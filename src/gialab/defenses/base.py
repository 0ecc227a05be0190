"""The two shapes a defense can take inside the protocol.

A client-side ``UpdateTransform`` (DP noise, clipping, compression) changes one client's update
before it leaves the client; an ``Aggregator`` (mean, secure aggregation, robust rules) turns the
round's updates into what the server learns. ``reveals_individual`` is how an aggregator tells
the threat layer whether the server sees single updates at all: secure aggregation says no, and
so withdraws the ``observe_individual`` capability from every threat model. Both get the
protocol's seeded generator, so dropouts, noise and sampling repeat with the scenario's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from gialab.fl.client import ClientUpdate


@runtime_checkable
class UpdateTransform(Protocol):
    name: str

    def __call__(self, update: ClientUpdate, generator: torch.Generator) -> ClientUpdate: ...


@runtime_checkable
class Aggregator(Protocol):
    name: str
    reveals_individual: bool

    def __call__(self, updates: Sequence[ClientUpdate], generator: torch.Generator) -> tuple[torch.Tensor, ...]: ...
