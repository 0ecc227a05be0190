"""Decentralized (gossip) FL: every node trains, then averages with its neighbours; no server.

Survey section 4.3: decentralized FL "may employ a peer-to-peer network for transmitting,
aggregating, and updating local models. Participants solely engage with their immediate
neighbors", so no node "communicat[es] with all clients". This is that protocol, so that attacks
can be run against it and the survey's hope measured.

The round is decentralized SGD with local updates in adapt-then-combine form, Algorithm 1 of
Koloskova et al. 2020 ("A Unified Theory of Decentralized SGD with Changing Topology and Local
Updates", ICML), which generalizes D-PSGD (Lian et al. 2017, NeurIPS, Algorithm 1) to local steps:

    x_i^{t+1/2} = x_i^t - step * u_i(x_i^t)          (local training: FedSGD gradient or FedAvg delta)
    x_i^{t+1}   = sum_{j in N[i]} W_ij x_j^{t+1/2}     (gossip with the Metropolis-Hastings W)

``u_i`` is exactly the update a client computes under the server protocol (``Client.train``, then
the client-side defenses), ``step`` the learning rate under FedSGD and 1 under FedAvg (its delta is
already scaled), as the server applies it. D-PSGD proper takes the gradient at ``x_i^t`` but adds it
after averaging; the two orders share the convergence theory, and this one lets FedAvg's local
epochs in unchanged. Every node starts from the same model ``x^0``, as D-PSGD initializes, so the
initial model is public.

What crosses the wire: node i sends ``x_i^{t+1/2}``, its model after local training, to each
neighbour, and to nobody else. That is all a peer can log (``PeerView``); whether a neighbour can
turn it back into i's update depends on whether it knows ``x_i^t`` (see ``PeerView.start_of``).
BatchNorm buffers are not gossiped, as the server protocol does not aggregate them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gialab.defenses.base import CohortAware, UpdateTransform
from gialab.errors import GialabError
from gialab.fl.client import Client, LocalBatch
from gialab.fl.protocol import RoundTruth, ServerPlan, local_gradient
from gialab.fl.setup import FLSetup
from gialab.fl.topology import Topology, weighted_sum
from gialab.fl.training import LossFn

Tensors = tuple[torch.Tensor, ...]


def parameters_of(model: nn.Module) -> Tensors:
    return tuple(p.detach().clone() for p in model.parameters())


def with_parameters(template: nn.Module, tensors: Sequence[torch.Tensor]) -> nn.Module:
    """A copy of ``template`` holding ``tensors`` as its parameters (buffers as in the template)."""
    model = copy.deepcopy(template)
    with torch.no_grad():
        for p, t in zip(model.parameters(), tensors, strict=True):
            p.copy_(t)
    return model


@dataclass(frozen=True)
class GossipTranscript:
    """Every message of one gossip round, and the round before (what the peers could have logged).

    ``sent[i]`` is node i's model after local training, ``deliveries`` the (sender, receiver) pair
    of each message: one per direction of each edge. No one receives all of ``sent``; the threat
    gate hands an attacker node only its ``view``.
    """

    round: int
    participants: tuple[int, ...]
    topology: Topology
    initial_model: nn.Module
    sent: Mapping[int, Tensors]
    deliveries: tuple[tuple[int, int], ...]
    update_kind: str
    setup: FLSetup
    previous: GossipTranscript | None = None
    refused: Mapping[int, str] = field(default_factory=dict)  # no server model to audit: always empty

    @property
    def answered(self) -> tuple[int, ...]:
        return self.participants

    def received(self, node: int) -> dict[int, Tensors]:
        """The messages ``node`` received this round, by sender."""
        return {s: self.sent[s] for s, r in self.deliveries if r == node}

    def view(self, node: int) -> PeerView:
        """What ``node`` holds after this round: what it sent and received, now and a round ago."""
        def held(t: GossipTranscript) -> dict[int, Tensors]:
            return {node: t.sent[node], **t.received(node)}

        step = self.setup.learning_rate if self.setup.algorithm == "fedsgd" else 1.0
        return PeerView(node, self.round, self.topology, self.initial_model, held(self),
                        held(self.previous) if self.previous is not None else None, step)


@dataclass(frozen=True)
class PeerView:
    """One node's log: its own and its neighbours' messages this round (``messages``) and last round
    (``earlier``, ``None`` in round 0), the public initial model and graph, and the update step."""

    node: int
    round: int
    topology: Topology
    initial_model: nn.Module
    messages: Mapping[int, Tensors]
    earlier: Mapping[int, Tensors] | None
    step: float

    def start_of(self, node: int) -> tuple[Tensors, bool]:
        """The model ``node`` trained from this round as this view can rebuild it, and whether exactly.

        In round 0 it is the common initial model: exact. Later it is ``x_node^t = sum_k W_node,k
        x_k^{t-1/2}`` over ``node``'s closed neighbourhood, of which this view holds last round's
        messages only from its own closed neighbourhood. It is exact when that covers ``node``'s
        (``N[node]`` within ``N[self]``: a complete graph, a triangle); otherwise the unseen
        neighbours' messages are taken to equal ``node``'s own last message, and the error is their
        disagreement with it (other nodes' past updates, mixed in).
        """
        if node != self.node and node not in self.topology.neighbours[self.node]:
            raise ValueError(f"node {node} is not a neighbour of node {self.node}; this view holds nothing of it")
        if self.earlier is None:
            return parameters_of(self.initial_model), True
        members = self.topology.closed(node)
        held = {k: self.earlier.get(k, self.earlier[node]) for k in members}
        return weighted_sum(self.topology.mixing[node], held), all(k in self.earlier for k in members)

    def update_of(self, node: int) -> tuple[Tensors, Tensors, bool]:
        """``(start, update, exact)``: ``node``'s start model and ``(start - sent) / step``, its update."""
        start, exact = self.start_of(node)
        update = tuple((s - m) / self.step for s, m in zip(start, self.messages[node], strict=True))
        return start, update, exact

    def own_change(self) -> tuple[Tensors, Tensors]:
        """``(x^t, (x^t - x^{t+1}) / step)``: this node's start model and what its gossip average moved it.

        Both are exact: the node's own average reads only messages it received. In round 0 the
        change is ``sum_j W_ij u_j``, a weighted mean of its closed neighbourhood's updates at the
        common model, as a server's aggregate over those nodes would be; later rounds add the
        neighbours' disagreement, itself a mixture of earlier updates from further away.
        """
        start, _ = self.start_of(self.node)
        after = weighted_sum(self.topology.mixing[self.node], self.messages)
        return start, tuple((s - a) / self.step for s, a in zip(start, after, strict=True))


class GossipProtocol:
    """Decentralized FL over ``topology``: each node holds its own model; there is no server.

    The constructor mirrors ``Protocol``'s so the runner can pick either. Only client-side
    defenses apply: there is no aggregator to replace, and a defense that sizes its noise for a
    server's cohort has no cohort here, so both are refused.
    """

    def __init__(
        self,
        model: nn.Module,
        clients: Sequence[Client],
        setup: FLSetup,
        topology: Topology,
        *,
        batch_size: int,
        loss_fn: LossFn = F.cross_entropy,
        transforms: Sequence[UpdateTransform] = (),
        seed: int = 0,
    ) -> None:
        ids = sorted(c.client_id for c in clients)
        if ids != list(range(topology.nodes)):
            raise GialabError(f"the {topology.name} graph has {topology.nodes} nodes but the clients are {ids}")
        cohort = [t.name for t in transforms if isinstance(t, CohortAware)]
        if cohort:
            raise GialabError(
                f"defense {cohort[0]!r} sizes its noise for a server's aggregate; fl.topology={topology.name} "
                "has no server (use a local defense such as dp_sgd or dp_local)"
            )
        self.clients = {c.client_id: c for c in clients}
        self.setup = setup
        self.topology = topology
        self.batch_size = batch_size
        self.loss_fn = loss_fn
        self.transforms = tuple(transforms)
        self.gradient = local_gradient(self.transforms, model)
        self.generator = torch.Generator().manual_seed(seed)
        self.initial_model = copy.deepcopy(model)
        self.models = {cid: copy.deepcopy(model) for cid in ids}
        self.participation_log: list[tuple[int, ...]] = []
        self._last: GossipTranscript | None = None

    @property
    def global_model(self) -> nn.Module:
        """The network average of the nodes' models: no node holds it; it is what consensus tends to."""
        n = len(self.models)
        mean = [sum(p.detach().double() for p in ps) / n for ps in zip(*(m.parameters() for m in self.models.values()))]
        return with_parameters(self.initial_model, [m.float() for m in mean])

    def run_round(self, plan: ServerPlan | None = None) -> tuple[GossipTranscript, RoundTruth]:
        if plan is not None and plan != ServerPlan():
            raise GialabError(f"fl.topology={self.topology.name} has no server to deviate from the protocol")
        round_index = len(self.participation_log)
        step = self.setup.learning_rate if self.setup.algorithm == "fedsgd" else 1.0
        sent: dict[int, Tensors] = {}
        batches: dict[int, LocalBatch] = {}
        for cid in sorted(self.clients):
            start = self.models[cid]
            update, batch = self.clients[cid].train(
                copy.deepcopy(start), self.loss_fn, self.setup,
                batch_size=self.batch_size, round_index=round_index, generator=self.generator,
                gradient=self.gradient,
            )
            for transform in self.transforms:
                update = transform(update, self.generator)
            sent[cid] = tuple(p.detach() - step * u for p, u in zip(start.parameters(), update.tensors, strict=True))
            batches[cid] = batch
        mixed = self.topology.mix([sent[i] for i in range(self.topology.nodes)])
        for cid, tensors in enumerate(mixed):
            with torch.no_grad():
                for p, t in zip(self.models[cid].parameters(), tensors, strict=True):
                    p.copy_(t)
        participants = tuple(sorted(self.clients))
        self.participation_log.append(participants)
        deliveries = tuple((s, r) for r in participants for s in self.topology.neighbours[r])
        previous = dataclasses.replace(self._last, previous=None) if self._last is not None else None
        transcript = GossipTranscript(
            round_index, participants, self.topology, self.initial_model, sent, deliveries,
            self.setup.update_kind, self.setup, previous,
        )
        self._last = transcript
        return transcript, RoundTruth(round_index, batches)
