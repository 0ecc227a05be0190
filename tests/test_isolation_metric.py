"""isolation_cosine: the truth-side check of a gradient an isolation attack claims is one sample's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gialab.attacks.base import IsolatedGradient
from gialab.metrics.isolation import isolation_scores


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))


def _own(model: nn.Module, x: torch.Tensor, label: int) -> tuple[torch.Tensor, ...]:
    loss = F.cross_entropy(model(x.unsqueeze(0)), torch.tensor([label]))
    return torch.autograd.grad(loss, list(model.parameters()))


def test_a_sample_s_own_gradient_scores_one_at_its_index() -> None:
    model, images = _model(), torch.rand(4, 1, 3, 4)
    scores = isolation_scores(IsolatedGradient(_own(model, images[2], 1), model, 1), images)
    assert abs(scores["isolation_cosine"] - 1) < 1e-9
    assert scores["isolation_index"] == 2
    assert scores["isolation_margin"] is not None and scores["isolation_margin"] > 1e-3


def test_a_mixture_of_two_samples_is_not_isolated() -> None:
    model, images = _model(), torch.rand(4, 1, 3, 4)
    mixed = tuple(a + b for a, b in zip(_own(model, images[0], 1), _own(model, images[3], 1)))
    scores = isolation_scores(IsolatedGradient(mixed, model, 1), images)
    assert scores["isolation_cosine"] < 0.999
