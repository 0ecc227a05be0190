"""The Flower ServerApp whose strategy is the (possibly malicious) gialab server of one round.

``PlannedStrategy`` is a Flower ``Strategy`` that sends each sampled client the model gialab's
``ServerPlan`` chose for it: one ``FitIns`` per client from ``configure_fit``, which Flower's
default fit workflow and its SecAgg+ workflow alike deliver as they are (SecAgg+ masks only the
replies). So the honest server (everyone gets the global model) and the malicious one (a trap or
imprint model for everyone, or model inconsistency's dead model for all but the victim) are the
same strategy with different plans. The server learns which SuperNode is which gialab client by
asking (a ``get_properties`` query, answered by ``client_app.HonestClient``), as a real server
knows its clients' identities.

``aggregate_fit`` keeps what reached the server: under the default workflow every client's
update (the server averages them, weighted by example counts, as ``defenses.mean`` does); under
SecAgg+ only the unmasked weighted mean, which Flower hands to every result alike. It returns no
parameters: gialab's protocol, not Flower's state, owns the global model between rounds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gialab.defenses.mean import WeightedMean
from gialab.fl.client import ClientUpdate
from gialab.integrations.flower import wire
from gialab.integrations.flower.audit_mod import parse_refusal

IDENTIFY_TIMEOUT_S = 600


def planned_strategy(
    sent: Mapping[int, nn.Module], honest: nn.Module, *, round_index: int, commitment: str | None,
    num_clients: int, secagg: bool,
) -> Any:
    """A strategy for one round that sends ``sent[client]`` to each gialab client in ``sent``."""
    from flwr.app import Message
    from flwr.common import FitIns, GetPropertiesIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.strategy import Strategy

    class PlannedStrategy(Strategy):
        def __init__(self) -> None:
            self.grid: Any = None  # set by the ServerApp's main
            self.node_to_client: dict[int, int] = {}
            self.updates: dict[int, ClientUpdate] = {}  # individual updates, default workflow only
            self.aggregate: tuple[torch.Tensor, ...] | None = None
            self.answered: tuple[int, ...] = ()
            self.errors: list[str] = []

        def initialize_parameters(self, client_manager: Any) -> Parameters:
            return ndarrays_to_parameters(wire.model_arrays(honest))

        def _identify(self, node_ids: list[int]) -> dict[int, int]:
            messages = [Message(content=compat.getpropertiesins_to_recorddict(GetPropertiesIns({})),
                                dst_node_id=n, message_type=MessageTypeLegacy.GET_PROPERTIES, group_id="0")
                        for n in node_ids]
            found = {}
            for reply in self.grid.send_and_receive(messages, timeout=IDENTIFY_TIMEOUT_S):
                if reply.has_error():
                    raise RuntimeError(f"a SuperNode did not say who it is: {reply.error.reason}")
                res = compat.recorddict_to_getpropertiesres(reply.content)
                found[reply.metadata.src_node_id] = int(res.properties[wire.CLIENT_ID])
            return found

        def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
            if not client_manager.wait_for(num_clients, timeout=IDENTIFY_TIMEOUT_S):
                raise RuntimeError(f"only {client_manager.num_available()} of {num_clients} SuperNodes came up")
            proxies = client_manager.all()
            self.node_to_client = self._identify([int(n) for n in proxies])
            instructions: dict[int, Any] = {}  # one FitIns per distinct model sent
            chosen = []
            for node, proxy in proxies.items():
                model = sent.get(self.node_to_client[int(node)])
                if model is None:
                    continue
                if id(model) not in instructions:
                    instructions[id(model)] = FitIns(
                        ndarrays_to_parameters(wire.model_arrays(model)),
                        wire.model_config(model, honest, round_index, commitment))
                chosen.append((proxy, instructions[id(model)]))
            return chosen

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
            for failure in failures:
                error = failure.args[0] if isinstance(failure, BaseException) and failure.args else failure
                if parse_refusal(getattr(error, "reason", None)) is None:
                    self.errors.append(str(getattr(error, "reason", error)))
            self.answered = tuple(sorted(self.node_to_client[proxy.node_id] for proxy, _ in results))
            if not results:
                return None, {}
            if secagg:  # Flower gives every result the one unmasked weighted mean
                mean = parameters_to_ndarrays(results[0][1].parameters)
                self.aggregate = wire.update_tensors(mean, sent[self.answered[0]])  # shaped like what was trained
                return None, {}
            for proxy, fitres in results:
                cid = self.node_to_client[proxy.node_id]
                tensors = wire.update_tensors(parameters_to_ndarrays(fitres.parameters), sent[cid])
                self.updates[cid] = ClientUpdate(cid, round_index, tensors, int(fitres.num_examples))
            self.aggregate = WeightedMean()([self.updates[c] for c in self.answered], torch.Generator())
            return None, {}

        def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
            return []

        def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Parameters) -> None:
            return None

    return PlannedStrategy()


MODULUS_RANGE = 2**32  # SecAgg+'s default ring, the largest it takes
MAX_QUANTIZATION_RANGE = 2**30  # quantized values are int32


def quantization_range(clients: int) -> int:
    """The finest SecAgg+ quantization whose sum over ``clients`` cannot wrap the 2^32 ring.

    Flower's default, 2^22 levels over [-8, 8], is safe up to 1024 clients and so coarse for
    fewer (3.8e-6 per coordinate) that an imprint read-out loses dB: 10 clients take 2^28 levels.
    """
    return min(MAX_QUANTIZATION_RANGE, 2 ** ((MODULUS_RANGE // clients).bit_length() - 1))


def build_server_app(strategy: Any, *, secagg_threshold: int | None, num_shares: int, max_weight: float,
                     seed: int) -> Any:
    """One round of the default workflow, its fit stage Flower's SecAgg+ when a threshold is given."""
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        strategy.grid = grid
        random.seed(seed)  # SecAgg+ shuffles who neighbours whom with Python's generator
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        fit = None
        if secagg_threshold is not None:
            # Every client shares keys with every other (num_shares = n: SecAgg+ as SecAgg);
            # max_weight = the batch size and the finest safe quantization keep the sum's precision.
            fit = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=secagg_threshold,
                                     max_weight=max_weight, quantization_range=quantization_range(num_shares),
                                     modulus_range=MODULUS_RANGE)
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    return app
