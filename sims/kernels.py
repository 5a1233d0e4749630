"""Batched population gradient descent, compiled with numba and parallel over runs.

Each run owns one row of every per-run array and is advanced by one thread from start to stop, so its state
stays in cache and its result does not depend on the thread count or on which other runs share the batch.
The filter is carried as the effective filter ``w~`` (``w + v`` for the ResNet); one fused pass per step
updates ``w~`` and ``a`` and accumulates the invariants ``||w~||^2, w~.w*, 1.a, a.a, a.a*`` of the next step.

Speed.  Per step the scalar part (norm, angle, loss, partials) is one chain of dependent operations between two
fused passes, so for short vectors its latency sets the pace: the angle is taken as
``atan2(sqrt(||w*||^2 ||w~||^2 - (w~.w*)^2), w~.w*)`` (no division or norm before the square root) by an inlined
arctangent with a single division (:func:`atan2_upper`), ``1/||w~||`` is computed once, and the gradient-norm test
compares squares.  The compiled kernel (:func:`_gd_runs`) is serial over a range of runs and releases the GIL;
:func:`population_gd` runs it on ``numba.get_num_threads()`` Python threads that take chunks of runs in turn (a
numba ``prange`` kernel compiles about twice as slowly).
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import njit

from sims import closed_forms as cf
from sims.rng import normal_pair

RESNET, CNN, CNN_UNNORMALIZED = 0, 1, 2
MODEL_CODES = {"resnet": RESNET, "cnn": CNN, "cnn-unnormalized": CNN_UNNORMALIZED}

# Why a run stopped (``SimulationResult.stop_reason``).
STOP_LOSS, STOP_GRAD, STOP_DIVERGED, STOP_MAX_STEPS, STOP_TRAPPED = 0, 1, 2, 3, 4
STOP_NAMES = ("loss_tol", "grad_tol", "diverged", "max_steps", "trapped")

# Trajectory columns.
TRAJ_LOSS, TRAJ_PHI, TRAJ_ALIGN, TRAJ_DIST = 0, 1, 2, 3
TRAJ_FIELDS = ("loss", "phi", "alignment", "dist_a")

_PI = math.pi


@njit(inline="always", cache=True)
def angle_from(n, wws, ws2):
    """``(phi, cos, sin)`` of the angle between ``w~`` (norm ``n``, ``w~.w* = wws``) and ``w*``."""
    c_raw = wws / n
    s2 = ws2 - c_raw * c_raw
    s_raw = math.sqrt(s2) if s2 > 0.0 else 0.0
    h = math.hypot(c_raw, s_raw)
    return math.atan2(s_raw, c_raw), c_raw / h, s_raw / h


@njit(inline="always", cache=True)
def grad_a_sq(L_S, L_Q, L_P, k, S, Q, P, Ss, Qs):
    """``||L_S 1 + 2 L_Q a + L_P a*||^2`` from the invariants alone (no pass over ``a``)."""
    return (
        k * L_S * L_S
        + 4.0 * L_Q * L_Q * Q
        + L_P * L_P * Qs
        + 4.0 * L_S * L_Q * S
        + 2.0 * L_S * L_P * Ss
        + 4.0 * L_Q * L_P * P
    )


@njit(inline="always", cache=True)
def track_rate_levels(r, t, L, L_ref, rate_levels, rate_pts):
    """Keep, per level ``rate_levels[lv] * L_ref``, the step and loss of the last downward crossing (a rise above
    the level forgets it): the points :func:`sims.simulate.fitted_rates` measures the linear rate between."""
    for lv in range(3):
        if L > rate_levels[lv] * L_ref:
            rate_pts[r, 2 * lv] = -1.0
        elif rate_pts[r, 2 * lv] < 0.0:
            rate_pts[r, 2 * lv] = t
            rate_pts[r, 2 * lv + 1] = L


@njit(inline="always", cache=True)
def record_trajectory(r, t, rec, record_steps, traj, L, phi, P, a, ast):
    """Write ``(loss, phi, a.a*, ||a - a*||)`` at every recorded step equal to ``t``; returns the next record index."""
    while rec < record_steps.shape[0] and record_steps[rec] == t:
        d2 = 0.0
        for j in range(a.shape[0]):
            d2 += (a[j] - ast[j]) * (a[j] - ast[j])
        traj[r, rec, 0] = L
        traj[r, rec, 1] = phi
        traj[r, rec, 2] = P
        traj[r, rec, 3] = math.sqrt(d2)
        rec += 1
    return rec


@njit(inline="always", cache=True)
def run_workspace(p, k):
    """Four work vectors ``(w~, w*, a, a*)`` of lengths ``p, p, k, k``, carved at fixed offsets out of one block.

    Why: LLVM guards a vectorized sum in a loop that also stores (the fused update-and-invariants loop) with a
    runtime alias check, "is the store less than a few vectors ahead of a load?", and falls back to an in-order
    sum if so.  On arrays from separate allocations the answer depends on where the heap put them, so the
    rounding (and, in the end, the trajectory) would too.  Inside one block the distances are fixed by ``p, k``:
    the same path runs on every run, thread and call.  ``tests/ir_scan.py`` checks that every such guard in
    every kernel compares addresses of one block only."""
    block = np.empty(2 * p + 2 * k)
    return block[:p], block[p : 2 * p], block[2 * p : 2 * p + k], block[2 * p + k :]


@njit(inline="always", cache=True)
def load_run(w, ws, a, ast, W, WS, A, AS, r, tr):
    """Copy run ``r``'s ``(w~, a)`` and teacher ``tr``'s ``(w*, a*)`` into the workspace of :func:`run_workspace`
    (explicit loops: slice assignment costs seconds of compile time)."""
    for i in range(w.shape[0]):
        w[i] = W[r, i]
        ws[i] = WS[tr, i]
    for j in range(a.shape[0]):
        a[j] = A[r, j]
        ast[j] = AS[tr, j]


@njit(inline="always", cache=True)
def store_run(w, a, W, A, r):
    """Copy the workspace's final ``(w~, a)`` back into row ``r`` of ``W, A``."""
    for i in range(w.shape[0]):
        W[r, i] = w[i]
    for j in range(a.shape[0]):
        A[r, j] = a[j]


@njit(inline="always", cache=True)
def optimal_alignment(g, k, Ss, Qs):
    """``a(phi).a*`` with ``a(phi) = M^{-1} N(phi) a*`` the loss-minimizing second layer at angle ``phi``."""
    kk = k + _PI - 1.0
    return Ss * Ss / kk + (g - 1.0) * (Qs - Ss * Ss / kk) / (_PI - 1.0)


# fdlibm's atan (s_atan.c): reduction of the argument to |t| < 7/16 with a table of atan(0.5), atan(1), atan(1.5),
# atan(inf) as high and low parts, and its odd polynomial of degree 23 on [-7/16, 7/16] (coefficients AT0..AT10).
_ATAN_HI = (4.63647609000806093515e-01, 7.85398163397448278999e-01, 9.82793723247329054082e-01,
            1.57079632679489655800e00)
_ATAN_LO = (2.26987774529616870924e-17, 3.06161699786838301793e-17, 1.39033110312309984516e-17,
            6.12323399573676603587e-17)
_AT0, _AT1, _AT2, _AT3 = (3.33333333333329318027e-01, -1.99999999998764832476e-01, 1.42857142725034663711e-01,
                          -1.11111104054623557880e-01)
_AT4, _AT5, _AT6, _AT7 = (9.09088713343650656196e-02, -7.69187620504482999495e-02, 6.66107313738753120669e-02,
                          -5.83357013379057348645e-02)
_AT8, _AT9, _AT10 = 4.97687799461593236017e-02, -3.65315727442169155270e-02, 1.62858201153657823623e-02
_PI_LO = 1.2246467991473531772e-16  # pi - float(pi)


@njit(inline="always", cache=True)
def atan2_upper(y, x):
    """``atan2(y, x)`` for ``y >= 0`` (an angle in ``[0, pi]``), inlined and with one division: fdlibm's reduction
    of ``|y / x|`` written on ``(y, |x|)`` directly, then its polynomial.  Within 1 ulp of libm's ``atan2`` (94% of
    results identical, on 3.5e6 angles over [0, pi] and its ends); NaN in, NaN out."""
    if x != x or y != y:
        return x + y
    ax = abs(x)
    if y < 0.4375 * ax:
        i = -1
        t = y / ax
    elif y < 0.6875 * ax:
        i = 0
        t = (2.0 * y - ax) / (2.0 * ax + y)
    elif y < 1.1875 * ax:
        i = 1
        t = (y - ax) / (y + ax)
    elif y < 2.4375 * ax:
        i = 2
        t = (y - 1.5 * ax) / (ax + 1.5 * y)
    else:
        i = 3
        t = -ax / y
    # sum_j AT_j t^(2j+2), j = 0..10, by Estrin's scheme (pairs, then pairs of pairs): 4 dependent steps instead
    # of Horner's 6, and the arctangent is on the critical path of every step.
    t2 = t * t
    t4 = t2 * t2
    t8 = t4 * t4
    r0 = (_AT0 + _AT1 * t2) + (_AT2 + _AT3 * t2) * t4
    r1 = (_AT4 + _AT5 * t2) + (_AT6 + _AT7 * t2) * t4
    r2 = (_AT8 + _AT9 * t2) + _AT10 * t4
    u = t2 * ((r0 + r1 * t8) + r2 * (t8 * t8))
    if i < 0:
        z = t - t * u
    else:
        z = _ATAN_HI[i] - ((t * u - _ATAN_LO[i]) - t)
    if x < 0.0:
        return _PI - (z - _PI_LO)
    return z


def population_gd(
    WT,  # (R, p) effective filters w~, updated in place
    A,  # (R, k) second layers, updated in place
    WS,  # (Rt, p) teacher filters (Rt = 1 or R)
    AS,  # (Rt, k) teacher second layers
    phi_saddle,  # (Rt,) saddle angle of each teacher, -1 where the spurious point does not exist
    normalized,  # bool: weight-normalized (rho = 1) or not (rho = ||w||)
    seg_end,  # (Rs, nseg) int64 step at which each segment ends; Rs = 1 or R
    eta_w,  # (Rs, nseg)
    eta_a,  # (Rs, nseg)
    noise_w,  # (nseg,) perturbation std on w per step, per segment
    noise_a,  # (nseg,)
    noise_decay,  # multiplicative decay of the noise std per step (annealing)
    states,  # (R, 4) uint64 random streams (used only with noise)
    max_steps,
    loss_tol,  # all loss levels are relative to L_ref = loss of the zero network = E[f*^2] / 2
    grad_tol,  # relative to sqrt(L_ref)
    eps_steps,  # loss level for steps_to_tol
    divergence_loss,  # a loss above this (or non-finite) is divergence
    stop_trapped,  # stop runs that provably entered the spurious basin (noise-free last segment only)
    record_steps,  # (m,) int64 ascending steps at which the trajectory is recorded
    traj,  # (R, m, 4) out: loss, phi, a.a*, ||a - a*||; NaN after the stop
    final,  # (R, 4) out: loss, phi, a.a*, gradient norm at the stop
    stop_step,  # (R,) out
    stop_reason,  # (R,) out
    slow_end,  # (R,) out: first step with a.a* > 0 (-1 if never)
    steps_tol,  # (R,) out: first step with loss <= eps_steps (-1 if never)
    rate_levels,  # (3,) loss levels hi > mid > lo: the linear rate is measured on [mid, lo] and checked on [hi, mid]
    rate_pts,  # (R, 6) out: step and loss at the last downward crossing of each level (-1 if none)
):
    """Run population GD on every row of ``WT, A`` (in place) and fill the outputs; see the argument comments.

    Runs are split into chunks that ``numba.get_num_threads()`` threads take in turn; each run is advanced by one
    thread from start to stop, so results do not depend on the thread count or the chunking."""
    args = (WT, A, WS, AS, phi_saddle, normalized, seg_end, eta_w, eta_a, noise_w, noise_a, noise_decay, states,
            max_steps, loss_tol, grad_tol, eps_steps, divergence_loss, stop_trapped, record_steps, traj, final,
            stop_step, stop_reason, slow_end, steps_tol, rate_levels, rate_pts)
    R = WT.shape[0]
    threads = max(1, min(numba.get_num_threads(), R))
    if threads == 1:
        _gd_runs(0, R, *args)
        return
    chunk = max(1, -(-R // (8 * threads)))  # a few chunks per thread: runs that stop early do not idle a thread
    starts = list(range(0, R, chunk))
    lock = threading.Lock()
    taken = [0]
    errors = []

    def work():
        try:
            while True:
                with lock:
                    i = taken[0]
                    taken[0] += 1
                if i >= len(starts):
                    return
                _gd_runs(starts[i], min(starts[i] + chunk, R), *args)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads - 1)]
    for th in pool:
        th.start()
    work()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "arcp"}, error_model="numpy")
def _gd_runs(
    lo,
    hi,
    WT,
    A,
    WS,
    AS,
    phi_saddle,
    normalized,
    seg_end,
    eta_w,
    eta_a,
    noise_w,
    noise_a,
    noise_decay,
    states,
    max_steps,
    loss_tol,
    grad_tol,
    eps_steps,
    divergence_loss,
    stop_trapped,
    record_steps,
    traj,
    final,
    stop_step,
    stop_reason,
    slow_end,
    steps_tol,
    rate_levels,
    rate_pts,
):
    """The kernel of :func:`population_gd` on runs ``lo .. hi-1``."""
    p = WT.shape[1]
    k = A.shape[1]
    nseg = seg_end.shape[1]
    m = record_steps.shape[0]
    last_noisy = noise_w[nseg - 1] > 0.0 or noise_a[nseg - 1] > 0.0
    # Private copies of the run's w~, w*, a, a* at fixed offsets in one block (see run_workspace).
    w, ws, a, ast = run_workspace(p, k)
    for r in range(lo, hi):
        ri = np.int64(r)
        tr = ri if WS.shape[0] > 1 else np.int64(0)
        sr = ri if seg_end.shape[0] > 1 else np.int64(0)
        load_run(w, ws, a, ast, WT, WS, A, AS, r, tr)
        st = states[r]
        phs = phi_saddle[tr]
        ws2 = 0.0
        Ss = 0.0
        Qs = 0.0
        for i in range(p):
            ws2 += ws[i] * ws[i]
        for j in range(k):
            Ss += ast[j]
            Qs += ast[j] * ast[j]
        inv_nws = 1.0 / math.sqrt(ws2)
        L_ref = cf.loss(1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, Ss, Qs)
        if not L_ref > 0.0:
            L_ref = 1.0
        tol_loss = loss_tol * L_ref
        tol_grad2 = grad_tol * grad_tol * L_ref if grad_tol >= 0.0 else -1.0  # on the squared gradient norm
        tol_eps = eps_steps * L_ref
        tol_div = divergence_loss * L_ref
        ww = 0.0
        wws = 0.0
        for i in range(p):
            ww += w[i] * w[i]
            wws += w[i] * ws[i]
        S = 0.0
        Q = 0.0
        P = 0.0
        for j in range(k):
            S += a[j]
            Q += a[j] * a[j]
            P += a[j] * ast[j]
        seg = 0
        rec = 0
        slow_end[r] = -1
        steps_tol[r] = -1
        for f in range(6):
            rate_pts[r, f] = -1.0
        sigma_scale = 1.0
        z0 = 0.0
        z1 = 0.0
        prev_phi = 0.0
        prev_P = 0.0
        t = 0
        while True:
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
            rho = 1.0 if normalized else n
            L = cf.loss(rho, phi, c, s, S, Q, P, Ss, Qs)
            L_rho, L_c, L_S, L_Q, L_P = cf.gradient(rho, phi, c, s, S, Q, P, Ss, Qs)
            gw2 = (L_c * s * inv_n) * (L_c * s * inv_n)
            if not normalized:
                gw2 += L_rho * L_rho
            ga2 = grad_a_sq(L_S, L_Q, L_P, k, S, Q, P, Ss, Qs)
            if ga2 < 1e-6 * (k * L_S * L_S + 4.0 * L_Q * L_Q * Q + L_P * L_P * Qs):
                # Near stationarity the invariant formula cancels to rounding noise: recompute from a.
                ga2 = 0.0
                for j in range(k):
                    gj = L_S + 2.0 * L_Q * a[j] + L_P * ast[j]
                    ga2 += gj * gj
            g2 = max(gw2 + ga2, 0.0)
            if P > 0.0 and slow_end[r] < 0:
                slow_end[r] = t
            if L <= tol_eps and steps_tol[r] < 0:
                steps_tol[r] = t
            track_rate_levels(r, t, L, L_ref, rate_levels, rate_pts)
            rec = record_trajectory(r, t, rec, record_steps, traj, L, phi, P, a, ast)
            while seg < nseg - 1 and t >= seg_end[sr, seg]:
                seg += 1
            reason = -1
            if not (math.isfinite(L) and math.isfinite(n) and math.isfinite(Q)) or L > tol_div:
                reason = STOP_DIVERGED
            elif L <= tol_loss:
                reason = STOP_LOSS
            elif g2 <= tol_grad2:
                reason = STOP_GRAD
            elif t >= max_steps:
                reason = STOP_MAX_STEPS
            elif stop_trapped and normalized and phs >= 0.0 and phi > phs and P < 0.0 and seg == nseg - 1:
                if not last_noisy:
                    # grad_a = M (a - a(phi)) / (2 pi) and M >= (pi - 1) I, so ||a - a(phi)|| <= 2 pi ||grad_a||/(pi-1)
                    # and a.a* <= a(phi).a* + ||a - a(phi)|| ||a*|| < 0: phi keeps growing toward pi.
                    g = cf.arc_cosine(phi, c, s)
                    if 2.0 * _PI * math.sqrt(ga2) / (_PI - 1.0) * math.sqrt(Qs) < -optimal_alignment(g, k, Ss, Qs):
                        reason = STOP_TRAPPED
            if reason >= 0:
                stop_reason[r] = reason
                stop_step[r] = t
                if reason == STOP_DIVERGED and not (math.isfinite(L) and math.isfinite(phi) and math.isfinite(P)):
                    # overflowed in one step: report an infinite loss and the last finite angle and alignment
                    final[r, 0] = math.inf
                    final[r, 1] = prev_phi
                    final[r, 2] = prev_P
                    final[r, 3] = math.inf
                else:
                    final[r, 0] = L
                    final[r, 1] = phi
                    final[r, 2] = P
                    final[r, 3] = math.sqrt(g2)
                break
            prev_phi = phi
            prev_P = P
            # One GD step: w~ <- alpha w~ + beta w*, a <- ca a + cp a* + c1, fused with the next invariants.
            ew = eta_w[sr, seg]
            ea = eta_a[sr, seg]
            alpha = 1.0 + ew * (L_c * (wws * inv_n) * (inv_n * inv_n))
            if not normalized:
                alpha -= ew * L_rho * inv_n
            beta = -ew * L_c * inv_n
            ca = 1.0 - 2.0 * ea * L_Q
            cp = -ea * L_P
            c1 = -ea * L_S
            sw = noise_w[seg] * sigma_scale
            sa = noise_a[seg] * sigma_scale
            ww = 0.0
            wws = 0.0
            S = 0.0
            Q = 0.0
            P = 0.0
            if sw > 0.0 or sa > 0.0:
                for i in range(p):
                    if i % 2 == 0:
                        z0, z1 = normal_pair(st)
                    x = alpha * w[i] + beta * ws[i] + sw * (z0 if i % 2 == 0 else z1)
                    w[i] = x
                    ww += x * x
                    wws += x * ws[i]
                for j in range(k):
                    if j % 2 == 0:
                        z0, z1 = normal_pair(st)
                    y = ca * a[j] + cp * ast[j] + c1 + sa * (z0 if j % 2 == 0 else z1)
                    a[j] = y
                    S += y
                    Q += y * y
                    P += y * ast[j]
                sigma_scale *= noise_decay
            else:
                for i in range(p):
                    x = alpha * w[i] + beta * ws[i]
                    w[i] = x
                    ww += x * x
                    wws += x * ws[i]
                for j in range(k):
                    y = ca * a[j] + cp * ast[j] + c1
                    a[j] = y
                    S += y
                    Q += y * y
                    P += y * ast[j]
            t += 1
        store_run(w, a, WT, A, r)
        for q in range(rec, m):
            for f in range(4):
                traj[r, q, f] = np.nan
