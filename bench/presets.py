"""Quality and wall time of presets over seeds: the median and spread that BENCHMARKS.md quotes.

Usage: .venv/bin/python bench/presets.py [PRESET ...] [--seeds N] [--set key=value ...]
Prints one Markdown table row per preset; run folders go to a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import gialab
from gialab.scenario import parse_assignment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=["fc-leakage", "dlg"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = dict(parse_assignment(s) for s in args.overrides)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| preset | overrides | seeds | PSNR median (dB) | PSNR min..max | fraction recovered (mean) "
          "| label accuracy | attack s (median) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for preset in args.presets:
            psnr, recovered, labels, seconds = [], [], [], []
            for seed in range(args.seeds):
                started = time.perf_counter()
                result = gialab.run(preset, out=out, set=overrides | {"seed": seed})
                seconds.append(time.perf_counter() - started)
                m = result.metrics
                psnr.append(m["psnr_mean"])
                recovered.append(m["fraction_recovered"])
                if m["label_accuracy"] is not None:
                    labels.append(m["label_accuracy"])
            label = f"{statistics.mean(labels):.2f}" if labels else "n/a"
            shown = " ".join(args.overrides) or "-"
            print(f"| {preset} | {shown} | {args.seeds} | {statistics.median(psnr):.1f} | "
                  f"{min(psnr):.1f}..{max(psnr):.1f} | {statistics.mean(recovered):.2f} | {label} | "
                  f"{statistics.median(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
