"""numba kernels of deep linear expansions: factor initialization, ``+Init`` pretraining of the nonlinear
counterpart, training of the factors (population GD or online SGD), and the end-to-end dynamics.

**Storage.**  The factors of one run live in one row of a flat ``(R, size)`` buffer ``F``.  A *group* (the
filter ``w``, or the second layer ``a``) of depth ``N`` has dims ``d_0 = m, d_1, ..., d_N = 1`` and factors
``W_j`` of shape ``(d_j, d_{j-1})``, row-major at ``F[r, off[j-1]:]``; ``off`` (N,), ``dim`` (N + 1,) and ``uoff``
(N + 1,) (offsets of length-``d_j`` vectors in a chain buffer of size ``sum(d)``) describe it.  An empty ``off``
means the group is not expanded.

**One GD step on the factors** (exact chain rule through the contraction ``E = W_N ... W_1``):

- backward chain ``u_N = 1``, ``u_{j-1} = u_j W_j`` gives every ``u_j = W_N ... W_{j+1}`` and ``u_0 = E``;
- the closed-form gradient ``g`` of the population loss with respect to the contracted weight (as in
  :mod:`sims.kernels`; for SGD the minibatch gradient) starts the forward chain ``z_1 = g``, ``z_{j+1} = W_j z_j``;
- ``dL/dW_j = u_j z_j^T`` (rank one), so ``W_j <- W_j - eta u_j z_j^T``; the update runs from ``j = N`` down and
  accumulates the next step's chain ``u'_{j-1} = u'_j W'_j`` in the same pass.

Every run is advanced start-to-stop by one thread and draws random numbers only from its own stream, so results
are bit-identical for any thread count or split of runs.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sims.engines import closed_forms as cf
from sims.engines.common import angle_from, over_runs
from sims.engines.rng import fill_normal, fill_normal_zig, normal_pair
from theory import closed_forms as _tcf

MODE_GD, MODE_SGD = 0, 1
INIT_BALANCED, INIT_GAUSSIAN, INIT_ZERO_LAST, INIT_ZERO = 0, 1, 2, 3

_PI = math.pi
_FM = {"reassoc", "contract", "arcp"}

end_to_end_coefficients = njit(cache=True)(_tcf.end_to_end)


# ---- chains ----------------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=_FM)
def chain_backward(F, off, dim, uoff, u):
    """``u_N = 1``, ``u_{j-1} = u_j W_j``: ``u[uoff[j]:uoff[j] + dim[j]] = W_N ... W_{j+1}``, ``u_0`` = the product."""
    N = off.shape[0]
    u[uoff[N]] = 1.0
    for j in range(N, 0, -1):
        rows = dim[j]
        cols = dim[j - 1]
        base = off[j - 1]
        uo = uoff[j]
        ui = uoff[j - 1]
        for i in range(cols):
            u[ui + i] = 0.0
        for row in range(rows):
            ul = u[uo + row]
            b = base + row * cols
            for i in range(cols):
                u[ui + i] += ul * F[b + i]


@njit(cache=True, fastmath=_FM)
def chain_forward(F, off, dim, uoff, g, u, z):
    """``z_1 = g``, ``z_{j+1} = W_j z_j`` (``z_j`` at ``uoff[j-1]``); returns ``sum_j ||u_j||^2 ||z_j||^2``, the
    squared norm of the gradient with respect to all factors (``dL/dW_j = u_j z_j^T``)."""
    N = off.shape[0]
    for i in range(dim[0]):
        z[uoff[0] + i] = g[i]
    total = 0.0
    for j in range(1, N + 1):
        rows = dim[j]
        cols = dim[j - 1]
        zi = uoff[j - 1]
        zz = 0.0
        for i in range(cols):
            zz += z[zi + i] * z[zi + i]
        uu = 0.0
        for row in range(rows):
            uu += u[uoff[j] + row] * u[uoff[j] + row]
        total += uu * zz
        if j < N:
            base = off[j - 1]
            zo = uoff[j]
            for row in range(rows):
                s = 0.0
                b = base + row * cols
                for i in range(cols):
                    s += F[b + i] * z[zi + i]
                z[zo + row] = s
    return total


@njit(cache=True, fastmath=_FM)
def chain_update(F, off, dim, uoff, u, un, z, eta, sigma, st):
    """``W_j <- W_j - eta u_j z_j^T (+ sigma * noise)`` from ``j = N`` down, accumulating ``un`` (the next
    step's backward chain, so ``un_0`` is the updated product).  Noise entries are drawn per factor in row-major
    order, in pairs that restart at every factor."""
    N = off.shape[0]
    un[uoff[N]] = 1.0
    z0 = 0.0
    z1 = 0.0
    for j in range(N, 0, -1):
        rows = dim[j]
        cols = dim[j - 1]
        base = off[j - 1]
        uo = uoff[j]
        ui = uoff[j - 1]
        for i in range(cols):
            un[ui + i] = 0.0
        q = 0
        for row in range(rows):
            cl = eta * u[uo + row]
            unl = un[uo + row]
            b = base + row * cols
            for i in range(cols):
                x = F[b + i] - cl * z[ui + i]
                if sigma > 0.0:
                    if q % 2 == 0:
                        z0, z1 = normal_pair(st)
                    x += sigma * (z0 if q % 2 == 0 else z1)
                    q += 1
                F[b + i] = x
                un[ui + i] += unl * x


# ---- initialization --------------------------------------------------------------------------------------------


@njit(cache=True)
def _init_group(Fr, off, dim, code, scale, target, st):
    N = off.shape[0]
    if code == INIT_BALANCED:
        m = dim[0]
        nu = 0.0
        for i in range(m):
            nu += target[i] * target[i]
        nu = math.sqrt(nu)
        if N == 1:
            for i in range(m):
                Fr[off[0] + i] = target[i]
            return
        if nu == 0.0:
            for j in range(N):
                for q in range(dim[j + 1] * dim[j]):
                    Fr[off[j] + q] = 0.0
            return
        s = nu ** (1.0 / N)
        # rank-one chain W_j = s q_j q_{j-1}^T, q_0 = target / nu, q_N = 1, q_1..q_{N-1} uniform unit vectors
        prev = np.empty(m)
        for i in range(m):
            prev[i] = target[i] / nu
        for j in range(1, N + 1):
            rows = dim[j]
            cur = np.empty(rows)
            if j == N:
                cur[0] = 1.0
            else:
                while True:
                    fill_normal(st, cur)
                    nn = 0.0
                    for row in range(rows):
                        nn += cur[row] * cur[row]
                    if nn > 0.0:
                        break
                nn = math.sqrt(nn)
                for row in range(rows):
                    cur[row] /= nn
            cols = dim[j - 1]
            for row in range(rows):
                for i in range(cols):
                    Fr[off[j - 1] + row * cols + i] = s * cur[row] * prev[i]
            prev = cur
        return
    for j in range(1, N + 1):
        rows = dim[j]
        cols = dim[j - 1]
        blk = Fr[off[j - 1] : off[j - 1] + rows * cols]
        zero = code == INIT_ZERO or (code == INIT_ZERO_LAST and j == N)
        if zero:
            for q in range(rows * cols):
                blk[q] = 0.0
        else:
            fill_normal(st, blk)
            sd = scale / math.sqrt(cols)
            for q in range(rows * cols):
                blk[q] *= sd


@njit(parallel=True, cache=True)
def init_factors(F, w_off, w_dim, a_off, a_dim, code_w, code_a, scale_w, scale_a, W0, A0, states):
    """Fill every run's factors (``W0``/``A0``: the end-to-end targets of the balanced init), drawing from the
    run's own stream: the ``w`` group first, then ``a``."""
    R = F.shape[0]
    for r in prange(R):
        st = states[r]
        if w_off.shape[0] > 0:
            _init_group(F[r], w_off, w_dim, code_w, scale_w, W0[r], st)
        if a_off.shape[0] > 0:
            _init_group(F[r], a_off, a_dim, code_a, scale_a, A0[r], st)


@njit(parallel=True, cache=True)
def contract_all(F, off, dim, uoff, out):
    """``out[r] = W_N ... W_1`` of the group for every run."""
    R = F.shape[0]
    for r in prange(R):
        u = np.empty(uoff[-1] + dim[-1])
        chain_backward(F[r], off, dim, uoff, u)
        for i in range(dim[0]):
            out[r, i] = u[uoff[0] + i]


# ---- the linear network's minibatch gradient (online SGD) ------------------------------------------------------


@njit(cache=True, fastmath=_FM)
def minibatch_gradient(st, batch, w, n, normalized, ws, a, ast, zb, h, gw, ga):
    """Gradient of ``0.5 mean_b (f(Z_b) - f*(Z_b))^2`` over ``batch`` fresh inputs drawn from ``st`` (Ziggurat),
    with respect to the effective filter ``w`` (norm ``n``) and ``a``; writes ``gw, ga`` and returns the loss."""
    k = a.shape[0]
    p = w.shape[0]
    inv_n = 1.0 / n if normalized else 1.0
    for i in range(p):
        gw[i] = 0.0
    for j in range(k):
        ga[j] = 0.0
    lsum = 0.0
    for _ in range(batch):
        fill_normal_zig(st, zb)
        f = 0.0
        fs = 0.0
        for j in range(k):
            hu = 0.0
            hs = 0.0
            for i in range(p):
                zi = zb[j * p + i]
                hu += w[i] * zi
                hs += ws[i] * zi
            hu *= inv_n
            h[j] = hu
            f += a[j] * max(hu, 0.0)
            fs += ast[j] * max(hs, 0.0)
        res = f - fs
        lsum += res * res
        for j in range(k):
            if h[j] > 0.0:
                ga[j] += res * h[j]
                c = res * a[j]
                for i in range(p):
                    gw[i] += c * zb[j * p + i]
    inv = 1.0 / batch
    for j in range(k):
        ga[j] *= inv
    for i in range(p):  # scale, then sum in a separate loop: a loop that both stores and sums is vectorized
        gw[i] *= inv  # behind a runtime alias check, so its rounding would depend on the heap layout
    d = 0.0
    for i in range(p):
        d += gw[i] * w[i]
    if normalized:  # d/dw of u.z with u = w/n: (I - u u^T) / n
        for i in range(p):
            gw[i] = (gw[i] - d * w[i] * inv_n * inv_n) * inv_n
    return 0.5 * lsum * inv


# ---- training the factors --------------------------------------------------------------------------------------


# ---- the end-to-end dynamics -----------------------------------------------------------------------------------


@njit(cache=True, fastmath=_FM)
def _precondition(x, g, depth, out):
    """``out = c_perp g_perp + c_par g_par`` (split along ``x``) with the generated coefficients."""
    nn = 0.0
    for i in range(x.shape[0]):
        nn += x[i] * x[i]
    nu = math.sqrt(nn)
    c_perp, c_par = end_to_end_coefficients(nu, depth)
    d = 0.0
    if nu > 0.0:
        for i in range(x.shape[0]):
            d += g[i] * x[i]
        d /= nn
    for i in range(x.shape[0]):
        gpar = d * x[i]
        out[i] = c_perp * (g[i] - gpar) + c_par * gpar


def end_to_end_gd(W, A, V, WS, AS, normalized, expand, sched, max_steps, record, *, threads=None):
    """Euler steps of the end-to-end dynamics of balanced factorizations on the contracted weights: ``W`` (R, p)
    residual filter (``w~ = V + W``), ``A`` (R, k), updated in place.  An expanded group moves by ``-eta (c_perp
    g_perp + c_par g_par)`` (:func:`theory.closed_forms.end_to_end`), a plain one by ``-eta g``; ``sched =
    (seg_end, eta_w, eta_a)`` as in a resolved schedule.  ``record = (record_steps, wrec, lrec)``: records
    ``(w, a)`` and the loss at ``record_steps`` into ``wrec`` (R, m, p + k) and ``lrec`` (R, m); stops early (NaN
    padding) only on a non-finite state.  ``expand = (exp_w, exp_a, depth)``: which groups are expanded, and the
    depth.  Runs are spread over threads by :func:`sims.engines.common.run_chunks` (not ``prange``; see there)."""
    over_runs(_end_to_end_runs, W.shape[0], W, A, V, WS, AS, normalized, expand, sched, max_steps, record,
              threads=threads)


@njit(cache=True, nogil=True, fastmath=_FM)
def _end_to_end_runs(span, W, A, V, WS, AS, normalized, expand, sched, max_steps, record):
    """:func:`end_to_end_gd` on runs ``span = (lo, hi)``."""
    exp_w, exp_a, depth = expand

    seg_end, eta_w, eta_a = sched
    record_steps, wrec, lrec = record
    R, p = W.shape
    k = A.shape[1]
    nseg = seg_end.shape[1]
    m = record_steps.shape[0]
    for r in range(span[0], span[1]):
        ri = np.int64(r)
        tr = ri if WS.shape[0] > 1 else np.int64(0)
        sr = ri if seg_end.shape[0] > 1 else np.int64(0)
        e = W[r]
        a = A[r]
        ws = WS[tr]
        ast = AS[tr]
        wt = np.empty(p)
        gw = np.empty(p)
        ga = np.empty(k)
        dw = np.empty(p)
        da = np.empty(k)
        ws2 = 0.0
        Ss = 0.0
        Qs = 0.0
        for i in range(p):
            ws2 += ws[i] * ws[i]
        for j in range(k):
            Ss += ast[j]
            Qs += ast[j] * ast[j]
        seg = 0
        rec = 0
        t = 0
        while True:
            ww = 0.0
            wws = 0.0
            for i in range(p):
                wt[i] = V[i] + e[i]
                ww += wt[i] * wt[i]
                wws += wt[i] * ws[i]
            S = 0.0
            Q = 0.0
            P = 0.0
            for j in range(k):
                S += a[j]
                Q += a[j] * a[j]
                P += a[j] * ast[j]
            n = math.sqrt(ww)
            phi, c, s = angle_from(n, wws, ws2)
            rho = 1.0 if normalized else n
            L = cf.loss(rho, phi, c, s, S, Q, P, Ss, Qs)
            while rec < m and record_steps[rec] == t:
                for i in range(p):
                    wrec[r, rec, i] = e[i]
                for j in range(k):
                    wrec[r, rec, p + j] = a[j]
                lrec[r, rec] = L
                rec += 1
            if t >= max_steps or not math.isfinite(L):
                break
            while seg < nseg - 1 and t >= seg_end[sr, seg]:
                seg += 1
            L_rho, L_c, L_S, L_Q, L_P = cf.gradient(rho, phi, c, s, S, Q, P, Ss, Qs)
            cw = -L_c * (wws / n) / (n * n)
            if not normalized:
                cw += L_rho / n
            cs = L_c / n
            for i in range(p):
                gw[i] = cw * wt[i] + cs * ws[i]
            for j in range(k):
                ga[j] = L_S + 2.0 * L_Q * a[j] + L_P * ast[j]
            if exp_w:
                _precondition(e, gw, depth, dw)
            else:
                for i in range(p):
                    dw[i] = gw[i]
            if exp_a:
                _precondition(a, ga, depth, da)
            else:
                for j in range(k):
                    da[j] = ga[j]
            ew = eta_w[sr, seg]
            ea = eta_a[sr, seg]
            for i in range(p):
                e[i] -= ew * dw[i]
            for j in range(k):
                a[j] -= ea * da[j]
            t += 1
        for q in range(rec, m):
            lrec[r, q] = np.nan
            for i in range(p + k):
                wrec[r, q, i] = np.nan


# ---- ExpandNets' "+Init": pretraining the nonlinear counterpart ------------------------------------------------
#
# The nonlinear counterpart puts a ReLU between consecutive factors of an expanded group: the w-branch maps a patch
# z to b(z) = W_N relu(W_{N-1} ... relu(W_1 z)), the a-branch maps the hidden vector x in R^k to
# A_N relu(... relu(A_1 x)).  A pre-activation s = v.z + b(z) (ResNet; b(z) for the CNN) is normalized to unit
# second moment over the minibatch (RMS normalization, the finite-batch version of the linear model's ||w~||), so
# y = s / sqrt(mean s^2); the unnormalized CNN uses y = s.  Online SGD with fresh Gaussian minibatches.


@njit(cache=True, fastmath=_FM)
def mlp_forward(F, off, dim, uoff, x, xo, pre):
    """Forward through a group with ReLU between factors; the input is ``x[xo:xo + dim[0]]``; stores the
    pre-activation of layer ``j`` at ``pre[uoff[j]:]`` and returns the (scalar) output."""
    N = off.shape[0]
    for j in range(1, N + 1):
        rows = dim[j]
        cols = dim[j - 1]
        base = off[j - 1]
        pi = uoff[j - 1]
        for row in range(rows):
            s = 0.0
            b = base + row * cols
            if j == 1:
                for i in range(cols):
                    s += F[b + i] * x[xo + i]
            else:
                for i in range(cols):
                    s += F[b + i] * max(pre[pi + i], 0.0)
            pre[uoff[j] + row] = s
    return pre[uoff[N]]


@njit(cache=True, fastmath=_FM)
def mlp_backward(F, off, dim, uoff, x, xo, pre, dout, delta, G, dx, want_dx):
    """Backward of :func:`mlp_forward` for the output gradient ``dout``: adds the factor gradients to ``G`` (same
    layout as ``F``) and, if ``want_dx``, writes the input gradient to ``dx``."""
    N = off.shape[0]
    delta[uoff[N]] = dout
    for j in range(N, 0, -1):
        rows = dim[j]
        cols = dim[j - 1]
        base = off[j - 1]
        do = uoff[j]
        pi = uoff[j - 1]
        for row in range(rows):
            dl = delta[do + row]
            b = base + row * cols
            if j == 1:
                for i in range(cols):
                    G[b + i] += dl * x[xo + i]
            else:
                for i in range(cols):
                    G[b + i] += dl * max(pre[pi + i], 0.0)
        if j > 1 or want_dx:
            for i in range(cols):
                acc = 0.0
                for row in range(rows):
                    acc += F[base + row * cols + i] * delta[do + row]
                if j > 1:
                    delta[pi + i] = acc if pre[pi + i] > 0.0 else 0.0
                else:
                    dx[i] = acc


def pretrain_nonlinear(F, w_group, a_group, W, A, V, WS, AS, normalized, sgd, states, done, *, threads=None):
    """SGD steps of the nonlinear counterpart on every run (factors ``F``, plain residual filter ``W`` and
    plain ``A`` in place; a plain layer is trained too); ``w_group``, ``a_group``: ``(off, dim, uoff)`` of the
    groups (:class:`sims.methods.expansion.Layout`); ``sgd = (steps, batch, eta_w, eta_a)``.  A step whose loss or
    gradient is not finite is not applied and ends the run's pretraining; ``done[r]`` is the number of steps
    applied.  Runs are spread over threads by :func:`sims.engines.common.run_chunks` (not a ``prange`` loop,
    whose cached copy rounded differently from the freshly compiled one; see there)."""
    over_runs(_pretrain_runs, F.shape[0], F, (w_group, a_group), (W, A, V), (WS, AS), normalized, sgd, states, done,
              threads=threads)


@njit(cache=True, nogil=True, fastmath=_FM)
def _pretrain_runs(span, F, groups, plain, teacher, normalized, sgd, states, done):
    """:func:`pretrain_nonlinear` on runs ``span = (lo, hi)``; ``groups = (w_group, a_group)``, ``plain = (W, A,
    V)``, ``teacher = (WS, AS)``."""
    (w_off, w_dim, w_uoff), (a_off, a_dim, a_uoff) = groups
    W, A, V = plain
    WS, AS = teacher
    steps, batch, eta_w, eta_a = sgd
    R, p = W.shape
    k = A.shape[1]
    size = F.shape[1]
    ew_exp = w_off.shape[0] > 0
    ea_exp = a_off.shape[0] > 0
    w_end = a_off[0] if ea_exp else size  # the w factors come first
    for r in range(span[0], span[1]):
        ri = np.int64(r)
        tr = ri if WS.shape[0] > 1 else np.int64(0)
        Fr = F[r]
        wr = W[r]
        ar = A[r]
        ws = WS[tr]
        ast = AS[tr]
        st = states[r]
        nw = w_uoff[-1] + w_dim[-1] if ew_exp else 0
        na = a_uoff[-1] + a_dim[-1] if ea_exp else 0
        pre_w, del_w, pre_a, del_a = np.empty(nw), np.empty(nw), np.empty(na), np.empty(na)
        Zb, sb, gy, fsb = np.empty(batch * k * p), np.empty(batch * k), np.empty(batch * k), np.empty(batch)
        xk, dx, G, gW, gA, wt = np.empty(k), np.empty(k), np.empty(size), np.empty(p), np.empty(k), np.empty(p)
        done[r] = 0
        for t in range(steps):
            fill_normal_zig(st, Zb)
            for i in range(p):
                wt[i] = V[i] + wr[i]
            ss = 0.0
            for b in range(batch):
                fs = 0.0
                for j in range(k):
                    zo = (b * k + j) * p
                    hs = 0.0
                    sv = 0.0
                    for i in range(p):
                        hs += ws[i] * Zb[zo + i]
                    fs += ast[j] * max(hs, 0.0)
                    if ew_exp:
                        for i in range(p):
                            sv += V[i] * Zb[zo + i]
                        sv += mlp_forward(Fr, w_off, w_dim, w_uoff, Zb, zo, pre_w)
                    else:
                        for i in range(p):
                            sv += wt[i] * Zb[zo + i]
                    sb[b * k + j] = sv
                    ss += sv * sv
                fsb[b] = fs
            rho = math.sqrt(ss / (batch * k)) if normalized else 1.0
            if not rho > 0.0:
                rho = 1.0
            for q in range(size):
                G[q] = 0.0
            for i in range(p):
                gW[i] = 0.0
            for j in range(k):
                gA[j] = 0.0
            lsum = 0.0
            for b in range(batch):
                for j in range(k):
                    xk[j] = max(sb[b * k + j] / rho, 0.0)
                if ea_exp:
                    out = mlp_forward(Fr, a_off, a_dim, a_uoff, xk, 0, pre_a)
                else:
                    out = 0.0
                    for j in range(k):
                        out += ar[j] * xk[j]
                res = out - fsb[b]
                lsum += res * res
                dout = res / batch
                if ea_exp:
                    mlp_backward(Fr, a_off, a_dim, a_uoff, xk, 0, pre_a, dout, del_a, G, dx, True)
                else:
                    for j in range(k):
                        gA[j] += dout * xk[j]
                        dx[j] = dout * ar[j]
                for j in range(k):
                    gy[b * k + j] = dx[j] if sb[b * k + j] > 0.0 else 0.0
            if normalized:  # y = s / rho with rho^2 = mean s^2: ds_i = (gy_i - y_i mean(gy y)) / rho
                mm = 0.0
                for q in range(batch * k):
                    mm += gy[q] * sb[q] / rho
                mm /= batch * k
                for q in range(batch * k):
                    gy[q] = (gy[q] - sb[q] / rho * mm) / rho
            for b in range(batch):
                for j in range(k):
                    zo = (b * k + j) * p
                    d = gy[b * k + j]
                    if ew_exp:
                        mlp_forward(Fr, w_off, w_dim, w_uoff, Zb, zo, pre_w)
                        mlp_backward(Fr, w_off, w_dim, w_uoff, Zb, zo, pre_w, d, del_w, G, dx, False)
                    else:
                        for i in range(p):
                            gW[i] += d * Zb[zo + i]
            ok = math.isfinite(lsum)
            for q in range(size):
                ok = ok and math.isfinite(G[q])
            for i in range(p):
                ok = ok and math.isfinite(gW[i])
            for j in range(k):
                ok = ok and math.isfinite(gA[j])
            if not ok:
                break
            for q in range(size):
                Fr[q] -= (eta_w if q < w_end else eta_a) * G[q]
            if not ew_exp:
                for i in range(p):
                    wr[i] -= eta_w * gW[i]
            if not ea_exp:
                for j in range(k):
                    ar[j] -= eta_a * gA[j]
            done[r] = t + 1
