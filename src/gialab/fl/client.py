"""An honest client: it holds private data and answers the model it is sent with an update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from gialab.errors import GialabError
from gialab.fl.setup import FLSetup
from gialab.fl.training import GradientFn, LossFn, fedavg_update, fedsgd_update, mean_loss_gradient


def parameter_index(model: nn.Module, parameter: torch.nn.Parameter) -> int:
    """Where ``parameter``'s tensor sits in an update (updates align with ``model.parameters()``)."""
    for i, p in enumerate(model.parameters()):
        if p is parameter:
            return i
    raise ValueError("the parameter does not belong to this model")


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends: tensors aligned with the model's parameters, and its example count."""

    client_id: int
    round: int
    tensors: tuple[torch.Tensor, ...]
    num_examples: int


@dataclass(frozen=True)
class LocalBatch:
    """The private examples a client trained on in one round (ground truth; never leaves fl/)."""

    images: torch.Tensor
    labels: torch.Tensor


class Client:
    """Holds ``images`` and ``labels`` privately; uses ``batch_size`` of them each round.

    Under FedSGD the batch is one gradient step; under FedAvg it is the client's local data for
    the round, visited for E epochs in local mini-batches.
    """

    honest: ClassVar[bool] = True  # a malicious client (``fl.malicious``) says False

    def __init__(self, client_id: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.client_id = client_id
        self._images = images
        self._labels = labels

    @property
    def num_examples(self) -> int:
        return int(self._labels.shape[0])

    def local_data(self) -> LocalBatch:
        """All the examples this client holds (its own to use: a malicious client trains on them)."""
        return LocalBatch(self._images, self._labels)

    def draw_batch(self, batch_size: int, generator: torch.Generator) -> LocalBatch:
        """The round's examples; ``train`` draws them itself unless given a batch drawn earlier."""
        if batch_size > self.num_examples:
            raise GialabError(
                f"batch_size {batch_size} is larger than client {self.client_id}'s data "
                f"({self.num_examples} examples); use batch_size <= {self.num_examples}"
            )
        if batch_size == self.num_examples:
            idx = torch.arange(self.num_examples)
        else:
            idx = torch.randperm(self.num_examples, generator=generator)[:batch_size]
        return LocalBatch(self._images[idx], self._labels[idx])

    def train(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        setup: FLSetup,
        *,
        batch_size: int,
        round_index: int,
        generator: torch.Generator,
        gradient: GradientFn = mean_loss_gradient,
        batch: LocalBatch | None = None,
    ) -> tuple[ClientUpdate, LocalBatch]:
        """One round's update; ``gradient`` computes each step (a defense such as DP-SGD may supply it).

        ``batch``: the examples to train on, when the client drew them before training (to audit
        the received model on them, ``defenses.base.ModelAudit``); by default drawn here.
        """
        batch = batch if batch is not None else self.draw_batch(batch_size, generator)
        if setup.algorithm == "fedsgd":
            tensors = fedsgd_update(model, loss_fn, batch.images, batch.labels, gradient=gradient, generator=generator)
        else:
            tensors = fedavg_update(
                model, loss_fn, batch.images, batch.labels, setup, gradient=gradient, generator=generator)
        update = ClientUpdate(self.client_id, round_index, tensors, len(batch.labels))
        return update, batch
