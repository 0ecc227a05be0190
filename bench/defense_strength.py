"""How much each compression setting weakens an honest-but-curious attack (issue 5, point 8's attack side).

Sweeps top-k and random-k ratios, QSGD levels, DLG's pruning share and sign compression against one preset and
prints one Markdown table row per setting: PSNR median and range, and the fraction of images
recovered (PSNR >= the scenario's threshold), over seeds. This is the finer compression grid of
``bench/privacy_utility.py``'s attack side (it calls its ``sweep``); that script also measures the
accuracy of an FL training under each setting.

Usage: .venv/bin/python bench/defense_strength.py [--preset fc-leakage] [--seeds 3] [--set key=value ...]
       [--only none,topk,qsgd,randomk,prune,sign]
Run folders go to a temporary directory.
"""

from __future__ import annotations

import argparse
from typing import Any

from privacy_utility import sweep

from gialab.scenario import parse_assignment

SWEEPS: dict[str, list[dict[str, Any] | None]] = {
    "none": [None],
    "topk": [{"name": "topk", "ratio": r} for r in (0.5, 0.2, 0.1, 0.05, 0.01, 0.001)],
    "qsgd": [{"name": "qsgd", "levels": s} for s in (256, 16, 4, 1)] + [{"name": "qsgd", "levels": 256, "bucket": 0}],
    "randomk": [{"name": "randomk", "ratio": r} for r in (0.5, 0.1, 0.01)],
    "prune": [{"name": "prune", "share": p} for p in (0.1, 0.2, 0.3, 0.5, 0.9)],
    "sign": [{"name": "sign", "scaled": True}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fc-leakage")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--only", default=",".join(SWEEPS), help="comma-separated sweeps to run")
    args = parser.parse_args()
    overrides = dict(parse_assignment(s) for s in args.overrides)
    shown = " ".join(args.overrides) or "-"
    print(f"preset {args.preset}, overrides {shown}, seeds 0..{args.seeds - 1}, torch threads 1")
    sweep({name: SWEEPS[name] for name in args.only.split(",")}, preset=args.preset, overrides=overrides,
          seeds=args.seeds)


if __name__ == "__main__":
    main()
