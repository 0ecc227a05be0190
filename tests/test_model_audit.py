"""The client-side model audit: each check flags its malicious-server modification and passes honest
models, a flagged model is refused (no update, the refusal recorded), and runs say so."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import gialab
from gialab.attacks import get_attack
from gialab.attacks.base import AttackContext
from gialab.attacks.sparsification.decepticons import DecepticonsParams, corrupt
from gialab.attacks.sparsification.fishing import (
    class_fishing_model,
    feature_fishing_model,
)
from gialab.data import load_dataset
from gialab.data.text import TextSpec
from gialab.defenses import resolve_defenses
from gialab.defenses.audit import ModelAuditDefense, ModelAuditParams
from gialab.defenses.audit_checks import (
    balanced_chance,
    check_balanced_rows,
    check_commitment,
    check_imprint,
    check_large_bias,
    check_single_units,
    check_trap,
    check_zero_rows,
    linear_statistics,
)
from gialab.errors import GialabError
from gialab.fl import Client, FLSetup, Protocol, ServerPlan
from gialab.fl.commitment import model_commitment
from gialab.models import build_model
from gialab.models.fcnet import FCNet
from gialab.models.transformer import TransformerConfig, TransformerLM
from gialab.threats import THREAT_MODELS, observe

NATURAL = load_dataset("natural", seed=0)
SPEC = NATURAL.spec


def model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "fcnet":  # a narrower FC net keeps the tests fast; the first layer still sees every pixel
        return FCNet(SPEC.shape, SPEC.num_classes, hidden=256, depth=3)
    return build_model(name, SPEC.shape, SPEC.num_classes)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return NATURAL.images[torch.randperm(len(NATURAL), generator=torch.Generator().manual_seed(seed))[:n]]


def sent_by(attack: str, base: torch.nn.Module, seed: int = 0, **params) -> torch.nn.Module:
    cls = get_attack(attack)
    return cls(cls.Params(**params), AttackContext(seed=seed)).plan_server(base, SPEC).model


def checks_of(findings) -> set[str]:
    return {f.check for f in findings}


AUDIT = ModelAuditDefense(ModelAuditParams())


def audit(m: torch.nn.Module, x: torch.Tensor) -> set[str]:
    return checks_of(AUDIT.audit(m, x, torch.zeros(len(x), dtype=torch.long), model_commitment(m)))


@pytest.mark.parametrize("name", ["lenet", "cnn6", "fcnet"])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_honest_untrained_models_pass_every_check(name: str, batch: int) -> None:
    for seed in (0, 1):
        assert audit(model(name, seed), images(batch, seed)) == set()


def test_an_honestly_trained_fc_net_passes() -> None:
    # Three epochs at this rate kill most first-layer units (measured: 2% of them fire for any of
    # the 64 inputs, for 0.2% of the inputs overall), as rare as trap units by their firing share;
    # the trap check must leave them alone, since dead units carry no gradient and leak nothing.
    m = model("fcnet")
    optimizer = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for i in range(0, 512, 32):
            loss = torch.nn.functional.cross_entropy(m(NATURAL.images[i:i + 32]), NATURAL.labels[i:i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert audit(m, NATURAL.images[900:964]) == set()


def test_imprint_flags_robbing_the_fed_with_its_ladder() -> None:
    sent = sent_by("robbing-the-fed", model("lenet"), num_bins=64)
    findings = check_imprint(sent)
    assert [f.check for f in findings] == ["imprint"]
    assert "layer block.imprint: 64 near-parallel rows" in findings[0].reason
    assert "64 distinct thresholds" in findings[0].reason
    assert check_imprint(model("lenet")) == [] and check_imprint(model("fcnet")) == []


def test_imprint_needs_the_ladder_not_just_parallel_rows() -> None:
    layer = torch.nn.Linear(20, 16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(20).expand(16, 20))
        layer.bias.fill_(0.3)  # parallel rows, one shared threshold: no bins to read
    assert check_imprint(torch.nn.Sequential(layer)) == []
    with torch.no_grad():
        layer.bias.copy_(torch.linspace(-1, 1, 16))
    assert checks_of(check_imprint(torch.nn.Sequential(layer))) == {"imprint"}


def test_trap_weights_fire_rarely_and_have_balanced_rows() -> None:
    base = model("fcnet")
    sent = sent_by("trap-weights", base)
    x = images(32)
    trap = check_trap(linear_statistics(sent, x))
    assert [f.reason.split(":")[0] for f in trap] == ["layer input_layer"]
    assert check_trap(linear_statistics(base, x)) == []
    assert [f.reason.split(":")[0] for f in check_balanced_rows(sent)] == ["layer input_layer"]
    assert check_balanced_rows(base) == []
    partial = sent_by("trap-weights", base, rows=64)  # a quarter of the units trapped: still far beyond chance
    assert [f.reason.split(":")[0] for f in check_balanced_rows(partial)] == ["layer input_layer"]
    # The paper's form (bias 0, positive half scaled by 0.95) fires for ~10% of inputs, above the
    # firing threshold; its rows are still the paper's half-and-half construction.
    paper = sent_by("trap-weights", base, fire_rate=None, scale_factor=0.95)
    assert checks_of(AUDIT.audit(paper, x, torch.zeros(32, dtype=torch.long), None)) >= {"balanced_rows"}


def test_rows_shifted_alike_by_training_are_not_trap_rows() -> None:
    """Adam moves the output rows of tokens a batch never holds by one common direction, which fixes
    the sign of many columns: exact balance is then likelier than for symmetric weights (a trained
    transformer's head showed 8% balanced rows against the symmetric 5%), and chance must say so."""
    g = torch.Generator().manual_seed(0)
    d, rows = 256, 4000
    shift = torch.zeros(d)
    fixed = torch.randperm(d, generator=g)[:200]
    shift[fixed[:100]], shift[fixed[100:]] = -1.0, 1.0  # 200 columns' signs fixed, half each way
    layer = torch.nn.Linear(d, rows)
    with torch.no_grad():
        layer.weight.copy_(0.01 * torch.randn(rows, d, generator=g) + shift)
    shifted = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(rows, 10))
    assert balanced_chance(torch.full((d,), 0.5)) == pytest.approx(0.0498, abs=1e-4)  # C(256, 128) / 2^256
    assert balanced_chance((layer.weight < 0).double().mean(0)) > 0.09  # ~P(Binomial(56, 1/2) = 28)
    assert check_balanced_rows(shifted) == []
    with torch.no_grad():  # the same layer with trap rows: every row its own random half negative
        for r in range(0, rows, 4):
            signs = torch.ones(d)
            signs[torch.randperm(d, generator=g)[: d // 2]] = -1.0
            layer.weight[r] = signs * layer.weight[r].abs()
    assert [f.reason.split(":")[0] for f in check_balanced_rows(shifted)] == ["layer 0"]


def test_single_units_counts_units_that_fire_for_one_input() -> None:
    sent = sent_by("trap-weights", model("fcnet"), fire_rate=0.03)
    x = images(32)
    stats = linear_statistics(sent, x)
    single = (stats["input_layer"].fire_counts == 1).float().mean()
    findings = check_single_units(stats, max_fraction=0.1, min_inputs=32)
    assert (len(findings) == 1) == bool(single > 0.1)
    assert float(single) > 0.1  # measured 0.24: traps catch lone samples
    assert check_single_units(linear_statistics(model("fcnet"), x), max_fraction=0.1) == []
    assert check_single_units(stats, max_fraction=0.1, min_inputs=64) == []  # too few inputs to judge


@pytest.mark.parametrize("fished", ["class", "feature"])
def test_fishing_zeroes_classifier_rows(fished: str) -> None:
    base = model("cnn6")
    sent = (class_fishing_model(base, "fc", 3, 1000.0) if fished == "class"
            else feature_fishing_model(base, "fc", 3, 5, 0.1, 1e6, SPEC.num_classes))
    zero = check_zero_rows(sent)
    assert [f.reason for f in zero] == ["layer fc: 9 of 10 weight rows are zero"]
    assert check_zero_rows(base) == []
    bias = check_large_bias(linear_statistics(sent, images(8)), sent)
    if fished == "class":
        assert len(bias) == 1 and "9 units have a bias up to 1e+03" in bias[0].reason and "sharing" in bias[0].reason
    assert check_large_bias(linear_statistics(base, images(8)), base) == []


def _tiny_lm() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerConfig(vocab_size=64, max_positions=32, width=128, layers=2, heads=4))


def test_decepticons_and_text_traps_are_flagged() -> None:
    lm = _tiny_lm()
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    assert audit(lm, tokens) == set()
    corrupted, _ = corrupt(lm, 16, DecepticonsParams(probe_sequences=4), seed=0)
    assert {"imprint", "zero_rows", "large_bias"} <= audit(corrupted, tokens)
    spec = TextSpec("pydoc", (16,), 64, tuple(map(str, range(64))), (), (), sequence_length=16, tokenizer="test")
    cls = get_attack("trap-weights-text")
    trapped = cls(cls.Params(probe_sequences=4), AttackContext(seed=0)).plan_server(lm, spec).model
    found = AUDIT.audit(trapped, tokens, tokens, None)
    assert {"trap", "balanced_rows"} <= checks_of(found)
    assert any(f.check == "trap" and "blocks.0.ff.fc1" in f.reason for f in found)


def test_commitment_flags_a_model_made_for_one_client() -> None:
    m = model("lenet")
    assert check_commitment(m, model_commitment(copy.deepcopy(m))) == []
    assert check_commitment(m, None) == []
    tweaked = copy.deepcopy(m)
    with torch.no_grad():
        next(tweaked.parameters()).view(-1)[0] += 1e-6
    assert [f.check for f in check_commitment(tweaked, model_commitment(m))] == ["commitment"]


def _clients(n: int, per_client: int) -> list[Client]:
    return [Client(c, NATURAL.images[c * per_client:(c + 1) * per_client],
                   NATURAL.labels[c * per_client:(c + 1) * per_client]) for c in range(n)]


def test_a_per_client_model_is_refused_and_only_that_client_sends_nothing() -> None:
    m = model("lenet")
    other = model("lenet", seed=5)  # honest-looking, but not the model committed to
    protocol = Protocol(m, _clients(3, 4), FLSetup(), batch_size=4, seed=0, audits=[AUDIT])
    transcript, truth = protocol.run_round(ServerPlan(per_client={1: other}))
    assert transcript.commitment == model_commitment(m)
    assert list(transcript.refused) == [1] and transcript.refused[1].startswith("commitment: ")
    assert sorted(transcript.updates) == [0, 2] and transcript.answered == (0, 2)
    assert 1 in transcript.models and 1 in truth.batches  # sent a model; kept its batch
    threat = THREAT_MODELS["malicious-server"]
    seen = observe(transcript, truth, threat=threat, granted=threat.capabilities, data=SPEC, target=0)
    assert seen.participants == (0, 2) and set(seen.example_counts) == {0, 2}
    with pytest.raises(GialabError, match="victim 1 refused round 0's model") as info:
        observe(transcript, truth, threat=threat, granted=threat.capabilities, data=SPEC, target=1)
    assert "\n" not in str(info.value)


def test_when_everyone_refuses_the_server_learns_nothing() -> None:
    m = model("lenet")
    before = copy.deepcopy(m.state_dict())
    protocol = Protocol(m, _clients(2, 4), FLSetup(), batch_size=4, seed=0, audits=[AUDIT])
    sent = class_fishing_model(m, "fc", 0, 1000.0)
    transcript, _ = protocol.run_round(ServerPlan(model=sent))
    assert sorted(transcript.refused) == [0, 1] and transcript.updates == {}
    assert all(float(a.abs().sum()) == 0 for a in transcript.aggregate)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_an_honest_round_with_the_audit_matches_one_without() -> None:
    runs = []
    for audits in ([], [AUDIT]):
        protocol = Protocol(model("lenet"), _clients(2, 8), FLSetup(), batch_size=4, seed=3, audits=audits)
        transcript, truth = protocol.run_round()
        assert transcript.refused == {}
        runs.append((transcript, truth))
    (a, ta), (b, tb) = runs
    for c in (0, 1):  # same batches drawn, same updates sent
        assert torch.equal(ta.batches[c].images, tb.batches[c].images)
        assert all(torch.equal(x, y) for x, y in zip(a.updates[c].tensors, b.updates[c].tensors, strict=True))


def test_robbing_the_fed_gets_nothing_from_an_auditing_victim(out_dir: Path, cli) -> None:
    small = ["model=lenet", "batch_size=16", "examples_per_client=32", "attack.num_bins=32"]
    args = ["run", "robbing-the-fed", "--out", str(out_dir), "--json", "--set", "defenses=[model_audit]"]
    for s in small:
        args += ["--set", s]
    result = cli(*args)
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["audit"]["victim_refused"] is True
    assert [r["round"] for r in summary["audit"]["refusals"]] == [0, 1]  # calibration and attacked round
    assert all(r["reasons"].startswith("imprint: layer block.imprint") for r in summary["audit"]["refusals"])
    assert summary["metrics"]["victim_refused"] == 1.0
    assert summary["metrics"]["fraction_recovered"] == 0.0 and summary["metrics"]["n_recon"] == 0
    saved = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    assert saved["audit"] == summary["audit"]
    report = (Path(summary["run_dir"]) / "report.html").read_text()
    assert "The victim refused every model it was sent." in report and "imprint: layer block.imprint" in report
    # Without the audit the same scenario leaks (the refusal, not the setting, stopped it).
    leaked = gialab.run("robbing-the-fed", out=out_dir, set=dict(s.split("=") for s in small) | {
        "batch_size": 16, "examples_per_client": 32, "attack.num_bins": 32})
    assert leaked.metrics["fraction_recovered"] > 0.2


def test_an_honest_run_with_the_audit_still_attacks(out_dir: Path) -> None:
    result = gialab.run("fc-leakage", out=out_dir, set={"defenses": ["model_audit"]})
    assert result.summary["audit"] == {"victim_refused": False, "refusals": []}
    assert result.metrics["victim_refused"] == 0.0
    assert result.metrics["fraction_recovered"] > 0


@pytest.mark.parametrize(("config", "message"), [
    ({"name": "model_audit", "checks": ["imprint", "vibes"]}, "defense model_audit.checks.1: Input should be"),
    ({"name": "model_audit", "checks": []}, "defense model_audit.checks: "),
    ({"name": "model_audit", "max_fire_rate": 2}, "defense model_audit.max_fire_rate: Input should be less than 1"),
    ({"name": "model_audit", "cosine": 0.9}, "has no parameter 'cosine'; valid: balanced_sigmas, checks, "),
])
def test_bad_audit_parameters_are_one_line_errors(config: dict, message: str) -> None:
    with pytest.raises(GialabError, match=message) as info:
        resolve_defenses([config])
    assert "\n" not in str(info.value)


def test_the_audit_is_a_client_side_defense_listed_before_the_aggregator() -> None:
    stack = resolve_defenses(["model_audit", "secure_aggregation"])
    assert [a.name for a in stack.audits] == ["model_audit"] and stack.transforms == ()
    with pytest.raises(GialabError, match="list client-side transforms first"):
        resolve_defenses(["mean", "model_audit"])
