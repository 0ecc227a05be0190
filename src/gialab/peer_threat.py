"""The honest-but-curious peer: what a gossip node sees of its neighbours, and nothing more.

Survey section 4.3 hopes that decentralized FL is hard to attack "due to the absence of a
centralized node communicating with all clients". The fair test is the honest-but-curious threat
model moved from the server to a node: it follows the gossip protocol (``fl/gossip.py``) and
inverts what reaches it, which is its neighbours' models after local training. ``observe_peer``
builds its ``Observation`` from that node's ``PeerView`` alone, so the attacks written for a
server run unchanged:

* Victim a neighbour: ``updates[victim] = (x_v^t - x_v^{t+1/2}) / step``, the victim's update,
  at ``model = x_v^t``. In round 0 every node starts from the public initial model, so this is the
  victim's exact update and every honest-but-curious attack (idlg, inverting-gradients,
  fc-leakage, rgap, ...) is as strong as it is against a server: decentralization hides nothing
  from a neighbour. In later rounds ``x_v^t`` is exact only when the attacker also hears all of the
  victim's neighbours; otherwise it is estimated (``PeerView.start_of``) and the update carries
  other nodes' earlier updates mixed in.
* Victim further away: no individual update at all. An attack that needs ``observe_individual`` is
  refused before the first round, naming the distance. What the attacker has is ``aggregate``,
  the change its own gossip average made (``PeerView.own_change``), at ``model = x_a^t``: a
  mixture that holds the victim's data once it has travelled the graph distance (round d-1
  onwards), at weight about ``W^d``. Aggregate attacks (cocktail-party) run on it.

Example counts do not travel (Metropolis-Hastings weights ignore data sizes); the scenario
declares them as side information when an attack needs them, as it declares labels.
"""

from __future__ import annotations

from collections.abc import Iterable

from gialab.data.dataset import DataSpec
from gialab.defenses import DefenseStack
from gialab.defenses.base import CohortAware
from gialab.errors import GialabError
from gialab.fl.gossip import GossipTranscript, with_parameters
from gialab.fl.protocol import RoundTruth
from gialab.fl.topology import Topology
from gialab.threats import (
    Capability, Observation, SideInformation, ThreatModel, validate_update,
)

PEER = "honest-but-curious-peer"


def peer_attacker(
    topology: Topology | None, threat: str, attacker: int | None, victim: int, clients: int, defenses: DefenseStack,
) -> int | None:
    """The attacker's node under a gossip topology (``None`` under star); refuses what cannot be.

    By default the attacker is the victim's lowest-numbered neighbour: the peer that gossip makes
    see the victim's messages, the case the survey's claim must survive.
    """
    if topology is None:
        if threat == PEER:
            raise GialabError(f"threat model {PEER} needs a gossip topology (fl.topology: ring, regular, "
                              "erdos-renyi, complete); under star peers exchange nothing")
        if attacker is not None:
            raise GialabError("attacker picks a node of a gossip topology; under fl.topology=star the attacker "
                              "is the server (unset attacker)")
        return None
    if threat != PEER:
        raise GialabError(f"fl.topology={topology.name} has no server, so threat model {threat} has no one to play; "
                          f"use threat_model={PEER}")
    if defenses.aggregator.name != "mean":
        raise GialabError(f"defense {defenses.aggregator.name!r} is a server's aggregator; fl.topology={topology.name} "
                          "has no server (peers average with the gossip weights)")
    cohort = [t.name for t in defenses.transforms if isinstance(t, CohortAware)]
    if cohort:
        raise GialabError(f"defense {cohort[0]!r} sizes its noise for a server's aggregate; "
                          f"fl.topology={topology.name} has no server (use a local defense such as dp_sgd or dp_local)")
    if victim >= clients:
        raise GialabError(f"victim {victim} is not a client; valid ids: 0..{clients - 1}")
    if attacker is None:
        return topology.neighbours[victim][0]
    if attacker >= clients:
        raise GialabError(f"attacker {attacker} is not a node; valid ids: 0..{clients - 1}")
    if attacker == victim:
        raise GialabError(f"attacker and victim are both node {victim}; the curious peer attacks another node")
    return attacker


def peer_grants(
    granted: frozenset[Capability], topology: Topology, attacker: int, victim: int,
    attack: str, requires: Iterable[Capability],
) -> frozenset[Capability]:
    """The threat model's grants for this pair: a peer observes individual updates of neighbours only."""
    if victim in topology.neighbours[attacker]:
        return granted
    if Capability.OBSERVE_INDIVIDUAL in set(requires):
        raise GialabError(
            f"attack {attack!r} needs the victim's own update, but victim {victim} is not a neighbour of attacker "
            f"node {attacker} ({topology.distance(attacker, victim)} hops on the {topology.name} graph; its "
            f"neighbours: {', '.join(map(str, topology.neighbours[attacker]))}); a peer sees its neighbours' "
            "messages only"
        )
    return granted - {Capability.OBSERVE_INDIVIDUAL}


def observe_peer(
    transcript: GossipTranscript,
    truth: RoundTruth,
    *,
    threat: ThreatModel,
    granted: frozenset[Capability],
    data: DataSpec,
    target: int,
    observer: int | None,
    side_information: Iterable[SideInformation] = (),
) -> Observation:
    """Node ``observer``'s view of a gossip round. Truth is read only for declared side information."""
    if observer is None:
        raise GialabError("a gossip round is observed by a node: set the scenario's attacker")
    topology = transcript.topology
    view = transcript.view(observer)
    if target not in topology.neighbours[observer]:
        granted = granted - {Capability.OBSERVE_INDIVIDUAL}  # nothing of the victim reached this node alone
    own_start, change = view.own_change()
    template = transcript.initial_model
    if Capability.OBSERVE_INDIVIDUAL in granted:
        start, update, _ = view.update_of(target)
        model = with_parameters(template, start)
        validate_update(model, update, f"node {target}'s update")
        updates = {target: update}
    else:
        model, updates = with_parameters(template, own_start), {}
    aggregate = change if Capability.OBSERVE_AGGREGATE in granted else None
    if aggregate is not None:
        validate_update(model, aggregate, "the gossip average's change")
    side = set(side_information)
    visible = updates.keys() if updates else transcript.participants
    return Observation(
        threat_model=threat.name,
        capabilities=granted,
        round=transcript.round,
        data=data,
        model=model,
        update_kind=transcript.update_kind,
        participants=transcript.participants,
        target=target,
        updates=updates,
        aggregate=aggregate,
        example_counts=(
            {cid: int(truth.batches[cid].labels.shape[0]) for cid in visible}
            if SideInformation.EXAMPLE_COUNTS in side else None
        ),
        labels=({cid: truth.batches[cid].labels.clone() for cid in visible}
                if SideInformation.LABELS in side else None),
        fl_setup=transcript.setup if SideInformation.LOCAL_HYPERPARAMETERS in side else None,
    )
