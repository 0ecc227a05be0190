"""The shapes a defense can take inside the protocol.

A client-side ``UpdateTransform`` (DP noise, clipping, compression) changes one client's update
before it leaves the client; an ``Aggregator`` (mean, secure aggregation, robust rules) turns the
round's updates into what the server learns. ``reveals_individual`` is how an aggregator tells
the threat layer whether the server sees single updates at all: secure aggregation says no, and
so withdraws the ``observe_individual`` capability from every threat model. Both get the
protocol's seeded generator, so dropouts, noise and sampling repeat with the scenario's seed.

Three optional hooks let a client-side transform do what a post-hoc change of the update cannot
(differential privacy, ``dp_*`` modules). ``LocalGradient``: the client computes every gradient
step through the defense's ``local_gradient`` (DP-SGD clips per sample and adds noise inside each
step, FedSGD and every FedAvg local step alike); the protocol asks its ``check_model`` before the
first round. ``CohortAware``: the protocol announces the round's participant count M before the
clients train (distributed DP sizes each client's noise share by it). ``PrivacyAccounted``: the
runner records the (epsilon, delta) the defense's setting guarantees in the run's JSON.

A ``ModelAudit`` acts before training instead of after it: the client inspects the model it
received (and its own batch's activations through it) against the commitment the server
published for the round, and a model with any finding is refused: the client sends no update
that round, and the transcript records why (``RoundTranscript.refused``).

``RoundSizeChecked``: a defense that works only for some round sizes n (secure aggregation's
threshold t <= n, a robust rule's Byzantine budget f against n) says so before any work: the runner
calls ``check_round_size`` with the planned participant count, so a scenario it can never run is
refused with one line before the data is loaded, not after rounds of training. The check at
aggregation time stays, for rounds a malicious server sizes itself.

One optional hook on aggregators: ``ReportsAcceptance``. A Byzantine-robust rule decides which
client updates it lets into the aggregate; the protocol records those client ids in the round's
transcript (``RoundTranscript.accepted``), the server's own log, so whether a poisoned update
survived the rule is measurable (``robust_rule`` states what "accepted" means for each kind of rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from gialab.fl.client import ClientUpdate
from gialab.fl.setup import FLSetup
from gialab.fl.training import LossFn


@runtime_checkable
class UpdateTransform(Protocol):
    name: str

    def __call__(self, update: ClientUpdate, generator: torch.Generator) -> ClientUpdate: ...


@runtime_checkable
class Aggregator(Protocol):
    name: str
    reveals_individual: bool

    def __call__(self, updates: Sequence[ClientUpdate], generator: torch.Generator) -> tuple[torch.Tensor, ...]: ...


@runtime_checkable
class ReportsAcceptance(Protocol):
    """An aggregator that also says which clients' updates its aggregate accepted (sorted ids)."""

    name: str

    def aggregate_with_acceptance(
        self, updates: Sequence[ClientUpdate], generator: torch.Generator
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]: ...


@runtime_checkable
class LocalGradient(Protocol):
    """Computes each of the client's gradient steps (at most one such defense per scenario)."""

    name: str

    def check_model(self, model: torch.nn.Module) -> None: ...

    def local_gradient(
        self, model: torch.nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, ...]: ...


@runtime_checkable
class CohortAware(Protocol):
    """Told the round's participant count before clients train; returns the transform for that round."""

    name: str

    def with_cohort(self, participants: int) -> UpdateTransform: ...


@runtime_checkable
class PrivacyAccounted(Protocol):
    """Reports the (epsilon, delta) its setting guarantees; ``epsilon`` None means no guarantee."""

    name: str

    def privacy(
        self, setup: FLSetup, *, clients: int, batch_size: int, local_examples: int
    ) -> dict[str, float | None]: ...


@dataclass(frozen=True)
class AuditFinding:
    """One reason to distrust a received model: the check that fired and what it saw."""

    check: str
    reason: str


@runtime_checkable
class ModelAudit(Protocol):
    """Inspects a received model before the client trains; any finding means the client refuses.

    ``images``/``labels`` are the batch the client would train on (token ids for text), so
    checks may look at what the model does with the client's own data; ``commitment`` is the
    digest the server published for the round (``fl.commitment.model_commitment``), or ``None``.
    """

    name: str

    def audit(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, commitment: str | None
    ) -> list[AuditFinding]: ...

@runtime_checkable
class RoundSizeChecked(Protocol):
    """Refuses (``GialabError``, one line) a round of ``participants`` clients it cannot handle."""

    name: str

    def check_round_size(self, participants: int) -> None: ...
