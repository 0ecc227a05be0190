"""Gradient disaggregation: a victim's own update out of many rounds of anonymous aggregates.

Paper: Lam, Wei, Brooks, Reddi, Mitzenmacher 2021, "Gradient Disaggregation: Breaking Privacy in
Federated Learning by Reconstructing the User Participant Matrix" (ICML); survey section 3.1,
"Analytical Decomposition", eqs. 3-5 (solved in :mod:`.participation`).

Threat model, as the paper states it: the server sees each round's aggregate (secure aggregation
hides single updates) but not who contributed to it; device analytics tell it, per reporting
window, how many rounds each user took part in (eq. 5's C_k, c_k; the
``participation_side_channel`` capability and the scenario's ``analytics_window``). The runner
enforces the anonymity: this attack declares ``sees_participants = False``, so every observation
it gets names no participant, and it hears every round (``observes_every_round``), not only
the victim's.

The assumption G = P U needs each user's update to stay the same over the observed rounds. We
meet it the way the survey describes the attack ("delay parameter updates"): the malicious server
keeps sending the model of the first round and never applies an aggregate, and every client
trains on its whole local data set (``examples_per_client == batch_size``), so FedSGD's gradient
and FedAvg's unshuffled local epochs repeat exactly. Aggregates are the example-weighted mean;
with equal example counts the server recovers the sum by multiplying with the cohort size it
aggregated, so G's rows are sums as in eq. 3.

Steps: stack the n summed aggregates into G; solve every user's column of P (eqs. 3-5, one MILP
per user, in parallel, each tried first by a verified rounding of its box relaxation); read all
users' updates with least squares U = argmin ||P U - G|| (exact when P has full column rank);
hand the victim's row to an inner attack (``inner``, iDLG by default) as if it were an
individual update, which turns it into images.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from gialab.attacks.base import Attack, AttackContext, AttackParams, Disaggregation, Reconstruction
from gialab.attacks.decomposition.participation import (
    individual_updates, recover_participation, solve_user,
)
from gialab.attacks.registry import get_attack, register
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.protocol import ServerPlan
from gialab.threats import Capability, Observation, ParticipationReport

if TYPE_CHECKING:
    from gialab.scenario import Scenario


class DisaggregationParams(AttackParams):
    tol_scale: float = Field(1.0, gt=0, description="eq. 3's allowed residual |N^T p_k| per null-space direction, as "
                                                      "a share of its rounding bound (s_r+1 / s_r) sqrt(|p_k|)")
    rank_tol: float = Field(1e-5, gt=0, lt=1, description="G's rank is the active users, or the singular values "
                                                          "above this times the largest if more")
    workers: int = Field(1, ge=1, description="users solved in parallel (Ray tasks if Ray is installed, else "
                                              "processes; Ray's ~8 s start-up pays off from about 500 users)")
    time_limit: float = Field(60.0, gt=0, description="seconds HiGHS may spend on one user's MILP")
    relaxation: bool = Field(True, description="try ADMM on the box relaxation first and keep its rounding when it "
                                               "meets eqs. 3-5 exactly; the MILP only for the users it leaves")
    unique_check: bool = Field(True, description="ask HiGHS whether the victim's vector is the only solution")
    inner: str = Field("idlg", description="the registered attack that turns the victim's disaggregated update "
                                           "into images")
    inner_params: dict[str, Any] = Field(default_factory=dict, description="the inner attack's hyperparameters")


@register
class GradientDisaggregation(Attack):
    name = "disaggregation"
    requires = frozenset({Capability.OBSERVE_AGGREGATE, Capability.PARTICIPATION_SIDE_CHANNEL})
    Params = DisaggregationParams
    observes_every_round = True
    sees_participants = False
    demo_overrides = {"inner_params": {"iterations": 50}}
    smoke_overrides = {"inner_params": {"iterations": 2}, "unique_check": False}

    def __init__(self, params: AttackParams, context: AttackContext | None = None) -> None:
        super().__init__(params, context)
        p: DisaggregationParams = self.params  # type: ignore[assignment]
        self.inner = _inner_attack(p.inner, p.inner_params, self.context)
        self._frozen: nn.Module | None = None
        self._rows: list[np.ndarray] = []
        self._rounds: list[int] = []
        self._reports: list[ParticipationReport] = []
        self._clients = 0

    def check_update_kind(self, kind: str) -> None:
        self.inner.check_update_kind(kind)  # the disaggregation itself reads either kind

    def check_scenario(self, scenario: Scenario) -> None:
        fl, clients, rounds = scenario.fl, scenario.clients, scenario.fl.rounds
        per_round = fl.clients_per_round or clients
        if per_round >= clients:
            raise GialabError(
                f"disaggregation needs random participation, but all {clients} clients take part in every "
                f"round (P is all ones); set fl.clients_per_round below {clients}")
        window = scenario.analytics_window
        if window is None or window > rounds:
            raise GialabError(
                f"disaggregation needs device-analytics participation counts (survey eq. 5): set analytics_window "
                f"to the rounds each report covers, at most fl.rounds={rounds} (e.g. 10)")
        reported = rounds // window * window  # the attack reads the rounds that analytics reports cover
        if reported <= clients:
            raise GialabError(
                f"disaggregation's identifiability condition needs more reported rounds than clients (P, rounds x "
                f"clients, must have full column rank and G a non-trivial left null space); got "
                f"{reported} rounds (fl.rounds={rounds}, analytics_window={window}) for clients={clients}, "
                f"use fl.rounds >= {(clients // window + 1) * window} (e.g. {-(-3 * clients // (2 * window)) * window})")
        if scenario.local_examples != scenario.batch_size:
            raise GialabError(
                f"disaggregation needs every client to send the same update each round (G = P U): set "
                f"examples_per_client equal to batch_size={scenario.batch_size} (got {scenario.local_examples})")
        if scenario.victim >= clients:
            return  # the runner names this mistake
        self._clients = clients

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        size = sum(p.numel() for p in model.parameters())
        if self._clients and size < self._clients:
            raise GialabError(
                f"disaggregation needs at least as many model parameters as clients (the users' updates must be "
                f"linearly independent); the model has {size} for {self._clients} clients")
        self.inner.check_model(model, data)

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan | None:
        """Delay parameter updates: send the first round's model every round, never step it."""
        if self._frozen is None:
            self._frozen = copy.deepcopy(model)
        return ServerPlan(model=self._frozen)

    def observe_round(self, observation: Observation) -> None:
        if observation.aggregate is None or observation.cohort_size is None:
            raise GialabError("disaggregation needs each round's aggregate and how many updates it combines")
        flat = torch.cat([t.reshape(-1).double() for t in observation.aggregate]).numpy()
        self._rows.append(flat * observation.cohort_size)  # the example-weighted mean back to the sum
        self._rounds.append(observation.round)
        if observation.participation is not None:
            self._reports.append(observation.participation)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: DisaggregationParams = self.params  # type: ignore[assignment]
        if not self._reports:
            raise GialabError("disaggregation got no participation report; set analytics_window <= fl.rounds")
        started = time.perf_counter()
        reported = [i for i, r in enumerate(self._rounds) if r <= self._reports[-1].last_round]
        rounds = [self._rounds[i] for i in reported]  # rounds after the last report have no counts: unused
        aggregates = np.stack([self._rows[i] for i in reported])
        windows, counts = count_constraints(self._reports, rounds)
        recovery = recover_participation(aggregates, windows, counts, tol_scale=p.tol_scale, rank_tol=p.rank_tol,
                                         time_limit=p.time_limit, workers=p.workers, relaxation=p.relaxation)
        victim = observation.target
        found = recovery.solutions.get(victim)
        if found is None or found.vector is None:
            status = "never took part in a reported window" if found is None else found.status
            raise GialabError(f"disaggregation found no participation vector for victim {victim} ({status}); "
                              "raise attack.time_limit or attack.tol_scale, or observe more rounds")
        solved, updates = individual_updates(aggregates, recovery)
        victim_flat = updates[solved.index(victim)]
        solve_seconds = time.perf_counter() - started
        unique = -1.0
        if p.unique_check:
            other = solve_user(recovery.null_t, recovery.problems[victim], p.time_limit,
                               exclude=found.vector)
            unique = {"infeasible": 1.0, "solved": 0.0}.get(other.status, -1.0)

        model = self._frozen if self._frozen is not None else observation.model
        update = _unflatten(victim_flat, model)
        inner = self.inner.reconstruct(Observation(
            threat_model=observation.threat_model, capabilities=frozenset({Capability.OBSERVE_INDIVIDUAL}),
            round=observation.round, data=observation.data, model=copy.deepcopy(model),
            update_kind=observation.update_kind, participants=(victim,), target=victim, updates={victim: update},
            fl_setup=observation.fl_setup,  # declared side information that names no participant
        ))
        statuses = [s.status for s in recovery.solutions.values()]
        rank, singular = recovery.rank, recovery.singular
        details = {
            "rounds": float(len(rounds)),
            "users": float(counts.shape[1]),
            "active_users": float(len(recovery.solutions)),
            "rank": float(rank),
            "null_space_dim": float(recovery.null_t.shape[0]),
            "users_solved": float(len(solved)),
            "users_time_limit": float(statuses.count("time limit")),
            "users_infeasible": float(statuses.count("infeasible")),
            "users_by_relaxation": float(sum(s.method == "relaxation" for s in recovery.solutions.values())),
            "milp_seconds_max": max((s.seconds for s in recovery.solutions.values()), default=0.0),
            "milp_cpu_seconds_total": sum(s.cpu_seconds for s in recovery.solutions.values()),
            "disaggregation_seconds": solve_seconds,
            "victim_unique": unique,
            "victim_rounds": float(found.vector.sum()),
            "workers": float(p.workers),
        } | {f"inner_{k}": float(v) for k, v in inner.details.items()}
        if 0 < rank < len(singular) and singular[rank] > 0:  # G's smallest signal over its largest noise direction
            details["rank_gap"] = float(singular[rank - 1] / singular[rank])
        return Reconstruction(
            images=inner.images, labels=inner.labels, source=victim, reference=inner.reference, details=details,
            disaggregated=Disaggregation(torch.from_numpy(recovery.matrix), tuple(rounds), update),
        )


def count_constraints(reports: list[ParticipationReport], rounds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5 for every user at once: window rows C (reports x observed rounds) and counts (reports x users)."""
    position = {r: i for i, r in enumerate(rounds)}
    users = len(reports[0].counts)
    windows = np.zeros((len(reports), len(rounds)))
    counts = np.zeros((len(reports), users))
    for i, report in enumerate(reports):
        for r in range(report.first_round, report.last_round + 1):
            windows[i, position[r]] = 1.0
        for k, c in report.counts.items():
            counts[i, k] = c
    return windows, counts


def _unflatten(flat: np.ndarray, model: nn.Module) -> tuple[torch.Tensor, ...]:
    tensors, start = [], 0
    for param in model.parameters():
        tensors.append(torch.from_numpy(flat[start:start + param.numel()].copy()).float().reshape(param.shape))
        start += param.numel()
    return tuple(tensors)


def _inner_attack(name: str, params: dict[str, Any], context: AttackContext) -> Attack:
    """The attack that inverts the disaggregated update: it must need nothing but that one update."""
    from gialab.attacks.taxonomy import RECORDS

    cls = get_attack(name)
    extra = set(cls.requires) - {Capability.OBSERVE_INDIVIDUAL}
    if extra or cls.observes_every_round or not cls.sees_participants:
        raise GialabError(f"attack.inner: {name!r} needs more than one individual update; use an attack on "
                          "one update, e.g. idlg, dlg, inverting-gradients, fc-leakage, fedavg-inversion")
    if RECORDS[name].target_data.startswith("text"):
        raise GialabError(f"disaggregation inverts image updates here; attack.inner {name!r} reconstructs text")
    return cls(cls.parse_params(params, where="attack.inner_params"), context)
