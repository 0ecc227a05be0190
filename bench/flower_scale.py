"""Flower at scale: one trap-weights round with N clients as a Flower simulation, its wall time and memory.

Usage (minutes on 2 loaded cores; the driver holds every message, about 80 MB per client with
the preset's model, so 100 clients want ~9 GB free, ~5 GB with digits):
    PYTHONPATH=src python bench/flower_scale.py --clients 100 --batch-size 8 --workers 2 --dataset digits

One ``gialab.run("trap-weights", engine="flower")``: the malicious server (``PlannedStrategy``)
sends all N SuperNodes the trapped 6-layer FC net (7.1 M parameters, 28 MB of float32, on the
preset's natural crops; 4.1 M on ``--dataset digits``), every
ClientApp trains it honestly on its batch on ``--workers`` Ray CPUs, the server receives every
update (Flower's default workflow: trap weights needs the victim's own update), and the attack
inverts client 0's. Reports the whole run's wall time, the simulation's (Ray start to stop), the
attack's result, and peak resident memory: the driver (ServerApp, Flower's in-memory link state
with every message, the attack) and each Ray worker process (the ClientApps it ran; each client
writes its process's peak to its record, ``integrations/flower/client_app.py``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import gialab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs running ClientApps")
    parser.add_argument("--dataset", default="natural", help="natural (the preset's, 32x32x3: 7.1 M parameters) "
                        "or digits (8x8: 4.1 M, less memory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = gialab.run("trap-weights", out=Path(out), engine="flower", workers=args.workers, seed=args.seed,
                            clients=args.clients, batch_size=args.batch_size, dataset=args.dataset)
        wall = time.perf_counter() - started
        written = json.loads((result.run_dir / "metrics.json").read_text())
    round0 = result.summary["engine"]["rounds"][0]
    workers = round0["worker_peak_rss_mb"]
    m = result.metrics
    print("| dataset | clients | batch | Ray workers | run wall (s) | simulation (s) | attack (s) | fraction recovered "
          "| driver peak RSS (MB) | worker peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.dataset} | {args.clients} | {args.batch_size} | {args.workers} | {wall:.1f} "
          f"| {round0['simulation_s']:.1f} "
          f"| {written['attack_details']['attack_seconds']:.1f} | {m['fraction_recovered']:.2f} "
          f"| {round0['driver_peak_rss_mb']:.0f} | {', '.join(f'{w:.0f}' for w in workers)} |")


if __name__ == "__main__":
    main()
