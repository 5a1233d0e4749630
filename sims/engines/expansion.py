"""Deep linear expansions: GD or online SGD on the factors of ``w`` and/or ``a`` (ExpandNets), through the exact
chain rule of the contraction (:mod:`sims.engines.expansion_kernels` has the chains and the storage layout).

State: the run's factors ``F[r]`` (in place), the contracted ``w~`` and ``a`` (in the rows of ``WT, A``), the
backward chains ``u`` of each expanded group, the invariants as scalars, and the run's random stream.  The
population gradient (or the minibatch gradient, for SGD) of the contracted weights starts the forward chain;
``W_j <- W_j - eta u_j z_j^T``.  Extra stop ``stuck``: the factors' gradient vanishes while the contracted one
does not (a stationary point made by the factorization, e.g. all factors zero).  The step keeps a copy of the
factors: a step whose result is not finite is undone and the run stops ``diverged`` at its last finite state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from sims.engines import driver
from sims.engines import expansion_kernels as ek
from sims.engines.common import angle_from, copy_into, distance, invariants, population_terms, unshared_empty
from sims.engines.rng import normal_pair

MODE_GD, MODE_SGD = ek.MODE_GD, ek.MODE_SGD


class Expanded(NamedTuple):
    """Training of the factors ``F`` (updated in place); ``WT, A`` receive the contracted weights."""

    mode: int  # MODE_GD (population gradient) or MODE_SGD (fresh minibatch each step)
    batch_size: int
    F: np.ndarray  # (R, size) factors
    w_off: np.ndarray  # the w group (empty: w is a plain layer); see sims.engines.expansion_kernels
    w_dim: np.ndarray
    w_uoff: np.ndarray
    a_off: np.ndarray  # the a group
    a_dim: np.ndarray
    a_uoff: np.ndarray
    WT: np.ndarray  # (R, p) effective filter w~ = v + w
    A: np.ndarray  # (R, k)
    V: np.ndarray  # (p,) shortcut (zeros for the CNNs)
    normalized: bool
    trap_factor: float  # >= 1: sqrt(cond M) when a is expanded (the bound on ||a - a(phi)|| loosens)
    wrec: np.ndarray  # (R, m, p + k) out: contracted (w, a) at the record steps (m = 0: not recorded)
    fgrad: np.ndarray  # (R,) out: norm of the gradient with respect to all trained parameters at the stop


def workspace(eng: Expanded, p: int, k: int) -> tuple[np.ndarray, ...]:
    """One thread's chains, contracted gradients, SGD buffers and the undo copy of the factors."""
    nu_w = int(eng.w_uoff[-1] + eng.w_dim[-1]) if eng.w_off.shape[0] else 0
    nu_a = int(eng.a_uoff[-1] + eng.a_dim[-1]) if eng.a_off.shape[0] else 0
    sizes = (nu_w, nu_w, nu_w, nu_a, nu_a, nu_a, p, k, k * p if eng.mode == MODE_SGD else 0, k, eng.F.shape[1], p, k)
    return tuple(unshared_empty(n) for n in sizes)


@njit(inline="always")
def _begin(eng, wsp, prob, r, tr, tv):
    uw, unw, zw, ua, una, za, gw, ga, zb, hb, F_prev, w_prev, a_prev = wsp
    Fr = eng.F[r]
    w = eng.WT[r]
    a = eng.A[r]
    ws = prob.WS[tr]
    ast = prob.AS[tr]
    if eng.w_off.shape[0] > 0:
        ek.chain_backward(Fr, eng.w_off, eng.w_dim, eng.w_uoff, uw)
        for i in range(w.shape[0]):
            w[i] = eng.V[i] + uw[eng.w_uoff[0] + i]
    if eng.a_off.shape[0] > 0:
        ek.chain_backward(Fr, eng.a_off, eng.a_dim, eng.a_uoff, ua)
        for j in range(a.shape[0]):
            a[j] = ua[eng.a_uoff[0] + j]
    ww, wws, S, Q, P = invariants(w, ws, a, ast)
    return r, Fr, w, a, ws, ast, uw, unw, ua, una, prob.states[r], ww, wws, S, Q, P


@njit(inline="always")
def _observe(eng, wsp, carry, tv):
    r, Fr, w, a, ws, ast, uw, unw, ua, una, st, ww, wws, S, Q, P = carry
    zw, za, gw, ga = wsp[2], wsp[5], wsp[6], wsp[7]
    ws2, Ss, Qs, k = tv
    n = math.sqrt(ww)
    phi, c, s = angle_from(n, wws, ws2)
    L, L_rho, L_c, L_S, L_Q, L_P, gw2, ga2 = population_terms(n, phi, c, s, S, Q, P, tv, eng.normalized)
    # contracted gradients: grad_w~ = cw w~ + cs w*, grad_a = L_S 1 + 2 L_Q a + L_P a*
    cw = -L_c * (wws / n) / (n * n)
    if not eng.normalized:
        cw += L_rho / n
    cs = L_c / n
    for i in range(w.shape[0]):
        gw[i] = cw * w[i] + cs * ws[i]
    for j in range(a.shape[0]):
        ga[j] = L_S + 2.0 * L_Q * a[j] + L_P * ast[j]
    fg2 = 0.0
    if eng.w_off.shape[0] > 0:
        fg2 += ek.chain_forward(Fr, eng.w_off, eng.w_dim, eng.w_uoff, gw, uw, zw)
    else:
        fg2 += gw2
    if eng.a_off.shape[0] > 0:
        fg2 += ek.chain_forward(Fr, eng.a_off, eng.a_dim, eng.a_uoff, ga, ua, za)
    else:
        fg2 += ga2
    eng.fgrad[r] = math.sqrt(max(fg2, 0.0))  # the factors' gradient norm, kept for the stop
    return L, phi, c, s, P, max(gw2 + ga2, 0.0), ga2, (n, fg2)


@njit(inline="always")
def _gates(eng, wsp, carry, t):
    return True, True, True, True, eng.normalized


@njit(inline="always")
def _traj_point(eng, wsp, carry, L, phi, P):
    return L, phi, P, distance(carry[3], carry[5])  # a, a*


@njit(inline="always")
def _on_record(eng, wsp, r, rec):
    if rec < eng.wrec.shape[1]:
        p = eng.WT.shape[1]
        for i in range(p):
            eng.wrec[r, rec, i] = eng.WT[r, i] - eng.V[i]
        for j in range(eng.A.shape[1]):
            eng.wrec[r, rec, p + j] = eng.A[r, j]


@njit(inline="always")
def _extra_stop(eng, wsp, carry, aux, t, seg, max_steps, tol):
    fg2 = aux[1]
    if not math.isfinite(fg2):
        return driver.STOP_DIVERGED
    if max(fg2, 0.0) <= tol[1]:
        return driver.STOP_STUCK
    return -1


@njit(inline="always")
def _trap_factor(eng):
    return eng.trap_factor


@njit(inline="always")
def _step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t):
    r, Fr, w, a, ws, ast, uw, unw, ua, una, st, ww0, wws0, S0, Q0, P0 = carry
    zw, za, gw, ga, zb, hb = wsp[2], wsp[5], wsp[6], wsp[7], wsp[8], wsp[9]
    F_prev, w_prev, a_prev = wsp[10], wsp[11], wsp[12]
    n = aux[0]
    copy_into(F_prev, Fr)  # the undo copy
    copy_into(w_prev, w)
    copy_into(a_prev, a)
    w_exp = eng.w_off.shape[0] > 0
    a_exp = eng.a_off.shape[0] > 0
    if eng.mode == MODE_SGD:
        ek.minibatch_gradient(st, eng.batch_size, w, n, eng.normalized, ws, a, ast, zb, hb, gw, ga)
        if w_exp:
            ek.chain_forward(Fr, eng.w_off, eng.w_dim, eng.w_uoff, gw, uw, zw)
        if a_exp:
            ek.chain_forward(Fr, eng.a_off, eng.a_dim, eng.a_uoff, ga, ua, za)
    z0 = 0.0
    z1 = 0.0
    if w_exp:
        ek.chain_update(Fr, eng.w_off, eng.w_dim, eng.w_uoff, uw, unw, zw, ew, sw, st)
        for i in range(w.shape[0]):
            w[i] = eng.V[i] + unw[eng.w_uoff[0] + i]
    else:
        for i in range(w.shape[0]):
            x = w[i] - ew * gw[i]
            if sw > 0.0:
                if i % 2 == 0:
                    z0, z1 = normal_pair(st)
                x += sw * (z0 if i % 2 == 0 else z1)
            w[i] = x
    if a_exp:
        ek.chain_update(Fr, eng.a_off, eng.a_dim, eng.a_uoff, ua, una, za, ea, sa, st)
        for j in range(a.shape[0]):
            a[j] = una[eng.a_uoff[0] + j]
    else:
        for j in range(a.shape[0]):
            y = a[j] - ea * ga[j]
            if sa > 0.0:
                if j % 2 == 0:
                    z0, z1 = normal_pair(st)
                y += sa * (z0 if j % 2 == 0 else z1)
            a[j] = y
    ww, wws, S, Q, P = invariants(w, ws, a, ast)
    if not (math.isfinite(ww) and math.isfinite(wws) and math.isfinite(S) and math.isfinite(Q)
            and math.isfinite(P)):
        copy_into(Fr, F_prev)  # undo: the run stops at its last finite state (the chains u are intact)
        copy_into(w, w_prev)
        copy_into(a, a_prev)
        return carry, False
    if w_exp:
        uw, unw = unw, uw
    if a_exp:
        ua, una = una, ua
    return (r, Fr, w, a, ws, ast, uw, unw, ua, una, st, ww, wws, S, Q, P), True


@njit(inline="always")
def _finish(eng, wsp, prob, r, rec, carry):
    for q in range(rec, eng.wrec.shape[1]):
        for i in range(eng.wrec.shape[2]):
            eng.wrec[r, q, i] = np.nan


#: The compiled entry point (see :func:`sims.engines.driver.run_batch`).
run_range = driver.register(Expanded, options=dict(_nrt=False), begin=_begin, observe=_observe, gates=_gates,
                            traj_point=_traj_point, on_record=_on_record, extra_stop=_extra_stop,
                            trap_factor=_trap_factor, step=_step, finish=_finish)
