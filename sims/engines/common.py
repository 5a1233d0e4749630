"""Compiled helpers shared by the engines: the angle, the second layer's gradient norm from the invariants, the
run workspace, and a fast arctangent; and :func:`run_chunks`, which spreads a compiled range kernel over threads.

The compiled helpers are inlined into each engine's entry point (``inline="always"``), so they cost no call and
compile with the engine's fastmath options.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import njit

from sims.engines import closed_forms as cf

#: numba's fastmath flags of every engine's entry point (:func:`sims.engines.driver.entry_point`; so of the driver
#: and the hooks inlined into it) and of the random normals compiled as calls
#: (:func:`sims.engines.rng.normal_pair_call`).
FASTMATH = {"reassoc", "contract", "arcp"}

_PI = math.pi


@njit(inline="always")
def angle_from(n, wws, ws2):
    """``(phi, cos, sin)`` of the angle between ``w~`` (norm ``n``, ``w~.w* = wws``) and ``w*``."""
    c_raw = wws / n
    s2 = ws2 - c_raw * c_raw
    s_raw = math.sqrt(s2) if s2 > 0.0 else 0.0
    h = math.hypot(c_raw, s_raw)
    return math.atan2(s_raw, c_raw), c_raw / h, s_raw / h


@njit(inline="always")
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


@njit(inline="always")
def population_terms(n, phi, c, s, S, Q, P, tv, normalized):
    """The closed forms at a state: ``(L, L_rho, L_c, L_S, L_Q, L_P, ||grad_w~||^2, ||grad_a||^2)`` from its norm
    ``n``, angle ``(phi, cos, sin)`` and invariants; ``tv = (||w*||^2, 1.a*, ||a*||^2, k)``."""
    ws2, Ss, Qs, k = tv
    rho = 1.0 if normalized else n
    L = cf.loss(rho, phi, c, s, S, Q, P, Ss, Qs)
    L_rho, L_c, L_S, L_Q, L_P = cf.gradient(rho, phi, c, s, S, Q, P, Ss, Qs)
    gw2 = L_c * L_c * s * s / (n * n)
    if not normalized:
        gw2 += L_rho * L_rho
    return L, L_rho, L_c, L_S, L_Q, L_P, gw2, grad_a_sq(L_S, L_Q, L_P, k, S, Q, P, Ss, Qs)


@njit(inline="always")
def exact_near_stationarity(ga2, L_S, L_Q, L_P, k, Q, Qs, a, ast):
    """``||grad_a||^2``, recomputed from ``a`` where the invariant formula cancels to rounding noise (near a
    stationary point)."""
    if ga2 < 1e-6 * (k * L_S * L_S + 4.0 * L_Q * L_Q * Q + L_P * L_P * Qs):
        ga2 = 0.0
        for j in range(a.shape[0]):
            gj = L_S + 2.0 * L_Q * a[j] + L_P * ast[j]
            ga2 += gj * gj
    return ga2


#: Bytes a thread's work array keeps to itself at each end: a cache line and the line the CPU prefetches with it.
LINE = 128


def unshared_empty(n: int, dtype: type = np.float64) -> np.ndarray:
    """An uninitialized array of ``n`` items that starts on a :data:`LINE` boundary and has the lines it touches to
    itself, for a thread's work space.

    Why: work arrays that ``numpy`` places next to each other can share a cache line across threads, and the
    steps that write one thread's vectors then evict the other thread's (false sharing).  Measured with population
    GD at ``p = k = 64`` on two threads: 1.76x the one-thread speed with adjacent arrays, 1.96x with these."""
    dt = np.dtype(dtype)
    extra = LINE // dt.itemsize
    raw = np.empty(n + 2 * extra, dtype=dt)
    start = (-raw.ctypes.data % LINE) // dt.itemsize
    return raw[start:start + n]


def run_block(p: int, k: int) -> np.ndarray:
    """One block for the four work vectors ``(w~, w*, a, a*)`` of a run (allocated per thread; see
    :func:`run_views`)."""
    return unshared_empty(2 * p + 2 * k)


@njit(inline="always")
def run_views(block, p, k):
    """Four work vectors ``(w~, w*, a, a*)`` of lengths ``p, p, k, k``, carved at fixed offsets out of one block.

    Why: LLVM guards a vectorized sum in a loop that also stores (the fused update-and-invariants loop) with a
    runtime alias check, "is the store less than a few vectors ahead of a load?", and falls back to an in-order
    sum if so.  On arrays from separate allocations the answer depends on where the heap put them, so the
    rounding (and, in the end, the trajectory) would too.  Inside one block the distances are fixed by ``p, k``:
    the same path runs on every run, thread and call.  The views are carved inside the compiled code, so
    ``tests/ir_scan.py`` can check that every such guard in every engine compares addresses of one block only."""
    return block[:p], block[p : 2 * p], block[2 * p : 2 * p + k], block[2 * p + k : 2 * p + 2 * k]


@njit(inline="always")
def invariants(w, ws, a, ast):
    """``(||w~||^2, w~.w*, 1.a, a.a, a.a*)``: the population loss and gradient see the state only through them."""
    ww = 0.0
    wws = 0.0
    for i in range(w.shape[0]):
        ww += w[i] * w[i]
        wws += w[i] * ws[i]
    S = 0.0
    Q = 0.0
    P = 0.0
    for j in range(a.shape[0]):
        S += a[j]
        Q += a[j] * a[j]
        P += a[j] * ast[j]
    return ww, wws, S, Q, P


@njit(inline="always")
def distance(a, ast):
    """``||a - a*||`` (the trajectory's last column)."""
    d2 = 0.0
    for j in range(a.shape[0]):
        d2 += (a[j] - ast[j]) * (a[j] - ast[j])
    return math.sqrt(d2)


@njit(inline="always")
def copy_into(dst, src):
    """``dst[:] = src`` as an explicit loop (slice assignment costs seconds of compile time)."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@njit(inline="always")
def load_run(w, ws, a, ast, W, WS, A, AS, r, tr):
    """Copy run ``r``'s ``(w~, a)`` and teacher ``tr``'s ``(w*, a*)`` into the workspace of :func:`run_workspace`
    (explicit loops: slice assignment costs seconds of compile time)."""
    for i in range(w.shape[0]):
        w[i] = W[r, i]
        ws[i] = WS[tr, i]
    for j in range(a.shape[0]):
        a[j] = A[r, j]
        ast[j] = AS[tr, j]


@njit(inline="always")
def store_run(w, a, W, A, r):
    """Copy the workspace's final ``(w~, a)`` back into row ``r`` of ``W, A``."""
    for i in range(w.shape[0]):
        W[r, i] = w[i]
    for j in range(a.shape[0]):
        A[r, j] = a[j]


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


@njit(inline="always")
def _atan_poly(t):
    """fdlibm's arctangent polynomial ``sum_j AT_j t^(2j+2)``, j = 0..10, of the reduced argument ``t``, by Estrin's
    scheme (pairs, then pairs of pairs): 4 dependent steps instead of Horner's 6, and the arctangent is on the
    critical path of every step."""
    t2 = t * t
    t4 = t2 * t2
    t8 = t4 * t4
    r0 = (_AT0 + _AT1 * t2) + (_AT2 + _AT3 * t2) * t4
    r1 = (_AT4 + _AT5 * t2) + (_AT6 + _AT7 * t2) * t4
    r2 = (_AT8 + _AT9 * t2) + _AT10 * t4
    return t2 * ((r0 + r1 * t8) + r2 * (t8 * t8))


@njit(inline="always")
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
    u = _atan_poly(t)
    if i < 0:
        z = t - t * u
    else:
        z = _ATAN_HI[i] - ((t * u - _ATAN_LO[i]) - t)
    if x < 0.0:
        return _PI - (z - _PI_LO)
    return z


@njit(inline="always")
def atan2_select(y, x):
    """:func:`atan2_upper` without branches (its five reductions as selects on one quotient), so that a loop over
    runs that takes it vectorizes; the same operations as :func:`atan2_upper` up to fused multiply-adds (within 1
    ulp of libm's ``atan2``).  For ``y >= 0``."""
    ax = abs(x)
    b0 = y < 0.4375 * ax
    b1 = y < 0.6875 * ax
    b2 = y < 1.1875 * ax
    b3 = y < 2.4375 * ax
    # reduction i: t = (y - q ax) / (ax + q y) with q = 0, 1/2, 1, 3/2; the last, t = -ax / y
    p = 1.0 if b3 else 0.0
    q = 0.0 if b0 else (0.5 if b1 else (1.0 if b2 else 1.5 if b3 else 1.0))
    hi = _ATAN_HI[0] if b1 else (_ATAN_HI[1] if b2 else (_ATAN_HI[2] if b3 else _ATAN_HI[3]))
    lo = _ATAN_LO[0] if b1 else (_ATAN_LO[1] if b2 else (_ATAN_LO[2] if b3 else _ATAN_LO[3]))
    t = (y * p - ax * q) / (ax * p + y * q)
    u = _atan_poly(t)
    z = (t - t * u) if b0 else (hi - ((t * u - lo) - t))
    return (_PI - (z - _PI_LO)) if x < 0.0 else z


def run_chunks(runs: int, start: Callable[[], Callable[[int, int], None]], threads: int | None = None) -> None:
    """Call ``work(lo, hi)`` over chunks covering ``range(runs)`` on ``threads`` Python threads (default
    ``numba.get_num_threads()``) that take the chunks in turn; ``work = start()`` is made once per thread (so each
    thread can own its work arrays).

    Why threads rather than a numba ``prange`` loop: ``work`` calls a compiled kernel that releases the GIL and
    advances each run from start to stop, so results do not depend on the thread count or the chunking.  A
    ``prange`` body is compiled as a separate function that numba links into its caller and optimizes again
    there; with ``fastmath`` reassociation allowed, the copy the compiling process runs and the copy numba
    stores in its cache then round differently (``tests/test_sims_determinism.py`` compares a cold and a warm
    cache).  An exception in any thread is re-raised in the calling one.
    """
    threads = max(1, min(numba.get_num_threads() if threads is None else threads, runs))
    if threads == 1:
        start()(0, runs)
        return
    chunk = max(1, -(-runs // (8 * threads)))  # a few chunks per thread: runs that stop early do not idle a thread
    starts = list(range(0, runs, chunk))
    lock = threading.Lock()
    taken = [0]
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            work = start()
            while True:
                with lock:
                    i = taken[0]
                    taken[0] += 1
                if i >= len(starts):
                    return
                work(starts[i], min(starts[i] + chunk, runs))
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads - 1)]
    for th in pool:
        th.start()
    loop()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]


def over_runs(kernel: Callable, runs: int, *args: Any, threads: int | None = None) -> None:
    """``kernel((lo, hi), *args)`` over chunks covering ``range(runs)`` by :func:`run_chunks`; ``kernel`` is a
    compiled function (``nogil=True``) that advances runs ``lo .. hi-1`` (int64 bounds)."""
    run_chunks(runs, lambda: lambda lo, hi: kernel((np.int64(lo), np.int64(hi)), *args), threads)


def inlined(dispatcher: Any, fastmath: Any, _memo: dict | None = None) -> Any:
    """A private copy of the compiled function ``dispatcher`` that numba inlines at its IR level into its callers,
    and whose own calls of compiled functions are such copies too (recursively).

    Why: a compiled function called out of line from a cached kernel exists twice -- compiled alone, and linked
    into the kernel's code and optimized again there.  The process that compiles the kernel calls the first copy,
    a process that loads the kernel from numba's cache the second; with ``fastmath`` the two can round
    differently (``tests/test_sims_determinism.py`` compares a cold and a warm cache).  Inlined, there is one copy.
    """
    import types

    from numba.core.registry import CPUDispatcher

    memo = {} if _memo is None else _memo
    if id(dispatcher) in memo:
        return memo[id(dispatcher)]
    py = dispatcher.py_func
    env = dict(py.__globals__)
    copy = types.FunctionType(py.__code__, env, py.__name__, py.__defaults__, py.__closure__)
    memo[id(dispatcher)] = out = njit(inline="always", fastmath=fastmath)(copy)
    for name in py.__code__.co_names:
        if isinstance(env.get(name), CPUDispatcher):
            env[name] = inlined(env[name], fastmath, memo)
    return out
