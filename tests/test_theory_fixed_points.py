"""Fixed points (SCIENCE.md 3): global minimum, spurious point and its existence rule, interior saddle.

Stationarity is asserted as gradient norm < 1e-12: at these points every gradient term cancels exactly in
exact arithmetic, and the residual is rounding of O(|a*|^2) = O(1) terms (measured ~1e-16), so 1e-12 leaves a
4-orders margin while any formula error would be O(1).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

import theory

GRAD_TOL = 1e-12
MODELS = theory.MODELS


def _unit(x):
    return x / np.linalg.norm(x)


def _teacher(p: int, seed: int):
    rng = np.random.default_rng(seed)
    return _unit(rng.standard_normal(p)), _unit(rng.standard_normal(p))


def _gnorm(w, a, **kw) -> float:
    gw, ga = theory.population_gradient(w, a, **kw)
    return float(np.sqrt(gw @ gw + ga @ ga))


def _exists_reference(a_star: np.ndarray) -> tuple[bool, float]:
    """The existence rule evaluated in 60-digit arithmetic, and its relative margin."""
    with mpmath.workdps(60):
        S = mpmath.fsum(mpmath.mpf(float(x)) for x in a_star)
        Q = mpmath.fsum(mpmath.mpf(float(x)) ** 2 for x in a_star)
        rhs = (len(a_star) + mpmath.pi - 1) / mpmath.pi * Q
        return bool(S**2 < rhs), float(abs(S**2 - rhs) / rhs) if rhs else 0.0


def _spurious_teachers():
    """Teachers with a spurious minimum (various k, including 1.a* = 0)."""
    return [
        np.array([1.0, -1.0]),
        np.array([1.0, -1.0, 0.5]),
        np.array([1.0, 1.0, -0.3]),
        np.array([2.0, -0.5, 0.3, -1.2, 0.1]),
        np.array([0.3, 0.2, -0.1, 0.7, -0.4, 0.9, 0.05, -0.8]),
    ]


def _no_spurious_teachers():
    """Teachers without a spurious minimum, k >= 2 (k = 1 is degenerate at phi = pi: see the k = 1 tests)."""
    return [np.ones(2), np.array([-1.0, -2.0, -1.5]), np.ones(3), np.array([1.0, 0.8, 1.2, 0.9]), np.array([1.0, 0.5])]


# --------------------------------------------------------------------------- global minimum


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("p", "k"), [(1, 1), (1, 4), (3, 1), (4, 3), (10, 6)])
def test_global_minimum_is_stationary_with_zero_loss(model, p, k):
    w_star, v = _teacher(p, 10 * p + k)
    a_star = np.random.default_rng(k).standard_normal(k)
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    w, a = theory.global_minimum(w_star, a_star, model=model, shortcut=v)
    assert theory.angle(w, w_star=w_star, model=model, shortcut=v) < 1e-7  # rounding of w* - v + v
    assert _gnorm(w, a, **kw) < GRAD_TOL
    # The loss is a sum of O(Q*) terms cancelling exactly: rounding ~1e-16 * Q*.
    assert abs(theory.population_loss(w, a, **kw)) < 1e-14 * (1 + a_star @ a_star)
    assert theory.classify_stationary_point(w, a, **kw).kind == "minimum"


@pytest.mark.parametrize("lam", [0.1, 1.0, 7.5])
def test_resnet_global_minimum_ray(lam):
    """For the ResNet, every w = lambda w* - v (lambda > 0) is a global minimum."""
    w_star, v = _teacher(5, 3)
    a_star = np.array([0.5, -1.0, 2.0])
    w = lam * w_star - v
    kw = {"w_star": w_star, "a_star": a_star, "model": "resnet", "shortcut": v}
    assert abs(theory.population_loss(w, a_star, **kw)) < 1e-13
    assert _gnorm(w, a_star, **kw) < GRAD_TOL


def test_unnormalized_global_minimum_has_flat_rescaling_direction():
    """(w, a) -> (lambda w, a / lambda) leaves the unnormalized CNN unchanged: a zero Hessian eigenvalue."""
    w_star, _ = _teacher(4, 8)
    a_star = np.array([1.0, -0.5, 0.8])
    kw = {"w_star": w_star, "a_star": a_star, "model": "cnn-unnormalized"}
    for lam in (0.5, 2.0):
        assert abs(theory.population_loss(lam * w_star, a_star / lam, **kw)) < 1e-13
    res = theory.classify_stationary_point(w_star, a_star, **kw)
    assert res.kind == "minimum" and res.degenerate >= 1
    H = theory.population_hessian(w_star, a_star, **kw)
    d = np.concatenate([w_star, -a_star])  # d/dlambda (lambda w*, a*/lambda) at lambda = 1
    assert np.linalg.norm(H @ d) < 1e-13


# --------------------------------------------------------------------------- spurious point: existence


@pytest.mark.parametrize("seed", range(8))
def test_spurious_existence_rule_random(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    outcomes = set()
    for _ in range(300):
        k = int(rng.integers(1, 12))
        scale = 10.0 ** rng.uniform(-5, 5)
        # Random directions, half of them pushed toward 1 (where the spurious minimum disappears).
        a_star = scale * (rng.standard_normal(k) + rng.uniform(0, 3) * rng.integers(0, 2))
        ref, margin = _exists_reference(a_star)
        if margin < 1e-12:  # closer to the boundary than float64 can decide
            continue
        sp_ = theory.spurious_point(a_star)
        assert (sp_ is not None) == ref == theory.spurious_exists(a_star)
        outcomes.add(ref)
        if sp_ is not None:
            # a_sp = M^{-1} (1 1^T - I) a*, independently by a dense solve; and a_sp . a* < 0 (the minimum rule).
            M = np.ones((k, k)) + (math.pi - 1) * np.eye(k)
            expected = np.linalg.solve(M, (np.ones((k, k)) - np.eye(k)) @ a_star)
            np.testing.assert_allclose(sp_, expected, rtol=1e-10, atol=1e-13 * np.abs(a_star).max())
            assert sp_ @ a_star < 0
        checked += 1
    assert checked > 250 and outcomes == {True, False}


@pytest.mark.parametrize("k", [2, 3, 5, 8, 20])
@pytest.mark.parametrize("eps", [1e-6, 1e-9])
def test_spurious_existence_near_boundary(k, eps):
    """a* = 1 + t d with d perpendicular to 1: the rule is t^2 |d|^2 > k (pi - 1)(k - 1) / (k + pi - 1)."""
    rng = np.random.default_rng(k)
    d = rng.standard_normal(k)
    d -= d.mean()
    t_boundary = math.sqrt(k * (math.pi - 1) * (k - 1) / (k + math.pi - 1)) / np.linalg.norm(d)
    inside = np.ones(k) + t_boundary * (1 + eps) * d
    outside = np.ones(k) + t_boundary * (1 - eps) * d
    assert _exists_reference(inside)[0] and not _exists_reference(outside)[0]
    assert theory.spurious_point(inside) is not None
    assert theory.spurious_point(outside) is None
    # The saddle exists exactly when the spurious minimum does, and stays well defined at the boundary.
    phi_s = theory.saddle_angle(inside)
    assert phi_s is not None and math.pi / 2 < phi_s < math.pi
    assert theory.saddle_angle(outside) is None


def test_spurious_existence_at_float_boundary_does_not_crash():
    """Right at the boundary (within rounding) the answer may go either way but must be consistent."""
    x = math.pi - math.sqrt(math.pi**2 - 1)  # a* = (1, x) is exactly on the boundary for k = 2
    for eps in (0.0, 1e-16, -1e-16, 2e-16, -2e-16, 1e-15, -1e-15):
        a_star = np.array([1.0, x * (1 + eps)])
        phi_s = theory.saddle_angle(a_star)
        assert (phi_s is None) == (theory.spurious_point(a_star) is None)
        if phi_s is not None:
            assert math.pi / 2 < phi_s < math.pi


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 16, 64, 500])
@pytest.mark.parametrize("scale", [1.0, -1.0, 3.7, 1e-150, 1e150])
def test_constant_teacher_never_has_spurious(k, scale):
    a_star = np.full(k, scale)
    assert theory.spurious_point(a_star) is None
    assert theory.saddle_angle(a_star) is None


@pytest.mark.parametrize("k", [2, 3, 4, 7, 16, 64])
@pytest.mark.parametrize("scale", [1.0, 1e-150, 1e150])
def test_zero_sum_teacher_always_has_spurious(k, scale):
    rng = np.random.default_rng(k)
    for _ in range(20):
        a = rng.standard_normal(k)
        a_star = (a - a.mean()) * scale
        sp_ = theory.spurious_point(a_star)
        assert sp_ is not None and np.all(np.isfinite(sp_))
        # With 1.a* = 0: a_sp = M^{-1}(1 1^T - I) a* = -a* / (pi - 1).
        np.testing.assert_allclose(sp_, -a_star / (math.pi - 1), rtol=1e-9, atol=1e-12 * abs(scale))


def test_k1_never_has_spurious():
    """k = 1: the rule reads a*^2 < a*^2, never true (a rounding-sensitive equality before the fix)."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal(20000) * 10.0 ** rng.uniform(-300, 300, 20000)
    values = np.concatenate([values, [1.0, -1.0, 3956.9858612919725, 1.4549375122644157e-84, 5e-324, 1.7e308]])
    for x in values:
        assert theory.spurious_point([x]) is None, x
        assert theory.saddle_angle([x]) is None, x


def test_spurious_point_scale_equivariant():
    """a_sp is linear in a*: huge and tiny teachers give the scaled answer, not an overflow or None."""
    a_star = np.array([1.0, 1.0, -1.0])
    base = theory.spurious_point(a_star)
    for s in (1e-300, 1e-100, 1e100, 1e307):
        np.testing.assert_allclose(theory.spurious_point(a_star * s), base * s, rtol=1e-14)
        assert theory.saddle_angle(a_star * s) == pytest.approx(theory.saddle_angle(a_star), abs=1e-14)


# --------------------------------------------------------------------------- spurious point: minimum or not


def _perturbation_losses(w, a, kw, *, rotate_only_w: bool, seed: int, n: int = 200) -> np.ndarray:
    """Loss changes for random perturbations of size 1e-3 .. 1e-2 (relative to ||w~|| for w)."""
    rng = np.random.default_rng(seed)
    L0 = theory.population_loss(w, a, **kw)
    model = kw["model"]
    v = kw.get("shortcut")
    v = np.zeros_like(w) if model != "resnet" else _unit(v)
    wt = w + v
    nrm = np.linalg.norm(wt)
    out = []
    for i in range(n):
        dw = rng.standard_normal(w.size)
        if rotate_only_w:
            dw -= (dw @ wt) / nrm**2 * wt  # change the angle only
        dw = _unit(dw) * rng.uniform(1e-3, 1e-2) * nrm
        da = _unit(rng.standard_normal(a.size)) * rng.uniform(1e-3, 1e-2)
        if rotate_only_w or i % 2 == 0:
            da = 0.0 * da
        out.append(theory.population_loss(w + dw, a + da, **kw) - L0)
    return np.array(out)


# Rounding of an O(1) loss: ~1e-15.  The cubic change along the angle at the smallest perturbation is
# |a.a*| (1e-3)^3 / (6 pi) ~ 5e-11 |a.a*|, so 1e-13 separates "no change" from a real decrease.
LOSS_TOL = 1e-13


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("p", [2, 3, 6])
@pytest.mark.parametrize("idx", range(5))
def test_spurious_point_is_local_minimum_when_rule_holds(model, p, idx):
    a_star = _spurious_teachers()[idx]
    w_star, v = _teacher(p, 100 + idx)
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    w, a = theory.spurious_minimum(w_star, a_star, model=model, shortcut=v)
    assert theory.angle(w, w_star=w_star, model=model, shortcut=v) == pytest.approx(math.pi, abs=1e-7)
    np.testing.assert_array_equal(a, theory.spurious_point(a_star))
    assert _gnorm(w, a, **kw) < GRAD_TOL
    assert theory.classify_stationary_point(w, a, **kw).kind == "minimum"
    # Independent of the classifier: no random perturbation lowers the loss.
    for rotate in (False, True):
        dL = _perturbation_losses(w, a, kw, rotate_only_w=rotate, seed=idx)
        assert dL.min() > -LOSS_TOL, dL.min()
    # The loss there is the reduced loss at pi (normalized models; the unnormalized one at ||w|| = 1 too).
    assert theory.population_loss(w, a, **kw) == pytest.approx(theory.reduced_loss(math.pi, a_star), rel=1e-12)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("p", [2, 3, 6])
@pytest.mark.parametrize("idx", range(5))
def test_phi_pi_is_saddle_when_rule_fails(model, p, idx):
    a_star = _no_spurious_teachers()[idx]
    w_star, v = _teacher(p, 200 + idx)
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    assert theory.spurious_point(a_star) is None
    assert theory.spurious_minimum(w_star, a_star, model=model, shortcut=v) is None
    w = theory.filter_at_angle(math.pi, w_star, model=model, shortcut=v)
    a = theory.optimal_a(math.pi, a_star)
    assert _gnorm(w, a, **kw) < GRAD_TOL  # still stationary
    assert theory.classify_stationary_point(w, a, **kw).kind == "saddle"
    # Independent check: rotating the filter off pi lowers the loss (a.a* > 0 there), every time.
    dL = _perturbation_losses(w, a, kw, rotate_only_w=True, seed=idx)
    assert np.all(dL < -LOSS_TOL), dL.max()
    # ... while changing a alone raises it (a is optimal): genuinely a saddle, not a maximum.
    assert theory.population_loss(w, a + 1e-2, **kw) > theory.population_loss(w, a, **kw)


@pytest.mark.parametrize("a_star", [1.0, -2.0, 0.3])
def test_k1_phi_pi_is_not_a_minimum(a_star):
    """k = 1: at phi = pi the optimal a is 0 (the student is identically zero), the loss is flat in w there,
    and it decreases only at sixth order along the curve a = g(pi - delta) a* / pi:
    L - L0 = -(g a*)^2 / (4 pi^2) with g ~ delta^3 / 3.  So it is a (degenerate) saddle, not a minimum."""
    w_star = np.array([1.0, 0.0])
    kw = {"w_star": w_star, "a_star": np.array([a_star]), "model": "cnn"}
    w0 = theory.filter_at_angle(math.pi, w_star, model="cnn")
    a0 = theory.optimal_a(math.pi, [a_star])
    assert a0 == pytest.approx(0.0, abs=1e-15) and _gnorm(w0, a0, **kw) < GRAD_TOL
    L0 = theory.population_loss(w0, a0, **kw)
    for delta in (0.05, 0.1, 0.2):
        g = theory.arc_cosine(math.pi - delta)
        w = theory.filter_at_angle(math.pi - delta, w_star, model="cnn")
        dL = theory.population_loss(w, [g * a_star / math.pi], **kw) - L0
        # The decrease is ~1e-9 .. 1e-7 * a*^2, far above rounding (1e-16).
        assert dL == pytest.approx(-((g * a_star) ** 2) / (4 * math.pi**2), rel=1e-6)
        assert dL < 0


def test_k1_phi_pi_classified_saddle():
    """The escape is sixth order along a curve (a ~ delta^3); the relaxed probe must see it."""
    w_star = np.array([1.0, 0.0])
    w0 = theory.filter_at_angle(math.pi, w_star, model="cnn")
    a0 = theory.optimal_a(math.pi, [1.0])
    res = theory.classify_stationary_point(w0, a0, w_star=w_star, a_star=[1.0], model="cnn")
    assert res.kind == "saddle"


@pytest.mark.parametrize("model", MODELS)
def test_p1_phi_pi_with_optimal_a_is_always_a_minimum(model):
    """With p = 1 the filter cannot rotate (phi in {0, pi}), so phi = pi with optimal a is a local minimum
    even when the rule fails; the rule is about p >= 2."""
    w_star = np.array([1.0])
    for a_star in _spurious_teachers()[:2] + _no_spurious_teachers()[2:4]:
        kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": np.array([1.0])}
        w = theory.filter_at_angle(math.pi, w_star, model=model, shortcut=np.array([1.0]))
        a = theory.optimal_a(math.pi, a_star)
        assert theory.classify_stationary_point(w, a, **kw).kind == "minimum"


# --------------------------------------------------------------------------- saddle


@pytest.mark.parametrize("idx", range(5))
def test_saddle_angle_properties(idx):
    a_star = _spurious_teachers()[idx]
    phi_s = theory.saddle_angle(a_star)
    assert phi_s is not None and 0.0 < phi_s < math.pi
    if abs(a_star.sum()) > 1e-12:
        assert phi_s > math.pi / 2
    else:  # 1.a* = 0 gives exactly pi/2 (up to rounding of the root)
        assert phi_s == pytest.approx(math.pi / 2, abs=1e-14)
    # alignment a(phi_s).a* = 0 up to rounding of O(Q*) terms and the root tolerance (~1e-15 in phi).
    assert abs(theory.alignment_at(phi_s, a_star)) < 1e-13 * (a_star @ a_star)
    # The alignment is positive on [0, phi_s) (always on [0, pi/2]) and negative on (phi_s, pi].
    for phi in np.linspace(0, math.pi, 201):
        al = theory.alignment_at(phi, a_star)
        if phi < phi_s - 1e-6:
            assert al > 0
        elif phi > phi_s + 1e-6:
            assert al < 0
    assert theory.reduced_loss(phi_s, a_star) > theory.reduced_loss(math.pi, a_star)
    assert theory.reduced_loss(phi_s, a_star) > theory.reduced_loss(0.0, a_star)
    # reduced_loss(phi_s) is the maximum of the reduced loss along phi (it separates the two basins).
    grid = [theory.reduced_loss(x, a_star) for x in np.linspace(0, math.pi, 101)]
    assert theory.reduced_loss(phi_s, a_star) >= max(grid) - 1e-12


@pytest.mark.parametrize("idx", range(5))
def test_alignment_positive_up_to_right_angle_without_spurious(idx):
    a_star = _no_spurious_teachers()[idx]
    assert theory.saddle_angle(a_star) is None
    for phi in np.linspace(0, math.pi / 2, 51):
        assert theory.alignment_at(phi, a_star) > 0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("p", [2, 4, 9])
@pytest.mark.parametrize("idx", range(5))
def test_saddle_point_is_stationary_saddle(model, p, idx):
    a_star = _spurious_teachers()[idx]
    w_star, v = _teacher(p, 300 + idx)
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    w, a = theory.saddle_point(w_star, a_star, model=model, shortcut=v)
    phi_s = theory.saddle_angle(a_star)
    assert theory.angle(w, w_star=w_star, model=model, shortcut=v) == pytest.approx(phi_s, abs=1e-9)
    assert _gnorm(w, a, **kw) < GRAD_TOL
    res = theory.classify_stationary_point(w, a, **kw)
    assert res.kind == "saddle"
    assert res.eigenvalues[0] < -1e-6  # a genuinely negative direction, not a probe artefact


def test_saddle_point_none_for_p1_or_no_spurious():
    assert theory.saddle_point(np.array([1.0]), np.array([1.0, -1.0]), model="cnn") is None
    assert theory.saddle_point(np.array([1.0, 0.0]), np.ones(3), model="cnn") is None


@pytest.mark.parametrize("idx", range(5))
def test_optimal_a_minimizes_loss_at_fixed_angle(idx):
    a_star = _spurious_teachers()[idx]
    k = a_star.size
    w_star = np.array([1.0, 0.0, 0.0])
    M = np.ones((k, k)) + (math.pi - 1) * np.eye(k)
    for phi in (0.0, 0.4, 1.6, 2.8, math.pi):
        a_opt = theory.optimal_a(phi, a_star)
        g = math.sin(phi) + (math.pi - phi) * math.cos(phi)
        N = np.ones((k, k)) + (g - 1) * np.eye(k)
        np.testing.assert_allclose(a_opt, np.linalg.solve(M, N @ a_star), rtol=1e-10, atol=1e-14)
        w = theory.filter_at_angle(phi, w_star, model="cnn")
        _, ga = theory.population_gradient(w, a_opt, w_star=w_star, a_star=a_star, model="cnn")
        assert np.linalg.norm(ga) < GRAD_TOL
        assert theory.reduced_loss(phi, a_star) == pytest.approx(
            theory.population_loss(w, a_opt, w_star=w_star, a_star=a_star, model="cnn"), rel=1e-13, abs=1e-15
        )
