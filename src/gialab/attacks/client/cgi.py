"""CGI: client-side poisoning gradient inversion, survey eqs. (15)-(21).

Paper: Wei, Zhang, Zhang, Chen, Pan, Ong, Zhang, Xiang 2023, "Client-side Gradient Inversion
Against Federated Learning from Poisoning" (arXiv 2309.07415); the survey's section 3.1.

The threat model is a malicious *client*: it receives the global model like everyone, holds its
own data, controls its own update, and sees nothing else (no other client's update). Fishing's
observation (Wen et al. 2022) is its lever: a sample whose prediction is confidently right sends
almost no gradient, one whose class the model gets badly wrong sends its full gradient. So the
client poisons the global model until the target class is the one it gets wrong, and the honest
clients' target-class examples then dominate the aggregate it can read off the next model.

Poisoning, every round but the last (``craft_update``, run on the client's device):

* the malicious model ``Phi_mal``: ``malicious_steps`` of local gradient descent from the model
  received, on the client's own data, that *maximizes* the cross-entropy of its target-class
  examples while minimizing it on the others (so the rest of the model stays useful and the
  other classes' examples stay quiet);
* eq. (15) ``delta_poi = Phi_G^t - Phi_mal``; eq. (16) ``delta_agg``, the client's estimate of the
  aggregate: by default (``reference=benign``) the mean of the honest updates of its own data cut
  into batches of the round's size; with ``reference=previous`` the paper's
  ``(Phi_G^{t-1} - Phi_G^t) / alpha``, the last aggregate read off the two models it last received
  (``alpha``: the server's step, FedSGD's learning rate, 1 under FedAvg);
* eq. (17) ``delta_mal = rho delta_poi / |delta_poi| + beta delta_benign`` with that mean honest
  update as ``delta_benign``, and eq. (18) ``(rho, beta)`` against ``|delta_mal - delta_agg|``: the
  most poison whose distance to the aggregate is at most ``stealth`` times the spread of its own
  batches' honest updates around their mean (``stealthy_update.blend``). The intent is that an
  update no further from the aggregate than an honest one passes the robust rules; whether it
  does is measured, not assumed (``poison_survival``, ``bench/cgi.py``). ``stealth = 0`` is
  eq. (18)'s minimizer.

The last round (``fl.rounds - 1``) is the one inverted: the client then sends the honest update
of its own non-target examples only, so the aggregate it inverts holds neither its poison nor
any target-class image of its own. Reconstruction (``reconstruct``): eq. (20) is the aggregate
the threat model grants (``observe_aggregate``: the change of the global model), and eq. (19)
matches it with the gradient (eq. 21) of ``batch_size`` dummy images of the target class through
the model of that round, by cosine distance plus total variation, pixel L2 and the box penalty
(``optimization/objective.py``, via Inverting Gradients' ``make_objective``), optimized by
Inverting Gradients' own ``signed_adam`` (Geiping et al. 2020, the method Wei et al. use): Adam on
the sign of the objective's gradient, the step decayed 10x at 3/8, 5/8 and 7/8 of the iterations,
pixels projected into [0, 1] after every step (so the box penalty is only a soft guard).

How many target images the aggregate holds (``batch_size`` unset): read off the last layer's bias
gradient, ``dL/db_c = mean_n (p_nc - [y_n = c])``, with the mean softmax ``p_c`` estimated on the
client's own data and the aggregate taken as the mean over every participant's batch (the
client's own batch size); a rule that averages fewer updates makes this an underestimate.

What the client measures itself (``details``): the eq. (17)-(18) weights and distances per round,
and how confidently the poisoned model it last received misclassifies its own target-class
examples. Whether the rules accepted its updates it cannot see; the runner reads that from the
server's log (``poison_survival``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import replace_all_batch_norm_modules_

from gialab.attacks.base import Attack, AttackContext, AttackParams, Reconstruction
from gialab.attacks.client.stealthy_update import Blend, blend
from gialab.attacks.optimization.inverting_gradients import make_objective, restart_init, signed_adam
from gialab.attacks.optimization.label_inference import last_linear_index
from gialab.attacks.optimization.objective import Regularizers
from gialab.attacks.registry import register
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate, LocalBatch
from gialab.fl.setup import FLSetup
from gialab.fl.training import fedavg_update, fedsgd_update
from gialab.fl.update_vector import flatten, unflatten
from gialab.threats import Capability, Observation


class CGIParams(AttackParams):
    target_class: int = Field(0, ge=0, description="class whose examples the poisoning magnifies and the attack recovers")
    poison: bool = Field(True, description="poison the global model (False: honest until the last round, the ablation)")
    poison_until: float = Field(0.05, ge=0, le=1, description=(
        "poison only while the received model gives the attackers' own target-class examples a mean "
        "probability for their class above this"))
    malicious_layers: Literal["all", "classifier"] = Field("all", description=(
        "what the malicious local training changes: the whole model or only the last linear layer"))
    malicious_steps: int = Field(10, ge=1, description="local gradient steps from the received model to Phi_mal")
    malicious_lr: float = Field(0.1, gt=0, description="step of the malicious local training")
    stealth: float = Field(1.0, ge=0, description=(
        "eq. 18 radius: the crafted update stays this many times its own benign update's distance "
        "from the estimated aggregate (0: eq. 18's minimizer)"))
    reference: Literal["benign", "previous"] = Field("benign", description=(
        "eq. 16's aggregate estimate: the client's own mean honest update (benign) or the last "
        "round's aggregate read off the global models (previous)"))
    server_lr: float | None = Field(None, gt=0, description=(
        "alpha of eqs. 16 and 20; default the FedSGD learning rate (1 under FedAvg)"))
    iterations: int = Field(1000, ge=1, description="eq. 19 optimization steps")
    lr: float = Field(0.03, gt=0, description=(
        "signed-Adam step in normalized units (pixels move ~lr*std per step), decayed 10x at 3/8, 5/8, 7/8"))
    tv: float = Field(0.0, ge=0, description="eq. 19 lambda_1: weight of total variation")
    l2: float = Field(0.0, ge=0, description="eq. 19 lambda_2: weight of the mean squared pixel")
    clip: float = Field(0.0, ge=0, description="eq. 19 lambda_3: weight of the box penalty")
    restarts: int = Field(1, ge=1, description="random restarts; the smallest final cosine distance wins")
    batch_size: int | None = Field(None, ge=1, description="target images to recover; default: read off the aggregate")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@register
class CGI(Attack):
    name = "cgi"
    requires = frozenset({Capability.OBSERVE_AGGREGATE, Capability.POISON_OWN_UPDATE})
    Params = CGIParams
    demo_overrides = {"iterations": 300}
    smoke_overrides = {"iterations": 2, "malicious_steps": 1}

    def __init__(self, params: AttackParams, context: AttackContext | None = None) -> None:
        super().__init__(params, context)
        self._clients: dict[int, LocalBatch] = {}  # the malicious clients' own data, pooled
        self._previous: tuple[int, Tensor] | None = None  # (round, flat model received then)
        self._crafted: tuple[int, tuple[Tensor, ...] | None] | None = None  # (round, what every one sends)
        self._blends: list[Blend] = []
        self._setup: FLSetup | None = None
        self._batch = 1  # the round's batch size, as the clients see it
        self._generator = torch.Generator().manual_seed(self.context.seed)

    # --- before round 1 -----------------------------------------------------------------------

    def check_classes(self, num_classes: int, dataset: str) -> None:
        p: CGIParams = self.params  # type: ignore[assignment]
        if p.target_class >= num_classes:
            raise GialabError(f"attack.target_class {p.target_class} is not a class of dataset {dataset!r}; "
                              f"valid: 0..{num_classes - 1}")

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        p: CGIParams = self.params  # type: ignore[assignment]
        self.check_classes(data.num_classes, data.name)
        if p.batch_size is None:
            layer, _ = last_linear_index(model)
            if layer.bias is None:
                raise GialabError("cgi: the model's last layer has no bias to count target images from; "
                                  "set attack.batch_size")

    def join(self, clients: Mapping[int, LocalBatch], data: DataSpec) -> None:
        p: CGIParams = self.params  # type: ignore[assignment]
        self._clients = dict(clients)
        if not bool((self._pooled().labels == p.target_class).any()):
            raise GialabError(
                f"cgi: the attackers' own data holds no example of target_class {p.target_class} "
                f"({data.class_names[p.target_class]}), whose loss its malicious model maximizes; "
                "raise examples_per_client or pick another attacker or target_class")

    # --- as a client, every round -------------------------------------------------------------

    def craft_update(
        self, model: nn.Module, honest: ClientUpdate, own: LocalBatch, setup: FLSetup, round_index: int
    ) -> tuple[Tensor, ...] | None:
        """One crafted update per round, sent by every malicious client (they coordinate)."""
        self._setup, self._batch = setup, honest.num_examples
        if round_index == setup.rounds - 1:
            return self._non_target_update(model, own, setup, honest)
        if self._crafted is None or self._crafted[0] != round_index:
            self._crafted = (round_index, self._craft(model, honest, setup, round_index))
        return self._crafted[1]

    def _craft(self, model: nn.Module, honest: ClientUpdate, setup: FLSetup, round_index: int) -> tuple[Tensor, ...] | None:
        p: CGIParams = self.params  # type: ignore[assignment]
        current = flatten(list(model.parameters()))
        previous, self._previous = self._previous, (round_index, current)
        own = self._pooled()
        if not p.poison or self._confidence(model, own) <= p.poison_until:
            return None
        benign, spread = self._benign_estimate(model, own, setup, honest)
        aggregate = benign  # eq. 16, as the clients' own estimate of this round's aggregate
        if p.reference == "previous" and previous is not None and previous[0] == round_index - 1:
            aggregate = (previous[1] - current) / self._alpha(setup)  # eq. 16 read off the last two models
        if spread is None:
            spread = float((flatten(honest.tensors) - aggregate).norm())
        poisoned = current - flatten(list(self._malicious_model(model, own).parameters()))  # eq. 15
        norm = float(poisoned.norm())
        if norm == 0.0:
            return None
        mix = blend(poisoned / norm, benign, aggregate, p.stealth * spread)  # eqs. 17-18
        self._blends.append(mix)
        crafted = (mix.rho * poisoned.double() / norm + mix.beta * benign.double()).float()
        return unflatten(crafted, honest.tensors)

    def _pooled(self) -> LocalBatch:
        batches = [self._clients[c] for c in sorted(self._clients)]
        return LocalBatch(torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches]))

    def _benign_estimate(
        self, model: nn.Module, own: LocalBatch, setup: FLSetup, honest: ClientUpdate
    ) -> tuple[Tensor, float | None]:
        """The mean honest update over the clients' own data cut into batches of the round's size,
        and the root mean square distance of one batch's update to it (None with a single batch)."""
        size = honest.num_examples
        chunks = len(own.labels) // size
        if chunks < 2:
            return flatten(honest.tensors), None
        order = torch.randperm(len(own.labels), generator=self._generator)
        updates = []
        for j in range(chunks):
            pick = order[j * size:(j + 1) * size]
            local = copy.deepcopy(model)
            if setup.algorithm == "fedsgd":
                updates.append(flatten(fedsgd_update(local, F.cross_entropy, own.images[pick], own.labels[pick])))
            else:
                updates.append(flatten(fedavg_update(local, F.cross_entropy, own.images[pick], own.labels[pick], setup)))
        rows = torch.stack(updates)
        mean = rows.mean(dim=0)
        return mean, float((rows - mean).pow(2).sum(dim=1).mean().sqrt())

    def _alpha(self, setup: FLSetup) -> float:
        p: CGIParams = self.params  # type: ignore[assignment]
        if p.server_lr is not None:
            return p.server_lr
        return setup.learning_rate if setup.algorithm == "fedsgd" else 1.0

    def _malicious_model(self, model: nn.Module, own: LocalBatch) -> nn.Module:
        """Phi_mal: local training that maximizes the target class's loss and minimizes the rest's."""
        p: CGIParams = self.params  # type: ignore[assignment]
        mal = copy.deepcopy(model).train()
        sign = torch.where(own.labels == p.target_class, -1.0, 1.0)
        params = list(mal.parameters())
        if p.malicious_layers == "classifier":
            layer, _ = last_linear_index(mal)
            params = [w for w in (layer.weight, layer.bias) if w is not None]
        for _ in range(p.malicious_steps):
            loss = (sign * F.cross_entropy(mal(own.images), own.labels, reduction="none")).mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for w, g in zip(params, grads, strict=True):
                    w.sub_(p.malicious_lr * g)
        return mal

    def _non_target_update(
        self, model: nn.Module, own: LocalBatch, setup: FLSetup, honest: ClientUpdate
    ) -> tuple[Tensor, ...]:
        """The inverted round's update: an honest one from the client's non-target examples only,
        so the aggregate holds neither poison nor a target-class image of the attackers' own."""
        p: CGIParams = self.params  # type: ignore[assignment]
        keep = (own.labels != p.target_class).nonzero().flatten()[: honest.num_examples]
        if len(keep) == 0:
            return tuple(torch.zeros_like(t) for t in honest.tensors)
        x, y = own.images[keep], own.labels[keep]
        if setup.algorithm == "fedsgd":
            return fedsgd_update(copy.deepcopy(model), F.cross_entropy, x, y)
        return fedavg_update(copy.deepcopy(model), F.cross_entropy, x, y, setup)

    # --- after the last round -----------------------------------------------------------------

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: CGIParams = self.params  # type: ignore[assignment]
        if observation.aggregate is None:
            raise GialabError("cgi needs the aggregate (observe_aggregate), which this scenario withholds")
        setup = self._setup
        if setup is None or observation.round != setup.rounds - 1:
            raise GialabError("cgi inverts the last round's aggregate, but the attacker did not take part in it; "
                              "leave fl.clients_per_round unset so every client takes part")
        device = self.context.device
        model = copy.deepcopy(observation.model).to(device).train()
        replace_all_batch_norm_modules_(model)
        aggregate = tuple(t.detach().to(device) for t in observation.aggregate)  # eq. 20 (scale-free below)
        estimate = self._target_count(model, aggregate, len(observation.participants), setup)
        n = p.batch_size or max(1, round(estimate))
        labels = torch.full((n,), p.target_class, dtype=torch.long, device=device)
        reg = Regularizers(tv=p.tv, l2=p.l2, clip=p.clip)
        step = make_objective(model, aggregate, labels, "cosine", reg, p.restarts)  # eqs. 19, 21
        spec = observation.data
        start = time.perf_counter()
        mean, std = torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device)
        x0 = restart_init(self.context.seed, p.restarts, (n, *spec.shape), mean, std).to(device)
        images, distances, _ = signed_adam(step, x0, mean.view(-1, 1, 1), std.view(-1, 1, 1), lr=p.lr,
                                           iterations=p.iterations, progress=self.context.progress)
        best = int(torch.where(torch.isfinite(distances), distances, torch.inf).argmin())
        details = {
            "target_class": float(p.target_class), "target_count_estimate": estimate, "recovered_count": float(n),
            "cosine_distance": float(distances[best]), "inversion_seconds": time.perf_counter() - start,
            "poisoned_rounds": float(len(self._blends)), "target_confidence": self._confidence(model, self._pooled()),
        }
        if self._blends:
            details |= {
                "rho_mean": sum(b.rho for b in self._blends) / len(self._blends),
                "beta_mean": sum(b.beta for b in self._blends) / len(self._blends),
                "distance_mean": sum(b.distance for b in self._blends) / len(self._blends),
            }
        return Reconstruction(
            images=images[best].clamp(0, 1).cpu(), labels=labels.cpu(), source=None,
            reference=x0[best].clamp(0, 1).cpu(), details=details, target_class=p.target_class,
        )

    def _target_count(self, model: nn.Module, aggregate: tuple[Tensor, ...], participants: int,
                      setup: FLSetup) -> float:
        """Target images behind the aggregate, from the last layer's bias gradient (module docstring)."""
        p: CGIParams = self.params  # type: ignore[assignment]
        layer, index = last_linear_index(model)
        if layer.bias is None:
            return float(p.batch_size or 1)
        signal = float(aggregate[index + 1][p.target_class])
        if setup.algorithm == "fedavg":  # a delta of E epochs of steps ~ that many gradient steps
            steps = setup.local_epochs * math.ceil(self._batch / (setup.local_batch_size or self._batch))
            signal /= setup.learning_rate * steps
        own = self._pooled()
        with torch.no_grad():
            mean_p = float(F.softmax(model(own.images.to(_device(model))), dim=1)[:, p.target_class].mean())
        return max(0.0, (mean_p - signal) * participants * self._batch)

    def _confidence(self, model: nn.Module, own: LocalBatch) -> float:
        """Mean softmax of the target class on the attackers' own target examples (low: poisoned)."""
        p: CGIParams = self.params  # type: ignore[assignment]
        mine = own.labels == p.target_class
        with torch.no_grad():
            probs = F.softmax(model(own.images[mine].to(_device(model))), dim=1)
        return float(probs[:, p.target_class].mean())
