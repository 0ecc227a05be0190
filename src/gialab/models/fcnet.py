"""6-layer fully connected ReLU network (as used by Boenisch et al. 2023).

"When the Curious Abandon Honesty" (Boenisch et al., EuroS&P 2023) shows that a malicious
server can make a fully connected first layer leak inputs exactly: a neuron's weight gradient
divided by its bias gradient is the input that (alone) activated it. Such analytic attacks
(also Fowl et al.'s imprint module, Phong et al.'s single-layer result) need the first layer
to be a Linear with a bias acting on the flattened image. Hence:

* ``FCNet.input_layer`` is that first ``nn.Linear`` (in_features = C*H*W); it is registered
  first, so it is also ``next(model.children())`` and the first Linear in ``model.modules()``.
  Attacks that tamper with or read the first layer should use ``model.input_layer``.
* Every Linear has a bias.

Layout: flatten -> 5 x (Linear + ReLU) with ``hidden`` units -> Linear to classes (6 Linears).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FCNet(nn.Module):
    """Fully connected ReLU net: 5 hidden Linear+ReLU layers and one output Linear."""

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        hidden: int = 1000,
        depth: int = 6,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("FCNet needs depth >= 2 (input layer and output layer)")
        self.in_features = math.prod(in_shape)
        self.input_layer = nn.Linear(self.in_features, hidden, bias=True)
        layers: list[nn.Module] = [nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Linear(hidden, hidden, bias=True), nn.ReLU()]
        layers.append(nn.Linear(hidden, num_classes, bias=True))
        self.rest = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.input_layer(x.flatten(1)))
