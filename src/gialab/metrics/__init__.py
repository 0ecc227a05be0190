"""Metrics for judging gradient inversion reconstructions (survey section 2.3).

:func:`score` matches reconstructions to the private batch and reports everything at once;
the per-sample functions take aligned (N, C, H, W) batches in [0, 1] and return (N,) tensors.
"""

from gialab.metrics.identifiability import hog_features, identified, iip
from gialab.metrics.image import PSNR_CAP_DB, avd, dct_cosine, ms_ssim, ms_ssim_config, mse, psnr, ssim
from gialab.metrics.labels import label_accuracy, multiset_label_accuracy
from gialab.metrics.lpips import load_lpips, lpips, lpips_available
from gialab.metrics.matching import match, pairwise_psnr
from gialab.metrics.rdlv import gray_reference, rdlv
from gialab.metrics.score import Scores, score

__all__ = [
    "PSNR_CAP_DB",
    "Scores",
    "avd",
    "dct_cosine",
    "gray_reference",
    "hog_features",
    "identified",
    "iip",
    "label_accuracy",
    "load_lpips",
    "lpips",
    "lpips_available",
    "match",
    "ms_ssim",
    "ms_ssim_config",
    "mse",
    "multiset_label_accuracy",
    "pairwise_psnr",
    "psnr",
    "rdlv",
    "score",
    "ssim",
]
