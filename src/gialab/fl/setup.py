"""The FL algorithm's knobs, shared by clients, the server and (as side information) attackers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class FLSetup(BaseModel):
    """FedSGD sends one gradient of a local batch; FedAvg sends the change of E local epochs.

    ``local_batch_size`` only matters for FedAvg: ``None`` means one full-batch step per epoch.
    ``learning_rate`` is the clients' local rate under FedAvg and the server's step under FedSGD.
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

    @property
    def update_kind(self) -> Literal["gradient", "model_delta"]:
        return "gradient" if self.algorithm == "fedsgd" else "model_delta"
