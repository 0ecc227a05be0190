"""Cocktail Party Attack: unmixing a batch (or an aggregate) from a fully connected layer by ICA.

Paper: Kariyappa, Guo, Maeng, Xiong, Suh, Qureshi, Lee 2022, "Cocktail Party Attack: Breaking
Aggregation-Based Privacy in Federated Learning using Independent Component Analysis"
(arXiv 2209.05578; ICML 2023); code: github.com/facebookresearch/cocktail_party_attack.

Equation numbers were not checked against the paper's text (unavailable offline); the steps below
follow the paper's method and the authors' released code (``src/gradient_inversion.py``).

Why ICA works: for a first layer ``z = W x + b`` the weight gradient of a batch is
``dL/dW = sum_n delta_n x_n^T``, so each of its rows is a linear mixture of the B inputs with
unknown coefficients ``delta_{n,i}``. Summing over clients (an aggregate) only adds sources to
the same mixture, which is why aggregation alone does not protect. Images are non-Gaussian and,
ideally, independent of each other, so blind source separation recovers them:

1. Centre each row over its pixels and whiten onto the top B eigenvectors of the rows'
   covariance (the authors' ``whiten``): the rows span exactly the B-dimensional span of the
   centred images, so whitening to B components loses nothing and drops float noise.
2. Find the orthogonal unmixing that makes the components maximally non-Gaussian, the paper's
   negentropy approximation ``E[log cosh]``, here by scikit-learn's FastICA, the fixed-point
   solver of that objective (symmetric decorrelation, seeded random start).

gialab's first change (``domain=laplacian``, the default; ``domain=pixels`` is the paper): steps 1-2
run on each row's Laplacian. Filtering every row commutes with the mixing, so the unmixing found
there applies to the rows themselves, and filtered natural images (their edges) are sparser and
far less correlated than the images; on the natural crops at batch 64 this lifts the median PSNR
from 12.9 to 17.7 dB and the share recovered from 0.03 to 0.12 (5 seeds, BENCHMARKS.md).

Not implemented: the paper's gradient-descent variant that adds a total-variation image prior
and the mutual-independence penalty ``mean(exp(T |<u_i, u_j>|) - 1)`` on unit-norm unmixing rows
(its released code zeroes the negentropy term, leaving TV + decorrelation, optimized by Adam).
FastICA's symmetric decorrelation already keeps the unmixing rows orthogonal. Started from the
FastICA solution it moved the median PSNR at batch 64 by about 1 dB and recovered nothing more
(measured with the authors' weights tv=1..3.1, T=12.4, decor=1.47, 2000-4000 Adam steps).

ICA leaves every source's sign and scale free. The authors min-max normalize each source to
[0, 1], right only for images that happen to span the full range. We resolve both exactly
instead, with the bias gradient: ``dL/db = sum_n delta_n`` is the weight gradient of an extra
input pixel that is 1 in every image (Phong et al.'s identity, also used by fc-leakage). The
unmixing applied to the uncentred rows gives ``d_n x_n`` (the authors add the centred-away mean
back the same way), applied to ``dL/db`` it gives ``d_n``, and the ratio is ``x_n`` with sign and
scale. ``scale=minmax`` keeps the paper's normalization and ``scale=moments`` matches the
attacker-known data mean and std (sign: the one that makes the source's mean positive, as images
are non-negative); both are for comparison and for first layers without a bias.

Where ICA stops (measured, BENCHMARKS): on the natural set the batch holds several crops of the
same ten photos, so the sources are far from independent and FastICA separates them only
partly (about 12-19 dB mean PSNR). The row space itself holds the images exactly (projecting
the truth onto it gives > 140 dB), so the limit is the independence assumption, not the data.

gialab's second change (``refine=relu``, the default; ``refine=none`` is the paper): when the
first layer feeds a ReLU and another fully connected layer, ICA's estimates only serve as
starting points. ``relu_refinement.py`` solves each input exactly from the requirement that its
hidden activation lie in the span the second layer's gradient reveals, keeps the roots that pass
a label check, subtracts their exact gradients and unmixes the rest again. On the preset (batch
64) this recovers all 64 images to float precision where ICA alone recovers 4; under noise or
any inexact update no root passes and the result is ICA's.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from gialab.attacks.analytic.relu_refinement import ReluRefinement, relu_successor
from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.input_layer import input_linear
from gialab.attacks.registry import register
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import parameter_index
from gialab.threats import Capability, Observation

Scale = Literal["bias", "moments", "minmax"]
Domain = Literal["laplacian", "pixels"]
Refine = Literal["relu", "none"]


class CocktailPartyParams(AttackParams):
    batch_size: int | None = Field(
        None, ge=1, description="sources to unmix; default: the observed example count(s)")
    max_iter: int = Field(400, ge=1, description="FastICA fixed-point iterations")
    tol: float = Field(1e-4, gt=0, description="FastICA convergence tolerance (scikit-learn's default)")
    scale: Scale = Field("bias", description="sign/scale resolution: bias gradient, data moments, or min-max")
    domain: Domain = Field("laplacian", description=(
        "where ICA looks for independence: the rows' Laplacian (sparser, less correlated sources; "
        "gialab's default) or the raw pixels (the paper)"))
    refine: Refine = Field("relu", description=(
        "relu: solve each source exactly through the first ReLU layer, verify it, deflate its gradient "
        "and unmix the rest again (gialab's extension, relu_refinement.py; what it leaves unsolved takes "
        "sign and scale from the bias gradient); none: ICA only (the paper)"))
    refine_stages: int = Field(8, ge=1, description="most solve-verify-deflate rounds of refine=relu")


@register
class CocktailParty(Attack):
    name = "cocktail-party"
    requires = frozenset({Capability.OBSERVE_AGGREGATE})
    Params = CocktailPartyParams
    smoke_overrides = {"max_iter": 5}

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        input_linear(model, data, self.name, bias=False)  # without a bias, scaling falls back to moments

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: CocktailPartyParams = self.params  # type: ignore[assignment]
        first, _ = input_linear(observation.model, observation.data, self.name, bias=False)
        individual = observation.target in observation.updates
        update = observation.target_update() if individual else observation.aggregate
        if update is None:
            raise GialabError("cocktail-party sees neither the victim's update nor the aggregate")
        sources = self._sources(observation, individual)
        model = observation.model
        grad_w = update[parameter_index(model, first.weight)].detach().double().cpu().numpy()
        grad_b = (None if first.bias is None
                  else update[parameter_index(model, first.bias)].detach().double().cpu().numpy())
        live = np.abs(grad_w).sum(1) > 0
        if int(live.sum()) < sources:
            raise GialabError(
                f"cocktail-party needs at least {sources} non-zero rows in the first layer's gradient to "
                f"unmix {sources} images; it has {int(live.sum())}"
            )
        successor = None if p.refine == "none" or grad_b is None else relu_successor(
            model, first, observation.data.shape)
        if successor is not None:
            return self._refined(observation, update, first, successor, sources, individual)
        self.context.progress(0, 2)
        unmixing, iterations = fast_ica(self._signals(grad_w[live], observation), sources, p.max_iter, p.tol,
                                        self.context.seed)
        self.context.progress(1, 2)
        # ``unmixing @ rows`` are the sources d_n x_n: applied to the uncentred rows it restores
        # each image's mean, which centring removed (the authors' code adds it back the same way).
        mixed = unmixing @ grad_w[live]
        images = resolve_sign_and_scale(
            mixed, None if grad_b is None else unmixing @ grad_b[live], observation.data, p.scale)
        self.context.progress(2, 2)
        return Reconstruction(
            images=self._images(images, observation), labels=None,
            source=observation.target if individual else None,
            details={"sources": float(sources), "ica_iterations": float(iterations),
                     "live_rows": float(live.sum()), "exact_sources": 0.0},
        )

    def _refined(self, observation: Observation, update: tuple[torch.Tensor, ...], first: nn.Linear,
                 successor: nn.Linear, sources: int, individual: bool) -> Reconstruction:
        p: CocktailPartyParams = self.params  # type: ignore[assignment]

        def unmix(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
            return fast_ica(self._signals(rows, observation), count, p.max_iter, p.tol, seed)[0]

        refinement = ReluRefinement(observation.model, first, successor, update, observation.data.shape,
                                    observation.data.num_classes, unmix)
        refined = refinement.run(sources, self.context.seed, p.refine_stages, self.context.progress)
        self.context.progress(p.refine_stages, p.refine_stages)
        return Reconstruction(
            images=self._images(refined.inputs, observation),
            labels=torch.from_numpy(refined.labels).long().to(self.context.device),
            source=observation.target if individual else None,
            details={"sources": float(sources), "exact_sources": float(refined.exact),
                     "refine_stages": float(refined.stages)},
        )

    def _signals(self, rows: np.ndarray, observation: Observation) -> np.ndarray:
        p: CocktailPartyParams = self.params  # type: ignore[assignment]
        return laplacian(rows, observation.data.shape) if p.domain == "laplacian" else rows

    def _images(self, flat: np.ndarray, observation: Observation) -> torch.Tensor:
        out = torch.from_numpy(np.ascontiguousarray(flat)).float()
        return out.reshape(len(flat), *observation.data.shape).clamp(0, 1).to(self.context.device)

    def _sources(self, observation: Observation, individual: bool) -> int:
        p: CocktailPartyParams = self.params  # type: ignore[assignment]
        if p.batch_size is not None:
            return p.batch_size
        counts = observation.example_counts
        if counts:
            if individual and observation.target in counts:
                return counts[observation.target]
            if not individual:
                return sum(counts[c] for c in observation.participants if c in counts)
        raise GialabError(
            "cocktail-party needs the number of images to unmix: grant side information example_counts "
            "or set attack.batch_size"
        )


def fast_ica(rows: np.ndarray, sources: int, max_iter: int, tol: float, seed: int) -> tuple[np.ndarray, int]:
    """Unmixing matrix (sources x rows) that maps the gradient rows onto independent components.

    Each gradient row is one observed signal and each pixel one sample. Eq. 5 as in the authors'
    code: centre every row over its pixels, eigendecompose the rows' covariance and whiten onto
    its top ``sources`` eigenvectors (the span of the centred images; the rest is float noise).
    scikit-learn's FastICA then maximizes the log-cosh negentropy (eq. 6) on the whitened
    components. The product is one linear map, which the caller applies to uncentred rows.
    """
    centred = rows - rows.mean(1, keepdims=True)
    values, vectors = np.linalg.eigh(centred @ centred.T / (rows.shape[1] - 1))
    top = np.argsort(values)[::-1][:sources]
    whitening = (vectors[:, top] / np.sqrt(np.maximum(values[top], 1e-300))).T
    ica = FastICA(
        algorithm="parallel", whiten=False, fun="logcosh",
        max_iter=max_iter, tol=tol, random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ica.fit((whitening @ centred).T)
    return ica.components_ @ whitening, int(ica.n_iter_)


def laplacian(rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Each row's discrete Laplacian per channel (interior pixels), flattened.

    A linear filter applied to every row commutes with the mixing (``L(sum_n d_n x_n) =
    sum_n d_n L(x_n)``), so an unmixing found for the filtered rows unmixes the rows themselves.
    Filtered natural images are edges: far sparser (more non-Gaussian) and far less correlated with
    each other than the images, which is what ICA's independence assumption needs.
    """
    c, h, w = shape
    x = rows.reshape(len(rows), c, h, w)
    lap = (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])
    return lap.reshape(len(rows), -1)


def resolve_sign_and_scale(
    mixed: np.ndarray, bias: np.ndarray | None, data: DataSpec, method: Scale = "bias"
) -> np.ndarray:
    """Turn ICA sources (one flattened image per row, arbitrary sign and scale) into [0, 1] images.

    ``bias``: the unmixing applied to the bias gradient, i.e. each source's value on the constant
    input 1; dividing by it restores sign and scale exactly. Without a bias gradient ``bias`` falls
    back to ``moments``.
    """
    if method == "bias" and bias is not None:
        safe = np.where(np.abs(bias) > 1e-12 * np.abs(mixed).max(1), bias, 1e-12)
        return mixed / safe[:, None]
    if method == "minmax":
        signed = mixed * _mean_sign(mixed)[:, None]
        low, high = signed.min(1, keepdims=True), signed.max(1, keepdims=True)
        return (signed - low) / np.maximum(high - low, 1e-12)
    # Moments: images are non-negative, so the sign is the one that makes the (uncentred) source's
    # mean positive; the scale and offset then match the attacker-known per-channel data moments.
    c = len(data.mean)
    per_channel = (mixed * _mean_sign(mixed)[:, None]).reshape(len(mixed), c, -1)
    centred = per_channel - per_channel.mean(2, keepdims=True)
    spread = centred.std((1, 2), keepdims=True)  # one scale per image keeps its colour balance
    mean = np.asarray(data.mean, dtype=np.float64)[None, :, None]
    std = float(np.mean(data.std))
    return (centred / np.maximum(spread, 1e-12) * std + mean).reshape(len(mixed), -1)


def _mean_sign(mixed: np.ndarray) -> np.ndarray:
    """+1 or -1 per source: the sign under which the source's mean is positive (images are >= 0)."""
    return np.where(mixed.mean(1) < 0, -1.0, 1.0)
