"""Client-side model audit: a client inspects the model it received and refuses a malicious one.

The survey's section 4.3 ("Improving Defenses") asks for client trust strategies "based on the
quality of data and model parameters" against the malicious-server attacks of its Table 1, which
secure aggregation does not stop: gradient sparsification (Robbing the Fed, trap weights,
fishing, Decepticons; section 3.1, eqs. 6-14) and gradient isolation by model inconsistency
(Pasquini et al. 2022). All of them must put something into the model a client receives that an
honest model does not have, because the leak is built from the model itself: an imprint's
parallel rows and bias ladder, trap units that fire for almost nothing, zeroed classifier rows
with a large constant bias, or a model that differs from everyone else's. A client can look
for each of these before it trains, on the model's weights and on its own batch's activations
(``audit_checks.py``, one function per signature), and check the model against the digest the
server published for the round (``fl.commitment``). A flagged model is refused: the client
sends no update that round, as if it had dropped out, and the transcript records the reasons.

This is a detector of the modifications that exist, not a proof of honesty: a server that knows
the checks can try to evade them (e.g. imprint rows perturbed to just below the parallelism
threshold, or a trap spread thinly over several layers). The thresholds below are set from honest
models, untrained and trained, of every model in the registry, and measured against every
malicious-server modification in the code in ``bench/model_audit.py``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from gialab.defenses.audit_checks import (
    check_balanced_rows,
    check_commitment,
    check_imprint,
    check_large_bias,
    check_single_units,
    check_trap,
    check_zero_rows,
    linear_statistics,
)
from gialab.defenses.base import AuditFinding
from gialab.defenses.registry import DefenseParams, register_defense

CheckName = Literal["commitment", "imprint", "trap", "balanced_rows", "single_units", "zero_rows", "large_bias"]
ALL_CHECKS: tuple[CheckName, ...] = (
    "commitment", "imprint", "trap", "balanced_rows", "single_units", "zero_rows", "large_bias")


class ModelAuditParams(DefenseParams):
    checks: tuple[CheckName, ...] = Field(ALL_CHECKS, min_length=1, description="which checks run")
    parallel_cosine: float = Field(0.99, gt=0, le=1, description=(
        "imprint: rows at least this |cosine| apart count as measuring one direction"))
    min_parallel_rows: int = Field(8, ge=2, description=(
        "imprint: flag a layer with this many near-parallel rows at distinct bias thresholds"))
    max_rows: int = Field(2048, ge=16, description="imprint: layers with more rows are checked on a seeded sample")
    max_fire_rate: float = Field(0.2, gt=0, lt=1, description=(
        "trap: flag a hidden layer whose firing units fire, on average, for less than this share of my inputs"))
    min_active: float = Field(0.25, gt=0, le=1, description=(
        "trap: only when at least this share of its units fire for one of my inputs or more (dead units leak nothing)"))
    balanced_sigmas: float = Field(6.0, gt=0, description=(
        "balanced_rows: flag a layer with this many standard deviations more rows of exactly half negative, "
        "half positive weights than chance gives"))
    max_single_fraction: float = Field(0.2, gt=0, le=1, description=(
        "single_units: flag a hidden layer with more than this share of units firing for exactly one input"))
    min_inputs: int = Field(16, ge=2, description=(
        "trap, single_units: only judged on at least this many inputs (samples, or tokens for text)"))
    zero_tolerance: float = Field(1e-6, ge=0, lt=1, description=(
        "zero_rows: a row counts as zero at norm <= this times the layer's largest row norm"))
    max_bias_ratio: float = Field(100.0, gt=0, description=(
        "large_bias: flag a bias larger than this times the layer's RMS data-dependent pre-activation "
        "(or 1/sqrt(fan_in), the default initialisation's bias bound, if larger)"))


@register_defense
class ModelAuditDefense:
    """Refuse to train on a received model that any enabled check flags."""

    name = "model_audit"
    Params = ModelAuditParams

    def __init__(self, params: ModelAuditParams) -> None:
        self.params = params

    def audit(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, commitment: str | None
    ) -> list[AuditFinding]:
        p, on = self.params, set(self.params.checks)
        findings: list[AuditFinding] = []
        if "commitment" in on:
            findings += check_commitment(model, commitment)
        if "imprint" in on:
            findings += check_imprint(model, cosine=p.parallel_cosine, min_rows=p.min_parallel_rows, max_rows=p.max_rows)
        if "balanced_rows" in on:
            findings += check_balanced_rows(model, sigmas=p.balanced_sigmas)
        if "zero_rows" in on:
            findings += check_zero_rows(model, tolerance=p.zero_tolerance)
        if on & {"trap", "single_units", "large_bias"}:
            stats = linear_statistics(model, images)
            if "trap" in on:
                findings += check_trap(stats, max_fire_rate=p.max_fire_rate, min_active=p.min_active,
                                       min_inputs=p.min_inputs)
            if "single_units" in on:
                findings += check_single_units(stats, max_fraction=p.max_single_fraction, min_inputs=p.min_inputs)
            if "large_bias" in on:
                findings += check_large_bias(stats, model, max_ratio=p.max_bias_ratio)
        return findings
