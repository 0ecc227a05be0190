"""R-GAP end to end on CNN6, with a corrupted layer gradient, refusals, and the rank check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gialab
from gialab.attacks import get_attack
from gialab.data import load_dataset
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl import fedsgd_update
from gialab.metrics.image import psnr
from gialab.models import build_model
from gialab.threats import THREAT_MODELS, Observation


def _observation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: DataSpec, update: tuple[torch.Tensor, ...] | None = None
) -> Observation:
    threat = THREAT_MODELS["honest-but-curious-server"]
    update = update if update is not None else fedsgd_update(model, F.cross_entropy, x, y)
    return Observation(
        threat_model=threat.name, capabilities=threat.capabilities, round=0, data=spec, model=model,
        update_kind="gradient", participants=(0,), target=0, updates={0: update}, example_counts={0: len(x)},
    )


def test_rgap_recovers_cnn6_input_above_40_db(out_dir: Path) -> None:
    result = gialab.run("rgap", out=out_dir, seed=0)
    assert result.metrics["psnr_mean"] >= 40.0  # measured: capped at 100 dB, max error ~4e-5
    assert result.metrics["label_accuracy"] == 1.0
    details = result.reconstruction.details
    assert details["rank_deficiency.total"] == 0.0  # CNN6 is fully determined layer by layer (paper, sec. 4)
    assert details["rank.body.0"] == details["unknowns.body.0"] == 3 * 32 * 32
    assert details["forward_residual.body.0"] < 1e-3


def test_rgap_with_one_corrupted_layer_gradient_fails_the_threshold() -> None:
    torch.manual_seed(0)
    data = load_dataset("natural", seed=0)
    model = build_model("cnn6", data.spec.shape, data.spec.num_classes)
    x, y = data.images[:1], data.labels[:1]
    update = list(fedsgd_update(model, F.cross_entropy, x, y))
    attack = get_attack("rgap")(get_attack("rgap").Params())
    noise = torch.randn(update[2].shape, generator=torch.Generator().manual_seed(1))
    update[2] = update[2] + 0.05 * update[2].norm() * noise / noise.norm()  # third conv (body.4), 5% noise
    corrupted = attack.reconstruct(_observation(model, x, y, data.spec, tuple(update)))
    assert float(psnr(corrupted.images, x)) < 30.0  # measured 8.5 dB; the clean gradient gives >= 96 dB
    assert corrupted.details["gradient_residual.body.4"] > 1e-3  # the inconsistency shows in the residuals


REFUSED = [("convnet", "model.bn0 (BatchNorm2d)"), ("resnet18", "bn1 (BatchNorm2d)"), ("fcnet", "rest.0 (ReLU)")]


@pytest.mark.parametrize(("model", "layer"), REFUSED)
def test_rgap_refuses_non_invertible_models_naming_the_layer(out_dir: Path, model: str, layer: str) -> None:
    with pytest.raises(GialabError) as info:
        gialab.run("rgap", out=out_dir, seed=0, model=model)
    message = str(info.value)
    assert layer in message and "\n" not in message
    assert not out_dir.exists() or not any(out_dir.iterdir())  # refused before any round ran


def test_rgap_refuses_max_pooling_and_a_bias_free_classifier() -> None:
    attack = get_attack("rgap")(get_attack("rgap").Params())
    spec = load_dataset("natural", seed=0).spec
    pooled = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 15 * 15, 10)
    )
    with pytest.raises(GialabError, match=r"layer 2 \(MaxPool2d\)"):
        attack.check_model(pooled, spec)
    no_bias = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10, bias=False))
    with pytest.raises(GialabError, match="no bias"):
        attack.check_model(no_bias, spec)


def test_rgap_reports_rank_deficiency_of_a_narrow_layer() -> None:
    # One 3x3 stride-2 output channel on an 8x8x3 input: 16 forward + at most 27 gradient equations
    # for 192 unknowns, so the combined matrix has a rank deficiency of at least 149 (paper, sec. 4).
    torch.manual_seed(0)
    spec = load_dataset("natural", seed=0).spec
    spec = DataSpec(spec.name, (3, 8, 8), spec.num_classes, spec.class_names, spec.mean, spec.std)
    model = nn.Sequential(nn.Conv2d(3, 1, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(16, 10))
    x, y = torch.rand(1, 3, 8, 8), torch.tensor([3])
    result = get_attack("rgap")(get_attack("rgap").Params()).reconstruct(_observation(model, x, y, spec))
    assert result.details["unknowns.0"] == 192
    assert result.details["rank_deficiency.0"] >= 149
    assert result.details["rank_deficiency.total"] == result.details["rank_deficiency.0"]
