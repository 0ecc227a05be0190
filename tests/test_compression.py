"""Compression defenses keep exactly what their papers say, repeat with the seed, and weaken fc-leakage."""

from __future__ import annotations

import pytest
import torch

import gialab
from gialab.defenses import build_defense
from gialab.defenses.quantization import qsgd_quantize
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate


def _update(*tensors: torch.Tensor) -> ClientUpdate:
    return ClientUpdate(client_id=0, round=0, tensors=tuple(tensors), num_examples=1)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_topk_keeps_exactly_the_k_largest_magnitudes_of_each_tensor() -> None:
    weight = torch.randn(20, 30, generator=_seeded(0))
    bias = torch.tensor([0.5, -3.0, 0.1, 2.0])
    out = build_defense("topk", {"ratio": 0.1})(_update(weight, bias), _seeded(1))
    w, b = out.tensors
    largest = set(weight.abs().reshape(-1).argsort(descending=True)[:60].tolist())
    assert set(w.reshape(-1).nonzero().squeeze(1).tolist()) == largest
    assert torch.equal(w.reshape(-1)[list(largest)], weight.reshape(-1)[list(largest)])
    assert b.tolist() == [0.0, -3.0, 0.0, 0.0]  # ceil(0.1 * 4) = 1 entry: the largest magnitude


def test_global_topk_lets_the_larger_tensor_take_the_whole_budget() -> None:
    big, small = torch.full((10,), 5.0), torch.full((10,), 0.1)
    big[0] = 6.0
    out = build_defense("topk", {"ratio": 0.25, "scope": "global"})(_update(big, small), _seeded(0))
    assert int((out.tensors[0] != 0).sum()) == 5 and int((out.tensors[1] != 0).sum()) == 0
    assert out.tensors[0][0] == 6.0


def test_randomk_keeps_k_seeded_entries_rescaled_to_stay_unbiased() -> None:
    x = torch.arange(1.0, 101.0)
    randomk = build_defense("randomk", {"ratio": 0.2})
    a = randomk(_update(x), _seeded(7)).tensors[0]
    kept = a.nonzero().squeeze(1)
    assert kept.numel() == 20 and torch.allclose(a[kept], x[kept] * 5.0)
    assert torch.equal(a, randomk(_update(x), _seeded(7)).tensors[0])
    assert not torch.equal(a, randomk(_update(x), _seeded(8)).tensors[0])
    g = _seeded(3)
    mean = torch.stack([randomk(_update(x), g).tensors[0] for _ in range(2000)]).mean(0)
    assert (mean - x).abs().max() < 0.2 * x.max()  # per-entry sd of the mean is about 0.09 * x
    assert abs(float(mean.sum() / x.sum()) - 1.0) < 0.02
    plain = build_defense("randomk", {"ratio": 0.2, "rescale": False})(_update(x), _seeded(7)).tensors[0]
    assert torch.equal(plain, torch.where(a != 0, x, 0.0))


def test_sign_keeps_signs_and_scales_by_the_mean_magnitude() -> None:
    x = torch.tensor([[-2.0, 0.0, 1.0], [4.0, -1.0, 0.5]])
    scaled = build_defense("sign", {})(_update(x), _seeded(0)).tensors[0]
    assert torch.equal(torch.sign(scaled), torch.sign(x))
    assert torch.allclose(scaled.abs()[x != 0], torch.full((5,), 8.5 / 6))
    bare = build_defense("sign", {"scaled": False})(_update(x), _seeded(0)).tensors[0]
    assert torch.equal(bare, torch.sign(x))


def test_qsgd_is_unbiased_and_lands_on_its_level_grid() -> None:
    x = torch.tensor([0.3, -1.2, 0.05, 2.0, -0.7, 0.0])
    levels, norm = 3, x.norm()
    g = _seeded(11)
    draws = torch.stack([qsgd_quantize(x, levels, g) for _ in range(6000)])
    grid = draws / norm * levels
    assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.abs().max() <= levels + 1e-4
    assert (draws * torch.sign(x) >= 0).all()  # a draw is zero or has its entry's sign
    assert (draws[:, x == 0] == 0).all()
    assert (draws.mean(0) - x).abs().max() < 0.03  # sd of the mean <= (||x||/s)/2/sqrt(6000) ~ 0.005
    # each entry uses only its two neighbouring levels
    assert ((grid - (x.abs() / norm * levels * torch.sign(x))).abs() < 1 + 1e-4).all()


def test_qsgd_buckets_have_their_own_norms_and_stay_unbiased() -> None:
    x = torch.tensor([3.0, -4.0, 0.01, 0.02, 100.0])  # buckets of 2: [3, -4], [0.01, 0.02], [100]
    g = _seeded(4)
    draws = torch.stack([qsgd_quantize(x, 2, g, bucket=2) for _ in range(4000)])
    for part, scale in ((slice(0, 2), 5.0), (slice(2, 4), float(x[2:4].norm())), (slice(4, 5), 100.0)):
        grid = draws[:, part] / scale * 2
        assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.abs().max() <= 2 + 1e-4
    assert torch.equal(draws[:, 4], torch.full((4000,), 100.0))  # alone in its bucket: exact
    assert ((draws.mean(0) - x).abs() / x.abs() < 0.05).all()  # the small bucket is not drowned by 100


def test_qsgd_repeats_with_the_seed() -> None:
    x = torch.randn(50, generator=_seeded(0))
    qsgd = build_defense("qsgd", {"levels": 2, "bucket": 16})
    assert torch.equal(qsgd(_update(x), _seeded(5)).tensors[0], qsgd(_update(x), _seeded(5)).tensors[0])
    assert not torch.equal(qsgd(_update(x), _seeded(5)).tensors[0], qsgd(_update(x), _seeded(6)).tensors[0])
    assert torch.equal(qsgd(_update(torch.zeros(4)), _seeded(0)).tensors[0], torch.zeros(4))


def test_prune_zeroes_exactly_the_smallest_share() -> None:
    x = torch.randn(1000, generator=_seeded(2))
    out = build_defense("prune", {"share": 0.9})(_update(x, torch.tensor([1.0, -2.0, 3.0])), _seeded(0))
    pruned, small = out.tensors
    assert int((pruned == 0).sum()) == 900
    assert pruned.abs().max() == x.abs().max() and pruned[pruned != 0].abs().min() == x.abs().sort().values[900]
    assert small.tolist() == [0.0, 0.0, 3.0]  # floor(0.9 * 3) = 2 entries zeroed, the smallest
    assert torch.equal(build_defense("prune", {"share": 0.0})(_update(x), _seeded(0)).tensors[0], x)


@pytest.mark.parametrize(("name", "parameters", "message"), [
    ("topk", {"ratio": 0.0}, "defense topk.ratio"),
    ("topk", {"ratio": 1.5}, "defense topk.ratio"),
    ("topk", {"scope": "layer"}, "defense topk.scope"),
    ("qsgd", {"levels": 0}, "defense qsgd.levels"),
    ("prune", {"share": 1.0}, "defense prune.share"),
])
def test_bad_compression_parameters_are_one_line_errors(name: str, parameters: dict, message: str) -> None:
    with pytest.raises(GialabError, match=message) as info:
        build_defense(name, parameters)
    assert "\n" not in str(info.value)


def test_topk_with_a_robust_rule_ruins_fc_leakage(out_dir) -> None:
    clear = gialab.run("fc-leakage", out=out_dir, set={"clients": 3})
    defended = gialab.run("fc-leakage", out=out_dir, set={
        "clients": 3, "defenses": [{"name": "topk", "ratio": 0.01}, {"name": "trimmed_mean", "byzantine": 1}]})
    assert defended.summary["defenses"] == [{"name": "topk", "ratio": 0.01}, {"name": "trimmed_mean", "byzantine": 1}]
    assert clear.summary["metrics"]["psnr_mean"] > 60
    assert defended.summary["metrics"]["psnr_mean"] < 20
    assert defended.summary["metrics"]["fraction_recovered"] == 0.0
