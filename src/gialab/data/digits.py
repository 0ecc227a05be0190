"""Handwritten digits from ``sklearn.datasets.load_digits`` (UCI optical digits, bundled with
scikit-learn; 1797 grayscale 8x8 images, 10 classes).

Tiny images make exact reconstruction by optimisation or analytic inversion cheap, so this is
the set for fast tests and for sweeping many configurations.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gialab.data.dataset import ImageDataset, copy_dataset, make_dataset

CLASS_NAMES = tuple(str(d) for d in range(10))


@lru_cache(maxsize=1)
def _build() -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel counts run 0..16 (ink in a 4x4 block); divide so images share the [0, 1] contract.
    images = np.asarray(bunch.images, dtype=np.float64)[:, None, :, :] / 16.0
    return make_dataset("digits", images, np.asarray(bunch.target), CLASS_NAMES)


def load_digits_dataset() -> ImageDataset:
    """All 1797 digits, shape (1, 8, 8). Cached, returned as fresh tensors."""
    return copy_dataset(_build())
