"""A binary point of {x in [0, 1]^m : E x = r} from the box relaxation, when the relaxation pins it.

Why this exists: for gradient disaggregation at u = 1000 users, HiGHS spends about two minutes on
each user's MILP, nearly all of it in the root LP (dual simplex on a dense 1,100 x 1,300 block,
~8,000 iterations), and then rounds the LP point to the answer without branching. The LP only
has to *find* a point, and when the affine set {E x = r} meets the box in a single corner, any
method that reaches the intersection finds that corner. Here that method is ADMM for the
two-set feasibility problem (Boyd et al. 2011, "Distributed Optimization and Statistical Learning
via the Alternating Direction Method of Multipliers", section 5.1, with the affine set and the box
as the two sets):

    x <- P_aff(z - w),   z <- clip(x + w, 0, 1),   w <- w + x - z,

where P_aff is the Euclidean projection onto {E x = r}, one factorization of E E^T per problem.
Every few steps z is rounded to {0, 1} and handed to ``accept``, which checks the caller's exact
constraints. A rounding is returned only when ``accept`` says yes, so a wrong answer is
impossible by construction; the price of a relaxation that does not pin a corner (a larger
feasible set, a fractional limit) is ``max_iterations`` wasted steps before the caller falls back
to its exact solver.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg

RIDGE = 1e-12  # relative to E E^T's mean diagonal: keeps the Cholesky defined when E's rows are dependent


def relaxed_binary_point(equations: np.ndarray, rhs: np.ndarray, accept: Callable[[np.ndarray], bool], *,
                         max_iterations: int = 300, check_every: int = 5) -> np.ndarray | None:
    """A 0/1 vector that ``accept`` approves, found by ADMM on the box relaxation, or ``None``.

    ``equations`` E (k x m) and ``rhs`` r define the affine set. The start is the box's centre
    projected onto it and clipped back into the box; it only matters for the number of steps.
    """
    gram = equations @ equations.T
    gram[np.diag_indices_from(gram)] += RIDGE * max(float(np.trace(gram)) / len(gram), 1.0)
    try:
        factor = scipy.linalg.cho_factor(gram, check_finite=False)
    except np.linalg.LinAlgError:
        return None

    def project(v: np.ndarray) -> np.ndarray:
        return v - equations.T @ scipy.linalg.cho_solve(factor, equations @ v - rhs, check_finite=False)

    m = equations.shape[1]
    z = project(np.full(m, 0.5)).clip(0.0, 1.0)
    w = np.zeros(m)
    for step in range(1, max_iterations + 1):
        x = project(z - w)
        z_next = np.clip(x + w, 0.0, 1.0)
        w += x - z_next
        moved = float(np.abs(z_next - z).max())
        z = z_next
        if step % check_every == 0 or moved < 1e-9:
            rounded = np.rint(z)
            if accept(rounded):
                return rounded
            if moved < 1e-9:  # converged to a point whose rounding fails: the relaxation does not pin it
                return None
    return None
