"""The honest Flower ClientApp: each SuperNode is one gialab client training with gialab's code.

Each client's private examples are written once, before the simulation, to its own file in the
run's scratch folder (``ClientFiles``), standing in for the device's own storage; a ClientApp
reads only the file of its partition (``node_config["partition-id"]``, which is the gialab
client id). It answers the server's who-are-you query with that id, and a ``TRAIN`` message
with ``fl.client.Client.train``: FedSGD's gradient or FedAvg's ``w_start - w_end`` on the
round's batch, aligned with ``model.parameters()``.

The round's batch is drawn with a generator seeded from (scenario seed, round, client), so the
model audit (``audit_mod.py``), which must judge the model on the batch the client would train
on, draws the same one, and so does a re-run. What the client did (its batch, its update, or
its refusal; its process and peak memory) it also writes to a record next to its data: the
truth side of the run reads these to score the attack, as the in-process protocol's
``RoundTruth`` does. None of it reaches the server through Flower.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gialab.fl.client import Client, LocalBatch
from gialab.fl.setup import FLSetup
from gialab.fl.training import LossFn
from gialab.integrations.flower import wire

PARTITION = "partition-id"  # Flower's simulation engine numbers its SuperNodes' partitions 0..N-1


def round_generator(seed: int, round_index: int, client: int) -> torch.Generator:
    """The generator of one client's round: its batch, and its training's randomness."""
    state = np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def numpy_seed(seed: int, round_index: int, client: int) -> int:
    """SecAgg+ rounds stochastically with NumPy's global generator; seeded per client and round."""
    return int(np.random.SeedSequence([seed, round_index, client, 1]).generate_state(1)[0])


@dataclass(frozen=True)
class ClientFiles:
    """Where each client's examples and each round's records lie (one scratch folder per run)."""

    root: Path

    def data(self, client: int) -> Path:
        return self.root / "clients" / f"{client}.pt"

    def record(self, round_index: int, client: int) -> Path:
        return self.root / f"round-{round_index}" / f"{client}.pt"

    def write_data(self, clients: list[Client]) -> None:
        (self.root / "clients").mkdir(parents=True, exist_ok=True)
        for c in clients:
            held = c.local_data()
            torch.save({"images": held.images, "labels": held.labels}, self.data(c.client_id))

    def load_client(self, client: int) -> Client:
        held = torch.load(self.data(client), weights_only=True)
        return Client(client, held["images"], held["labels"])

    def write_record(self, round_index: int, client: int, batch: LocalBatch, **fields: Any) -> None:
        path = self.record(round_index, client)
        path.parent.mkdir(parents=True, exist_ok=True)
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        torch.save({"images": batch.images, "labels": batch.labels, "pid": os.getpid(), "peak_rss": usage,
                    **fields}, path)

    def read_record(self, round_index: int, client: int) -> dict[str, Any]:
        return torch.load(self.record(round_index, client), weights_only=True)


@dataclass(frozen=True)
class ClientSetup:
    """What every honest ClientApp knows: the scenario's public setup and its own files."""

    files: ClientFiles
    setup: FLSetup
    batch_size: int
    seed: int
    model_name: str
    shape: tuple[int, ...]
    num_classes: int
    loss_fn: LossFn

    def batch(self, client: Client, round_index: int) -> LocalBatch:
        return client.draw_batch(self.batch_size, round_generator(self.seed, round_index, client.client_id))

    def decode(self, arrays: list[np.ndarray], config: dict) -> torch.nn.Module:
        return wire.decode_model(arrays, config, model_name=self.model_name, shape=self.shape,
                                 num_classes=self.num_classes)


def _numpy_client_type() -> type:
    from flwr.client import NumPyClient

    class HonestClient(NumPyClient):
        """Trains whatever model it is sent, honestly, on its own batch."""

        def __init__(self, setup: ClientSetup, client_id: int) -> None:
            self.s = setup
            self.client_id = client_id

        def get_properties(self, config: dict) -> dict:
            return {wire.CLIENT_ID: self.client_id}

        def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
            torch.set_num_threads(1)
            round_index = int(config[wire.ROUND])
            client = self.s.files.load_client(self.client_id)
            model = self.s.decode(parameters, config)
            batch = self.s.batch(client, round_index)
            generator = round_generator(self.s.seed, round_index, self.client_id)
            update, _ = client.train(model, self.s.loss_fn, self.s.setup, batch_size=self.s.batch_size,
                                     round_index=round_index, generator=generator, batch=batch)
            self.s.files.write_record(round_index, self.client_id, batch, update=list(update.tensors))
            return wire.update_arrays(update.tensors), update.num_examples, {}

    return HonestClient


@dataclass(frozen=True)
class ClientFn:
    """Flower's ``client_fn``: a fresh honest client for the SuperNode's partition, per message."""

    setup: ClientSetup

    def __call__(self, context: Any) -> Any:
        return _numpy_client_type()(self.setup, int(context.node_config[PARTITION])).to_client()


@dataclass(frozen=True)
class SeedMod:
    """A client mod that seeds NumPy before SecAgg+ quantizes (stochastic rounding): same run, same sum."""

    seed: int

    def __call__(self, msg: Any, ctxt: Any, call_next: Any) -> Any:
        from flwr.app.message_type import MessageType

        if msg.metadata.message_type == MessageType.TRAIN:
            client = int(ctxt.node_config[PARTITION])
            np.random.seed(numpy_seed(self.seed, int(msg.metadata.group_id or 0), client))
        return call_next(msg, ctxt)


def build_client_app(setup: ClientSetup, *, secagg: bool, audit_mod: Any | None) -> Any:
    """The ClientApp: the audit mod first (it sees the model before anything trains on it), then SecAgg+."""
    from flwr.client import ClientApp
    from flwr.client.mod import secaggplus_mod

    mods = [m for m in (audit_mod, SeedMod(setup.seed), secaggplus_mod if secagg else None) if m is not None]
    return ClientApp(client_fn=ClientFn(setup), mods=mods)
