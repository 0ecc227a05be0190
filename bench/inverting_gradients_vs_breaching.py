"""gialab's inverting-gradients against breaching 0.1.2's invertinggradients, same images, same budget.

Usage (about 10 minutes on a quiet 2-core machine; every process uses 1 thread, one at a time):
    ../shared/peers/breaching/setup.sh /tmp/breaching-venv
    .venv/bin/python bench/inverting_gradients_vs_breaching.py [--iters 20] [--budget 60] [--batches 1 4]

Both attack the ConvNet (width 64), 32x32, on the same CIFAR-format folder written by breaching's
make_cifar_like.py; gialab reads it with dataset=cifar10. Which images each picks differs: breaching's
case ``1_single_image_small`` takes its own validation indices, gialab its seeded client partition;
both are 32x32 crops of the same photos. Per batch size: seconds per iteration and final PSNR after
``--iters`` iterations, then PSNR reached within ``--budget`` wall-clock seconds of attack time (each
side runs the iteration count its own measured speed fits into the budget, so its step schedule
completes). Prints a Markdown table. SSIM for breaching is NaN (its SSIM package is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "breaching"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def breaching(python: str, data: Path, batch: int, iters: int, seed: int) -> dict[str, float]:
    cmd = [python, str(PEER / "run_breaching.py"), "--data", str(data), "--attack", "invertinggradients",
           "--model", "ConvNet", "--batch", str(batch), "--iters", str(iters), "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, check=True).stdout
    row = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return {"seconds": row["attack_seconds"], "psnr": row["psnr"], "ssim": float("nan")}


def gialab_run(data: Path, batch: int, iters: int, seed: int) -> dict[str, float]:
    import torch

    import gialab

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        res = gialab.run("inverting-gradients", out=Path(out) / "run", seed=seed, set={
            "dataset": "cifar10", "data_path": str(data), "batch_size": batch,
            "side_information": ["labels"] if batch > 1 else [], "attack.iterations": iters})
    return {"seconds": res.reconstruction.details["seconds"], "psnr": res.metrics["psnr_mean"],
            "ssim": res.metrics["ssim_mean"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/cifar-like"))
    ap.add_argument("--breaching-python", default="/tmp/breaching-venv/bin/python")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not (a.data / "cifar-10-batches-py").is_dir():
        subprocess.run([sys.executable, str(PEER / "make_cifar_like.py"), str(a.data)], check=True, env=ONE_THREAD)

    rows = []
    for batch in a.batches:
        b = breaching(a.breaching_python, a.data, batch, a.iters, a.seed)
        g = gialab_run(a.data, batch, a.iters, a.seed)
        bs, gs = b["seconds"] / a.iters, g["seconds"] / a.iters
        print(f"batch {batch}: breaching {bs:.3f} s/it, gialab {gs:.3f} s/it", file=sys.stderr, flush=True)
        budget = {}
        if batch == 1:
            b_it, g_it = max(1, int(a.budget / bs)), max(1, int(a.budget / gs))
            budget = {"breaching": (b_it, breaching(a.breaching_python, a.data, batch, b_it, a.seed)),
                      "gialab": (g_it, gialab_run(a.data, batch, g_it, a.seed))}
        for name, r, per_it in (("breaching 0.1.2", b, bs), ("gialab", g, gs)):
            key = "breaching" if name.startswith("breaching") else "gialab"
            bud = budget.get(key)
            bud_txt = f"{bud[1]['psnr']:.2f} ({bud[0]} it, {bud[1]['seconds']:.0f} s)" if bud else "-"
            rows.append(f"| {name} | {batch} | {a.iters} | {per_it:.3f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {bud_txt} |")
    print(f"| implementation | batch | iterations | s/iteration | PSNR (dB) | SSIM | PSNR within {a.budget:.0f} s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
