"""Population gradient descent with the closed-form gradients: the engine of ``simulate(algorithm="gd")``.

State: the effective filter ``w~`` (``w + v`` for the ResNet) and ``a``, each run in one workspace block
(:func:`sims.engines.common.run_workspace`), and the invariants ``||w~||^2, w~.w*, 1.a, a.a, a.a*`` carried as
scalars.  One step is ``w~ <- alpha w~ + beta w*``, ``a <- ca a + cp a* + c1`` (plus noise, if the schedule has
any), fused with the pass that accumulates the next invariants.

Speed.  Per step the scalar part (norm, angle, loss, partials) is one chain of dependent operations between two
fused passes, so for short vectors its latency sets the pace: the angle is taken as
``atan2(sqrt(||w*||^2 ||w~||^2 - (w~.w*)^2), w~.w*)`` (no division or norm before the square root) by an inlined
arctangent with a single division (:func:`sims.engines.common.atan2_upper`), ``1/||w~||`` is computed once, and
the gradient-norm test compares squares.

Divergence.  The step is linear in the state with scalar coefficients, so the next invariants are known before the
vectors are touched: a step whose ``||w~||^2`` or ``||a||^2`` would exceed ``1e300`` (or is not finite) is not
taken, and the run stops ``diverged`` at its last finite state (see :mod:`sims.engines.driver`).  The closed form
is evaluated only when a coefficient or a norm is large (a few comparisons otherwise).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from sims.engines import closed_forms as cf
from sims.engines import driver
from sims.engines.common import (
    atan2_upper,
    distance,
    exact_near_stationarity,
    grad_a_sq,
    invariants,
    load_run,
    run_block,
    run_views,
    store_run,
    unshared_empty,
)
from sims.engines.rng import normal_pair_call

#: Largest squared norm a step may produce: far from overflow, so every entry and the loss stay finite.
BIG = 1e300


class PopulationGD(NamedTuple):
    """Population GD on the rows of ``WT, A`` (updated in place).

    A shortcut that carries a weight: ``w~ = w + lambda_t v`` with ``lambda = lam[t]`` (``lam`` empty: the weight
    never changes).  A change of ``lambda`` moves ``w~`` by ``(lambda_{t+1} - lambda_t) v`` in the step, so the
    fading shortcut of residual distillation is this engine with ``lam`` decaying to 0; the network is the
    deployed one (and the loss and gradient stops, the steps to tolerance, the rate and the trapped test apply)
    from ``t_deployed`` on, where ``lambda`` has reached 0.  ``fade_end`` receives the loss and angle there.
    """

    WT: np.ndarray  # (R, p) effective filters w~
    A: np.ndarray  # (R, k) second layers
    normalized: bool  # weight-normalized (rho = 1) or not (rho = ||w||)
    lam: np.ndarray  # (T + 1,) shortcut weights; empty: constant
    V: np.ndarray  # (p,) shortcut direction (used with lam)
    t_deployed: int  # first step of the deployed network (0 without lam)
    fade_end: np.ndarray  # (R, 2) out: loss and phi at t_deployed (shape (0, 2) without lam)


class FadingGD(PopulationGD):
    """Population GD with a shortcut whose weight follows ``lam`` (the fading shortcut of residual distillation):
    the same record, its own compiled engine (:data:`run_range_fading`), so plain GD carries none of its code."""


def plain(WT: np.ndarray, A: np.ndarray, normalized: bool) -> PopulationGD:
    """The engine record of plain population GD (no moving shortcut)."""
    return PopulationGD(WT, A, bool(normalized), np.empty(0), np.zeros(WT.shape[1]), 0, np.empty((0, 2)))


def workspace(eng: PopulationGD, p: int, k: int) -> tuple[np.ndarray, ...]:
    """Work vectors of one thread: ``(w~, w*, a, a*)`` at fixed offsets in one block (see
    :func:`sims.engines.common.run_workspace`) and the run's random stream (copied in and out)."""
    if eng.lam.shape[0] == 0:
        return run_block(p, k), unshared_empty(4, dtype=np.uint64)
    block = unshared_empty(3 * p + 2 * k)  # with a moving shortcut, v too: its loop then reads and writes one block
    block[2 * p + 2 * k:] = eng.V
    return block, unshared_empty(4, dtype=np.uint64)


@njit(inline="always")
def _views(eng, wsp):
    """The work vectors ``(w~, w*, a, a*)`` carved out of the thread's block, and its random stream: made once per
    call of the entry point (every hook below gets them), not in every hook (carving them costs compile time)."""
    w, ws, a, ast = run_views(wsp[0], eng.WT.shape[1], eng.A.shape[1])
    return w, ws, a, ast, wsp[1]


@njit(inline="always")
def _views_fading(eng, wsp):
    """:func:`_views` and the shortcut ``v``, at the end of the block (:func:`workspace`)."""
    p = eng.WT.shape[1]
    k = eng.A.shape[1]
    return _views(eng, wsp) + (wsp[0][2 * p + 2 * k:3 * p + 2 * k],)


@njit(inline="always")
def _begin(eng, wsp, prob, r, tr, tv):
    w, ws, a, ast, st = wsp[0], wsp[1], wsp[2], wsp[3], wsp[4]
    load_run(w, ws, a, ast, eng.WT, prob.WS, eng.A, prob.AS, r, tr)
    for f in range(4):
        st[f] = prob.states[r, f]
    ww, wws, S, Q, P = invariants(w, ws, a, ast)
    return ww, wws, S, Q, P, 1.0 / math.sqrt(tv[0])


@njit(inline="always")
def _observe(eng, wsp, carry, tv):
    a, ast = wsp[2], wsp[3]
    ww, wws, S, Q, P, inv_nws = carry
    ws2, Ss, Qs, k = tv
    # phi = atan2(||w*|| ||w~|| sin phi, w~.w*): neither ||w~|| nor a division comes before the arctangent.
    n = math.sqrt(ww)
    inv_n = 1.0 / n
    num = ws2 * ww - wws * wws
    if num > 0.0:
        sn = math.sqrt(num)
        c = wws * (inv_n * inv_nws)
        s = sn * (inv_n * inv_nws)
    else:
        sn = 0.0
        c = 1.0 if wws >= 0.0 else -1.0
        s = 0.0
    phi = atan2_upper(sn, wws)
    rho = 1.0 if eng.normalized else n
    L = cf.loss(rho, phi, c, s, S, Q, P, Ss, Qs)
    L_rho, L_c, L_S, L_Q, L_P = cf.gradient(rho, phi, c, s, S, Q, P, Ss, Qs)
    gw2 = (L_c * s * inv_n) * (L_c * s * inv_n)
    if not eng.normalized:
        gw2 += L_rho * L_rho
    ga2 = exact_near_stationarity(grad_a_sq(L_S, L_Q, L_P, k, S, Q, P, Ss, Qs), L_S, L_Q, L_P, k, Q, Qs, a, ast)
    g2 = max(gw2 + ga2, 0.0)
    return L, phi, c, s, P, g2, ga2, (inv_n, L_rho, L_c, L_S, L_Q, L_P)


@njit(inline="always")
def _gates(eng, wsp, carry, t):
    return True, True, True, True, eng.normalized  # the trapped bound holds for the normalized models


@njit(inline="always")
def _gates_fading(eng, wsp, carry, t):
    deployed = t >= eng.t_deployed  # the deployed network (lambda = 0) from t_deployed on
    return True, deployed, True, True, eng.normalized


@njit(inline="always")
def _note_fading(eng, wsp, carry, r, t, L, phi, P, finite):
    if t == eng.t_deployed:
        eng.fade_end[r, 0] = L
        eng.fade_end[r, 1] = phi


@njit(inline="always")
def _traj_point(eng, wsp, carry, L, phi, P):
    return L, phi, P, distance(wsp[2], wsp[3])


def _make_step(moving: bool):
    """The GD step; ``moving``: the shortcut's weight follows ``eng.lam`` (the fading shortcut).  A constant of the
    closure, so numba drops the moving shortcut's code from plain GD at compile time (its first call compiles in
    less time, and fading runs compile their own engine only when used)."""

    @njit(inline="always")
    def step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t):
        w, ws, a, ast, st = wsp[0], wsp[1], wsp[2], wsp[3], wsp[4]
        ww, wws, S, Q, P, inv_nws = carry
        inv_n, L_rho, L_c, L_S, L_Q, L_P = aux
        ws2, Ss, Qs, k = tv
        p = w.shape[0]
        # w~ <- alpha w~ + beta w*, a <- ca a + cp a* + c1, fused with the next invariants.
        alpha = 1.0 + ew * (L_c * (wws * inv_n) * (inv_n * inv_n))
        if not eng.normalized:
            alpha -= ew * L_rho * inv_n
        beta = -ew * L_c * inv_n
        ca = 1.0 - 2.0 * ea * L_Q
        cp = -ea * L_P
        c1 = -ea * L_S
        dl = 0.0
        if moving:
            nl = eng.lam.shape[0]
            dl = (eng.lam[t + 1] if t + 1 < nl else 0.0) - (eng.lam[t] if t < nl else 0.0)
        # Refuse a step that would overflow.  With coefficients below 1e10 and norms below 1e200 the next norms stay
        # below 1e300 (no check needed); otherwise the next ||w~||^2 and ||a||^2 are taken in closed form.
        if not (abs(alpha) < 1e10 and abs(beta) < 1e10 and abs(ca) < 1e10 and abs(cp) < 1e10 and abs(c1) < 1e10
                and ww < 1e200 and Q < 1e200 and Qs + k < 1e200):
            ww_next = alpha * alpha * ww + 2.0 * alpha * beta * wws + beta * beta * ws2
            if dl != 0.0:  # with the shortcut's move, a bound: (|alpha| ||w~|| + |beta| ||w*|| + |dl| ||v||)^2
                ww_next = (abs(alpha) * math.sqrt(ww) + abs(beta) * math.sqrt(ws2) + abs(dl)) ** 2
            Q_next = (ca * ca * Q + cp * cp * Qs + k * c1 * c1 + 2.0 * ca * cp * P + 2.0 * ca * c1 * S
                      + 2.0 * cp * c1 * Ss)
            if not (ww_next < BIG and Q_next < BIG):
                return carry, False
        z0 = 0.0
        z1 = 0.0
        ww = 0.0
        wws = 0.0
        S = 0.0
        Q = 0.0
        P = 0.0
        if moving:
            ww, wws = _filter_step_moving(w, ws, wsp[5], alpha, beta, dl, sw, sw > 0.0 or sa > 0.0, st)
        elif sw > 0.0 or sa > 0.0:
            for i in range(p):
                if i % 2 == 0:
                    z0, z1 = normal_pair_call(st)
                x = alpha * w[i] + beta * ws[i] + sw * (z0 if i % 2 == 0 else z1)
                w[i] = x
                ww += x * x
                wws += x * ws[i]
        else:
            for i in range(p):
                x = alpha * w[i] + beta * ws[i]
                w[i] = x
                ww += x * x
                wws += x * ws[i]
        if sw > 0.0 or sa > 0.0:
            for j in range(k):
                if j % 2 == 0:
                    z0, z1 = normal_pair_call(st)
                y = ca * a[j] + cp * ast[j] + c1 + sa * (z0 if j % 2 == 0 else z1)
                a[j] = y
                S += y
                Q += y * y
                P += y * ast[j]
        else:
            for j in range(k):
                y = ca * a[j] + cp * ast[j] + c1
                a[j] = y
                S += y
                Q += y * y
                P += y * ast[j]
        return (ww, wws, S, Q, P, inv_nws), True

    return step


@njit(inline="always")
def _filter_step_moving(w, ws, V, alpha, beta, dl, sw, noisy, st):
    """The filter step with a moving shortcut: ``w~ <- alpha w~ + beta w* + dl v`` (plus noise)."""
    ww = 0.0
    wws = 0.0
    z0 = 0.0
    z1 = 0.0
    if noisy:
        for i in range(w.shape[0]):
            if i % 2 == 0:
                z0, z1 = normal_pair_call(st)
            x = alpha * w[i] + beta * ws[i] + dl * V[i] + sw * (z0 if i % 2 == 0 else z1)
            w[i] = x
            ww += x * x
            wws += x * ws[i]
    else:
        for i in range(w.shape[0]):
            x = alpha * w[i] + beta * ws[i] + dl * V[i]
            w[i] = x
            ww += x * x
            wws += x * ws[i]
    return ww, wws


@njit(inline="always")
def _finish(eng, wsp, prob, r, rec, carry):
    st = wsp[4]
    store_run(wsp[0], wsp[2], eng.WT, eng.A, r)
    for f in range(4):
        prob.states[r, f] = st[f]


_HOOKS = dict(begin=_begin, observe=_observe, traj_point=_traj_point, finish=_finish)
#: The compiled entry points (see :func:`sims.engines.driver.run_batch`): plain population GD, and population GD
#: with the fading shortcut (a :class:`FadingGD` record).
run_range = driver.register(PopulationGD, options=dict(error_model="numpy", _nrt=False), step=_make_step(False),
                            views=_views, gates=_gates, **_HOOKS)
run_range_fading = driver.register(FadingGD, options=dict(error_model="numpy", _nrt=False), step=_make_step(True),
                                   views=_views_fading, gates=_gates_fading, note=_note_fading, **_HOOKS)
