"""Decentralized FL under a curious peer: leakage against graph distance, and what gossip costs in accuracy.

Usage: .venv/bin/python bench/gossip_leakage.py [--nodes 8] [--seeds 3] [--late-round 3]
       [--accuracy-rounds 5 20] [--accuracy-model lenet] [--accuracy-lr 1.0] [--local-epochs 5]
       [--skip-leakage] [--skip-accuracy]

Table 1 (leakage): a ring of ``--nodes`` nodes, one natural 32x32 image per node, fcnet, FedSGD.
The victim is node 0 and the attacker node d, d hops away. Columns:
  * fc-leakage on the victim's own message in round 0 (exact start: the public initial model), and in
    round ``--late-round``-1, where the attacker rebuilds the victim's start model from what it heard
    (on a ring it misses one of the victim's neighbours, so the start is estimated). Non-neighbours
    are refused before the first round: they receive no message of the victim.
  * cocktail-party on the attacker's own gossip mixture (``PeerView.own_change``), told the number of
    nodes whose data can be in it (2(t+1)+1 on a ring in round t: the attacker knows the graph), in
    round d-2, before the victim's data can have reached it (a control), and in round d-1, the first
    round it can have. The score is the best PSNR of any of the K unmixed images against the victim's
    image: the attacker does not know which component is the victim's (it can rule out its own image
    and its neighbours', which it recovers from their messages), so this is an upper bound on what a
    pick would give.
A last line repeats the late fc-leakage on a complete graph, where the attacker hears every neighbour
of the victim and so rebuilds its start model exactly in every round. Medians over seeds 0..S-1 (each seed draws other images and another initial model).

Table 2 (accuracy): digits, ``--nodes`` clients with 40 examples each (IID), LeNet (``--accuracy-model``),
FedAvg (5 local epochs in mini-batches of 10, learning rate 1.0: the Sigmoid LeNet needs a large
rate), 400 held-out digits. Star is the server
protocol (example-weighted mean); gossip runs on a complete graph (Metropolis weights 1/n: the same
average each round, a sanity check), a random 3-regular graph and a ring. "consensus" is the
network-average model (held by no node), "nodes" the mean accuracy of the nodes' own models,
"spread" the largest relative distance of a node's parameters from the average.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch import nn

import gialab
from gialab.data import load_dataset
from gialab.errors import GialabError
from gialab.fl import Client, FLSetup, Protocol
from gialab.fl.gossip import GossipProtocol
from gialab.fl.topology import build_topology
from gialab.metrics.image import psnr
from gialab.models import build_model

PEER = {"dataset": "natural", "model": "fcnet", "batch_size": 1, "fl.topology": "ring",
        "threat_model": "honest-but-curious-peer", "victim": 0}


def _victim_psnr(result: gialab.runner.RunResult, victim: int) -> float:
    """Best PSNR of any reconstruction against the victim's image."""
    index = 0 if result.reconstruction.source is not None else victim
    truth = result.truth_images[index : index + 1]
    return max(float(psnr(r[None].to(truth.dtype), truth)) for r in result.reconstruction.images)


def _attack(attack: str, overrides: dict[str, Any], seeds: int, out: str) -> str:
    scores = []
    for seed in range(seeds):
        try:
            result = gialab.run(attack, out=out, set=overrides | {"seed": seed})
        except GialabError as exc:
            return "refused" if "not a neighbour" in str(exc) else f"error: {exc}"
        scores.append(_victim_psnr(result, overrides["victim"]))
    return f"{statistics.median(scores):.1f} ({min(scores):.1f}..{max(scores):.1f})"


def leakage_table(nodes: int, seeds: int, late: int, out: str) -> None:
    print(f"ring of {nodes} nodes, natural 32x32, fcnet, batch 1 per node, FedSGD lr 0.1, victim node 0; "
          f"PSNR (dB) against the victim, median (min..max) over seeds 0..{seeds - 1}")
    print(f"| hops | fc-leakage, victim's message, round 0 | fc-leakage, round {late - 1} (start estimated) | "
          "cocktail-party on own mixture, round d-2 (control) | cocktail-party on own mixture, round d-1 |")
    print("|---|---|---|---|---|")
    base = PEER | {"clients": nodes}
    for d in range(1, nodes // 2 + 1):
        row = [str(d)]
        for rounds in (1, late):
            row.append(_attack("fc-leakage", base | {"attacker": d, "fl.rounds": rounds}, seeds, out))
        for rounds in (d - 1, d):
            if d == 1:
                row.append("- (a neighbour inverts the message)")
            elif rounds == 0:
                row.append("-")
            else:
                sources = min(nodes, 2 * rounds + 1)
                row.append(_attack("cocktail-party", base | {"attacker": d, "fl.rounds": rounds,
                                                             "attack.batch_size": sources}, seeds, out))
        print("| " + " | ".join(row) + " |", flush=True)
    complete = _attack("fc-leakage", base | {"fl.topology": "complete", "attacker": 1, "fl.rounds": late}, seeds, out)
    print(f"\nfc-leakage in round {late - 1} on a complete graph of {nodes} (the attacker hears all of the victim's "
          f"neighbours, so it rebuilds the start exactly): {complete} dB")


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def accuracy_table(nodes: int, seeds: int, rounds: list[int], model_name: str, lr: float, epochs: int) -> None:
    data = load_dataset("digits")
    per, test = 40, 400
    setups = [("star (server FedAvg)", "star", {}), ("complete", "complete", {}),
              ("random 3-regular", "regular", {"degree": 3}), ("ring", "ring", {})]
    print(f"\ndigits, {nodes} clients x {per} examples (IID), {model_name}, FedAvg E={epochs}, local batch 10, lr {lr}, "
          f"{test} held-out digits; accuracy median over seeds 0..{seeds - 1}")
    print("| topology | rounds | consensus accuracy | mean node accuracy | spread | s |")
    print("|---|---|---|---|---|---|")
    for label, topology, extra in setups:
        for r in rounds:
            acc, node_acc, spread, seconds = [], [], [], []
            for seed in range(seeds):
                started = time.perf_counter()
                order = np.random.default_rng(seed).permutation(len(data))
                x, y = data.images[order], data.labels[order]
                torch.manual_seed(seed)
                model = build_model(model_name, data.spec.shape, data.spec.num_classes)
                clients = [Client(i, x[i * per : (i + 1) * per], y[i * per : (i + 1) * per]) for i in range(nodes)]
                setup = FLSetup(algorithm="fedavg", local_epochs=epochs, local_batch_size=10, learning_rate=lr, rounds=r,
                                topology=topology, **extra)
                graph = build_topology(setup, nodes, seed)
                protocol = (Protocol(model, clients, setup, batch_size=per, seed=seed) if graph is None else
                            GossipProtocol(model, clients, setup, graph, batch_size=per, seed=seed))
                for _ in range(r):
                    protocol.run_round()
                xt, yt = x[-test:], y[-test:]
                consensus = protocol.global_model
                acc.append(_accuracy(consensus, xt, yt))
                if isinstance(protocol, GossipProtocol):
                    node_acc.append(statistics.mean(_accuracy(m, xt, yt) for m in protocol.models.values()))
                    mean = torch.cat([p.detach().flatten() for p in consensus.parameters()])
                    spread.append(max(
                        float((torch.cat([p.detach().flatten() for p in m.parameters()]) - mean).norm() / mean.norm())
                        for m in protocol.models.values()))
                seconds.append(time.perf_counter() - started)
            nodes_cell = f"{statistics.median(node_acc):.3f}" if node_acc else "- (one model)"
            spread_cell = f"{statistics.median(spread):.2e}" if spread else "-"
            print(f"| {label} | {r} | {statistics.median(acc):.3f} | {nodes_cell} | {spread_cell} | "
                  f"{statistics.median(seconds):.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--late-round", type=int, default=3, help="rounds for the late fc-leakage column")
    parser.add_argument("--accuracy-rounds", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--accuracy-model", default="lenet")
    parser.add_argument("--accuracy-lr", type=float, default=1.0)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--skip-leakage", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if not args.skip_leakage:
        with tempfile.TemporaryDirectory() as out:
            leakage_table(args.nodes, args.seeds, args.late_round, out)
    if not args.skip_accuracy:
        accuracy_table(args.nodes, args.seeds, args.accuracy_rounds, args.accuracy_model, args.accuracy_lr,
                       args.local_epochs)
    print(f"\ntotal {time.perf_counter() - started:.0f} s, torch threads 1")


if __name__ == "__main__":
    main()
