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


# ---------------------------------------------------------------------------------------------------------------
# The second layer (normalized models, rho = 1): the a-Hessian, the loss-optimal a at an angle, the spurious point
# and the saddle.  Every quantity is derived from the loss above; the code generator then prints an *arranged*
# form of each (:func:`arranged`), whose floating-point operation order is the one the simulations have always
# used, after proving here that the arranged form equals the derived one.

#: Number of patches (hidden units) and the arc-cosine kernel value ``g = g(phi)``, as symbols.
k = sp.Symbol("k", positive=True, integer=True)
g = sp.Symbol("g", real=True)
_x, _y = sp.symbols("x y", real=True)


def _partial(first: sp.Symbol, second: sp.Symbol | None = None) -> sp.Expr:
    """A first (``second=None``) or second partial of the loss in the invariants, at ``rho = 1``."""
    idx = {v: i for i, v in enumerate(VARIABLES)}
    if second is None:
        return gradient()[idx[first]].subs(rho, 1)
    i, j = sorted((idx[first], idx[second]))
    return hessian()[PAIRS.index((i, j))].subs(rho, 1)


@cache
def a_hessian_eigenvalues() -> tuple[sp.Expr, sp.Expr]:
    """``(lambda_1, lambda_perp)`` of the ``a``-block of the Hessian at ``rho = 1``, along ``1`` and orthogonal to it.

    With ``S = 1.a``, ``Q = a.a``, ``P = a.a*``, the ``a``-block is ``L_SS 1 1^T + 2 L_Q I`` plus terms in
    ``L_QQ, L_PP, L_SQ, L_SP, L_QP`` -- which vanish (checked).  ``L_SS`` and ``L_Q`` are constants, so the block is
    the same everywhere: ``M / (2 pi)`` with ``M = 1 1^T + (pi - 1) I``.
    """
    for pair in ((Q, Q), (P, P), (S, Q), (S, P), (Q, P)):
        if _partial(*pair) != 0:
            raise AssertionError(f"the a-Hessian has an unexpected term L_{pair}")
    ones, eye = _partial(S, S), 2 * _partial(Q)
    if ones.free_symbols or eye.free_symbols:
        raise AssertionError("the a-Hessian is not constant")
    return sp.simplify(k * ones + eye), sp.simplify(eye)


@cache
def loss_ref() -> sp.Expr:
    """``L_ref``: the loss of the zero network (``a = 0``), ``E[f*^2] / 2``, in ``Ss = 1.a*`` and ``Qs = ||a*||^2``."""
    return sp.simplify(loss().subs({rho: 1, S: 0, Q: 0, P: 0}))


@cache
def s_from_kernel() -> sp.Expr:
    """``sin(phi)`` in terms of ``g = g(phi)``, ``phi`` and ``cos(phi)`` (from the derived arc-cosine kernel)."""
    kernel = gaussian.arc_cosine_kernel().subs({sp.cos(phi): c, sp.sin(phi): s})
    (sol,) = sp.solve(sp.Eq(g, kernel), s)
    return sol


@cache
def optimal_alignment() -> sp.Expr:
    """``a(phi).a*`` for the ``a`` that zeroes ``grad_a L`` at angle ``phi``, as a function of ``g = g(phi)``.

    ``grad_a L = L_S 1 + 2 L_Q a + L_P a*`` keeps ``a`` in ``span{1, a*}``: with ``a = x 1 + y a*`` (so
    ``S = k x + y Ss``) the coefficients of ``1`` and ``a*`` give two linear equations for ``x, y``.
    """
    L_S = _partial(S).subs(S, k * _x + _y * Ss)
    L_P = sp.simplify(_partial(P).subs(s, s_from_kernel()))
    two_L_Q = 2 * _partial(Q)
    if L_P.free_symbols - {g} or L_S.free_symbols - {k, _x, _y, Ss}:
        raise AssertionError("grad_a L depends on more than g, S and a*")
    sol = sp.solve([L_S + two_L_Q * _x, two_L_Q * _y + L_P], [_x, _y], dict=True)[0]
    return sp.simplify(sol[_x] * Ss + sol[_y] * Qs)


@cache
def saddle_kernel_value() -> sp.Expr:
    """``g(phi_s)``: the kernel value at which ``a(phi).a* = 0`` (it is linear in ``g``)."""
    (sol,) = sp.solve(optimal_alignment(), g)
    return sp.simplify(sol)


@cache
def spurious_margin() -> sp.Expr:
    """``(k + pi - 1) Qs - pi Ss^2``: ``-(2 pi)^2 lambda_1 lambda_perp`` times ``a(pi).a*`` (``g(pi) = 0``).

    Positive iff ``a_sp . a* < 0``, i.e. iff the spurious point ``phi = pi`` is a local minimum.
    """
    g_pi = sp.simplify(gaussian.arc_cosine_kernel().subs(phi, sp.pi))
    lam1, lam_perp = a_hessian_eigenvalues()
    return sp.expand(sp.simplify(-((2 * sp.pi) ** 2) * lam1 * lam_perp * optimal_alignment().subs(g, g_pi)))


@cache
def g_max() -> tuple[sp.Float, sp.Float]:
    """``(phi_G, G)`` with ``G = max over phi in [0, pi] of (pi - phi) sin(phi)``, attained at ``tan(phi) = pi - phi``.

    ``G`` bounds ``|d a(phi).a* / d phi|`` (up to ``||a*||^2``-scaled factors) and the turn of the filter per step.
    The stationarity equation is transcendental: solved to 40 digits (the function is concave on ``[0, pi]``, so
    the stationary point is the maximum).
    """
    h = (sp.pi - phi) * sp.sin(phi)
    root = sp.nsolve(sp.diff(h, phi), phi, 1.1, prec=40)
    if not (0 < root < sp.pi and sp.diff(h, phi, 2).subs(phi, root).evalf(40) < 0):
        raise AssertionError("the stationary point of (pi - phi) sin(phi) is not an interior maximum")
    return root, h.subs(phi, root).evalf(40)


def _u(f, *args):  # an unevaluated node: sympy keeps the order, the printer prints it as is
    return f(*args, evaluate=False)


def _div(num: sp.Expr, den: sp.Expr) -> sp.Expr:
    return _u(sp.Mul, num, _u(sp.Pow, den, sp.Integer(-1)))


def _sub(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    return _u(sp.Add, a, _u(sp.Mul, sp.Integer(-1), b))


@cache
def arranged() -> dict[str, sp.Expr | tuple[sp.Expr, ...]]:
    """The second-layer quantities in the operation order the simulations use, each proven equal to its derivation.

    ``kk = (k + pi) - 1`` and ``pm1 = pi - 1`` are the eigenvalues of ``M`` (``2 pi`` times the ``a``-Hessian's);
    floating point evaluates the printed expression left to right exactly as written here.  Squares are written
    ``Ss*Ss`` (one rounding, like NumPy's ``x**2`` on arrays and numba's; Python's ``float ** 2`` calls ``pow``).
    """
    kk = _u(sp.Add, _u(sp.Add, k, sp.pi), sp.Integer(-1))
    pm1 = _u(sp.Add, sp.pi, sp.Integer(-1))
    two_pi = _u(sp.Mul, sp.Integer(2), sp.pi)
    ss_kk = _div(_u(sp.Mul, Ss, Ss), kk)
    out: dict[str, sp.Expr | tuple[sp.Expr, ...]] = {
        "m_eigenvalues": (kk, pm1),
        "a_hessian_eigenvalues": (_div(kk, two_pi), _div(pm1, two_pi)),
        "loss_ref": _div(_u(sp.Add, _u(sp.Mul, Ss, Ss), _u(sp.Mul, pm1, Qs)), _u(sp.Mul, sp.Integer(4), sp.pi)),
        "optimal_alignment": _u(sp.Add, ss_kk, _div(_u(sp.Mul, _u(sp.Add, g, sp.Integer(-1)), _sub(Qs, ss_kk)), pm1)),
        "saddle_kernel_value": _sub(sp.Integer(1), _div(_u(sp.Mul, pm1, ss_kk), _sub(Qs, ss_kk))),
        "spurious_margin": _sub(_u(sp.Mul, kk, Qs), _u(sp.Mul, sp.pi, _u(sp.Mul, Ss, Ss))),
    }
    lam = a_hessian_eigenvalues()
    derived: dict[str, sp.Expr | tuple[sp.Expr, ...]] = {
        "m_eigenvalues": tuple(2 * sp.pi * x for x in lam),
        "a_hessian_eigenvalues": lam,
        "loss_ref": loss_ref(),
        "optimal_alignment": optimal_alignment(),
        "saddle_kernel_value": saddle_kernel_value(),
        "spurious_margin": spurious_margin(),
    }
    for name, expr in out.items():
        mine = expr if isinstance(expr, tuple) else (expr,)
        theirs = derived[name] if isinstance(derived[name], tuple) else (derived[name],)
        for e, d in zip(mine, theirs, strict=True):
            if sp.simplify(e.doit() - d) != 0:
                raise AssertionError(f"arranged {name} differs from its derivation: {e} vs {d}")
    return out
