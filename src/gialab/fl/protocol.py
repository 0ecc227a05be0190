"""Rounds of federated learning, split into what crossed the wire and what stayed private.

``run_round`` returns a ``RoundTranscript`` (models sent, updates received, the aggregate: all a
server could log) and a ``RoundTruth`` (the examples each client trained on). The two never mix:
the threat layer decides what of the transcript an attacker sees, and only metrics read the truth.
The protocol knows nothing about attacks; a malicious server acts through ``ServerPlan``, a
malicious client through its own ``Client.train`` (``fl.malicious``): such a client is not
``honest``, so the client-side defenses are not applied to what it sends (it controls its device).
An aggregator that reports which updates it accepted (robust rules) has the ids logged in
``RoundTranscript.accepted``.

Sybil devices (``SybilDevices``, Boenisch et al. 2023a) are server-run participants with ids past
the real clients'. They are recorded apart (``RoundTranscript.sybils``), so ``participants``,
``models``, ``updates`` and the truth keep meaning real clients; only the aggregate mixes them.

With client-side model audits (``defenses.base.ModelAudit``) the server also publishes, each
round, one commitment to the model it claims to send everyone (``fl.commitment``; the honest
server commits to the broadcast model), and every participant audits what it received on the
batch it would train on before training. A participant whose audit finds anything refuses: it
sends no update that round (as a dropout would), and ``RoundTranscript.refused`` says why.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gialab.defenses.base import (
    Aggregator, CohortAware, LocalGradient, ModelAudit, ReportsAcceptance, UpdateTransform,
)
from gialab.defenses.mean import WeightedMean
from gialab.errors import GialabError
from gialab.fl.client import Client, ClientUpdate, LocalBatch
from gialab.fl.commitment import model_commitment
from gialab.fl.setup import FLSetup
from gialab.fl.training import GradientFn, LossFn, mean_loss_gradient


def local_gradient(transforms: Sequence[UpdateTransform], model: nn.Module) -> GradientFn:
    """The one defense that computes the clients' gradient steps (DP-SGD), checked on the model."""
    owners = [t for t in transforms if isinstance(t, LocalGradient)]
    if len(owners) > 1:
        raise GialabError(f"defenses {[t.name for t in owners]} each compute the local gradient; keep one")
    if not owners:
        return mean_loss_gradient
    owners[0].check_model(model)
    return owners[0].local_gradient


@dataclass(frozen=True)
class SybilDevices:
    """Devices the server runs itself and enrols in a round (Boenisch et al. 2023a).

    They take slots of the round's M = ``clients_per_round`` (all clients when unset) as clients
    do: M counts them when it is announced to cohort-aware defenses (distributed DP sizes every
    honest noise share by it), and their updates reach the aggregator (under secure aggregation
    they hold keys and mask like anyone). But the server writes their updates, so they skip the
    client-side defenses and add no noise share. ``count`` None takes every slot the plan's
    ``participants`` leave; a smaller count leaves the rest to honestly sampled clients.
    ``update`` None sends an empty update (zeros with 0 examples: it weighs nothing in the
    mean); else every sybil sends these tensors, weighted by ``num_examples``.
    """

    count: int | None = None
    update: tuple[torch.Tensor, ...] | None = None
    num_examples: int = 0

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 0:
            raise GialabError(f"a round's sybil count must be >= 0, got {self.count}")
        if self.num_examples < 0:
            raise GialabError(f"a sybil's example count must be >= 0, got {self.num_examples}")


@dataclass(frozen=True)
class ServerPlan:
    """What the server does differently in a round; empty means it follows the protocol.

    ``model`` replaces the broadcast model, ``per_client`` sends chosen clients their own model,
    ``participants`` fixes who takes part instead of random sampling (with ``sybils``: which real
    clients must take part), ``sybils`` enrols server-run devices in the round.
    """

    model: nn.Module | None = None
    per_client: Mapping[int, nn.Module] = field(default_factory=dict)
    participants: tuple[int, ...] | None = None
    sybils: SybilDevices | None = None


@dataclass(frozen=True)
class RoundTranscript:
    """Everything the server sent and received in one round.

    ``refused`` maps each participant that refused its model (a model audit flagged it) to the
    reasons; such a participant has a model but no update. ``commitment`` is the digest the
    server published for the round (``None`` when no client audits).
    """

    round: int
    participants: tuple[int, ...]
    models: Mapping[int, nn.Module]  # the model each participant received
    updates: Mapping[int, ClientUpdate]
    aggregate: tuple[torch.Tensor, ...]
    update_kind: str
    setup: FLSetup
    sybils: Mapping[int, ClientUpdate] = field(default_factory=dict)  # server-run devices' updates, by id
    refused: Mapping[int, str] = field(default_factory=dict)
    commitment: str | None = None
    accepted: tuple[int, ...] | None = None  # clients the aggregation rule accepted; None: it does not say

    @property
    def answered(self) -> tuple[int, ...]:
        """The participants that sent an update."""
        return tuple(c for c in self.participants if c in self.updates)


@dataclass(frozen=True)
class RoundTruth:
    """The private examples behind a round, by client (a client that refused the model keeps the
    batch it audited it on, although none of it left the client)."""

    round: int
    batches: Mapping[int, LocalBatch]


class Protocol:
    """Server-side loop: sample clients, send models, collect updates, aggregate, step the model."""

    def __init__(
        self,
        model: nn.Module,
        clients: Sequence[Client],
        setup: FLSetup,
        *,
        batch_size: int,
        loss_fn: LossFn = F.cross_entropy,
        transforms: Sequence[UpdateTransform] = (),
        aggregator: Aggregator | None = None,
        seed: int = 0,
        audits: Sequence[ModelAudit] = (),
    ) -> None:
        if not clients:
            raise GialabError("a protocol needs at least one client")
        self.global_model = model
        self.clients = {c.client_id: c for c in clients}
        self.setup = setup
        self.batch_size = batch_size
        self.loss_fn = loss_fn
        self.transforms = tuple(transforms)
        self.gradient = local_gradient(self.transforms, model)
        self.aggregator = aggregator or WeightedMean()
        self.audits = tuple(audits)
        self.generator = torch.Generator().manual_seed(seed)
        self.participation_log: list[tuple[int, ...]] = []
        self.acceptance_log: list[tuple[int, ...] | None] = []  # RoundTranscript.accepted, by round

    def sample_participants(self) -> tuple[int, ...]:
        ids = sorted(self.clients)
        k = self.setup.clients_per_round or len(ids)
        if k > len(ids):
            raise GialabError(f"clients_per_round {k} exceeds the {len(ids)} clients; use at most {len(ids)}")
        if k == len(ids):
            return tuple(ids)
        pick = torch.randperm(len(ids), generator=self.generator)[:k]
        return tuple(sorted(ids[i] for i in pick.tolist()))

    def run_round(self, plan: ServerPlan | None = None) -> tuple[RoundTranscript, RoundTruth]:
        plan = plan or ServerPlan()
        round_index = len(self.participation_log)
        participants, sybil_ids = self._cohort(plan)
        broadcast = plan.model or self.global_model
        sybils = self._sybil_updates(plan.sybils, sybil_ids, broadcast, round_index)
        snapshots: dict[int, nn.Module] = {}  # one frozen copy per distinct model sent
        models: dict[int, nn.Module] = {}
        updates: dict[int, ClientUpdate] = {}
        batches: dict[int, LocalBatch] = {}
        sent_to: dict[int, nn.Module] = {}
        for cid in participants:
            sent_to[cid] = plan.per_client.get(cid, broadcast)
            if id(sent_to[cid]) not in snapshots:
                snapshots[id(sent_to[cid])] = copy.deepcopy(sent_to[cid])
            models[cid] = snapshots[id(sent_to[cid])]
        commitment, refused = self._audit(broadcast, models, batches) if self.audits else (None, {})
        answering = [c for c in participants if c not in refused]
        cohort = len(answering) + len(sybils)  # sybils count in M: that is the attack
        transforms = [t.with_cohort(cohort) if isinstance(t, CohortAware) else t for t in self.transforms]
        for cid in answering:
            local = copy.deepcopy(sent_to[cid])  # the client trains its own copy; the server's stays as sent
            update, batch = self.clients[cid].train(
                local, self.loss_fn, self.setup,
                batch_size=self.batch_size, round_index=round_index, generator=self.generator,
                gradient=self.gradient, batch=batches.get(cid),
            )
            if self.clients[cid].honest:  # a malicious client skips the defenses on its own device
                for transform in transforms:
                    update = transform(update, self.generator)
            updates[cid], batches[cid] = update, batch
        accepted: tuple[int, ...] | None = None
        sent = [*updates.values(), *sybils.values()]  # sybils reach the aggregator like clients
        if not sent:  # every participant refused: the server learns nothing and the model stays
            aggregate = tuple(torch.zeros_like(p) for p in broadcast.parameters())
        elif isinstance(self.aggregator, ReportsAcceptance):
            aggregate, accepted = self.aggregator.aggregate_with_acceptance(sent, self.generator)
        else:
            aggregate = self.aggregator(sent, self.generator)
        if plan.model is None and not plan.per_client and updates:
            self._step(aggregate)
        self.participation_log.append(tuple(participants))
        self.acceptance_log.append(accepted)
        transcript = RoundTranscript(
            round_index, tuple(participants), models, updates, aggregate, self.setup.update_kind, self.setup,
            sybils, refused=refused, commitment=commitment, accepted=accepted,
        )
        return transcript, RoundTruth(round_index, batches)

    def _cohort(self, plan: ServerPlan) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The round's real participants and its sybils' ids (numbered after the last client)."""
        if plan.sybils is None:
            participants = plan.participants or self.sample_participants()
            self._check_clients(participants)
            return participants, ()
        size = self.setup.clients_per_round or len(self.clients)
        chosen = tuple(plan.participants or ())
        self._check_clients(chosen)
        free = size - len(chosen)
        count = plan.sybils.count
        if count is None:
            if free < 1:
                raise GialabError(
                    f"sybil devices take a round's free slots, but a round of {size} participants "
                    f"(fl.clients_per_round) has none beside the {len(chosen)} client(s) the server chose; "
                    "raise fl.clients_per_round")
            count = free
        elif count > free:
            raise GialabError(
                f"the server plans {count} sybil devices, but a round of {size} participants (fl.clients_per_round) "
                f"has room for {max(free, 0)} beside the {len(chosen)} client(s) it chose; use at most "
                f"{max(free, 0)} sybils or raise fl.clients_per_round")
        others = [c for c in sorted(self.clients) if c not in chosen]
        honest = size - len(chosen) - count
        if honest > len(others):
            raise GialabError(
                f"a round of {size} with {count} sybils needs {honest} more clients beside the {len(chosen)} chosen, "
                f"but only {len(others)} exist; raise clients or the sybil count")
        if not chosen and not honest:
            raise GialabError(f"a round of {size} sybil devices has no real client to aggregate; leave a slot for one")
        if honest:
            pick = torch.randperm(len(others), generator=self.generator)[:honest].tolist()
            chosen = chosen + tuple(others[i] for i in pick)
        first = max(self.clients) + 1
        return tuple(sorted(chosen)), tuple(range(first, first + count))

    def _check_clients(self, participants: Sequence[int]) -> None:
        unknown = [c for c in participants if c not in self.clients]
        if unknown:
            raise GialabError(f"participants {unknown} are not clients; valid ids: 0..{len(self.clients) - 1}")

    @staticmethod
    def _sybil_updates(
        sybils: SybilDevices | None, ids: Sequence[int], model: nn.Module, round_index: int,
    ) -> dict[int, ClientUpdate]:
        """What each sybil sends: the plan's update, or zeros with no examples; no defense touches it."""
        if sybils is None or not ids:
            return {}
        shapes = [tuple(p.shape) for p in model.parameters()]
        if sybils.update is None:
            tensors = tuple(torch.zeros_like(p.detach()) for p in model.parameters())
        else:
            tensors = tuple(t.detach() for t in sybils.update)
            if [tuple(t.shape) for t in tensors] != shapes:
                raise GialabError("a sybil update must have one tensor per model parameter, shaped like it")
        return {sid: ClientUpdate(sid, round_index, tensors, sybils.num_examples) for sid in ids}

    def _audit(
        self, broadcast: nn.Module, models: Mapping[int, nn.Module], batches: dict[int, LocalBatch]
    ) -> tuple[str, dict[int, str]]:
        """Publish the commitment to ``broadcast``; each participant draws its batch and audits its model.

        Fills ``batches`` with the drawn batches (those who train, train on them) and returns the
        commitment and, for each participant that refuses, its findings as one line.
        """
        commitment = model_commitment(broadcast)
        refused: dict[int, str] = {}
        for cid, received in models.items():
            batch = batches[cid] = self.clients[cid].draw_batch(self.batch_size, self.generator)
            findings = [f for audit in self.audits for f in audit.audit(received, batch.images, batch.labels, commitment)]
            if findings:
                refused[cid] = "; ".join(f"{f.check}: {f.reason}" for f in findings)
        return commitment, refused

    def _step(self, aggregate: tuple[torch.Tensor, ...]) -> None:
        """Apply the aggregate; FedAvg's delta is already scaled by the local rate, so step 1."""
        step = self.setup.learning_rate if self.setup.algorithm == "fedsgd" else 1.0
        with torch.no_grad():
            for p, a in zip(self.global_model.parameters(), aggregate, strict=True):
                p.sub_(step * a)
