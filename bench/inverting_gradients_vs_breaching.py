"""gialab's inverting-gradients against breaching 0.1.2's invertinggradients, same images, same budget.

Usage (about 20 minutes on a quiet 2-core machine; every process uses 1 thread, one at a time):
    ../shared/peers/breaching/setup.sh /tmp/breaching-venv
    .venv/bin/python bench/inverting_gradients_vs_breaching.py [--iters 20] [--budget 60] [--batches 1 4]
        [--pyramids 1 5] [--precisions float32 bfloat16] [--breaching-mixed-precision]

Both attack the ConvNet (width 64), 32x32, on the same CIFAR-format folder written by breaching's
make_cifar_like.py; gialab reads it with dataset=cifar10. Which images each picks differs: breaching's
case ``1_single_image_small`` takes its own validation indices, gialab its seeded client partition;
both are 32x32 crops of the same photos. gialab runs once per ``--pyramids`` entry: 1 steps in
pixels as the paper and breaching do (the like-for-like row), 5 is the preset's image pyramid;
and once per ``--precisions`` entry (bfloat16: the double backward under ``torch.autocast``).
``--breaching-mixed-precision`` adds breaching with its own autocast switch, the like-for-like row
for gialab's bfloat16.
Per batch size each side runs ``--iters`` and ``3 x --iters``
iterations: seconds per iteration is the marginal cost (the difference over the extra iterations, so
one-time costs such as torch's lazy imports on the first optimizer drop out for both), PSNR is after
``3 x --iters``. At batch 1, PSNR reached within ``--budget`` wall-clock seconds of attack time (each
side runs the iteration count its own measured speed fits into the budget, so its step schedule
completes). ``--breaching-train-mode`` takes breaching's public BatchNorm buffers away, so both sides
compute the same train-mode double backward. Prints a Markdown table. SSIM for breaching is NaN (its SSIM package is not installed).
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


def breaching(python: str, data: Path, batch: int, iters: int, seed: int, train_mode: bool,
              mixed_precision: bool = False) -> dict[str, float]:
    cmd = [python, str(PEER / "run_breaching.py"), "--data", str(data), "--attack", "invertinggradients",
           "--model", "ConvNet", "--batch", str(batch), "--iters", str(iters), "--seed", str(seed)]
    overrides = []
    if train_mode:  # no public BatchNorm buffers: the user trains, and breaching matches, in train mode
        overrides.append("case.server.provide_public_buffers=False")
    if mixed_precision:  # its objective under torch.autocast: bfloat16 on a CPU, like gialab's precision=bfloat16
        overrides.append("attack.impl.mixed_precision=True")
    for override in overrides:
        cmd += ["--override", override]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, check=True).stdout
    row = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return {"seconds": row["attack_seconds"], "psnr": row["psnr"], "ssim": float("nan")}


def gialab_run(data: Path, batch: int, iters: int, seed: int, pyramid: int, precision: str) -> dict[str, float]:
    import torch

    import gialab

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        res = gialab.run("inverting-gradients", out=Path(out) / "run", seed=seed, set={
            "dataset": "cifar10", "data_path": str(data), "batch_size": batch,
            "side_information": ["labels"] if batch > 1 else [], "attack.iterations": iters,
            "attack.pyramid": pyramid, "attack.precision": precision})
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
    ap.add_argument("--pyramids", type=int, nargs="+", default=[1, 5], help=(
        "gialab's attack.pyramid levels to run (1: the paper's per-pixel steps, like breaching; 5: the preset)"))
    ap.add_argument("--breaching-mixed-precision", action="store_true", help=(
        "add a breaching row with attack.impl.mixed_precision=True (its objective under torch.autocast)"))
    ap.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                    help="gialab's attack.precision values to run, each with every --pyramids entry")
    ap.add_argument("--breaching-train-mode", action="store_true", help=(
        "give breaching no public BatchNorm buffers, so it computes in train mode as gialab's clients do "
        "(its default: public buffers, eval mode)"))
    a = ap.parse_args()
    if not (a.data / "cifar-10-batches-py").is_dir():
        subprocess.run([sys.executable, str(PEER / "make_cifar_like.py"), str(a.data)], check=True, env=ONE_THREAD)

    runners = {
        "breaching 0.1.2": lambda batch, it: breaching(a.breaching_python, a.data, batch, it, a.seed, a.breaching_train_mode),
    }
    if a.breaching_mixed_precision:
        runners["breaching 0.1.2 (mixed precision)"] = lambda batch, it: breaching(
            a.breaching_python, a.data, batch, it, a.seed, a.breaching_train_mode, mixed_precision=True)
    for precision in a.precisions:
        for levels in a.pyramids:
            name = "gialab (pixels" if levels == 1 else f"gialab (pyramid {levels}"
            name += ")" if precision == "float32" else f", {precision})"
            runners[name] = lambda batch, it, levels=levels, precision=precision: gialab_run(
                a.data, batch, it, a.seed, levels, precision)
    rows = []
    for batch in a.batches:
        gialab_run(a.data, batch, 1, a.seed, 1, "float32")  # warm-up: gialab runs in this process, breaching in a fresh one each time
        for name, attack in runners.items():
            short, long = attack(batch, a.iters), attack(batch, 3 * a.iters)
            # The marginal cost of an iteration: one-time costs (imports, optimizer set-up, the first
            # call's allocations) cancel in the difference, for both sides alike.
            per_it = (long["seconds"] - short["seconds"]) / (2 * a.iters)
            fixed = max(0.0, short["seconds"] - a.iters * per_it)
            print(f"batch {batch}: {name} {per_it:.3f} s/it + {fixed:.1f} s once", file=sys.stderr, flush=True)
            bud_txt = "-"
            if batch == 1:
                n = max(1, int((a.budget - fixed) / per_it))
                bud = attack(batch, n)
                bud_txt = f"{bud['psnr']:.2f} ({n} it, {bud['seconds']:.0f} s)"
            rows.append(f"| {name} | {batch} | {3 * a.iters} | {per_it:.3f} | {fixed:.1f} | {long['psnr']:.2f} | "
                        f"{long['ssim']:.3f} | {bud_txt} |")
    print(f"| implementation | batch | iterations | s/iteration | one-time s | PSNR (dB) | SSIM | "
          f"PSNR within {a.budget:.0f} s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
