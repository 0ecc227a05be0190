"""A malicious client: it takes part in rounds like any client but sends an update of its choosing.

The client-side threat model (survey section 3, "malicious client") grants an attacker control
of its own update and nothing else: it receives the global model like every participant, holds
its own data, and never sees another client's update. ``MaliciousClient`` gives a crafting
function exactly that: the model it was sent, the update an honest client would have sent from
the batch it drew, all of its own data, the FL setup a client is told, and the round index.
Whatever the function returns is sent in place of the honest update; ``None`` sends the honest
update. Being on its own device, the client computes that honest update with the plain gradient
(no DP-SGD) and the protocol applies no client-side defense to what it sends (``honest`` is
False): a client that wants to poison does not add noise to its own poison.

The client records the rounds in which it sent a crafted update (``crafted_rounds``), so the
runner can ask the server's log (``RoundTranscript.accepted``) how often a robust rule let it in.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Protocol

import torch
from torch import nn

from gialab.fl.client import Client, ClientUpdate, LocalBatch
from gialab.fl.setup import FLSetup
from gialab.fl.training import GradientFn, LossFn, mean_loss_gradient


class UpdateCrafter(Protocol):
    """``(model as sent, honest update, own data, setup, round) -> tensors to send, or None``."""

    def __call__(
        self, model: nn.Module, honest: ClientUpdate, own: LocalBatch, setup: FLSetup, round_index: int
    ) -> tuple[torch.Tensor, ...] | None: ...


class MaliciousClient(Client):
    """A client whose update is whatever ``craft`` returns (its honest update when ``None``)."""

    honest: ClassVar[bool] = False

    def __init__(self, client_id: int, images: torch.Tensor, labels: torch.Tensor, craft: UpdateCrafter) -> None:
        super().__init__(client_id, images, labels)
        self.craft = craft
        self.crafted_rounds: list[int] = []

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
        received = copy.deepcopy(model)  # FedAvg trains ``model`` in place; the crafter gets it as sent
        honest, batch = super().train(
            model, loss_fn, setup, batch_size=batch_size, round_index=round_index, generator=generator, batch=batch,
        )
        tensors = self.craft(received, honest, self.local_data(), setup, round_index)
        if tensors is None:
            return honest, batch
        shapes = [tuple(t.shape) for t in honest.tensors]
        if [tuple(t.shape) for t in tensors] != shapes:
            raise ValueError(f"client {self.client_id}'s crafted update does not have the model's parameter shapes")
        self.crafted_rounds.append(round_index)
        crafted = tuple(t.detach().clone() for t in tensors)
        return ClientUpdate(self.client_id, round_index, crafted, honest.num_examples), batch
