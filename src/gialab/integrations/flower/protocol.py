"""``FlowerProtocol``: gialab's protocol with Flower's simulation engine as the transport.

A subclass of ``fl.protocol.Protocol`` whose ``run_round(plan)`` runs one Flower simulation
(``flwr.simulation.run_simulation``: a ServerApp, one ClientApp per gialab client on Ray
workers): the plan's models go out through ``server_app.PlannedStrategy``, the clients train
honestly (``client_app``), refuse through the audit mod (``audit_mod``) and, under
``secure_aggregation``, reply through Flower's SecAgg+. Everything after the round is gialab's
unchanged: the runner plans, gates (``threats.observe``), attacks and scores the returned
``RoundTranscript`` as it does the in-process protocol's.

What the transcript holds, and from where:

* ``aggregate``: what Flower's server computed, SecAgg+'s unmasked weighted mean (quantized to
  SecAgg+'s fixed point, clipped to its range) or the default workflow's weighted mean of the
  updates it received.
* ``updates``: under the default workflow, what the server received; under SecAgg+ the server
  never holds one, and as gialab's own ``secure_aggregation`` does, the transcript records every
  client's update from the client's side (its record, ``client_app.ClientFiles``) for the truth
  side, while the threat gate withholds them (``observe_individual`` is withdrawn).
* ``refused`` and the truth's batches: from the clients' records; a refusal's findings also
  reach the server, in the Error reply.

One simulation per round: Ray starts and stops each round (seconds), and the global model
(stepped by gialab after an honest round) goes out again in the next. Each client's batch is
seeded by (seed, round, client) rather than drawn from one shared generator, so a scenario's
numbers under Flower are reproducible but not those of the in-process engine when a client
holds more examples than its batch.
"""

from __future__ import annotations

import copy
import logging
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gialab.data.dataset import DataSpec
from gialab.defenses.base import Aggregator, ModelAudit
from gialab.defenses.secure_aggregation import SecureAggregation
from gialab.errors import GialabError
from gialab.fl.client import Client, ClientUpdate, LocalBatch
from gialab.fl.commitment import model_commitment
from gialab.fl.protocol import Protocol, RoundTranscript, RoundTruth, ServerPlan
from gialab.fl.setup import FLSetup
from gialab.fl.training import LossFn
from gialab.integrations.flower.audit_mod import AuditMod
from gialab.integrations.flower.client_app import ClientFiles, ClientSetup, build_client_app
from gialab.integrations.flower.server_app import build_server_app, planned_strategy
from gialab.integrations.flower.support import import_flwr


class FlowerProtocol(Protocol):
    """Runs each round as a Flower simulation of ``len(clients)`` SuperNodes on ``workers`` Ray CPUs."""

    def __init__(
        self,
        model: nn.Module,
        clients: Sequence[Client],
        setup: FLSetup,
        *,
        batch_size: int,
        model_name: str,
        data: DataSpec,
        loss_fn: LossFn = F.cross_entropy,
        aggregator: Aggregator | None = None,
        seed: int = 0,
        audits: Sequence[ModelAudit] = (),
        workers: int = 1,
        scratch: Path | None = None,
    ) -> None:
        super().__init__(model, clients, setup, batch_size=batch_size, loss_fn=loss_fn, aggregator=aggregator,
                         seed=seed, audits=audits)
        import_flwr()
        self.seed = seed
        self.workers = workers
        self._tmp = tempfile.TemporaryDirectory(prefix="gialab-flower-") if scratch is None else None
        self.files = ClientFiles(Path(self._tmp.name) if self._tmp else scratch)  # type: ignore[arg-type]
        self.files.write_data(list(clients))
        self.client_setup = ClientSetup(self.files, setup, batch_size, seed, model_name, tuple(data.shape),
                                        data.num_classes, loss_fn)
        self.secagg = isinstance(self.aggregator, SecureAggregation)
        self.rounds_report: list[dict[str, Any]] = []

    @property
    def engine_report(self) -> dict[str, Any]:
        """What the run's JSON records of the engine: Flower's version, workflow, per-round costs."""
        import flwr

        return {"engine": "flower", "flwr": flwr.__version__, "workers": self.workers,
                "workflow": "secagg+" if self.secagg else "default", "rounds": self.rounds_report}

    def run_round(self, plan: ServerPlan | None = None) -> tuple[RoundTranscript, RoundTruth]:
        plan = plan or ServerPlan()
        if plan.sybils is not None:
            raise GialabError("sybil devices are not supported under --engine flower; use --engine gialab")
        round_index = len(self.participation_log)
        participants = plan.participants or self.sample_participants()
        self._check_clients(participants)
        broadcast = plan.model or self.global_model
        snapshots: dict[int, nn.Module] = {}
        models: dict[int, nn.Module] = {}
        for cid in participants:
            chosen = plan.per_client.get(cid, broadcast)
            models[cid] = snapshots.setdefault(id(chosen), copy.deepcopy(chosen))
        commitment = model_commitment(broadcast) if self.audits else None

        strategy, seconds = self._simulate(models, round_index, commitment, len(participants))
        refused: dict[int, str] = {}
        batches: dict[int, LocalBatch] = {}
        updates: dict[int, ClientUpdate] = {}
        workers: dict[int, int] = {}
        for cid in participants:
            if not self.files.record(round_index, cid).exists():
                raise RuntimeError(f"client {cid} neither trained nor refused in Flower round {round_index}")
            record = self.files.read_record(round_index, cid)
            batches[cid] = LocalBatch(record["images"], record["labels"])
            workers[record["pid"]] = max(workers.get(record["pid"], 0), record["peak_rss"])
            if "refused" in record:
                refused[cid] = record["refused"]
            elif cid in strategy.updates:  # the default workflow: what the server received
                updates[cid] = strategy.updates[cid]
            else:  # SecAgg+: the client's own record of what it masked and sent
                updates[cid] = ClientUpdate(cid, round_index, tuple(record["update"]), len(record["labels"]))
        if strategy.aggregate is not None:
            aggregate = strategy.aggregate
        elif updates:
            raise RuntimeError(f"Flower's round ended without an aggregate although {sorted(updates)} answered")
        else:  # every participant refused: the server learns nothing and the model stays
            aggregate = tuple(torch.zeros_like(p) for p in broadcast.parameters())
        if plan.model is None and not plan.per_client and updates:
            self._step(aggregate)
        self.participation_log.append(tuple(participants))
        self.acceptance_log.append(None)  # a weighted mean (or SecAgg+'s) accepts every update
        self.rounds_report.append({
            "round": round_index, "simulation_s": round(seconds, 3), "supernodes": len(self.clients),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "worker_peak_rss_mb": sorted(round(v / 2**20, 1) for v in workers.values()),
        })
        transcript = RoundTranscript(round_index, tuple(participants), models, updates, aggregate,
                                     self.setup.update_kind, self.setup, refused=refused, commitment=commitment)
        return transcript, RoundTruth(round_index, batches)

    def _simulate(self, models: dict[int, nn.Module], round_index: int, commitment: str | None,
                  round_size: int) -> tuple[Any, float]:
        from flwr.simulation import run_simulation

        strategy = planned_strategy(models, self.global_model, round_index=round_index, commitment=commitment,
                                    num_clients=len(self.clients), secagg=self.secagg)
        threshold = self.aggregator.threshold_for(round_size) if self.secagg else None  # type: ignore[attr-defined]
        server_app = build_server_app(strategy, secagg_threshold=threshold, num_shares=round_size,
                                      max_weight=float(self.batch_size), seed=self.seed + round_index)
        audit = AuditMod(self.client_setup, self.audits) if self.audits else None
        client_app = build_client_app(self.client_setup, secagg=self.secagg, audit_mod=audit)
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"num_cpus": self.workers, "num_gpus": 0, "include_dashboard": False,
                                 "logging_level": logging.ERROR, "log_to_driver": False}}
        started = time.perf_counter()
        flwr_logger = logging.getLogger("flwr")
        level = flwr_logger.level
        flwr_logger.setLevel(logging.WARNING)
        try:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(self.clients),
                           backend_config=backend)
        finally:
            flwr_logger.setLevel(level)
        if strategy.errors:
            raise RuntimeError(f"Flower clients failed in round {round_index}: {strategy.errors[0]}")
        return strategy, time.perf_counter() - started
