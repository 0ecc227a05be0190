"""The "ConvNet" of Inverting Gradients (Geiping et al., NeurIPS 2020).

Geiping et al.'s ``inversefed`` code (``ConvNet``, width 64) is the standard BatchNorm/ReLU
CNN of the gradient inversion literature: eight conv-BN-ReLU blocks (3x3, padding 1) with
widths 1w, 2w, 2w, 4w, 4w, 4w | 4w, 4w, a 3x3 max-pool after the sixth block and another
after the eighth (32 -> 10 -> 3 on CIFAR), then a Linear on the 4w x 3 x 3 features.

(Their source lists ``conv6``/``bn6``/``relu6`` twice in an ``OrderedDict``; the duplicate
keys collapse, so the network really has eight convolutions, as built here.)

What matters for attacks: it uses BatchNorm, so in train mode the gradients depend on batch
statistics (the setting studied by Geiping et al. and by BN-statistics attacks such as
GradInversion), and ReLU, so the loss landscape is only piecewise smooth. Geiping et al. use
cosine gradient similarity plus total variation to invert it.

Generalization: any ``(C, H, W)`` input works. The first pool is their fixed 3x3 max-pool
when the image is at least 9 pixels on a side (else it is skipped), and the second is their
fixed 3x3 max-pool when that yields exactly 3x3 (as on 32x32) and an adaptive max-pool to
3x3 otherwise, so the classifier always sees ``4 * width * 9`` features.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

_WIDTH_MULTIPLIERS = (1, 2, 2, 4, 4, 4, 4, 4)
_POOL_AFTER = 5  # index of the block after which the first max-pool comes


class ConvNet(nn.Module):
    """Inverting Gradients' ConvNet (8 conv-BN-ReLU blocks, two max-pools, one Linear).

    Layers live in ``self.model`` with their ``inversefed`` names (``conv0``, ``bn0``,
    ``relu0``, ..., ``pool0``, ..., ``pool1``, ``flatten``, ``linear``). PyTorch's default init.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        width: int = 64,
    ) -> None:
        super().__init__()
        channels, height, w = in_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch = channels
        for i, mult in enumerate(_WIDTH_MULTIPLIERS):
            out_ch = mult * width
            layers[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(out_ch)
            layers[f"relu{i}"] = nn.ReLU()
            in_ch = out_ch
            if i == _POOL_AFTER:
                if min(height, w) >= 9:
                    layers["pool0"] = nn.MaxPool2d(3)
                    height, w = height // 3, w // 3
                else:
                    layers["pool0"] = nn.Identity()
        if height // 3 == 3 and w // 3 == 3:
            layers["pool1"] = nn.MaxPool2d(3)
        else:
            layers["pool1"] = nn.AdaptiveMaxPool2d((3, 3))
        layers["flatten"] = nn.Flatten()
        layers["linear"] = nn.Linear(in_ch * 9, num_classes)
        self.model = nn.Sequential(layers)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
