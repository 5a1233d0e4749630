"""Closed-form loss and gradients against Monte Carlo, side by side, for all three models.

Independent implementation of the network (nothing from theory is used to simulate):
``f(Z; w, a) = rho * sum_j a_j relu(u . Z_j)`` with ``u = w / ||w||`` (cnn), ``(w + v) / ||w + v||`` (resnet),
``u = w / ||w||, rho = ||w||`` (cnn-unnormalized, i.e. ``relu(w . Z_j)``); teacher ``sum_j a*_j relu(w* . Z_j)``.
Per-sample loss ``0.5 (f - f*)^2``; per-sample gradients from the explicit chain rule:
``d/da_j = (f - f*) rho relu(u.Z_j)``,
``d/dw = (f - f*) sum_j a_j 1[u.Z_j > 0] (I - u u^T) Z_j / ||w~||`` (normalized) or ``... Z_j`` (unnormalized).
The population gradient is the mean of these (ReLU is Lipschitz, so differentiation and expectation commute).

Sampling.  When ``k p <= 256`` the full input ``Z`` (k patches, p dims, iid N(0, 1)) is drawn in chunks.
Otherwise we use an exact reduction: let ``E`` be an orthonormal basis (p x r, r <= 3) of
``span{w*, u_resnet, u_cnn}``.  Every ``f`` depends on ``Z_j`` only through ``E^T Z_j ~ N(0, I_r)``, and the part
``(I - E E^T) Z_j`` is independent of it with mean zero; the w-gradient integrand is (function of ``E^T Z``)
times a linear map of ``Z_j``, so that part contributes zero to the expectation.  Hence the population gradient
wrt ``w`` lies in ``span E`` and replacing ``Z_j`` by ``E E^T Z_j`` (sampling only the exact joint Gaussian of the
r projections per patch) is an unbiased, lower-variance estimator of it.  We compare the theory gradient's
coordinates ``E^T grad_w`` within 4 standard errors and require its component outside ``span E`` to vanish.

Tolerance: 4 standard errors of the mean, the standard error computed from the per-sample values (2^20 > 1e6
samples, fixed seed).  Under the CLT a correct formula exceeds 4 SE with probability 6e-5 per component, i.e.
about 0.03 expected exceedances over the ~450 components compared here; a wrong constant or sign typically
shows up as hundreds of SE.  Components whose per-sample values are identically zero (the w-gradient when
p = 1 for normalized models) have SE 0, so an absolute slack of 1e-12 (rounding of O(1) quantities) is added.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import theory

N_SAMPLES = 2**20  # >= 1e6 per configuration; the same draws serve all three models
FULL_LIMIT = 256  # sample the full Z when k * p <= this
N_SE = 4.0
ABS_SLACK = 1e-12
MODELS = ("resnet", "cnn", "cnn-unnormalized")

CONFIGS = [  # (p, k, slow)
    (1, 1, False),
    (1, 5, False),
    (7, 1, False),
    (3, 4, False),
    (16, 8, True),
    (64, 64, True),
    (48, 9, True),  # k p = 432 > 256: reduced sampler with k != p
]

#: max |diff| / SE per (p, k, model), filled as tests run; summarized by conftest.pytest_terminal_summary.
AGREEMENT: dict[tuple[int, int, str], float] = {}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def _problem(p: int, k: int):
    rng = np.random.default_rng(1000 * p + k)
    w_star = _unit(rng.standard_normal(p))
    a_star = rng.standard_normal(k)
    a = rng.standard_normal(k)
    w = rng.standard_normal(p) * rng.uniform(0.5, 1.5) / math.sqrt(p)
    v = _unit(rng.standard_normal(p))  # random unit shortcut for the resnet
    return w, a, w_star, a_star, v


class _Stats:
    """Chunked mean and sum of squared deviations (Chan et al. merge), per column."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def add(self, x: np.ndarray) -> None:
        m = x.shape[0]
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        delta = mean_b - self.mean
        tot = self.n + m
        self.mean = self.mean + delta * m / tot
        self.m2 = self.m2 + m2_b + delta**2 * self.n * m / tot
        self.n = tot

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(self.m2 / (self.n - 1) / self.n)


@functools.cache
def _monte_carlo(p: int, k: int):
    """Per model: (MC mean, MC standard error, theory value) of [loss, E^T grad_w, grad_a], and E."""
    w, a, w_star, a_star, v = _problem(p, k)
    filters = {"resnet": w + v, "cnn": w, "cnn-unnormalized": w}
    if k * p <= FULL_LIMIT:
        E = np.eye(p)
    else:
        q, _ = np.linalg.qr(np.column_stack([w_star, filters["resnet"], filters["cnn"]]))
        E = q[:, : min(p, 3)]
    r = E.shape[1]
    # Columns: teacher, then each model's unit filter, all in E coordinates (unit vectors: they lie in span E).
    D = np.column_stack([E.T @ w_star] + [E.T @ (filters[m] / np.linalg.norm(filters[m])) for m in MODELS])
    norms = {m: np.linalg.norm(filters[m]) for m in MODELS}
    stats = {m: _Stats(1 + r + k) for m in MODELS}
    rng = np.random.default_rng(7 + p * 131 + k)
    chunk = max(1024, 2**20 // (k * r))
    done = 0
    while done < N_SAMPLES:
        m = min(chunk, N_SAMPLES - done)
        C = rng.standard_normal((m, k, r))  # E^T Z_j for every patch (all of Z_j when E = I)
        proj = (C.reshape(m * k, r) @ D).reshape(m, k, D.shape[1])  # w*.Z_j and u.Z_j, one GEMM
        f_star = np.maximum(proj[:, :, 0], 0.0) @ a_star
        for j, model in enumerate(MODELS, start=1):
            n, u_c = norms[model], D[:, j]
            x = proj[:, :, j]  # u . Z_j, shape (m, k)
            h = np.maximum(x, 0.0)
            rho = n if model == "cnn-unnormalized" else 1.0
            resid = rho * (h @ a) - f_star
            loss = 0.5 * resid**2
            grad_a = resid[:, None] * rho * h
            # sum_j a_j 1[u.Z_j > 0] Z_j in E coordinates, as a batched (1 x k) @ (k x r) product.
            G = np.matmul(((x > 0) * a)[:, None, :], C)[:, 0, :]
            if model == "cnn-unnormalized":
                grad_w = resid[:, None] * G  # d relu(w.z)/dw = 1[w.z > 0] z
            else:
                G = G - np.outer(G @ u_c, u_c)  # (I - u u^T) Z_j / ||w~||
                grad_w = resid[:, None] * G / n
            stats[model].add(np.column_stack([loss, grad_w, grad_a]))
        done += m
    out = {}
    for model in MODELS:
        kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
        L = theory.population_loss(w, a, **kw)
        gw, ga = theory.population_gradient(w, a, **kw)
        th = np.concatenate([[L], E.T @ gw, ga])
        outside = gw - E @ (E.T @ gw)
        out[model] = (stats[model].mean, stats[model].se, th, outside, gw)
    return out


def _params():
    for p, k, slow in CONFIGS:
        for model in MODELS:
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(p, k, model, marks=marks, id=f"p{p}-k{k}-{model}")


@pytest.mark.parametrize(("p", "k", "model"), list(_params()))
def test_loss_and_gradient_match_monte_carlo(p, k, model):
    mc, se, th, outside, gw = _monte_carlo(p, k)[model]
    diff = np.abs(mc - th)
    z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), 0.0)
    AGREEMENT[(p, k, model)] = float(z.max())
    print(f"\nMC p={p} k={k} {model}: max |diff|/SE = {z.max():.2f} (loss {z[0]:.2f}), loss {th[0]:.6g} +- {se[0]:.2g}")
    bad = np.flatnonzero(diff > N_SE * se + ABS_SLACK)
    assert bad.size == 0, f"components {bad.tolist()} off by {z[bad]} standard errors"
    # The exact reduction needs the theory gradient to lie in span E (it must: see module docstring).
    assert np.linalg.norm(outside) <= 1e-12 * (1.0 + np.linalg.norm(gw))


def test_monte_carlo_detects_a_wrong_formula():
    """Power check: the harness must reject slightly wrong formulas, so the comparison above can fail."""
    p, k = 3, 4
    mc, se, th, _, _ = _monte_carlo(p, k)["cnn"]
    # The loss SE is ~0.14% of the loss here, so a 2% error (e.g. a wrong constant in one moment) is > 10 SE.
    assert abs(mc[0] - 1.02 * th[0]) > N_SE * se[0]
    # A sign error in the filter gradient (coordinates 1..p) is rejected too.
    gw_th, gw_mc, gw_se = th[1 : p + 1], mc[1 : p + 1], se[1 : p + 1]
    assert np.any(np.abs(gw_mc + gw_th) > N_SE * gw_se)


@pytest.mark.parametrize("model", MODELS)
def test_reduced_sampler_agrees_on_small_problem(model):
    """The span reduction is exact: on a small problem it gives the same expectations as the full sampler."""
    p, k = 5, 3
    w, a, w_star, a_star, v = _problem(p, k)
    wt = {"resnet": w + v, "cnn": w, "cnn-unnormalized": w}[model]
    n = np.linalg.norm(wt)
    u = wt / n
    E, _ = np.linalg.qr(np.column_stack([w_star, u]))
    rng = np.random.default_rng(3)
    m = 400_000
    C = rng.standard_normal((m, k, 2))  # exact joint Gaussian of (E^T Z_j)
    x = C @ (E.T @ u)
    f_star = np.maximum(C @ (E.T @ w_star), 0.0) @ a_star
    rho = n if model == "cnn-unnormalized" else 1.0
    resid = rho * (np.maximum(x, 0.0) @ a) - f_star
    G = np.einsum("mk,mkr->mr", (x > 0) * a, C) @ E.T  # back to R^p
    if model != "cnn-unnormalized":
        G = (G - np.outer(G @ u, u)) / n
    samples = resid[:, None] * G
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / math.sqrt(m)
    gw, _ = theory.population_gradient(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=v)
    # Same 4-SE criterion as above (p = 5 components); SE-free directions are exactly zero on both sides.
    assert np.all(np.abs(mean - gw) <= N_SE * se + ABS_SLACK)
