"""LeNet of Deep Leakage from Gradients (Zhu et al., NeurIPS 2019).

DLG's public code (``mit-han-lab/dlg``, ``models/vision.py``) attacks a small LeNet variant:
three 5x5 convolutions with 12 channels (strides 2, 2, 1; padding 2), each followed by a
Sigmoid, and a single Linear classifier. Two choices matter for gradient inversion:

* Sigmoid activations are smooth, so the gradient-matching objective (which differentiates
  through the model's gradient) is smooth too; ReLU's second derivative is zero almost
  everywhere, which makes that objective piecewise and harder for L-BFGS.
* The weights and biases are drawn uniform(-0.5, 0.5) instead of PyTorch's default fan-in
  scaling. This is DLG's own ``weights_init`` and it is what makes DLG's L-BFGS gradient
  matching converge: the large weights give every input pixel a strong imprint on the
  gradients. With PyTorch's default init the same attack often fails to
  converge (Wei et al. 2020 report DLG's sensitivity to the model's init).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_out(size: int, kernel: int = 5, stride: int = 1, padding: int = 2) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LeNet(nn.Module):
    """DLG's 3-conv Sigmoid LeNet for any input shape ``(C, H, W)``.

    The flattened feature size is computed from the shape (768 for 32x32 inputs, as in DLG).
    Parameters are initialized uniform(-0.5, 0.5) as in DLG, using torch's global RNG.
    """

    def __init__(self, in_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        channels, height, width = in_shape
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, kernel_size=5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=1, padding=2),
            nn.Sigmoid(),
        )
        for stride in (2, 2, 1):
            height, width = _conv_out(height, stride=stride), _conv_out(width, stride=stride)
        self.feature_dim = 12 * height * width
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DLG init: every weight and bias uniform(-0.5, 0.5)."""
        for param in self.parameters():
            param.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))
