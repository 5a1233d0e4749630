"""Numerical stability at the edges of the landscape: phi exactly 0 and pi, extreme filter norms, near-parallel
vectors whose cosine rounds above 1, and the small cases k = 1, p = 1, a = 0, a* = 1_k.

Every evaluation runs with warnings turned into errors and under ``np.errstate`` raising on overflow, invalid
operations (NaN) and division by zero, so any of those anywhere fails the test.  Underflow is left at NumPy's
default ("ignore"): at ``||w~|| = 1e150`` the Hessian's filter block is ``O(1 / ||w~||^2) = 1e-300`` and products
of it round gradually to subnormals or 0, which is the correctly rounded answer, not an error.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest

import theory
from theory.validation import norm as robust_norm

MODELS = theory.MODELS


@contextlib.contextmanager
def strict():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            yield


def _all(w, a, **kw):
    """Loss, gradient, Hessian, tangent Hessian: all must be finite, with no warning."""
    with strict():
        L = theory.population_loss(w, a, **kw)
        gw, ga = theory.population_gradient(w, a, **kw)
        H = theory.population_hessian(w, a, **kw)
        T = theory.tangent_hessian(w, a, **kw)
    assert isinstance(L, float)
    for x in (L, gw, ga, H, T):
        assert np.all(np.isfinite(x))
    assert gw.shape == (np.size(w),) and ga.shape == (np.size(a),) and H.shape == (np.size(w) + np.size(a),) * 2
    return L, np.concatenate([gw, ga]), H


def _unit(x):
    return x / np.linalg.norm(x)


def _filter(model, wt, v):
    """Student weights whose effective filter is wt."""
    return wt - v if model == "resnet" else wt


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("p", [1, 2, 5])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_exact_parallel_and_antiparallel(model, p, sign):
    rng = np.random.default_rng(p)
    w_star, v = _unit(rng.standard_normal(p)), _unit(rng.standard_normal(p))
    a_star, a = rng.standard_normal(3), rng.standard_normal(3)
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    w = _filter(model, sign * w_star, v)
    _all(w, a, **kw)
    phi = theory.angle(w, w_star=w_star, model=model, shortcut=v)
    # w~ = +-w* up to the rounding of (w* - v) + v: phi is 0 or pi to ~1e-8 (sqrt of the 1e-16 cosine error
    # would be the arccos answer; atan2 gives the perpendicular rounding itself, ~1e-16).
    assert phi == pytest.approx(0.0 if sign > 0 else math.pi, abs=1e-12)


@pytest.mark.parametrize("model", ["cnn", "cnn-unnormalized"])
@pytest.mark.parametrize("lam", [1e-150, 1e-100, 1e-10, 1.0, 1e10, 1e100, 1e150])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_filter_norms_cnn(model, lam, sign):
    w_star = _unit(np.array([1.0, -2.0, 0.5]))
    a_star = np.array([0.7, -0.2])
    a = np.array([0.3, 0.4]) if model == "cnn" else np.array([0.3, 0.4]) / lam  # keep the output O(1)
    kw = {"w_star": w_star, "a_star": a_star, "model": model}
    w = sign * lam * w_star
    L, g, H = _all(w, a, **kw)
    assert theory.angle(w, w_star=w_star, model=model) == (0.0 if sign > 0 else math.pi)
    if model == "cnn":  # scale invariance: the same loss and a-gradient as at lambda = 1
        L1, g1, _ = _all(sign * w_star, a, **kw)
        assert L == pytest.approx(L1, rel=1e-14)
        np.testing.assert_allclose(g[3:], g1[3:], rtol=1e-14)
        assert np.all(g[:3] == 0.0)  # exactly parallel: t = 0


@pytest.mark.parametrize("lam", [1e-8, 1.0, 1e10, 1e100, 1e150])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_filter_norms_resnet(lam, sign):
    """ResNet with w~ = w + v = lambda w*: huge lambda is exact (w ~ lambda w*); tiny lambda is limited by the
    cancellation w + v, so it stops at 1e-8 where w~ still has 8 correct digits."""
    w_star = _unit(np.array([1.0, -2.0, 0.5]))
    v = _unit(np.array([0.3, 0.1, 1.0]))
    kw = {"w_star": w_star, "a_star": np.array([0.7, -0.2]), "model": "resnet", "shortcut": v}
    w = sign * lam * w_star - v
    L, g, H = _all(w, np.array([0.3, 0.4]), **kw)
    L_cnn = theory.population_loss(sign * w_star, np.array([0.3, 0.4]), **{**kw, "model": "cnn"})
    assert L == pytest.approx(L_cnn, rel=1e-12, abs=1e-14)


def _near_parallel_teacher(p: int):
    """A unit w* whose self-cosine, as the code computes it, rounds above 1 (u.w* = 1 + O(1e-16))."""
    rng = np.random.default_rng(p)
    for _ in range(10000):
        w_star = _unit(rng.standard_normal(p))
        u = w_star / robust_norm(w_star)
        if float(np.dot(u, w_star)) > 1.0:
            return w_star
    raise AssertionError("no rounding example found")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("p", [2, 3, 7, 40])
def test_cosine_rounding_above_one(model, p):
    w_star = _near_parallel_teacher(p)
    v = _unit(np.arange(1.0, p + 1))
    kw = {"w_star": w_star, "a_star": np.array([1.0, -0.5, 0.25]), "model": model, "shortcut": v}
    w = _filter(model, w_star.copy(), v) if model != "resnet" else w_star - v
    L, g, H = _all(w, np.array([0.2, 0.1, -0.3]), **kw)
    with strict():
        phi = theory.angle(w, w_star=w_star, model=model, shortcut=v)
    assert 0.0 <= phi < 1e-7


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("end", [0.0, math.pi])
def test_continuity_at_the_ends(model, end):
    """Values at phi = end +- 1e-8 are close to those at phi = end.

    Loss, gradient and Hessian are C^2 in (w, a) (g(phi) has a cubic term |phi|^3 / 3 at both ends), and the
    gradient and Hessian change by O(delta) for an angle change delta = 1e-8.  Tolerance 1e-6 * scale.
    """
    p = 4
    w_star = np.eye(p)[0]
    v = _unit(np.array([1.0, 2.0, -1.0, 0.5]))
    a_star, a = np.array([1.0, -0.5, 0.25]), np.array([0.2, 0.1, -0.3])
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    delta = 1e-8
    near = end + delta if end == 0.0 else end - delta
    w0 = theory.filter_at_angle(end, w_star, model=model, shortcut=v, scale=1.3)
    w1 = theory.filter_at_angle(near, w_star, model=model, shortcut=v, scale=1.3)
    L0, g0, H0 = _all(w0, a, **kw)
    L1, g1, H1 = _all(w1, a, **kw)
    assert theory.angle(w1, w_star=w_star, model=model, shortcut=v) == pytest.approx(near, abs=1e-15)
    assert abs(L1 - L0) < 1e-12
    assert np.abs(g1 - g0).max() < 1e-6 * max(1.0, np.abs(g0).max())
    assert np.abs(H1 - H0).max() < 1e-6 * max(1.0, np.abs(H0).max())
    # And the one-sided limit is right, not just bounded: gradient change is O(delta), not O(1).
    assert np.abs(g1 - g0).max() < 1e-7


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("p", "k", "a", "a_star"),
    [
        (1, 1, [0.5], [1.0]),
        (1, 4, [0.5, -1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]),
        (5, 1, [0.0], [2.0]),
        (3, 3, [0.0, 0.0, 0.0], [1.0, -1.0, 0.5]),  # a = 0
        (3, 3, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),  # a = a* = 1_k
        (3, 3, [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]),  # zero teacher second layer
    ],
)
def test_small_and_degenerate_cases(model, p, k, a, a_star):
    rng = np.random.default_rng(p * 10 + k)
    w_star, v = _unit(rng.standard_normal(p)), _unit(rng.standard_normal(p))
    kw = {"w_star": w_star, "a_star": np.array(a_star), "model": model, "shortcut": v}
    for w in (rng.standard_normal(p), _filter(model, w_star, v), _filter(model, -w_star, v)):
        L, g, H = _all(w, np.array(a), **kw)
        assert L >= -1e-14  # a mean of squares
    if not np.any(a):  # a = 0: the loss is the teacher's second moment, independent of w
        wa, wb = rng.standard_normal(p), rng.standard_normal(p)
        assert theory.population_loss(wa, a, **kw) == theory.population_loss(wb, a, **kw)


def test_fixed_point_helpers_are_warning_free_at_edges():
    with strict():
        for a_star in ([1.0], [1.0, -1.0], np.ones(5), [1e-300, -1e-300], [1e300, 1e300, -1e300]):
            sp_ = theory.spurious_point(a_star)
            phi_s = theory.saddle_angle(a_star)
            assert sp_ is None or np.all(np.isfinite(sp_))
            assert phi_s is None or 0 < phi_s < math.pi
        for phi in (0.0, 1e-300, math.pi / 2, math.pi - 1e-16, math.pi):
            assert np.isfinite(theory.reduced_loss(phi, [1.0, -0.5]))
            assert np.isfinite(theory.alignment_at(phi, [1.0, -0.5]))
