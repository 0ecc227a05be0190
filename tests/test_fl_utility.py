"""The utility side of a defense: held-out accuracy of a small FL training (``gialab.fl.utility``)."""

from __future__ import annotations

import numpy as np
import pytest

import gialab.fl.utility as utility
from gialab.data import load_dataset
from gialab.errors import GialabError
from gialab.fl.setup import FLSetup
from gialab.fl.utility import federated_accuracy, federation_split

# LeNet on digits, 2 clients of ~670 examples, 6 FedAvg rounds: 0.75-0.86 held out over seeds 0-2, ~3 s.
QUICK = {"clients": 2, "setup": FLSetup(algorithm="fedavg", rounds=6, learning_rate=1.0, local_batch_size=16)}


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_no_client_holds_a_test_example_and_every_class_is_scored(partition: str) -> None:
    labels = load_dataset("digits").labels.numpy()
    members, test = federation_split(labels, 5, test_fraction=0.25, partition=partition, seed=3)
    held = np.concatenate(members)
    assert len(np.unique(held)) == len(held)  # clients are disjoint from each other too
    assert not set(held.tolist()) & set(test.tolist())
    assert abs(len(test) - 0.25 * len(labels)) <= 1
    assert set(labels[test].tolist()) == set(range(10))
    again, test_again = federation_split(labels, 5, test_fraction=0.25, partition=partition, seed=3)
    assert np.array_equal(test, test_again) and all(np.array_equal(a, b) for a, b in zip(members, again, strict=True))


def test_training_without_defense_learns_and_repeats_with_the_seed() -> None:
    first = federated_accuracy("lenet", "digits", seed=0, **QUICK)
    assert first.initial_accuracy < 0.2  # an untrained LeNet is at chance on 10 classes
    assert first.accuracy > 0.6
    assert first.test_examples == 450 and first.train_examples == 2 * ((1797 - 450) // 2)
    assert federated_accuracy("lenet", "digits", seed=0, **QUICK).accuracy == first.accuracy


@pytest.mark.parametrize("defense", [
    {"name": "dp_local", "clip": 10.0, "noise_multiplier": 1.0},  # noise std 10 per coordinate
    {"name": "topk", "ratio": 0.001},  # one entry per tensor
])
def test_a_destructive_defense_leaves_the_model_near_chance(defense: dict) -> None:
    result = federated_accuracy("lenet", "digits", defenses=[defense], seed=0, **QUICK)
    assert result.accuracy < 0.3


def test_dp_defenses_report_the_training_epsilon() -> None:
    result = federated_accuracy("lenet", "digits", defenses=[{"name": "dp_local", "noise_multiplier": 0.0}],
                                clients=2, setup=FLSetup(algorithm="fedavg", rounds=2))
    assert set(result.privacy) == {"dp_local"} and result.privacy["dp_local"]["steps"] == 2.0
    assert result.privacy["dp_local"]["epsilon"] is None  # clipping without noise guarantees nothing


def test_settings_no_round_can_meet_are_refused_before_the_data_is_loaded(monkeypatch) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was loaded before the defenses were checked")

    monkeypatch.setattr(utility, "load_dataset", no_data)
    with pytest.raises(GialabError, match="krum with byzantine f=1 needs n > 2f \\+ 2, but the round has n=2"):
        federated_accuracy(defenses=[{"name": "krum", "byzantine": 1}], **QUICK)
    with pytest.raises(GialabError, match="clients_per_round 3 exceeds the 2 clients"):
        federated_accuracy(clients=2, setup=FLSetup(clients_per_round=3))
