"""Symbolic population loss of the shallow CNN/ResNet family, in the invariants, and its partial derivatives.

The loss ``L = 1/2 E[(f - f*)^2]`` of ``f = rho * sum_j a_j sigma(u.Z_j)`` against the teacher
``f* = sum_j a*_j sigma(u*.Z_j)`` is assembled from the Gaussian ReLU moments of :mod:`theory.gaussian`:
patches are independent, so off-diagonal terms factor into products of means and diagonal terms are second
or cross moments.  Everything depends on ``a`` only through ``S = 1.a``, ``Q = a.a``, ``P = a.a*``, on the
teacher through ``Ss = 1.a*``, ``Qs = a*.a*``, and on the filter through the angle ``phi`` and the scale
``rho`` (``rho = 1`` for the weight-normalized CNN and ResNet, ``rho = ||w||`` for the unnormalized CNN).
So the symbolic work is independent of ``k`` and ``p``.

Derivatives with respect to ``c = cos(phi)`` are taken through ``phi`` (``d/dc = -(1/sin phi) d/dphi``) and
simplified; the first derivative has no ``1/sin`` left.  The second derivative ``L_cc`` does blow up like
``1/sin(phi)`` at ``phi in {0, pi}``, but it only ever enters the Hessian multiplied by
``|grad c|^2 = sin(phi)^2 / n^2``, so we emit ``L_cc * sin(phi)^2`` instead: smooth by construction.
"""

from __future__ import annotations

from functools import cache

import sympy as sp

from theory import gaussian

rho = sp.Symbol("rho", positive=True)
phi = gaussian.phi
c, s = sp.symbols("c s", real=True)
S, Q, P, Ss, Qs = sp.symbols("S Q P Ss Qs", real=True)

#: Arguments of every generated function, in order.
ARGUMENTS: tuple[sp.Symbol, ...] = (rho, phi, c, s, S, Q, P, Ss, Qs)
#: Variables the loss is differentiated in (the student's invariants; the teacher's are fixed).
VARIABLES: tuple[sp.Symbol, ...] = (rho, c, S, Q, P)
#: Upper-triangular pairs of VARIABLES, in the order the generated Hessian tuple uses.
PAIRS: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(5) for j in range(i, 5))


@cache
def loss_in_phi() -> sp.Expr:
    """Population loss as a function of ``(rho, phi, S, Q, P, Ss, Qs)``, derived from the Gaussian moments."""
    m1 = gaussian.relu_mean()
    m2 = gaussian.relu_second_moment()
    cross = gaussian.relu_cross_moment()
    student_sq = rho**2 * (m1**2 * (S**2 - Q) + m2 * Q)
    student_teacher = rho * (m1**2 * (S * Ss - P) + cross * P)
    teacher_sq = m1**2 * (Ss**2 - Qs) + m2 * Qs
    return sp.expand((student_sq - 2 * student_teacher + teacher_sq) / 2)


def _to_cs(expr: sp.Expr) -> sp.Expr:
    """Replace ``cos(phi), sin(phi)`` by the symbols ``c, s`` (computed robustly by the caller)."""
    return sp.simplify(expr).subs({sp.cos(phi): c, sp.sin(phi): s})


def _d(expr_phi: sp.Expr, var: sp.Symbol) -> sp.Expr:
    """Partial derivative of an expression in ``phi`` with respect to ``var``; ``c`` goes through ``phi``."""
    if var is c:
        return sp.simplify(sp.diff(expr_phi, phi) / (-sp.sin(phi)))
    return sp.diff(expr_phi, var)


@cache
def loss() -> sp.Expr:
    """The loss with ``cos(phi), sin(phi)`` as the symbols ``c, s``."""
    return _to_cs(loss_in_phi())


@cache
def gradient() -> tuple[sp.Expr, ...]:
    """First partials ``(L_rho, L_c, L_S, L_Q, L_P)``."""
    out = tuple(_to_cs(_d(loss_in_phi(), v)) for v in VARIABLES)
    for e in out:
        _assert_regular(e)
    return out


@cache
def hessian() -> tuple[sp.Expr, ...]:
    """Second partials over PAIRS; the ``(c, c)`` entry is ``L_cc * sin(phi)^2`` (see module docstring)."""
    out = []
    for i, j in PAIRS:
        first = _d(loss_in_phi(), VARIABLES[i])
        second = _d(first, VARIABLES[j])
        if VARIABLES[i] is c and VARIABLES[j] is c:
            second = sp.simplify(second * sp.sin(phi) ** 2)
        e = _to_cs(second)
        _assert_regular(e)
        out.append(e)
    return tuple(out)


def _assert_regular(expr: sp.Expr) -> None:
    """Fail loudly if a derivative still divides by ``sin(phi)`` (it would be 0/0 at phi = 0 or pi)."""
    _, den = sp.fraction(sp.together(expr))
    if den.has(s) or den.has(sp.sin(phi)) or den.has(c):
        raise AssertionError(f"derivative is singular at phi in {{0, pi}}: {expr}")
