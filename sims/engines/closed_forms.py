"""numba-compiled versions of the generated closed forms in :mod:`theory.closed_forms`.

``theory`` emits plain Python with :mod:`math` only; this module compiles it, so the formulas the kernels use are
exactly the ones the theory tests check.  :func:`saddle_angles_brent` is :func:`theory.saddle_angle` for a batch
(the same root finder, compiled).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from theory import closed_forms as _cf
from theory import fixed_points as _fp

arc_cosine = njit(cache=True)(_cf.arc_cosine)
loss = njit(cache=True)(_cf.loss)
gradient = njit(cache=True)(_cf.gradient)
hessian = njit(cache=True)(_cf.hessian)
#: ``(k + pi - 1) ||a*||^2 - pi (1.a*)^2`` from ``k, 1.a*, ||a*||^2``: > 0 iff the spurious point exists.
spurious_margin = njit(cache=True)(_cf.spurious_margin)
#: The order-parameter forms of :mod:`theory.order_parameters` (the reduced engine, :mod:`sims.engines.reduced`).
deviation_loss = njit(cache=True)(_cf.deviation_loss)
deviation_gradient = njit(cache=True)(_cf.deviation_gradient)
gram_deviations = njit(cache=True)(_cf.gram_deviations)
scaled_deviations = njit(cache=True)(_cf.scaled_deviations)

arc_cosine_from_pi = njit(cache=True)(_fp.arc_cosine_from_pi)


@njit(cache=True)
def _brent_delta(g_s, xtol, rtol, maxiter):
    """``d`` in ``[0, pi]`` with ``arc_cosine_from_pi(d) = g_s``: SciPy's ``brentq`` (scipy/optimize/Zeros/brentq.c)
    step for step, on the bracket ``[0, pi]``, so the root is the one :func:`theory.saddle_angle` gets, to the bit.
    NaN if the bracket holds no sign change or ``maxiter`` iterations do not converge."""
    xpre, xcur = 0.0, math.pi
    xblk = fblk = spre = scur = 0.0
    fpre = arc_cosine_from_pi(xpre) - g_s
    fcur = arc_cosine_from_pi(xcur) - g_s
    if fpre * fcur > 0:
        return math.nan
    if fpre == 0:
        return xpre
    if fcur == 0:
        return xcur
    for _ in range(maxiter):
        if fpre * fcur < 0:
            xblk, fblk = xpre, fpre
            spre = scur = xcur - xpre
        if abs(fblk) < abs(fcur):
            xpre, xcur, xblk = xcur, xblk, xcur
            fpre, fcur, fblk = fcur, fblk, fcur
        delta = (xtol + rtol * abs(xcur)) / 2
        sbis = (xblk - xcur) / 2
        if fcur == 0 or abs(sbis) < delta:
            return xcur
        if abs(spre) > delta and abs(fcur) < abs(fpre):
            if xpre == xblk:  # interpolate
                stry = -fcur * (xcur - xpre) / (fcur - fpre)
            else:  # extrapolate
                dpre = (fpre - fcur) / (xpre - xcur)
                dblk = (fblk - fcur) / (xblk - xcur)
                stry = -fcur * (fblk * dblk - fpre * dpre) / (dblk * dpre * (fblk - fpre))
            bound = 3 * abs(sbis) - delta
            if 2 * abs(stry) < (abs(spre) if abs(spre) < bound else bound):  # good short step
                spre, scur = scur, stry
            else:  # bisect
                spre = scur = sbis
        else:  # bisect
            spre = scur = sbis
        xpre, fpre = xcur, fcur
        if abs(scur) > delta:
            xcur += scur
        else:
            xcur += delta if sbis > 0 else -delta
        fcur = arc_cosine_from_pi(xcur) - g_s
    return math.nan


@njit(parallel=True, cache=True)
def _saddle_angles_brent(g_s, xtol, rtol, missing):
    """:func:`_brent_delta` per row, parallel over rows (each row alone: the same bits on any thread count)."""
    out = np.empty(g_s.shape[0])
    for i in prange(g_s.shape[0]):
        out[i] = missing if math.isnan(g_s[i]) else math.pi - _brent_delta(g_s[i], xtol, rtol, 100)
    return out


def saddle_angles_brent(a_star: np.ndarray, missing: float = math.nan) -> np.ndarray:
    """:func:`theory.saddle_angle` for every row of ``a_star``, compiled: the same Brent iteration on the same
    function, so the same bits (``missing`` where there is no saddle).

    Parameters
    ----------
    a_star : numpy.ndarray
        Teachers' second layers ``(R, k)``, finite.
    missing : float
        The value for rows without a saddle (``theory.saddle_angle`` returns None there).

    Returns
    -------
    numpy.ndarray
        ``(R,)`` saddle angles in ``[pi / 2, pi]``, or ``missing``.
    """
    g_s = _fp.saddle_targets(a_star)
    out = _saddle_angles_brent(g_s, _fp.SADDLE_XTOL, _fp.SADDLE_RTOL, missing)
    if np.isnan(out[~np.isnan(g_s)]).any():  # cannot happen: g_s in (0, 1] is always bracketed, Brent converges
        raise RuntimeError("saddle_angles_brent: Brent's method did not converge")
    return out


# A private, uncached compilation of the closed form for arc_cosine_rows: the cached ``arc_cosine`` above is also
# compiled as a callee of the engines' fastmath entry points, and a copy built that way (contracted to FMAs) was
# seen in its cache file; the prescribed warmup must reproduce theory.arc_cosine to the bit.
_arc_cosine_strict = njit(cache=False)(_cf.arc_cosine)


@njit(cache=True)
def arc_cosine_rows(phi):
    """``g(phi)`` elementwise (``phi``: 1-D float64), with :mod:`math`'s ``cos`` and ``sin`` like
    :func:`theory.arc_cosine`, so the same bits as calling it per element."""
    out = np.empty(phi.shape[0])
    for i in range(phi.shape[0]):
        out[i] = _arc_cosine_strict(phi[i], math.cos(phi[i]), math.sin(phi[i]))
    return out


@njit(parallel=True, cache=True)
def _bisect_saddle_rows(g_s, exists, missing, out):
    """The reference bisection: 64 halvings, ``g`` evaluated at every midpoint (:func:`bisect_saddle` lands on the
    same doubles with far fewer evaluations; a test compares the two)."""
    for i in prange(g_s.shape[0]):
        lo = 0.0
        hi = math.pi
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if _arc_cosine_strict(mid, math.cos(mid), math.sin(mid)) > g_s[i]:  # g decreases: the root is right
                lo = mid
            else:
                hi = mid
        out[i] = 0.5 * (lo + hi) if exists[i] else missing


#: Fewest rows per call of :func:`_fast_saddle_rows` when :func:`bisect_saddle` spreads them over threads (~1 us
#: per row: a thread's start costs less than a tenth of a chunk).
_SADDLE_CHUNK = 2048

#: A bound on the absolute error of ``g(phi) = (pi - phi) cos(phi) + sin(phi)`` evaluated in float64 at a double
#: ``phi`` in ``[0, pi]`` (:func:`_arc_cosine_strict`, ``math.cos``/``math.sin`` within one ulp): every term is at
#: most ``pi`` in size and there are five roundings, so the error is below ``2e-15``; 1e-14 leaves a factor 5.
G_EVAL_ERR = 1e-14


@njit(inline="always")
def _saddle_window(gs):
    """An interval ``[a, b]`` of ``[pi/2, pi]`` around the root of ``g(phi) = gs`` whose ends are *proved* on their
    side: ``g(a) > gs + 2 E`` and ``g(b) < gs - 2 E`` as evaluated (``E``: :data:`G_EVAL_ERR`).  As the exact ``g``
    decreases on ``[0, pi]`` (``g' = -(pi - phi) sin phi``), every double ``x <= a`` then has ``g(x) > gs`` as
    evaluated and every ``x >= b`` has ``g(x) <= gs``, whatever the rounding.  ``(-1, -1)`` if no such interval
    was found (the caller then evaluates every midpoint).  Newton's iteration from ``pi/2`` (``g`` is convex and
    decreasing on ``[pi/2, pi]``, so it approaches the root from the left) gives the centre."""
    x = 0.5 * math.pi
    for _ in range(80):
        c = math.cos(x)
        s = math.sin(x)
        f = _arc_cosine_strict(x, c, s) - gs
        d = -(math.pi - x) * s
        if not d < 0.0:
            break
        step = f / d
        x -= step
        if not (x > 0.0 and x < math.pi):
            return -1.0, -1.0
        if abs(step) < 1e-8:  # quadratic convergence: x is now within ~1e-16 of the root
            break
    d = (math.pi - x) * math.sin(x)  # |g'(x)|
    if not d > 0.0:
        return -1.0, -1.0
    h = 4.0 * G_EVAL_ERR / d  # |g(x +- h) - gs| ~ 4 E: the ends prove themselves with a margin of about 2 E
    for _ in range(12):  # widen until both ends prove themselves
        a = x - h
        b = x + h
        if a > 0.0 and b < math.pi:
            if (_arc_cosine_strict(a, math.cos(a), math.sin(a)) > gs + 2.0 * G_EVAL_ERR
                    and _arc_cosine_strict(b, math.cos(b), math.sin(b)) < gs - 2.0 * G_EVAL_ERR):
                return a, b
        h *= 4.0
    return -1.0, -1.0


@njit(cache=True, nogil=True)
def _fast_saddle_rows(lo, hi, g_s, exists, missing, out):
    """:func:`_bisect_saddle_rows` on rows ``lo .. hi-1``, with ``g`` evaluated only at the midpoints inside
    :func:`_saddle_window`: the others are on a proved side, so every comparison, hence every halving, is the
    reference's, and so is the result, to the bit.  The iteration also stops once the midpoint is one of the
    interval's ends, an end that was itself a tested midpoint: its test repeats, so no later halving changes
    anything.  A serial loop that :func:`bisect_saddle` runs on threads: a ``prange`` loop compiled in 0.95-1.0 s, this
    in 0.35-0.45 s (CPU s), and the first call of every simulation compiles it."""
    for i in range(lo, hi):
        if not exists[i]:
            out[i] = missing
            continue
        gs = g_s[i]
        a, b = -1.0, -1.0
        if math.isfinite(gs):
            a, b = _saddle_window(gs)
        lo = 0.0
        hi = math.pi
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if (mid == lo and lo != 0.0) or (mid == hi and hi != math.pi):
                break
            if a < 0.0:
                above = _arc_cosine_strict(mid, math.cos(mid), math.sin(mid)) > gs
            elif mid <= a:
                above = True
            elif mid >= b:
                above = False
            else:
                above = _arc_cosine_strict(mid, math.cos(mid), math.sin(mid)) > gs
            if above:
                lo = mid
            else:
                hi = mid
        out[i] = 0.5 * (lo + hi)


def bisect_saddle(g_s: np.ndarray, exists: np.ndarray, missing: float, *, reference: bool = False) -> np.ndarray:
    """:func:`theory.algebra.saddle_angles`' bisection (64 halvings of ``[0, pi]`` on ``g(phi) > g_s``), compiled and
    parallel over rows, with the same bits.

    Why it is fast: most of the 64 midpoints are far from the root, where the side of the comparison is certain.
    A few Newton steps find the root to ~1e-15 and a window around it whose ends are proved on their side against
    a bound on the rounding error of ``g`` (:func:`_saddle_window`, :data:`G_EVAL_ERR`); ``g`` is then evaluated
    only at the midpoints inside the window, about 15 evaluations per row instead of 64 (4x faster; measured on a
    million teachers, the same doubles as ``reference=True``, which evaluates every midpoint as before).

    Parameters
    ----------
    g_s : numpy.ndarray
        ``(R,)`` values of ``g(phi_s)`` (:func:`theory.saddle_kernel_value`), any float64 (NaN compares false).
    exists : numpy.ndarray
        ``(R,)`` booleans: where the spurious point exists (elsewhere the result is ``missing``).
    missing : float
        The value of rows without a saddle.
    reference : bool, default False
        Evaluate ``g`` at every midpoint (the reference the fast path is tested against).

    Returns
    -------
    numpy.ndarray
        ``(R,)`` saddle angles, or ``missing``.
    """
    g_s = np.ascontiguousarray(g_s, dtype=np.float64)
    exists = np.ascontiguousarray(exists, dtype=np.bool_)
    out = np.empty(g_s.shape[0])
    if reference:
        _bisect_saddle_rows(g_s, exists, float(missing), out)
        return out
    from sims.engines.common import run_chunks  # (common imports this module)

    R = g_s.shape[0]
    chunk = max(_SADDLE_CHUNK, -(-R // (4 * numba.get_num_threads())))  # rows alone: any split, the same bits
    run_chunks(-(-R // chunk), lambda: lambda lo, hi: _fast_saddle_rows(
        lo * chunk, min(hi * chunk, R), g_s, exists, float(missing), out))
    return out
