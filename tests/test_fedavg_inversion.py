"""fedavg-inversion: the unrolled local training is exact, the attack beats its starting point, refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gialab
from gialab.attacks.optimization.fedavg_inversion import simulate_update
from gialab.errors import GialabError
from gialab.fl.setup import FLSetup
from gialab.fl.training import fedavg_update
from gialab.models import build_model


@pytest.mark.parametrize("model_name", ["lenet", "fcnet"])
def test_simulated_update_equals_the_clients(model_name: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_name, (3, 16, 16), 10)
    x, y = torch.rand(5, 3, 16, 16), torch.tensor([1, 2, 3, 1, 0])
    setup = FLSetup(algorithm="fedavg", local_epochs=2, local_batch_size=2, learning_rate=0.1)
    observed = fedavg_update(copy.deepcopy(model), F.cross_entropy, x, y, setup)
    simulated = simulate_update(model, x, y, setup)
    for o, s in zip(observed, simulated, strict=True):
        assert torch.allclose(o, s.detach(), atol=1e-6)


def test_fedavg_inversion_beats_its_start(out_dir: Path) -> None:
    result = gialab.run("fedavg-inversion", out=out_dir, seed=0, attack__iterations=300)
    assert result.metrics["psnr_mean"] >= 12.0
    assert result.metrics["label_accuracy"] == 1.0
    idle = gialab.run("fedavg-inversion", out=out_dir, seed=0, attack__iterations=1)
    assert idle.metrics["psnr_mean"] < 12.0


def test_fedavg_inversion_needs_local_hyperparameters(out_dir: Path) -> None:
    with pytest.raises(GialabError, match="local_hyperparameters"):
        gialab.run("fedavg-inversion", out=out_dir, side_information=["labels"], attack__iterations=1)


def test_fedavg_inversion_refuses_fedsgd(out_dir: Path) -> None:
    with pytest.raises(GialabError, match="model deltas"):
        gialab.run("fedavg-inversion", out=out_dir, fl__algorithm="fedsgd", attack__iterations=1)
