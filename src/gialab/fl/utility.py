"""What a defense costs the federation: held-out accuracy of a small FL training with it in place.

A defense is worth what it takes from an attack against what it costs the model the federation
trains: the obfuscation defenses of the survey's section 2.2 (DP noise, compression, pruning)
perturb exactly the updates the training needs. The runner measures the first; this module
measures the second. It trains a fresh model by the same ``Protocol`` an attack run uses (the
defenses' client-side transforms and aggregator in the same order, the same seeded generator), for
a fixed number of rounds, and scores it on examples no client held: the dataset is split once,
stratified by class, into a held-out test part and a training part that alone is shared among the
clients. The accuracy after R rounds is then the utility of that defense setting, comparable
across settings because everything else (data split, partition, initial weights, client sampling)
comes from the same seed.

Defense settings no round could satisfy (a Byzantine budget too large for the round, distributed
DP with one client) are refused before any training, as in the runner.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from gialab.data import load_dataset, partition_dirichlet, partition_iid
from gialab.data.dataset import ImageDataset
from gialab.defenses import resolve_defenses
from gialab.defenses.base import PrivacyAccounted
from gialab.errors import GialabError
from gialab.fl.client import Client
from gialab.fl.protocol import Protocol
from gialab.fl.setup import FLSetup
from gialab.models import build_model


@dataclass(frozen=True)
class UtilityResult:
    """Held-out accuracy before and after the training, and what it was measured on."""

    accuracy: float
    initial_accuracy: float
    rounds: int
    clients: int
    train_examples: int  # held by the clients together
    test_examples: int
    privacy: Mapping[str, Mapping[str, float | None]]  # (epsilon, delta) of each DP defense, as the runner reports
    seconds: float


def held_out_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, test) index arrays, stratified by class so every class is scored."""
    if not 0.0 < test_fraction < 1.0:
        raise GialabError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    indices = np.arange(len(labels))
    try:
        train, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise GialabError(f"cannot hold out {test_fraction:g} of {len(labels)} examples by class: {exc}") from None
    return np.sort(train), np.sort(test)


def federation_split(
    labels: np.ndarray, clients: int, *, examples_per_client: int | None = None, test_fraction: float = 0.25,
    partition: Literal["iid", "dirichlet"] = "iid", dirichlet_alpha: float = 0.5, seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each client's dataset indices and the held-out test indices; no test index is any client's.

    The clients share the training part only (IID or Dirichlet label skew, as in a scenario),
    ``examples_per_client`` each, by default an equal share of it.
    """
    train, test = held_out_split(labels, test_fraction, seed)
    per_client = examples_per_client or len(train) // clients
    if per_client < 1:
        raise GialabError(f"{len(train)} training examples cannot be shared among {clients} clients")
    rng = np.random.default_rng(seed)
    if partition == "iid":
        parts = partition_iid(len(train), clients, per_client, rng)
    else:
        parts = partition_dirichlet(labels[train], clients, per_client, dirichlet_alpha, rng)
    return [train[part] for part in parts], test


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1024) -> float:
    """Share of ``images`` whose highest logit is the true label (evaluation mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        logits = model(images[start:start + batch])
        correct += int((logits.argmax(dim=1) == labels[start:start + batch]).sum())
    model.train(was_training)
    return correct / len(labels)


def federated_accuracy(
    model: str = "lenet",
    dataset: str = "digits",
    *,
    defenses: Sequence[str | Mapping[str, Any]] = (),
    setup: FLSetup | None = None,
    clients: int = 10,
    examples_per_client: int | None = None,
    batch_size: int | None = None,
    partition: Literal["iid", "dirichlet"] = "iid",
    dirichlet_alpha: float = 0.5,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> UtilityResult:
    """Train ``model`` by FL on ``dataset`` under ``defenses`` for ``setup.rounds`` rounds; score held out.

    ``defenses`` takes the scenario's form (names or ``{name: ..., <parameter>: ...}``).
    ``examples_per_client`` defaults to an equal share of the training part; ``batch_size`` (the
    examples a client uses per round, as in a scenario) defaults to all of a client's examples.
    """
    started = time.perf_counter()
    setup = setup or FLSetup()
    stack = resolve_defenses(list(defenses))
    round_size = setup.clients_per_round or clients
    if round_size > clients:
        raise GialabError(f"clients_per_round {round_size} exceeds the {clients} clients; use at most {clients}")
    stack.check_round_size(round_size)

    torch.manual_seed(seed)
    data = load_dataset(dataset, seed=seed)
    if not isinstance(data, ImageDataset):
        raise GialabError(f"utility is measured on image classification; dataset {dataset!r} holds text")
    members, test = federation_split(
        data.labels.numpy(), clients, examples_per_client=examples_per_client, test_fraction=test_fraction,
        partition=partition, dirichlet_alpha=dirichlet_alpha, seed=seed)
    per_client = len(members[0])
    local_batch = batch_size or per_client
    if local_batch > per_client:
        raise GialabError(f"batch_size {local_batch} is larger than each client's data ({per_client} examples)")
    privacy = {d.name: d.privacy(setup, clients=clients, batch_size=local_batch, local_examples=per_client)
               for d in stack.transforms if isinstance(d, PrivacyAccounted)}
    federation = [Client(cid, data.images[torch.as_tensor(idx)], data.labels[torch.as_tensor(idx)])
                  for cid, idx in enumerate(members)]

    torch.manual_seed(seed)
    net = build_model(model, data.spec.shape, data.spec.num_classes)
    test_images, test_labels = data.images[torch.as_tensor(test)], data.labels[torch.as_tensor(test)]
    initial = accuracy(net, test_images, test_labels)
    protocol = Protocol(net, federation, setup, batch_size=local_batch, transforms=stack.transforms,
                        aggregator=stack.aggregator, seed=seed)
    for _ in range(setup.rounds):
        protocol.run_round()
    return UtilityResult(
        accuracy=accuracy(net, test_images, test_labels), initial_accuracy=initial, rounds=setup.rounds,
        clients=clients, train_examples=clients * per_client, test_examples=len(test), privacy=privacy,
        seconds=time.perf_counter() - started,
    )
