"""Relative Data Leakage Value (RDLV), Hatamizadeh et al., 2023.

"Do Gradient Inversion Attacks Make Federated Learning Unsafe?" (IEEE TMI 2023,
arXiv:2202.06924) measures leakage relative to what the attacker knew before the attack:
the similarity a reconstruction reaches is compared with the similarity the attack's prior
(the image it starts from) already had. That normalisation makes leakage comparable across
clients with different data, which is why the survey (section 2.3) lists it.

Formula, as in the authors' NVFlare code (``research/quantifying-data-leakage``,
``RelativeDataLeakageValueFilter.compute_rdlv``), with base similarity s (SSIM by default):

    RDLV(x_hat, x; x_ref) = (s(x_hat, x) - s(x_ref, x)) / s(x_ref, x)

0 means the reconstruction is no closer to the private image than the prior was; 1 means
it is twice as similar (the authors' default filter threshold); negative means worse than
the prior. A perfect reconstruction gives (1 - s(x_ref, x)) / s(x_ref, x), not 1. With the
default reference, a constant 0.5 gray image, SSIM(x_ref, x) is small (roughly 0.02-0.2 for
natural images), so RDLV values of 5-50 for good reconstructions are expected. Where
|s(x_ref, x)| < 1e-6 the ratio is undefined and NaN is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gialab.errors import GialabError
from gialab.metrics.image import check_pair, ssim

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_MIN_REFERENCE_SIMILARITY = 1e-6


def gray_reference(truth: torch.Tensor, level: float = 0.5) -> torch.Tensor:
    """The reference used when the attack's prior is unknown: constant ``level`` images."""
    return torch.full_like(truth, level)


def rdlv(
    recon: torch.Tensor,
    truth: torch.Tensor,
    reference: torch.Tensor,
    base: Similarity = ssim,
) -> torch.Tensor:
    """Per-sample RDLV (N,) = (base(recon, truth) - base(ref, truth)) / base(ref, truth).

    ``reference`` is the attack's prior/initial image(s): shape (C, H, W), (1, C, H, W) or
    (N, C, H, W); callers without one pass :func:`gray_reference`. ``base`` is a per-sample
    similarity (higher = more similar), SSIM by default as in the paper."""
    check_pair(recon, truth)
    if reference.ndim == 3:
        reference = reference.unsqueeze(0)
    if reference.ndim != 4 or reference.shape[1:] != truth.shape[1:] or reference.shape[0] not in (
        1,
        truth.shape[0],
    ):
        raise GialabError(
            f"RDLV reference shape {tuple(reference.shape)} does not fit ground truth {tuple(truth.shape)}; "
            "use (C, H, W), (1, C, H, W) or (N, C, H, W)"
        )
    if truth.shape[0] == 0:
        return torch.zeros(0)
    reference = reference.to(dtype=truth.dtype, device=truth.device).expand_as(truth)
    s_rec = base(recon, truth).double()
    s_ref = base(reference, truth).double()
    out = (s_rec - s_ref) / s_ref
    out = torch.where(s_ref.abs() < _MIN_REFERENCE_SIMILARITY, math.nan, out)
    return out.float()
