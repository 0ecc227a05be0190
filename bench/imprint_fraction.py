"""Share of a batch recovered by Robbing the Fed and trap weights, against the closed form and breaching 0.1.2.

Usage (every process on 1 thread, one at a time):
    ../shared/peers/breaching/setup.sh /tmp/breaching-venv          # only for --breaching
    .venv/bin/python bench/imprint_fraction.py [--data /tmp/cifar-like] [--batches 16 32 64 128 256 512]
        [--seeds 0] [--breaching 64 16]

For each batch size: robbing-the-fed (128 bins) with the bins placed from the public DataSpec
statistics alone (1 round) and after one calibration round on other examples of the victim
(2 rounds, examples_per_client = min(2 x batch, data)), the closed-form expected share of samples
alone in a bin, ``(1 - 1/k)^(n-1)``; trap-weights on the 6-layer FC net (1000 first-layer units);
``fraction_recovered`` counts true samples matched by a reconstruction at >= 60 dB (RtF) and >= 30
dB (trap weights, the issue's bar). ``attack_s`` is the attack's own reconstruct time
(``attack_details.attack_seconds``). Robbing the Fed's imprint goes in front of LeNet here (the
attack is model-agnostic; LeNet keeps batch 512 cheap on one core).

``--breaching B ...`` also runs breaching's imprint attack (``malicious-model-rtf``, 128 bins, and
``malicious-model-cah``) on ResNet-18 at those batch sizes. breaching reports no per-image
recovery, so its column is ``IIP-pixel`` (share of reconstructions whose nearest true image is
their own) next to gialab's ``iip_pixel``. Both read the same CIFAR-format folder (gialab via
dataset=cifar10); which images form the batch differs (each side's own seeded sampling).
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "breaching"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def gialab_run(preset: str, data: Path, seed: int, settings: dict[str, Any]) -> dict[str, float]:
    import torch

    import gialab

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        res = gialab.run(preset, out=Path(out) / "runs", seed=seed,
                         set={"dataset": "cifar10", "data_path": str(data), **settings})
        details = json.loads((res.run_dir / "metrics.json").read_text())["attack_details"]
    return {**res.metrics, **details}


def breaching_run(python: str, data: Path, server: str, batch: int, seed: int) -> dict[str, float]:
    cmd = [python, str(PEER / "run_breaching.py"), "--data", str(data), "--attack", "imprint", "--model", "ResNet18",
           "--batch", str(batch), "--override", f"case/server={server}", "--override", "case.data.partition=random",
           "--override", "case.data.default_clients=1", "--seed", str(seed)]
    if server.endswith("rtf"):
        cmd += ["--override", "case.server.model_modification.num_bins=128"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def dataset_size(data: Path) -> int:
    from gialab.data import load_dataset

    return len(load_dataset("cifar10", path=data, seed=0).labels)


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/cifar-like"))
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--breaching", type=int, nargs="*", default=[], help="batch sizes to run breaching at")
    ap.add_argument("--breaching-python", default="/tmp/breaching-venv/bin/python")
    a = ap.parse_args()
    size = dataset_size(a.data)

    print(f"seeds {a.seeds} (medians shown); data {a.data} ({size} images)\n")
    print("| batch | expected (k=128) | RtF 1 round | RtF 2 rounds | RtF psnr_median | RtF iip_pixel | RtF attack_s "
          "| trap fraction (>=30 dB) | trap psnr_median | trap attack_s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in a.batches:
        one = [gialab_run("robbing-the-fed", a.data, s, {"batch_size": batch, "examples_per_client": batch,
                                                         "fl.rounds": 1, "model": "lenet"}) for s in a.seeds]
        two = [gialab_run("robbing-the-fed", a.data, s, {"batch_size": batch, "examples_per_client": min(2 * batch, size),
                                                         "fl.rounds": 2, "model": "lenet"}) for s in a.seeds]
        trap = [gialab_run("trap-weights", a.data, s, {"batch_size": batch}) for s in a.seeds]
        print(f"| {batch} | {one[0]['expected_fraction']:.3f} | {median(one, 'fraction_recovered'):.3f} "
              f"| {median(two, 'fraction_recovered'):.3f} | {median(two, 'psnr_median'):.1f} "
              f"| {median(two, 'iip_pixel'):.3f} | {median(two, 'attack_seconds'):.3f} "
              f"| {median(trap, 'fraction_recovered'):.3f} | {median(trap, 'psnr_median'):.1f} "
              f"| {median(trap, 'attack_seconds'):.3f} |", flush=True)

    if a.breaching:
        print("\n| batch | breaching RtF IIP-pixel | breaching RtF psnr | breaching RtF attack_s "
              "| breaching CAH IIP-pixel | breaching CAH psnr | breaching CAH attack_s |")
        print("|---|---|---|---|---|---|---|")
        for batch in a.breaching:
            rtf = breaching_run(a.breaching_python, a.data, "malicious-model-rtf", batch, a.seeds[0])
            cah = breaching_run(a.breaching_python, a.data, "malicious-model-cah", batch, a.seeds[0])
            print(f"| {batch} | {rtf['IIP-pixel']:.3f} | {rtf['psnr']:.1f} | {rtf['attack_seconds']:.2f} "
                  f"| {cah['IIP-pixel']:.3f} | {cah['psnr']:.1f} | {cah['attack_seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
