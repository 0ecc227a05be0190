"""Model inconsistency: a malicious server silences every client but the victim, then inverts.

Paper: Pasquini, Francati, Ateniese 2022, "Eluding Secure Aggregation in Federated Learning via
Model Inconsistency" (ACM CCS); survey section 3.1 (gradient isolation) and Figure 1: secure
aggregation sums every participant's update, so a server that sends the victim the real model and
everyone else a model whose ReLU layer has ``W = 0, b <= 0`` receives a sum in which only the
victim's update is left. Any attack on one client's update then runs on the aggregate.

One round, as the server plays it:

1. The inner attack (``attack.inner``, any registered image attack, with its own hyperparameters
   in ``attack.inner_params``) plans the model it wants the victim to train: Robbing the Fed's
   imprint model, or the global model for an honest-but-curious attack such as Inverting Gradients.
2. ``dead_layer.dead_model`` turns a copy of it into the non-victims' model: same architecture, a
   ReLU layer killed, every parameter after it zeroed, probed for what still moves (the residual:
   with cross entropy at least the last layer's bias, ``softmax - onehot(y)`` per sample).
3. ``ServerPlan(model=dead, per_client={victim: planned})``: needs ``per_client_models`` and
   ``modify_parameters`` (plus whatever the inner attack's model needs, e.g.
   ``modify_architecture``). Under secure aggregation the server sees only the weighted mean
   ``sum_u n_u x_u / sum_u n_u``, which on every non-residual parameter is ``n_v x_v / N``.

What the inner attack is handed: a new ``Observation`` in which that aggregate *is* the victim's
individual update, with ``observe_individual`` among its capabilities. That is the attacker's
claim, not a grant of the threat model: the threat gate still withheld every single update, and
the truth side checks the claim (``victim_update_cosine``, ``metrics/isolation.py``, against the
update the victim really sent). Two adjustments make the claim as true as the attacker can make it:

* Scale. The aggregate is ``n_v / N`` times the victim's update; it is multiplied back by
  ``N / n_v`` from the example counts when the attacker sees them, else by the participant count
  (equal local batches, which gialab's clients use). Scale-free inner attacks (imprint read-outs,
  cosine matching) do not care; L2 matching (DLG) does.
* Residual. The residual parameters carry the other clients' label terms, so they are not claimed:
  the inner attack's model turns them into constants (a Linear/Conv bias is added by a forward hook,
  any other tensor becomes a buffer) and its update leaves them out. The model computes exactly
  what the victim's did; the inner attack just cannot see or match those tensors. iDLG's label
  read-out then takes the last layer's weight rows, which are clean.

Reported: the inner attack's own details (``inner_*``), ``rescale``, ``residual_parameters`` (entries
not claimed) and, on the truth side, ``victim_update_cosine`` (claimed parameters),
``victim_update_cosine_all`` (every parameter, residual included) and ``victim_update_claimed``.
Refused before the first round: an unknown inner attack, ``inconsistency`` itself, a text attack,
an inner attack that sends per-client models of its own, and a model with no ReLU layer to kill.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn.modules.conv import _ConvNd

from gialab.attacks.base import Attack, AttackContext, AttackParams, IsolatedUpdate, Reconstruction
from gialab.attacks.isolation.dead_layer import (
    Candidate, DeadModel, dead_model, forward_calls, kill, residual_parameters,
)
from gialab.attacks.registry import get_attack, register
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.protocol import ServerPlan
from gialab.threats import Capability, Observation

_C = Capability


class InconsistencyParams(AttackParams):
    inner: str = Field("robbing-the-fed", description="the registered attack that inverts the isolated update")
    inner_params: dict[str, Any] = Field(default_factory=dict, description="the inner attack's hyperparameters")
    margin: float = Field(1.0, gt=0, description="how far below 0 the dead layer's bias (or BatchNorm shift) sits")
    silence: bool = Field(True, description=(
        "send the other clients the dead model; false sends everyone the victim's model (the control: "
        "the aggregate then mixes every client, read the same way)"))


def build_inner(name: str, params: dict[str, Any], context: AttackContext) -> Attack:
    """The inner attack, its hyperparameters validated with errors that name ``attack.inner_params``."""
    from gialab.attacks.taxonomy import RECORDS

    if name == Inconsistency.name:
        raise GialabError("attack.inner cannot be inconsistency itself; name the attack that inverts the victim's "
                          "update (e.g. robbing-the-fed, inverting-gradients, idlg, fc-leakage)")
    cls = get_attack(name)
    if RECORDS[name].target_data.startswith("text"):
        raise GialabError(f"inconsistency wraps image attacks; attack.inner {name!r} reconstructs text")
    inner_params = cls.parse_params(params, where="attack.inner_params")
    return cls(inner_params, context)


def _add_frozen_bias(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    bias = module.frozen_bias
    if isinstance(module, _ConvNd):
        bias = bias.view(-1, *([1] * (output.dim() - 2)))
    return output + bias


def freeze(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """A copy of ``model`` in which the named parameters are constants: same outputs, fewer parameters.

    A Linear/Conv bias becomes a buffer added by a forward hook, so the layer reads as bias-free
    (iDLG then reads the label off the weight rows); any other tensor becomes a buffer in place.
    """
    frozen = copy.deepcopy(model)
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = frozen.get_submodule(owner)
        value = getattr(module, leaf).detach().clone()
        if leaf == "bias" and isinstance(module, (nn.Linear, _ConvNd)):
            module.register_parameter("bias", None)
            module.register_buffer("frozen_bias", value)
            module.register_forward_hook(_add_frozen_bias)
        else:
            delattr(module, leaf)
            module.register_buffer(leaf, value)
    return frozen


@register
class Inconsistency(Attack):
    name = "inconsistency"
    requires = frozenset({_C.PER_CLIENT_MODELS, _C.MODIFY_PARAMETERS, _C.OBSERVE_AGGREGATE})
    Params = InconsistencyParams

    def __init__(self, params: AttackParams, context: AttackContext | None = None) -> None:
        super().__init__(params, context)
        p: InconsistencyParams = self.params  # type: ignore[assignment]
        self.inner = build_inner(p.inner, p.inner_params, self.context)
        # What this attack needs is its own plan's capabilities plus the inner attack's, except the
        # individual view, which the isolation supplies (as a claim the metrics check).
        self.requires = type(self).requires | (self.inner.requires - {_C.OBSERVE_INDIVIDUAL})  # type: ignore[misc]
        self.update_kinds = self.inner.update_kinds  # type: ignore[misc]
        self._kind = "gradient"
        self._choice: dict[tuple[str, ...], Candidate] = {}  # architecture (call order) -> layer killed
        self._residual: dict[int, tuple[str, ...]] = {}  # round -> what that round's dead model leaves

    def check_update_kind(self, kind: str) -> None:
        self.inner.check_update_kind(kind)
        self._kind = kind

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        """The inner attack's own check, then a dry run of the first plan (refuses a model with no
        ReLU layer to kill, or an inner attack that sends per-client models itself)."""
        self.inner.check_model(model, data)
        planned = self._planned(copy.deepcopy(self.inner).plan_server(model, data), model)
        self._silence(planned, data)

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan:
        p: InconsistencyParams = self.params  # type: ignore[assignment]
        inner_plan = self.inner.plan_server(model, data)
        planned = self._planned(inner_plan, model)
        dead = self._silence(planned, data)
        self._residual[len(self._residual)] = dead.residual  # the runner plans once per round, from 0
        participants = inner_plan.participants if inner_plan is not None else None
        if not p.silence:
            return ServerPlan(model=planned, participants=participants)
        return ServerPlan(model=dead.model, per_client={self.context.target: planned}, participants=participants)

    def observe_round(self, observation: Observation) -> None:
        self.inner.observe_round(self._isolated(observation)[0])

    def reconstruct(self, observation: Observation) -> Reconstruction:
        view, claimed, rescale = self._isolated(observation)
        inner = self.inner.reconstruct(view)
        sizes = {n: p.numel() for n, p in observation.model.named_parameters()}
        details = {f"inner_{k}": v for k, v in inner.details.items()} | {
            "rescale": rescale,
            "residual_parameters": float(sum(sizes[n] for n in self._residual[observation.round])),
        }
        assert observation.aggregate is not None  # _isolated refused otherwise
        return Reconstruction(
            images=inner.images, labels=inner.labels, source=observation.target, reference=inner.reference,
            details=details, isolated=inner.isolated,
            isolated_update=IsolatedUpdate(observation.target, observation.aggregate, claimed),
        )

    # --- the server's side -------------------------------------------------------------------------

    def _planned(self, inner_plan: ServerPlan | None, model: nn.Module) -> nn.Module:
        """The model the victim gets: the inner attack's, else the global model."""
        if inner_plan is None:
            return model
        if inner_plan.per_client:
            raise GialabError(f"attack.inner {self.inner.name!r} sends per-client models itself; inconsistency "
                              "decides who gets which model, so it cannot wrap it")
        return inner_plan.model if inner_plan.model is not None else model

    def _silence(self, planned: nn.Module, data: DataSpec) -> DeadModel:
        """The non-victims' model for ``planned``; the layer choice is searched once per architecture."""
        p: InconsistencyParams = self.params  # type: ignore[assignment]
        calls = tuple(forward_calls(planned, data.shape))
        what = f"the model the victim gets from {self.inner.name}"
        if calls not in self._choice:
            dead = dead_model(planned, data.shape, data.num_classes, kind=self._kind, margin=p.margin,
                              seed=self.context.seed, what=what)
            self._choice[calls] = dead.candidate
            return dead
        candidate = self._choice[calls]
        model, zeroed = kill(planned, candidate, list(calls), p.margin)
        residual = residual_parameters(model, data.shape, data.num_classes, kind=self._kind, seed=self.context.seed)
        return DeadModel(model, candidate, zeroed, residual)

    def _isolated(self, observation: Observation) -> tuple[Observation, tuple[int, ...], float]:
        """The victim's update as the attacker claims it: the aggregate without the residual, rescaled."""
        if observation.aggregate is None:
            raise GialabError(f"inconsistency reads the aggregate, which {observation.threat_model} does not show")
        if observation.round not in self._residual:
            raise GialabError(f"inconsistency sent no models in round {observation.round}")
        names = [n for n, _ in observation.model.named_parameters()]
        residual = set(self._residual[observation.round])
        claimed = tuple(i for i, n in enumerate(names) if n not in residual)
        if not claimed:
            raise GialabError("inconsistency: every parameter still carries other clients' updates; nothing is isolated")
        counts = observation.example_counts
        target = observation.target
        if counts and target in counts and all(c in counts for c in observation.participants):
            own = counts[target]
            rescale = sum(counts[c] for c in observation.participants) / own
        else:
            own, rescale = None, float(len(observation.participants))
        update = tuple(observation.aggregate[i] * rescale for i in claimed)
        view = Observation(
            threat_model=observation.threat_model,
            capabilities=observation.capabilities | {_C.OBSERVE_INDIVIDUAL},  # the claim, checked by the metrics
            round=observation.round, data=observation.data,
            model=freeze(observation.model, self._residual[observation.round]),
            update_kind=observation.update_kind, participants=(target,), target=target,
            updates={target: update}, aggregate=update,
            example_counts={target: own} if own is not None else None,
            labels={target: observation.labels[target]} if observation.labels and target in observation.labels else None,
            fl_setup=observation.fl_setup,
        )
        return view, claimed, rescale
