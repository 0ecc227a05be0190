"""CNN6 of R-GAP (Zhu and Blaschko, ICLR 2021).

R-GAP's public code (``JunyiZhu-AI/R-GAP``, ``models/CNN6.py``) attacks a six-convolution net
built so that its recursive inversion is well posed: no pooling, no normalization, and
LeakyReLU(0.2) after every convolution, so each activation is invertible and each layer's input
is pinned down by its output and its weight gradient. The convolutions are bias-free:
3->12 (4x4, stride 2, padding 2), 12->36 (3x3, s2), 36->36 (3x3, s1) twice, 36->64 (3x3, s2),
64->128 (3x3, s1), giving 128x5x5 = 3200 features on 32x32 inputs.

Two changes to fit gialab: their single logistic output becomes a ``Linear`` with
``num_classes`` outputs and a bias (gialab's clients train with cross-entropy; the bias gradient is
then ``dL/dlogits``, which starts R-GAP's recursion), and the feature size is computed from the
input shape, so any ``(C, H, W)`` works. PyTorch's default init, as in their code.
"""

from __future__ import annotations

import torch
from torch import nn

# (out_channels, kernel, stride, padding) of the six convolutions, from R-GAP's CNN6.
_CONVS: tuple[tuple[int, int, int, int], ...] = (
    (12, 4, 2, 2),
    (36, 3, 2, 1),
    (36, 3, 1, 1),
    (36, 3, 1, 1),
    (64, 3, 2, 1),
    (128, 3, 1, 1),
)
NEGATIVE_SLOPE = 0.2


class CNN6(nn.Module):
    """R-GAP's CNN6: six bias-free conv + LeakyReLU(0.2) layers, then one Linear classifier."""

    def __init__(self, in_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        channels, height, width = in_shape
        layers: list[nn.Module] = []
        for out_ch, kernel, stride, padding in _CONVS:
            layers += [
                nn.Conv2d(channels, out_ch, kernel_size=kernel, stride=stride, padding=padding, bias=False),
                nn.LeakyReLU(NEGATIVE_SLOPE),
            ]
            channels = out_ch
            height = (height + 2 * padding - kernel) // stride + 1
            width = (width + 2 * padding - kernel) // stride + 1
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels * height * width
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))
