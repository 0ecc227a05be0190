"""What every attack is: a small surface between the threat layer and the metrics.

An attack is built from validated hyperparameters (its ``Params`` model), may check the model it
is asked to attack, may plan what a malicious server sends (``plan_server``) or, as a malicious
client, what its own client sends (``craft_update``), and turns one ``Observation`` into a
``Reconstruction``. It never sees ground truth, and it never imports metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate, LocalBatch
from gialab.fl.protocol import ServerPlan
from gialab.fl.setup import FLSetup
from gialab.threats import Capability, Observation

if TYPE_CHECKING:
    from gialab.scenario import Scenario

Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """The default progress sink: silence."""


class AttackParams(BaseModel):
    """Base for each attack's hyperparameters; unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class AttackContext:
    """Run-time facilities an attack may use: where to compute, its own seed, a progress sink,
    and the client it targets (the scenario's victim; a server that sends the victim a model of
    its own, as model inconsistency does, must know whom before the first round)."""

    device: torch.device = torch.device("cpu")
    seed: int = 0
    progress: Progress = no_progress
    target: int = 0  # the client the attacker aims at (the scenario's victim), known before round 1


@dataclass(frozen=True)
class IsolatedGradient:
    """A gradient an isolation attack claims is one sample's own, with the model and label it
    belongs to, so the truth side can measure how well it was isolated (``isolation_cosine``)."""

    gradient: tuple[torch.Tensor, ...]
    model: nn.Module
    label: int


@dataclass(frozen=True)
class Disaggregation:
    """What a disaggregation attack claims, so the truth side can score it: the participation
    matrix (rounds x clients, 0/1, row ``i`` for round ``rounds[i]``, columns in client-id order)
    and the target's individual update read off the aggregates."""

    participation: torch.Tensor
    rounds: tuple[int, ...]
    update: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class IsolatedUpdate:
    """An aggregate an isolation attack claims is one client's own update (up to scale), so the
    truth side can measure the claim against what that client really sent (``victim_update_cosine``).

    ``update`` is the aggregate as observed, aligned with the parameters of the model ``client``
    received; ``claimed`` lists the parameter indices the attack vouches for (the others it knows
    still carry other clients' contributions). ``model``, when the attack knows it (it is the one the
    server sent), lets the truth side recompute the client's clean update from its private batch
    and measure the noise still covering the exposed one (``victim_noise_std``).
    """

    client: int
    update: tuple[torch.Tensor, ...]
    claimed: tuple[int, ...]
    model: nn.Module | None = None


@dataclass(frozen=True)
class Reconstruction:
    """Recovered images in [0, 1] and, where the attack infers them, labels.

    ``source`` is the client whose data this claims to be, or ``None`` for the whole round's
    participants (an attack on the aggregate). ``target_class``, when set, narrows the claim to
    that class's examples of those participants (a class-targeted attack such as CGI); a malicious
    client's own examples are never part of the claim. ``reference`` is the attack's starting point,
    so relative metrics (RDLV) can tell what the attack added. ``details`` holds the attack's own
    measurements (final gradient distance, iterations run, ...), all plain floats.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    source: int | None
    reference: torch.Tensor | None = None
    details: dict[str, float] = field(default_factory=dict)
    isolated: IsolatedGradient | None = None
    isolated_update: IsolatedUpdate | None = None
    target_class: int | None = None
    disaggregated: Disaggregation | None = None


class Attack(ABC):
    name: ClassVar[str]
    requires: ClassVar[frozenset[Capability]]
    Params: ClassVar[type[AttackParams]] = AttackParams
    # Hyperparameter overrides for `gialab demo` (keep the whole demo within minutes on 2 cores)
    # and for `gialab demo --quick` (a smoke run that only exercises the plumbing).
    demo_overrides: ClassVar[dict[str, Any]] = {}
    smoke_overrides: ClassVar[dict[str, Any]] = {}
    # What the attack can invert: FedSGD's "gradient", FedAvg's "model_delta", or both.
    update_kinds: ClassVar[frozenset[str]] = frozenset({"gradient", "model_delta"})
    # Multi-round attacks on aggregates: hear every round (not only the target's), and/or work
    # without knowing who took part (the runner then withholds every participant's identity).
    observes_every_round: ClassVar[bool] = False
    sees_participants: ClassVar[bool] = True

    @classmethod
    def parse_params(cls, values: Mapping[str, Any], where: str = "attack") -> AttackParams:
        """Validated hyperparameters; a mistake becomes one line naming ``where.<key>`` and what is valid.

        ``where`` is the scenario key the values came from (``attack`` for the attack itself, e.g.
        ``attack.inner_params`` for an attack another one wraps), so the message points at the YAML.
        """
        try:
            return cls.Params(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                valid = ", ".join(sorted(cls.Params.model_fields))
                raise GialabError(
                    f"{where}: attack {cls.name!r} has no hyperparameter {key!r}; valid: {valid}") from None
            raise GialabError(f"{where}.{key}: {err['msg']} (got {err.get('input')!r})") from None

    def __init__(self, params: AttackParams, context: AttackContext | None = None) -> None:
        self.params = params
        self.context = context or AttackContext()

    def check_update_kind(self, kind: str) -> None:
        """Refuse an FL setup whose updates this attack cannot invert (the runner asks before round 1)."""
        if kind in self.update_kinds:
            return
        if kind == "model_delta":
            raise GialabError(f"{self.name} inverts FedSGD gradients; this scenario sends FedAvg model deltas "
                              "(use fedavg-inversion for model deltas)")
        raise GialabError(f"{self.name} inverts FedAvg model deltas; this scenario sends FedSGD gradients "
                          "(set fl.algorithm=fedavg, or use an attack on gradients)")

    def check_scenario(self, scenario: Scenario) -> None:
        """Raise ``GialabError`` when the scenario's setup (rounds, clients, ...) cannot support
        this attack; the runner asks before any work. Default: any setup."""

    def check_classes(self, num_classes: int, dataset: str) -> None:
        """Raise ``GialabError`` when hyperparameters name a class ``dataset`` lacks; default: no check.

        Asked before any work where the class count is known from the name (built-in sets, CIFAR),
        so a class-targeted attack refuses a bad class in a fraction of a second.
        """

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        """Raise ``GialabError`` when this attack cannot handle ``model``; default: any model."""

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan | None:
        """A malicious server's deviation from the protocol; honest attacks return ``None``."""
        return None

    def join(self, clients: Mapping[int, LocalBatch], data: DataSpec) -> None:
        """Before round 1: the malicious clients this attack acts as, by id, with their own data.

        Raise ``GialabError`` to refuse (e.g. data the attack cannot work with).
        """

    def craft_update(
        self, model: nn.Module, honest: ClientUpdate, own: LocalBatch, setup: FLSetup, round_index: int
    ) -> tuple[torch.Tensor, ...] | None:
        """What a malicious client sends instead of ``honest`` (see ``fl.malicious``); ``None`` sends it.

        Only attacks that need ``poison_own_update`` are given clients (the scenario's ``malicious_clients``);
        with several, each calls this with its own honest update and data.
        """
        return None

    def observe_round(self, observation: Observation) -> None:
        """Hear what one round revealed before planning the next (multi-query attacks adapt here).

        Called for every round the target takes part in (every round when ``observes_every_round``),
        the last one included; the last observation is then handed to ``reconstruct``.
        Single-round attacks ignore it.
        """

    @abstractmethod
    def reconstruct(self, observation: Observation) -> Reconstruction: ...
