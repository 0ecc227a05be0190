"""A global model that federated learning has already trained for a while, made quickly.

Some attacks only work on a trained model: CGI (Wei et al. 2023) makes one class's examples the
loud ones in the aggregate by making the global model get that class wrong, which singles the
class out only if the model gets the other classes right. Running the hundreds of honest FL
rounds that would take is slow on a CPU, so ``pretrain`` stands in for them: a few hundred
steps of Adam on random mini-batches of the scenario's dataset (the clients' data is drawn
from it, as FL would have trained on it). Seeded, so the same scenario gives the same model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pretrain(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int, seed: int,
    batch_size: int = 64, lr: float = 3e-3,
) -> None:
    """Train ``model`` in place for ``steps`` Adam steps on mini-batches drawn from ``images``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(labels), (min(batch_size, len(labels)),), generator=generator)
        loss = F.cross_entropy(model(images[pick]), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
