"""Batch label inference from the last layer (Yin et al. 2021; counts as in Wainakh et al. 2022), exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gialab.attacks.optimization.label_inference import batch_labels, label_counts, present_classes
from gialab.errors import GialabError
from gialab.fl import fedsgd_update
from gialab.models import build_model


def _update(model: torch.nn.Module, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    x = torch.rand((len(labels), 3, 32, 32), generator=torch.Generator().manual_seed(seed))
    return fedsgd_update(model, F.cross_entropy, x, labels)


@pytest.mark.parametrize("model_name", ["resnet18", "fcnet"])
def test_distinct_labels_are_recovered_exactly(model_name: str) -> None:
    # Yin et al.'s setting: distinct labels, ReLU features before the last layer.
    torch.manual_seed(0)
    model = build_model(model_name, (3, 32, 32), 10)
    for seed in range(3):
        labels = torch.randperm(10, generator=torch.Generator().manual_seed(seed))[:8]
        update = _update(model, labels, seed)
        assert torch.equal(batch_labels(model, update, 8, "yin"), labels.sort().values)
        assert torch.equal(batch_labels(model, update, 8), labels.sort().values)


@pytest.mark.parametrize("model_name", ["resnet18", "fcnet"])
def test_repeated_label_counts_are_exact_with_a_near_uniform_softmax(model_name: str) -> None:
    # Exact when B * |mean softmax_c - 1/K| < 1/2 for every class: true of these untrained models.
    torch.manual_seed(1)
    model = build_model(model_name, (3, 32, 32), 10)
    for seed, labels in enumerate([torch.tensor([3, 3, 3, 3, 1, 1, 7, 0]), torch.tensor([5] * 8),
                                   torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(9))]):
        update = _update(model, labels, seed)
        assert torch.equal(batch_labels(model, update, 8), labels.sort().values)
        counts = label_counts(model, update, 8)
        assert counts.sum() == 8 and torch.equal(counts, torch.bincount(labels, minlength=10))
        # A negative bias gradient proves a class present, whatever the softmax.
        assert set(present_classes(model, update).tolist()) <= set(labels.tolist())


def test_counts_keep_every_proven_class_and_the_total() -> None:
    # LeNet's DLG init gives confident logits, so counts may be off, but they still sum to B
    # and keep every class whose bias gradient is negative.
    torch.manual_seed(0)
    model = build_model("lenet", (3, 32, 32), 10)
    labels = torch.tensor([2, 2, 4, 9, 9, 9])
    update = _update(model, labels, 0)
    guess = batch_labels(model, update, 6)
    assert guess.numel() == 6
    assert set(present_classes(model, update).tolist()) <= set(guess.tolist())


def test_yin_refuses_more_samples_than_classes() -> None:
    torch.manual_seed(0)
    model = build_model("fcnet", (3, 8, 8), 3)
    update = fedsgd_update(model, F.cross_entropy, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(GialabError, match="distinct"):
        batch_labels(model, update, 4, "yin")
    assert batch_labels(model, update, 4).numel() == 4
