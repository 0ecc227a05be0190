"""Feature fishing's multi-query search: where the next cut-off goes, and when a bin holds one sample.

Paper: Wen, Geiping, Fowl, Goldblum, Goldstein 2022, "Fishing for User Data in Large-Batch Federated
Learning via Gradient Magnification" (ICML), section 4.2 (feature fishing, survey eqs. 13-14) and its
search for a cut-off that leaves one sample; breaching's ``MaliciousClassParameterServer`` is the
public reference (read for understanding, not copied).

Why a search, and why differences. One feature-fishing query with cut-off ``theta`` gives every
sample the weight ``s_i = p_c(z_ik; theta) - [y_i = c]`` on the fished logit, where ``p_c`` is a
near step function of the sample's feature ``z_ik``. ``p_c`` depends on the feature alone, so the
*difference* of two queries with cut-offs ``a < b`` weighs every sample by ``-[a < z_ik < b]``
whatever its label: it is the summed gradient of exactly the samples whose feature lies in the bin.
The fished class row also gives, against the class-fishing round, the two sufficient statistics of
the samples above a cut-off (survey eq. 11-12 readout ``dL/dW_c / dL/db_c``):

    count(theta) = N * (dL/db_c(theta) - dL/db_c(base))          (how many samples lie above)
    sum(theta)   = N * (dL/dW_c(theta) - dL/dW_c(base))          (their summed feature vectors)

so the server knows how many samples every bin holds and their mean feature, without labels.
The search splits the smallest bin that still holds two or more samples at its mean feature value
(a bin's mean always has samples on both sides, so every split makes progress; splitting at the
mean adapts to skewed features where bisection of the range would waste queries), and stops when
a bin with both ends queried holds exactly one sample. The top bin (above the highest cut-off) has
no upper end until the search sends one: once it holds one sample its mean *is* that sample's
feature, so one more cut-off just above it closes the bin.

Counts are integers only when no sample sits within a few ``1/beta`` of the cut-off (the step is
a sigmoid of slope ``beta``, chosen per query as ``sharpness`` over the width of the bin it splits);
a non-integer count means a sample straddles the cut-off, and the search moves that cut-off down
by ``_NUDGE / beta`` and asks again with a ten times steeper step.

The batch size ``N`` converts measured fractions to counts: it is the sum of the example counts
when the server sees them, else the smallest ``N`` that makes every class fraction of the
class-fishing round an integer multiple of ``1/N`` (``estimate_total``). When all class counts
share a factor this lattice estimate is too small by that factor; the result then reports the
bin's count in those units (documented weakness; the runner's malicious server sees the counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

# A measured count within this of an integer is that integer. Float32 sums err by ~1e-5 at N = 128;
# a straddling sample (weight p strictly between 0 and 1) would bias the bin's mean feature by p.
_INTEGER_TOL = 1e-3
_NUDGE = 40.0  # how far (in units of 1/beta) a cut-off moves when a sample straddles it


def estimate_total(fractions: Tensor, max_total: int = 100_000, tol: float = 0.02) -> int:
    """The smallest ``N <= max_total`` for which every fraction is a multiple of ``1/N`` (to ``tol``).

    Fractions are what an aggregate reveals about counts (the class histogram of a class-fishing
    round); with no consistent ``N`` the largest tried is returned.
    """
    f = fractions.detach().double().reshape(-1, 1).cpu()
    f = f[f.abs().squeeze(1) > 1e-9]
    if f.numel() == 0:
        return 1
    for start in range(1, max_total + 1, 4096):
        n = torch.arange(start, min(start + 4096, max_total + 1), dtype=torch.float64).reshape(1, -1)
        scaled = f * n
        ok = ((scaled - scaled.round()).abs() <= tol).all(dim=0)
        hit = torch.nonzero(ok)
        if hit.numel():
            return int(n[0, int(hit[0, 0])])
    return max_total


@dataclass
class Cut:
    """One queried cut-off: its step's slope, how many samples lie above it, their summed features,
    and the query's aggregate with the body's part divided by ``beta`` (see ``CutoffSearch``)."""

    theta: float
    beta: float
    count: float
    feature_sum: Tensor  # (m,) summed penultimate features of the samples above
    aggregate: tuple[Tensor, ...]


@dataclass
class CutoffSearch:
    """The cut-offs queried on one feature and the bins between them.

    ``base_row``/``base_bias`` are the fished class row's gradient in the class-fishing round
    (where ``p_c = 0`` for every sample), ``total`` the batch size. Each query picks its own slope
    ``beta = sharpness / width`` from the width of the bin it splits, so a dense feature gets a steep
    step; the queries still subtract exactly because the attack divides each aggregate's body part
    by its ``beta`` (the body's gradient is ``beta`` times the feature's, the last layer's does not
    depend on ``beta``), so every stored aggregate is in the units of a ``beta = 1`` model.
    """

    feature: int
    sharpness: float
    total: int
    base_row: Tensor
    base_bias: float
    start: float
    start_width: float
    cuts: list[Cut] = field(default_factory=list)
    straddled: int = 0  # queries discarded because a sample sat on the cut-off
    nudge: tuple[float, float] | None = None  # the cut-off (and slope) to ask after a straddled query

    def record(self, theta: float, beta: float, row: Tensor, bias: float, aggregate: tuple[Tensor, ...]) -> None:
        """Add one query's readout of the fished class row (or discard it if a sample straddles)."""
        count = self.total * (bias - self.base_bias)
        if abs(count - round(count)) > _INTEGER_TOL or count < -_INTEGER_TOL:
            self.straddled += 1
            self.nudge = (theta - _NUDGE / beta, 10 * beta)  # features are denser than the step: steepen it
            return
        self.nudge = None
        feature_sum = self.total * (row - self.base_row)
        self.cuts.append(Cut(theta, beta, float(round(count)), feature_sum, aggregate))
        self.cuts.sort(key=lambda c: c.theta)

    def bins(self) -> list[tuple[Cut, Cut | None, int]]:
        """(lower cut, upper cut or None for the top bin, samples inside) for non-empty bins."""
        out: list[tuple[Cut, Cut | None, int]] = []
        for lo, hi in zip(self.cuts, [*self.cuts[1:], None]):
            inside = int(lo.count - (hi.count if hi is not None else 0))
            if inside > 0:
                out.append((lo, hi, inside))
        return out

    def isolated(self) -> tuple[Cut, Cut] | None:
        """The first closed bin (both cut-offs queried) that holds exactly one sample, lowest first."""
        for lo, hi, inside in self.bins():
            if hi is not None and inside == 1:
                return lo, hi
        return None

    def smallest_closed_bin(self) -> tuple[Cut, Cut, int] | None:
        """The closed bin holding the fewest samples (the fallback when the rounds run out)."""
        closed = [(lo, hi, n) for lo, hi, n in self.bins() if hi is not None]
        return min(closed, key=lambda b: (b[2], -b[0].theta)) if closed else None  # type: ignore[return-value]

    def next_cutoff(self) -> tuple[float, float] | None:
        """The next cut-off and its slope ``beta``; ``None`` once a bin holds one sample."""
        if self.nudge is not None:
            return self.nudge
        if not self.cuts:
            return self.start, self.sharpness / self.start_width
        if self.isolated() is not None:
            return None
        bins = self.bins()
        if not bins:  # every sample lies below the lowest cut-off: cut lower
            low = self.cuts[0].theta
            step = max(abs(low), self.start_width)
            return low - step, self.sharpness / step
        for lo, hi, inside in sorted(bins, key=lambda b: (b[2], -b[0].theta)):
            upper_sum = hi.feature_sum if hi is not None else torch.zeros_like(lo.feature_sum)
            mean = float((lo.feature_sum - upper_sum)[self.feature]) / inside
            upper = hi.theta if hi is not None else math.inf
            if not lo.theta < mean < upper:
                continue  # its samples tie on this feature (or the readout is off): try the next bin
            if hi is None and inside == 1:
                # The top bin's one sample sits at ``mean``: close the bin as far above it as it is above ``lo``.
                return mean + (mean - lo.theta), self.sharpness / (mean - lo.theta)
            if inside == 1:
                continue
            width = (upper if hi is not None else 2 * mean - lo.theta) - lo.theta
            return mean, self.sharpness / width
        return None
