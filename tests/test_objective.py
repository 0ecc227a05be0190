"""The shared gradient-matching objective: hand-computed values and the invariances it promises."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from gialab.attacks.optimization.objective import (
    Regularizers,
    clip_penalty,
    gradient_distance,
    l2_prior,
    regularized,
    total_variation,
)


def _grads() -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    observed = (torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 2.0]]))
    dummy = (torch.tensor([0.0, 1.0]), torch.tensor([[0.0, 1.0]]))
    return observed, dummy


def test_l2_is_sum_of_squared_differences() -> None:
    observed, dummy = _grads()
    # (0-1)^2 + (1-0)^2 + 0 + (1-2)^2 = 3
    assert gradient_distance(observed, dummy, "l2").item() == pytest.approx(3.0)
    assert gradient_distance(observed, dummy).item() == pytest.approx(3.0)  # l2 is the default


def test_cosine_on_hand_computed_case() -> None:
    observed, dummy = _grads()
    # <d, o> = 0 + 0 + 0 + 2 = 2; |d| = sqrt(2); |o| = sqrt(5)
    expected = 1 - 2 / (math.sqrt(2) * math.sqrt(5))
    assert gradient_distance(observed, dummy, "cosine").item() == pytest.approx(expected, rel=1e-6)


def test_cosine_of_identical_gradients_is_zero_and_opposite_is_two() -> None:
    g = tuple(torch.randn(s) for s in [(3, 4), (4,), (2, 2, 3)])
    assert gradient_distance(g, g, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_distance(g, tuple(-t for t in g), "cosine").item() == pytest.approx(2.0, abs=1e-6)


def test_cosine_is_scale_invariant_l2_is_not() -> None:
    gen = torch.Generator().manual_seed(0)
    observed = tuple(torch.randn(s, generator=gen) for s in [(5, 3), (7,)])
    dummy = tuple(torch.randn(s, generator=gen) for s in [(5, 3), (7,)])
    base = gradient_distance(observed, dummy, "cosine").item()
    scaled = gradient_distance(observed, tuple(7.5 * d for d in dummy), "cosine").item()
    assert scaled == pytest.approx(base, rel=1e-5)
    assert gradient_distance(tuple(0.01 * o for o in observed), dummy, "cosine").item() == pytest.approx(base, rel=1e-5)
    assert gradient_distance(observed, tuple(2 * d for d in dummy), "l2").item() != pytest.approx(
        gradient_distance(observed, dummy, "l2").item())


def test_distance_refuses_misaligned_or_unknown() -> None:
    observed, dummy = _grads()
    with pytest.raises(ValueError):
        gradient_distance(observed, dummy[:1])
    with pytest.raises(ValueError):
        gradient_distance(observed, dummy, "l1")  # type: ignore[arg-type]


def test_total_variation() -> None:
    assert total_variation(torch.full((2, 3, 8, 8), 0.7)).item() == 0.0
    x = torch.zeros(1, 1, 2, 2)
    x[..., 0, 0] = 1.0
    # horizontal diffs |0-1|, |0-0| -> mean 0.5; vertical diffs |0-1|, |0-0| -> mean 0.5
    assert total_variation(x).item() == pytest.approx(1.0)
    stripes = torch.tensor([[0.0, 1.0, 0.0, 1.0]]).expand(4, 4).reshape(1, 1, 4, 4)
    assert total_variation(stripes).item() == pytest.approx(1.0)  # horizontal only


def test_l2_prior_and_clip_penalty() -> None:
    assert l2_prior(torch.tensor([1.0, 3.0])).item() == pytest.approx(5.0)
    inside = torch.rand(2, 3, 4, 4)
    assert clip_penalty(inside).item() == 0.0
    # excesses 0.5 (above 1) and 2 (below 0), two zeros: (0.25 + 4) / 4
    assert clip_penalty(torch.tensor([1.5, -2.0, 0.3, 1.0])).item() == pytest.approx(4.25 / 4)
    assert clip_penalty(torch.tensor([0.5]), low=0.6, high=1.0).item() == pytest.approx(0.01)


def test_regularized_adds_the_weighted_terms() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    d = torch.tensor(0.25)
    assert regularized(d, x, Regularizers()).item() == pytest.approx(0.25)
    reg = Regularizers(tv=0.1, l2=0.01, clip=2.0)
    expected = 0.25 + 0.1 * total_variation(x) + 0.01 * l2_prior(x) + 2.0 * clip_penalty(x)
    assert regularized(d, x, reg).item() == pytest.approx(expected.item(), rel=1e-6)


def test_regularizers_are_validated() -> None:
    with pytest.raises(ValidationError):
        Regularizers(tvv=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Regularizers(tv=-1.0)


def test_objective_works_under_vmap() -> None:
    xs = torch.rand(3, 2, 1, 5, 5)
    batched = torch.func.vmap(total_variation)(xs)
    assert torch.allclose(batched, torch.stack([total_variation(x) for x in xs]))
    obs = (torch.randn(4), torch.randn(2, 2))
    dummies = (torch.randn(3, 4), torch.randn(3, 2, 2))
    out = torch.func.vmap(lambda a, b: gradient_distance(obs, (a, b), "cosine"))(*dummies)
    expected = torch.stack([gradient_distance(obs, (dummies[0][i], dummies[1][i]), "cosine") for i in range(3)])
    assert torch.allclose(out, expected, atol=1e-6)
