"""CGI's stealthy poisoned update: survey eqs. (17)-(18) (Wei et al. 2023, "Client-side Gradient
Inversion Against Federated Learning from Poisoning", arXiv 2309.07415).

The malicious client sends ``delta_mal = rho * u + beta * b`` (eq. 17), where ``u`` is the unit
poisoned direction ``delta_poi / |delta_poi|`` and ``b`` its estimate of a benign update, and it
picks ``(rho, beta)`` against ``|delta_mal - delta_agg|_2`` (eq. 18), the distance to its estimate
of the aggregate. Byzantine-robust rules accept what looks like the honest majority: Krum and
Multi-Krum pick updates with close neighbours, the median and trimmed mean keep values in the
middle of each coordinate's range, FLTrust keeps updates pointing the way of the server's own.
An update close to the aggregate is what they
are built to let in (whether CGI's is, is measured: ``bench/cgi.py``).

Eq. (18) alone is minimized by projecting ``delta_agg`` onto ``span{u, b}``, which gives the poison
whatever small weight the aggregate happens to have along ``u``: stealthy, and almost no poison.
What the client wants is the most poison the rules still accept, so among the updates of the form
(17) whose eq. (18) distance is at most a radius ``tau`` (how far an update may sit from the
aggregate and still pass; CGI sets it from the spread of honest updates, see ``cgi.py``) it takes
the one that reaches furthest along the poisoned direction ``u``. That is a disk in a plane, so
the answer is closed-form (``blend``). ``tau = 0`` gives eq. (18)'s minimizer exactly; when
``b`` is the aggregate estimate itself the answer is ``rho = tau, beta = 1``: the benign update
plus a poison step as long as an honest update's deviation.

Maximizing ``rho`` instead would be worse: ``beta`` would then cancel the part of ``u`` along ``b``
(for a target class the honest update is healing, that part is poison too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Blend:
    """The weights of eq. (17) and the eq. (18) distance they leave."""

    rho: float
    beta: float
    distance: float


def blend(direction: Tensor, benign: Tensor, aggregate: Tensor, radius: float) -> Blend:
    """The eq. (17) weights that push furthest along ``direction`` within ``radius`` of ``aggregate``.

    ``direction`` is the unit poisoned direction ``u``, ``benign`` the benign estimate ``b`` and
    ``aggregate`` the estimated aggregate ``a``, all flat vectors; computed in float64. In the
    plane ``span{u, b}`` the updates within ``radius`` of ``a`` form a disk around ``a``'s projection
    ``a_p`` (of radius ``sqrt(radius^2 - |a - a_p|^2)``); the furthest along ``u`` is ``a_p`` plus that
    radius times ``u``. If the plane never comes within ``radius`` of ``a``, the answer is ``a_p``
    itself, eq. (18)'s minimizer.
    """
    u, b, a = (t.detach().double().flatten() for t in (direction, benign, aggregate))
    u = u / torch.linalg.vector_norm(u)
    b_along = float(b @ u)
    rest = b - b_along * u
    rest_norm = float(torch.linalg.vector_norm(rest))
    planar = rest_norm > 1e-12 * max(1.0, float(torch.linalg.vector_norm(b)))
    e2 = rest / rest_norm if planar else torch.zeros_like(u)
    a1, a2 = float(a @ u), float(a @ e2)
    off_plane = float(torch.linalg.vector_norm(a - a1 * u - a2 * e2))
    reach = math.sqrt(max(radius * radius - off_plane * off_plane, 0.0))
    c1 = a1 + reach  # the update's coordinates along u and e2
    beta = a2 / rest_norm if planar else 0.0
    rho = c1 - beta * b_along
    distance = float(torch.linalg.vector_norm(rho * u + beta * b - a))
    return Blend(rho, beta, distance)
