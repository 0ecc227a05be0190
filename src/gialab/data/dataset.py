"""The in-memory form every data source is turned into.

Images stay in [0, 1] everywhere (models consume them as they are), so box constraints,
metrics and image grids need no de-normalization. ``DataSpec`` is the public part: what an
attacker may know about the data domain (shape, classes, pixel statistics), never the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataSpec:
    """Public description of a data domain, shared with models and attackers."""

    name: str
    shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel pixel mean over the dataset, in [0, 1]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ImageDataset:
    """Private examples: float32 images (N, C, H, W) in [0, 1] and int64 labels (N,)."""

    spec: DataSpec
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])
