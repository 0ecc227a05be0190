"""Fishing for user data: a malicious server magnifies one sample's gradient in a large aggregate.

Paper: Wen, Geiping, Fowl, Goldblum, Goldstein 2022, "Fishing for User Data in Large-Batch Federated
Learning via Gradient Magnification" (ICML); public code: breaching's
``MaliciousClassParameterServer`` and ``classattack_utils.py`` (read for understanding only).

Only the classification layer ``logits = W z + b`` changes (no new modules: the model a client
receives has the architecture it expects). The paper's observation: the cross-entropy gradient a
sample sends is ``(p - onehot(y))`` pushed back through the network, so a sample whose prediction
is confidently right sends (almost) nothing, and one the server makes confidently *wrong* sends
its full gradient. The server therefore chooses ``W, b`` so that only the samples it wants are
unconfident.

* Class fishing, survey eqs. (11)-(12) (paper sec. 4.1): keep the target class's row ``W_c, b_c``,
  zero every other row and give it the bias ``alpha``. With ``alpha`` large every sample predicts a
  non-target class with ``p_c = 0``, so a sample of another class has ``dL/dlogit_c = 0`` and sends
  nothing past the last layer, while a target-class sample has ``dL/dlogit_c = -1``: the aggregate
  is the summed gradient of the class's samples past the last layer. The other classes' rows
  still sum every sample's ``(p_j - [y = j]) z``, but for the fished samples ``p_j = 1/(K-1)``
  exactly, so those rows are rebuilt from row ``c``. With one sample of the class in the whole
  aggregate this is that sample's gradient, exactly. The same round reads out, from the bias
  gradients, every class's share of the batch (``n_c/N = -dL/db_c``,
  ``n_j/N = 1/(K-1) - dL/db_j``) and, from ``dL/dW_c / dL/db_c``, the class's mean feature vector.
* Feature fishing, survey eqs. (13)-(14) (paper sec. 4.2), for a class with several samples: the
  row ``W_c = beta e_k`` and ``b_c = -beta theta + log(K-1)`` (eq. 14 with ``alpha = 0``; the
  constant centres the step, ``p_c = sigmoid(beta (z_k - theta))``) make the sample's weight a step
  in its feature ``z_k`` at the cut-off ``theta``. A single query still mixes samples of other
  classes above the cut-off, but the step does not depend on the label, so the difference of two
  queries at ``a < b`` is the gradient of exactly the samples with ``a < z_k < b``. The multi-query
  search (``fishing_search.py``) narrows such a bin until it holds one sample, one round per
  cut-off, hearing each round's aggregate through ``observe_round``.

Which sample is the target (defined without truth): the target class ``c`` is ``target_class``, or
the rarest class of the first round's histogram (fewest collisions, the paper's motivation). If it
has one sample, that sample. Otherwise the feature ``k`` is the one with the largest class-``c``
mean (``feature`` overrides it) and the target is the sample alone in the first bin of feature
``k`` the search closes; its cut-offs are reported (``cutoff_low``, ``cutoff_high``), so the
sample is identifiable in truth as the one whose feature ``k`` (computed on its client's batch)
lies between them. It usually is the sample with the largest ``z_k``.

The isolated gradient then goes to Inverting Gradients (called through the registry, not
reimplemented) with label ``c``: whatever the sample's true label, the isolated gradient *is* the
gradient a class-``c`` sample with its input sends through a model whose class-``c`` logit is far
below the others (the bin's upper cut-off with ``beta = 1`` and the others at ``alpha``), so that
model and label are what it is inverted against. The body's part is divided by ``beta`` so the
last layer (which holds the sample's whole feature vector ``-z``) is not drowned in the cosine;
dividing by each query's own ``beta`` also lets the search pick a steeper step for narrower bins.

What the attack cannot report is how close the isolation is to the truth: ``isolation_cosine``
(cosine of the isolated gradient to the target's own gradient) needs the private batch, so tests
and ``bench/fishing_isolation.py`` compute it, on the truth side, from ``Fishing.isolation`` and
``Fishing.inversion_problem`` (the target's own gradient through that model, with that label). With BatchNorm the
"own gradient" is the gradient of the target's loss term within its client's batch (its features
depend on the batch statistics): that is what the difference isolates exactly.

Setup: FedSGD, and each client's batch identical across rounds (``batch_size ==
examples_per_client``: every client then trains on all its examples in a fixed order); the server
fixes the participants after the first round. Rounds needed: one or two class-fishing rounds,
then about ``log2(class count) + 2`` cut-offs; set ``fl.rounds`` to cover them. If the rounds run
out first, ``reconstruct`` refuses with a one-line error naming how many more are needed
(``mode=class`` instead inverts the whole class's summed gradient, ``isolated`` 0).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gialab.attacks.base import Attack, AttackContext, AttackParams, IsolatedGradient, Reconstruction
from gialab.attacks.registry import get_attack, register
from gialab.attacks.sparsification.fishing_search import CutoffSearch, estimate_total
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import parameter_index
from gialab.fl.protocol import ServerPlan
from gialab.threats import Capability, Observation


class FishingParams(AttackParams):
    mode: Literal["auto", "class", "feature"] = Field("auto", description=(
        "class: class fishing only (eqs. 11-12); feature: always search a feature bin (eqs. 13-14); "
        "auto: class fishing when the target class has one sample, else feature fishing"))
    target_class: int | None = Field(None, ge=0, description="class to fish; default: the rarest class present")
    feature: int | None = Field(None, ge=0, description=(
        "penultimate feature to cut; default: the one with the largest target-class mean"))
    alpha: float = Field(1000.0, gt=0, description="bias of the non-target rows in class fishing (eq. 12)")
    sharpness: float = Field(1e6, gt=0, description=(
        "beta times the width of the bin a query splits: samples within ~20/beta of a cut-off straddle it"))
    max_queries: int = Field(24, ge=1, description="most rounds the server spends on malicious queries")
    iterations: int = Field(200, ge=1, description="Inverting Gradients steps on the isolated gradient")
    restarts: int = Field(1, ge=1, description="Inverting Gradients restarts")
    tv: float = Field(0.8, ge=0, description="Inverting Gradients total-variation weight")


def final_classifier(model: nn.Module, data: DataSpec, attack: str = "fishing") -> tuple[str, nn.Linear]:
    """The model's classification layer: an ``nn.Linear`` with a bias and ``num_classes`` outputs
    whose output is the model's output, with its weight and bias the last two parameters."""
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last = named[-1] if named else None
    params = list(model.parameters())
    ends = type(list(model.modules())[-1]).__name__
    if (last is None or last[1].bias is None or last[1].out_features != data.num_classes
            or len(params) < 2 or params[-2] is not last[1].weight or params[-1] is not last[1].bias):
        raise GialabError(
            f"{attack} needs a model that ends in a fully connected classifier with a bias and "
            f"{data.num_classes} outputs (lenet, convnet, resnet18, cnn6, fcnet); this model ends with {ends}"
        )
    name, layer = last
    seen: dict[str, Tensor] = {}
    probe = copy.deepcopy(model).eval()
    handle = dict(probe.named_modules())[name].register_forward_hook(lambda m, i, o: seen.__setitem__("o", o))
    with torch.no_grad():
        out = probe(torch.zeros(2, *data.shape))
    handle.remove()
    if "o" not in seen or seen["o"].shape != out.shape or not torch.equal(seen["o"], out):
        raise GialabError(f"{attack} needs the model's output to be its last fully connected layer's output "
                          f"(logits); {name} is followed by further computation")
    return name, layer


def fished_model(model: nn.Module, layer: str, cls: int, row: Tensor, bias_c: float, bias_rest: float) -> nn.Module:
    """A copy of ``model`` whose classifier has only row ``cls`` (``row``, bias ``bias_c``); every
    other row is zero with bias ``bias_rest``. The body is untouched."""
    sent = copy.deepcopy(model)
    linear: nn.Linear = dict(sent.named_modules())[layer]  # type: ignore[assignment]
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[cls] = row
        linear.bias.fill_(bias_rest)
        linear.bias[cls] = bias_c
    return sent


def class_fishing_model(model: nn.Module, layer: str, cls: int, alpha: float) -> nn.Module:
    """Survey eqs. (11)-(12): keep class ``cls``'s row and bias, zero the rest, bias them ``alpha``."""
    linear: nn.Linear = dict(model.named_modules())[layer]  # type: ignore[assignment]
    return fished_model(model, layer, cls, linear.weight[cls].detach(), float(linear.bias[cls].detach()), alpha)


def feature_fishing_model(model: nn.Module, layer: str, cls: int, feature: int, theta: float, beta: float,
                          num_classes: int) -> nn.Module:
    """Survey eqs. (13)-(14) with ``alpha = 0``: ``p_c = sigmoid(beta (z_feature - theta))`` for every sample."""
    linear: nn.Linear = dict(model.named_modules())[layer]  # type: ignore[assignment]
    row = torch.zeros(linear.in_features)
    row[feature] = beta
    return fished_model(model, layer, cls, row, -beta * theta + math.log(num_classes - 1), 0.0)


@dataclass(frozen=True)
class Isolation:
    """What the search isolated, in the coordinates of the models it sent (for truth-side checks).

    ``gradient`` is ``N`` times the difference of the two queries' aggregates, each with its body
    part divided by its ``beta`` (feature fishing), or ``N`` times the class-fishing aggregate;
    ``models`` are the query models it came from (upper cut-off first, minus the lower one) and
    ``betas`` their slopes; ``count`` the samples the server measured inside the bin.
    """

    route: Literal["class", "feature"]
    target_class: int
    gradient: tuple[Tensor, ...]
    models: tuple[nn.Module, ...]
    count: int
    feature: int | None = None
    cutoffs: tuple[float, float] | None = None
    betas: tuple[float, float] | None = None


@dataclass
class _Query:
    kind: Literal["class", "feature"]
    cls: int
    model: nn.Module
    theta: float | None = None
    beta: float | None = None


@register
class Fishing(Attack):
    name = "fishing"
    requires = frozenset({Capability.OBSERVE_AGGREGATE, Capability.MODIFY_PARAMETERS})
    Params = FishingParams
    update_kinds = frozenset({"gradient"})
    demo_overrides = {"iterations": 100}
    smoke_overrides = {"iterations": 2}

    def __init__(self, params: AttackParams, context: AttackContext | None = None) -> None:
        super().__init__(params, context)
        self._layer: str | None = None
        self._base: nn.Module | None = None
        self._participants: tuple[int, ...] | None = None
        self._pending: _Query | None = None
        self._queries = 0
        self._total: int | None = None
        self._fractions: Tensor | None = None
        self._class_rounds: dict[int, tuple[Tensor, float, tuple[Tensor, ...], nn.Module]] = {}
        self._target: int | None = None
        self._search: CutoffSearch | None = None
        self._search_models: dict[float, nn.Module] = {}
        self._done = False

    # -- refusals -------------------------------------------------------------------------------
    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        p: FishingParams = self.params  # type: ignore[assignment]
        _, linear = final_classifier(model, data, self.name)
        if p.target_class is not None and p.target_class >= data.num_classes:
            raise GialabError(f"fishing: target_class {p.target_class} is not a class; valid: 0..{data.num_classes - 1}")
        if p.feature is not None and p.feature >= linear.in_features:
            raise GialabError(f"fishing: feature {p.feature} does not exist; the classifier sees "
                              f"{linear.in_features} features (valid: 0..{linear.in_features - 1})")

    # -- the malicious server -------------------------------------------------------------------
    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan | None:
        p: FishingParams = self.params  # type: ignore[assignment]
        if self._base is None:
            self.check_model(model, data)
            self._layer = final_classifier(model, data, self.name)[0]
            self._base = copy.deepcopy(model)
        if self._pending is None:
            if self._done or self._queries >= p.max_queries:
                return None  # back to the honest protocol; what was isolated is kept
            self._pending = self._next_query(data)
            if self._pending is None:
                self._done = True
                return None
        return ServerPlan(model=self._pending.model, participants=self._participants)

    def _next_query(self, data: DataSpec) -> _Query | None:
        p: FishingParams = self.params  # type: ignore[assignment]
        assert self._base is not None and self._layer is not None
        if not self._class_rounds:
            first = p.target_class if p.target_class is not None else 0
            return _Query("class", first, class_fishing_model(self._base, self._layer, first, p.alpha))
        if self._target is None:
            self._target = p.target_class if p.target_class is not None else self._rarest_class()
        c = self._target
        if c not in self._class_rounds:
            return _Query("class", c, class_fishing_model(self._base, self._layer, c, p.alpha))
        if p.mode == "class" or (p.mode == "auto" and self._count(c) <= 1) or self._count(c) == 0:
            return None
        if self._search is None:
            self._search = self._start_search(c)
        cut = self._search.next_cutoff()
        if cut is None:
            return None
        theta, beta = cut
        sent = feature_fishing_model(self._base, self._layer, c, self._search.feature, theta, beta, data.num_classes)
        return _Query("feature", c, sent, theta, beta)

    def _count(self, cls: int) -> int:
        assert self._fractions is not None and self._total is not None
        return int(round(float(self._fractions[cls]) * self._total))

    def _rarest_class(self) -> int:
        counts = [(self._count(j), j) for j in range(len(self._fractions))]  # type: ignore[arg-type]
        present = [cj for cj in counts if cj[0] > 0]
        return min(present)[1] if present else 0

    def _start_search(self, cls: int) -> CutoffSearch:
        p: FishingParams = self.params  # type: ignore[assignment]
        row, bias, _, _ = self._class_rounds[cls]
        mean = row / bias  # the class's mean penultimate feature vector (bias = -n_c/N < 0)
        feature = p.feature if p.feature is not None else int(mean.argmax())
        # The spread of the feature is unknown before the first cut; a tenth of its mean errs steep.
        scale = (float(mean[feature].abs()) or float(mean.abs().max()) or 1.0) / 10
        assert self._total is not None
        return CutoffSearch(feature=feature, sharpness=p.sharpness, total=self._total, base_row=row,
                            base_bias=bias, start=float(mean[feature]), start_width=scale)

    def observe_round(self, observation: Observation) -> None:
        query, self._pending = self._pending, None
        if query is None:
            return
        if observation.aggregate is None:
            raise GialabError(f"fishing reads the aggregate, which {observation.threat_model} does not reveal")
        assert self._layer is not None
        if self._participants is None:
            self._participants = tuple(observation.participants)
        self._queries += 1
        linear: nn.Linear = dict(observation.model.named_modules())[self._layer]  # type: ignore[assignment]
        w = parameter_index(observation.model, linear.weight)
        b = parameter_index(observation.model, linear.bias)
        aggregate = tuple(t.detach().cpu() for t in observation.aggregate)
        row, bias = aggregate[w][query.cls].clone(), float(aggregate[b][query.cls])
        if query.kind == "class":
            if self._fractions is None:
                self._read_histogram(aggregate[b], query.cls, observation)
            self._class_rounds[query.cls] = (row, bias, aggregate, query.model)
        else:
            assert self._search is not None and query.theta is not None and query.beta is not None
            self._search_models[query.theta] = query.model
            body = set(range(len(aggregate))) - {w, b}
            per_unit = tuple(t / query.beta if i in body else t for i, t in enumerate(aggregate))
            self._search.record(query.theta, query.beta, row, bias, per_unit)

    def _read_histogram(self, bias_grad: Tensor, cls: int, observation: Observation) -> None:
        """Class shares from one class-fishing round (every sample has ``p_c = 0``, ``p_j = 1/(K-1)``)."""
        k = bias_grad.numel()
        fractions = 1.0 / (k - 1) - bias_grad.double()
        fractions[cls] = -float(bias_grad[cls])
        self._fractions = fractions.clamp_min(0)
        if observation.example_counts is not None:
            self._total = int(sum(observation.example_counts.values()))
        else:
            self._total = estimate_total(self._fractions)

    # -- the isolated gradient and its inversion --------------------------------------------------
    @property
    def isolation(self) -> Isolation | None:
        """The isolated gradient (the single-sample one, or the smallest bin found if the rounds ran out)."""
        if not self._class_rounds or self._total is None:
            return None
        c = self._target if self._target is not None else next(iter(self._class_rounds))
        if c not in self._class_rounds:
            c = next(iter(self._class_rounds))
        n = self._total
        search = self._search
        best = None
        if search is not None:
            pair = search.isolated()
            best = (pair[0], pair[1], 1) if pair is not None else search.smallest_closed_bin()
        if best is not None and best[2] < self._count(c):
            lo, hi, count = best
            gradient = tuple(n * (h - l) for h, l in zip(hi.aggregate, lo.aggregate, strict=True))
            return Isolation("feature", c, gradient, (self._search_models[hi.theta], self._search_models[lo.theta]),
                             count, search.feature, (lo.theta, hi.theta), (hi.beta, lo.beta))  # type: ignore[union-attr]
        _, _, aggregate, sent = self._class_rounds[c]
        return Isolation("class", c, self._class_gradient(aggregate, sent, c), (sent,), self._count(c))

    def _class_gradient(self, aggregate: tuple[Tensor, ...], sent: nn.Module, cls: int) -> tuple[Tensor, ...]:
        """``N`` times a class-fishing aggregate, with the other classes' rows rebuilt from row ``cls``.

        The zeroed rows stop every other sample's gradient from reaching the body, but their own
        gradients ``(p_j - [y_i = j]) z_i`` still sum over the whole batch. For the fished samples
        ``p_c = 0`` and ``p_j = 1/(K-1)`` exactly, so their share of row ``j`` is ``-1/(K-1)`` times
        their share of row ``c``: the rows are rebuilt from that, leaving nothing of the others.
        """
        assert self._layer is not None and self._total is not None
        linear: nn.Linear = dict(sent.named_modules())[self._layer]  # type: ignore[assignment]
        w, b = parameter_index(sent, linear.weight), parameter_index(sent, linear.bias)
        gradient = [self._total * t for t in aggregate]
        k = gradient[b].numel()
        others = [j for j in range(k) if j != cls]
        gradient[w] = gradient[w].clone()
        gradient[b] = gradient[b].clone()
        gradient[w][others] = -gradient[w][cls] / (k - 1)
        gradient[b][others] = -gradient[b][cls] / (k - 1)
        return tuple(gradient)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: FishingParams = self.params  # type: ignore[assignment]
        self.check_update_kind(observation.update_kind)
        iso = self.isolation
        if iso is None:
            raise GialabError("fishing heard no round: the victim took part in none of the rounds")
        if iso.count == 0:
            raise GialabError(f"fishing: class {iso.target_class} has no sample in the aggregate; "
                              "set attack.target_class to a present class or leave it unset")
        if iso.count > 1 and p.mode != "class":
            raise GialabError(
                f"fishing isolated no single sample in {self._queries} malicious rounds (the smallest bin "
                f"holds {iso.count} samples); raise fl.rounds (the search needs about "
                f"{2 + math.ceil(math.log2(max(iso.count, 2))) + 2} more) or set attack.mode=class")
        model, gradient = self.inversion_problem(iso)
        inverter_cls = get_attack("inverting-gradients")
        inverter = inverter_cls(
            inverter_cls.Params(iterations=p.iterations, restarts=p.restarts, tv=p.tv, batch_size=iso.count),
            self.context,
        )
        view = Observation(
            threat_model=observation.threat_model, capabilities=frozenset({Capability.OBSERVE_INDIVIDUAL}),
            round=observation.round, data=observation.data, model=model, update_kind="gradient",
            participants=(observation.target,), target=observation.target,
            updates={observation.target: gradient}, example_counts={observation.target: iso.count},
            labels={observation.target: torch.full((iso.count,), iso.target_class, dtype=torch.long)},
        )
        inverted = inverter.reconstruct(view)
        details = {
            "queries": float(self._queries), "isolated": float(iso.count == 1), "bin_count": float(iso.count),
            "batch_estimate": float(self._total or 0), "target_class": float(iso.target_class),
            "class_count": float(self._count(iso.target_class)),
        }
        if iso.route == "feature":
            assert iso.cutoffs is not None and iso.feature is not None and self._search is not None
            details |= {"feature": float(iso.feature), "cutoff_low": iso.cutoffs[0], "cutoff_high": iso.cutoffs[1],
                        "straddled_queries": float(self._search.straddled)}
        details |= {f"inversion_{k}": v for k, v in inverted.details.items()}
        # Feature fishing's difference of queries is blind to labels: the bin's sample may be of any
        # class, so only class fishing claims one (label c was merely what the inversion matched with).
        labels = inverted.labels if iso.route == "class" else None
        isolated = IsolatedGradient(gradient, model, iso.target_class) if iso.count == 1 else None
        return Reconstruction(images=inverted.images, labels=labels, source=None,
                              reference=inverted.reference, details=details, isolated=isolated)

    def inversion_problem(self, iso: Isolation) -> tuple[nn.Module, tuple[Tensor, ...]]:
        """The model and gradient handed to Inverting Gradients (see the module docstring), with
        label ``iso.target_class``: the truth side compares a sample's own gradient through this
        model with ``iso.gradient`` to measure ``isolation_cosine``.

        The isolated feature-fishing gradient is already in ``beta = 1`` units, so it is the
        gradient of a class-``c`` sample through the ``beta = 1`` model whose class-``c`` logit
        ``z_k - theta_high`` sits ``alpha`` below the others (``p_c = 0``, as in the bin's queries).
        """
        p: FishingParams = self.params  # type: ignore[assignment]
        if iso.route == "class":
            return iso.models[0], iso.gradient
        assert self._base is not None and self._layer is not None
        assert iso.cutoffs is not None and iso.feature is not None
        linear: nn.Linear = dict(self._base.named_modules())[self._layer]  # type: ignore[assignment]
        row = torch.zeros(linear.in_features)
        row[iso.feature] = 1.0
        model = fished_model(self._base, self._layer, iso.target_class, row, -iso.cutoffs[1], p.alpha)
        return model, iso.gradient
