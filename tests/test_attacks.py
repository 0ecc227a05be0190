"""End-to-end attack tests on tiny data, with thresholds a broken attack fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gialab
from gialab.attacks import catalog, get_attack, implemented
from gialab.attacks.taxonomy import RECORDS
from gialab.attacks.optimization.label_inference import idlg_label
from gialab.errors import GialabError
from gialab.fl import fedsgd_update
from gialab.models import build_model


def test_fc_leakage_is_exact_at_batch_one(out_dir: Path) -> None:
    result = gialab.run("fc-leakage", out=out_dir, seed=3)
    truth, recon = result.truth_images, result.matched_images
    relative = (recon - truth).norm() / truth.norm()
    assert relative < 1e-4
    assert result.metrics["fraction_recovered"] == 1.0


def test_fc_leakage_recovers_samples_isolated_by_relu_rows(out_dir: Path) -> None:
    # 1000 ReLU rows at batch 4: each sample has rows that fire for it alone, so all come back exactly.
    small = gialab.run("fc-leakage", out=out_dir, seed=0, batch_size=4)
    assert small.metrics["n_recon"] == 4 and small.metrics["fraction_recovered"] == 1.0
    assert small.metrics["psnr_min"] > 60
    # At batch 64 rows that fire for one sample alone are rare: natural leakage stops scaling.
    large = gialab.run("fc-leakage", out=out_dir, seed=0, batch_size=64)
    assert large.metrics["psnr_max"] > 60
    assert large.metrics["fraction_recovered"] < 0.5


def test_dlg_with_idlg_labels_reaches_25_db_on_lenet_batch_one(out_dir: Path) -> None:
    result = gialab.run("idlg", out=out_dir, seed=0)  # the preset's 300 L-BFGS steps
    assert result.metrics["psnr_mean"] >= 25.0
    assert result.metrics["label_accuracy"] == 1.0


def test_dlg_that_does_not_optimize_fails_the_threshold(out_dir: Path) -> None:
    result = gialab.run("idlg", out=out_dir, seed=0, attack__iterations=1, attack__max_evals=1)
    assert result.metrics["psnr_mean"] < 25.0


def test_dlg_joint_labels_recover_image_and_label(out_dir: Path) -> None:
    result = gialab.run("dlg", out=out_dir, seed=1)  # the preset optimizes labels jointly
    assert result.metrics["psnr_mean"] >= 25.0
    assert result.metrics["label_accuracy"] == 1.0


@pytest.mark.parametrize("model_name", ["lenet", "fcnet", "convnet"])
def test_idlg_label_inference_is_exact(model_name: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_name, (3, 32, 32), 10)
    for label in range(10):
        x = torch.rand(1, 3, 32, 32)
        update = fedsgd_update(model, F.cross_entropy, x, torch.tensor([label]))
        assert int(idlg_label(model, update)) == label


def test_idlg_refuses_a_batch(out_dir: Path) -> None:
    with pytest.raises(GialabError, match="one sample"):
        gialab.run("idlg", out=out_dir, batch_size=2)


def test_catalog_covers_the_survey_and_figure1() -> None:
    records = {r["name"]: r for r in catalog()}
    figure1 = {n for n, r in records.items() if r["figure1"]}
    assert figure1 >= {"disaggregation", "trap-weights", "robbing-the-fed", "fishing", "decepticons", "cgi",
                       "inconsistency", "sybil"}
    assert {"dlg", "idlg", "inverting-gradients", "gradinversion", "rgap", "cocktail-party"} <= set(records)
    assert records["dlg"]["implemented"] and records["fc-leakage"]["implemented"]
    assert records["sybil"]["implemented"]
    threat_models = {r["threat_model"] for r in records.values()}
    assert threat_models == {"honest-but-curious-server", "malicious-server", "malicious-client"}


def test_every_implemented_attack_has_a_record_and_a_preset() -> None:
    presets = gialab.scenario.preset_names()
    for name, cls in implemented().items():
        assert name in RECORDS and name in presets
        assert cls.requires, f"{name} declares no capabilities"


def test_unknown_attack_lists_the_valid_names() -> None:
    with pytest.raises(GialabError, match="unknown attack 'nope'; valid: .*dlg"):
        get_attack("nope")
