"""What each defense column of a sweep costs the federation: the utility side of the privacy-utility curves.

The attack side of a sweep says how much a defense takes from each attack; this module measures
what it costs the model the federation trains, with :func:`gialab.fl.utility.federated_accuracy`
(a fresh model trained by FedAvg through the same ``Protocol`` and defenses, scored on held-out
examples no client holds). One reference training per defense column, the same for every attack,
so the curves compare defenses on one scale: LeNet on the embedded digits, 10 IID clients, FedAvg
with one local epoch of batch 16 at learning rate 1 (``bench/privacy_utility.py``'s defaults),
seed 0. Each result is stored in the sweep's database under a key of everything that decides it,
so a resumed sweep does not train again; a defense the training refuses (a robust aggregator
needing more clients per round) is stored with its one-line reason, as a skipped cell is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gialab.errors import GialabError
from gialab.fl.setup import FLSetup
from gialab.fl.utility import federated_accuracy
from gialab.matrix.cells import DefenseColumn
from gialab.report.database import insert_utility, read_utility


@dataclass(frozen=True)
class UtilitySpec:
    """The reference training every defense column is scored by."""

    rounds: int
    model: str = "lenet"
    dataset: str = "digits"
    clients: int = 10
    local_batch_size: int = 16
    learning_rate: float = 1.0
    seed: int = 0

    @property
    def setup(self) -> FLSetup:
        return FLSetup(algorithm="fedavg", rounds=self.rounds, learning_rate=self.learning_rate,
                       local_batch_size=self.local_batch_size)

    def describe(self) -> str:
        return (f"{self.model} on {self.dataset}, FedAvg, {self.clients} IID clients x {self.rounds} rounds of one "
                f"local epoch (batch {self.local_batch_size}, lr {self.learning_rate:g}), held-out quarter, "
                f"seed {self.seed}")


def utility_key(spec: UtilitySpec, column: DefenseColumn) -> str:
    config = {"spec": asdict(spec), "defenses": list(column.defenses)}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def measure_utility(spec: UtilitySpec, columns: Sequence[DefenseColumn], db: Path) -> int:
    """Train once per column not yet stored; returns how many trainings ran.

    One torch thread, as a sweep's cells run: the accuracy then does not depend on the machine's
    thread count, and a loaded machine is not oversubscribed.
    """
    if spec.rounds < 1:
        raise GialabError(f"--utility-rounds must be at least 1 to measure utility, got {spec.rounds}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(spec, columns, db)
    finally:
        torch.set_num_threads(threads)


def _measure(spec: UtilitySpec, columns: Sequence[DefenseColumn], db: Path) -> int:
    stored = {row["key"] for row in read_utility(db)}
    ran = 0
    for column in columns:
        key = utility_key(spec, column)
        if key in stored:
            continue
        row: dict[str, Any] = {"key": key, "column_label": column.label, "defenses": list(column.defenses),
                               "config": asdict(spec), "description": spec.describe()}
        try:
            result = federated_accuracy(spec.model, spec.dataset, defenses=list(column.defenses), setup=spec.setup,
                                        clients=spec.clients, seed=spec.seed)
        except GialabError as exc:
            row |= {"accuracy": None, "initial_accuracy": None, "reason": str(exc), "seconds": 0.0}
        else:
            row |= {"accuracy": result.accuracy, "initial_accuracy": result.initial_accuracy, "reason": None,
                    "seconds": round(result.seconds, 3)}
        insert_utility(db, row)
        ran += 1
    return ran


def utility_by_column(db: Path, columns: Sequence[DefenseColumn]) -> dict[str, dict[str, Any]]:
    """The stored utility of each column (by label), for whichever reference training measured it last."""
    wanted = {c.label: json.dumps(list(c.defenses), sort_keys=True) for c in columns}
    found: dict[str, dict[str, Any]] = {}
    for row in read_utility(db):  # in insertion order: the latest measurement wins
        label = row["column_label"]
        if wanted.get(label) == json.dumps(row["defenses"], sort_keys=True):
            found[label] = row
    return found
