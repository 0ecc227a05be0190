"""The threat gate: what each threat model observes, side information, capability checks, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl import Client, FLSetup, Protocol, ServerPlan
from gialab.threats import (
    THREAT_MODELS, Capability, SideInformation, check_grants, granted_capabilities, observe,
    plan_capabilities, validate_update,
)

SPEC = DataSpec("toy", (1, 2, 2), 3, ("a", "b", "c"), (0.5,), (0.2,))


def round_of_two(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 1])
    protocol = Protocol(model, [Client(0, x[:2], y[:2]), Client(1, x[2:], y[2:])], FLSetup(), batch_size=2)
    return model, *protocol.run_round()


def view(threat: str, side=(), aggregate_only: bool = False):
    model, transcript, truth = round_of_two()
    tm = THREAT_MODELS[threat]
    granted = granted_capabilities(tm, aggregate_only=aggregate_only)
    return observe(transcript, truth, threat=tm, granted=granted, data=SPEC, target=0, side_information=side)


def test_honest_but_curious_server_sees_individual_updates_not_labels() -> None:
    obs = view("honest-but-curious-server")
    assert set(obs.updates) == {0, 1} and obs.aggregate is not None
    assert obs.labels is None and obs.fl_setup is None
    assert obs.example_counts == {0: 2, 1: 2}  # counts travel with each update
    assert len(obs.target_update()) == 2


def test_declared_side_information_passes_the_gate() -> None:
    obs = view("honest-but-curious-server", side=(SideInformation.LABELS, SideInformation.LOCAL_HYPERPARAMETERS))
    assert torch.equal(obs.labels[1], torch.tensor([2, 1]))
    assert obs.fl_setup is not None and obs.fl_setup.algorithm == "fedsgd"


def test_malicious_client_sees_only_the_aggregate() -> None:
    obs = view("malicious-client")
    assert obs.updates == {} and obs.aggregate is not None and obs.example_counts is None
    with pytest.raises(GialabError, match="not observable"):
        obs.target_update()


def test_aggregate_only_defense_withdraws_individual_updates() -> None:
    obs = view("malicious-server", aggregate_only=True)
    assert obs.updates == {}
    assert Capability.OBSERVE_INDIVIDUAL not in obs.capabilities


def test_observation_carries_no_ground_truth_images() -> None:
    model, transcript, truth = round_of_two()
    obs = view("malicious-server", side=tuple(SideInformation))
    held = [v for v in vars(obs).values() if isinstance(v, torch.Tensor)]
    assert held == []  # images only ever live in RoundTruth
    assert not any(hasattr(v, "images") for v in vars(obs).values())


def test_missing_capability_is_named() -> None:
    granted = granted_capabilities(THREAT_MODELS["malicious-client"])
    with pytest.raises(GialabError, match="needs capability observe_individual.*malicious-client"):
        check_grants("dlg", {Capability.OBSERVE_INDIVIDUAL}, granted, "threat model malicious-client")


def test_plan_capabilities_tell_parameters_from_architecture() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    same = nn.Sequential(nn.Linear(4, 3))
    wider = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    assert plan_capabilities(ServerPlan(model=same), model) == {Capability.MODIFY_PARAMETERS}
    assert plan_capabilities(ServerPlan(model=wider), model) == {Capability.MODIFY_ARCHITECTURE}
    assert plan_capabilities(ServerPlan(per_client={0: same}, participants=(0,)), model) == {
        Capability.MODIFY_PARAMETERS, Capability.PER_CLIENT_MODELS, Capability.CONTROL_SAMPLING}


def test_shape_mismatch_between_model_and_gradients_is_refused() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(GialabError, match=r"weight has shape \(3, 5\) but the model expects \(3, 4\)"):
        validate_update(model, (torch.zeros(3, 5), torch.zeros(3)))
    with pytest.raises(GialabError, match="has 1 tensors but the model has 2"):
        validate_update(model, (torch.zeros(3, 4),))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_an_observation_is_refused(bad: float) -> None:
    model, transcript, truth = round_of_two()
    poisoned = transcript.updates[0].tensors[0].clone()
    poisoned[0, 0] = bad
    object.__setattr__(transcript.updates[0], "tensors", (poisoned, *transcript.updates[0].tensors[1:]))
    tm = THREAT_MODELS["honest-but-curious-server"]
    with pytest.raises(GialabError, match="NaN or Inf"):
        observe(transcript, truth, threat=tm, granted=tm.capabilities, data=SPEC, target=0)
