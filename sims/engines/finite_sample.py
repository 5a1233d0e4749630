"""Empirical gradients of finite-sample training: online SGD and GD on a fixed training set.

These are the compiled pieces the engine :mod:`sims.engines.sgd` steps with (the driver owns the loop, the stops
and the recording).  The step uses the gradient of the *empirical* loss
``0.5 mean_b (f(Z_b; w, a) - f(Z_b; w*, a*))^2``:

- ``"sgd"``: a fresh minibatch of ``batch_size`` inputs ``Z_b`` (``k x p``, i.i.d. N(0, 1)) every step;
- ``"gd-fixed"``: one training set of ``batch_size`` inputs drawn at the start, the full-batch gradient every step.

The network is ``f(Z; w, a) = sum_j a_j relu(u . Z_j)`` with ``u = w~ / ||w~||`` (normalized models; ``w~`` is the
effective filter ``w + v`` of the ResNet or ``w`` of the CNN, and the gradient wrt ``w~`` equals the gradient
wrt ``w``), or ``relu(w . Z_j)`` (unnormalized).  With ``g_u = mean_b r_b sum_j a_j 1[u.Z_bj > 0] Z_bj`` and
``r_b = f - f*``, the filter gradient is ``(I - u u^T) g_u / ||w~||`` (normalized) or ``g_u`` (unnormalized), and
``d/da_j = mean_b r_b relu(u.Z_bj)``.

**Random numbers.**  Each run draws everything (minibatches, the training set, perturbation noise) from its own
xoshiro256** stream with the Ziggurat sampler of :mod:`sims.engines.rng` (~2.3 ns per normal), held in four scalars
while
a run is active.  ``sampler="projected"`` (SGD only, see :func:`_projected_gradient`) draws the exact law of the
minibatch gradient from ``2 B k + p`` normals instead of ``B k p``.

**Memory.**  Inputs are processed in blocks of at most ``CHUNK_ELEMS`` doubles (128 KiB), so SGD needs per thread
one block plus ``O(chunk k + p + k)`` work vectors, whatever the batch size.  ``gd-fixed`` holds its run's training
set (``batch_size x k x p`` doubles plus the teacher outputs) in its thread's work space, so at most one set per
thread is alive (never ``R x n x k x p``); :func:`engine` refuses sets above ``MAX_SAMPLE_BYTES``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from sims.engines.common import inlined, over_runs
from sims.engines.rng import zig_normal

ALGORITHMS = ("sgd", "gd-fixed")
#: Largest training set ``gd-fixed`` holds per thread (bytes); above it ``run`` raises instead of swapping.
MAX_SAMPLE_BYTES = 2 * 1024**3

_FM = {"reassoc", "contract", "arcp"}


# ---- the empirical gradient ------------------------------------------------------------------------------------
#
# Inputs are processed in blocks of at most ``chunk_samples(...)`` samples, stored "feature-major": a block is a
# C-contiguous ``(p, nb k)`` matrix whose column ``j nb + b`` is patch ``j`` of sample ``b`` (the entries are i.i.d.,
# so the layout is only a convention).  Then every inner loop runs over the ``nb k`` columns with unit stride and
# no data-dependent branch (the ReLU gates are selects), which LLVM vectorizes (AVX2/AVX-512): the pre-activations
# ``h = u^T Z`` and ``h* = w*^T Z`` are axpys, and ``g_u = Z c`` is a long dot product per feature.

#: Doubles per block of inputs (128 KiB: stays in L2 with the work vectors).  The block size decides which draw
#: of the stream lands in which (sample, patch, feature): changing it keeps the law and changes the numbers.
CHUNK_ELEMS = 16384


def chunk_samples(batch_size: int, k: int, p: int, projected: bool = False) -> int:
    """Samples per block: ``batch_size`` capped so that a block holds at most ``CHUNK_ELEMS`` doubles (``k p`` per
    sample; ``k`` per sample for the projected sampler, which never stores a whole input)."""
    return max(1, min(int(batch_size), CHUNK_ELEMS // (k if projected else k * p)))


@njit(cache=True, fastmath=_FM)
def _block_preact(Z, nrow, w, h):
    """``h[q] = w . Z[:, q]`` for the ``nrow`` columns of the block ``Z`` (p, nrow)."""
    for q in range(nrow):
        h[q] = 0.0
    for i in range(Z.shape[0]):
        zi = Z[i]
        wi = w[i]
        for q in range(nrow):
            h[q] += wi * zi[q]


@njit(cache=True, fastmath=_FM)
def _relu_outputs(h, nb, a, out):
    """``out[b] += sum_j a_j relu(h[j nb + b])``."""
    for j in range(a.shape[0]):
        aj = a[j]
        off = j * nb
        for b in range(nb):
            out[b] += aj * max(h[off + b], 0.0)


@njit(cache=True, fastmath=_FM)
def _block_backward(Z, nb, a, h, res, cv, gu, ga):
    """Add ``sum_b res_b d f(Z_b)`` to ``(gu, ga)``: ``ga_j += sum_b res_b relu(h_bj)``,
    ``gu += sum_{b,j} res_b a_j 1[h_bj > 0] Z_bj``.  Returns ``sum_b res_b^2``."""
    k = a.shape[0]
    nrow = nb * k
    lsum = 0.0
    for b in range(nb):
        lsum += res[b] * res[b]
    for j in range(k):
        aj = a[j]
        off = j * nb
        for b in range(nb):  # stores only; the sum is a separate loop (see sims.engines.common.run_workspace)
            cv[off + b] = res[b] * aj if h[off + b] > 0.0 else 0.0
        s = 0.0
        for b in range(nb):
            s += res[b] * max(h[off + b], 0.0)
        ga[j] += s
    for i in range(Z.shape[0]):
        zi = Z[i]
        s = 0.0
        for q in range(nrow):
            s += cv[q] * zi[q]
        gu[i] += s
    return lsum


@njit(cache=True, fastmath=_FM)
def _fill_block(s0, s1, s2, s3, buf, n):
    """``buf[:n]`` <- standard normals (Ziggurat)."""
    for q in range(n):
        buf[q], s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
    return s0, s1, s2, s3


@njit(cache=True, fastmath=_FM)
def _zero(x):
    for i in range(x.shape[0]):
        x[i] = 0.0


@njit(cache=True, fastmath=_FM)
def _scale(x, c):
    for i in range(x.shape[0]):
        x[i] *= c


@njit(cache=True, fastmath=_FM)
def _sgd_gradient(st, n_batch, chunk, wu, ws, a, ast, zb, blk, gu, ga):
    """Minibatch gradient ``(gu, ga)`` (wrt ``wu`` and ``a``, mean over the batch) of ``n_batch`` fresh inputs
    drawn from the stream ``st = (s0, s1, s2, s3)`` in blocks of ``chunk`` samples into ``zb``, with the block work
    vectors ``blk = (h, hs, cv, fb, fsb)``; returns ``(loss, st)`` with ``loss`` the minibatch loss
    ``0.5 mean_b (f - f*)^2`` and ``st`` the advanced stream."""
    s0, s1, s2, s3 = st
    h, hs, cv, fb, fsb = blk
    k = a.shape[0]
    p = wu.shape[0]
    _zero(gu)
    _zero(ga)
    lsum = 0.0
    done = 0
    while done < n_batch:
        nb = min(chunk, n_batch - done)
        nrow = nb * k
        s0, s1, s2, s3 = _fill_block(s0, s1, s2, s3, zb, nrow * p)
        Z = zb[: nrow * p].reshape(p, nrow)
        _block_preact(Z, nrow, wu, h)
        _block_preact(Z, nrow, ws, hs)
        for b in range(nb):
            fb[b] = 0.0
            fsb[b] = 0.0
        _relu_outputs(h, nb, a, fb)
        _relu_outputs(hs, nb, ast, fsb)
        for b in range(nb):
            fb[b] -= fsb[b]
        lsum += _block_backward(Z, nb, a, h, fb, cv, gu, ga)
        done += nb
    inv = 1.0 / n_batch
    _scale(gu, inv)
    _scale(ga, inv)
    return 0.5 * lsum * inv, (s0, s1, s2, s3)


@njit(cache=True, fastmath=_FM)
def _projected_gradient(st, n_batch, chunk, wu, ws, a, ast, e2, xi, blk, gu, ga):
    """Same law as :func:`_sgd_gradient`, sampled through the 2-D projection (``sampler="projected"``).

    ``f`` and ``f*`` see an input patch only through ``x1 = e1.Z_bj`` and ``x2 = e2.Z_bj``, with ``e1 = u`` and
    ``e2`` the unit vector along ``w* - (u.w*) u`` (absent when ``w* = +-u`` or ``p = 1``), and ``x1, x2`` are
    i.i.d. N(0, 1).  Given them, the rest ``(I - E E^T) Z_bj`` is an independent N(0, I - E E^T), so
    ``sum_{b,j} c_bj Z_bj = sum c_bj (x1 e1 + x2 e2) + ||c|| (I - E E^T) xi`` with one ``xi ~ N(0, I_p)``:
    the minibatch gradient has exactly the law of the full sampler's, from ``2 B k + p`` normals instead of
    ``B k p``.  ``e2, xi``: work vectors (p,); the other arguments as :func:`_sgd_gradient`'s."""
    s0, s1, s2, s3 = st
    h, hs, cv, fb, fsb = blk
    k = a.shape[0]
    p = wu.shape[0]
    nu2 = 0.0
    c = 0.0
    for i in range(p):
        nu2 += wu[i] * wu[i]
        c += wu[i] * ws[i]
    nu = math.sqrt(nu2)
    c /= nu
    # e2: Gram-Schmidt of w* against e1 = u (twice, for orthogonality when w* is nearly parallel to u)
    s = 0.0
    for i in range(p):
        e2[i] = ws[i] - c * wu[i] / nu
    d = 0.0
    for i in range(p):
        d += e2[i] * wu[i]
    d /= nu
    for i in range(p):
        e2[i] -= d * wu[i] / nu
    for i in range(p):
        s += e2[i] * e2[i]
    s = math.sqrt(s)
    two_d = s > 0.0 and p > 1  # in 1-D, w* = +-u and there is no e2
    if two_d:
        for i in range(p):
            e2[i] /= s
        s = 0.0
        for i in range(p):
            s += e2[i] * ws[i]
    else:
        s = 0.0
    # the teacher's coefficients in the basis: w*.e1 = c, w*.e2 = s; the student's: wu.e1 = nu, wu.e2 = 0
    _zero(ga)
    lsum = 0.0
    g1 = 0.0
    g2 = 0.0
    cc = 0.0
    done = 0
    while done < n_batch:
        nb = min(chunk, n_batch - done)
        nrow = nb * k
        for q in range(nrow):
            x1, s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
            x2 = 0.0
            if two_d:
                x2, s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
            h[q] = nu * x1
            hs[q] = c * x1 + s * x2
            cv[q] = x2  # kept until the coefficients are known
        for b in range(nb):
            fb[b] = 0.0
            fsb[b] = 0.0
        _relu_outputs(h, nb, a, fb)
        _relu_outputs(hs, nb, ast, fsb)
        for b in range(nb):
            fb[b] -= fsb[b]
        for b in range(nb):
            lsum += fb[b] * fb[b]
        for j in range(k):
            aj = a[j]
            off = j * nb
            sa = 0.0
            for b in range(nb):
                hq = h[off + b]
                sa += fb[b] * max(hq, 0.0)
                coef = fb[b] * aj if hq > 0.0 else 0.0
                g1 += coef * (hq / nu)
                g2 += coef * cv[off + b]
                cc += coef * coef
            ga[j] += sa
        done += nb
    # the part orthogonal to span{e1, e2}: ||c|| (I - E E^T) xi
    for i in range(p):
        xi[i], s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
    d1 = 0.0
    d2 = 0.0
    for i in range(p):
        d1 += xi[i] * wu[i]
        d2 += xi[i] * e2[i]
    d1 /= nu
    if not two_d:
        d2 = 0.0
    sc = math.sqrt(cc)
    for i in range(p):
        e1i = wu[i] / nu
        orth = xi[i] - d1 * e1i - (d2 * e2[i] if two_d else 0.0)
        gu[i] = g1 * e1i + (g2 * e2[i] if two_d else 0.0) + sc * orth
    inv = 1.0 / n_batch
    _scale(gu, inv)
    _scale(ga, inv)
    return 0.5 * lsum * inv, (s0, s1, s2, s3)


@njit(cache=True, fastmath=_FM)
def _draw_training_set(s0, s1, s2, s3, chunk, X, FS, ws, ast, hs):
    """Fill the training set ``X`` (flat, ``n k p``, in blocks of ``chunk`` samples) with standard normals and
    ``FS`` (n,) with the teacher outputs."""
    n = FS.shape[0]
    k = ast.shape[0]
    p = ws.shape[0]
    kp = k * p
    done = 0
    while done < n:
        nb = min(chunk, n - done)
        nrow = nb * k
        blk = X[done * kp : (done + nb) * kp]
        s0, s1, s2, s3 = _fill_block(s0, s1, s2, s3, blk, nrow * p)
        Z = blk.reshape(p, nrow)
        _block_preact(Z, nrow, ws, hs)
        fsb = FS[done : done + nb]
        for b in range(nb):
            fsb[b] = 0.0
        _relu_outputs(hs, nb, ast, fsb)
        done += nb
    return s0, s1, s2, s3


@njit(cache=True, fastmath=_FM)
def _fixed_gradient(chunk, X, FS, wu, a, h, cv, fb, gu, ga):
    """Full-batch gradient ``(gu, ga)`` over the training set ``(X, FS)``; returns the training loss."""
    n = FS.shape[0]
    k = a.shape[0]
    p = wu.shape[0]
    kp = k * p
    _zero(gu)
    _zero(ga)
    lsum = 0.0
    done = 0
    while done < n:
        nb = min(chunk, n - done)
        nrow = nb * k
        Z = X[done * kp : (done + nb) * kp].reshape(p, nrow)
        _block_preact(Z, nrow, wu, h)
        for b in range(nb):
            fb[b] = 0.0
        _relu_outputs(h, nb, a, fb)
        for b in range(nb):
            fb[b] -= FS[done + b]
        lsum += _block_backward(Z, nb, a, h, fb, cv, gu, ga)
        done += nb
    inv = 1.0 / n
    _scale(gu, inv)
    _scale(ga, inv)
    return 0.5 * lsum * inv


@njit(cache=True, fastmath=_FM)
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


@njit(cache=True, fastmath=_FM)
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


# ---- the training engine (sims.engines.sgd) ---------------------------------------------------------------------

SGD_FULL, SGD_PROJECTED, GD_FIXED = 0, 1, 2
SAMPLERS = ("full", "projected")


# ---- entry point used by sims.simulate -------------------------------------------------------------------------------


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


def _mode(algorithm: str, sampler: str) -> int:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    if algorithm == "gd-fixed":
        if sampler != "full":
            raise ValueError("sampler='projected' is only for algorithm 'sgd' (gd-fixed reuses its inputs)")
        return GD_FIXED
    return SGD_PROJECTED if sampler == "projected" else SGD_FULL


def engine(algorithm: str, batch_size: Any, WT: np.ndarray, A: np.ndarray, WS: np.ndarray, AS: np.ndarray,
           normalized: bool, *, sampler: str = "full"):
    """The :class:`sims.engines.sgd.FiniteSample` record of ``"sgd"`` or ``"gd-fixed"`` on the rows of ``WT, A``
    (validated: batch size, sampler, finite starting points).

    ``sampler`` (SGD only): ``"full"`` draws every minibatch input ``Z`` (``B k p`` normals per step);
    ``"projected"`` draws the same law of the minibatch gradient from ``2 B k + p`` normals (see
    :func:`_projected_gradient`); the two give different streams, hence different (equally distributed)
    trajectories."""
    from sims.engines.sgd import FiniteSample

    k, p = A.shape[1], WT.shape[1]
    batch_size = _check_batch(algorithm, batch_size, k, p)
    mode = _mode(algorithm, sampler)
    _check_state(WT, A, WS, AS)
    chunk = chunk_samples(batch_size, k, p, projected=mode == SGD_PROJECTED)
    return FiniteSample(WT, A, bool(normalized), int(mode), int(batch_size), int(chunk))


def run(algorithm: str, batch_size: Any, WT: np.ndarray, A: np.ndarray, prob: Any, stops: Any, out: Any, *,
        normalized: bool = True, sampler: str = "full") -> None:
    """Run ``"sgd"`` or ``"gd-fixed"`` on every row of ``WT, A`` (in place) with the driver's records
    ``prob, stops, out`` (:class:`sims.engines.driver.Problem`, ``Stops``, ``Outputs``), filling ``out`` as
    :func:`sims.simulate` does (for tests and benchmarks that hold their own streams)."""
    from sims.engines import driver, sgd

    eng = engine(algorithm, batch_size, WT, A, prob.WS, prob.AS, normalized, sampler=sampler)
    driver.run_batch(sgd.run_range, sgd.workspace, eng, prob, stops, out, WT.shape[0])


# ---- helpers for tests and diagnostics -------------------------------------------------------------------------


def _rows(x, R: int | None = None) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if R is not None:
        x = np.broadcast_to(x, (R, x.shape[1]))
    return np.ascontiguousarray(x)


#: IR-inlined copies of the gradient pieces for the helpers below (see :func:`sims.engines.common.inlined`: called
#: out of line, the projected sampler's minibatch gradient rounded differently from a cold and a warm cache).
_sgd_gradient_inl, _projected_gradient_inl, _filter_direction_inl, _filter_gradient_inl, _draw_training_set_inl, \
    _fixed_gradient_inl = (inlined(f, _FM) for f in (_sgd_gradient, _projected_gradient, _filter_direction,
                                                      _filter_gradient, _draw_training_set, _fixed_gradient))


@njit(cache=True, nogil=True, fastmath=_FM)
def _minibatch_gradients(span, mode, WT, A, WS, AS, normalized, batch_size, chunk, states, outs):
    """Rows ``span = (lo, hi)`` of :func:`minibatch_gradient` (``outs = (GW, GA, LE)``)."""
    GW, GA, LE = outs
    p = WT.shape[1]
    k = A.shape[1]
    for r in range(span[0], span[1]):
        tr = np.int64(r) if WS.shape[0] > 1 else np.int64(0)
        ws = WS[tr]
        ast = AS[tr]
        s0, s1, s2, s3 = states[r, 0], states[r, 1], states[r, 2], states[r, 3]
        wu = np.empty(p)
        gu = np.empty(p)
        e2 = np.empty(p)
        xi = np.empty(p)
        zb = np.empty(chunk * k * p if mode == SGD_FULL else 0)
        h = np.empty(chunk * k)
        hs = np.empty(chunk * k)
        cv = np.empty(chunk * k)
        fb = np.empty(chunk)
        fsb = np.empty(chunk)
        a = A[r]
        nw = _filter_direction_inl(WT[r], normalized, wu)
        st = (s0, s1, s2, s3)
        if mode == SGD_PROJECTED:
            LE[r], st = _projected_gradient_inl(st, batch_size, chunk, wu, ws, a, ast, e2, xi, (h, hs, cv, fb, fsb), gu,
                                            GA[r])
        else:
            LE[r], st = _sgd_gradient_inl(st, batch_size, chunk, wu, ws, a, ast, zb, (h, hs, cv, fb, fsb), gu, GA[r])
        _filter_gradient_inl(gu, wu, nw, normalized, GW[r])
        states[r, 0], states[r, 1], states[r, 2], states[r, 3] = st


def minibatch_gradient(WT, A, WS, AS, *, normalized: bool, batch_size: int, states: np.ndarray,
                       sampler: str = "full"):
    """One SGD minibatch gradient per row: ``(grad_WT (R, p), grad_a (R, k), minibatch loss (R,))``.

    Row ``r`` evaluates the network at ``(WT[r], A[r])`` (one row is broadcast) on ``batch_size`` fresh inputs
    drawn from ``states[r]`` (advanced in place), exactly as one step of the ``"sgd"`` kernel does.  The gradient
    is wrt the effective filter ``w~`` (equal to the gradient wrt ``w``); teachers ``WS, AS`` have 1 or R rows."""
    if not (isinstance(states, np.ndarray) and states.dtype == np.uint64 and states.ndim == 2
            and states.shape[1] == 4 and states.flags.c_contiguous):
        raise ValueError("states must be a C-contiguous (R, 4) uint64 array (it is advanced in place)")
    R = states.shape[0]
    WT, A, WS, AS = _rows(WT, R), _rows(A, R), _rows(WS), _rows(AS)
    k, p = A.shape[1], WT.shape[1]
    batch_size = _check_batch("sgd", batch_size, k, p)
    mode = _mode("sgd", sampler)
    _check_state(WT, A, WS, AS)
    GW = np.empty_like(WT)
    GA = np.empty_like(A)
    LE = np.empty(R)
    over_runs(_minibatch_gradients, R, np.int64(mode), WT, A, WS, AS, bool(normalized), np.int64(batch_size),
              np.int64(chunk_samples(batch_size, k, p, projected=mode == SGD_PROJECTED)), states, (GW, GA, LE))
    return GW, GA, LE


@njit(cache=True, nogil=True, fastmath=_FM)
def _training_losses(span, WT, A, WS, AS, normalized, n_train, chunk, states, LE):
    """Rows ``span = (lo, hi)`` of :func:`training_loss`."""
    p = WT.shape[1]
    k = A.shape[1]
    for r in range(span[0], span[1]):
        tr = np.int64(r) if WS.shape[0] > 1 else np.int64(0)
        ws = WS[tr]
        ast = AS[tr]
        s0, s1, s2, s3 = states[r, 0], states[r, 1], states[r, 2], states[r, 3]
        X = np.empty(n_train * k * p)
        FS = np.empty(n_train)
        h = np.empty(chunk * k)
        cv = np.empty(chunk * k)
        fb = np.empty(chunk)
        wu = np.empty(p)
        gu = np.empty(p)
        ga = np.empty(k)
        _draw_training_set_inl(s0, s1, s2, s3, chunk, X, FS, ws, ast, h)
        _filter_direction_inl(WT[r], normalized, wu)
        LE[r] = _fixed_gradient_inl(chunk, X, FS, wu, A[r], h, cv, fb, gu, ga)


def training_loss(WT, A, WS, AS, *, normalized: bool, batch_size: int, states: np.ndarray) -> np.ndarray:
    """The ``"gd-fixed"`` training loss ``0.5 mean_b (f - f*)^2`` of each row at ``(WT[r], A[r])``.

    ``states`` must be the streams as they were when the kernel started (the training set is the first thing a
    ``gd-fixed`` run draws); they are not modified."""
    states = np.array(states, dtype=np.uint64, order="C")  # a copy: the training set is regenerated, not consumed
    R = states.shape[0]
    WT, A, WS, AS = _rows(WT, R), _rows(A, R), _rows(WS), _rows(AS)
    k, p = A.shape[1], WT.shape[1]
    batch_size = _check_batch("gd-fixed", batch_size, k, p)
    _check_state(WT, A, WS, AS)
    LE = np.empty(R)
    over_runs(_training_losses, R, WT, A, WS, AS, bool(normalized), np.int64(batch_size),
              np.int64(chunk_samples(batch_size, k, p)), states, LE)
    return LE
