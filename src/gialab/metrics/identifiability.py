"""Image Identifiability Precision (IIP): can a reconstruction single out its own image?

IIP (Yin et al., 2021, "See through Gradients: Image Batch Recovery via GradInversion")
counts the fraction of reconstructions whose nearest neighbour, among a pool of candidate
images, is the very image they were reconstructed from. It measures identifiable leakage
rather than pixel fidelity: a blurry reconstruction that still picks out the right person
leaks. Yin et al. search in a deep feature space; Fowl et al. (2021, "Robbing the Fed")
use pixel space as a model-independent, stricter variant. Hatamizadeh et al. (2023) extend
the pool to all training and validation data of the clients.

Distances follow the reference implementation in Geiping et al.'s ``breaching`` library
(``image_identifiability_precision``): Euclidean (L2) distance in pixel space, cosine
distance (1 - cosine similarity) in feature space; a reconstruction is identified when the
pool image nearest to it lies within L2 distance 1e-3 of its true image (so exact
duplicates of the true image in the pool also count).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage.feature import hog

from gialab.errors import GialabError
from gialab.metrics.image import check_images, check_pair

FeatureFn = Callable[[torch.Tensor], torch.Tensor]

_SAME_IMAGE_TOL = 1e-3


def hog_features(images: torch.Tensor) -> torch.Tensor:
    """Default offline feature extractor: scikit-image HOG (Dalal & Triggs, 2005) per channel.

    No pretrained network weights are available offline, so feature-space IIP uses
    histograms of oriented gradients, a deterministic hand-crafted descriptor of local
    shape. Per channel: ``skimage.feature.hog`` with 9 orientations, square cells of
    max(2, min(H, W) // 4) px, 2x2-cell blocks, L2-Hys block norm; channel vectors are
    concatenated. Images with a side under 4 px fall back to their flattened pixels.
    Returns float32 (N, D)."""
    check_images("images", images)
    x = images.detach().cpu().double().clamp(0.0, 1.0).numpy()
    n, c, h, w = x.shape
    if min(h, w) < 4:
        return torch.from_numpy(x.reshape(n, -1)).float()
    cell = max(2, min(h, w) // 4)
    rows = []
    for img in x:
        chans = [
            hog(img[k], orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                block_norm="L2-Hys", feature_vector=True)
            for k in range(c)
        ]
        rows.append(np.concatenate(chans))
    return torch.from_numpy(np.stack(rows)).float()


def _pixel_distances(queries: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return torch.cdist(queries.flatten(1).double(), pool.flatten(1).double())


def _cosine_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return 1.0 - a @ b.T


def identified(
    recon: torch.Tensor,
    truth: torch.Tensor,
    pool: torch.Tensor | None = None,
    *,
    space: str = "pixel",
    feature_fn: FeatureFn | None = None,
) -> torch.Tensor:
    """Per-sample IIP hits: bool (N,), True where recon[i]'s nearest pool image is truth[i].

    ``recon`` and ``truth`` are aligned (N, C, H, W) batches; ``pool`` (M, C, H, W) holds the
    candidates (the true batch plus any extra dataset images) and defaults to ``truth``;
    every true image must be in it. ``space`` is 'pixel' (L2 distance) or 'feature'
    (cosine distance between ``feature_fn`` outputs, default :func:`hog_features`).
    Reconstructions containing NaN or inf are never identified."""
    check_pair(recon, truth)
    pool = truth if pool is None else pool
    check_images("pool", pool)
    if pool.shape[1:] != truth.shape[1:]:
        raise GialabError(
            f"pool shape {tuple(pool.shape)} and ground-truth shape {tuple(truth.shape)} disagree in (C, H, W)"
        )
    if space not in ("pixel", "feature"):
        raise GialabError(f"unknown IIP space {space!r}; valid: feature, pixel")
    n = recon.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    recon, truth, pool = (t.detach().cpu() for t in (recon, truth, pool))
    truth_to_pool = _pixel_distances(truth, pool)
    if bool((truth_to_pool.min(dim=1).values >= _SAME_IMAGE_TOL).any()):
        raise GialabError("IIP pool must contain every true image (pool = true batch plus extra images)")
    finite = torch.isfinite(recon.flatten(1)).all(dim=1)
    safe = torch.where(finite[:, None, None, None], recon, torch.zeros_like(recon))
    if space == "pixel":
        dist = _pixel_distances(safe, pool)
    else:
        fn = feature_fn or hog_features
        dist = _cosine_distances(fn(safe), fn(pool))
    nearest = dist.argmin(dim=1)
    hit = truth_to_pool[torch.arange(n), nearest] < _SAME_IMAGE_TOL
    return hit & finite


def iip(
    recon: torch.Tensor,
    truth: torch.Tensor,
    pool: torch.Tensor | None = None,
    *,
    space: str = "pixel",
    feature_fn: FeatureFn | None = None,
) -> float:
    """Image Identifiability Precision: the fraction of :func:`identified` hits (NaN if N = 0)."""
    hits = identified(recon, truth, pool, space=space, feature_fn=feature_fn)
    return float(hits.double().mean()) if hits.numel() else float("nan")
