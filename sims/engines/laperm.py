"""Train-by-reconnect (LaPerm): an inner optimizer (population GD or Adam) on a copy of the weights, synchronized
every ``K`` steps to the permutation of the initial values that has the copy's ranks (see :mod:`sims.methods.laperm` for
the method and what a permutation can reach).

State: ``w`` and ``a`` in one workspace block, the last synchronized weights, Adam's moments, the invariants and the
synchronization counts.  The step is the inner optimizer's, followed by the synchronization when the next step is a
multiple of ``K`` or the end of the budget.  The network a run reports is the synchronized one: between
synchronizations the gates say the state is not a network (``net`` false), so only divergence can stop the run, and
the trajectory repeats the last synchronized network.  Extra stop ``sync_fixed``: with the GD inner optimizer in
its last schedule segment, a synchronization that returns exactly the previous synchronized weights means every
later period repeats it.

Compiled with numba's reference counting on (unlike the other engines), because the synchronization sorts with
``np.argsort``, which allocates; a step whose result is not finite is undone (a copy of ``(w, a)``), and the run
stops ``diverged`` at its last finite state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from sims.engines import driver
from sims.engines.common import (
    angle_from,
    copy_into,
    distance,
    exact_near_stationarity,
    invariants,
    load_run,
    population_terms,
    run_block,
    run_views,
    store_run,
    unshared_empty,
)

INNER_GD, INNER_ADAM = 0, 1


class Reconnect(NamedTuple):
    """LaPerm on the rows of ``W, A`` (updated in place: the synchronized weights at the stop)."""

    W: np.ndarray  # (R, p) filters
    A: np.ndarray  # (R, k) second layers
    WV: np.ndarray  # (R, p) sorted initial values of w
    AV: np.ndarray  # (R, k) sorted initial values of a
    K: int  # synchronization period >= 1, or 0: never synchronize (the plain inner optimizer)
    perm_w: bool  # synchronize w (else w trains freely)
    perm_a: bool  # synchronize a
    inner: int  # INNER_GD or INNER_ADAM
    b1: float  # Adam's beta1, beta2, eps
    b2: float
    eps: float
    max_steps: int  # the budget: a synchronization also happens at its end
    sync_info: np.ndarray  # (R, 3) int64 out: synchronizations, those that changed the weights, step of last change


def workspace(eng: Reconnect, p: int, k: int) -> tuple[np.ndarray, ...]:
    """``(w, w*, a, a*)`` in one block, the last synchronized ``(w, a)``, Adam's moments, the undo copy, and the
    last synchronized network's ``(loss, phi, a.a*, ||a - a*||)``."""
    vec = unshared_empty(4 * p + 4 * k)
    ps = tuple(vec[i * p:(i + 1) * p] for i in range(4))  # pw, mw, vw, w_prev
    ks = tuple(vec[4 * p + j * k:4 * p + (j + 1) * k] for j in range(4))  # pa, ma, va, a_prev
    return (run_block(p, k),) + ps + ks + (unshared_empty(4),)


@njit(inline="always")
def _views(eng, wsp):
    """``(w, w*, a, a*, pw, mw, vw, w_prev, pa, ma, va, a_prev, net)`` of the work space."""
    w, ws, a, ast = run_views(wsp[0], eng.W.shape[1], eng.A.shape[1])
    return (w, ws, a, ast) + wsp[1:]


@njit(inline="always")
def _sync(x, sorted_vals, prev, permute):
    """Put the ``i``-th smallest of ``sorted_vals`` where ``x`` has its ``i``-th smallest entry (in place, if
    ``permute``); copy the result into ``prev`` and return whether it differs from what ``prev`` held."""
    if permute:
        order = np.argsort(x, kind="mergesort")
        for i in range(x.shape[0]):
            x[order[i]] = sorted_vals[i]
    changed = False
    for i in range(x.shape[0]):
        if x[i] != prev[i]:
            changed = True
            prev[i] = x[i]
    return changed


@njit(inline="always")
def _begin(eng, wsp, prob, r, tr, tv):
    w, ws, a, ast, pw, mw, vw, w_prev, pa, ma, va, a_prev, net = _views(eng, wsp)
    load_run(w, ws, a, ast, eng.W, prob.WS, eng.A, prob.AS, r, tr)
    for i in range(w.shape[0]):
        pw[i] = w[i]
        mw[i] = 0.0
        vw[i] = 0.0
    for j in range(a.shape[0]):
        pa[j] = a[j]
        ma[j] = 0.0
        va[j] = 0.0
    for f in range(4):
        net[f] = 0.0
    sr = r if prob.seg_end.shape[0] > 1 else np.int64(0)
    nseg = prob.seg_end.shape[1]
    last_start = prob.seg_end[sr, nseg - 2] if nseg > 1 else np.int64(0)
    ww, wws, S, Q, P = invariants(w, ws, a, ast)
    # r, last_start, synced, changed, n_sync, n_change, last_change, adam_t, b1t, b2t, and the invariants
    return r, last_start, eng.K > 0, True, 0, 0, 0, 0, 1.0, 1.0, ww, wws, S, Q, P


@njit(inline="always")
def _observe(eng, wsp, carry, tv):
    w, ws, a, ast = run_views(wsp[0], eng.W.shape[1], eng.A.shape[1])
    ww, wws, S, Q, P = carry[10], carry[11], carry[12], carry[13], carry[14]
    ws2, Ss, Qs, k = tv
    n = math.sqrt(ww)
    phi, c, s = angle_from(n, wws, ws2)
    L, L_rho, L_c, L_S, L_Q, L_P, gw2, ga2 = population_terms(n, phi, c, s, S, Q, P, tv, True)
    ga2 = exact_near_stationarity(ga2, L_S, L_Q, L_P, k, Q, Qs, a, ast)
    return L, phi, c, s, P, max(gw2 + ga2, 0.0), ga2, (n, L_c, L_S, L_Q, L_P)


@njit(inline="always")
def _gates(eng, wsp, carry, t):
    plain = eng.K == 0
    return plain or carry[2], True, plain, plain, plain


@njit(inline="always")
def _note(eng, wsp, carry, r, t, L, phi, P, finite):
    if eng.K == 0 or carry[2]:  # a network: remember it for the trajectory
        w, ws, a, ast = run_views(wsp[0], eng.W.shape[1], eng.A.shape[1])
        net = wsp[9]
        net[0] = L
        net[1] = phi
        net[2] = P
        net[3] = distance(a, ast)


@njit(inline="always")
def _traj_point(eng, wsp, carry, L, phi, P):
    net = wsp[9]
    return net[0], net[1], net[2], net[3]


@njit(inline="always")
def _extra_stop(eng, wsp, carry, aux, t, seg, max_steps, tol):
    last_start, synced, changed = carry[1], carry[2], carry[3]
    if (eng.K > 0 and synced and t < max_steps and t > 0 and not changed and eng.inner == INNER_GD
            and last_start <= t - eng.K):
        return driver.STOP_SYNC_FIXED
    return -1


@njit(inline="always")
def _inner_step(eng, wsp, carry, aux, ew, ea):
    """One step of the inner optimizer; returns the new invariants and Adam's counters."""
    w, ws, a, ast, pw, mw, vw, w_prev, pa, ma, va, a_prev, net = _views(eng, wsp)
    adam_t, b1t, b2t, ww, wws = carry[7], carry[8], carry[9], carry[10], carry[11]
    n, L_c, L_S, L_Q, L_P = aux
    c_raw = wws / n
    ww = 0.0
    wws = 0.0
    S = 0.0
    Q = 0.0
    P = 0.0
    if eng.inner == INNER_GD:
        # GD, fused with the next invariants (normalized CNN).
        alpha = 1.0 + ew * (L_c * c_raw / (n * n))
        beta = -ew * L_c / n
        ca = 1.0 - 2.0 * ea * L_Q
        cp = -ea * L_P
        c1 = -ea * L_S
        for i in range(w.shape[0]):
            x = alpha * w[i] + beta * ws[i]
            w[i] = x
            ww += x * x
            wws += x * ws[i]
        for j in range(a.shape[0]):
            y = ca * a[j] + cp * ast[j] + c1
            a[j] = y
            S += y
            Q += y * y
            P += y * ast[j]
        return adam_t, b1t, b2t, ww, wws, S, Q, P
    adam_t += 1
    b1t *= eng.b1
    b2t *= eng.b2
    bc1 = 1.0 - b1t
    bc2 = 1.0 - b2t
    gc = L_c / n
    cu = c_raw / n  # grad_w = (L_c / n) (w* - (w.w* / n^2) w)
    # Update, then sum in separate loops: the moments live outside the workspace block, and a loop that stores
    # to them and sums would be vectorized behind a heap-layout-dependent alias check.
    for i in range(w.shape[0]):
        g = gc * (ws[i] - cu * w[i])
        mw[i] = eng.b1 * mw[i] + (1.0 - eng.b1) * g
        vw[i] = eng.b2 * vw[i] + (1.0 - eng.b2) * g * g
        w[i] = w[i] - ew * (mw[i] / bc1) / (math.sqrt(vw[i] / bc2) + eng.eps)
    for i in range(w.shape[0]):
        ww += w[i] * w[i]
        wws += w[i] * ws[i]
    for j in range(a.shape[0]):
        g = L_S + 2.0 * L_Q * a[j] + L_P * ast[j]
        ma[j] = eng.b1 * ma[j] + (1.0 - eng.b1) * g
        va[j] = eng.b2 * va[j] + (1.0 - eng.b2) * g * g
        a[j] = a[j] - ea * (ma[j] / bc1) / (math.sqrt(va[j] / bc2) + eng.eps)
    for j in range(a.shape[0]):
        y = a[j]
        S += y
        Q += y * y
        P += y * ast[j]
    return adam_t, b1t, b2t, ww, wws, S, Q, P


@njit(inline="always")
def _step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t):
    w, ws, a, ast, pw, mw, vw, w_prev, pa, ma, va, a_prev, net = _views(eng, wsp)
    r, last_start, synced, changed, n_sync, n_change, last_change, adam_t, b1t, b2t = carry[:10]
    copy_into(w_prev, w)
    copy_into(a_prev, a)
    adam_t, b1t, b2t, ww, wws, S, Q, P = _inner_step(eng, wsp, carry, aux, ew, ea)
    if not (math.isfinite(ww) and math.isfinite(wws) and math.isfinite(S) and math.isfinite(Q)
            and math.isfinite(P)):
        copy_into(w, w_prev)  # undo: the run stops at its last finite state
        copy_into(a, a_prev)
        return carry, False
    t += 1
    synced = False
    changed = True
    if eng.K > 0 and (t % eng.K == 0 or t >= eng.max_steps):
        cw = _sync(w, eng.WV[r], pw, eng.perm_w)
        cA = _sync(a, eng.AV[r], pa, eng.perm_a)
        changed = cw or cA  # the whole state repeats: a fixed point of the LaPerm map (GD inner)
        n_sync += 1
        if (eng.perm_w and cw) or (eng.perm_a and cA):  # the permutation changed
            n_change += 1
            last_change = t
        ww, wws, S, Q, P = invariants(w, ws, a, ast)
        synced = True
    return (r, last_start, synced, changed, n_sync, n_change, last_change, adam_t, b1t, b2t, ww, wws, S, Q, P), True


@njit(inline="always")
def _finish(eng, wsp, prob, r, rec, carry):
    w, ws, a, ast = run_views(wsp[0], eng.W.shape[1], eng.A.shape[1])
    store_run(w, a, eng.W, eng.A, r)
    eng.sync_info[r, 0] = carry[4]
    eng.sync_info[r, 1] = carry[5]
    eng.sync_info[r, 2] = carry[6]


#: The compiled entry point (see :func:`sims.engines.driver.run_batch`).
run_range = driver.register(Reconnect, begin=_begin, observe=_observe, gates=_gates, note=_note,
                            traj_point=_traj_point, extra_stop=_extra_stop, step=_step, finish=_finish)
