"""The peer-to-peer graph of decentralized FL and its gossip (mixing) weights.

Survey section 4.3 ("Improving Defenses"): in decentralized FL "participants solely engage with
their immediate neighbors", with no node that communicates with all clients. Which node talks to
which is this module's graph; how a node weighs what its neighbours send is the mixing matrix W.

W follows the Metropolis-Hastings rule (Xiao and Boyd 2004, "Fast linear iterations for
distributed averaging", Systems & Control Letters 53; Xiao, Boyd and Lall 2005):
``W_ij = 1 / (1 + max(d_i, d_j))`` for an edge ``{i, j}``, ``W_ii = 1 - sum_{j != i} W_ij``, and 0
between non-neighbours. It is symmetric with rows summing to one, hence doubly stochastic, which
is what decentralized SGD needs (Lian et al. 2017, "Can Decentralized Algorithms Outperform
Centralized Algorithms?", NeurIPS, assumption on W in sec. 3): gossip then preserves the network
average and, on a connected graph, drives every node to it geometrically at the rate of W's second
largest eigenvalue modulus. Each node computes its row from its own and its neighbours' degrees
alone, so no node needs to see the graph; we assume the attacker does (the worst case for a victim).

Random graphs are drawn with networkx from the scenario's seed and redrawn (seeded, in order)
until connected: a disconnected graph never reaches consensus, so it is refused, not trained on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import torch

from gialab.errors import GialabError
from gialab.fl.setup import FLSetup

GOSSIP_TOPOLOGIES = ("ring", "regular", "erdos-renyi", "complete")
_DRAWS = 100  # seeded redraws before a random graph that keeps coming out disconnected is refused


@dataclass(frozen=True)
class Topology:
    """An undirected connected graph on nodes ``0..n-1`` and its Metropolis-Hastings weights."""

    name: str
    neighbours: tuple[tuple[int, ...], ...]  # sorted, without the node itself
    mixing: torch.Tensor  # (n, n) float64, doubly stochastic

    @property
    def nodes(self) -> int:
        return len(self.neighbours)

    def closed(self, node: int) -> tuple[int, ...]:
        """The node and its neighbours: whose models enter its gossip average."""
        return tuple(sorted((node, *self.neighbours[node])))

    def distance(self, a: int, b: int) -> int:
        """Hops between ``a`` and ``b`` (breadth-first; the graph is connected)."""
        seen, queue = {a: 0}, deque([a])
        while queue:
            u = queue.popleft()
            if u == b:
                return seen[u]
            for v in self.neighbours[u]:
                if v not in seen:
                    seen[v] = seen[u] + 1
                    queue.append(v)
        raise ValueError(f"nodes {a} and {b} are not connected")

    def mix(self, states: Sequence[Sequence[torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
        """One gossip step: node i's new state is ``sum_j W_ij states[j]`` over its closed neighbourhood.

        Only neighbours' states are read (zero weights are skipped, not multiplied), so the
        computation itself respects who can talk to whom.
        """
        return [weighted_sum(self.mixing[i], {j: states[j] for j in self.closed(i)}) for i in range(self.nodes)]


def weighted_sum(weights: torch.Tensor, states: Mapping[int, Sequence[torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """``sum_j weights[j] * states[j]``, tensor by tensor, over the states given."""
    members = list(states)
    out = []
    for k in range(len(states[members[0]])):
        acc = states[members[0]][k] * float(weights[members[0]])
        for j in members[1:]:
            acc.add_(states[j][k], alpha=float(weights[j]))
        out.append(acc)
    return tuple(out)


def metropolis_hastings(neighbours: Sequence[Sequence[int]]) -> torch.Tensor:
    """W_ij = 1/(1 + max(d_i, d_j)) on edges, the rest of each row on the diagonal (Xiao and Boyd 2004)."""
    n = len(neighbours)
    degree = [len(nb) for nb in neighbours]
    w = torch.zeros(n, n, dtype=torch.float64)
    for i, nb in enumerate(neighbours):
        for j in nb:
            w[i, j] = 1.0 / (1 + max(degree[i], degree[j]))
        w[i, i] = 1.0 - w[i].sum()
    return w


def _connected(draw: Callable[[int], nx.Graph], seed: int, what: str, fix: str) -> nx.Graph:
    for attempt in range(_DRAWS):
        graph = draw(seed * _DRAWS + attempt)
        if nx.is_connected(graph):
            return graph
    raise GialabError(f"{what} came out disconnected in {_DRAWS} seeded draws; {fix}")


def build_topology(setup: FLSetup, nodes: int, seed: int = 0) -> Topology | None:
    """The scenario's gossip graph, or ``None`` for the server-based ``star``; refuses bad settings."""
    kind = setup.topology
    if kind != "regular" and setup.degree is not None:
        raise GialabError(f"fl.degree applies to fl.topology=regular only (topology is {kind}); unset it")
    if kind != "erdos-renyi" and setup.edge_probability is not None:
        raise GialabError(f"fl.edge_probability applies to fl.topology=erdos-renyi only (topology is {kind}); unset it")
    if kind == "star":
        return None
    if nodes < 2:
        raise GialabError(f"fl.topology={kind} needs at least 2 clients to gossip (clients={nodes})")
    if setup.clients_per_round is not None:
        raise GialabError(f"every node gossips every round under fl.topology={kind}; unset fl.clients_per_round")
    if kind == "ring":
        graph = nx.cycle_graph(nodes)
    elif kind == "complete":
        graph = nx.complete_graph(nodes)
    elif kind == "regular":
        k = setup.degree
        if k is None:
            raise GialabError("fl.topology=regular needs fl.degree, the number of neighbours per node")
        if k >= nodes:
            raise GialabError(f"fl.degree {k} must be below the number of clients ({nodes}); valid: 1..{nodes - 1}")
        if nodes * k % 2:
            raise GialabError(f"no {k}-regular graph on {nodes} nodes exists (clients * degree must be even)")
        if k == 1 and nodes > 2:
            raise GialabError(f"a 1-regular graph on {nodes} nodes is disjoint pairs, never connected; use fl.degree >= 2")
        graph = _connected(lambda s: nx.random_regular_graph(k, nodes, seed=s), seed,
                           f"the random {k}-regular graph on {nodes} nodes", "raise fl.degree or change the seed")
    else:
        p = setup.edge_probability
        if p is None:
            raise GialabError("fl.topology=erdos-renyi needs fl.edge_probability, the chance of each edge")
        graph = _connected(lambda s: nx.erdos_renyi_graph(nodes, p, seed=s), seed,
                           f"the Erdos-Renyi graph with p={p} on {nodes} nodes", "raise fl.edge_probability")
    neighbours = tuple(tuple(sorted(int(v) for v in graph.neighbors(u))) for u in range(nodes))
    return Topology(kind, neighbours, metropolis_hastings(neighbours))
