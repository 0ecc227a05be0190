"""Sybil devices (Boenisch et al. 2023a): the protocol enrols them, they strip the victim of every
noise share but its own, and trap weights read the exposed update; ablation and refusals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gialab
from gialab.defenses.dp_distributed import DistributedDP, DistributedDPParams
from gialab.defenses.dp_local import clip_to_norm
from gialab.defenses.secure_aggregation import SecureAggregation
from gialab.data import load_dataset
from gialab.errors import GialabError
from gialab.fl import Client, FLSetup, Protocol, ServerPlan, SybilDevices, fedsgd_update
from gialab.runner import RunResult
from gialab.threats import Capability, plan_capabilities

SIGMA, CLIP, M = 2e-5, 1.0, 10  # the preset's noise: sybils recover, the honest round does not (see below)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 2000), nn.ReLU(), nn.Linear(2000, 3))  # ~32k coordinates


def _clients(n: int) -> list[Client]:
    g = torch.Generator().manual_seed(0)
    return [Client(c, torch.rand(2, 3, 2, 2, generator=g), torch.randint(0, 3, (2,), generator=g)) for c in range(n)]


def _flat(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])


def _protocol(clients: int, per_round: int, **kwargs: Any) -> Protocol:
    return Protocol(_model(), _clients(clients), FLSetup(clients_per_round=per_round), batch_size=2, **kwargs)


def test_sybils_fill_the_round_count_in_m_and_leave_the_victim_its_own_share() -> None:
    sigma, clip = 3.0, 1.0  # noise far above the gradient, so the update's spread is the share itself
    dp = DistributedDP(DistributedDPParams(clip=clip, noise_multiplier=sigma))
    protocol = _protocol(3, 5, transforms=[dp])
    transcript, truth = protocol.run_round(ServerPlan(participants=(1,), sybils=SybilDevices()))
    assert transcript.participants == (1,) and set(truth.batches) == {1}
    assert tuple(transcript.sybils) == (3, 4, 5, 6)  # ids after the real clients'; 1 + 4 = M = 5 slots
    assert all(u.num_examples == 0 and not _flat(u.tensors).any() for u in transcript.sybils.values())
    victim = transcript.updates[1]
    # Empty sybils weigh nothing: the aggregate is the victim's noised update, bit for bit.
    assert all(torch.equal(a, v) for a, v in zip(transcript.aggregate, victim.tensors))
    # M = 5 was announced (sybils count), so the share is sigma C / sqrt(4); M = 1 would be refused.
    std = _flat(victim.tensors).std().item()
    assert std == pytest.approx(sigma * clip / math.sqrt(4), rel=0.02)  # 32k coordinates: ~0.4% standard error
    assert protocol.participation_log == [(1,)]


def test_known_sybil_updates_are_weighted_in_and_subtract_out() -> None:
    protocol = _protocol(3, 4)
    known = tuple(torch.full_like(p, 0.5) for p in protocol.global_model.parameters())
    transcript, _ = protocol.run_round(ServerPlan(participants=(0,), sybils=SybilDevices(update=known, num_examples=3)))
    n_v, n_s = transcript.updates[0].num_examples, 3 * len(transcript.sybils)
    assert n_v == 2 and len(transcript.sybils) == 3
    for a, v, k in zip(transcript.aggregate, transcript.updates[0].tensors, known):
        assert torch.allclose((a * (n_v + n_s) - n_s * k) / n_v, v, atol=1e-6)


def test_fewer_sybils_leave_slots_to_honest_clients_and_zero_is_the_honest_round() -> None:
    transcript, _ = _protocol(6, 4).run_round(ServerPlan(participants=(2,), sybils=SybilDevices(count=1)))
    assert 2 in transcript.participants and len(transcript.participants) == 3 and len(transcript.sybils) == 1
    transcript, _ = _protocol(6, 4).run_round(ServerPlan(participants=(2,), sybils=SybilDevices(count=0)))
    assert len(transcript.participants) == 4 and not transcript.sybils


def test_sybils_are_secure_aggregation_participants() -> None:
    protocol = _protocol(3, 4, aggregator=SecureAggregation())
    transcript, _ = protocol.run_round(ServerPlan(participants=(0,), sybils=SybilDevices()))
    exposed, victim = _flat(transcript.aggregate), _flat(transcript.updates[0].tensors)
    assert (exposed - victim).abs().max() < 1e-6  # the fixed point's 2^-24, nothing else


def test_a_sybil_plan_needs_the_sybil_capability() -> None:
    model = _model()
    needs = plan_capabilities(ServerPlan(participants=(0,), sybils=SybilDevices()), model)
    assert needs == {Capability.SYBIL_CLIENTS, Capability.CONTROL_SAMPLING}
    assert Capability.SYBIL_CLIENTS not in plan_capabilities(ServerPlan(sybils=SybilDevices(count=0)), model)


@pytest.mark.parametrize(("plan", "message"), [
    (ServerPlan(participants=(0,), sybils=SybilDevices(count=4)), "plans 4 sybil devices, but a round of 4 "
     "participants (fl.clients_per_round) has room for 3 beside the 1 client(s) it chose; use at most 3 sybils"),
    (ServerPlan(participants=(0, 1, 2, 3), sybils=SybilDevices()), "has none beside the 4 client(s) the server chose"),
    (ServerPlan(sybils=SybilDevices(count=4)), "has no real client"),
    (ServerPlan(participants=(9,), sybils=SybilDevices()), "participants [9] are not clients"),
])
def test_impossible_sybil_plans_are_one_line_errors(plan: ServerPlan, message: str) -> None:
    with pytest.raises(GialabError) as info:
        _protocol(6, 4).run_round(plan)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(GialabError, match="count must be >= 0"):
        SybilDevices(count=-1)


# End to end on the FC net, batch 4, plain mean (secure aggregation gives the same aggregate up to
# 2^-24, checked at M = 3 below; at M = 10 it costs ~30 s on 2 loaded cores). Measured at
# sigma = 2e-5, seeds 0-2: sybils recover 0.5, 0.75, 0.5 of the victim's 4 samples; the honest round
# (attack.sybils=0, 10 real clients) 0, 0, 0. At sigma = 0 both recover 0.5-1.0.

def _run(out_dir: Path, **sets: Any) -> RunResult:
    base = {"defenses": [{"name": "dp_distributed", "clip": CLIP, "noise_multiplier": SIGMA}],
            "clients": M, "fl.clients_per_round": M}
    return gialab.run("sybil", out=out_dir, seed=0, set=base | sets)


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return _run(tmp_path_factory.mktemp("sybil") / "runs")


def test_sybils_expose_the_victim_and_trap_weights_recover_it(isolated: RunResult, out_dir: Path) -> None:
    assert isolated.metrics["fraction_recovered"] >= 0.5  # measured 0.5: 2 of 4 samples at >= 30 dB
    honest = _run(out_dir, **{"attack.sybils": 0})  # the same attack, the victim among 9 honest clients
    assert honest.metrics["fraction_recovered"] <= 0.25  # measured 0.0
    assert "victim_noise_std" not in honest.metrics  # nothing isolated, so no update is claimed as the victim's


def test_the_victim_carries_its_share_alone(isolated: RunResult) -> None:
    share, promised = SIGMA * CLIP / math.sqrt(M - 1), SIGMA * CLIP
    report = isolated.summary["defense_report"]["dp_distributed"]
    assert report["noise_std_promised"] == promised and report["noise_std_isolated"] == pytest.approx(share, rel=1e-12)
    m = isolated.metrics
    assert m["noise_std_promised"] == promised
    assert m["victim_noise_std"] == pytest.approx(share, rel=0.01)  # 7M coordinates: ~0.03% standard error
    assert m["victim_noise_ratio"] == pytest.approx(1 / math.sqrt(M - 1), rel=0.01)
    details = isolated.reconstruction.details
    assert details["sybils"] == M - 1 and details["round_size"] == M and details["isolated"] == 1.0
    assert details["noise_std_estimated"] == pytest.approx(share, rel=0.02)  # from idle rows, no truth
    # The same residual by hand: the exposed aggregate minus the victim's clipped clean update.
    victim = isolated.scenario.victim
    exposed = isolated.reconstruction.isolated_update
    assert exposed is not None and exposed.client == victim and exposed.model is not None
    x = isolated.truth_images
    labels = _victim_labels(isolated)
    clean = clip_to_norm(fedsgd_update(exposed.model, F.cross_entropy, x, labels), CLIP)
    residual = _flat(exposed.update) - _flat(clean)
    assert residual.std().item() == pytest.approx(share, rel=0.01)


def _victim_labels(result: RunResult) -> torch.Tensor:
    """The victim's labels, found by looking its images up in the dataset (a run keeps no labels)."""
    data = load_dataset(result.scenario.dataset, seed=result.scenario.seed)
    flat = data.images.flatten(1)
    index = [int((flat == x.flatten()).all(dim=1).nonzero()[0]) for x in result.truth_images]
    return data.labels[index]


def test_secure_aggregation_with_sybils_end_to_end(out_dir: Path) -> None:
    """Sybils mask and unmask like clients: the aggregate is the mean's, up to the fixed point's 2^-24."""
    m = 3  # 2 sybils; secure aggregation's cost grows with the square of the round size
    sigma = SIGMA * math.sqrt((m - 1) / (M - 1))  # the victim's share as at M = 10
    dp = {"name": "dp_distributed", "clip": CLIP, "noise_multiplier": sigma}
    results = [gialab.run("sybil", out=out_dir, seed=0, set={"clients": m, "fl.clients_per_round": m,
                                                              "defenses": [dp, *aggregator]})
               for aggregator in ([], ["secure_aggregation"])]
    plain, secure = (r.metrics for r in results)
    assert secure["victim_noise_std"] == pytest.approx(sigma * CLIP / math.sqrt(m - 1), rel=0.01)
    assert secure["victim_noise_std"] == pytest.approx(plain["victim_noise_std"], rel=1e-3)
    assert secure["fraction_recovered"] == plain["fraction_recovered"] >= 0.5  # measured 0.5 both


def test_more_sybils_than_the_round_holds_is_one_line_and_exit_code_2(cli, out_dir: Path) -> None:
    result = cli("run", "sybil", "--set", "attack.sybils=10", "--out", str(out_dir))
    assert result.code == 2 and "plans 10 sybil devices" in result.err and "use at most 9 sybils" in result.err
    assert result.err.strip().count("\n") == 0
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_sybils_without_the_capability_are_refused_before_any_work(cli, out_dir: Path) -> None:
    result = cli("run", "sybil", "--set", "extra_capabilities=[]", "--out", str(out_dir))
    assert result.code == 2 and "needs capability sybil_clients" in result.err
    assert result.err.strip().count("\n") == 0
