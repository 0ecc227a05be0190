"""Model inconsistency (Pasquini et al. 2022): the dead ReLU layer, the claim the metrics check,
the attack end to end under secure aggregation, and the refusals it owes the user."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gialab
from gialab.attacks.base import IsolatedUpdate
from gialab.attacks.isolation.dead_layer import dead_model, forward_calls, kill, relu_candidates, residual_parameters
from gialab.attacks.isolation.inconsistency import freeze
from gialab.attacks.optimization.label_inference import idlg_label
from gialab.errors import GialabError
from gialab.metrics.isolation import update_isolation_scores

SHAPE = (1, 3, 4)


def _gradients(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((5, *SHAPE), generator=generator)
    y = torch.randint(0, 3, (5,), generator=generator)
    grads = torch.autograd.grad(F.cross_entropy(model.train()(x), y), list(model.parameters()))
    return {n: g for (n, _), g in zip(model.named_parameters(), grads, strict=True)}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


class _Shortcut(nn.Module):
    """``relu(a(x))`` then a block ``relu(b(h)) + h``: killing ``b``'s ReLU leaves the shortcut open."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.out = nn.Linear(12, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.relu_a, self.relu_b = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu_a(self.a(x.flatten(1)))
        return self.out(self.relu_b(self.b(h)) + h)


def test_a_dead_relu_layer_leaves_only_the_last_bias_exactly() -> None:
    model = _mlp()
    dead = dead_model(model, SHAPE, 3)
    assert (dead.candidate.layer, dead.candidate.relu) == ("3", "4")  # the last one: fewest changes
    assert dead.residual == ("5.bias",)
    for seed in range(3):  # real data, not the probe's: every other gradient is exactly zero
        grads = _gradients(dead.model, seed)
        assert all(torch.count_nonzero(g) == 0 for n, g in grads.items() if n != "5.bias")
        assert torch.count_nonzero(grads["5.bias"]) > 0  # softmax - onehot: no finite parameter removes it
    assert dead_model(model, SHAPE, 3, kind="model_delta").residual == ("5.bias",)  # FedAvg steps too
    # The victim's model is untouched: the dead one is a copy.
    assert all(torch.count_nonzero(g) > 0 for g in _gradients(model, 0).values())


def test_a_shortcut_around_the_relu_is_seen_and_an_earlier_layer_killed() -> None:
    model = _Shortcut()
    calls = forward_calls(model, SHAPE)
    late, early = relu_candidates(model, calls)[::-1]
    assert late.layer == "b" and early.layer == "a"
    around = residual_parameters(kill(model, late, calls, 1.0)[0], SHAPE, 3)
    assert "out.weight" in around  # h still reaches the classifier through the shortcut
    dead = dead_model(model, SHAPE, 3)
    assert dead.candidate.layer == "a" and dead.residual == ("out.bias",)


def test_conv_batchnorm_relu_is_killed_through_the_batchnorm_shift() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    dead = dead_model(model, SHAPE, 3)
    assert dead.candidate == type(dead.candidate)("0", "1", "2", 2)
    assert dead.residual == ("5.bias",)
    grads = _gradients(dead.model, 1)
    assert all(torch.count_nonzero(g) == 0 for n, g in grads.items() if n != "5.bias")


def test_a_model_without_a_relu_layer_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Sigmoid(), nn.Linear(8, 3))
    with pytest.raises(GialabError, match="followed by a ReLU"):
        dead_model(model, SHAPE, 3)


def test_frozen_parameters_keep_the_outputs_and_leave_the_update() -> None:
    model = _mlp()
    frozen = freeze(model, ("5.bias",))
    x = torch.rand((2, *SHAPE))
    assert torch.equal(frozen(x), model(x))
    assert [n for n, _ in frozen.named_parameters()] == [n for n, _ in model.named_parameters()][:-1]
    # iDLG now reads the label off the last layer's weight rows (ReLU features are non-negative).
    x1, label = torch.rand((1, *SHAPE)), torch.tensor([2])
    update = torch.autograd.grad(F.cross_entropy(frozen(x1), label), list(frozen.parameters()))
    assert int(idlg_label(frozen, update)) == 2


def test_victim_update_cosine_measures_the_claimed_parameters() -> None:
    true = (torch.tensor([1.0, 2.0]), torch.tensor([3.0]))
    aggregate = (torch.tensor([0.1, 0.2]), torch.tensor([-5.0]))  # 1/10 of the victim's, plus a residual
    scores = update_isolation_scores(IsolatedUpdate(0, aggregate, (0,)), true)
    assert scores["victim_update_cosine"] == pytest.approx(1.0)
    assert scores["victim_update_cosine_all"] < 0
    assert scores["victim_update_claimed"] == pytest.approx(2 / 3)


# --- End to end: the preset at 20 clients (100 in bench/inconsistency.py) --------------------------

SMALL = {"clients": 20}


def test_secure_sum_is_the_victims_update_and_its_batch_comes_back(out_dir: Path) -> None:
    result = gialab.run("inconsistency", out=out_dir, seed=0, **SMALL)
    m = result.metrics
    assert m["victim_update_cosine"] >= 0.999  # measured 1 - 4e-15 (secure aggregation's fixed point)
    assert m["fraction_recovered"] == 1.0 and m["psnr_min"] >= 90  # measured 100 dB (the cap)
    assert result.reconstruction.source == 0
    assert result.reconstruction.details["rescale"] == 20  # the mean over 20 equal batches, undone
    # As well as without secure aggregation: the inner attack alone on the victim's own update.
    alone = {"name": "robbing-the-fed", **result.scenario.attack.hyperparameters["inner_params"]}
    plain = gialab.run("inconsistency", out=out_dir, seed=0, defenses=[], attack=alone, **SMALL)
    assert plain.reconstruction.source == 0 and plain.metrics["fraction_recovered"] == 1.0
    assert m["psnr_mean"] >= plain.metrics["psnr_mean"] - 1
    # The control: every client gets the imprint model, the secure sum mixes 20 batches of 4.
    control = gialab.run("inconsistency", out=out_dir, seed=0, attack__silence=False, **SMALL)
    assert control.metrics["victim_update_cosine"] < 0.99  # measured 0.92
    assert control.metrics["fraction_recovered"] <= 0.25  # measured 0.25 (one image alone in its bin)


def test_an_honest_attack_inverts_the_isolated_update(out_dir: Path) -> None:
    # fc-leakage needs one client's update; secure aggregation alone would refuse it, and the
    # mixed sum of three clients gives a blend. Isolated, it reads the victim's image exactly.
    setup = {"dataset": "digits", "model": "fcnet", "clients": 3, "batch_size": 1, "examples_per_client": 1,
             "attack.inner": "fc-leakage", "attack.inner_params": {}}
    result = gialab.run("inconsistency", out=out_dir, seed=0, set=setup)
    assert result.metrics["victim_update_cosine"] >= 0.999
    assert result.metrics["psnr_mean"] >= 60  # measured 100 dB
    assert result.reconstruction.details["residual_parameters"] == 10  # the last bias only
    control = gialab.run("inconsistency", out=out_dir, seed=0, set=setup | {"attack.silence": False})
    assert control.metrics["psnr_mean"] < 30  # measured 17.7 dB


# --- Refusals: one line, exit code 2, before the first round -------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["victim=100"], "victim 100 is not a client; valid ids: 0..99"),
    (["attack.inner=nope"], "unknown attack 'nope'"),
    (["attack.inner=inconsistency"], "cannot be inconsistency itself"),
    (["attack.inner_params.bins=3"], "attack 'robbing-the-fed' has no hyperparameter 'bins'"),
    (["attack.inner_params.num_bins=1"], "attack.inner_params.num_bins"),
    (["attack.inner=decepticons"], "reconstructs text"),
    (["attack.inner=idlg", "attack.inner_params={}"], "LeNet) has none"),
    (["threat_model=honest-but-curious-server"], "needs capability"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, out_dir: Path, overrides: list[str], message: str) -> None:
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = cli("run", "inconsistency", *sets, "--out", str(out_dir))
    assert result.code == 2, result.err
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not out_dir.exists() or not any(out_dir.iterdir())
