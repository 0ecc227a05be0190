"""Grayscale 25x25 faces from ``skimage.data.lfw_subset`` (a bundled slice of Labeled Faces in
the Wild; nothing is downloaded).

Faces are the classic privacy case for gradient inversion: a reconstruction that is
recognisable as a person is the harm. The subset holds 100 faces followed by 100 non-faces
(background patches of the same photos), so it is a 2-class set: ``face`` (label 0) and
``non-face`` (label 1). Individual identities are not labelled in the subset.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gialab.data.dataset import ImageDataset, copy_dataset, make_dataset

CLASS_NAMES = ("face", "non-face")


@lru_cache(maxsize=1)
def _build() -> ImageDataset:
    from skimage import data as skdata

    raw = np.asarray(skdata.lfw_subset(), dtype=np.float64)
    if raw.max() > 1.0:  # older scikit-image returned uint8 here
        raw = raw / 255.0
    images = np.clip(raw, 0.0, 1.0)[:, None, :, :]
    half = len(images) // 2
    labels = np.repeat([0, 1], [half, len(images) - half])
    return make_dataset("faces", images, labels, CLASS_NAMES)


def load_faces() -> ImageDataset:
    """All 200 images, faces first; shape (1, 25, 25). Cached, returned as fresh tensors."""
    return copy_dataset(_build())
