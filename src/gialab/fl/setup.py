"""The FL algorithm's knobs, shared by clients, the server and (as side information) attackers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class FLSetup(BaseModel):
    """FedSGD sends one gradient of a local batch; FedAvg sends the change of E local epochs.

    ``local_batch_size`` only matters for FedAvg: ``None`` means one full-batch step per epoch.
    ``learning_rate`` is the clients' local rate under FedAvg and the server's step under FedSGD
    (under a gossip topology, each node's own step).
    ``topology`` ``star`` is the server-based protocol; the others are decentralized (gossip)
    learning over a peer-to-peer graph (``fl/topology.py``, ``fl/gossip.py``), with ``degree``
    for a random regular graph and ``edge_probability`` for an Erdos-Renyi graph.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Literal["fedsgd", "fedavg"] = "fedsgd"
    local_epochs: PositiveInt = 1
    local_batch_size: PositiveInt | None = None
    learning_rate: PositiveFloat = 0.1
    rounds: PositiveInt = 1
    clients_per_round: PositiveInt | None = Field(
        default=None, description="clients sampled each round; None samples every client"
    )
    topology: Literal["star", "ring", "regular", "erdos-renyi", "complete"] = Field(
        default="star", description="star: a server aggregates; otherwise peers gossip over this graph"
    )
    degree: PositiveInt | None = Field(default=None, description="neighbours per node, topology=regular only")
    edge_probability: float | None = Field(
        default=None, gt=0, le=1, description="probability of each edge, topology=erdos-renyi only"
    )

    @property
    def update_kind(self) -> Literal["gradient", "model_delta"]:
        return "gradient" if self.algorithm == "fedsgd" else "model_delta"
