"""Attack quality against DP noise strength: iDLG's PSNR and the (epsilon, delta) of each setting.

Usage: .venv/bin/python bench/dp_strength.py [--defense dp_local] [--clip 1.0]
       [--sigmas 0 0.001 0.01 0.1 1] [--seeds 3] [--preset idlg] [--set key=value ...] [--no-baseline]
Prints a Markdown table: one row without the defense, then one per noise multiplier sigma
(sigma = 0 is clipping alone). Run folders go to a temporary directory. This is the attack side
of ``bench/privacy_utility.py`` for one DP defense (it calls its ``sweep``); that script also
measures the accuracy of an FL training under each setting.

At batch 1 under FedSGD, dp_sgd and dp_local compute the same update (one example: per-example
clipping is whole-update clipping, and the noise is divided by a batch of 1), so one sweep covers
both there; dp_distributed needs --set clients=M with M >= 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from privacy_utility import sweep

from gialab.scenario import parse_assignment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="idlg")
    parser.add_argument("--defense", default="dp_local", choices=["dp_local", "dp_sgd", "dp_distributed"])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.1, 1.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-baseline", action="store_true", help="skip the row without the defense")
    args = parser.parse_args()
    overrides = dict(parse_assignment(s) for s in args.overrides)
    print(f"preset {args.preset}, overrides: {' '.join(args.overrides) or '-'}, seeds 0..{args.seeds - 1}, "
          f"delta 1e-5, torch threads 1")
    families: dict[str, list[dict[str, Any] | None]] = {} if args.no_baseline else {"none": [None]}
    families[args.defense] = [{"name": args.defense, "clip": args.clip, "noise_multiplier": s} for s in args.sigmas]
    sweep(families, preset=args.preset, overrides=overrides, seeds=args.seeds)


if __name__ == "__main__":
    main()
