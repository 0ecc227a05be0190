"""Flower (flwr 1.41) as the FL transport: model inconsistency against Flower's own SecAgg+ with 10
clients recovers the victim's batch, and the model audit as a Flower client mod refuses a flagged
model while the clients sent the honest one train.

Each simulation starts Ray and two workers (tens of seconds on a loaded 2-core machine), so the
file runs three: the attack, its control, and the audit. Skipped when the ``[flower]`` extra is
not installed; the refusals that need no simulation run either way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import gialab
from gialab.attacks import get_attack
from gialab.attacks.base import AttackContext
from gialab.data import load_dataset
from gialab.defenses.audit import ModelAuditDefense, ModelAuditParams
from gialab.defenses.secure_aggregation import SecureAggregation
from gialab.fl import Client, FLSetup, ServerPlan
from gialab.fl.commitment import model_commitment
from gialab.models import build_model

TEN = {"clients": 10, "seed": 0}


def _flower_available() -> bool:
    try:
        from gialab.integrations.flower import import_flwr

        import_flwr()
    except gialab.GialabError:
        return False
    return True


needs_flower = pytest.mark.skipif(not _flower_available(), reason="flwr[simulation] is not installed "
                                  "(pip install -c constraints.txt -e '.[flower]')")


@needs_flower
def test_inconsistency_beats_flower_secagg_plus_with_ten_clients(out_dir: Path) -> None:
    result = gialab.run("inconsistency", out=out_dir, engine="flower", **TEN)
    m = result.metrics
    engine = result.summary["engine"]
    assert engine["engine"] == "flower" and engine["workflow"] == "secagg+"
    assert engine["rounds"][0]["supernodes"] == 10
    assert result.reconstruction.details["rescale"] == 10  # the secure mean over 10 clients, undone
    assert m["victim_update_cosine"] >= 0.999999  # measured 1 - 8e-13: SecAgg+'s fixed point only
    assert m["fraction_recovered"] == 1.0 and m["psnr_min"] >= 60  # measured 94 dB (preset threshold 60)
    # The control: every client gets the imprint model; SecAgg+ mixes 10 batches of 4.
    control = gialab.run("inconsistency", out=out_dir, engine="flower", attack__silence=False, **TEN)
    assert control.metrics["victim_update_cosine"] < 0.99  # measured 0.91
    assert control.metrics["fraction_recovered"] <= 0.25  # measured 0.25 (one image alone in its bin)


@needs_flower
def test_the_audit_mod_refuses_the_victims_imprint_model_and_the_others_train() -> None:
    from gialab.integrations.flower.protocol import FlowerProtocol

    data = load_dataset("natural", seed=0)
    torch.manual_seed(0)
    honest = build_model("lenet", data.spec.shape, data.spec.num_classes)
    clients = [Client(c, data.images[8 * c:8 * c + 8], data.labels[8 * c:8 * c + 8]) for c in range(4)]
    rtf = get_attack("robbing-the-fed")
    imprint = rtf(rtf.Params(num_bins=32), AttackContext(seed=0)).plan_server(honest, data.spec).model
    audit = ModelAuditDefense(ModelAuditParams())
    protocol = FlowerProtocol(honest, clients, FLSetup(), batch_size=8, model_name="lenet", data=data.spec,
                              aggregator=SecureAggregation(), seed=0, audits=[audit])
    transcript, truth = protocol.run_round(ServerPlan(per_client={0: imprint}))  # what inconsistency sends
    assert transcript.commitment == model_commitment(honest)
    assert list(transcript.refused) == [0]
    assert "imprint" in transcript.refused[0] and "commitment" in transcript.refused[0]
    assert transcript.answered == (1, 2, 3) and 0 in truth.batches  # refused: kept its batch, sent nothing
    # SecAgg+ finished without the refusing client (a dropout): the mean of the three honest updates.
    mean = [sum(transcript.updates[c].tensors[i] for c in (1, 2, 3)) / 3 for i in range(len(transcript.aggregate))]
    flat = torch.cat([a.flatten() for a in transcript.aggregate])
    expected = torch.cat([a.flatten() for a in mean])
    assert torch.nn.functional.cosine_similarity(flat, expected, dim=0) >= 0.999999
    assert float((flat - expected).abs().max()) <= 1e-5  # SecAgg+'s quantization step is 6e-8 here
    # Each honest client's update is the gradient of the model it was sent on its own batch.
    model = build_model("lenet", data.spec.shape, data.spec.num_classes)
    model.load_state_dict(honest.state_dict())
    batch = truth.batches[2]
    loss = torch.nn.functional.cross_entropy(model(batch.images), batch.labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.allclose(g, u, atol=1e-6) for g, u in zip(grads, transcript.updates[2].tensors, strict=True))


# --- Refusals before any work: one line, exit code 2 --------------------------------------------


@needs_flower
@pytest.mark.parametrize(("preset", "overrides", "message"), [
    ("inconsistency", ["defenses=[dp_local]"], "defenses ['dp_local'] are not supported under --engine flower"),
    ("inconsistency", ["defenses=[{name: secure_aggregation, dropouts: 1}]"], "set only secure_aggregation.threshold"),
    ("inconsistency", ["clients=2"], "SecAgg+ needs at least 3 clients per round"),
    ("fc-leakage", ["clients=4", "fl.topology=ring", "threat_model=honest-but-curious-peer"],
     "fl.topology=ring is not supported under --engine flower"),
    ("cgi", [], "malicious clients (a client-side attack) are not supported under --engine flower"),
    ("sybil", [], "sybil devices are not supported under --engine flower"),
])
def test_what_flower_does_not_run_is_refused_in_one_line(cli, out_dir: Path, preset: str, overrides: list[str],
                                                          message: str) -> None:
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = cli("run", preset, "--engine", "flower", *sets, "--out", str(out_dir))
    assert result.code == 2, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_without_flwr_the_engine_is_a_one_line_error(cli, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr raises ImportError
    result = cli("run", "inconsistency", "--engine", "flower", "--out", str(out_dir))
    assert result.code == 2 and "pip install 'gialab[flower]'" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_an_unknown_engine_is_a_one_line_error(cli, out_dir: Path) -> None:
    result = cli("run", "inconsistency", "--engine", "spark", "--out", str(out_dir))
    assert result.code == 2 and "unknown engine 'spark'; valid: flower, gialab" in result.err
