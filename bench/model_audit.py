"""Client-side model audit: detection of every malicious-server modification, false alarms on honest models.

Usage:
    PYTHONPATH=src python bench/model_audit.py [--trials 20] [--trained 2] [--checks ...]

Malicious models. For each modification a malicious server in gialab can make, ``--trials``
trials vary the seed (model initialisation, the attack's randomness, which examples the victim
holds), the victim's batch size and the attack's settings (cycled, listed in the table). Each
trial drives the attack's own server (``plan_server``, and ``observe_round`` for the multi-round
ones) through the protocol for its rounds, and the victim audits every malicious model it
receives on the batch it would train on, against the commitment the server publishes for the
broadcast model. A trial counts as detected when the audit flags every malicious model the victim
was sent (a refused round leaks nothing of it; one accepted model is enough to leak).

Honest models. Every model of the registry (``transformer3`` on text), untrained (one
initialisation per trial) and trained (``--trained`` models per architecture, plain minibatch SGD
on the embedded data for a few epochs, or Adam for the transformer), audited on ``--trials``
client batches of varied size. A false alarm is any finding; the honest server commits to the
model it sends, so the commitment check passes by construction.

The ``checks fired`` column counts trials in which each check produced a finding.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gialab.attacks import get_attack
from gialab.attacks.base import AttackContext
from gialab.data import load_dataset
from gialab.data.dataset import ImageDataset
from gialab.data.text import TextDataset
from gialab.defenses.audit import ALL_CHECKS, ModelAuditDefense, ModelAuditParams
from gialab.defenses.base import AuditFinding
from gialab.fl import Client, FLSetup, Protocol, ServerPlan
from gialab.fl.commitment import model_commitment
from gialab.models import build_model
from gialab.models.transformer import lm_loss
from gialab.threats import THREAT_MODELS, observe

SERVER = THREAT_MODELS["malicious-server"]


@dataclass
class Row:
    name: str
    settings: str
    trials: int = 0
    hits: int = 0
    models: int = 0
    fired: Counter = None  # type: ignore[assignment]
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.fired = Counter()


def clients_of(data: ImageDataset | TextDataset, count: int, per_client: int, seed: int) -> list[Client]:
    inputs = data.tokens if isinstance(data, TextDataset) else data.images
    targets = data.tokens if isinstance(data, TextDataset) else data.labels
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    return [Client(c, inputs[order[c * per_client:(c + 1) * per_client]], targets[order[c * per_client:(c + 1) * per_client]])
            for c in range(count)]


def attacked_models(
    attack_name: str, params: dict, model: nn.Module, data: ImageDataset | TextDataset, *, seed: int, batch: int,
    clients: int = 1, per_client: int | None = None, rounds: int = 1, victim: int = 0,
) -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor, str]]:
    """Every malicious model the victim receives, with its batch and the round's commitment.

    The rounds run without an audit (so multi-round attacks progress as they would against a
    victim that accepts), and the victim's view of each malicious round is yielded for auditing.
    """
    cls = get_attack(attack_name)
    attack = cls(cls.Params(**params), AttackContext(seed=seed))
    text = isinstance(data, TextDataset)
    protocol = Protocol(model, clients_of(data, clients, per_client or batch, seed), FLSetup(rounds=rounds),
                        batch_size=batch, seed=seed, **({"loss_fn": lm_loss} if text else {}))
    for _ in range(rounds):
        plan = attack.plan_server(protocol.global_model, data.spec)
        if plan is None:
            continue
        commitment = model_commitment(plan.model or protocol.global_model)
        transcript, truth = protocol.run_round(plan)
        if victim not in transcript.participants:
            continue
        mine = truth.batches[victim]
        yield transcript.models[victim], mine.images, mine.labels, commitment
        attack.observe_round(observe(transcript, truth, threat=SERVER, granted=SERVER.capabilities, data=data.spec,
                                     target=victim))


def per_client_models(arch: str, data: ImageDataset, *, seed: int, batch: int, variant: str
                      ) -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor, str]]:
    """Model inconsistency: the victim gets its own model while the server commits to the broadcast one."""
    model = fresh(arch, data, seed)
    own = copy.deepcopy(model) if variant == "one weight +1e-6" else fresh(arch, data, seed + 10_000)
    if variant == "one weight +1e-6":
        with torch.no_grad():
            next(own.parameters()).view(-1)[0] += 1e-6
    protocol = Protocol(model, clients_of(data, 2, batch, seed), FLSetup(), batch_size=batch, seed=seed)
    transcript, truth = protocol.run_round(ServerPlan(per_client={0: own}))
    yield transcript.models[0], truth.batches[0].images, truth.batches[0].labels, model_commitment(model)


def fresh(name: str, data: ImageDataset | TextDataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, data.spec.shape, data.spec.num_classes)


def train_image(model: nn.Module, data: ImageDataset, *, epochs: int, lr: float, examples: int, seed: int) -> nn.Module:
    """Honest training: minibatch SGD with momentum on ``examples`` of the embedded images."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(examples, generator=generator)
        for i in range(0, examples, 32):
            idx = order[i:i + 32]
            loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise RuntimeError("honest training diverged; lower its learning rate")
    return model


def train_text(model: nn.Module, data: TextDataset, *, steps: int, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.tokens), (8,), generator=generator)
        loss = lm_loss(model(data.tokens[idx]), data.tokens[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def run_row(row: Row, trials: int, trial: Callable[[int], Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor, str]]],
            audit: ModelAuditDefense, *, malicious: bool) -> Row:
    started = time.perf_counter()
    for t in range(trials):
        flagged_all, flagged_any, fired = True, False, set()
        for model, images, labels, commitment in trial(t):
            findings: list[AuditFinding] = audit.audit(model, images, labels, commitment)
            row.models += 1
            fired |= {f.check for f in findings}
            flagged_all &= bool(findings)
            flagged_any |= bool(findings)
        row.trials += 1
        row.hits += int(flagged_all if malicious else flagged_any)
        row.fired.update(fired)
    row.seconds = time.perf_counter() - started
    return row


def cycle(options: list, t: int):
    return options[t % len(options)]


def malicious_rows(trials: int, audit: ModelAuditDefense, natural: ImageDataset, text16: TextDataset,
                   text32: TextDataset) -> list[Row]:
    rows = []

    def rtf(t: int):
        arch, bins, measurement, batch = cycle(["lenet", "cnn6", "resnet18"], t), cycle([32, 128, 256], t // 3), \
            cycle(["random", "brightness"], t), cycle([8, 32, 64], t // 2)
        return attacked_models("robbing-the-fed", {"num_bins": bins, "measurement": measurement},
                               fresh(arch, natural, t), natural, seed=t, batch=batch, per_client=2 * batch, rounds=2)
    rows.append(run_row(Row("robbing-the-fed", "lenet/cnn6/resnet18; 32/128/256 bins; random/brightness; "
                            "batch 8/32/64; 2 rounds"), trials, rtf, audit, malicious=True))

    trained_fcnet = train_image(fresh("fcnet", natural, 99), natural, epochs=3, lr=0.05, examples=800, seed=99)
    trap_variants = [{}, {"fire_rate": 0.01}, {"fire_rate": 0.1}, {"fire_rate": None, "scale_factor": 0.9},
                     {"fire_rate": None, "scale_factor": 0.95}, {"rows": 500}]

    def trap(t: int):
        base = trained_fcnet if t % 4 == 3 else fresh("fcnet", natural, t)
        return attacked_models("trap-weights", cycle(trap_variants, t), base, natural, seed=t,
                               batch=cycle([2, 8, 32, 100], t))
    rows.append(run_row(Row("trap-weights", "fcnet (every 4th trained); default, fire_rate 0.01/0.1, paper form "
                            "scale 0.9/0.95, 500 of 1000 rows; batch 2/8/32/100"), trials, trap, audit, malicious=True))

    def trap_text(t: int):
        return attacked_models("trap-weights-text", {"fire_rate": cycle([0.01, 0.03], t), "probe_sequences": 8},
                               fresh("transformer3", text16, t), text16, seed=t, batch=cycle([1, 2, 4, 8], t))
    rows.append(run_row(Row("trap-weights-text", "transformer3, 16 tokens; fire_rate 0.01/0.03; batch 1/2/4/8"),
                        trials, trap_text, audit, malicious=True))

    def fishing(t: int):
        mode, per_client = cycle(["auto", "class", "feature"], t), cycle([4, 8], t // 3)
        return attacked_models("fishing", {"mode": mode, "iterations": 1, "max_queries": 6},
                               fresh("cnn6", natural, t), natural, seed=t, batch=per_client, clients=4, rounds=6)
    rows.append(run_row(Row("fishing", "cnn6, 4 clients; auto/class/feature; batch 4/8; up to 6 queries"),
                        trials, fishing, audit, malicious=True))

    def decepticons(t: int):
        params = {"shared_measurement": cycle([False, True], t), "tag_tokens": cycle([1, 3], t // 2),
                  "probe_sequences": 8}
        return attacked_models("decepticons", params, fresh("transformer3", text32, t), text32, seed=t,
                               batch=cycle([2, 4, 8], t))
    rows.append(run_row(Row("decepticons", "transformer3, 32 tokens; own/shared measurement; 1/3 tag tokens; "
                            "batch 2/4/8"), trials, decepticons, audit, malicious=True))

    def inconsistent(t: int):
        arch, variant = cycle(["lenet", "cnn6", "fcnet"], t), cycle(["one weight +1e-6", "another init"], t)
        return per_client_models(arch, natural, seed=t, batch=cycle([1, 8, 32], t), variant=variant)
    rows.append(run_row(Row("per-client model (model inconsistency)", "lenet/cnn6/fcnet; victim's model: one weight "
                            "+1e-6 or another initialisation; batch 1/8/32"), trials, inconsistent, audit,
                        malicious=True))
    return rows


IMAGE_MODELS = ["lenet", "convnet", "cnn6", "fcnet", "resnet18"]
TRAINING = {  # epochs, learning rate, examples: a few epochs, cheap on 2 cores (convnet is the slowest)
    "lenet": (4, 0.05, 800), "convnet": (1, 0.02, 128), "cnn6": (4, 0.02, 800), "fcnet": (4, 0.05, 800),
    "resnet18": (1, 0.02, 256),
}


def honest_rows(trials: int, trained: int, audit: ModelAuditDefense, natural: ImageDataset, text16: TextDataset
                ) -> list[Row]:
    rows = []
    heavy = {"convnet": [1, 8, 16], "resnet18": [1, 8, 32]}

    def batch_of(data, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:batch]
        if isinstance(data, TextDataset):
            return data.tokens[idx], data.tokens[idx]
        return data.images[idx], data.labels[idx]

    def untrained(name: str, data, batches: list[int]):
        def trial(t: int):
            model = fresh(name, data, 1000 + t)
            x, y = batch_of(data, cycle(batches, t), t)
            yield model, x, y, model_commitment(model)
        return trial

    def trained_trial(models: list[nn.Module], data, batches: list[int]):
        def trial(t: int):
            model = models[t % len(models)]
            x, y = batch_of(data, cycle(batches, t // len(models)), 500 + t)
            yield model, x, y, model_commitment(model)
        return trial

    for name in IMAGE_MODELS:
        batches = heavy.get(name, [1, 8, 32, 64])
        rows.append(run_row(Row(name, f"untrained; batch {'/'.join(map(str, batches))}"), trials,
                            untrained(name, natural, batches), audit, malicious=False))
        epochs, lr, examples = TRAINING[name]
        started = time.perf_counter()
        models = [train_image(fresh(name, natural, 2000 + k), natural, epochs=epochs * (k + 1), lr=lr,
                              examples=examples, seed=k) for k in range(trained)]
        row = run_row(Row(name, f"trained ({trained} models, SGD {epochs}-{epochs * trained} epochs, lr {lr}, "
                                f"{examples} images); batch {'/'.join(map(str, batches))}"),
                      trials, trained_trial(models, natural, batches), audit, malicious=False)
        row.seconds += time.perf_counter() - started
        rows.append(row)
    batches = [1, 2, 4, 8]
    rows.append(run_row(Row("transformer3", "untrained; 16 tokens; batch 1/2/4/8"), trials,
                        untrained("transformer3", text16, batches), audit, malicious=False))
    started = time.perf_counter()
    models = [train_text(fresh("transformer3", text16, 2000 + k), text16, steps=50 * (k + 1), seed=k)
              for k in range(trained)]
    row = run_row(Row("transformer3", f"trained ({trained} models, Adam 50-{50 * trained} steps); 16 tokens; "
                                      "batch 1/2/4/8"), trials, trained_trial(models, text16, batches), audit,
                  malicious=False)
    row.seconds += time.perf_counter() - started
    rows.append(row)
    return rows


def table(rows: list[Row], rate: str) -> str:
    lines = [f"| modification / model | settings | trials | {rate} | models audited | checks fired | s |",
             "|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        fired = ", ".join(f"{k} {v}" for k, v in sorted(r.fired.items())) or "none"
        lines.append(f"| {r.name} | {r.settings} | {r.trials} | {r.hits / r.trials:.2f} ({r.hits}) | {r.models} | "
                     f"{fired} | {r.seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--trained", type=int, default=2, help="trained honest models per architecture")
    parser.add_argument("--checks", nargs="+", default=list(ALL_CHECKS), choices=ALL_CHECKS)
    parser.add_argument("--only", choices=["malicious", "honest"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    audit = ModelAuditDefense(ModelAuditParams(checks=tuple(args.checks)))
    natural = load_dataset("natural", seed=0)
    text16 = load_dataset("pydoc", seed=0, sequence_length=16)
    text32 = load_dataset("pydoc", seed=0, sequence_length=32)
    if args.only != "honest":
        print("Detection (a trial is detected when every malicious model the victim receives is flagged):\n")
        print(table(malicious_rows(args.trials, audit, natural, text16, text32), "detected"))
        print()
    if args.only != "malicious":
        print("False alarms on honest models (any finding):\n")
        print(table(honest_rows(args.trials, args.trained, audit, natural, text16), "false alarms"))


if __name__ == "__main__":
    main()
