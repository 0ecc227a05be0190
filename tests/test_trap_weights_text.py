"""Trap weights on a transformer's first feed-forward layer: tokens by nearest embedding."""

from __future__ import annotations

from pathlib import Path

import pytest

import gialab
from gialab.attacks.sparsification import trap_weights_text


def test_recovers_4_sequences_of_16_tokens(out_dir: Path) -> None:
    result = gialab.run("trap-weights-text", out=out_dir, seed=0)
    # Measured (seeds 0-4): token accuracy 0.86, 0.98, 0.88, 0.83, 0.78; 54 of 64 tokens caught
    # alone at seed 0. With an honest first layer (next test) it drops to 0.09.
    assert result.metrics["token_accuracy"] >= 0.7
    assert result.reconstruction.details["tokens_caught"] >= 45


def test_without_trap_weights_the_threshold_fails(out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trap_weights_text, "trap_initialize", lambda layer, **kwargs: None)
    result = gialab.run("trap-weights-text", out=out_dir, seed=0)
    assert result.metrics["token_accuracy"] < 0.3  # measured 0.09


def test_a_single_fedavg_step_leaks_too(out_dir: Path) -> None:
    # The learning rate cancels in dW/db. Measured (seeds 0-4): 0.83, 0.86, 0.92, 0.64, 0.72.
    result = gialab.run("trap-weights-text", out=out_dir, seed=0, set={"fl.algorithm": "fedavg"})
    assert result.metrics["token_accuracy"] >= 0.6


def test_trap_weights_text_on_images_is_refused(cli, out_dir: Path) -> None:
    result = cli("run", "trap-weights-text", "--set", "dataset=digits", "--out", str(out_dir))
    assert result.code == 2 and "reconstructs text" in result.err and result.err.count("\n") == 1
