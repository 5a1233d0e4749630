"""Gaussian ReLU moments: the sympy derivations (theory.gaussian) against the textbook forms (SCIENCE.md 2).

The sympy side integrates in polar coordinates; the textbook side is typed in here.  Both are compared
symbolically (the difference must simplify to exactly 0) and numerically, and the typed-in textbook forms are
themselves checked against an independent numerical quadrature so a typo here cannot go unnoticed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from scipy import integrate

import theory
from theory import closed_forms, derivation, gaussian

PHI = gaussian.phi
G_TEXTBOOK = sp.sin(PHI) + (sp.pi - PHI) * sp.cos(PHI)
PHIS = [0.0, 1e-8, 0.3, 1.0, math.pi / 2, 2.0, 3.0, math.pi - 1e-8, math.pi]


def g_numeric(phi: float) -> float:
    return math.sin(phi) + (math.pi - phi) * math.cos(phi)


def test_relu_mean_symbolic():
    expr = gaussian.relu_mean()
    assert sp.simplify(expr - 1 / sp.sqrt(2 * sp.pi)) == 0
    # Exact arithmetic above; the float comparison only guards the evaluation (1 ulp scale).
    assert float(expr) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-15)


def test_relu_second_moment_symbolic():
    expr = gaussian.relu_second_moment()
    assert sp.simplify(expr - sp.Rational(1, 2)) == 0


def test_cross_moment_symbolic():
    cross = gaussian.relu_cross_moment()
    assert sp.simplify(cross - G_TEXTBOOK / (2 * sp.pi)) == 0
    assert sp.simplify(gaussian.arc_cosine_kernel() - G_TEXTBOOK) == 0


def test_cross_moment_limits():
    # phi = 0: both ReLUs equal, E[sigma^2] = 1/2; phi = pi: never both active, 0; phi = pi/2: independent,
    # (1/sqrt(2 pi))^2 = 1/(2 pi).  Exact symbolic values.
    cross = gaussian.relu_cross_moment()
    assert sp.simplify(cross.subs(PHI, 0) - sp.Rational(1, 2)) == 0
    assert sp.simplify(cross.subs(PHI, sp.pi)) == 0
    assert sp.simplify(cross.subs(PHI, sp.pi / 2) - 1 / (2 * sp.pi)) == 0


@pytest.mark.parametrize("phi", PHIS)
def test_cross_moment_numeric(phi):
    f = sp.lambdify(PHI, gaussian.relu_cross_moment(), "math")
    g = sp.lambdify(PHI, gaussian.arc_cosine_kernel(), "math")
    # Same closed form evaluated by two routes in double precision: a few ulp of pi-sized terms.
    assert f(phi) == pytest.approx(g_numeric(phi) / (2 * math.pi), rel=1e-13, abs=1e-15)
    assert g(phi) == pytest.approx(g_numeric(phi), rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("phi", [0.0, 0.7, math.pi / 2, 2.5, math.pi])
def test_textbook_form_against_quadrature(phi):
    """Independent check of the typed-in textbook g: integrate E[sigma(x) sigma(cx + sy)] numerically."""
    c, s = math.cos(phi), math.sin(phi)

    def integrand(y, x):
        return x * max(c * x + s * y, 0.0) * math.exp(-(x * x + y * y) / 2) / (2 * math.pi)

    # Integrate over x > 0 and, when s > 0, over y above the kink c x + s y = 0 (quadrature needs smoothness).
    lower = (lambda x: max(-12.0, -c * x / s)) if s > 1e-12 else -12.0
    val, err = integrate.dblquad(integrand, 0.0, 12.0, lower, 12.0, epsabs=1e-13, epsrel=1e-13)
    # Truncating the Gaussian at 12 sigma costs < 1e-30; dblquad reports its own error estimate (~1e-13).
    assert abs(val - g_numeric(phi) / (2 * math.pi)) < 1e-11
    assert err < 1e-9


@pytest.mark.parametrize("phi", PHIS)
def test_generated_arc_cosine(phi):
    # Generated code is -c*phi + pi*c + s: the same expression as the textbook up to reordering, so agreement
    # is to rounding of O(pi) terms (a few ulp).
    assert closed_forms.arc_cosine(phi, math.cos(phi), math.sin(phi)) == pytest.approx(
        g_numeric(phi), rel=1e-14, abs=1e-15
    )
    assert theory.arc_cosine(phi) == pytest.approx(g_numeric(phi), rel=1e-14, abs=1e-15)


def test_arc_cosine_monotone_and_range():
    # g decreases strictly from pi (phi = 0) to 0 (phi = pi): the fixed-point code relies on it.
    phis = np.linspace(0.0, math.pi, 2001)
    vals = np.array([theory.arc_cosine(p) for p in phis])
    assert vals[0] == pytest.approx(math.pi, rel=1e-15)
    assert abs(vals[-1]) < 1e-15
    assert np.all(np.diff(vals) < 0)


def test_derived_loss_matches_matrix_form():
    """The sympy loss in invariants equals SCIENCE.md's (1/4pi)[a'Ma - 2a'N(phi)a* + a*'Ma*] symbolically."""
    k = 3
    a = sp.symbols("a0:3", real=True)
    b = sp.symbols("b0:3", real=True)
    A, B = sp.Matrix(a), sp.Matrix(b)
    ones = sp.ones(k, k)
    M = ones + (sp.pi - 1) * sp.eye(k)
    N = ones + (G_TEXTBOOK - 1) * sp.eye(k)
    textbook = ((A.T * M * A)[0] - 2 * (A.T * N * B)[0] + (B.T * M * B)[0]) / (4 * sp.pi)
    subs = {
        derivation.rho: 1,
        derivation.S: sum(a),
        derivation.Q: sum(x * x for x in a),
        derivation.P: sum(x * y for x, y in zip(a, b, strict=True)),
        derivation.Ss: sum(b),
        derivation.Qs: sum(y * y for y in b),
    }
    derived = derivation.loss_in_phi().subs(subs)
    assert sp.simplify(sp.expand(derived - textbook)) == 0
