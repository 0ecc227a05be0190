"""The federated learning protocol: honest clients, a server loop, and its transcript."""

from gialab.fl.client import Client, ClientUpdate, LocalBatch, parameter_index
from gialab.fl.protocol import Protocol, RoundTranscript, RoundTruth, ServerPlan, SybilDevices
from gialab.fl.setup import FLSetup
from gialab.fl.training import fedavg_update, fedsgd_update

__all__ = [
    "Client", "ClientUpdate", "FLSetup", "LocalBatch", "Protocol", "RoundTranscript",
    "RoundTruth", "ServerPlan", "SybilDevices", "fedavg_update", "fedsgd_update", "parameter_index",
]
