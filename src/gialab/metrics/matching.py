"""Optimal pairing of reconstructed with true images before any metric is computed.

Batch attacks return reconstructions in an arbitrary order (gradients of a batch are
permutation-invariant), so evaluation first solves the assignment problem, as in Yin et al.
(2021) and Geiping et al.'s ``breaching`` library: the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the reconstruction x truth matrix of per-pair
PSNR, maximising the total PSNR (capped at ``PSNR_CAP_DB``; pairs involving a
reconstruction with NaN/inf count as -1000 dB, worse than any finite pair).
Rectangular problems are fine: with more reconstructions than true images the surplus stays
unmatched, with fewer some true images stay unmatched.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gialab.metrics.image import PSNR_CAP_DB, check_pair

_INVALID_DB = -1000.0


def pairwise_psnr(recon: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """PSNR in dB (data range 1, capped) for every (reconstruction, truth) pair: (N_r, N_t).

    Non-finite reconstructions give NaN rows."""
    check_pair(recon, truth, same_n=False)
    r = recon.detach().cpu().double().flatten(1)
    t = truth.detach().cpu().double().flatten(1)
    if r.shape[0] == 0 or t.shape[0] == 0:
        return np.zeros((r.shape[0], t.shape[0]))
    mse = torch.cdist(r, t).pow(2) / r.shape[1]
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse.numpy())
    return np.minimum(out, PSNR_CAP_DB)  # np.minimum keeps NaN


def match(recon: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Assignment maximising total PSNR: (recon_idx, truth_idx), int arrays of equal length.

    Pairs are sorted by truth index; length is min(N_recon, N_truth)."""
    psnr = pairwise_psnr(recon, truth)
    if psnr.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cost = -np.nan_to_num(psnr, nan=_INVALID_DB, posinf=PSNR_CAP_DB, neginf=_INVALID_DB)
    r_idx, t_idx = linear_sum_assignment(cost)
    order = np.argsort(t_idx)
    return r_idx[order].astype(np.int64), t_idx[order].astype(np.int64)
