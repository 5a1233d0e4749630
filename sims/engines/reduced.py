"""Population GD as the exact map on its order parameters: O(1) work per step, whatever ``k`` and ``p`` are.

Population GD keeps the effective filter in ``span{w~_0, w*}`` (with a moving shortcut, ``span{w~_0, v, w*}``)
and the head in ``span{a_0, 1, a*}`` (:mod:`theory.order_parameters`).  This engine carries, per run, the
coordinates of the filter ``w~ = u w* + r1 e1 + r2 e2`` (``e1, e2`` orthonormal, orthogonal to the unit ``w*``;
``r2`` moves only with a moving shortcut) and of the head ``a = x a0 + y 1 + (1 + z) a*``, and the Gram entries
``a0.a0, 1.a0, a0.a*``.  The loss, the partials and the gradient norm are the generated deviation forms
(``theory.closed_forms.deviation_loss``, ``deviation_gradient``, ``gram_deviations``): at the global minimum of
the normalized models ``(x, y, z, r)`` all tend to 0 and the loss is a sum of small squares, so losses far below
``1e-12 L_ref`` are resolved and the measured rate is the Hessian's.  ``||grad_a||^2`` is the Gram quadratic form
of ``grad_a``'s coordinates, exact near every stationary point.

The step is the vector engine's (:mod:`sims.engines.gd`) on the coordinates: ``w~ <- alpha w~ + beta w* + dl v``
moves ``(u, r1, r2)`` by ``(alpha u + beta + dl v_u, alpha r1 + dl v_1, alpha r2 + dl v_2)`` and ``a <- ca a + cp
a* + c1 1`` moves ``(x, y, z)``.  A step that would leave the coordinates above ``1e150`` (their squares near
overflow) or non-finite is not taken: the run stops ``diverged`` at its last finite state.  Noise is not
supported (a noisy step leaves the subspace): :mod:`sims.runs.plain` sends noisy schedules to the vector engine.

The record holds per-run inputs, not vectors: the driver's teacher invariants come from the record (hook
``teacher``), so the problem's ``WS, AS`` may be empty.  The final coordinates are stored in ``out``; the Python
side rebuilds the vectors from them when they exist (:mod:`sims.runs.plain`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from sims.engines import closed_forms as cf
from sims.engines import driver
from sims.engines.common import atan2_upper

#: Largest coordinate a step may produce (its square stays far from overflow).
BIG = 1e150
#: Columns of :attr:`ReducedGD.start` and :attr:`ReducedGD.out`.
STATE_FIELDS: tuple[str, ...] = ("u", "r1", "r2", "x", "y", "z")
#: Columns of :attr:`ReducedGD.consts`.
CONST_FIELDS: tuple[str, ...] = ("Q0", "S0", "P0", "Ss", "Qs", "vu", "v1", "v2")


class ReducedGD(NamedTuple):
    """Population GD on the order parameters of ``R`` runs.

    ``start`` and ``out`` hold the coordinates :data:`STATE_FIELDS` (``out`` receives the final ones);
    ``consts`` the Gram entries and teacher invariants :data:`CONST_FIELDS` (``v_*``: the shortcut direction's
    coordinates, used with ``lam``).  ``lam, t_deployed, fade_end`` as in :class:`sims.engines.gd.PopulationGD`.
    """

    start: np.ndarray  # (R, 6)
    out: np.ndarray  # (R, 6)
    consts: np.ndarray  # (R, 8)
    k: int
    normalized: bool
    lam: np.ndarray  # (T + 1,) shortcut weights; empty: constant
    t_deployed: int
    fade_end: np.ndarray  # (R, 2) out: loss and phi at t_deployed


class FadingReducedGD(ReducedGD):
    """:class:`ReducedGD` with the fading shortcut (its own compiled engine, :data:`run_range_fading`)."""


def workspace(eng: ReducedGD, p: int, k: int) -> tuple[np.ndarray, ...]:
    """No work arrays: the whole state is a handful of scalars."""
    return (np.empty(0),)


@njit(inline="always")
def _teacher(eng, prob, tr):
    return 1.0, eng.consts[tr, 3], eng.consts[tr, 4], eng.k


@njit(inline="always")
def _begin(eng, wsp, prob, r, tr, tv):
    s0 = eng.start[r]
    q = eng.consts[r]
    return (s0[0], s0[1], s0[2], s0[3], s0[4], s0[5]), (q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7])


@njit(inline="always")
def _angle(u, r1, r2):
    """``(n, phi, cos, sin, 1 - cos)`` of ``w~ = u w* + r1 e1 + r2 e2``; ``1 - cos = r^2 / (n (n + u))`` for
    ``u > 0`` (no cancellation at small angles)."""
    rr = r1 * r1 + r2 * r2
    nn = u * u + rr
    n = math.sqrt(nn)
    r = math.sqrt(rr)
    inv_n = 1.0 / n
    c = u * inv_n
    s = r * inv_n
    omc = rr / (n * (n + u)) if u > 0.0 else 1.0 - c
    return n, atan2_upper(r, u), c, s, omc


@njit(inline="always")
def _observe(eng, wsp, carry, tv):
    (u, r1, r2, x, y, z), (Q0, S0, P0, Ss, Qs, vu, v1, v2) = carry
    k = tv[3]
    n, phi, c, s, omc = _angle(u, r1, r2)
    rho = 1.0 if eng.normalized else n
    Da_s, Da_p, Da_q = cf.gram_deviations(x, y, z, Q0, S0, P0, k, Ss, Qs)
    Ds, Dp, Dq = cf.scaled_deviations(rho, Da_s, Da_p, Da_q, Ss, Qs)
    L = cf.deviation_loss(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
    L_rho, L_c, L_S, L_Q, L_Pa = cf.deviation_gradient(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
    gx = 2.0 * L_Q * x
    gy = 2.0 * L_Q * y + L_S
    gz = 2.0 * L_Q * z + L_Pa
    ga2 = max(cf.gram_deviations(gx, gy, gz, Q0, S0, P0, k, Ss, Qs)[2], 0.0)
    gw2 = (L_c * s / n) * (L_c * s / n)
    if not eng.normalized:
        gw2 += L_rho * L_rho
    P = Qs + Da_p
    return L, phi, c, s, P, gw2 + ga2, ga2, (n, L_rho, L_c, gx, gy, gz)


@njit(inline="always")
def _gates(eng, wsp, carry, t):
    return True, True, True, True, eng.normalized  # the trapped bound holds for the normalized models


@njit(inline="always")
def _gates_fading(eng, wsp, carry, t):
    return True, t >= eng.t_deployed, True, True, eng.normalized


@njit(inline="always")
def _note_fading(eng, wsp, carry, r, t, L, phi, P, finite):
    if t == eng.t_deployed:
        eng.fade_end[r, 0] = L
        eng.fade_end[r, 1] = phi


@njit(inline="always")
def _traj_point(eng, wsp, carry, L, phi, P):
    (u, r1, r2, x, y, z), (Q0, S0, P0, Ss, Qs, vu, v1, v2) = carry
    return L, phi, P, math.sqrt(max(cf.gram_deviations(x, y, z, Q0, S0, P0, eng.k, Ss, Qs)[2], 0.0))


def _make_step(moving: bool):
    """The GD step on the coordinates; ``moving``: the shortcut's weight follows ``eng.lam`` (a compile-time
    constant, as in :func:`sims.engines.gd._make_step`)."""

    @njit(inline="always")
    def step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t):
        (u, r1, r2, x, y, z), consts = carry
        vu, v1, v2 = consts[5], consts[6], consts[7]
        n, L_rho, L_c, gx, gy, gz = aux
        inv_n = 1.0 / n
        alpha = 1.0 + ew * (L_c * (u * inv_n) * (inv_n * inv_n))
        if not eng.normalized:
            alpha -= ew * L_rho * inv_n
        beta = -ew * L_c * inv_n
        un = alpha * u + beta
        r1n = alpha * r1
        r2n = alpha * r2
        if moving:
            nl = eng.lam.shape[0]
            dl = (eng.lam[t + 1] if t + 1 < nl else 0.0) - (eng.lam[t] if t < nl else 0.0)
            un += dl * vu
            r1n += dl * v1
            r2n += dl * v2
        xn = x - ea * gx
        yn = y - ea * gy
        zn = z - ea * gz
        if not (abs(un) < BIG and abs(r1n) < BIG and abs(r2n) < BIG and abs(xn) < BIG and abs(yn) < BIG
                and abs(zn) < BIG and (un != 0.0 or r1n != 0.0 or r2n != 0.0)):
            return carry, False
        return ((un, r1n, r2n, xn, yn, zn), consts), True

    return step


@njit(inline="always")
def _finish(eng, wsp, prob, r, rec, carry):
    state = carry[0]
    for f in range(6):
        eng.out[r, f] = state[f]


_HOOKS = dict(teacher=_teacher, begin=_begin, observe=_observe, traj_point=_traj_point, finish=_finish)
_OPTIONS = dict(error_model="numpy", _nrt=False)
#: The compiled entry points: population GD on the order parameters, and with the fading shortcut.
run_range = driver.register(ReducedGD, options=_OPTIONS, step=_make_step(False), gates=_gates, **_HOOKS)
run_range_fading = driver.register(FadingReducedGD, options=_OPTIONS, step=_make_step(True), gates=_gates_fading,
                                   note=_note_fading, **_HOOKS)
