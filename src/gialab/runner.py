"""One run, start to end, with data flowing one way.

scenario -> data, model, clients -> protocol rounds -> threat gate (Observation) -> attack
-> metrics (the only place truth and reconstruction meet) -> run folder + database row.

Everything that can be refused (names, capabilities, sizes, the output folder, the model the
attack must handle) is checked before the first round, so a user mistake costs seconds.

A client-side attack (``poison_own_update``) takes the place of the ``malicious_clients``
(``fl.malicious.MaliciousClient``): the victims are all other participants, the attack observes
the rounds the first of them takes part in, and the run reports how often the aggregation rule
accepted the crafted updates (``poison_survival``: the share of rounds with a crafted update, the
inverted round aside, in which the rule accepted at least one; read from the server's log,
which the attacker does not see).

A client-side model audit (``defenses=[model_audit]``) may make the victim refuse the model it
is sent. A round the victim refused gives the attacker nothing of it and is not observed; if the
victim refused every round it was sampled in, the attack is not run and the run still completes,
scoring an empty reconstruction against the batch the victim kept (``metrics.victim_refused`` is
1, ``fraction_recovered`` 0). The run's JSON lists every refusal with its reasons (``audit``):
a defense that stops the attack is a result to record, not a user mistake.

Text runs take the same path with three substitutions: clients hold token ids where images
would be (their own ids are the targets, shifted, of a causal language model's ``lm_loss``);
text attacks return token ids ``(N, sequence_length)`` in ``Reconstruction.images``; and
``score_text`` (token accuracy, BLEU, ROUGE, semantic similarity) replaces the image scores,
with true and recovered text side by side in the report instead of an image grid.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from gialab.attacks.base import Attack, AttackContext, Progress, Reconstruction, no_progress
from gialab.attacks.taxonomy import RECORDS
from gialab.attacks.registry import get_attack
from gialab.data import load_dataset, partition_dirichlet, partition_iid
from gialab.data.dataset import DataSpec, ImageDataset
from gialab.data.registry import class_count
from gialab.data.text import TEXT_DATASETS, TextDataset, decode, token_pieces
from gialab.defenses import DefenseStack, resolve_defenses
from gialab.defenses.base import PrivacyAccounted
from gialab.errors import GialabError
from gialab.fl import Client, Protocol, RoundTranscript, RoundTruth
from gialab.fl.malicious import MaliciousClient
from gialab.fl.gossip import GossipProtocol, GossipTranscript
from gialab.fl.topology import Topology, build_topology
from gialab.metrics import score
from gialab.metrics.disaggregation import disaggregation_scores
from gialab.metrics.dominance import target_cosine
from gialab.metrics.exposed_update import exposed_update_scores
from gialab.metrics.isolation import isolation_scores, update_isolation_scores
from gialab.metrics.lpips import load_lpips
from gialab.metrics.text import score_text
from gialab.models import build_model, load_weights
from gialab.models.pretrain import pretrain
from gialab.models.transformer import check_vocabulary, lm_loss
from gialab.peer_threat import peer_attacker, peer_grants
from gialab.report import (
    atomic_folder, database_path, ensure_writable, insert_run, new_run_id, save_grid, write_run_report,
)
from gialab.scenario import Scenario, load_scenario
from gialab.threats import (
    Capability, Observation, ThreatModel, check_grants, get_threat_model, granted_capabilities, observe,
    participation_report, plan_capabilities,
)


@dataclass(frozen=True)
class RunResult:
    """What a notebook gets back: the summary, the images, and where the run was written."""

    scenario: Scenario
    summary: dict[str, Any]
    reconstruction: Reconstruction
    truth_images: torch.Tensor
    matched_images: torch.Tensor  # reconstruction reordered to truth order (blank where unmatched)
    run_dir: Path

    @property
    def metrics(self) -> dict[str, Any]:
        return self.summary["metrics"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GialabError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GialabError("device cuda was asked for but no CUDA GPU is available; use device=cpu")
    return device


def _build_attack(scenario: Scenario, progress: Progress) -> Attack:
    cls = get_attack(scenario.attack.name)
    params = cls.parse_params(scenario.attack.hyperparameters)
    context = AttackContext(device=_device(scenario.device), seed=scenario.seed, progress=progress,
                            target=scenario.victim)
    return cls(params, context)


def _clients(scenario: Scenario, data: ImageDataset | TextDataset) -> list[Client]:
    """Each client's examples; a text client's targets are its own token ids (``lm_loss`` shifts them)."""
    text = isinstance(data, TextDataset)
    inputs, targets = (data.tokens, data.tokens) if text else (data.images, data.labels)
    rng = np.random.default_rng(scenario.seed)
    per_client = scenario.local_examples
    if scenario.batch_size > per_client:
        raise GialabError(
            f"batch_size {scenario.batch_size} is larger than each client's data ({per_client} examples); "
            f"use batch_size <= examples_per_client"
        )
    if scenario.partition == "iid":
        parts = partition_iid(len(data), scenario.clients, per_client, rng)
    elif text:
        raise GialabError("text data has no class labels to skew; use partition=iid")
    else:
        parts = partition_dirichlet(data.labels.numpy(), scenario.clients, per_client, scenario.dirichlet_alpha, rng)
    return [
        Client(cid, inputs[torch.as_tensor(idx)], targets[torch.as_tensor(idx)])
        for cid, idx in enumerate(parts)
    ]


def _check_modality(attack: Attack, dataset: str) -> None:
    """Refuse an image attack on text or a text attack on images, from the names alone."""
    text_attack = RECORDS[attack.name].target_data.startswith("text")
    if text_attack != (dataset in TEXT_DATASETS):
        wanted = f"text (dataset: {', '.join(TEXT_DATASETS)})" if text_attack else "images"
        raise GialabError(f"attack {attack.name!r} reconstructs {wanted}; dataset {dataset!r} does not hold them")


@dataclass(frozen=True)
class _Rounds:
    """The rounds' outcome for the victim: the round attacked (None if the victim never sent an
    update), the last round it refused (its transcript and truth), and every refusal."""

    attacked: tuple[Observation, RoundTranscript | GossipTranscript, RoundTruth] | None
    last_refused: tuple[RoundTranscript | GossipTranscript, RoundTruth] | None
    refusals: list[dict[str, Any]]


def _attacked_round(
    protocol: Protocol | GossipProtocol, attack: Attack, scenario: Scenario, spec: DataSpec,
    granted: frozenset[Capability], threat: ThreatModel, attacker: int | None = None,
) -> _Rounds:
    """Run ``fl.rounds`` rounds; the attacker strikes in the last one the victim sends an update in.

    Each round the attack may plan a malicious server's deviation; the plan is held against the
    granted capabilities before the round runs. Every round the victim joins (every round, for an
    attack that ``observes_every_round``) is observed through the threat gate and told to the
    attack, so multi-query attacks can adapt their next plan; a round whose model the victim
    refused (a model audit flagged it) is not. The attack reconstructs from the last observation
    it heard; metrics compare against the last round the victim sent an update in.
    """
    attacked: tuple[Observation, RoundTranscript | GossipTranscript, RoundTruth] | None = None
    last_refused: tuple[RoundTranscript | GossipTranscript, RoundTruth] | None = None
    refusals: list[dict[str, Any]] = []
    target = scenario.malicious_ids[0] if scenario.malicious_ids else scenario.victim
    last: Observation | None = None
    for _ in range(scenario.fl.rounds):
        plan = attack.plan_server(protocol.global_model, spec)
        if plan is not None:
            check_grants(attack.name, plan_capabilities(plan, protocol.global_model), granted,
                         f"threat model {scenario.threat_model}")
        transcript, truth = protocol.run_round(plan)
        refusals += [{"round": transcript.round, "client": c, "reasons": r} for c, r in transcript.refused.items()]
        joined = target not in transcript.refused and target in transcript.participants
        if joined or attack.observes_every_round:
            last = observe(
                transcript, truth, threat=threat, granted=granted, data=spec,
                target=target, side_information=scenario.side_information, observer=attacker,
                anonymous=not attack.sees_participants,
                participation=participation_report(
                    protocol.participation_log, scenario.clients, scenario.analytics_window),
            )
            attack.observe_round(last)
        if target in transcript.refused:
            last_refused = (transcript, truth)
        elif joined:
            attacked = (last, transcript, truth)  # type: ignore[assignment]
    if attacked is None and last_refused is None:
        who = "malicious client" if scenario.malicious_ids else "victim"
        raise GialabError(
            f"{who} {target} was never sampled in {scenario.fl.rounds} rounds; "
            f"raise fl.rounds or fl.clients_per_round"
        )
    if attacked is not None and last is not None:
        attacked = (last, *attacked[1:])
    return _Rounds(attacked, last_refused, refusals)


def _check_attackers(attack: Attack, scenario: Scenario) -> None:
    """A client-side attack needs clients to act as; anything else must not name one."""
    acts_as_client = Capability.POISON_OWN_UPDATE in attack.requires
    valid = f"0..{scenario.clients - 1}"
    if acts_as_client and not scenario.malicious_ids:
        raise GialabError(f"attack {attack.name!r} acts as a malicious client; set malicious_clients to a client id ({valid})")
    if not scenario.malicious_ids:
        return
    if not acts_as_client:
        raise GialabError(f"malicious_clients is set but attack {attack.name!r} is not a client-side attack; "
                          "remove malicious_clients")
    for cid in scenario.malicious_ids:
        if cid >= scenario.clients:
            raise GialabError(f"malicious client {cid} is not a client; valid ids: {valid}")
    if len(set(scenario.malicious_ids)) != len(scenario.malicious_ids):
        raise GialabError(f"malicious_clients lists a client twice: {list(scenario.malicious_ids)}")
    if len(scenario.malicious_ids) >= scenario.clients:
        raise GialabError(f"attack {attack.name!r} needs honest clients besides the attackers; "
                          f"use clients > {len(scenario.malicious_ids)}")


def _poison_survival(
    clients: list[MaliciousClient], acceptance: list[tuple[int, ...] | None], attacked_round: int,
) -> dict[str, float | None]:
    """How often the aggregation rule let a crafted update in (server's log), the inverted round aside."""
    rounds = sorted({r for c in clients for r in c.crafted_rounds if r != attacked_round})
    ids = {c.client_id for c in clients}
    if not rounds or any(acceptance[r] is None for r in rounds):
        return {"poison_rounds": len(rounds), "poison_survival": None}
    survived = sum(bool(ids & set(acceptance[r])) for r in rounds)  # type: ignore[arg-type]
    return {"poison_rounds": len(rounds), "poison_survival": survived / len(rounds)}


def _attacked_examples(
    reconstruction: Reconstruction, transcript: RoundTranscript, truth: RoundTruth, attackers: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The private examples a reconstruction claims (images, labels) and the IIP pool.

    Claimed are its source's examples, or those behind the aggregate: in a run with malicious
    clients the other participants' examples (a rule that keeps only some updates, as Krum keeps
    one, hides the rest from the attack, and the scores show it), and only the ``target_class``
    ones for a class-targeted attack. The pool is then all those participants' examples, so
    identifying a recovered image means telling it from the other images of the round, not only
    from the other claimed ones; otherwise it is None (the claimed batch).
    """
    if reconstruction.source is not None:
        sources = [reconstruction.source]
    else:
        sources = [c for c in transcript.answered if c not in attackers]
    images = torch.cat([truth.batches[c].images for c in sources]) if sources else torch.zeros(0)
    labels = torch.cat([truth.batches[c].labels for c in sources]) if sources else torch.zeros(0, dtype=torch.long)
    pool = None
    if reconstruction.target_class is not None:
        keep = labels == reconstruction.target_class
        pool, images, labels = images, images[keep], labels[keep]
    if len(labels) == 0:
        what = "" if reconstruction.target_class is None else f" of class {reconstruction.target_class}"
        raise GialabError(
            f"round {transcript.round}'s aggregate holds no victim's example{what} to score; "
            f"raise batch_size or clients, or pick another seed"
        )
    return images, labels, pool


@dataclass(frozen=True)
class _Admitted:
    """A scenario that passed every check made before any work, with what the checks built."""

    scenario: Scenario
    threat: ThreatModel
    defenses: DefenseStack
    granted: frozenset[Capability]
    attack: Attack
    privacy: dict[str, dict[str, float | None]]
    topology: Topology | None  # None: the server-based star
    attacker: int | None  # the curious peer node under a gossip topology


def _load(scenario: str | Path | Scenario | Mapping[str, Any], overrides: dict[str, Any]) -> Scenario:
    """Keyword overrides use ``__`` for dots; a ``set`` mapping holds dotted keys as they are."""
    dotted = dict(overrides.pop("set", {}) or {})
    dotted.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_scenario(scenario, dotted)


def _admit(scen: Scenario, progress: Progress) -> _Admitted:
    """Everything refusable from the scenario alone: names, capabilities, sizes, hyperparameters."""
    threat = get_threat_model(scen.threat_model)
    defenses = resolve_defenses([d.compact() for d in scen.defenses])
    round_size = scen.fl.clients_per_round or scen.clients
    if round_size > scen.clients:
        raise GialabError(f"fl.clients_per_round {round_size} exceeds the {scen.clients} clients; "
                          f"use at most {scen.clients}")
    defenses.check_round_size(round_size)
    privacy = {d.name: d.privacy(scen.fl, clients=scen.clients, batch_size=scen.batch_size,
                                 local_examples=scen.local_examples)
               for d in defenses.transforms if isinstance(d, PrivacyAccounted)}
    granted = granted_capabilities(threat, scen.extra_capabilities, aggregate_only=defenses.aggregate_only)
    attack = _build_attack(scen, progress)
    topology = build_topology(scen.fl, scen.clients, scen.seed)
    attacker = peer_attacker(topology, threat.name, scen.attacker, scen.victim, scen.clients, defenses)
    if topology is not None and defenses.audits:
        raise GialabError(f"model audits {[a.name for a in defenses.audits]} check a server's broadcast; "
                          f"fl.topology={scen.fl.topology} has no server (use fl.topology=star)")
    if topology is not None and attacker is not None:
        granted = peer_grants(granted, topology, attacker, scen.victim, attack.name, attack.requires)
    context = f"threat model {threat.name}" + (
        f" with defenses [{', '.join(d.name for d in scen.defenses)}]" if scen.defenses else "")
    check_grants(attack.name, attack.requires, granted, context)
    _check_modality(attack, scen.dataset)
    attack.check_update_kind(scen.fl.update_kind)
    attack.check_scenario(scen)
    if scen.victim >= scen.clients:
        raise GialabError(f"victim {scen.victim} is not a client; valid ids: 0..{scen.clients - 1}")
    _check_attackers(attack, scen)
    classes = class_count(scen.dataset)
    if classes is not None:
        attack.check_classes(classes, scen.dataset)
    if scen.pretrain_steps and scen.dataset in TEXT_DATASETS:
        raise GialabError("pretrain_steps applies to image datasets; for text pass trained weights")
    if scen.lpips_weights is not None:
        load_lpips(scen.lpips_weights)  # a bad file fails now with its reason, not after the attack
    return _Admitted(scen, threat, defenses, granted, attack, privacy, topology, attacker)


def check(scenario: str | Path | Scenario | Mapping[str, Any], **overrides: Any) -> Scenario:
    """Refuse what ``run`` refuses before any work, without loading data or running a round.

    The same checks ``run`` makes first, so a sweep can ask this of each cell: an incompatible
    attack x defense pair is reported with its one-line reason in a fraction of a second.
    """
    return _admit(_load(scenario, overrides), no_progress).scenario


def run(
    scenario: str | Path | Scenario | Mapping[str, Any],
    *,
    out: str | Path = "runs",
    progress: Progress | None = None,
    engine: str = "gialab",
    workers: int = 1,
    **overrides: Any,
) -> RunResult:
    """Run a scenario (preset name, YAML path, mapping or Scenario) with dotted-key overrides.

    Keyword overrides use ``__`` for dots in Python (``attack__iterations=50``), or pass a
    ``set={"attack.iterations": 50}`` mapping. ``engine="flower"`` runs the rounds as Flower
    simulations on ``workers`` Ray CPUs (``integrations/flower``, the ``[flower]`` extra);
    everything else is the same.
    """
    started = time.perf_counter()
    admitted = _admit(_load(scenario, overrides), progress or no_progress)  # refuse before any work
    scen, threat, defenses, granted, attack = (
        admitted.scenario, admitted.threat, admitted.defenses, admitted.granted, admitted.attack)
    privacy, topology, attacker = admitted.privacy, admitted.topology, admitted.attacker
    if engine not in ("gialab", "flower"):
        raise GialabError(f"unknown engine {engine!r}; valid: flower, gialab")
    if (workers != 1 and engine != "flower") or workers < 1:
        raise GialabError(f"workers={workers}: Flower's simulation runs on 1 or more Ray CPUs, and only "
                          "with engine flower (the gialab engine runs in this process)")
    if engine == "flower":
        from gialab.integrations.flower import check_flower, import_flwr

        import_flwr()
        check_flower(scen, defenses, scen.fl.clients_per_round or scen.clients, attack.requires)
    out_dir = ensure_writable(Path(out))

    _seed_everything(scen.seed)
    data = load_dataset(scen.dataset, path=scen.data_path, seed=scen.seed, sequence_length=scen.sequence_length)
    text = isinstance(data, TextDataset)
    model = build_model(scen.model, data.spec.shape, data.spec.num_classes)
    if scen.weights is not None:
        if text:
            check_vocabulary(scen.weights, data.spec.num_classes)
        load_weights(model, scen.weights)
    if scen.pretrain_steps:
        pretrain(model, data.images, data.labels, steps=scen.pretrain_steps, seed=scen.seed)
    attack.check_model(model, data.spec)
    clients = _clients(scen, data)
    malicious = [MaliciousClient(c, clients[c].local_data().images, clients[c].local_data().labels,
                                 attack.craft_update) for c in scen.malicious_ids]
    if malicious:
        attack.join({m.client_id: m.local_data() for m in malicious}, data.spec)
        for m in malicious:
            clients[m.client_id] = m
    loss = {"loss_fn": lm_loss} if text else {}
    protocol: Protocol | GossipProtocol = (
        _flower_protocol(scen, model, clients, data.spec, defenses, loss, workers) if engine == "flower" else
        Protocol(model, clients, scen.fl, batch_size=scen.batch_size, transforms=defenses.transforms,
                 aggregator=defenses.aggregator, seed=scen.seed, audits=defenses.audits, **loss)
        if topology is None else
        GossipProtocol(model, clients, scen.fl, topology, batch_size=scen.batch_size,
                       transforms=defenses.transforms, seed=scen.seed, **loss)
    )
    rounds = _attacked_round(protocol, attack, scen, data.spec, granted, threat, attacker)

    attack_started = time.perf_counter()
    if rounds.attacked is not None:
        _, transcript, truth = rounds.attacked
        reconstruction = attack.reconstruct(rounds.attacked[0])
    else:  # the victim refused every model it was sent: the attacker has nothing of it
        transcript, truth = rounds.last_refused  # type: ignore[misc]
        empty = torch.zeros((0, *data.spec.shape), dtype=torch.long if text else torch.float32)
        reconstruction = Reconstruction(images=empty, labels=None, source=scen.victim,
                                        details={"victim_refused": 1.0})
    attack_seconds = time.perf_counter() - attack_started

    # Metrics: the only place where ground truth meets the reconstruction.
    true_images, true_labels, pool = _attacked_examples(reconstruction, transcript, truth, scen.malicious_ids)
    if text:
        scores = score_text(reconstruction.images, true_images, decode=decode, pieces=token_pieces)
    else:
        scores = score(
            reconstruction.images, true_images, recon_labels=reconstruction.labels, true_labels=true_labels,
            reference=reconstruction.reference, pool=pool, recovered_psnr=scen.recovered_psnr,
            lpips_weights=scen.lpips_weights,
        )
    if reconstruction.isolated is not None:
        scores.flat.update(isolation_scores(reconstruction.isolated, true_images))
    if defenses.audits:
        scores.flat["victim_refused"] = float(rounds.attacked is None)
    if reconstruction.isolated_update is not None:  # measured against what that client really sent
        claimed = reconstruction.isolated_update
        scores.flat.update(update_isolation_scores(claimed, transcript.updates[claimed.client].tensors))
        if claimed.model is not None:  # what still covers it, against the client's clean update
            promised = [r["noise_std_promised"] for r in privacy.values() if r.get("noise_std_promised") is not None]
            batch = truth.batches[claimed.client]
            scores.flat.update(exposed_update_scores(
                claimed.update, claimed.model, batch.images, batch.labels,
                promised_noise_std=promised[0] if promised else None))
    if reconstruction.target_class is not None and not text:
        scores.flat["target_cosine"] = target_cosine(
            transcript.aggregate, rounds.attacked[0].model, true_images, true_labels)  # type: ignore[index]
    if malicious:
        scores.flat.update(_poison_survival(malicious, protocol.acceptance_log, transcript.round))
    if reconstruction.disaggregated is not None:
        scores.flat.update(disaggregation_scores(
            reconstruction.disaggregated, protocol.participation_log, scen.clients,
            transcript.updates[scen.victim].tensors, scen.victim))
    order = torch.as_tensor(scores.order)
    matched = torch.zeros_like(true_images)
    hit = order >= 0
    matched[hit] = reconstruction.images[order[hit]].to(matched.dtype)

    record = RECORDS[attack.name]
    config = scen.model_dump(mode="json")
    run_id = new_run_id(out_dir, scen.name, scen.seed)
    summary: dict[str, Any] = {
        "scenario": scen.name,
        "attack": attack.name,
        "threat_model": threat.name,
        "fl_setup": {"algorithm": scen.fl.algorithm, "clients": scen.clients, **scen.fl.model_dump(exclude={"algorithm"})},
        "defenses": [d.compact() for d in scen.defenses],
        **({"defense_report": privacy} if privacy else {}),
        **({"audit": {"victim_refused": rounds.attacked is None, "refusals": rounds.refusals}}
           if defenses.audits else {}),
        "n_samples": int(true_images.shape[0]),
        "metrics": scores.flat,
        "runtime_s": 0.0,
        "run_dir": str((out_dir / run_id).resolve()),
        **({"engine": protocol.engine_report} if engine == "flower" else {}),  # type: ignore[attr-defined]
    }
    with atomic_folder(out_dir, run_id) as folder:
        summary["runtime_s"] = round(time.perf_counter() - started, 3)
        full = summary | {
            "attack_details": dict(reconstruction.details) | {"attack_seconds": round(attack_seconds, 3)},
            "per_sample": scores.per_sample,
            "config": config,
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (folder / "metrics.json").write_text(_json(full))
        if text:
            write_run_report(folder, full, record.__dict__, None, text_samples=scores.per_sample)
        else:
            save_grid(true_images, matched, folder / "grid.png")
            write_run_report(folder, full, record.__dict__, folder / "grid.png")
        torch.save({"images": reconstruction.images, "labels": reconstruction.labels}, folder / "reconstruction.pt")
    try:
        insert_run(database_path(out_dir), {
            "run_id": run_id, "created": run_id[:22], "scenario": scen.name, "attack": attack.name,
            "threat_model": threat.name, "dataset": scen.dataset, "model": scen.model,
            "batch_size": scen.batch_size, "clients": scen.clients, "seed": scen.seed,
            "defenses": [d.compact() for d in scen.defenses], "psnr_mean": scores.flat.get("psnr_mean"),
            "ssim_mean": scores.flat.get("ssim_mean"), "fraction_recovered": scores.flat.get("fraction_recovered"),
            "label_accuracy": scores.flat.get("label_accuracy"), "runtime_s": summary["runtime_s"],
            "metrics": scores.flat, "config": config, "run_dir": summary["run_dir"],
        })
    except Exception as exc:
        shutil.rmtree(out_dir / run_id, ignore_errors=True)
        raise GialabError(f"cannot write results database {database_path(out_dir)}: {exc}") from None
    return RunResult(scen, summary, reconstruction, true_images, matched, Path(summary["run_dir"]))


def _flower_protocol(scen: Scenario, model: torch.nn.Module, clients: list[Client], spec: DataSpec,
                     defenses: DefenseStack, loss: dict[str, Any], workers: int) -> Protocol:
    from gialab.integrations.flower.protocol import FlowerProtocol

    return FlowerProtocol(model, clients, scen.fl, batch_size=scen.batch_size, model_name=scen.model, data=spec,
                          aggregator=defenses.aggregator, seed=scen.seed, audits=defenses.audits,
                          workers=workers, **loss)


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=False, default=float)
