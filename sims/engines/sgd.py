"""Finite-sample training: online SGD (a fresh minibatch each step) and GD on a fixed training set.

The step uses the gradient of the *empirical* loss ``0.5 mean_b (f(Z_b; w, a) - f(Z_b; w*, a*))^2`` computed by
:mod:`sims.engines.finite_sample` (blocked, vectorized, Ziggurat normals); monitoring is population-level, through the
invariants ``||w~||^2, w~.w*, 1.a, a.a, a.a*`` (the driver's stops and records refer to the population loss).
Never ``trapped``: the steps are noisy, so the basin argument does not apply.

State: ``w~`` and ``a`` in place in the rows of ``WT, A``, the invariants and the run's xoshiro256** stream as
four scalars (written back when the run stops).  The step keeps a copy of the previous ``(w~, a)``: a step whose
result is not finite is undone and the run stops ``diverged`` at its last finite state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from sims.engines import driver
from sims.engines import finite_sample as fs
from sims.engines.common import angle_from, copy_into, distance, invariants, population_terms, unshared_empty
from sims.engines.rng import zig_normal

SGD_FULL, SGD_PROJECTED, GD_FIXED = fs.SGD_FULL, fs.SGD_PROJECTED, fs.GD_FIXED


class FiniteSample(NamedTuple):
    """Online SGD or fixed-sample GD on the rows of ``WT, A`` (updated in place)."""

    WT: np.ndarray  # (R, p) effective filters w~
    A: np.ndarray  # (R, k) second layers
    normalized: bool
    mode: int  # SGD_FULL, SGD_PROJECTED (same law, 2-D projection) or GD_FIXED
    batch_size: int  # minibatch size (SGD) or training-set size (GD_FIXED)
    chunk: int  # samples per block of inputs (finite_sample.chunk_samples)


def workspace(eng: FiniteSample, p: int, k: int) -> tuple[np.ndarray, ...]:
    """One thread's work space: ``O(chunk k p)`` for SGD; the run's own training set for GD_FIXED."""
    kp, chunk = k * p, eng.chunk
    fixed = eng.mode == GD_FIXED
    vec = unshared_empty(7 * p + 2 * k)  # wu, gu, gw, e2, xi, w_prev (p) and ga, a_prev (k), as views of one block
    views = tuple(vec[i * p:(i + 1) * p] for i in range(6)) + (vec[6 * p:6 * p + k], vec[6 * p + k:6 * p + 2 * k])
    sizes = (chunk * kp if eng.mode == SGD_FULL else 0, chunk * k, chunk * k, chunk * k, chunk, chunk,
             eng.batch_size * kp if fixed else 0, eng.batch_size if fixed else 0)
    return views + tuple(unshared_empty(n) for n in sizes)


@njit(inline="always")
def _begin(eng, wsp, prob, r, tr, tv):
    wu, gu, gw, e2, xi, w_prev, ga, a_prev, zb, h, hs, cv, fb, fsb, X, FS = wsp
    w = eng.WT[r]
    a = eng.A[r]
    ws = prob.WS[tr]
    ast = prob.AS[tr]
    s0, s1, s2, s3 = prob.states[r, 0], prob.states[r, 1], prob.states[r, 2], prob.states[r, 3]
    if eng.mode == GD_FIXED:
        s0, s1, s2, s3 = fs._draw_training_set(s0, s1, s2, s3, eng.chunk, X, FS, ws, ast, hs)
    ww, wws, S, Q, P = invariants(w, ws, a, ast)
    return w, a, ws, ast, ww, wws, S, Q, P, s0, s1, s2, s3


@njit(inline="always")
def _observe(eng, wsp, carry, tv):
    w, a, ws, ast, ww, wws, S, Q, P, s0, s1, s2, s3 = carry
    ws2, Ss, Qs, k = tv
    n = math.sqrt(ww)
    phi, c, s = angle_from(n, wws, ws2)
    L, L_rho, L_c, L_S, L_Q, L_P, gw2, ga2 = population_terms(n, phi, c, s, S, Q, P, tv, eng.normalized)
    return L, phi, c, s, P, max(gw2 + ga2, 0.0), ga2, 0.0


@njit(inline="always")
def _gates(eng, wsp, carry, t):
    return True, True, True, True, False  # never trapped: the steps are noisy


@njit(inline="always")
def _traj_point(eng, wsp, carry, L, phi, P):
    return L, phi, P, distance(carry[1], carry[3])  # a, a*


@njit(inline="always")
def _gradient(eng, wsp, w, a, ws, ast, s0, s1, s2, s3):
    """The empirical gradient ``(gw, ga)`` in the work space; returns the advanced stream."""
    wu, gu, gw, e2, xi, w_prev, ga, a_prev, zb, h, hs, cv, fb, fsb, X, FS = wsp
    nw = fs._filter_direction(w, eng.normalized, wu)
    if eng.mode == GD_FIXED:
        fs._fixed_gradient(eng.chunk, X, FS, wu, a, h, cv, fb, gu, ga)
    elif eng.mode == SGD_PROJECTED:
        _, (s0, s1, s2, s3) = fs._projected_gradient((s0, s1, s2, s3), eng.batch_size, eng.chunk, wu, ws, a, ast,
                                                     e2, xi, (h, hs, cv, fb, fsb), gu, ga)
    else:
        _, (s0, s1, s2, s3) = fs._sgd_gradient((s0, s1, s2, s3), eng.batch_size, eng.chunk, wu, ws, a, ast, zb,
                                               (h, hs, cv, fb, fsb), gu, ga)
    fs._filter_gradient(gu, wu, nw, eng.normalized, gw)
    return s0, s1, s2, s3


@njit(inline="always")
def _step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t):
    w, a, ws, ast, ww, wws, S, Q, P, s0, s1, s2, s3 = carry
    gw = wsp[2]
    w_prev = wsp[5]
    ga = wsp[6]
    a_prev = wsp[7]
    copy_into(w_prev, w)
    copy_into(a_prev, a)
    s0, s1, s2, s3 = _gradient(eng, wsp, w, a, ws, ast, s0, s1, s2, s3)
    noisy = sw > 0.0 or sa > 0.0
    ww = 0.0
    wws = 0.0
    S = 0.0
    Q = 0.0
    P = 0.0
    for i in range(w.shape[0]):
        x = w[i] - ew * gw[i]
        if noisy:
            zz, s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
            x += sw * zz
        w[i] = x
        ww += x * x
        wws += x * ws[i]
    for j in range(a.shape[0]):
        y = a[j] - ea * ga[j]
        if noisy:
            zz, s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
            y += sa * zz
        a[j] = y
        S += y
        Q += y * y
        P += y * ast[j]
    if not (math.isfinite(ww) and math.isfinite(wws) and math.isfinite(S) and math.isfinite(Q)
            and math.isfinite(P)):
        copy_into(w, w_prev)  # undo: the run stops at its last finite state
        copy_into(a, a_prev)
        return carry, False
    return (w, a, ws, ast, ww, wws, S, Q, P, s0, s1, s2, s3), True


@njit(inline="always")
def _finish(eng, wsp, prob, r, rec, carry):
    prob.states[r, 0] = carry[9]
    prob.states[r, 1] = carry[10]
    prob.states[r, 2] = carry[11]
    prob.states[r, 3] = carry[12]


#: The compiled entry point (see :func:`sims.engines.driver.run_batch`).
run_range = driver.register(FiniteSample, options=dict(error_model="numpy", _nrt=False), begin=_begin,
                            observe=_observe, gates=_gates, traj_point=_traj_point, step=_step, finish=_finish)
