"""Decepticons: token accuracy against the number of sequences, and the attack's wall time.

Usage (1 thread; transformer3 about 2 minutes, gpt2-small about 10 minutes on CPU):
    PYTHONPATH=src .venv/bin/python bench/decepticons_tokens.py --model transformer3 --length 32 \
        --batches 1 2 4 8 16 32 64 --seeds 0 1 2 3 4
    PYTHONPATH=src .venv/bin/python bench/decepticons_tokens.py --model gpt2-small --length 128 \
        --batches 1 2 4 8 --seeds 0 1 2 3 4

Each cell is one ``gialab.run("decepticons", ...)`` (FedSGD, one client, the server's corrupted
model, the target's own gradient). ``gpt2-small`` is GPT-2 small's shape (12 layers, width 768,
12 heads) with the BERT WordPiece vocabulary, randomly initialized from a config: no download.
Prints a Markdown table: token accuracy (median, min and max over seeds), the share of token
slots filled by imprint read-outs (the rest come from the output head's gradient or a guess),
and the median wall time of ``Attack.reconstruct`` alone and of the whole run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import gialab


def one(model: str, length: int, batch: int, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = gialab.run("decepticons", out=Path(out), seed=seed, model=model, sequence_length=length,
                            batch_size=batch)
        total = time.perf_counter() - started
        written = json.loads((result.run_dir / "metrics.json").read_text())
    return {"token_accuracy": result.metrics["token_accuracy"],
            "filled": result.reconstruction.details["slots_filled_by_imprint"],
            "attack_s": written["attack_details"]["attack_seconds"], "run_s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="transformer3", choices=["transformer3", "gpt2-small"])
    ap.add_argument("--length", type=int, default=32, help="tokens per sequence")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"decepticons on {a.model}, sequences of {a.length} tokens, seeds {a.seeds}\n")
    print("| sequences | tokens | token accuracy, median (min-max) | filled by imprint | attack s | run s |")
    print("|---:|---:|---|---:|---:|---:|")
    for batch in a.batches:
        rows = [one(a.model, a.length, batch, seed) for seed in a.seeds]
        acc = [r["token_accuracy"] for r in rows]
        med = {k: statistics.median(r[k] for r in rows) for k in ("filled", "attack_s", "run_s")}
        print(f"| {batch} | {batch * a.length} | {statistics.median(acc):.3f} ({min(acc):.3f}-{max(acc):.3f}) "
              f"| {med['filled']:.3f} | {med['attack_s']:.2f} | {med['run_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
