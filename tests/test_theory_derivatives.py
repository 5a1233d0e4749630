"""Gradient and Hessian against central finite differences; closed forms against SCIENCE.md's matrix forms.

Finite differences use the fourth-order central stencil ``(f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / (12 h)``
with ``h = 1e-3``: truncation ``~ h^4 f^(5) / 30 ~ 3e-14`` (derivatives are O(1) at these points) and rounding
``~ eps |f| / h ~ 1e-13``, so the absolute error is ~1e-12 (measured: <= 4e-12).  Relative error < 1e-7 is then
asserted on every entry above the floor ``1e-4 * max(1, max |entry|)`` (where 1e-12 absolute is at most 1e-8
relative, a 10x margin); entries below the floor (e.g. the flat direction of normalized models, exactly 0) are
held to an absolute 1e-9 * max(1, max |entry|).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import theory

H_STEP = 1e-3
REL_TOL = 1e-7
FLOOR = 1e-4
ABS_TOL = 1e-9

POINTS = [(1, 1, 0), (1, 4, 1), (5, 1, 2), (3, 4, 3), (8, 5, 4), (2, 7, 5), (12, 3, 6)]

#: Worst relative errors seen; summarized by conftest.pytest_terminal_summary.
WORST: dict[str, float] = {"gradient": 0.0, "hessian": 0.0}


def fd4(f, x: np.ndarray, h: float = H_STEP) -> np.ndarray:
    """Fourth-order central differences of f (scalar or vector valued) along every coordinate; rows = coords."""
    rows = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        rows.append((f(x - 2 * e) - 8 * f(x - e) + 8 * f(x + e) - f(x + 2 * e)) / (12 * h))
    return np.array(rows)


def _point(p: int, k: int, seed: int, model: str):
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(p)
    w_star /= np.linalg.norm(w_star)
    a_star = rng.standard_normal(k)
    a = rng.standard_normal(k)
    w = rng.standard_normal(p) * rng.uniform(0.3, 2.0)  # ||w~|| != 1 in general
    v = rng.standard_normal(p)
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    return w, a, kw


def _compare(exact: np.ndarray, approx: np.ndarray, what: str) -> float:
    scale = max(1.0, float(np.max(np.abs(exact))))
    big = np.abs(exact) > FLOOR * scale
    rel = np.abs(approx - exact)[big] / np.abs(exact)[big]
    worst = float(rel.max()) if rel.size else 0.0
    assert worst < REL_TOL, f"{what}: relative error {worst:.3g}"
    assert np.all(np.abs(approx - exact)[~big] <= ABS_TOL * scale), what
    return worst


@pytest.mark.parametrize("model", theory.MODELS)
@pytest.mark.parametrize(("p", "k", "seed"), POINTS)
def test_gradient_matches_finite_differences(p, k, seed, model):
    w, a, kw = _point(p, k, seed, model)
    x = np.concatenate([w, a])
    gw, ga = theory.population_gradient(w, a, **kw)
    g = np.concatenate([gw, ga])
    approx = fd4(lambda y: theory.population_loss(y[:p], y[p:], **kw), x)
    WORST["gradient"] = max(WORST["gradient"], _compare(g, approx, "gradient"))
    assert np.abs(g).max() > 1e-3  # the point is not accidentally stationary: the comparison has content


@pytest.mark.parametrize("model", theory.MODELS)
@pytest.mark.parametrize(("p", "k", "seed"), POINTS)
def test_hessian_matches_finite_differences(p, k, seed, model):
    w, a, kw = _point(p, k, seed, model)
    x = np.concatenate([w, a])
    H = theory.population_hessian(w, a, **kw)
    assert H.shape == (p + k, p + k)
    approx = fd4(lambda y: np.concatenate(theory.population_gradient(y[:p], y[p:], **kw)), x)
    WORST["hessian"] = max(WORST["hessian"], _compare(H, approx, "hessian"))
    # Symmetry: H is assembled from symmetric blocks, so any asymmetry is a bug, not rounding; allow 1 ulp-ish.
    assert np.abs(H - H.T).max() <= 1e-14 * max(1.0, np.abs(H).max())
    # The finite-difference Hessian is symmetric to its own accuracy, which also validates the gradient field.
    assert np.abs(approx - approx.T).max() <= 1e-9 * max(1.0, np.abs(H).max())


@pytest.mark.parametrize("model", ["resnet", "cnn"])
def test_flat_direction_of_normalized_models(model):
    """Scale invariance (degree-0 homogeneity in w~): Euler's relation and its derivative."""
    p, k = 6, 3
    w, a, kw = _point(p, k, 11, model)
    v = kw["shortcut"] / np.linalg.norm(kw["shortcut"])
    wt = w + v if model == "resnet" else w
    gw, _ = theory.population_gradient(w, a, **kw)
    H = theory.population_hessian(w, a, **kw)
    # L(lambda w~) = L(w~)  =>  grad . w~ = 0 and (differentiating) H_ww w~ = -grad_w, H_aw w~ = 0.
    assert abs(gw @ wt) <= 1e-14 * np.linalg.norm(gw) * np.linalg.norm(wt) * p
    np.testing.assert_allclose(H[:p, :p] @ wt, -gw, atol=1e-13)
    np.testing.assert_allclose(H[p:, :p] @ wt, 0.0, atol=1e-13)


@pytest.mark.parametrize("model", theory.MODELS)
@pytest.mark.parametrize(("p", "k", "seed"), POINTS)
def test_closed_forms_match_science_matrix_forms(p, k, seed, model):
    """SCIENCE.md 2: L, grad_a, grad_w in terms of M, N(phi); typed in independently of theory.derivation."""
    w, a, kw = _point(p, k, seed, model)
    w_star, a_star = kw["w_star"], kw["a_star"]
    v = kw["shortcut"] / np.linalg.norm(kw["shortcut"])
    wt = w + v if model == "resnet" else w
    n = np.linalg.norm(wt)
    u = wt / n
    phi = math.acos(float(np.clip(u @ w_star, -1.0, 1.0)))
    g = math.sin(phi) + (math.pi - phi) * math.cos(phi)
    M = np.ones((k, k)) + (math.pi - 1) * np.eye(k)
    N = np.ones((k, k)) + (g - 1) * np.eye(k)
    b = n * a if model == "cnn-unnormalized" else a  # the unnormalized net is the normalized one with a -> ||w|| a
    L = (b @ M @ b - 2 * b @ N @ a_star + a_star @ M @ a_star) / (4 * math.pi)
    grad_b = (M @ b - N @ a_star) / (2 * math.pi)
    gw_angle = -(math.pi - phi) * (b @ a_star) / (2 * math.pi * n) * (w_star - (u @ w_star) * u)
    gw, ga = theory.population_gradient(w, a, **kw)
    # Different but equivalent arithmetic (acos vs atan2 for phi, matrices vs invariants): ~1e-15 relative,
    # amplified by acos's conditioning; 1e-10 is ample and far below any formula error.
    assert theory.population_loss(w, a, **kw) == pytest.approx(L, rel=1e-10, abs=1e-12)
    if model == "cnn-unnormalized":
        np.testing.assert_allclose(ga, n * grad_b, rtol=1e-10, atol=1e-12)
        # d/dw = (angle part, with b in place of a) + (dL/drho) u, where dL/drho = a . grad_b
        np.testing.assert_allclose(gw, gw_angle + (a @ grad_b) * u, rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_allclose(ga, grad_b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gw, gw_angle, rtol=1e-9, atol=1e-12)


def test_dL_dphi_sign_rule():
    """dL/dphi = (pi - phi) sin(phi) (a.a*) / (2 pi): compare with a finite difference along the angle."""
    rng = np.random.default_rng(5)
    p, k = 4, 3
    w_star = np.eye(p)[0]
    a_star, a = rng.standard_normal(k), rng.standard_normal(k)
    for phi in [0.3, 1.2, 2.0, 2.9]:

        def L(t):
            w = theory.filter_at_angle(t, w_star, model="cnn")
            return theory.population_loss(w, a, w_star=w_star, a_star=a_star, model="cnn")

        h = 1e-4
        fd = (L(phi - 2 * h) - 8 * L(phi - h) + 8 * L(phi + h) - L(phi + 2 * h)) / (12 * h)
        exact = (math.pi - phi) * math.sin(phi) * (a @ a_star) / (2 * math.pi)
        # 4th-order stencil with h = 1e-4: error ~ eps / h ~ 1e-12.
        assert fd == pytest.approx(exact, abs=1e-10)


@pytest.mark.parametrize("model", theory.MODELS)
def test_landscape_class_agrees_with_functions(model):
    w, a, kw = _point(4, 3, 21, model)
    ls = theory.Landscape(kw["w_star"], kw["a_star"], model=model, shortcut=kw["shortcut"])
    assert ls.p == 4 and ls.k == 3
    assert ls.loss(w, a) == theory.population_loss(w, a, **kw)
    for x, y in zip(ls.gradient(w, a), theory.population_gradient(w, a, **kw), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(ls.hessian(w, a), theory.population_hessian(w, a, **kw))
    np.testing.assert_array_equal(ls.tangent_hessian(w, a), theory.tangent_hessian(w, a, **kw))
    assert ls.angle(w) == theory.angle(w, w_star=kw["w_star"], model=model, shortcut=kw["shortcut"])
