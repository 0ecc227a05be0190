"""What a scenario may ask of the Flower engine, refused before any work with one line.

Flower replaces gialab's in-process transport only: clients train with gialab's own local
training, the attack plans and reads the rounds as it does in-process, and two defenses map to
Flower's own machinery, ``secure_aggregation`` to Flower's SecAgg+ workflow
(``flwr.server.workflow.SecAggPlusWorkflow`` with ``flwr.client.mod.secaggplus_mod``) and
``model_audit`` to a client mod (``audit_mod.py``). Anything else would silently mean something
else under Flower, so it is refused and named.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import ModuleType

from gialab.defenses import DefenseStack
from gialab.defenses.secure_aggregation import SecureAggregation
from gialab.errors import GialabError
from gialab.scenario import Scenario
from gialab.threats import Capability

MISSING = "--engine flower runs the scenario on Flower, which is not installed; pip install 'gialab[flower]'"
FLOWER_DEFENSES = ("model_audit", "secure_aggregation")
MIN_SECAGG_CLIENTS = 3  # SecAgg+ splits keys into at least 3 shares and needs a threshold below that


def import_flwr() -> ModuleType:
    """``flwr``, with its telemetry off (nothing may leave the machine), or a one-line error."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import flwr
        from flwr.simulation import run_simulation  # noqa: F401  (the [simulation] extra: Ray)
        import ray  # noqa: F401
    except ImportError:
        raise GialabError(MISSING) from None
    return flwr


def check_flower(
    scenario: Scenario, defenses: DefenseStack, round_size: int, requires: Iterable[Capability] = (),
) -> None:
    """Refuse what the Flower engine does not run: say which part of the scenario and what is valid.

    ``requires``: the attack's capabilities. Server-run sybil devices and malicious clients are
    participants gialab itself plays; the Flower app has only honest ClientApps.
    """
    if scenario.malicious_ids or Capability.POISON_OWN_UPDATE in requires:
        raise GialabError("malicious clients (a client-side attack) are not supported under --engine flower, "
                          "whose ClientApps are honest; use a server-side attack or --engine gialab")
    if Capability.SYBIL_CLIENTS in requires:
        raise GialabError("sybil devices are not supported under --engine flower (every SuperNode is an "
                          "honest client); use --engine gialab")
    if scenario.fl.topology != "star":
        raise GialabError(f"fl.topology={scenario.fl.topology} is not supported under --engine flower "
                          "(a Flower ServerApp is a star); use fl.topology=star")
    unsupported = [t.name for t in defenses.transforms]
    if defenses.aggregator.name not in ("mean", SecureAggregation.name):
        unsupported.append(defenses.aggregator.name)
    if unsupported:
        raise GialabError(f"defenses {unsupported} are not supported under --engine flower; "
                          f"valid: {', '.join(FLOWER_DEFENSES)}")
    aggregator = defenses.aggregator
    if isinstance(aggregator, SecureAggregation):
        p = aggregator.params
        if p.dropouts or p.late_dropouts or (p.ring_bits, p.frac_bits) != (64, 24):
            raise GialabError("secure_aggregation under --engine flower is Flower's SecAgg+ with its own "
                              "quantization and no simulated dropouts; set only secure_aggregation.threshold")
        if round_size < MIN_SECAGG_CLIENTS:
            raise GialabError(f"Flower's SecAgg+ needs at least {MIN_SECAGG_CLIENTS} clients per round, "
                              f"the scenario has {round_size}; raise clients")
        threshold = aggregator.threshold_for(round_size)
        if threshold >= round_size:
            raise GialabError(f"Flower's SecAgg+ needs secure_aggregation.threshold below the {round_size} "
                              f"clients of the round, got {threshold}; use {round_size // 2 + 1}..{round_size - 1}")
