"""`gialab matrix` scaling: one sweep run in-process (1 worker), then on N local Ray workers.

Usage: python bench/matrix_scaling.py [--attacks A,B] [--defenses none,prune] [--seeds N]
       [--profile quick] [--set key=value ...] [--workers 2]   (needs `pip install 'gialab[ray]'`)
Prints a Markdown table: wall time, the part of it spent starting Ray, speed-up over 1 worker,
peak RSS of each worker process (ru_maxrss; for 1 worker that is the driver itself), and the
1-minute load average before and after. Both runs use fresh output folders in a temporary
directory and must store identical metrics for every cell (checked, printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from gialab.matrix import SweepSpec, build_cells, parse_defense_columns, run_matrix, split_list
from gialab.report.database import read_runs
from gialab.scenario import parse_assignment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default="fc-leakage,trap-weights,idlg")
    parser.add_argument("--defenses", default="none,prune")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--profile", default="quick", choices=["preset", "demo", "quick"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every cell")
    args = parser.parse_args()
    spec = SweepSpec(attacks=tuple(split_list([args.attacks])), defenses=parse_defense_columns([args.defenses]),
                     seeds=args.seeds, profile=args.profile,
                     overrides=dict(parse_assignment(item) for item in args.overrides))
    cells = len(build_cells(spec))
    print(f"{cells} cells ({args.attacks} x {args.defenses} x {args.seeds} seeds, profile {args.profile}, "
          f"set {args.overrides}); "
          f"{os.cpu_count()} CPUs")
    rows, metrics = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            load_before = os.getloadavg()[0]
            result = run_matrix(spec, Path(tmp) / f"w{workers}", workers=workers)
            load_after = os.getloadavg()[0]
            assert not result.failures, result.failures
            metrics.append({r["cell_key"]: r["metrics"] for r in read_runs(result.out / "results.sqlite")})
            rss = sorted(result.peak_rss_mb.values())
            rows.append((workers, result.ran, result.seconds, result.startup_s, rss, load_before, load_after))
    base = rows[0][2]
    print("\n| workers | cells run | wall s | of which Ray start s | speed-up | peak RSS per worker MB "
          "| load avg before, after |")
    print("|---|---|---|---|---|---|---|")
    for workers, ran, wall, startup, rss, before, after in rows:
        mode = "1 (in-process)" if workers == 1 else f"{workers} (local Ray)"
        print(f"| {mode} | {ran} | {wall:.1f} | {startup:.1f} | {base / wall:.2f}x | "
              f"{', '.join(f'{r:.0f}' for r in rss)} | {before:.1f}, {after:.1f} |")
    print(f"\nidentical metrics for every cell: {'yes' if metrics[0] == metrics[1] else 'NO'}")


if __name__ == "__main__":
    main()
