"""CIFAR ResNet-18 (He et al. 2016), the deep model of the gradient inversion literature.

The CIFAR variant (as in Geiping et al. 2020's ``inversefed`` ResNet18 and the common
``pytorch-cifar`` code): a 3x3 stride-1 stem without max-pool, four stages of two BasicBlocks
(64, 128, 256, 512 channels; strides 1, 2, 2, 2), BatchNorm and ReLU, adaptive average pooling
and one Linear. For attacks it is the hard case: deep, BatchNorm in every block (gradients
depend on batch statistics in train mode; BN running statistics are a prior that GradInversion
exploits), and the final global average pool discards spatial layout, so only gradients of
early layers carry fine image detail. Adaptive pooling makes it work for any input size.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: BasicBlock x [2, 2, 2, 2], stride-1 3x3 stem, no max-pool.

    Convolutions use Kaiming-normal (fan_out) init and BatchNorm starts at weight 1, bias 0,
    as in torchvision/inversefed; the Linear keeps PyTorch's default init.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, base_width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU()
        stages = []
        in_planes = base_width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = base_width * 2**i
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.avgpool(out).flatten(1))
