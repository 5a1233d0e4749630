"""Finite-sample training kernels: online SGD and GD on a fixed training set, compiled with numba, parallel over
runs.

Both kernels mirror :func:`sims.kernels.population_gd` (same arguments, outputs and stop logic); only the step
differs.  The step uses the gradient of the *empirical* loss ``0.5 mean_b (f(Z_b; w, a) - f(Z_b; w*, a*))^2``:

- ``"sgd"``: a fresh minibatch of ``batch_size`` inputs ``Z_b`` (``k x p``, i.i.d. N(0, 1)) every step;
- ``"gd-fixed"``: one training set of ``batch_size`` inputs drawn at the start, the full-batch gradient every step.

The network is ``f(Z; w, a) = sum_j a_j relu(u . Z_j)`` with ``u = w~ / ||w~||`` (normalized models; ``w~`` is the
effective filter ``w + v`` of the ResNet or ``w`` of the CNN, and the gradient wrt ``w~`` equals the gradient
wrt ``w``), or ``relu(w . Z_j)`` (unnormalized).  With ``g_u = mean_b r_b sum_j a_j 1[u.Z_bj > 0] Z_bj`` and
``r_b = f - f*``, the filter gradient is ``(I - u u^T) g_u / ||w~||`` (normalized) or ``g_u`` (unnormalized), and
``d/da_j = mean_b r_b relu(u.Z_bj)``.

**Monitoring is population-level**: every step computes the *population* loss and gradient norm from the closed
forms through the invariants ``||w~||, w~.w*, 1.a, a.a, a.a*`` (exactly as ``population_gd``), and the tolerances,
the divergence check, the trajectory, ``slow_end``, ``steps_tol``, ``rate_pts`` and ``final`` all refer to
those.  Stop reasons: ``loss_tol``, ``grad_tol`` (population gradient), ``diverged``, ``max_steps``; never
``trapped`` (the steps are noisy, so the basin argument does not apply).

**No NaN leaves the kernel** (except the documented NaN padding of ``traj`` after the stop): a step whose result
is non-finite is rolled back; the run then stops ``diverged`` at the last finite state (``stop_step`` is that
state's step, ``WT``/``A``/``final`` hold it).

**Random numbers.**  Each run draws everything (minibatches, the training set, perturbation noise) from its own
xoshiro256** stream ``states[r]`` with the Ziggurat sampler of :mod:`sims.rng`, and is advanced start-to-stop by
one thread, so results are bit-identical for any thread count and any split of runs.  The stream is held in four
scalars while a run is active and written back to ``states[r]`` when it stops.

**Memory.**  Per thread: one input ``Z`` (``k p`` doubles) for SGD, plus ``O(p + k)`` work vectors; ``gd-fixed``
holds its run's training set (``batch_size x k x p`` doubles plus the teacher outputs), allocated inside the
per-run loop, so at most one set per thread is alive (never ``R x n x k x p``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sims import closed_forms as cf
from sims.kernels import (
    STOP_DIVERGED,
    STOP_GRAD,
    STOP_LOSS,
    STOP_MAX_STEPS,
    angle_from,
    grad_a_sq,
)
from sims.rng import zig_normal

ALGORITHMS = ("sgd", "gd-fixed")
#: Largest training set ``gd-fixed`` holds per thread (bytes); above it ``run`` raises instead of swapping.
MAX_SAMPLE_BYTES = 2 * 1024**3

_FM = {"reassoc", "contract", "arcp"}


# ---- the empirical gradient ------------------------------------------------------------------------------------


@njit(inline="always", cache=True, fastmath=_FM)
def _accumulate(z, off, wu, ws, a, ast, teacher_known, fs_known, h, gu, ga):
    """Add one input ``Z = z[off : off + k p]`` (patch-major) to the gradient sums ``gu, ga``.

    ``wu`` is the unit filter ``u`` (normalized) or ``w`` (unnormalized); the teacher output is ``fs_known`` when
    ``teacher_known`` (a literal at each call site), else computed from ``ws, ast``.  Returns ``r = f - f*``."""
    k = a.shape[0]
    p = wu.shape[0]
    f = 0.0
    fs = fs_known
    for j in range(k):
        base = off + j * p
        hj = 0.0
        if teacher_known:
            for i in range(p):
                hj += wu[i] * z[base + i]
        else:
            hs = 0.0
            for i in range(p):
                x = z[base + i]
                hj += wu[i] * x
                hs += ws[i] * x
            if hs > 0.0:
                fs += ast[j] * hs
        h[j] = hj
        if hj > 0.0:
            f += a[j] * hj
    r = f - fs
    for j in range(k):
        hj = h[j]
        if hj > 0.0:
            ga[j] += r * hj
            coef = r * a[j]
            base = off + j * p
            for i in range(p):
                gu[i] += coef * z[base + i]
    return r


@njit(inline="always", cache=True, fastmath=_FM)
def _sgd_gradient(s0, s1, s2, s3, n_batch, wu, ws, a, ast, z, h, gu, ga):
    """Minibatch gradient ``(gu, ga)`` (wrt ``wu`` and ``a``) of ``n_batch`` fresh inputs drawn from the stream
    ``(s0..s3)``; returns ``(empirical loss, s0, s1, s2, s3)``."""
    kp = z.shape[0]
    for i in range(gu.shape[0]):
        gu[i] = 0.0
    for j in range(ga.shape[0]):
        ga[j] = 0.0
    lsum = 0.0
    for _ in range(n_batch):
        for q in range(kp):
            z[q], s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
        r = _accumulate(z, 0, wu, ws, a, ast, False, 0.0, h, gu, ga)
        lsum += r * r
    inv = 1.0 / n_batch
    for i in range(gu.shape[0]):
        gu[i] *= inv
    for j in range(ga.shape[0]):
        ga[j] *= inv
    return 0.5 * lsum * inv, s0, s1, s2, s3


@njit(inline="always", cache=True, fastmath=_FM)
def _fixed_gradient(X, FS, wu, ws, a, ast, h, gu, ga):
    """Full-batch gradient ``(gu, ga)`` over the training set ``X`` (n, k p) with teacher outputs ``FS``;
    returns the empirical (training) loss."""
    kp = X.shape[1]
    n_batch = X.shape[0]
    for i in range(gu.shape[0]):
        gu[i] = 0.0
    for j in range(ga.shape[0]):
        ga[j] = 0.0
    flat = X.reshape(n_batch * kp)
    lsum = 0.0
    for b in range(n_batch):
        r = _accumulate(flat, b * kp, wu, ws, a, ast, True, FS[b], h, gu, ga)
        lsum += r * r
    inv = 1.0 / n_batch
    for i in range(gu.shape[0]):
        gu[i] *= inv
    for j in range(ga.shape[0]):
        ga[j] *= inv
    return 0.5 * lsum * inv


@njit(inline="always", cache=True, fastmath=_FM)
def _draw_training_set(s0, s1, s2, s3, X, ws, ast, FS):
    """Fill the training set ``X`` (n, k p) with standard normals and ``FS`` with the teacher outputs."""
    n_batch, kp = X.shape
    k = ast.shape[0]
    p = ws.shape[0]
    for b in range(n_batch):
        for q in range(kp):
            X[b, q], s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
        fs = 0.0
        for j in range(k):
            hs = 0.0
            for i in range(p):
                hs += ws[i] * X[b, j * p + i]
            if hs > 0.0:
                fs += ast[j] * hs
        FS[b] = fs
    return s0, s1, s2, s3


@njit(inline="always", cache=True, fastmath=_FM)
def _filter_direction(w, normalized, wu):
    """``wu = w / ||w||`` (normalized) or ``w``; returns ``||w||``."""
    p = w.shape[0]
    ww = 0.0
    for i in range(p):
        ww += w[i] * w[i]
    n = math.sqrt(ww)
    inv = 1.0 / n if normalized else 1.0
    for i in range(p):
        wu[i] = w[i] * inv
    return n


@njit(inline="always", cache=True, fastmath=_FM)
def _filter_gradient(gu, wu, n, normalized, gw):
    """Gradient wrt the effective filter: ``(I - u u^T) gu / n`` (normalized) or ``gu``."""
    p = gu.shape[0]
    if normalized:
        d = 0.0
        for i in range(p):
            d += wu[i] * gu[i]
        for i in range(p):
            gw[i] = (gu[i] - d * wu[i]) / n
    else:
        for i in range(p):
            gw[i] = gu[i]


# ---- the training kernel ---------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=_FM)
def finite_sample_gd(
    fixed,  # bool: GD on a fixed training set (True) or online SGD (False)
    batch_size,  # minibatch size (SGD) or training-set size (fixed)
    WT,  # (R, p) effective filters w~, updated in place
    A,  # (R, k) second layers, updated in place
    WS,  # (Rt, p) teacher filters (Rt = 1 or R)
    AS,  # (Rt, k) teacher second layers
    phi_saddle,  # (Rt,) unused (no "trapped" stop for noisy steps); kept for the common signature
    normalized,  # bool: weight-normalized (rho = 1) or not (rho = ||w||)
    seg_end,  # (Rs, nseg) int64 step at which each segment ends; Rs = 1 or R
    eta_w,  # (Rs, nseg)
    eta_a,  # (Rs, nseg)
    noise_w,  # (nseg,) perturbation std on w per step, per segment
    noise_a,  # (nseg,)
    noise_decay,  # multiplicative decay of the noise std per step (annealing)
    states,  # (R, 4) uint64 random streams, advanced in place
    max_steps,
    loss_tol,  # all loss levels are relative to L_ref = loss of the zero network = E[f*^2] / 2
    grad_tol,  # relative to sqrt(L_ref)
    eps_steps,  # loss level for steps_to_tol
    divergence_loss,  # a loss above this (or non-finite) is divergence
    record_steps,  # (m,) int64 ascending steps at which the trajectory is recorded
    traj,  # (R, m, 4) out: population loss, phi, a.a*, ||a - a*||; NaN after the stop
    final,  # (R, 4) out: population loss, phi, a.a*, population gradient norm at the stop
    stop_step,  # (R,) out
    stop_reason,  # (R,) out
    slow_end,  # (R,) out: first step with a.a* > 0 (-1 if never)
    steps_tol,  # (R,) out: first step with population loss <= eps_steps (-1 if never)
    rate_levels,  # (3,) loss levels hi > mid > lo (see population_gd)
    rate_pts,  # (R, 6) out: step and loss at the last downward crossing of each level (-1 if none)
):
    R, p = WT.shape
    k = A.shape[1]
    kp = k * p
    nseg = seg_end.shape[1]
    m = record_steps.shape[0]
    for r in prange(R):
        ri = np.int64(r)
        tr = ri if WS.shape[0] > 1 else np.int64(0)
        sr = ri if seg_end.shape[0] > 1 else np.int64(0)
        w = WT[r]
        a = A[r]
        ws = WS[tr]
        ast = AS[tr]
        s0, s1, s2, s3 = states[r, 0], states[r, 1], states[r, 2], states[r, 3]
        # thread-local work space (bounded: O(k p) for SGD; the run's training set for gd-fixed)
        wu = np.empty(p)
        gu = np.empty(p)
        gw = np.empty(p)
        ga = np.empty(k)
        h = np.empty(k)
        w_prev = np.empty(p)
        a_prev = np.empty(k)
        z = np.empty(kp if not fixed else 0)
        X = np.empty((batch_size if fixed else 0, kp))
        FS = np.empty(batch_size if fixed else 0)
        if fixed:
            s0, s1, s2, s3 = _draw_training_set(s0, s1, s2, s3, X, ws, ast, FS)
        ws2 = 0.0
        Ss = 0.0
        Qs = 0.0
        for i in range(p):
            ws2 += ws[i] * ws[i]
        for j in range(k):
            Ss += ast[j]
            Qs += ast[j] * ast[j]
        L_ref = cf.loss(1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, Ss, Qs)
        if not L_ref > 0.0:
            L_ref = 1.0
        tol_loss = loss_tol * L_ref
        tol_grad = grad_tol * math.sqrt(L_ref)
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
        L_prev = 0.0
        phi_prev = 0.0
        P_prev = 0.0
        g_prev = 0.0
        t = 0
        while True:
            n = math.sqrt(ww)
            phi, c, s = angle_from(n, wws, ws2)
            rho = 1.0 if normalized else n
            L = cf.loss(rho, phi, c, s, S, Q, P, Ss, Qs)
            L_rho, L_c, L_S, L_Q, L_P = cf.gradient(rho, phi, c, s, S, Q, P, Ss, Qs)
            gw2 = L_c * L_c * s * s / (n * n)
            if not normalized:
                gw2 += L_rho * L_rho
            ga2 = grad_a_sq(L_S, L_Q, L_P, k, S, Q, P, Ss, Qs)
            gnorm = math.sqrt(max(gw2 + ga2, 0.0))
            if not (math.isfinite(L) and math.isfinite(n) and math.isfinite(Q) and math.isfinite(phi)
                    and math.isfinite(P) and math.isfinite(gnorm)):
                # Roll back to the last finite state and stop there (no NaN leaves the kernel).
                if t > 0:
                    for i in range(p):
                        w[i] = w_prev[i]
                    for j in range(k):
                        a[j] = a_prev[j]
                    t -= 1
                    L, phi, P, gnorm = L_prev, phi_prev, P_prev, g_prev
                else:  # non-finite input (run() rejects it): report an infinite loss
                    L = math.inf
                    phi = phi if math.isfinite(phi) else math.pi
                    P = P if math.isfinite(P) else 0.0
                    gnorm = math.inf
                stop_reason[r] = STOP_DIVERGED
                stop_step[r] = t
                final[r, 0] = L
                final[r, 1] = phi
                final[r, 2] = P
                final[r, 3] = gnorm
                break
            if P > 0.0 and slow_end[r] < 0:
                slow_end[r] = t
            if L <= tol_eps and steps_tol[r] < 0:
                steps_tol[r] = t
            for lv in range(3):  # the last downward crossing of each level (a rise above it forgets it)
                if L > rate_levels[lv] * L_ref:
                    rate_pts[r, 2 * lv] = -1.0
                elif rate_pts[r, 2 * lv] < 0.0:
                    rate_pts[r, 2 * lv] = t
                    rate_pts[r, 2 * lv + 1] = L
            while rec < m and record_steps[rec] == t:
                d2 = 0.0
                for j in range(k):
                    d2 += (a[j] - ast[j]) * (a[j] - ast[j])
                traj[r, rec, 0] = L
                traj[r, rec, 1] = phi
                traj[r, rec, 2] = P
                traj[r, rec, 3] = math.sqrt(d2)
                rec += 1
            while seg < nseg - 1 and t >= seg_end[sr, seg]:
                seg += 1
            reason = -1
            if L > tol_div:
                reason = STOP_DIVERGED
            elif L <= tol_loss:
                reason = STOP_LOSS
            elif gnorm <= tol_grad:
                reason = STOP_GRAD
            elif t >= max_steps:
                reason = STOP_MAX_STEPS
            if reason >= 0:
                stop_reason[r] = reason
                stop_step[r] = t
                final[r, 0] = L
                final[r, 1] = phi
                final[r, 2] = P
                final[r, 3] = gnorm
                break
            L_prev, phi_prev, P_prev, g_prev = L, phi, P, gnorm
            for i in range(p):
                w_prev[i] = w[i]
            for j in range(k):
                a_prev[j] = a[j]
            # One step on the empirical loss.
            nw = _filter_direction(w, normalized, wu)
            if fixed:
                _fixed_gradient(X, FS, wu, ws, a, ast, h, gu, ga)
            else:
                _, s0, s1, s2, s3 = _sgd_gradient(s0, s1, s2, s3, batch_size, wu, ws, a, ast, z, h, gu, ga)
            _filter_gradient(gu, wu, nw, normalized, gw)
            ew = eta_w[sr, seg]
            ea = eta_a[sr, seg]
            sw = noise_w[seg] * sigma_scale
            sa = noise_a[seg] * sigma_scale
            noisy = sw > 0.0 or sa > 0.0
            ww = 0.0
            wws = 0.0
            S = 0.0
            Q = 0.0
            P = 0.0
            for i in range(p):
                x = w[i] - ew * gw[i]
                if noisy:
                    zz, s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
                    x += sw * zz
                w[i] = x
                ww += x * x
                wws += x * ws[i]
            for j in range(k):
                y = a[j] - ea * ga[j]
                if noisy:
                    zz, s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
                    y += sa * zz
                a[j] = y
                S += y
                Q += y * y
                P += y * ast[j]
            if noisy:
                sigma_scale *= noise_decay
            t += 1
        states[r, 0], states[r, 1], states[r, 2], states[r, 3] = s0, s1, s2, s3
        for q in range(rec, m):
            for f in range(4):
                traj[r, q, f] = np.nan


# ---- entry point used by sims.simulate -------------------------------------------------------------------------


def _check_batch(algorithm: str, batch_size, k: int, p: int) -> int:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS} for the finite-sample kernels; got {algorithm!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 for algorithm {algorithm!r}; got {batch_size!r}")
    batch_size = int(batch_size)
    if algorithm == "gd-fixed" and batch_size * (k * p + 1) * 8 > MAX_SAMPLE_BYTES:
        raise ValueError(
            f"batch_size = {batch_size}: a gd-fixed training set of {batch_size} x {k} x {p} doubles needs "
            f"{batch_size * (k * p + 1) * 8 / 1024**3:.1f} GiB per thread (limit {MAX_SAMPLE_BYTES / 1024**3:g} GiB)"
        )
    return batch_size


def _check_state(WT: np.ndarray, A: np.ndarray, WS: np.ndarray, AS: np.ndarray) -> None:
    for name, x in (("WT", WT), ("A", A), ("WS", WS), ("AS", AS)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} must be finite")
    with np.errstate(over="ignore"):
        ww = np.einsum("ij,ij->i", WT, WT)
        aa = np.einsum("ij,ij->i", A, A)
    if not (np.all(np.isfinite(ww)) and np.all(np.isfinite(aa))):
        raise ValueError("WT and A must have finite squared norms")
    if np.any(ww == 0.0):
        raise ValueError("WT: a zero effective filter has no direction")


def run(algorithm, batch_size, WT, A, WS, AS, phi_s, normalized, seg_end, eta_w, eta_a, noise_w, noise_a,
        noise_decay, states, max_steps, loss_tol, grad_tol, eps_steps, divergence_loss, record_steps, traj, final,
        stop_step, stop_reason, slow_end, steps_tol, rate_levels, rate_pts) -> None:
    """Run ``"sgd"`` or ``"gd-fixed"`` on every row of ``WT, A`` (in place), filling the output arrays exactly as
    :func:`sims.kernels.population_gd` does (see the module docstring for the differences)."""
    k, p = A.shape[1], WT.shape[1]
    batch_size = _check_batch(algorithm, batch_size, k, p)
    _check_state(WT, A, WS, AS)
    finite_sample_gd(algorithm == "gd-fixed", np.int64(batch_size), WT, A, WS, AS, phi_s, bool(normalized),
                     seg_end, eta_w, eta_a, noise_w, noise_a, float(noise_decay), states, np.int64(max_steps),
                     float(loss_tol), float(grad_tol), float(eps_steps), float(divergence_loss), record_steps, traj,
                     final, stop_step, stop_reason, slow_end, steps_tol, rate_levels, rate_pts)


# ---- helpers for tests and diagnostics -------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=_FM)
def _minibatch_gradients(WT, A, WS, AS, normalized, batch_size, states, GW, GA, LE):
    R, p = WT.shape
    k = A.shape[1]
    for r in prange(R):
        tr = np.int64(r) if WS.shape[0] > 1 else np.int64(0)
        ws = WS[tr]
        ast = AS[tr]
        s0, s1, s2, s3 = states[r, 0], states[r, 1], states[r, 2], states[r, 3]
        wu = np.empty(p)
        gu = np.empty(p)
        ga = GA[r]
        h = np.empty(k)
        z = np.empty(k * p)
        nw = _filter_direction(WT[r], normalized, wu)
        LE[r], s0, s1, s2, s3 = _sgd_gradient(s0, s1, s2, s3, batch_size, wu, ws, A[r], ast, z, h, gu, ga)
        _filter_gradient(gu, wu, nw, normalized, GW[r])
        states[r, 0], states[r, 1], states[r, 2], states[r, 3] = s0, s1, s2, s3


def minibatch_gradient(WT, A, WS, AS, *, normalized: bool, batch_size: int, states: np.ndarray):
    """One SGD minibatch gradient per row: ``(grad_WT (R, p), grad_a (R, k), empirical loss (R,))``.

    Row ``r`` evaluates the network at ``(WT[r], A[r])`` (broadcast when given one row) on ``batch_size`` fresh
    inputs from ``states[r]`` (advanced in place), exactly as one step of the ``"sgd"`` kernel does.  The
    gradient is wrt the effective filter ``w~`` (equal to the gradient wrt ``w``)."""
    states = np.ascontiguousarray(states, dtype=np.uint64)
    R = states.shape[0]
    WT = np.ascontiguousarray(np.broadcast_to(np.atleast_2d(np.asarray(WT, float)), (R, np.shape(WT)[-1])))
    A = np.ascontiguousarray(np.broadcast_to(np.atleast_2d(np.asarray(A, float)), (R, np.shape(A)[-1])))
    WS = np.ascontiguousarray(np.atleast_2d(np.asarray(WS, float)))
    AS = np.ascontiguousarray(np.atleast_2d(np.asarray(AS, float)))
    batch_size = _check_batch("sgd", batch_size, A.shape[1], WT.shape[1])
    _check_state(WT, A, WS, AS)
    GW = np.empty_like(WT)
    GA = np.empty_like(A)
    LE = np.empty(R)
    _minibatch_gradients(WT, A, WS, AS, bool(normalized), np.int64(batch_size), states, GW, GA, LE)
    return GW, GA, LE


@njit(parallel=True, cache=True, fastmath=_FM)
def _training_losses(WT, A, WS, AS, normalized, n_train, states, LE):
    R, p = WT.shape
    k = A.shape[1]
    for r in prange(R):
        tr = np.int64(r) if WS.shape[0] > 1 else np.int64(0)
        ws = WS[tr]
        ast = AS[tr]
        s0, s1, s2, s3 = states[r, 0], states[r, 1], states[r, 2], states[r, 3]
        X = np.empty((n_train, k * p))
        FS = np.empty(n_train)
        s0, s1, s2, s3 = _draw_training_set(s0, s1, s2, s3, X, ws, ast, FS)
        wu = np.empty(p)
        gu = np.empty(p)
        ga = np.empty(k)
        h = np.empty(k)
        _filter_direction(WT[r], normalized, wu)
        LE[r] = _fixed_gradient(X, FS, wu, ws, A[r], ast, h, gu, ga)


def training_loss(WT, A, WS, AS, *, normalized: bool, batch_size: int, states: np.ndarray) -> np.ndarray:
    """The ``"gd-fixed"`` training loss of each row at ``(WT[r], A[r])``.

    ``states`` must be the streams as they were when the kernel started (the training set is the first thing a
    ``gd-fixed`` run draws); they are not modified."""
    states = np.array(states, dtype=np.uint64)  # a copy: the training set is regenerated, not consumed
    R = states.shape[0]
    WT = np.ascontiguousarray(np.broadcast_to(np.atleast_2d(np.asarray(WT, float)), (R, np.shape(WT)[-1])))
    A = np.ascontiguousarray(np.broadcast_to(np.atleast_2d(np.asarray(A, float)), (R, np.shape(A)[-1])))
    WS = np.ascontiguousarray(np.atleast_2d(np.asarray(WS, float)))
    AS = np.ascontiguousarray(np.atleast_2d(np.asarray(AS, float)))
    batch_size = _check_batch("gd-fixed", batch_size, A.shape[1], WT.shape[1])
    _check_state(WT, A, WS, AS)
    LE = np.empty(R)
    _training_losses(WT, A, WS, AS, bool(normalized), np.int64(batch_size), states, LE)
    return LE
