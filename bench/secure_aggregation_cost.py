"""Wall time of one secure aggregation (Bonawitz et al. 2017) against the plain weighted mean.

Usage: PYTHONPATH=src .venv/bin/python bench/secure_aggregation_cost.py [--clients 4 16 64] [--model lenet]
       [--repeats 3]
Runs the registered ``secure_aggregation`` aggregator on random updates of the model's size, one
round, with no dropouts and with the most the threshold tolerates (n - t clients, half dropping
before their masked input and half after). All clients and the server run in this one process
and thread, so the time is the round's total computation (n clients plus the server), not its
latency. Prints a Markdown table; the error column is the largest deviation from the
example-weighted mean, which the fixed point bounds by 2^-(frac_bits+1).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gialab.defenses import WeightedMean
from gialab.defenses.secure_aggregation import SecureAggregation, SecureAggregationParams, default_threshold
from gialab.fl.client import ClientUpdate
from gialab.models import build_model


def _updates(model: torch.nn.Module, clients: int, seed: int) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    return [
        ClientUpdate(cid, 0, tuple(torch.randn(p.shape, generator=g) for p in model.parameters()),
                     num_examples=int(torch.randint(1, 65, (1,), generator=g)))
        for cid in range(clients)
    ]


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model(args.model, (3, 32, 32), 10)
    size = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {size} parameters; torch threads 1; median of {args.repeats}")
    print("| clients n | threshold t | dropouts (before / after masked input) | secure aggregation (s) "
          "| plain weighted mean (s) | max error vs weighted mean |")
    print("|---|---|---|---|---|---|")
    for n in args.clients:
        t = default_threshold(n)
        updates = _updates(model, n, seed=n)
        mean_seconds, _ = _median_seconds(lambda: WeightedMean()(updates), args.repeats)
        for early, late in [(0, 0), ((n - t + 1) // 2, (n - t) // 2)]:
            aggregator = SecureAggregation(SecureAggregationParams(dropouts=early, late_dropouts=late))
            seconds, out = _median_seconds(lambda: aggregator(updates, torch.Generator().manual_seed(0)), args.repeats)
            plain = WeightedMean()(_survivors(updates, early))
            error = max(float((a.double() - b.double()).abs().max()) for a, b in zip(out, plain, strict=True))
            print(f"| {n} | {t} | {early} / {late} | {seconds:.3f} | {mean_seconds:.4f} | {error:.1e} |")


def _survivors(updates: list[ClientUpdate], early: int) -> list[ClientUpdate]:
    """The clients whose masked input arrived, by repeating the aggregator's draws from seed 0."""
    g = torch.Generator().manual_seed(0)
    torch.randint(0, 256, (32,), generator=g, dtype=torch.uint8)  # the round seed, drawn first
    dropped = set(torch.randperm(len(updates), generator=g)[:early].tolist())
    return [u for i, u in enumerate(sorted(updates, key=lambda u: u.client_id)) if i not in dropped]


if __name__ == "__main__":
    main()
