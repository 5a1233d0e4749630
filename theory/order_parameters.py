"""Population GD as an exact map on a few order parameters, derived and checked symbolically.

Under population GD the filter step lies in ``span{w~, w*}`` and the head step in ``span{a, 1, a*}`` (SCIENCE.md
section 2: ``grad_a = 2 L_Q a + L_P a* + L_S 1``, and ``grad_w~`` is a combination of ``w~`` and ``w*``).  So for
all ``t`` the effective filter stays in the plane ``span{w~_0, w*}`` (with a shortcut whose weight moves, in
``span{w~_0, v, w*}``) and the head in ``span{a_0, 1, a*}``, and a whole trajectory is a map on a handful of
scalars, whatever ``k`` and ``p`` are.  The coordinates used (``w*`` is a unit vector):

- the filter ``w~ = u w* + r e`` with ``e`` the unit vector of ``w~_0``'s part orthogonal to ``w*`` (``r >= 0`` at
  the start), so ``n = ||w~|| = sqrt(u^2 + r^2)``, ``cos phi = u / n``, ``phi = atan2(r, u)``;
- the head ``a = x a_0 + y 1 + (1 + z) a*``: ``(x, y, z)`` are the coordinates of the deviation ``a - a*``, so
  they all vanish at the global minimum of the weight-normalized models and the loss there is a sum of small
  squares, not a difference of O(1) terms.  The invariants of ``a`` come from the Gram matrix of
  ``(a_0, 1, a*)``: ``Q0 = a0.a0, S0 = 1.a0, P0 = a0.a*, k, Ss = 1.a*, Qs = a*.a*``.

The loss depends on the head only through ``b = rho a`` (``rho = 1`` normalized, ``||w||`` for the unnormalized
CNN).  Written in the deviations of ``b`` from the teacher,

    Ds = 1.(b - a*),   Dp = (b - a*).a*,   Dq = ||b - a*||^2,   omc = 1 - cos phi,

it is (:func:`deviation_loss`, proven equal to :func:`theory.derivation.loss`)

    L = [(pi - 1) Dq + Ds^2 + 2 (Qs + Dp) (pi omc + phi cos phi - sin phi)] / (4 pi),

every term of which vanishes at the minimum.  One GD step with step sizes ``(eta_w, eta_a)`` is then

    x' = x - eta_a 2 L_Q x,   y' = y - eta_a (2 L_Q y + L_S),   z' = z - eta_a (2 L_Q z + L_Pa),
    u' = u - eta_w g_u,       r' = r - eta_w g_r,

with ``L_Pa = 2 L_Q + L_P`` (the coefficient of ``a*`` in ``grad_a`` at ``a = a*``: it vanishes at ``phi = 0``
for the normalized models) and the filter gradient ``(g_u, g_r) = L_c (r^2, -u r) / n^3 + [unnormalized]
L_rho (u, r) / n``.  A shortcut whose weight moves by ``dl`` adds ``dl v`` to ``w~`` (a third coordinate).

**Gradient flow.**  The continuous-time limit of GD with per-layer rates, time ``t`` counted in steps (units of
``1/eta``, so that ``t`` steps of GD with small steps approximate flow time ``t``), is ``dw/dt = -eta_w grad_w L``,
``da/dt = -eta_a grad_a L``; a shortcut whose weight ``lambda(t)`` moves adds ``lambda'(t) v`` to ``dw~/dt``.  In
the coordinates (``w~ = u w* + r1 e1 + r2 e2``, ``r^2 = r1^2 + r2^2``, ``n = sqrt(u^2 + r^2)``; ``r2`` moves only
with a moving shortcut) it is the vector field (:func:`flow_field`)

    du/dt  = -eta_w (L_c r^2 / n^3 + L_rho u / n) + lambda' v_u,
    dri/dt = -eta_w (-L_c u ri / n^3 + L_rho ri / n) + lambda' v_i        (i = 1, 2),
    dx/dt  = -eta_a 2 L_Q x,   dy/dt = -eta_a (2 L_Q y + L_S),   dz/dt = -eta_a (2 L_Q z + L_Pa),

with ``L_rho`` taken as 0 for the weight-normalized models (their loss does not depend on ``rho = ||w~||``).  The
filter part is ``-eta_w`` times the gradient of ``L(c = u/n, rho = n)`` in the orthonormal coordinates ``(u, r1,
r2)`` (proof ``flow_filter``), the head part ``-eta_a`` times the coordinates of ``grad_a`` in ``(a0, 1, a*)``
(``flow_head``).  The GD map on the coordinates with step sizes ``(eta_w, eta_a)`` and shortcut jump ``dl``
(:func:`gd_map`, the map the reduced engine runs) is *exactly* one explicit Euler step of this field: its increment
divided by the step is the field, with no remainder (``flow_map``), because the coordinates are linear in the
vectors and GD is Euler's method for the vector flow.  So the finite-step engine converges to the flow like
Euler's method, with a global error O(eta) at a fixed flow time; derived quantities that are nonlinear in the
coordinates (the angle, the loss) have one-step increments that match their rates only to O(eta).

Every identity above is proven here with sympy (:func:`proofs`); the functions the engines evaluate are
generated into :mod:`theory.closed_forms` by :mod:`theory.codegen`: :func:`deviation_loss`,
:func:`deviation_gradient` (``L_rho, L_c, L_S, L_Q, L_Pa``), :func:`gram_deviations` (``Ds, Dp, Dq`` of ``a``
from ``(x, y, z)``), :func:`scaled_deviations` (those of ``b = rho a``) and :func:`flow_field`.
"""

from __future__ import annotations

from functools import cache

import sympy as sp

from theory import derivation as dv

pi = sp.pi
rho, phi, c, s, S, Q, P, Ss, Qs = dv.ARGUMENTS
omc = sp.Symbol("omc", real=True)
Ds, Dp, Dq = sp.symbols("Ds Dp Dq", real=True)
x, y, z = sp.symbols("x y z", real=True)
Q0, S0, P0 = sp.symbols("Q0 S0 P0", real=True)
k = sp.Symbol("k", positive=True)
u, r = sp.symbols("u r", real=True)
r1, r2 = sp.symbols("r1 r2", real=True)
inv_n = sp.Symbol("inv_n", positive=True)
L_rho_, L_c_, L_S_, L_Q_, L_Pa_ = sp.symbols("L_rho L_c L_S L_Q L_Pa", real=True)
eta_w, eta_a, dlam = sp.symbols("eta_w eta_a dlam", real=True)
vu, v1, v2 = sp.symbols("vu v1 v2", real=True)

#: Arguments of the generated deviation-form loss and gradient, in order.
DEVIATION_ARGUMENTS: tuple[sp.Symbol, ...] = (rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
#: Arguments of the generated Gram map ``(x, y, z) -> (Ds, Dp, Dq)`` of ``a``.
GRAM_ARGUMENTS: tuple[sp.Symbol, ...] = (x, y, z, Q0, S0, P0, k, Ss, Qs)
#: Arguments of the generated map from the deviations of ``a`` to those of ``b = rho a``.
SCALE_ARGUMENTS: tuple[sp.Symbol, ...] = (rho, Ds, Dp, Dq, Ss, Qs)
#: Arguments of the generated gradient-flow field: the coordinates, ``1/n``, the partials of
#: :func:`deviation_gradient` (``L_rho`` passed as 0 for the weight-normalized models), the rates and the shortcut
#: weight's rate ``dlam`` with the shortcut direction's coordinates ``(v_u, v_1, v_2)``.
FLOW_ARGUMENTS: tuple[sp.Symbol, ...] = (u, r1, r2, x, y, z, inv_n, L_rho_, L_c_, L_S_, L_Q_, L_Pa_, eta_w, eta_a,
                                         dlam, vu, v1, v2)


def _b_invariants() -> dict[sp.Symbol, sp.Expr]:
    """``S, Q, P`` of ``a = b / rho`` in the deviations of ``b`` from ``a*``."""
    return {S: (Ss + Ds) / rho, P: (Qs + Dp) / rho, Q: (Qs + 2 * Dp + Dq) / rho**2}


def _angle_term() -> sp.Expr:
    """``pi (1 - cos phi) + phi cos phi - sin phi``: O(phi^2) at 0, with ``1 - cos phi`` passed as ``omc``."""
    return pi * omc + phi * c - s


@cache
def deviation_loss() -> sp.Expr:
    """The loss in ``(Ds, Dp, Dq, omc)``: each term vanishes at the teacher (module docstring)."""
    return ((pi - 1) * Dq + Ds**2 + 2 * (Qs + Dp) * _angle_term()) / (4 * pi)


@cache
def deviation_gradient() -> tuple[sp.Expr, ...]:
    """``(L_rho, L_c, L_S, L_Q, L_Pa)`` in the deviations, ``L_Pa = 2 L_Q + L_P``; ``L_rho`` is arranged so that
    its terms vanish at the teacher too (it only matters for the unnormalized CNN)."""
    L_rho = ((pi - 1) * (Dq + Dp) + (Ss + Ds) * Ds + (Qs + Dp) * _angle_term()) / (2 * pi * rho)
    L_c = (Qs + Dp) * (phi - pi) / (2 * pi)
    L_S = rho * Ds / (2 * pi)
    L_Q = rho**2 * (pi - 1) / (4 * pi)
    L_Pa = rho * ((rho - 1) * (pi - 1) + _angle_term()) / (2 * pi)
    return L_rho, L_c, L_S, L_Q, L_Pa


@cache
def gram_deviations() -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """``(1.d, d.a*, ||d||^2)`` of ``d = x a0 + y 1 + z a* = a - a*`` from the Gram matrix of ``(a0, 1, a*)``.  The
    same quadratic form gives ``||grad_a||^2`` from ``grad_a``'s coordinates."""
    return (x * S0 + y * k + z * Ss, x * P0 + y * Ss + z * Qs,
            x * x * Q0 + y * y * k + z * z * Qs + 2 * (x * y * S0 + x * z * P0 + y * z * Ss))


@cache
def scaled_deviations() -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """The deviations of ``b = rho a`` from those ``(Ds, Dp, Dq)`` of ``a``: ``b - a* = rho (a - a*) + (rho - 1)
    a*`` (exactly the deviations of ``a`` when ``rho = 1``)."""
    return (rho * Ds + (rho - 1) * Ss, rho * Dp + (rho - 1) * Qs,
            rho**2 * Dq + 2 * rho * (rho - 1) * Dp + (rho - 1) ** 2 * Qs)


@cache
def flow_field() -> tuple[sp.Expr, ...]:
    """``d(u, r1, r2, x, y, z)/dt`` of gradient flow with per-layer rates ``(eta_w, eta_a)`` and a shortcut whose
    weight moves at rate ``dlam`` (module docstring), in :data:`FLOW_ARGUMENTS`."""
    rr = r1**2 + r2**2
    return (
        -eta_w * (L_c_ * rr * inv_n**3 + L_rho_ * u * inv_n) + dlam * vu,
        -eta_w * (-L_c_ * u * r1 * inv_n**3 + L_rho_ * r1 * inv_n) + dlam * v1,
        -eta_w * (-L_c_ * u * r2 * inv_n**3 + L_rho_ * r2 * inv_n) + dlam * v2,
        -eta_a * 2 * L_Q_ * x,
        -eta_a * (2 * L_Q_ * y + L_S_),
        -eta_a * (2 * L_Q_ * z + L_Pa_),
    )


def gd_map() -> tuple[sp.Expr, ...]:
    """One GD step on the coordinates as :mod:`sims.engines.reduced` takes it (step sizes ``eta_w, eta_a``, the
    shortcut's weight jumping by ``dlam``): ``w~ <- alpha w~ + beta w* + dlam v`` with ``alpha = 1 + eta_w (L_c u /
    n^3 - L_rho / n)``, ``beta = -eta_w L_c / n``, and ``(x, y, z) <- (x, y, z) - eta_a (coordinates of grad_a)``."""
    alpha = 1 + eta_w * (L_c_ * u * inv_n**3 - L_rho_ * inv_n)
    beta = -eta_w * L_c_ * inv_n
    return (alpha * u + beta + dlam * vu, alpha * r1 + dlam * v1, alpha * r2 + dlam * v2,
            x - eta_a * 2 * L_Q_ * x, y - eta_a * (2 * L_Q_ * y + L_S_), z - eta_a * (2 * L_Q_ * z + L_Pa_))


def _on_circle(expr: sp.Expr) -> sp.Expr:
    """``expr`` with ``omc = 1 - c``: the identities hold on the unit circle of ``(c, s)``."""
    return sp.expand(expr.subs(omc, 1 - c))


@cache
def proofs() -> dict[str, bool]:
    """Prove every identity of the module docstring; each entry is True when sympy reduces the difference to 0.

    - ``loss``: :func:`deviation_loss` equals :func:`theory.derivation.loss` with ``S, Q, P`` of ``b``;
    - ``gradient``: :func:`deviation_gradient` equals the partials of :func:`theory.derivation.gradient`;
    - ``gram``: the Gram deviations equal ``1.(b - a*), (b - a*).a*, ||b - a*||^2`` for explicit vectors;
    - ``filter_step``: the gradient of ``L(c = u / n, rho = n)`` in ``(u, r)`` is ``L_c (r^2, -u r)/n^3 +
      L_rho (u, r)/n`` (the plane's coordinates move as the vector step moves ``w~``);
    - ``head_step``: ``grad_a = 2 L_Q a + L_P a* + L_S 1`` has the coordinates of the step in ``(x, y, z)``.
    """
    sub = _b_invariants()
    out: dict[str, bool] = {}
    out["loss"] = _on_circle(deviation_loss() - dv.loss().subs(sub)) == 0
    g = dv.gradient()  # L_rho, L_c, L_S, L_Q, L_P
    raw = (g[0], g[1], g[2], g[3], 2 * g[3] + g[4])
    out["gradient"] = all(sp.simplify(_on_circle(a - b.subs(sub))) == 0
                          for a, b in zip(deviation_gradient(), raw, strict=True))
    out["gram"] = _gram_on_vectors()
    out["filter_step"] = _filter_gradient_in_plane()
    out["head_step"] = _head_gradient_in_coordinates()
    out.update(_flow_proofs())
    return out


def _flow_proofs() -> dict[str, bool]:
    """``flow_filter``: the field's filter part is ``-eta_w dL/d(u, r1, r2)`` through ``c = u / n`` and ``rho = n``
    (plus ``dlam v``); ``flow_head``: its head part is ``-eta_a`` times the coordinates of ``grad_a = 2 L_Q a +
    L_P a* + L_S 1`` (``L_Pa = 2 L_Q + L_P``: proof ``head_step``); ``flow_map``: :func:`gd_map` minus the
    coordinates is the field with the rates replaced by the step sizes and ``dlam`` by the jump, exactly."""
    n = sp.sqrt(u**2 + r1**2 + r2**2)
    field = [e.subs(inv_n, 1 / n) for e in flow_field()]
    coords = (u, r1, r2)
    grad = [L_c_ * sp.diff(u / n, q) + L_rho_ * sp.diff(n, q) for q in coords]
    jump = (vu, v1, v2)
    filt = all(sp.simplify(field[i] - (-eta_w * grad[i] + dlam * jump[i])) == 0 for i in range(3))
    LQ, LS, LP = sp.symbols("L_Q L_S L_P", real=True)
    head_coords = (2 * LQ * x, 2 * LQ * y + LS, 2 * LQ * z + 2 * LQ + LP)
    sub = {L_Q_: LQ, L_S_: LS, L_Pa_: 2 * LQ + LP}
    head = all(sp.expand(field[3 + i].subs(sub) + eta_a * head_coords[i]) == 0 for i in range(3))
    state = (u, r1, r2, x, y, z)
    euler = all(sp.simplify((m - q - f).subs(inv_n, 1 / n)) == 0
                for m, q, f in zip(gd_map(), state, flow_field(), strict=True))
    return {"flow_filter": filt, "flow_head": head, "flow_map": euler}


def _gram_on_vectors() -> bool:
    """The Gram deviations on symbolic vectors of length 3 (enough for three independent directions)."""
    a0 = sp.Matrix(sp.symbols("a0_:3", real=True))
    ast = sp.Matrix(sp.symbols("as_:3", real=True))
    one = sp.ones(3, 1)
    d = x * a0 + y * one + z * ast
    inv = {Q0: a0.dot(a0), S0: one.dot(a0), P0: a0.dot(ast), k: 3, Ss: one.dot(ast), Qs: ast.dot(ast)}
    dev_a = [e.subs(inv) for e in gram_deviations()]
    if any(sp.expand(e - w) != 0 for e, w in zip(dev_a, (one.dot(d), d.dot(ast), d.dot(d)), strict=True)):
        return False
    b_dev = rho * (d + ast) - ast
    scaled = [e.subs(dict(zip((Ds, Dp, Dq), dev_a, strict=True))).subs(inv) for e in scaled_deviations()]
    want = (one.dot(b_dev), b_dev.dot(ast), b_dev.dot(b_dev))
    return all(sp.expand(e - w) == 0 for e, w in zip(scaled, want, strict=True))


def _filter_gradient_in_plane() -> bool:
    """``d L / d(u, r)`` through ``c = u / n`` and ``rho = n`` against the closed form of the step."""
    Lc, Lr = sp.symbols("L_c L_rho", real=True)
    n = sp.sqrt(u**2 + r**2)
    cu = sp.diff(u / n, u)
    cr = sp.diff(u / n, r)
    gu = Lc * cu + Lr * sp.diff(n, u)
    gr = Lc * cr + Lr * sp.diff(n, r)
    return (sp.simplify(gu - (Lc * r**2 / n**3 + Lr * u / n)) == 0
            and sp.simplify(gr - (-Lc * u * r / n**3 + Lr * r / n)) == 0)


def _head_gradient_in_coordinates() -> bool:
    """``grad_a = 2 L_Q a + L_P a* + L_S 1`` with ``a = x a0 + y 1 + (1 + z) a*`` has the coordinates
    ``(2 L_Q x, 2 L_Q y + L_S, 2 L_Q z + L_Pa)``."""
    LS, LQ, LP = sp.symbols("L_S L_Q L_P", real=True)
    a0 = sp.Matrix(sp.symbols("a0_:3", real=True))
    ast = sp.Matrix(sp.symbols("as_:3", real=True))
    one = sp.ones(3, 1)
    a = x * a0 + y * one + (1 + z) * ast
    grad = 2 * LQ * a + LP * ast + LS * one
    coords = 2 * LQ * x * a0 + (2 * LQ * y + LS) * one + (2 * LQ * z + 2 * LQ + LP) * ast
    return all(sp.expand(e) == 0 for e in grad - coords)
