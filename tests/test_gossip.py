"""Decentralized (gossip) FL: the mixing matrix, consensus, who hears whom, and a curious peer's attacks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gialab
from gialab.data.dataset import DataSpec
from gialab.defenses import resolve_defenses
from gialab.errors import GialabError
from gialab.fl import Client, FLSetup, fedavg_update, fedsgd_update
from gialab.fl.gossip import GossipProtocol, parameters_of
from gialab.fl.topology import build_topology
from gialab.peer_threat import peer_attacker
from gialab.threats import THREAT_MODELS, Capability, granted_capabilities, observe

SPEC = DataSpec("toy", (1, 2, 2), 3, ("a", "b", "c"), (0.5,), (0.2,))
PEER = THREAT_MODELS["honest-but-curious-peer"]
GOSSIP = {"dataset": "digits", "clients": 4, "fl.topology": "ring", "threat_model": "honest-but-curious-peer"}


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def gossip(topology: str, n: int, setup: dict | None = None, **extra: object) -> GossipProtocol:
    fl = FLSetup(topology=topology, **(setup or {}), **extra)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2 * n, 1, 2, 2, generator=g), torch.randint(0, 3, (2 * n,), generator=g)
    clients = [Client(i, x[2 * i : 2 * i + 2], y[2 * i : 2 * i + 2]) for i in range(n)]
    return GossipProtocol(tiny_model(), clients, fl, build_topology(fl, n, seed=0), batch_size=2)


@pytest.mark.parametrize("topology, n, extra", [
    ("ring", 8, {}), ("regular", 8, {"degree": 3}), ("erdos-renyi", 9, {"edge_probability": 0.4}),
    ("complete", 5, {}),
])
def test_mixing_matrix_is_doubly_stochastic_local_and_contracting(topology: str, n: int, extra: dict) -> None:
    topo = build_topology(FLSetup(topology=topology, **extra), n, seed=3)
    w = topo.mixing
    assert torch.equal(w, w.T) and bool((w >= 0).all())
    assert torch.allclose(w.sum(0), torch.ones(n, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(w.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-12, rtol=0)
    for i in range(n):
        for j in range(n):
            if i != j and j not in topo.neighbours[i]:
                assert w[i, j] == 0  # non-neighbours never weigh each other
            elif i != j:
                assert w[i, j] == 1 / (1 + max(len(topo.neighbours[i]), len(topo.neighbours[j])))
    if topology == "regular":
        assert all(len(nb) == 3 for nb in topo.neighbours)
    moduli = torch.linalg.eigvalsh(w).abs().sort(descending=True).values
    assert moduli[0] == pytest.approx(1.0) and moduli[1] < 1 - 1e-6  # connected: consensus is reached


def test_gossip_averaging_reaches_the_mean_at_the_spectral_rate() -> None:
    topo = build_topology(FLSetup(topology="ring"), 8)
    g = torch.Generator().manual_seed(0)
    states = [(torch.randn(6, generator=g, dtype=torch.float64),) for _ in range(8)]
    mean = torch.stack([s[0] for s in states]).mean(0)
    start = max(float((s[0] - mean).norm()) for s in states)
    for _ in range(60):
        states = topo.mix(states)
        assert torch.allclose(torch.stack([s[0] for s in states]).mean(0), mean, atol=1e-12)  # average kept
    spread = max(float((s[0] - mean).norm()) for s in states)
    rate = float(torch.linalg.eigvalsh(topo.mixing).abs().sort(descending=True).values[1])
    assert spread < 1e-3 * start
    assert spread <= 8 * rate**60 * start  # geometric, at the second eigenvalue's modulus


def test_a_round_trains_locally_then_averages_with_neighbours_only() -> None:
    protocol = gossip("ring", 5, learning_rate=0.5)
    x0 = parameters_of(protocol.initial_model)
    transcript, truth = protocol.run_round()
    for i in range(5):  # what i sent: its own FedSGD step from the common start
        grad = fedsgd_update(copy.deepcopy(protocol.initial_model), F.cross_entropy,
                             truth.batches[i].images, truth.batches[i].labels)
        for s, a, gr in zip(transcript.sent[i], x0, grad, strict=True):
            assert torch.allclose(s, a - 0.5 * gr, atol=1e-6)
    w = protocol.topology.mixing
    for i in range(5):  # its new model: the Metropolis-weighted mean of its closed neighbourhood's messages
        for k, p in enumerate(protocol.models[i].parameters()):
            want = sum(float(w[i, j]) * transcript.sent[j][k] for j in protocol.topology.closed(i))
            assert torch.allclose(p, want, atol=1e-6)
    for k, p in enumerate(protocol.global_model.parameters()):
        assert torch.allclose(p, torch.stack([transcript.sent[j][k] for j in range(5)]).mean(0), atol=1e-6)


def test_no_node_hears_a_non_neighbour() -> None:
    protocol = gossip("regular", 6, degree=2)
    for _ in range(2):
        transcript, _ = protocol.run_round()
    topo = transcript.topology
    edges = {(s, r) for r in range(6) for s in topo.neighbours[r]}
    assert set(transcript.deliveries) == edges and len(transcript.deliveries) == len(edges)
    for node in range(6):
        assert set(transcript.received(node)) == set(topo.neighbours[node])
        view = transcript.view(node)
        assert set(view.messages) == set(view.earlier) == set(topo.closed(node))
        stranger = next(v for v in range(6) if v not in topo.closed(node))
        with pytest.raises(ValueError, match="not a neighbour"):
            view.start_of(stranger)


def test_a_neighbour_rebuilds_the_update_exactly_when_it_hears_all_the_victims_neighbours() -> None:
    setup = {"algorithm": "fedavg", "local_epochs": 2, "local_batch_size": 1, "learning_rate": 0.3}
    for topology, exact in (("complete", True), ("ring", False)):
        protocol = gossip(topology, 5, setup)
        protocol.run_round()
        held = parameters_of(protocol.models[0])  # what victim 0 trains from in round 1
        transcript, truth = protocol.run_round()
        start, update, is_exact = transcript.view(1).update_of(0)
        assert is_exact is exact
        want = fedavg_update(_with(protocol.initial_model, held), F.cross_entropy,
                             truth.batches[0].images, truth.batches[0].labels, transcript.setup)
        close = all(torch.allclose(u, v, atol=1e-5) for u, v in zip(update, want, strict=True))
        assert close is exact and all(torch.allclose(s, h, atol=1e-6) for s, h in zip(start, held)) is exact


def _with(template: nn.Module, tensors: tuple[torch.Tensor, ...]) -> nn.Module:
    model = copy.deepcopy(template)
    with torch.no_grad():
        for p, t in zip(model.parameters(), tensors, strict=True):
            p.copy_(t)
    return model


def test_the_gate_hands_a_non_neighbour_only_its_own_mixture() -> None:
    protocol = gossip("ring", 6)
    transcript, truth = protocol.run_round()
    granted = granted_capabilities(PEER)
    near = observe(transcript, truth, threat=PEER, granted=granted, data=SPEC, target=0, observer=1)
    far = observe(transcript, truth, threat=PEER, granted=granted, data=SPEC, target=0, observer=3)
    assert set(near.updates) == {0} and near.example_counts is None  # counts do not travel in gossip
    assert far.updates == {} and Capability.OBSERVE_INDIVIDUAL not in far.capabilities
    with pytest.raises(GialabError, match="not observable"):
        far.target_update()
    # Round 0: node 3's mixture is the weighted mean of nodes 2, 3, 4's gradients, nothing of node 0.
    w = transcript.topology.mixing
    grads = {j: fedsgd_update(copy.deepcopy(protocol.initial_model), F.cross_entropy,
                              truth.batches[j].images, truth.batches[j].labels) for j in range(6)}
    for k, a in enumerate(far.aggregate):
        assert torch.allclose(a, sum(float(w[3, j]) * grads[j][k] for j in (2, 3, 4)), atol=1e-5)
    for u, g in zip(near.updates[0], grads[0], strict=True):
        assert torch.allclose(u, g, atol=1e-5)


def test_fc_leakage_by_a_neighbour_recovers_the_victim(out_dir: Path) -> None:
    result = gialab.run("fc-leakage", out=out_dir, set=GOSSIP)
    assert result.metrics["psnr_mean"] > 60  # exact: round 0 starts from the public initial model
    assert result.summary["fl_setup"]["topology"] == "ring"


def test_idlg_by_a_neighbour_recovers_the_victim(out_dir: Path) -> None:
    result = gialab.run("idlg", out=out_dir, set=GOSSIP | {"attacker": 3, "attack.iterations": 20})
    assert result.metrics["label_accuracy"] == 1.0 and result.metrics["psnr_mean"] > 30


def test_an_individual_attack_on_a_non_neighbour_is_refused_in_one_line(out_dir: Path) -> None:
    with pytest.raises(GialabError) as err:
        gialab.run("fc-leakage", out=out_dir, set=GOSSIP | {"attacker": 2})
    assert "victim 0 is not a neighbour of attacker node 2 (2 hops" in str(err.value)
    assert "\n" not in str(err.value) and not out_dir.exists()


def test_default_attacker_is_the_victims_lowest_neighbour() -> None:
    ring = build_topology(FLSetup(topology="ring"), 8)
    stack = resolve_defenses([])
    assert peer_attacker(ring, PEER.name, None, 0, 8, stack) == 1
    assert peer_attacker(ring, PEER.name, None, 5, 8, stack) == 4


@pytest.mark.parametrize("overrides, message", [
    ({"fl.topology": "tree"}, "fl.topology: Input should be"),
    ({"fl.topology": "regular"}, "needs fl.degree"),
    ({"fl.topology": "regular", "fl.degree": 4}, "must be below the number of clients (4)"),
    ({"fl.topology": "regular", "fl.degree": 3, "clients": 5}, "clients * degree must be even"),
    ({"fl.topology": "regular", "fl.degree": 1}, "never connected"),
    ({"fl.degree": 2}, "applies to fl.topology=regular only"),
    ({"fl.topology": "erdos-renyi", "fl.edge_probability": 0.01}, "disconnected in 100 seeded draws"),
    ({"fl.topology": "erdos-renyi"}, "needs fl.edge_probability"),
    ({"fl.clients_per_round": 2}, "unset fl.clients_per_round"),
    ({"clients": 1}, "needs at least 2 clients"),
    ({"threat_model": "honest-but-curious-server"}, "use threat_model=honest-but-curious-peer"),
    ({"fl.topology": "star"}, "needs a gossip topology"),
    ({"attacker": 0}, "attacker and victim are both node 0"),
    ({"attacker": 9}, "attacker 9 is not a node"),
    ({"defenses": ["secure_aggregation"]}, "server's aggregator"),
    ({"defenses": ["dp_distributed"]}, "sizes its noise for a server's aggregate"),
])
def test_bad_gossip_settings_are_refused_before_any_round(out_dir: Path, overrides: dict, message: str) -> None:
    with pytest.raises(GialabError) as err:
        gialab.run("fc-leakage", out=out_dir, set=GOSSIP | overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out_dir.exists()


def test_attacker_under_star_is_refused(out_dir: Path) -> None:
    with pytest.raises(GialabError, match="under fl.topology=star the attacker is the server"):
        gialab.run("fc-leakage", out=out_dir, attacker=1, clients=2)
