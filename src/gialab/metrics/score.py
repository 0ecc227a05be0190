"""One call that scores an attack's output against the private batch.

Order of work: validate shapes, match reconstructions to true images (Hungarian, max total
PSNR, :mod:`gialab.metrics.matching`), then compute every metric on the matched pairs.

NaN/inf policy: a reconstruction containing any non-finite value is *invalid*. It can still
be matched (it is matched last), it never counts as recovered or identified, its per-sample
metrics are reported as None, and it is left out of the metric means/medians (which are over
valid matched pairs only; ``n_invalid_recon`` says how many were left out). Rates
(``fraction_recovered``, ``iip_*``, ``label_accuracy``) are over all TRUE samples, so
unmatched and invalid samples count as failures there. Every aggregate that has no finite
value to summarise is None, never NaN, so ``Scores`` is always valid JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from gialab.errors import GialabError
from gialab.metrics.identifiability import identified
from gialab.metrics.image import avd, check_images, check_pair, dct_cosine, ms_ssim, mse, psnr, ssim
from gialab.metrics.labels import label_accuracy, multiset_label_accuracy
from gialab.metrics.lpips import load_lpips, lpips
from gialab.metrics.matching import match
from gialab.metrics.rdlv import gray_reference, rdlv


@dataclass
class Scores:
    """Result of :func:`score`.

    ``flat``: aggregate name -> value (None when not computable). ``per_sample``: one dict
    per true sample, in truth order: truth_index, recon_index (None if unmatched), mse,
    psnr, ssim (None if unmatched or invalid), recovered, identified_pixel. ``order``: the
    matched reconstruction index for each truth index, -1 when unmatched."""

    flat: dict[str, float | None]
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    order: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _agg(values: torch.Tensor, fn: Callable[[np.ndarray], float]) -> float | None:
    v = values.detach().cpu().double().numpy()
    v = v[np.isfinite(v)]
    return _num(fn(v)) if v.size else None


def _reference_for(reference: torch.Tensor | None, truth: torch.Tensor, n_recon: int, r_idx: np.ndarray) -> torch.Tensor:
    if reference is None:
        return gray_reference(truth[:1])
    if not isinstance(reference, torch.Tensor):
        raise GialabError(f"RDLV reference must be a torch.Tensor image, got {type(reference).__name__}")
    ref = reference.detach().cpu()
    ref = ref.unsqueeze(0) if ref.ndim == 3 else ref
    check_images("RDLV reference", ref)
    if ref.shape[1:] != truth.shape[1:] or ref.shape[0] not in (1, n_recon):
        raise GialabError(
            f"RDLV reference shape {tuple(reference.shape)} does not fit images {tuple(truth.shape[1:])}; "
            f"use (C, H, W), (1, C, H, W) or one initial image per reconstruction ({n_recon}, C, H, W)"
        )
    return ref if ref.shape[0] == 1 else ref[torch.as_tensor(r_idx, dtype=torch.long)]


def score(
    recon: torch.Tensor,
    truth: torch.Tensor,
    *,
    recon_labels: torch.Tensor | None,
    true_labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    pool: torch.Tensor | None = None,
    recovered_psnr: float = 30.0,
    lpips_weights: str | os.PathLike[str] | None = None,
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Scores:
    """Score reconstructions (N_r, C, H, W) against the true batch (N_t, C, H, W), both in [0, 1].

    ``recon_labels``: labels the attack recovered (None if it recovers none); when there is
    one per reconstruction, ``label_accuracy`` compares them on matched pairs, and
    ``label_multiset_accuracy`` always treats them as an unordered bag. ``reference``: the
    attack's prior/initial image for RDLV, (C, H, W), (1, C, H, W) or one per
    reconstruction; None means a constant 0.5 gray image. ``pool``: IIP candidates (true
    batch plus extra images, must contain every true image); default the true batch.
    ``recovered_psnr``: PSNR (dB) at or above which a true sample counts as recovered.
    ``lpips_weights``: local LPIPS state-dict file; None reports ``lpips_mean`` as None.
    ``feature_fn``: feature extractor for feature-space IIP (default HOG).
    """
    check_pair(recon, truth, same_n=False)
    n_r, n_t = recon.shape[0], truth.shape[0]
    true_labels = torch.as_tensor(true_labels)
    if true_labels.ndim != 1 or true_labels.shape[0] != n_t:
        raise GialabError(f"true_labels must have shape ({n_t},) to match the true batch, got {tuple(true_labels.shape)}")
    if recon_labels is not None:
        recon_labels = torch.as_tensor(recon_labels)
        if recon_labels.ndim != 1:
            raise GialabError(f"recon_labels must be 1-D, got shape {tuple(recon_labels.shape)}")
    if lpips_weights is not None:
        load_lpips(lpips_weights)  # fail early on a bad file
    recon, truth = recon.detach().cpu(), truth.detach().cpu()

    r_idx, t_idx = match(recon, truth)
    order = [-1] * n_t
    for r, t in zip(r_idx, t_idx):
        order[int(t)] = int(r)
    rt = torch.as_tensor(r_idx, dtype=torch.long)
    tt = torch.as_tensor(t_idx, dtype=torch.long)
    rec_m, tru_m = recon[rt], truth[tt]
    valid = torch.isfinite(rec_m.flatten(1)).all(dim=1)

    def masked(values: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, values.float(), torch.nan)

    m_mse, m_psnr, m_ssim = masked(mse(rec_m, tru_m)), masked(psnr(rec_m, tru_m)), masked(ssim(rec_m, tru_m))
    m_ms = masked(ms_ssim(rec_m, tru_m))
    m_dct, m_avd = masked(dct_cosine(rec_m, tru_m)), masked(avd(rec_m, tru_m))
    ref = _reference_for(reference, truth, n_r, r_idx)
    m_rdlv = masked(rdlv(rec_m, tru_m, ref)) if len(r_idx) else torch.zeros(0)
    m_lpips = masked(lpips(rec_m, tru_m, lpips_weights)) if lpips_weights is not None else None

    recovered = valid & (m_psnr >= recovered_psnr)
    iip_pix = identified(rec_m, tru_m, pool if pool is not None else truth, space="pixel")
    iip_feat = identified(rec_m, tru_m, pool if pool is not None else truth, space="feature", feature_fn=feature_fn)
    n_rec = int(recovered.sum())

    label_acc: float | None = None
    multiset_acc: float | None = None
    if recon_labels is not None:
        multiset_acc = _num(multiset_label_accuracy(recon_labels, true_labels))
        if recon_labels.shape[0] == n_r and n_t:
            correct = label_accuracy(recon_labels[rt], true_labels[tt]) * len(r_idx) if len(r_idx) else 0.0
            label_acc = _num(correct / n_t)

    def rate(hits: torch.Tensor) -> float | None:
        return _num(int(hits.sum()) / n_t) if n_t else None

    flat: dict[str, float | None] = {
        "n_truth": n_t,
        "n_recon": n_r,
        "n_matched": len(r_idx),
        "n_invalid_recon": int((~torch.isfinite(recon.flatten(1)).all(dim=1)).sum()) if n_r else 0,
        "mse_mean": _agg(m_mse, np.mean),
        "psnr_mean": _agg(m_psnr, np.mean),
        "psnr_median": _agg(m_psnr, np.median),
        "psnr_max": _agg(m_psnr, np.max),
        "psnr_min": _agg(m_psnr, np.min),
        "ssim_mean": _agg(m_ssim, np.mean),
        "ssim_max": _agg(m_ssim, np.max),
        "ms_ssim_mean": _agg(m_ms, np.mean),
        "dct_cosine_mean": _agg(m_dct, np.mean),
        "avd_mean": _agg(m_avd, np.mean),
        "iip_pixel": rate(iip_pix),
        "iip_feature": rate(iip_feat),
        "rdlv_mean": _agg(m_rdlv, np.mean),
        "rdlv_max": _agg(m_rdlv, np.max),
        "lpips_mean": _agg(m_lpips, np.mean) if m_lpips is not None else None,
        "label_accuracy": label_acc,
        "label_multiset_accuracy": multiset_acc,
        "recovered_psnr_threshold": float(recovered_psnr),
        "fraction_recovered": rate(recovered),
        "n_recovered": n_rec,
    }

    by_truth = {int(t): k for k, t in enumerate(t_idx)}
    per_sample: list[dict[str, Any]] = []
    for t in range(n_t):
        k = by_truth.get(t)
        per_sample.append({
            "truth_index": t,
            "recon_index": None if k is None else int(r_idx[k]),
            "mse": None if k is None else _num(m_mse[k]),
            "psnr": None if k is None else _num(m_psnr[k]),
            "ssim": None if k is None else _num(m_ssim[k]),
            "recovered": False if k is None else bool(recovered[k]),
            "identified_pixel": False if k is None else bool(iip_pix[k]),
        })
    return Scores(flat=flat, per_sample=per_sample, order=order)
