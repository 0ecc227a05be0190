"""Fishing (Wen et al. 2022): how well the multi-query search isolates one sample, vs aggregate size.

For each aggregate size (8 clients, each sending the gradient of its whole local batch) and seed,
run the ``fishing`` preset through ``gialab.run`` and measure on the truth side (the attack never
sees it):

* ``isolation_cosine``: cosine of the isolated gradient to the target's own gradient (its loss term,
  label ``target_class``, within its client's batch) through the model the attack inverts against
  (``Fishing.inversion_problem``). The target is the one sample whose fished feature lies between
  the reported cut-offs (class fishing: the class's only sample).
* ``cosine_alone``: the same against the target's gradient computed alone (batch of one); it differs
  from ``isolation_cosine`` only for BatchNorm models, whose per-sample gradient depends on the batch.
* ``other_best_cosine``: the largest such cosine for any *other* sample of the aggregate: what a
  search that isolated the wrong sample would score (the gradients of one fished model are alike).
* ``target_psnr``: PSNR of the inverted image against the target (not against the best match).

    PYTHONPATH=src python bench/fishing_isolation.py --sizes 16 64 256 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gialab
from gialab.attacks.sparsification.fishing import Fishing
from gialab.metrics.image import psnr
from gialab.threats import Observation


def own_gradient(model: nn.Module, batch: Tensor, index: int, label: int) -> tuple[Tensor, ...]:
    model = model.train()
    loss = F.cross_entropy(model(batch)[index : index + 1], torch.tensor([label]), reduction="sum")
    return torch.autograd.grad(loss, list(model.parameters()))


def cosine(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    x = torch.cat([t.reshape(-1) for t in a]).double()
    y = torch.cat([t.reshape(-1) for t in b]).double()
    return float(x @ y / (x.norm() * y.norm()))


def one_run(size: int, seed: int, model_name: str, iterations: int, rounds: int, out: str) -> dict[str, float]:
    captured: list[Fishing] = []
    reconstruct = Fishing.reconstruct

    def spy(self: Fishing, observation: Observation):  # type: ignore[no-untyped-def]
        captured.append(self)
        return reconstruct(self, observation)

    Fishing.reconstruct = spy  # type: ignore[method-assign]
    per_client = size // 8
    started = time.perf_counter()
    try:
        result = gialab.run("fishing", out=out, seed=seed, model=model_name, batch_size=per_client,
                            examples_per_client=per_client, clients=8, fl__rounds=rounds,
                            attack__iterations=iterations)
    finally:
        Fishing.reconstruct = reconstruct  # type: ignore[method-assign]
    wall = time.perf_counter() - started
    attack = captured[-1]
    iso = attack.isolation
    assert iso is not None and attack._layer is not None
    model, gradient = attack.inversion_problem(iso)
    truth = result.truth_images
    layer = dict(model.named_modules())[attack._layer]
    feats: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.no_grad():
        for s in range(0, len(truth), per_client):
            model.train()(truth[s : s + per_client])
    handle.remove()
    z = torch.cat(feats)
    if iso.route == "feature":
        assert iso.cutoffs is not None and iso.feature is not None
        inside = ((z[:, iso.feature] > iso.cutoffs[0]) & (z[:, iso.feature] < iso.cutoffs[1])).nonzero().flatten()
        target = int(inside[0]) if len(inside) == 1 else -1
    else:
        target = int((z + gradient[-2][iso.target_class]).norm(dim=1).argmin())
    row: dict[str, float] = {"size": size, "seed": seed, "route": float(iso.route == "feature"),
                             "queries": attack._queries, "wall_s": wall,
                             "attack_s": json.loads((result.run_dir / "metrics.json").read_text())["attack_details"]["attack_seconds"],
                             "psnr_best_match": result.metrics["psnr_mean"]}
    if target < 0:
        return row | {"isolation_cosine": float("nan"), "other_best_cosine": float("nan"),
                      "cosine_alone": float("nan"), "target_psnr": float("nan")}
    s = target // per_client * per_client
    row["isolation_cosine"] = cosine(gradient, own_gradient(model, truth[s : s + per_client], target - s, iso.target_class))
    row["other_best_cosine"] = max(
        cosine(gradient, own_gradient(model, truth[j // per_client * per_client : (j // per_client + 1) * per_client],
                                      j % per_client, iso.target_class))
        for j in range(len(truth)) if j != target)
    row["cosine_alone"] = cosine(gradient, own_gradient(model, truth[target : target + 1], 0, iso.target_class))
    row["target_psnr"] = float(psnr(result.reconstruction.images[:1], truth[target : target + 1]))
    return row


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--model", default="cnn6")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=14)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for size in args.sizes:
            for seed in args.seeds:
                row = one_run(size, seed, args.model, args.iterations, args.rounds, out)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n| aggregate | model | isolation_cosine (median, min) | best other sample (max) | cosine alone (median) | target PSNR dB (median) "
          f"| best-match PSNR dB (median) | queries (median) | wall s (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        rs = [r for r in rows if r["size"] == size]

        def med(k: str) -> float:
            return statistics.median(r[k] for r in rs)

        print(f"| {size} | {args.model} | {med('isolation_cosine'):.6f}, {min(r['isolation_cosine'] for r in rs):.6f} "
              f"| {max(r['other_best_cosine'] for r in rs):.6f} | {med('cosine_alone'):.4f} | {med('target_psnr'):.1f} | {med('psnr_best_match'):.1f} "
              f"| {med('queries'):.0f} | {med('wall_s'):.1f} |")


if __name__ == "__main__":
    main()
