"""Flower (flwr 1.41) as gialab's FL transport: a scenario's rounds as a Flower simulation.

Optional: ``pip install 'gialab[flower]'``; ``gialab run <preset> --engine flower``. A round is
a Flower app on Flower's simulation engine: a ServerApp whose strategy is the scenario's server,
honest or malicious (``server_app``), and one ClientApp per client training with gialab's local
training (``client_app``); ``secure_aggregation`` is Flower's own SecAgg+ and ``model_audit`` a
Flower client mod (``audit_mod``). ``protocol.FlowerProtocol`` returns the round as gialab's
``RoundTranscript``, so threat gate, attacks, metrics and reports are the in-process ones.
``support`` refuses, before any work, what Flower does not run. Modules importing ``flwr`` do so
inside functions, so this package imports without it.
"""

from gialab.integrations.flower.support import MISSING, check_flower, import_flwr

__all__ = ["MISSING", "check_flower", "import_flwr"]
