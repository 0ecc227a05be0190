"""Threat models, their capabilities, and the Observation an attacker is allowed.

This module is the gate between the protocol and the attacks: ``observe`` reads a round's
transcript (and, for declared side information only, the round's truth) and hands the attacker
exactly what its threat model grants. Attacks declare the capabilities they need; ``check_grants``
refuses a scenario that grants less, before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import nn

from gialab.data.dataset import DataSpec
from gialab.errors import GialabError, unknown_name
from gialab.fl.gossip import GossipTranscript
from gialab.fl.protocol import RoundTranscript, RoundTruth, ServerPlan
from gialab.fl.setup import FLSetup


class Capability(StrEnum):
    OBSERVE_INDIVIDUAL = "observe_individual"
    OBSERVE_AGGREGATE = "observe_aggregate"
    MODIFY_PARAMETERS = "modify_parameters"
    MODIFY_ARCHITECTURE = "modify_architecture"
    PER_CLIENT_MODELS = "per_client_models"
    CONTROL_SAMPLING = "control_sampling"
    SYBIL_CLIENTS = "sybil_clients"
    PARTICIPATION_SIDE_CHANNEL = "participation_side_channel"
    POISON_OWN_UPDATE = "poison_own_update"


class SideInformation(StrEnum):
    """Facts beyond the wire that a scenario may declare the attacker knows."""

    EXAMPLE_COUNTS = "example_counts"
    LABELS = "labels"
    LOCAL_HYPERPARAMETERS = "local_hyperparameters"


@dataclass(frozen=True)
class ThreatModel:
    name: str
    capabilities: frozenset[Capability]
    description: str


_C = Capability
THREAT_MODELS: dict[str, ThreatModel] = {
    t.name: t
    for t in (
        ThreatModel(
            "honest-but-curious-server",
            frozenset({_C.OBSERVE_INDIVIDUAL, _C.OBSERVE_AGGREGATE}),
            "follows the protocol, inverts what it receives",
        ),
        ThreatModel(
            "malicious-server",
            frozenset({
                _C.OBSERVE_INDIVIDUAL, _C.OBSERVE_AGGREGATE, _C.MODIFY_PARAMETERS,
                _C.MODIFY_ARCHITECTURE, _C.PER_CLIENT_MODELS, _C.CONTROL_SAMPLING,
            }),
            "chooses the models it sends and who takes part",
        ),
        ThreatModel(
            "malicious-client",
            frozenset({_C.OBSERVE_AGGREGATE, _C.POISON_OWN_UPDATE}),
            "sees only the global model's change and controls its own update",
        ),
        ThreatModel(
            "honest-but-curious-peer",
            frozenset({_C.OBSERVE_INDIVIDUAL, _C.OBSERVE_AGGREGATE}),
            "a gossip node: follows the protocol, inverts its neighbours' messages (peer_threat.py)",
        ),
    )
}
EXTRA_CAPABILITIES = frozenset({_C.SYBIL_CLIENTS, _C.PARTICIPATION_SIDE_CHANNEL})


def get_threat_model(name: str) -> ThreatModel:
    if name not in THREAT_MODELS:
        raise unknown_name("threat model", name, THREAT_MODELS)
    return THREAT_MODELS[name]


def granted_capabilities(
    threat: ThreatModel, extra: Iterable[Capability] = (), *, aggregate_only: bool = False
) -> frozenset[Capability]:
    """The threat model's capabilities, plus declared extras, minus what the defenses withdraw."""
    granted = set(threat.capabilities) | set(extra)
    if aggregate_only:
        granted.discard(Capability.OBSERVE_INDIVIDUAL)
    return frozenset(granted)


def check_grants(attack: str, requires: Iterable[Capability], granted: frozenset[Capability], context: str) -> None:
    missing = sorted(set(requires) - granted)
    if missing:
        raise GialabError(
            f"attack {attack!r} needs capability {', '.join(missing)}, which {context} does not grant "
            f"(granted: {', '.join(sorted(granted)) or 'none'})"
        )


def _architecture(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, type(m).__name__, tuple(p.shape))
            for name, m in model.named_modules() for p in m.parameters(recurse=False)]


def plan_capabilities(plan: ServerPlan, model: nn.Module) -> frozenset[Capability]:
    """What a malicious server's plan needs: a changed architecture needs more than new weights."""
    needs: set[Capability] = set()
    for sent in [plan.model, *plan.per_client.values()]:
        if sent is None:
            continue
        if _architecture(sent) != _architecture(model):
            needs.add(Capability.MODIFY_ARCHITECTURE)
        elif any(not torch.equal(a, b) for a, b in zip(sent.parameters(), model.parameters(), strict=True)):
            needs.add(Capability.MODIFY_PARAMETERS)
    if plan.per_client:
        needs.add(Capability.PER_CLIENT_MODELS)
    if plan.participants is not None:
        needs.add(Capability.CONTROL_SAMPLING)
    if plan.sybils is not None and plan.sybils.count != 0:
        needs.add(Capability.SYBIL_CLIENTS)
    return frozenset(needs)


@dataclass(frozen=True)
class ParticipationReport:
    """Device analytics' participation summary (Lam et al. 2021; survey eq. 5), one per window.

    ``counts[k]`` is how many of the rounds ``first_round..last_round`` client ``k`` took part in:
    the window's indicator over the rounds is a row of eq. 5's C_k, the count the matching entry
    of c_k. Every client is listed, those that did not take part with 0. Granted only with the
    ``participation_side_channel`` capability.
    """

    first_round: int
    last_round: int
    counts: Mapping[int, int]


def participation_report(log: Sequence[Sequence[int]], clients: int, window: int | None) -> ParticipationReport | None:
    """The report that the round just logged closes (one every ``window`` rounds), else ``None``."""
    rounds = len(log)
    if not window or rounds == 0 or rounds % window:
        return None
    counts = dict.fromkeys(range(clients), 0)
    for participants in log[rounds - window:]:
        for cid in participants:
            counts[cid] += 1
    return ParticipationReport(rounds - window, rounds - 1, counts)


@dataclass(frozen=True)
class Observation:
    """What the attacker has after one round, and nothing else.

    ``updates`` is empty unless individual updates are observable. ``participants`` are the
    clients whose updates make up the round (one that refused its model is not among them).
    ``target`` is the client the attacker aims at (the scenario's victim). Side information
    fields are ``None`` unless declared.
    ``sybils`` are the ids of the server's own devices in the round (known to it: it runs them).
    ``cohort_size`` is how many updates the round's aggregate combines, which the aggregating
    server knows even when it does not know whose they are (``participants`` is then empty).
    ``participation`` is the device analytics report that closes with this round, if granted.
    """

    threat_model: str
    capabilities: frozenset[Capability]
    round: int
    data: DataSpec
    model: nn.Module
    update_kind: str
    participants: tuple[int, ...]
    target: int
    updates: Mapping[int, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    aggregate: tuple[torch.Tensor, ...] | None = None
    example_counts: Mapping[int, int] | None = None
    labels: Mapping[int, torch.Tensor] | None = None
    fl_setup: FLSetup | None = None
    sybils: tuple[int, ...] = ()
    cohort_size: int | None = None
    participation: ParticipationReport | None = None

    def target_update(self) -> tuple[torch.Tensor, ...]:
        """The victim's own update; needs ``observe_individual``."""
        if self.target not in self.updates:
            raise GialabError(
                f"client {self.target}'s individual update is not observable under {self.threat_model}"
            )
        return self.updates[self.target]


def validate_update(model: nn.Module, tensors: tuple[torch.Tensor, ...], what: str = "update") -> None:
    """Refuse an update that cannot come from ``model``: wrong count or shapes, NaN or Inf."""
    params = [p for p in model.parameters()]
    if len(tensors) != len(params):
        raise GialabError(f"{what} has {len(tensors)} tensors but the model has {len(params)} parameters")
    names = [n for n, _ in model.named_parameters()]
    for name, p, t in zip(names, params, tensors, strict=True):
        if tuple(t.shape) != tuple(p.shape):
            raise GialabError(
                f"{what} tensor for {name} has shape {tuple(t.shape)} but the model expects {tuple(p.shape)}"
            )
        if not torch.isfinite(t).all():
            raise GialabError(f"{what} tensor for {name} contains NaN or Inf; the observation is unusable")


def observe(
    transcript: RoundTranscript | GossipTranscript,
    truth: RoundTruth,
    *,
    threat: ThreatModel,
    granted: frozenset[Capability],
    data: DataSpec,
    target: int,
    side_information: Iterable[SideInformation] = (),
    observer: int | None = None,
    anonymous: bool = False,
    participation: ParticipationReport | None = None,
) -> Observation:
    """Build the attacker's view of a round. Truth is read only for declared side information.

    A gossip round has no server: the attacker is node ``observer`` and sees what reached it.
    ``anonymous`` is the view of a server that aggregates without learning who contributed (the
    premise of Lam et al. 2021): participant identities and everything keyed by them (individual
    updates, example counts, labels) are withheld, and the target need not be in the round.
    ``participation`` (the analytics report this round closes) passes only with its capability.
    """
    if isinstance(transcript, GossipTranscript):
        from gialab.peer_threat import observe_peer  # builds on this module's types

        return observe_peer(transcript, truth, threat=threat, granted=granted, data=data, target=target,
                            observer=observer, side_information=side_information)
    if anonymous:
        return _anonymous_view(transcript, threat=threat, granted=granted, data=data, target=target,
                               side_information=side_information, participation=participation)
    if target not in transcript.participants:
        raise GialabError(
            f"victim {target} did not take part in round {transcript.round}; participants: "
            f"{', '.join(map(str, transcript.participants))}"
        )
    if target in transcript.refused:
        raise GialabError(f"victim {target} refused round {transcript.round}'s model and sent nothing: "
                          f"{transcript.refused[target]}")
    answered = tuple(c for c in transcript.participants if c not in transcript.refused)
    side = set(side_information)
    individual = Capability.OBSERVE_INDIVIDUAL in granted
    updates = {cid: u.tensors for cid, u in transcript.updates.items()} if individual else {}
    aggregate = transcript.aggregate if Capability.OBSERVE_AGGREGATE in granted else None
    model = transcript.models[target]
    for cid, tensors in updates.items():
        validate_update(transcript.models[cid], tensors, f"client {cid}'s update")
    if aggregate is not None:
        validate_update(model, aggregate, "the aggregate")
    visible = updates.keys() if individual else answered
    return Observation(
        threat_model=threat.name,
        capabilities=granted,
        round=transcript.round,
        data=data,
        model=model,
        update_kind=transcript.update_kind,
        participants=answered,
        target=target,
        updates=updates,
        aggregate=aggregate,
        # Counts travel with each update (the server weights by them), so they are seen with it;
        # behind an aggregate they are side information.
        example_counts=(
            {cid: transcript.updates[cid].num_examples for cid in visible}
            if individual or SideInformation.EXAMPLE_COUNTS in side else None
        ),
        labels=(
            {cid: truth.batches[cid].labels.clone() for cid in visible}
            if SideInformation.LABELS in side else None
        ),
        fl_setup=transcript.setup if SideInformation.LOCAL_HYPERPARAMETERS in side else None,
        sybils=tuple(transcript.sybils) if Capability.SYBIL_CLIENTS in granted else (),
        cohort_size=len(transcript.participants),
        participation=participation if Capability.PARTICIPATION_SIDE_CHANNEL in granted else None,
    )


def _anonymous_view(
    transcript: RoundTranscript,
    *,
    threat: ThreatModel,
    granted: frozenset[Capability],
    data: DataSpec,
    target: int,
    side_information: Iterable[SideInformation],
    participation: ParticipationReport | None,
) -> Observation:
    """The aggregate, the model as sent and the cohort size: nothing that names a participant."""
    aggregate = transcript.aggregate if Capability.OBSERVE_AGGREGATE in granted else None
    models = transcript.models
    model = models[target] if target in models else next(iter(models.values()))  # the broadcast
    if aggregate is not None:
        validate_update(model, aggregate, "the aggregate")
    return Observation(
        threat_model=threat.name,
        capabilities=granted,
        round=transcript.round,
        data=data,
        model=model,
        update_kind=transcript.update_kind,
        participants=(),
        target=target,
        aggregate=aggregate,
        fl_setup=transcript.setup if SideInformation.LOCAL_HYPERPARAMETERS in set(side_information) else None,
        sybils=tuple(transcript.sybils) if Capability.SYBIL_CLIENTS in granted else (),
        cohort_size=len(transcript.participants),
        participation=participation if Capability.PARTICIPATION_SIDE_CHANNEL in granted else None,
    )
