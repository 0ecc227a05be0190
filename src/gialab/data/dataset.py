"""The in-memory form every data source is turned into.

Images stay in [0, 1] everywhere (models consume them as they are), so box constraints,
metrics and image grids need no de-normalization. ``DataSpec`` is the public part: what an
attacker may know about the data domain (shape, classes, pixel statistics), never the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


def make_dataset(
    name: str, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> ImageDataset:
    """Wrap arrays as an :class:`ImageDataset`, deriving the spec's pixel statistics from them.

    Every loader funnels through here so the [0, 1] float32 / int64 contract and the
    mean/std an attacker may assume are computed one way for all data sources.
    """
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"bad dataset arrays: images {tuple(x.shape)}, labels {tuple(y.shape)}")
    c, h, w = (int(v) for v in x.shape[1:])
    spec = DataSpec(
        name=name,
        shape=(c, h, w),
        num_classes=len(class_names),
        class_names=tuple(str(n) for n in class_names),
        mean=tuple(float(v) for v in x.mean(dim=(0, 2, 3))),
        std=tuple(float(v) for v in x.std(dim=(0, 2, 3))),
    )
    return ImageDataset(spec=spec, images=x, labels=y)


def copy_dataset(ds: ImageDataset) -> ImageDataset:
    """Fresh tensors over a cached dataset, so one caller's in-place edits cannot leak."""
    return ImageDataset(spec=ds.spec, images=ds.images.clone(), labels=ds.labels.clone())
