"""End-to-end dynamics of a deep linear expansion of a single-row layer (pure math, derived with sympy).

A row ``w`` (``1 x m``: the filter ``w``, or the ResNet's residual branch, with ``m = p``; the second layer ``a``
with ``m = k``) is written as a product of ``N`` linear factors ``W = W_N ... W_1``.  Gradient flow on the factors
from a *balanced* start (``W_{j+1}^T W_{j+1} = W_j W_j^T``, Arora, Cohen, Hazan, ICML 2018, Theorem 1) moves the
product by

    dW/dt = - sum_{j=1..N} (W W^T)^{(j-1)/N} grad L(W) (W^T W)^{(N-j)/N}.

For a single row with ``nu = ||w||`` and direction ``w^ = w / nu``: ``W W^T = nu^2`` (a scalar), and
``(W^T W)^q = nu^(2q) w^ w^^T`` for ``q > 0`` but ``I`` for ``q = 0`` (the ``j = N`` term).  Summing over ``j``
symbolically gives

    dw/dt = -nu^(2 - 2/N) (grad L + (N - 1) Pr_w grad L),      Pr_w = w^ w^^T,

i.e. the gradient's component orthogonal to ``w`` is scaled by ``c_perp = nu^(2-2/N)`` and its component along
``w`` by ``c_par = N nu^(2-2/N)``.  :func:`end_to_end_coefficients` returns ``(c_perp, c_par)``;
:mod:`theory.codegen` emits them as ``theory.closed_forms.end_to_end(norm, N)``.  ``N = 1`` gives plain gradient
flow (``c_perp = c_par = 1``); for ``N >= 2`` a zero row does not move (the zero factorization is a saddle).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sympy as sp

#: Norm of the row ``nu = ||w||`` and the depth ``N`` (the arguments of the generated function).
norm = sp.Symbol("norm", nonnegative=True)
N = sp.Symbol("N", integer=True, positive=True)
_j = sp.Symbol("j", integer=True, positive=True)
#: Bookkeeping symbols for the two operators a term applies to ``grad L``: the identity and ``Pr_w``.
_ident, _proj = sp.symbols("I_op P_op", commutative=True)

ARGUMENTS: tuple[sp.Symbol, ...] = (norm, N)


def _left_power(q: sp.Expr) -> sp.Expr:
    """``(W W^T)^q`` for a row ``W``: the ``1 x 1`` matrix ``nu^(2q)``, a scalar acting as the identity."""
    return norm ** (2 * q)


def _right_power(q: sp.Expr) -> sp.Piecewise:
    """``g (W^T W)^q`` for a row ``g``: ``nu^(2q) Pr_w g`` for ``q > 0`` (``W^T W = nu^2 w^ w^^T`` has rank one),
    ``g`` itself for ``q = 0`` (the zero power is the identity, not the projection)."""
    return sp.Piecewise((norm ** (2 * q) * _proj, sp.Gt(q, 0)), (_ident, True))


def _term(j: sp.Expr) -> sp.Expr:
    """The ``j``-th term of the sum, as an operator on ``grad L``."""
    return _left_power((j - 1) / N) * _right_power((N - j) / N)


@cache
def end_to_end_sum() -> sp.Expr:
    """``sum_{j=1..N} (W W^T)^{(j-1)/N} [grad L] (W^T W)^{(N-j)/N}`` as ``c_I I_op + c_P P_op``.

    The sum is split into ``j = 1..N-1`` (where ``(N - j)/N > 0``: checked symbolically with ``j = N - m``,
    ``m >= 1``, so the generic branch of :func:`_right_power` applies) and ``j = N`` (where the right factor is
    the identity); the first part is summed over ``j`` by :class:`sympy.Sum`."""
    m = sp.Symbol("m", integer=True, positive=True)
    cond = _right_power((N - _j) / N).args[0].cond
    if cond.subs(_j, N - m) is not sp.true:
        raise AssertionError(f"the generic branch must hold for j < N: {cond}")
    if cond.subs(_j, N) is not sp.false:
        raise AssertionError(f"the identity branch must hold at j = N: {cond}")
    generic = sp.powsimp(_left_power((_j - 1) / N) * _right_power((N - _j) / N).args[0].expr, force=True)
    head = sp.Sum(generic, (_j, 1, N - 1)).doit()
    tail = _term(N)
    return sp.expand(sp.powsimp(sp.simplify(head + tail), force=True))


@cache
def end_to_end_coefficients() -> tuple[sp.Expr, sp.Expr]:
    """``(c_perp, c_par)``: ``dw/dt = -(c_perp g_perp + c_par g_par)`` with ``g = grad L = g_perp + g_par``
    split orthogonal to and along ``w``.  Derived: ``c_perp = nu^(2-2/N)``, ``c_par = N nu^(2-2/N)``."""
    total = end_to_end_sum()
    c_ident = sp.simplify(total.coeff(_ident))
    c_proj = sp.simplify(total.coeff(_proj))
    # I acts on both components, Pr_w only on the one along w.
    c_perp = sp.powsimp(sp.simplify(c_ident), force=True)
    c_par = sp.powsimp(sp.factor(sp.simplify(c_ident + c_proj)), force=True)
    return c_perp, c_par


def end_to_end_velocity(w: np.ndarray, grad: np.ndarray, depth: int) -> np.ndarray:
    """``dw/dt`` of a balanced depth-``depth`` factorization of the row ``w`` with loss gradient ``grad`` (NumPy,
    from the derived coefficients; ``-grad`` for ``depth = 1``)."""
    w = np.asarray(w, dtype=float)
    grad = np.asarray(grad, dtype=float)
    nu = float(np.linalg.norm(w))
    c_perp, c_par = (float(c.subs({norm: nu, N: depth})) for c in end_to_end_coefficients())
    if nu == 0.0:
        return -c_perp * grad  # no direction: the projection is undefined (and c_par = c_perp = 0 for depth > 1)
    u = w / nu
    g_par = float(grad @ u) * u
    return -(c_perp * (grad - g_par) + c_par * g_par)


def factor_sum_velocity(w: np.ndarray, grad: np.ndarray, depth: int) -> np.ndarray:
    """The same velocity evaluated term by term from the matrix powers (the definition, for tests)."""
    w = np.asarray(w, dtype=float)[None, :]
    grad = np.asarray(grad, dtype=float)[None, :]
    wwt = float((w @ w.T)[0, 0])
    wtw = w.T @ w
    vals, vecs = np.linalg.eigh(wtw)
    vals = np.where(vals > 1e-12 * max(vals.max(), 0.0), vals, 0.0)  # rank one: the rest is rounding noise
    out = np.zeros_like(grad)
    for j in range(1, depth + 1):
        q = (depth - j) / depth
        right = np.eye(w.shape[1]) if q == 0 else (vecs * vals**q) @ vecs.T
        out += wwt ** ((j - 1) / depth) * grad @ right
    return -out[0]
