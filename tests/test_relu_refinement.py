"""Exact unmixing through the first ReLU layer (cocktail-party's refine=relu): the structural
check, the root verification with its label and batch weight, deflation, and the preset's goal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gialab
from gialab.attacks.analytic import relu_refinement as rr
from gialab.attacks.analytic.cocktail_party import fast_ica
from gialab.attacks.analytic.relu_refinement import ReluRefinement, relu_successor
from gialab.models import build_model

SHAPE = (3, 8, 8)


def _batch_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    loss = F.cross_entropy(model(x), y)  # a mean over the batch, as a FedSGD client computes it
    return tuple(g.detach() for g in torch.autograd.grad(loss, list(model.parameters())))


def _unmix(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    return fast_ica(rows, count, 200, 1e-4, seed)[0]


def _setup(batch: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, ReluRefinement]:
    torch.manual_seed(seed)
    model = build_model("fcnet", SHAPE, 10)
    x = torch.rand(batch, *SHAPE)
    y = torch.randint(0, 10, (batch,))
    first, successor = model.input_layer, relu_successor(model, model.input_layer, SHAPE)
    assert successor is not None
    refinement = ReluRefinement(model, first, successor, _batch_update(model, x, y), SHAPE, 10, _unmix)
    return model, x, y, refinement


def test_successor_is_the_linear_fed_by_the_first_relu() -> None:
    model = build_model("fcnet", SHAPE, 10)
    assert relu_successor(model, model.input_layer, SHAPE) is model.rest[1]
    no_relu = nn.Sequential(nn.Flatten(), nn.Linear(192, 20), nn.Linear(20, 10))
    assert relu_successor(no_relu, no_relu[1], SHAPE) is None
    other = nn.Sequential(nn.Flatten(), nn.Linear(192, 20), nn.Sigmoid(), nn.Linear(20, 10))
    assert relu_successor(other, other[1], SHAPE) is None


def test_true_inputs_verify_with_their_labels_and_batch_weight() -> None:
    _, x, y, refinement = _setup(6)
    augmented, live, successor_grad = refinement._rows()
    frame = rr._Frame.of(augmented, successor_grad, 6, live, refinement.first.detach().numpy(),
                         refinement.first_bias.detach().numpy())
    truth = np.concatenate([x.double().flatten(1).numpy(), np.ones((6, 1))], 1)
    roots = [frame.basis @ t for t in truth]  # coordinates of the true inputs (last coordinate 1)
    for root in roots:  # every true input is a root of the fixed point, to float precision
        coords, residual = frame.fixed_point(root)
        assert residual < rr.ROOT_RESIDUAL
        np.testing.assert_allclose(coords @ frame.basis, root @ frame.basis, atol=1e-6)  # float32 gradients
    inputs, labels, weights = refinement._verify(roots, frame)
    assert labels == y.tolist()  # the label is read off exactly
    np.testing.assert_allclose(weights, 1 / 6, rtol=1e-6)  # and the mean loss's weight 1/B
    # A point of the span that is not an input is rejected: it is not a root, and a root that
    # is not a sample would fail the label check.
    mixture = 0.5 * roots[0] + 0.5 * roots[1]
    assert frame.fixed_point_residual(mixture) > 1e-3
    kept, _, _ = refinement._verify([roots[0] + 0.05 * (roots[1] - roots[0])], frame)
    assert kept == []


def test_refinement_recovers_a_random_batch_exactly() -> None:
    _, x, y, refinement = _setup(12, seed=1)
    refined = refinement.run(12, seed=0, max_stages=6)
    assert refined.exact == 12
    truth = x.double().flatten(1).numpy()
    order = [int(np.argmin(((truth - r) ** 2).sum(1))) for r in refined.inputs]
    assert sorted(order) == list(range(12))
    np.testing.assert_allclose(refined.inputs, truth[order], atol=1e-6)
    assert refined.labels.tolist() == y[order].tolist()


def test_without_deflation_later_stages_find_nothing_new(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deflation is what lets each stage see fewer sources: skipping it leaves the solved samples
    # in the residual, later stages re-find them, and fewer distinct inputs come back.
    _, _, _, honest = _setup(24, seed=2)
    assert honest.run(24, seed=0, max_stages=6).exact == 24
    _, x, _, refinement = _setup(24, seed=2)
    monkeypatch.setattr(ReluRefinement, "_deflate", lambda self, *args: None)
    refined = refinement.run(24, seed=0, max_stages=6)
    truth = x.double().flatten(1).numpy()
    distinct = {int(np.argmin(((truth - r) ** 2).sum(1))) for r in refined.inputs[: refined.exact]}
    assert len(distinct) < 24


def test_preset_recovers_the_batch_of_64_and_falls_back_to_ica_under_noise(out_dir: Path) -> None:
    # Measured (seed 0, natural crops, fcnet): 64 of 64 exact in 3 stages (100 dB, labels 1.0);
    # the paper's ICA alone recovers 4 of 64.
    result = gialab.run("cocktail-party", out=out_dir, seed=0)
    assert result.reconstruction.details["exact_sources"] == 64
    assert result.metrics["fraction_recovered"] >= 0.95
    assert result.metrics["label_accuracy"] == 1.0
    # DP noise breaks the exact equalities: no root passes the checks, the ICA estimates come back.
    noisy = gialab.run("cocktail-party", out=out_dir, seed=0, batch_size=8,
                       set={"defenses": [{"name": "dp_local", "clip": 1.0, "noise_multiplier": 0.01}]})
    assert noisy.reconstruction.details["exact_sources"] == 0
    assert noisy.metrics["fraction_recovered"] < 0.5
