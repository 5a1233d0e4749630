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

It runs on the lockstep driver (:mod:`sims.engines.lockstep`): 64 runs side by side, the observation and the
step vectorized across them, so every hook here is written without branches (selects only; ``ok`` says whether
the step is finite) and the arctangent is the branch-free :func:`sims.engines.common.atan2_select`.  Three
entry points, each compiled for its own arithmetic: the weight-normalized models (``rho = 1``: the compiler drops
every term in ``rho - 1``), the unnormalized CNN, and the fading shortcut (its weight ``lambda_t`` moves ``w~`` by
``(lambda_{t+1} - lambda_t) v``; deployed from ``t_deployed`` on, an event step of the lockstep driver).

The record holds per-run inputs, not vectors: the driver's teacher invariants come from the record (hook
``teacher``), so the problem's ``WS, AS`` may be empty.  The final coordinates are stored in ``out``; the Python
side rebuilds the vectors from them when they exist (:mod:`sims.runs.plain`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from sims.engines import lockstep
from sims.engines.common import atan2_select, unshared_empty
from sims.engines.gd import _note_fading  # the loss and angle at the deployment step, as the vector engine keeps them
from sims.engines.lockstep import LANES
from theory import closed_forms as _tcf

#: The generated order-parameter forms, inlined into the lockstep loop at numba's IR level (compiled as functions
#: of their own they are calls, and a loop with calls does not vectorize).
_gram = njit(inline="always")(_tcf.gram_deviations)
_scaled = njit(inline="always")(_tcf.scaled_deviations)
_loss = njit(inline="always")(_tcf.deviation_loss)
_gradient = njit(inline="always")(_tcf.deviation_gradient)
#: A step that never comes.
_NEVER = np.iinfo(np.int64).max
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


class UnnormalizedReducedGD(ReducedGD):
    """:class:`ReducedGD` of the unnormalized CNN (``rho = ||w||``): its own compiled engine."""


class FadingReducedGD(ReducedGD):
    """:class:`ReducedGD` with the fading shortcut (``lam``, ``t_deployed``, ``fade_end``): its own engine."""


def engine(start: np.ndarray, consts: np.ndarray, k: int, normalized: bool, lam: np.ndarray | None = None,
           t_deployed: int = 0) -> tuple[ReducedGD, Any]:
    """The record and compiled entry point of ``R`` runs with the given start and constants (``out`` allocated);
    ``lam``: the shortcut weights of the fading shortcut (normalized model only; ``fade_end`` allocated)."""
    if lam is not None:
        fade_end = np.full((start.shape[0], 2), np.nan)
        return FadingReducedGD(start, np.empty_like(start), consts, int(k), True, np.asarray(lam, dtype=np.float64),
                               int(t_deployed), fade_end), run_range_fading
    cls, entry = (ReducedGD, run_range) if normalized else (UnnormalizedReducedGD, run_range_unnormalized)
    return cls(start, np.empty_like(start), consts, int(k), bool(normalized), np.empty(0), 0, np.empty((0, 2))), entry


def workspace(eng: ReducedGD, p: int, k: int) -> tuple[Any, ...]:
    """One thread's lanes: the coordinates (rows 0-5) and constants (rows 6-13) of the runs it advances side by
    side, row ``f`` of lane ``i`` at ``f * LANES + i`` (one flat array, see :class:`sims.engines.lockstep.Lanes`),
    and the driver's bookkeeping (:func:`sims.engines.lockstep.lanes`)."""
    return unshared_empty(14 * LANES), lockstep.lanes()


@njit(inline="always")
def _teacher(eng, prob, tr):
    return 1.0, eng.consts[tr, 3], eng.consts[tr, 4], eng.k


@njit(inline="always")
def _load(eng, E, prob, i, r, tr, tv):
    for f in range(6):
        E[f * LANES + i] = eng.start[r, f]
    for f in range(8):
        E[(6 + f) * LANES + i] = eng.consts[r, f]


@njit(inline="always")
def _state(eng, E, i):
    return ((E[i], E[LANES + i], E[2 * LANES + i], E[3 * LANES + i], E[4 * LANES + i], E[5 * LANES + i]),
            (E[6 * LANES + i], E[7 * LANES + i], E[8 * LANES + i], E[9 * LANES + i], E[10 * LANES + i],
             E[11 * LANES + i], E[12 * LANES + i], E[13 * LANES + i]))


@njit(inline="always")
def _commit(eng, E, i, old, new, keep):
    a = old[0]
    b = new[0]
    E[i] = b[0] if keep else a[0]
    E[LANES + i] = b[1] if keep else a[1]
    E[2 * LANES + i] = b[2] if keep else a[2]
    E[3 * LANES + i] = b[3] if keep else a[3]
    E[4 * LANES + i] = b[4] if keep else a[4]
    E[5 * LANES + i] = b[5] if keep else a[5]


@njit(inline="always")
def _move(eng, E, src, dst):
    for f in range(14):
        E[f * LANES + dst] = E[f * LANES + src]


@njit(inline="always")
def _park(eng, E, i):
    for f in range(14):
        E[f * LANES + i] = 0.0
    E[i] = 1.0  # u = 1, r = 1/2: an angle, a norm
    E[LANES + i] = 0.5
    E[6 * LANES + i] = 1.0  # a0.a0 = ||a*||^2 = 1
    E[10 * LANES + i] = 1.0


@njit(inline="always")
def _angle(u, r1, r2, planar):
    """``(1/n, phi, cos, sin, 1 - cos)`` of ``w~ = u w* + r1 e1 + r2 e2`` with one division: ``d = 1 / (n (n +
    |u|))`` gives ``1/n = (n + |u|) d`` and, for ``u > 0``, ``1 - cos = r^2 d`` (no cancellation at small angles;
    for ``u <= 0``, ``1 - cos = 1 + |u|/n`` has none).  Without branches (the lanes vectorize).  ``planar`` (a
    compile-time constant): ``r2 = 0`` (a shortcut that does not move keeps ``w~`` in ``span{w~_0, w*}``), and the
    terms in ``r2`` are not computed."""
    rr = r1 * r1 if planar else r1 * r1 + r2 * r2
    n = math.sqrt(u * u + rr)
    r = math.sqrt(rr)
    m = n + abs(u)
    d = 1.0 / (n * m)
    inv_n = m * d
    c = u * inv_n
    omc = rr * d if u > 0.0 else 1.0 - c
    return inv_n, atan2_select(r, u), c, r * inv_n, omc


@njit(inline="always")
def _traj_point(eng, ews, carry, L, phi, P):
    (u, r1, r2, x, y, z), (Q0, S0, P0, Ss, Qs, vu, v1, v2) = carry
    return L, phi, P, math.sqrt(max(_gram(x, y, z, Q0, S0, P0, eng.k, Ss, Qs)[2], 0.0))


def _make_hooks(normalized: bool, moving: bool = False) -> dict:
    """``observe``, ``gates`` and ``step`` of the weight-normalized models (``rho = 1``) or of the unnormalized
    CNN (``rho = ||w||``); ``moving``: the shortcut's weight follows ``eng.lam`` (the fading shortcut, deployed
    from ``eng.t_deployed`` on).  Both are constants of the closures: each variant compiles only its own
    arithmetic (with ``rho = 1`` the compiler drops the terms in ``rho - 1``, and the lanes run faster)."""

    @njit(inline="always")
    def observe(eng, ews, carry, tv):
        (u, r1, r2, x, y, z), (Q0, S0, P0, Ss, Qs, vu, v1, v2) = carry
        k = tv[3]
        inv_n, phi, c, s, omc = _angle(u, r1, r2, not moving)
        rho = 1.0 if normalized else 1.0 / inv_n
        Da_s, Da_p, Da_q = _gram(x, y, z, Q0, S0, P0, k, Ss, Qs)
        Ds, Dp, Dq = (Da_s, Da_p, Da_q) if normalized else _scaled(rho, Da_s, Da_p, Da_q, Ss, Qs)
        L = _loss(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
        L_rho, L_c, L_S, L_Q, L_Pa = _gradient(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
        gx = 2.0 * L_Q * x
        gy = 2.0 * L_Q * y + L_S
        gz = 2.0 * L_Q * z + L_Pa
        ga2 = max(_gram(gx, gy, gz, Q0, S0, P0, k, Ss, Qs)[2], 0.0)
        gw = L_c * s * inv_n
        gw2 = gw * gw + (0.0 if normalized else L_rho * L_rho)
        return L, phi, c, s, Qs + Da_p, gw2 + ga2, ga2, (inv_n, L_rho, L_c, gx, gy, gz)

    @njit(inline="always")
    def gates(eng, ews, carry, t):
        deployed = (t >= eng.t_deployed) if moving else True
        return True, deployed, True, True, normalized  # the trapped bound holds for the normalized models

    @njit(inline="always")
    def step(eng, ews, carry, aux, tv, ew, ea, sw, sa, t):
        """One GD step on the coordinates, without branches: ``ok`` is False where it would leave them
        non-finite or above :data:`BIG` (the state is then kept)."""
        (u, r1, r2, x, y, z), consts = carry
        inv_n, L_rho, L_c, gx, gy, gz = aux
        alpha = 1.0 + ew * (L_c * (u * inv_n) * (inv_n * inv_n))
        if not normalized:
            alpha -= ew * L_rho * inv_n
        beta = -ew * L_c * inv_n
        un = alpha * u + beta
        r1n = alpha * r1
        r2n = alpha * r2 if moving else 0.0
        if moving:  # w~ moves by (lambda_{t+1} - lambda_t) v
            nl = eng.lam.shape[0]
            hi = nl - 1  # indices clamped to the table, so that a vectorized gather never reads outside it
            dl = ((eng.lam[max(min(t + 1, hi), 0)] if t + 1 < nl else 0.0)
                  - (eng.lam[max(min(t, hi), 0)] if t < nl else 0.0))
            un += dl * consts[5]
            r1n += dl * consts[6]
            r2n += dl * consts[7]
        xn = x - ea * gx
        yn = y - ea * gy
        zn = z - ea * gz
        ok = ((abs(un) < BIG) & (abs(r1n) < BIG) & (abs(r2n) < BIG) & (abs(xn) < BIG) & (abs(yn) < BIG)
              & (abs(zn) < BIG) & ((un != 0.0) | (r1n != 0.0) | (r2n != 0.0)))
        return ((un, r1n, r2n, xn, yn, zn), consts), ok

    return dict(observe=observe, gates=gates, step=step)


@njit(inline="always")
def _next_event_fading(eng, t):
    return eng.t_deployed if t <= eng.t_deployed else _NEVER


@njit(inline="always")
def _finish(eng, ews, prob, r, rec, carry):
    state = carry[0]
    for f in range(6):
        eng.out[r, f] = state[f]


_HOOKS = dict(teacher=_teacher, load=_load, state=_state, commit=_commit, move=_move, park=_park,
              traj_point=_traj_point, finish=_finish)
_OPTIONS = dict(error_model="numpy", _nrt=False)
#: The compiled entry points: population GD on the order parameters in lockstep, for the weight-normalized models
#: (a :class:`ReducedGD` record) and for the unnormalized CNN (:class:`UnnormalizedReducedGD`).
run_range = lockstep.register(ReducedGD, options=_OPTIONS, **_make_hooks(True), **_HOOKS)
run_range_unnormalized = lockstep.register(UnnormalizedReducedGD, options=_OPTIONS, **_make_hooks(False), **_HOOKS)
#: ... and with the fading shortcut (a :class:`FadingReducedGD` record; the ResNet, weight-normalized).
run_range_fading = lockstep.register(FadingReducedGD, options=_OPTIONS, **_make_hooks(True, moving=True),
                                     note=_note_fading, next_event=_next_event_fading, **_HOOKS)
