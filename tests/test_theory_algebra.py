"""theory.algebra: the second layer's closed forms against Monte Carlo, finite differences, the full Hessian and
the hand-written formulas they replace (bit for bit, where simulations feed them to the compiled engines)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import theory
from theory import closed_forms

RNG = np.random.default_rng(20240611)
KS = (1, 2, 3, 5, 8, 33)


def _teachers(k: int, n: int = 40) -> np.ndarray:
    return RNG.standard_normal((n, k)) * RNG.uniform(0.1, 10.0, size=(n, 1))


# --------------------------------------------------------------------------- a-Hessian and M


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("model", ["resnet", "cnn"])
def test_a_hessian_eigenvalues_match_the_full_hessian(k, model):
    """The a-block of theory.population_hessian (assembled from the generated partials) at random points."""
    lam1, lam_perp = theory.a_hessian_eigenvalues(k)
    p = 3
    w_star = np.eye(p)[0]
    for _ in range(3):
        w, a, a_star = RNG.standard_normal(p), RNG.standard_normal(k), RNG.standard_normal(k)
        H = theory.population_hessian(w, a, w_star=w_star, a_star=a_star, model=model)
        eig = np.linalg.eigvalsh(H[p:, p:])
        expected = np.sort([lam1] + [lam_perp] * (k - 1))
        np.testing.assert_allclose(eig, expected, rtol=1e-13, atol=1e-15)  # O(k) roundings of O(1) entries


@pytest.mark.parametrize("k", (1, 2, 5))
def test_a_hessian_eigenvalues_by_finite_differences(k):
    """Second differences of the population loss in a (quadratic in a: only rounding, ~eps L / h^2 ~ 1e-8)."""
    p, h = 3, 1e-3
    w_star = np.eye(p)[0]
    w, a, a_star = RNG.standard_normal(p), RNG.standard_normal(k), RNG.standard_normal(k)

    def L(x):
        return theory.population_loss(w, x, w_star=w_star, a_star=a_star, model="cnn")

    H = np.empty((k, k))
    E = np.eye(k) * h
    for i in range(k):
        for j in range(k):
            H[i, j] = (L(a + E[i] + E[j]) - L(a + E[i] - E[j]) - L(a - E[i] + E[j]) + L(a - E[i] - E[j])) / (4 * h * h)
    lam1, lam_perp = theory.a_hessian_eigenvalues(k)
    np.testing.assert_allclose(np.linalg.eigvalsh(H), np.sort([lam1] + [lam_perp] * (k - 1)), atol=1e-7)


@pytest.mark.parametrize("k", KS)
def test_m_eigenvalues_and_operation_order(k):
    kk, pm1 = theory.m_eigenvalues(k)
    np.testing.assert_allclose(np.linalg.eigvalsh(theory.matrix_M(k)), np.sort([kk] + [pm1] * (k - 1)), rtol=1e-13)
    # Bit for bit the hand-written forms they replace (same operation order).
    assert (kk, pm1) == (k + math.pi - 1.0, math.pi - 1.0)
    lam1, lam_perp = theory.a_hessian_eigenvalues(k)
    assert (lam1, lam_perp) == ((k + math.pi - 1.0) / (2.0 * math.pi), (math.pi - 1.0) / (2.0 * math.pi))
    assert lam1 == pytest.approx(kk / (2 * math.pi), rel=1e-15)


@pytest.mark.parametrize("k", KS)
def test_apply_m_inverse(k):
    X = RNG.standard_normal((7, k)) * 100
    Y = theory.apply_m_inverse(X)
    assert Y.shape == X.shape
    np.testing.assert_allclose(Y @ theory.matrix_M(k).T, X, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(Y, np.linalg.solve(theory.matrix_M(k), X.T).T, rtol=1e-12, atol=1e-13)
    for x, y in zip(X, Y, strict=True):  # one vector = the row of a batch, bit for bit
        np.testing.assert_array_equal(theory.apply_m_inverse(x), y)
    old = (X - X.sum(axis=1, keepdims=True) / (k + math.pi - 1.0)) / (math.pi - 1.0)  # sims/runs/classify.py
    np.testing.assert_array_equal(Y, old)


def test_m_eigenvalues_validate_k():
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="^k must be an integer >= 1"):
            theory.a_hessian_eigenvalues(bad)


# --------------------------------------------------------------------------- L_ref


def test_loss_ref_against_monte_carlo():
    """E[f*^2]/2 with f* = sum_j a*_j relu(z_j), z_j iid N(0, 1) (patches are independent): 5 standard errors."""
    rng = np.random.default_rng(7)
    for a_star in (np.array([1.0, -2.0, 0.5]), np.array([1.0, 1.0, 1.0, 1.0]), np.array([2.0])):
        n = 2_000_000
        z = np.maximum(rng.standard_normal((n, a_star.size)), 0.0)
        half_sq = 0.5 * (z @ a_star) ** 2
        se = half_sq.std() / math.sqrt(n)
        assert abs(half_sq.mean() - theory.loss_ref(a_star)) < 5 * se


@pytest.mark.parametrize("k", KS)
def test_loss_ref_is_the_zero_networks_loss_and_the_old_formula(k):
    A = _teachers(k)
    ref = theory.loss_ref(A)
    assert ref.shape == (len(A),)
    for a_star, r in zip(A, ref, strict=True):
        assert r == theory.loss_ref(a_star)
        L0 = theory.population_loss(np.ones(2), np.zeros(k), w_star=[1.0, 0.0], a_star=a_star, model="cnn")
        assert r == pytest.approx(L0, rel=1e-14)
    # bit for bit the formula of sims/runs/simulate.py, sims/methods/{_runs,expansion}.py
    old = (A.sum(axis=1) ** 2 + (math.pi - 1.0) * np.einsum("ij,ij->i", A, A)) / (4.0 * math.pi)
    np.testing.assert_array_equal(ref, old)


def test_loss_ref_safe():
    A = np.array([[0.0, 0.0], [1.0, -1.0]])
    assert theory.loss_ref(A)[0] == 0.0
    np.testing.assert_array_equal(theory.loss_ref(A, safe=True), [1.0, theory.loss_ref(A[1])])
    assert theory.loss_ref([0.0], safe=True) == 1.0


# --------------------------------------------------------------------------- the spurious point


@pytest.mark.parametrize("k", KS)
def test_spurious_margin(k):
    A = _teachers(k, 200)
    margin = theory.spurious_margin(A)
    m2 = np.max(np.abs(A), axis=1) ** 2
    textbook = ((k + math.pi - 1.0) * np.einsum("ij,ij->i", A, A) - math.pi * A.sum(axis=1) ** 2) / m2
    # cancellation: the difference of two O(k) terms, so absolute error ~ k eps
    np.testing.assert_allclose(margin, textbook, rtol=1e-12, atol=50 * k * np.finfo(float).eps)
    exists = theory.spurious_exists(A)
    assert exists.dtype == bool
    np.testing.assert_array_equal(exists, margin > 0)
    for a_star, mg, ex in zip(A, margin, exists, strict=True):
        assert theory.spurious_margin(a_star) == mg  # a row of a batch = one teacher, bit for bit
        assert theory.spurious_exists(a_star) is bool(ex)
        # the definition: a_sp . a* < 0 at g(pi) = 0 (away from the boundary, where rounding could decide)
        if abs(mg) > 1e-9:
            s, q = a_star.sum(), a_star @ a_star
            assert ex == (theory.optimal_alignment(0.0, k, s, q) < 0)
        if k == 1:
            assert mg == 0.0 and not ex


def test_spurious_margin_edge_cases():
    assert theory.spurious_margin(np.zeros(4)) == 0.0
    assert theory.spurious_margin([1e300, -1e300]) == pytest.approx(2 * (math.pi + 1.0))  # (k + pi - 1) Q, no overflow
    assert not theory.spurious_exists(np.ones(5))
    assert theory.spurious_exists([1.0, -1.0])
    assert theory.spurious_margin(np.empty((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match="^a_star must be finite"):
        theory.spurious_margin([1.0, np.inf])
    with pytest.raises(ValueError, match=r"^a_star must be a 1-D array \(k,\) or a batch"):
        theory.spurious_exists(np.ones((2, 2, 2)))


# --------------------------------------------------------------------------- optimal alignment and the saddle


@pytest.mark.parametrize("k", KS)
def test_optimal_alignment_matches_optimal_a(k):
    for a_star in _teachers(k, 10):
        s, q = a_star.sum(), a_star @ a_star
        for phi in RNG.uniform(0, math.pi, 5):
            g = theory.arc_cosine(phi)
            ref = theory.alignment_at(phi, a_star)
            assert theory.optimal_alignment(g, k, s, q) == pytest.approx(ref, rel=1e-11, abs=1e-12 * q)


def test_optimal_alignment_is_the_driver_formula_bit_for_bit():
    """The hand-written kernel of sims/engines/driver.py it replaces, on random inputs: same operation order."""
    for _ in range(2000):
        g, k = RNG.uniform(0, math.pi), int(RNG.integers(1, 64))
        Ss, Qs = RNG.standard_normal() * 10, RNG.uniform(0, 100)
        kk = k + math.pi - 1.0
        old = Ss * Ss / kk + (g - 1.0) * (Qs - Ss * Ss / kk) / (math.pi - 1.0)
        assert closed_forms.optimal_alignment(g, k, Ss, Qs) == old


def test_g_max():
    res = minimize_scalar(lambda x: -(math.pi - x) * math.sin(x), bounds=(0, math.pi), method="bounded",
                          options={"xatol": 1e-12})
    assert theory.G_MAX == pytest.approx(-res.fun, rel=1e-15, abs=0)
    phi = closed_forms.PHI_G_MAX
    assert math.tan(phi) == pytest.approx(math.pi - phi, rel=1e-15)
    assert theory.G_MAX == pytest.approx((math.pi - phi) * math.sin(phi), rel=1e-15)
    grid = np.linspace(0, math.pi, 100_001)
    assert np.max((math.pi - grid) * np.sin(grid)) <= theory.G_MAX


def _old_saddle_angles_batch(a_star):
    """sims/runs/classify.py before theory.saddle_angles: the bisection the engines' phi_saddle comes from."""
    k = a_star.shape[1]
    ss = a_star.sum(axis=1) ** 2
    qs = np.einsum("ij,ij->i", a_star, a_star)
    exists = ss < (k + math.pi - 1.0) / math.pi * qs
    kk = k + math.pi - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        g_s = 1.0 - (math.pi - 1.0) * (ss / kk) / (qs - ss / kk)
    lo, hi = np.zeros(len(a_star)), np.full(len(a_star), math.pi)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = closed_forms.arc_cosine(mid, np.cos(mid), np.sin(mid)) > g_s
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.where(exists, 0.5 * (lo + hi), -1.0)


@pytest.mark.parametrize("k", KS)
def test_saddle_angles(k):
    A = _teachers(k, 100)
    phi_s = theory.saddle_angles(A)
    exists = theory.spurious_exists(A)
    np.testing.assert_array_equal(np.isnan(phi_s), ~exists)
    np.testing.assert_array_equal(theory.saddle_angles(A, missing=-1.0), _old_saddle_angles_batch(A))
    for a_star, ps in zip(A, phi_s, strict=True):
        one = theory.saddle_angle(a_star)
        if one is None:
            assert math.isnan(ps)
            continue
        assert ps == pytest.approx(one, abs=1e-12)  # brentq (rtol 4 eps) vs 64 halvings of [0, pi]
        s, q = a_star.sum(), a_star @ a_star
        assert abs(theory.saddle_equation(one, k, s, q)) < 1e-12
        assert theory.saddle_kernel_value(a_star) == pytest.approx(theory.arc_cosine(one), abs=1e-12)
        # its sign is the sign of a(phi).a*
        for phi in (0.5 * one, 0.5 * (one + math.pi)):
            assert np.sign(theory.saddle_equation(phi, k, s, q)) == np.sign(theory.alignment_at(phi, a_star))


def test_saddle_equation_broadcasts():
    phis = np.linspace(0.1, 3.0, 5)
    out = theory.saddle_equation(phis, 3, 0.2, 2.0)
    assert out.shape == (5,)
    assert np.all(np.diff(out) < 0)  # g decreases strictly
    assert isinstance(theory.saddle_equation(1.0, 3, 0.2, 2.0), float)
