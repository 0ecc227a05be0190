"""Sybil devices against distributed DP: the noise the victim's update carries against the promise, and recovery.

For each round size M and noise multiplier sigma, the `sybil` preset (FC net, batch 4, C = 1) runs
with the victim and M - 1 empty sybils, then, as the ablation, with the victim among M - 1 honest
clients (attack.sybils=0, same trap weights and read-out). Reported per (M, sigma), over seeds:
the per-coordinate noise std the honest protocol promises each update in the sum (sigma C, the
defense's report), the std the victim's exposed update actually carries (measured against its
clean update, truth side), their ratio next to 1/sqrt(M - 1), the fraction of the victim's
samples recovered (PSNR >= 30 dB) with sybils and in the honest round, and epsilon as promised
(all M shares) and for the isolated update (one share).

The aggregator is the plain weighted mean unless --secure-aggregation: with empty sybils both give
the same aggregate up to secure aggregation's 2^-24 fixed point (tests/test_sybil.py checks it),
and secure aggregation over M parties costs ~M^2 mask expansions of the 7M-coordinate FC net
(~30 s at M = 10 on 2 loaded cores, hours at M = 100). The honest round trains M real clients,
so it runs only up to --honest-max-sigma (above it the isolated run already recovers nothing).

Usage: .venv/bin/python bench/sybil.py [--ms 10 100] [--sigmas 0 1e-5 ...] [--seeds N]
       [--honest-max-sigma S] [--secure-aggregation]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from typing import Any

import gialab


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.mean(kept) if kept else None


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _run(out: str, m: int, sigma: float, seed: int, sybils: int | None, secure: bool) -> gialab.RunResult:
    defenses: list[Any] = [{"name": "dp_distributed", "clip": 1.0, "noise_multiplier": sigma}]
    if secure:
        defenses.append("secure_aggregation")
    return gialab.run("sybil", out=out, seed=seed, set={
        "clients": m, "fl.clients_per_round": m, "defenses": defenses, "attack.sybils": sybils})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1e-5, 2e-5, 1e-4, 1e-2, 1.0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--honest-max-sigma", type=float, default=2e-5)
    parser.add_argument("--secure-aggregation", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="opacus")  # its "optimal order" hint at tiny sigma
    aggregator = "secure aggregation" if args.secure_aggregation else "weighted mean"
    print(f"aggregator: {aggregator}; seeds 0..{args.seeds - 1}; means over seeds")
    print("| M | sigma | noise promised (sigma C) | victim's noise, measured | measured / promised | 1/sqrt(M-1) "
          "| recovered, sybils | PSNR max, sybils (dB) | recovered, honest round | epsilon promised "
          "| epsilon isolated | s per sybil run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for m in args.ms:
            for sigma in args.sigmas:
                runs, seconds = [], []
                for seed in range(args.seeds):
                    started = time.perf_counter()
                    runs.append(_run(out, m, sigma, seed, None, args.secure_aggregation))
                    seconds.append(time.perf_counter() - started)
                honest = ([_run(out, m, sigma, seed, 0, args.secure_aggregation).metrics["fraction_recovered"]
                           for seed in range(args.seeds)] if sigma <= args.honest_max_sigma else [])
                report = runs[0].summary["defense_report"]["dp_distributed"]
                metrics = [r.metrics for r in runs]
                print(f"| {m} | {sigma:g} | {_fmt(report['noise_std_promised'])} "
                      f"| {_fmt(_mean([x['victim_noise_std'] for x in metrics]))} "
                      f"| {_fmt(_mean([x.get('victim_noise_ratio') for x in metrics]), '.4f')} "
                      f"| {1 / math.sqrt(m - 1):.4f} "
                      f"| {_fmt(_mean([x['fraction_recovered'] for x in metrics]), '.2f')} "
                      f"| {_fmt(_mean([x['psnr_max'] for x in metrics]), '.1f')} "
                      f"| {_fmt(_mean(honest), '.2f') if honest else 'not run'} "
                      f"| {_fmt(report['epsilon'])} | {_fmt(report['epsilon_isolated'])} "
                      f"| {statistics.median(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
