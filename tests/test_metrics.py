"""Tests for gialab.metrics: per-sample metrics, matching, labels, LPIPS loading, score()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gialab.errors import GialabError
from gialab.metrics import (
    PSNR_CAP_DB,
    Scores,
    avd,
    dct_cosine,
    gray_reference,
    hog_features,
    iip,
    label_accuracy,
    lpips,
    lpips_available,
    match,
    ms_ssim,
    ms_ssim_config,
    mse,
    multiset_label_accuracy,
    psnr,
    rdlv,
    score,
    ssim,
)


def images(n: int, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [0, 1] (upsampled noise), distinct from each other."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, max(2, size // 4), max(2, size // 4), generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (0.7 * up + 0.3 * torch.rand(n, c, size, size, generator=g)).clamp(0, 1)


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ---- per-sample image metrics ---------------------------------------------------------


@pytest.mark.parametrize("size", [32, 25, 8])
def test_identical_images_are_perfect(size: int) -> None:
    x = images(3, size=size)
    assert torch.equal(psnr(x, x), torch.full((3,), PSNR_CAP_DB))
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.allclose(ms_ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.allclose(dct_cosine(x, x), torch.ones(3), atol=1e-6)
    assert torch.equal(avd(x, x), torch.zeros(3))
    assert torch.equal(mse(x, x), torch.zeros(3))
    assert iip(x, x) == 1.0
    assert iip(x, x, space="feature") == 1.0


def test_psnr_of_constant_offset() -> None:
    x = images(4) * 0.9
    out = psnr(x + 0.1, x)
    assert out.shape == (4,)
    assert torch.allclose(out, torch.full((4,), 20.0), atol=1e-3)
    assert torch.allclose(mse(x + 0.1, x), torch.full((4,), 0.01), atol=1e-6)


def test_metrics_order_noise_levels() -> None:
    x = images(2)
    small, large = noisy(x, 0.02), noisy(x, 0.3)
    assert (psnr(small, x) > psnr(large, x)).all()
    assert (ssim(small, x) > ssim(large, x)).all()
    assert (ms_ssim(small, x) > ms_ssim(large, x)).all()
    assert (dct_cosine(small, x) > dct_cosine(large, x)).all()
    assert (avd(small, x) < avd(large, x)).all()
    assert (avd(large, x) > 0).all()


def test_ms_ssim_config_per_size() -> None:
    assert ms_ssim_config(32, 32)[:2] == (3, 7)
    assert ms_ssim_config(25, 25)[:2] == (3, 5)
    assert ms_ssim_config(8, 8)[:2] == (2, 7)
    assert ms_ssim_config(224, 224)[:2] == (5, 11)
    assert ms_ssim_config(5, 5) is None
    x = images(2, size=5)
    assert torch.isnan(ms_ssim(x, x)).all()
    for size in (6, 8, 25, 28, 32, 64):
        betas = ms_ssim_config(size, size)[3]
        assert math.isclose(sum(betas), 1.0)


def test_dct_cosine_equals_pixel_cosine_and_dc_option() -> None:
    x, y = images(2, seed=0), images(2, seed=5)
    pixel_cos = torch.nn.functional.cosine_similarity(x.flatten(1), y.flatten(1), dim=1)
    assert torch.allclose(dct_cosine(x, y), pixel_cos, atol=1e-5)
    assert torch.allclose(dct_cosine(x + 0.05, x, exclude_dc=True), torch.ones(2), atol=1e-5)


def test_avd_matches_reference_formula() -> None:
    x, y = images(1, c=1, size=8, seed=2), images(1, c=1, size=8, seed=3)

    def maps(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = v[:, :-1] - v[:, 1:], v[:-1, :] - v[1:, :]
        d2x, d2y = dx[:, :-1] - dx[:, 1:], dy[:-1, :] - dy[1:, :]
        return np.abs(dx[1:, :] + dy[:, 1:]), np.abs(d2x[2:, :] + d2y[:, 2:])

    (a1, a2), (b1, b2) = maps(y[0, 0].double().numpy()), maps(x[0, 0].double().numpy())
    expected = math.sqrt(np.mean((a1 - b1) ** 2) + 0.5 * np.mean((a2 - b2) ** 2))
    assert math.isclose(float(avd(y, x)), expected, rel_tol=1e-5)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(GialabError, match=r"\(2, 3, 32, 32\).*\(2, 1, 32, 32\)"):
        psnr(images(2), images(2, c=1))
    with pytest.raises(GialabError, match="shape"):
        score(images(2), images(2, size=16), recon_labels=None, true_labels=torch.tensor([0, 1]))
    with pytest.raises(GialabError):
        ssim(images(2)[0], images(2)[0])


# ---- IIP and RDLV -----------------------------------------------------------------------


def test_iip_with_pool_and_features() -> None:
    truth = images(4, seed=0)
    pool = torch.cat([truth, images(6, seed=9)])
    assert iip(noisy(truth, 0.05), truth, pool) == 1.0
    garbage = images(4, seed=42)
    assert iip(garbage, truth, pool) < 1.0
    feats = hog_features(truth)
    assert feats.shape[0] == 4 and torch.equal(feats, hog_features(truth))  # deterministic
    assert iip(noisy(truth, 0.02), truth, pool, space="feature", feature_fn=lambda t: t.flatten(1)) == 1.0
    assert hog_features(images(2, size=8)).shape[0] == 2
    with pytest.raises(GialabError, match="pool"):
        iip(truth, truth, images(5, seed=7))
    with pytest.raises(GialabError, match="space"):
        iip(truth, truth, space="deep")


def test_rdlv_formula() -> None:
    x = images(3)
    ref = gray_reference(x)
    s_ref = ssim(ref, x).double()
    perfect = rdlv(x, x, ref)
    assert torch.allclose(perfect.double(), (1 - s_ref) / s_ref, rtol=1e-4)
    assert (perfect > 1).all()  # perfect recon is not 1: (1 - s_ref) / s_ref with a gray prior
    assert torch.allclose(rdlv(ref, x, ref[0]), torch.zeros(3), atol=1e-6)
    assert (rdlv(noisy(x, 0.05), x, ref) > rdlv(noisy(x, 0.3), x, ref)).all()


# ---- matching and labels ------------------------------------------------------------------


def test_matching_recovers_permutation() -> None:
    truth = images(8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    recon = noisy(truth[perm], 0.03)
    r_idx, t_idx = match(recon, truth)
    assert list(t_idx) == list(range(8))
    assert torch.equal(perm[torch.as_tensor(r_idx)], torch.arange(8))
    s = score(recon, truth, recon_labels=None, true_labels=torch.arange(8))
    assert [perm[o].item() for o in s.order] == list(range(8))


def test_rectangular_matching() -> None:
    truth = images(5)
    more = torch.cat([images(3, seed=11), noisy(truth, 0.02)])  # 8 recons, last 5 are good
    r_idx, t_idx = match(more, truth)
    assert list(t_idx) == list(range(5)) and list(r_idx) == [3, 4, 5, 6, 7]
    fewer = noisy(truth[[4, 1]], 0.02)
    r_idx, t_idx = match(fewer, truth)
    assert sorted(zip(t_idx.tolist(), r_idx.tolist())) == [(1, 1), (4, 0)]
    s = score(fewer, truth, recon_labels=None, true_labels=torch.zeros(5, dtype=torch.long))
    assert s.order == [-1, 1, -1, -1, 0]
    assert s.flat["n_matched"] == 2 and s.flat["fraction_recovered"] == pytest.approx(2 / 5)
    assert s.per_sample[0]["recon_index"] is None and s.per_sample[0]["recovered"] is False


def test_label_accuracy_cases() -> None:
    assert label_accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])) == pytest.approx(2 / 3)
    assert label_accuracy([0, 0], [0, 0]) == 1.0
    with pytest.raises(GialabError):
        label_accuracy([1, 2], [1, 2, 3])
    assert multiset_label_accuracy([1, 2, 2], [1, 1, 2]) == pytest.approx(2 / 3)
    assert multiset_label_accuracy([2, 1, 1], [1, 1, 2]) == 1.0
    assert multiset_label_accuracy([5, 5, 5, 1], [1, 2]) == 0.5
    assert math.isnan(multiset_label_accuracy([], []))


# ---- score() ----------------------------------------------------------------------------


def test_score_fraction_recovered_and_labels() -> None:
    truth = images(6)
    good = noisy(truth[:3], 0.005)  # ~46 dB
    bad = noisy(truth[3:], 0.25)  # ~13 dB
    recon = torch.cat([bad, good])  # shuffled: recon 3..5 are truth 0..2
    true_labels = torch.tensor([0, 1, 2, 3, 4, 5])
    recon_labels = torch.tensor([3, 4, 9, 0, 1, 2])  # recon 2 (= truth 5) wrong
    s = score(recon, truth, recon_labels=recon_labels, true_labels=true_labels)
    f = s.flat
    assert isinstance(s, Scores)
    assert s.order == [3, 4, 5, 0, 1, 2]
    assert f["n_recovered"] == 3 and f["fraction_recovered"] == pytest.approx(0.5)
    assert [p["recovered"] for p in s.per_sample] == [True] * 3 + [False] * 3
    assert f["label_accuracy"] == pytest.approx(5 / 6)
    assert f["label_multiset_accuracy"] == pytest.approx(5 / 6)
    assert f["lpips_mean"] is None
    assert f["psnr_max"] > 40 > 20 > f["psnr_min"]
    assert f["psnr_min"] <= f["psnr_median"] <= f["psnr_max"]
    for key in ("mse_mean", "psnr_mean", "ssim_mean", "ssim_max", "ms_ssim_mean", "dct_cosine_mean",
                "avd_mean", "iip_pixel", "iip_feature", "rdlv_mean"):
        assert isinstance(f[key], float), key
    assert f["iip_pixel"] >= 0.5
    assert score(recon, truth, recon_labels=None, true_labels=true_labels).flat["label_accuracy"] is None
    json.dumps(s.as_dict(), allow_nan=False)


def test_score_perfect_and_nan() -> None:
    truth = images(3, c=1, size=28)
    perfect = score(truth.clone(), truth, recon_labels=None, true_labels=torch.arange(3))
    assert perfect.flat["psnr_mean"] == PSNR_CAP_DB and perfect.flat["fraction_recovered"] == 1.0
    assert perfect.flat["iip_pixel"] == 1.0 and perfect.flat["avd_mean"] == 0.0
    recon = truth.clone()
    recon[1, 0, 3, 3] = float("nan")
    s = score(recon, truth, recon_labels=None, true_labels=torch.arange(3))
    assert s.flat["n_recovered"] == 2 and s.flat["n_invalid_recon"] == 1
    assert s.per_sample[1]["recovered"] is False and s.per_sample[1]["psnr"] is None
    assert s.flat["iip_pixel"] == pytest.approx(2 / 3)
    json.dumps(s.as_dict(), allow_nan=False)
    all_nan = score(torch.full_like(truth, float("nan")), truth, recon_labels=None, true_labels=torch.arange(3))
    assert all_nan.flat["psnr_mean"] is None and all_nan.flat["fraction_recovered"] == 0.0


# ---- LPIPS ------------------------------------------------------------------------------


def write_lpips_weights(path, seed: int = 0) -> None:
    """A random-weights file in the expected format: torchvision alexnet.features + lpips heads."""
    g = torch.Generator().manual_seed(seed)
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    state = {}
    for idx, (out_c, in_c, k) in convs.items():
        state[f"features.{idx}.weight"] = torch.randn(out_c, in_c, k, k, generator=g) / math.sqrt(in_c * k * k)
        state[f"features.{idx}.bias"] = 0.01 * torch.randn(out_c, generator=g)
    for k, c in enumerate((64, 192, 384, 256, 256)):
        state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g) / c
    state["classifier.1.weight"] = torch.zeros(2, 2)  # extra keys are ignored
    torch.save(state, path)


def test_lpips_from_local_file(tmp_path) -> None:
    path = tmp_path / "lpips_alex.pt"
    write_lpips_weights(path)
    assert lpips_available(path)
    for size, c in ((32, 3), (8, 1), (64, 3)):
        x = images(2, c=c, size=size)
        same = lpips(x, x, path)
        assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
        assert (lpips(x, torch.rand_like(x), path) > 0).all()
    truth = images(2)
    s = score(noisy(truth, 0.1), truth, recon_labels=None, true_labels=torch.arange(2), lpips_weights=path)
    assert isinstance(s.flat["lpips_mean"], float) and s.flat["lpips_mean"] > 0


def test_lpips_missing_or_bad_file(tmp_path) -> None:
    x = images(1)
    missing = tmp_path / "nope.pt"
    assert not lpips_available(missing) and not lpips_available(None)
    with pytest.raises(GialabError, match="does not exist"):
        lpips(x, x, missing)
    with pytest.raises(GialabError, match="does not exist"):
        score(x, x, recon_labels=None, true_labels=torch.tensor([0]), lpips_weights=missing)
    bad = tmp_path / "bad.pt"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, bad)
    with pytest.raises(GialabError, match="lacks"):
        lpips(x, x, bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert not lpips_available(junk)
    assert score(x, x, recon_labels=None, true_labels=torch.tensor([0])).flat["lpips_mean"] is None
