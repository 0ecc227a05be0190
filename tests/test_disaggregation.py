"""Gradient disaggregation end to end, its MILP against broken side channels, the gate, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import gialab
from gialab.attacks.decomposition.disaggregation import GradientDisaggregation
from gialab.attacks.decomposition.participation import individual_updates, recover_participation
from gialab.attacks.decomposition.relaxation import relaxed_binary_point
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl import Client, FLSetup, Protocol
from gialab.threats import THREAT_MODELS, Capability, granted_capabilities, observe, participation_report

# u = 10 users, 34 rounds, 3 users a round, three 10-round analytics reports (the last 4 rounds are
# unreported, so unused); iDLG kept short.
SMALL = {"clients": 10, "fl.rounds": 34, "fl.clients_per_round": 3, "analytics_window": 10,
         "attack.inner_params": {"iterations": 100}}


def test_recovers_every_users_participation_and_the_victims_update(out_dir: Path, monkeypatch) -> None:
    seen = []
    original = GradientDisaggregation.observe_round
    monkeypatch.setattr(GradientDisaggregation, "observe_round",
                        lambda self, obs: (seen.append(obs), original(self, obs))[1])
    result = gialab.run("disaggregation", out=out_dir, seed=0, set=SMALL)
    m, details = result.metrics, result.reconstruction.details
    # Measured over seeds 0-4: every user exact, victim update error 2.6e-7..3.1e-7, PSNR 76-92 dB.
    assert m["participation_exact_fraction"] == 1.0
    assert m["victim_update_relative_error"] < 1e-5 and m["victim_update_cosine"] > 0.99999
    assert m["psnr_mean"] >= 40 and m["label_accuracy"] == 1.0
    assert details["victim_unique"] == 1.0 and details["rank"] == 10 and details["rounds"] == 30
    # The gate: every round heard, none naming a participant or showing a single update.
    assert len(seen) == 34
    assert all(o.participants == () and o.updates == {} and o.example_counts is None for o in seen)
    assert [o.round for o in seen if o.participation is not None] == [9, 19, 29]


def test_fedavg_model_deltas_disaggregate_as_well(out_dir: Path) -> None:
    # The unstepped model and a one-batch client make FedAvg's local training repeat exactly too.
    settings = SMALL | {"fl.algorithm": "fedavg", "attack.inner": "fedavg-inversion",
                        "attack.inner_params": {"iterations": 2}, "side_information": ["local_hyperparameters"]}
    m = gialab.run("disaggregation", out=out_dir, seed=0, set=settings).metrics
    assert m["participation_exact_fraction"] == 1.0  # measured: 1.0, victim delta error 3e-6
    assert m["victim_update_relative_error"] < 1e-4


def test_a_server_that_steps_the_model_breaks_the_factorization(out_dir: Path, monkeypatch) -> None:
    # Without the delayed update each round's gradients differ, G has full rank, eq. 3 says
    # nothing, and the counts alone pick wrong vectors.
    monkeypatch.setattr(GradientDisaggregation, "plan_server", lambda self, model, data: None)
    settings = SMALL | {"attack.inner_params": {"iterations": 2}, "attack.unique_check": False}
    try:
        result = gialab.run("disaggregation", out=out_dir, seed=0, set=settings)
    except GialabError as exc:  # no vector for the victim at all is also a failure
        assert "no participation vector" in str(exc)
        return
    assert result.reconstruction.details["null_space_dim"] == 0
    assert result.metrics["participation_exact_fraction"] < 0.7
    assert result.metrics["victim_update_relative_error"] > 0.1


def synthetic(users: int = 20, rounds: int = 60, per_round: int = 4, window: int = 10, seed: int = 0):
    """G = P U with random updates, float32 aggregation, and the analytics windows and counts."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((rounds, users), dtype=np.int8)
    for t in range(rounds):
        truth[t, rng.choice(users, per_round, replace=False)] = 1
    updates = rng.normal(size=(users, 300)).astype(np.float32)
    aggregates = ((truth.astype(np.float32) @ updates) / per_round).astype(np.float64) * per_round
    windows = np.kron(np.eye(rounds // window), np.ones(window))
    return truth, updates, aggregates, windows, windows @ truth


def solve(aggregates, windows, counts, workers: int = 1, tol_scale: float = 1.0, relaxation: bool = True):
    return recover_participation(aggregates, windows, counts, tol_scale=tol_scale, rank_tol=1e-5, time_limit=30,
                                 workers=workers, relaxation=relaxation)


def test_milp_recovers_p_exactly_and_least_squares_the_updates() -> None:
    truth, updates, aggregates, windows, counts = synthetic()
    recovery = solve(aggregates, windows, counts)
    assert (recovery.matrix == truth).all() and recovery.rank == 20
    solved, recovered = individual_updates(aggregates, recovery)
    assert solved == list(range(20))
    assert np.abs(recovered - updates).max() < 1e-4 * np.abs(updates).max()


def test_broken_side_channel_or_null_space_is_caught() -> None:
    truth, _, aggregates, windows, counts = synthetic()

    def exact(recovery) -> float:
        return float((recovery.matrix == truth).all(axis=0).mean())

    shuffled = counts[:, np.random.default_rng(1).permutation(counts.shape[1])]
    assert exact(solve(aggregates, windows, shuffled)) < 0.3  # counts of the wrong users
    assert exact(solve(aggregates, windows, shuffled, relaxation=False)) < 0.3
    # eq. 3 switched off, counts alone. The MILP only: the relaxation projects onto eq. 3's equality
    # whatever its tolerance, so a loose tol_scale does not switch eq. 3 off for it.
    assert exact(solve(aggregates, windows, counts, tol_scale=1e9, relaxation=False)) < 0.3


def test_relaxation_gives_the_milps_answers_and_hands_it_the_users_it_cannot_pin() -> None:
    # n = 3u: the relaxation pins most users (measured 14 of 20); n = 2.5u with u = 12: only a few
    # (measured 3 of 12), the MILP the rest. Either way every vector is the true one.
    for users, rounds, per_round, pinned in ((20, 60, 4, 10), (12, 30, 3, 1)):
        truth, _, aggregates, windows, counts = synthetic(users, rounds, per_round)
        relaxed, milp_only = solve(aggregates, windows, counts), solve(aggregates, windows, counts, relaxation=False)
        assert (relaxed.matrix == truth).all() and (milp_only.matrix == truth).all()
        methods = [s.method for s in relaxed.solutions.values()]
        assert pinned <= methods.count("relaxation") < users
        assert {s.method for s in milp_only.solutions.values()} == {"milp"}


def test_relaxed_binary_point_returns_only_what_the_check_accepts() -> None:
    rng = np.random.default_rng(0)
    corner = (rng.random(40) < 0.3).astype(float)
    equations = rng.normal(size=(32, 40))  # 8 free dimensions: the box meets the affine set in the corner
    rhs = equations @ corner
    found = relaxed_binary_point(equations, rhs, lambda x: bool(np.allclose(equations @ x, rhs)))
    assert found is not None and np.array_equal(found, corner)
    offered: list[np.ndarray] = []
    refused = relaxed_binary_point(equations, rhs, lambda x: offered.append(x) or False, max_iterations=50)
    # It converges to the corner, offers it, and gives up once the iterates stop moving.
    assert refused is None and 1 <= len(offered) <= 10
    assert any(np.array_equal(x, corner) for x in offered) and all(set(np.unique(x)) <= {0.0, 1.0} for x in offered)


def test_parallel_workers_give_the_same_answer() -> None:
    truth, _, aggregates, windows, counts = synthetic(users=12, rounds=30, per_round=3)
    one, two = solve(aggregates, windows, counts, workers=1), solve(aggregates, windows, counts, workers=2)
    assert np.array_equal(one.matrix, two.matrix) and (one.matrix == truth).all()


def test_gate_withholds_identities_and_grants_counts_only_with_the_capability() -> None:
    spec = DataSpec("toy", (1, 2, 2), 3, ("a", "b", "c"), (0.5,), (0.2,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    clients = [Client(i, x[2 * i:2 * i + 2], y[2 * i:2 * i + 2]) for i in range(3)]
    protocol = Protocol(model, clients, FLSetup(clients_per_round=2), batch_size=2)
    threat = THREAT_MODELS["malicious-server"]
    for _ in range(2):
        transcript, truth = protocol.run_round()
    report = participation_report(protocol.participation_log, 3, window=2)
    assert report is not None and (report.first_round, report.last_round) == (0, 1)
    assert sum(report.counts.values()) == 4 and set(report.counts) == {0, 1, 2}
    assert participation_report(protocol.participation_log, 3, window=3) is None  # mid-window
    absent = next(c for c in range(3) if c not in transcript.participants)
    plain = granted_capabilities(threat)
    seen = observe(transcript, truth, threat=threat, granted=plain, data=spec, target=absent, anonymous=True,
                   participation=report)
    assert seen.participants == () and seen.updates == {} and seen.example_counts is None
    assert seen.aggregate is not None and seen.cohort_size == 2 and seen.participation is None
    granted = granted_capabilities(threat, [Capability.PARTICIPATION_SIDE_CHANNEL])
    seen = observe(transcript, truth, threat=threat, granted=granted, data=spec, target=absent, anonymous=True,
                   participation=report)
    assert seen.participation == report


@pytest.mark.parametrize(("settings", "message"), [
    ({"fl.rounds": 10}, "identifiability.*more reported rounds than clients.*got 10 rounds .*for clients=10"),
    ({"fl.rounds": 19}, "identifiability.*got 10 rounds \\(fl.rounds=19, analytics_window=10\\)"),
    ({"fl.clients_per_round": 10}, "random participation"),
    ({"fl.topology": "ring", "fl.clients_per_round": None}, "fl.topology=ring"),
    ({"analytics_window": None}, "analytics_window"),
    ({"examples_per_client": 4}, "examples_per_client equal to batch_size"),
    ({"extra_capabilities": []}, "needs capability participation_side_channel"),
    ({"attack.inner": "disaggregation"}, "attack.inner"),
    ({"attack.inner_params": {"iterationz": 3}}, "inner_params.*iterationz"),
])
def test_bad_input_is_one_line_before_any_round(out_dir: Path, settings, message) -> None:
    with pytest.raises(GialabError, match=message) as info:
        gialab.run("disaggregation", out=out_dir, set=SMALL | settings)
    assert "\n" not in str(info.value)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_cli_exit_code_two_for_too_few_rounds(cli, out_dir: Path) -> None:
    result = cli("run", "disaggregation", "--set", "fl.rounds=20", "--out", str(out_dir))
    assert result.code == 2 and "identifiability condition needs more reported rounds than clients" in result.err
    assert result.err.strip().count("\n") == 0
