"""Inverting Gradients: end to end through the runner, plus its batching and early-stop promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gialab
from gialab.attacks.base import AttackContext
from gialab.attacks.optimization.inverting_gradients import InvertingGradients, InvertingGradientsParams
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.models.convnet import ConvNet
from gialab.threats import Capability, Observation

SPEC = DataSpec("tiny", (3, 16, 16), 4, ("a", "b", "c", "d"), (0.5,) * 3, (0.25,) * 3)


def _observation(n: int = 1, labels: bool = False) -> tuple[Observation, torch.Tensor]:
    torch.manual_seed(0)
    model = ConvNet(SPEC.shape, SPEC.num_classes, width=4).train()
    x = torch.rand(n, *SPEC.shape)
    y = torch.arange(n) % SPEC.num_classes
    update = tuple(g.detach() for g in torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters())))
    obs = Observation(
        threat_model="honest-but-curious-server", capabilities=frozenset({Capability.OBSERVE_INDIVIDUAL}),
        round=0, data=SPEC, model=model, update_kind="gradient", participants=(0,), target=0,
        updates={0: update}, example_counts={0: n}, labels={0: y} if labels else None)
    return obs, x


def _attack(**kw: object) -> InvertingGradients:
    return InvertingGradients(InvertingGradientsParams(**kw), AttackContext(seed=3))


@pytest.mark.parametrize("n", [1, 2])
def test_batched_restarts_equal_one_by_one(n: int) -> None:
    obs, _ = _observation(n, labels=True)
    kw = dict(iterations=6, restarts=3, tv=1e-2)
    together = _attack(batched=True, **kw).reconstruct(obs)
    apart = _attack(batched=False, **kw).reconstruct(obs)
    assert together.details["best_restart"] == apart.details["best_restart"]
    assert torch.allclose(together.images, apart.images, atol=1e-5)
    assert together.details["gradient_distance"] == pytest.approx(apart.details["gradient_distance"], rel=1e-4)


def test_optimization_lowers_the_distance_and_stays_in_the_box() -> None:
    obs, _ = _observation()
    short = _attack(iterations=1).reconstruct(obs)
    longer = _attack(iterations=40).reconstruct(obs)
    assert longer.details["gradient_distance"] < short.details["gradient_distance"]
    assert 0 <= float(longer.images.min()) and float(longer.images.max()) <= 1
    assert longer.labels is not None and longer.labels.tolist() == [0]  # iDLG at batch 1


def test_early_stop_stops() -> None:
    obs, _ = _observation()
    rec = _attack(iterations=500, lr=1e-9, early_stop_patience=2).reconstruct(obs)
    assert rec.details["iterations"] < 20
    full = _attack(iterations=8, lr=1e-9).reconstruct(obs)
    assert full.details["iterations"] == 8


def test_batch_without_labels_infers_them_from_the_last_layer() -> None:
    obs, _ = _observation(2)
    rec = _attack(iterations=1).reconstruct(obs)
    assert sorted(rec.labels.tolist()) == [0, 1]


PSNR_THRESHOLD = 9.5  # dB on the preset image: the grey start scores ~8.3, 60 steps ~10.7 on pixels
PYRAMID_GAIN = 0.5  # dB the preset's pyramid must add at 60 steps (measured: 12.5 vs 10.7)


def test_end_to_end_beats_doing_nothing(tmp_path: Path) -> None:
    nothing = gialab.run("inverting-gradients", out=tmp_path / "a", seed=0, set={"attack.iterations": 1})
    pixels = gialab.run("inverting-gradients", out=tmp_path / "b", seed=0,
                        set={"attack.iterations": 60, "attack.pyramid": 1})
    real = gialab.run("inverting-gradients", out=tmp_path / "c", seed=0, set={"attack.iterations": 60})
    assert nothing.metrics["psnr_mean"] < PSNR_THRESHOLD < pixels.metrics["psnr_mean"]
    assert real.metrics["psnr_mean"] > pixels.metrics["psnr_mean"] + PYRAMID_GAIN
    assert real.metrics["ssim_mean"] > nothing.metrics["ssim_mean"]
    assert real.metrics["label_accuracy"] == 1.0
    assert real.reconstruction.details["iterations"] == 60


def test_bfloat16_lowers_the_distance_one_restart_at_a_time() -> None:
    """Reduced precision changes the arithmetic, not the method: the distance still falls and the
    images come back float32. Restarts run one by one (autocast does not compose with the vmapped
    double backward), so ``batched`` gives the same numbers."""
    obs, _ = _observation()
    kw = dict(iterations=40, restarts=2, precision="bfloat16")
    short = _attack(iterations=1, precision="bfloat16").reconstruct(obs)
    together = _attack(batched=True, **kw).reconstruct(obs)
    apart = _attack(batched=False, **kw).reconstruct(obs)
    assert together.images.dtype == torch.float32
    assert together.details["gradient_distance"] < short.details["gradient_distance"]
    assert torch.equal(together.images, apart.images)
    full = _attack(batched=False, iterations=40, restarts=2).reconstruct(obs)
    assert not torch.equal(full.images, together.images)  # the precision took effect
