"""Gaussian ReLU expectations, derived with sympy from the 2-D Gaussian integral in polar coordinates.

For unit vectors ``u, u*`` at angle ``phi`` and ``z ~ N(0, I_p)``, only the projection of ``z`` onto
``span{u, u*}`` matters, a standard 2-D Gaussian.  In polar coordinates ``(r, theta)`` with ``u`` along
``theta = 0`` and ``u*`` along ``theta = phi``, ``u.z = r cos(theta)`` and ``u*.z = r cos(theta - phi)``,
and the density is ``exp(-r^2/2) r / (2 pi)``.  Each expectation below is that integral, evaluated by sympy:
nothing here is typed in from a textbook (the tests compare the results with the textbook forms).
"""

from __future__ import annotations

from functools import cache

import sympy as sp

r, theta = sp.symbols("r theta", nonnegative=True)
phi = sp.Symbol("phi", nonnegative=True)
#: Norms of non-unit filters; expectations are homogeneous of degree one in each.
norm, norm_star = sp.symbols("norm norm_star", positive=True)

_DENSITY = sp.exp(-(r**2) / 2) * r / (2 * sp.pi)


def _polar_integral(integrand: sp.Expr, theta_lo: sp.Expr, theta_hi: sp.Expr) -> sp.Expr:
    """Integrate ``integrand(r, theta) * density`` over ``r in [0, oo)`` and ``theta in [lo, hi]``."""
    radial = sp.integrate(integrand * _DENSITY, (r, 0, sp.oo))
    return sp.simplify(sp.integrate(radial, (theta, theta_lo, theta_hi)))


@cache
def relu_mean() -> sp.Expr:
    """``E[sigma(u.z)]`` for a unit vector ``u``: ReLU is positive on the half plane ``|theta| < pi/2``."""
    return _polar_integral(r * sp.cos(theta), -sp.pi / 2, sp.pi / 2)


@cache
def relu_second_moment() -> sp.Expr:
    """``E[sigma(u.z)^2]`` for a unit vector ``u``."""
    return _polar_integral((r * sp.cos(theta)) ** 2, -sp.pi / 2, sp.pi / 2)


@cache
def relu_cross_moment() -> sp.Expr:
    """``E[sigma(u.z) sigma(u*.z)]`` for unit vectors at angle ``phi`` in ``[0, pi]``.

    Both ReLUs are active where the half planes ``|theta| < pi/2`` and ``|theta - phi| < pi/2`` overlap,
    i.e. on ``theta in [phi - pi/2, pi/2]``.
    """
    expr = _polar_integral(r * sp.cos(theta) * r * sp.cos(theta - phi), phi - sp.pi / 2, sp.pi / 2)
    return sp.simplify(sp.expand_trig(expr))


@cache
def arc_cosine_kernel() -> sp.Expr:
    """``g(phi) = 2 pi E[sigma(u.z) sigma(u*.z)]``, the degree-1 arc-cosine kernel (up to normalization)."""
    return sp.simplify(2 * sp.pi * relu_cross_moment())


def scaled(expr: sp.Expr, degree_norm: int, degree_norm_star: int) -> sp.Expr:
    """Expectation for non-unit vectors: ReLU is positively homogeneous, so multiply by the norms."""
    return expr * norm**degree_norm * norm_star**degree_norm_star
