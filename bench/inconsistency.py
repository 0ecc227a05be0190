"""Model inconsistency against secure aggregation: is the secure sum the victim's update, and does
the victim's batch come back as well as without secure aggregation?

Usage: PYTHONPATH=src .venv/bin/python bench/inconsistency.py [--clients 10 100] [--seeds 3] [--set key=value ...]

Runs the ``inconsistency`` preset (Robbing the Fed's imprint model for the victim, a dead imprint
ReLU layer for everyone else, secure aggregation, batch 4 per client) at each client count, in
three views per seed:

* ``no secure aggregation``: the inner attack alone (``robbing-the-fed``, same bins) on the
  victim's own update, which a server sees when updates are not hidden (the reference);
* ``secure aggregation, consistent``: ``attack.silence=false``, every client gets the imprint model
  and the secure sum mixes every batch (what Robbing the Fed does against secure aggregation alone);
* ``secure aggregation, inconsistent``: the attack.

Columns: ``victim_update_cosine`` (the aggregate against the victim's true update, on the
parameters the attack claims; ``all``: every parameter, the last layer's residual included), PSNR
and ``fraction_recovered`` of the victim's batch (PSNR >= 60 dB), wall time of the whole run
(secure aggregation's cost grows as n^2). Medians over seeds; recovered fractions are means.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

import gialab
from gialab.scenario import load_scenario, parse_assignment


def _views(clients: int, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    preset = load_scenario("inconsistency", overrides | {"clients": clients})
    attack = preset.attack.hyperparameters
    alone = preset.model_dump(mode="json", exclude_none=True) | {
        "name": "robbing-the-fed-alone", "defenses": [],
        "attack": {"name": attack.get("inner", "robbing-the-fed"), **attack.get("inner_params", {})},
    }
    return {
        "no secure aggregation (inner attack alone, victim's own update)": alone,
        "secure aggregation, consistent (attack.silence=false)":
            preset.model_dump(mode="json", exclude_none=True) | {"attack": preset.attack.model_dump() | {"silence": False}},
        "secure aggregation, inconsistent": preset.model_dump(mode="json", exclude_none=True),
    }


def _fmt(values: list[float | None], digits: int) -> str:
    present = [v for v in values if v is not None]
    return f"{statistics.median(present):.{digits}f}" if present else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = dict(parse_assignment(s) for s in args.overrides)
    torch.set_num_threads(1)
    print(f"torch threads: {torch.get_num_threads()}; seeds 0..{args.seeds - 1}")
    print("| clients | view | victim_update_cosine (claimed) | cosine (all parameters) | PSNR mean (dB) "
          "| fraction recovered | run s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as out:
        for clients in args.clients:
            for view, scenario in _views(clients, overrides).items():
                cosine, cosine_all, psnr, recovered, seconds = [], [], [], [], []
                for seed in range(args.seeds):
                    started = time.perf_counter()
                    m = gialab.run(scenario, out=out, seed=seed).metrics
                    seconds.append(time.perf_counter() - started)
                    cosine.append(m.get("victim_update_cosine"))
                    cosine_all.append(m.get("victim_update_cosine_all"))
                    psnr.append(m["psnr_mean"])
                    recovered.append(m["fraction_recovered"])
                print(f"| {clients} | {view} | {_fmt(cosine, 6)} | {_fmt(cosine_all, 3)} | {_fmt(psnr, 1)} | "
                      f"{statistics.mean(recovered):.2f} | {_fmt(seconds, 1)} |", flush=True)


if __name__ == "__main__":
    main()
