"""theory.expansion: the symbolic end-to-end dynamics of a balanced factorization of a row, and its generated form."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from theory import closed_forms
from theory import expansion as te


def test_symbolic_coefficients():
    c_perp, c_par = te.end_to_end_coefficients()
    assert sp.simplify(c_perp - te.norm ** (2 - 2 / te.N)) == 0
    assert sp.simplify(c_par - te.N * te.norm ** (2 - 2 / te.N)) == 0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_symbolic_sum_equals_the_term_by_term_sum_at_concrete_depths(n):
    """The Sum over j (done by sympy with a symbolic N) against the N terms written out with their Piecewise
    right factors resolved at each concrete j (the j = N term is the identity, the others the projection)."""
    explicit = sum(te._term(sp.Integer(j)).subs(te.N, n) for j in range(1, n + 1))
    explicit = sp.expand(sp.powsimp(sp.piecewise_fold(explicit), force=True))
    assert sp.simplify(explicit - te.end_to_end_sum().subs(te.N, n)) == 0


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_velocity_matches_the_definition_with_matrix_powers(depth):
    """-(sum_j (W W^T)^((j-1)/N) g (W^T W)^((N-j)/N)) by eigendecomposition, against the derived closed form."""
    rng = np.random.default_rng(depth)
    for _ in range(20):
        w = rng.standard_normal(6) * rng.uniform(0.1, 3.0)
        g = rng.standard_normal(6)
        got = te.end_to_end_velocity(w, g, depth)
        want = te.factor_sum_velocity(w, g, depth)
        # fractional powers of a rank-one 6x6 matrix by eigh: 1e-10 relative
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


def _balanced(w: np.ndarray, depth: int, width: int, rng) -> list[np.ndarray]:
    nu = np.linalg.norm(w)
    s = nu ** (1 / depth)
    qs = [w / nu] + [q / np.linalg.norm(q) for q in rng.standard_normal((depth - 1, width))] + [np.ones(1)]
    return [s * np.outer(qs[j], qs[j - 1]) for j in range(1, depth + 1)]


def _product(mats):
    out = mats[0]
    for m in mats[1:]:
        out = m @ out
    return out[0]


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_factor_gradient_flow_moves_the_product_by_the_formula(depth):
    """Independent of the derivation: a tiny GD step on balanced factors of a quadratic loss moves the product by
    eta times the end-to-end velocity, up to O(eta) (1e-6 relative at eta = 1e-8); an unbalanced chain does not."""
    rng = np.random.default_rng(10 + depth)
    p = 5
    H = rng.standard_normal((p, p))
    H = H @ H.T
    b = rng.standard_normal(p)

    def grad(w):
        return H @ w - b

    w = rng.standard_normal(p)
    eta = 1e-8

    def step(mats):
        g = grad(_product(mats))
        new = []
        for j in range(len(mats)):
            above = np.eye(1)
            for m in reversed(mats[j + 1 :]):
                above = above @ m
            below = np.eye(p)
            for m in mats[:j]:
                below = m @ below
            new.append(mats[j] - eta * above.T @ g[None, :] @ below.T)
        return (_product(new) - _product(mats)) / eta

    mats = _balanced(w, depth, 3, rng)
    v = te.end_to_end_velocity(w, grad(w), depth)
    np.testing.assert_allclose(step(mats), v, rtol=1e-6, atol=1e-6 * np.abs(v).max())
    # unbalanced: same product, one factor scaled up and the next down
    unb = [m.copy() for m in mats]
    unb[0] *= 3.0
    unb[1] /= 3.0
    np.testing.assert_allclose(_product(unb), w, rtol=1e-12)
    assert np.linalg.norm(step(unb) - v) > 0.1 * np.linalg.norm(v)


def test_generated_kernel_is_the_symbolic_coefficients():
    f = sp.lambdify(te.ARGUMENTS, te.end_to_end_coefficients(), "math")
    rng = np.random.default_rng(0)
    for _ in range(50):
        nu, n = float(rng.uniform(0.0, 4.0)), int(rng.integers(1, 9))
        np.testing.assert_allclose(closed_forms.end_to_end(nu, n), f(nu, n), rtol=1e-14)
    assert closed_forms.end_to_end(2.7, 1) == (1.0, 1.0)  # depth 1: plain gradient flow
    assert closed_forms.end_to_end(0.0, 3) == (0.0, 0.0)  # a zero row does not move for N >= 2
    c_perp, c_par = closed_forms.end_to_end(2.0, 4)
    assert c_perp == pytest.approx(2.0**1.5, rel=1e-15) and c_par == pytest.approx(4 * 2.0**1.5, rel=1e-15)


def test_zero_row_velocity():
    g = np.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(te.end_to_end_velocity(np.zeros(3), g, 1), -g)
    np.testing.assert_array_equal(te.end_to_end_velocity(np.zeros(3), g, 3), np.zeros(3))
