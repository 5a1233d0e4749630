"""Per-run random streams that do not depend on threads or chunking.

Run ``r`` of a simulation with seed ``s`` draws from xoshiro256** seeded by
``numpy.random.SeedSequence(s, spawn_key=(r,))``, which is exactly the ``r``-th child of
``SeedSequence(s).spawn(...)``.  The generator lives in a 4-word ``uint64`` state row per run and is advanced
only by that run's own code inside the numba kernels, so any split of runs into chunks or threads gives the
same numbers.  Normals come from the Box-Muller transform (both values are used).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from sims.engines.common import FASTMATH

_MASK = 0xFFFFFFFFFFFFFFFF

# numpy.random.SeedSequence's constants (numpy/random/bit_generator.pyx; O'Neill's seed_seq_fe), pool size 4.
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = 0xFFFFFFFF


def _words(n: int) -> list[int]:
    """``n >= 0`` as uint32 words, lowest first (``[0]`` for 0): how SeedSequence reads an integer."""
    out = [n & _M32]
    n >>= 32
    while n:
        out.append(n & _M32)
        n >>= 32
    return out


def _hashmix(value, const: int):
    """SeedSequence's ``hashmix`` of ``value`` (a Python int or a uint32 array): ``(hashed, next const)``.

    The multiplier sequence does not depend on the values, so it is a Python int even when ``value`` is an array.
    """
    nxt = (const * _MULT_A) & _M32
    if isinstance(value, np.ndarray):
        v = (value ^ np.uint32(const)) * np.uint32(nxt)  # uint32 arrays wrap mod 2^32
        return v ^ (v >> np.uint32(16)), nxt
    v = ((value ^ const) * nxt) & _M32
    return v ^ (v >> 16), nxt


def _mix(x, y):
    """SeedSequence's ``mix`` (Python ints or uint32 arrays)."""
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        v = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return v ^ (v >> np.uint32(16))
    v = (_MIX_L * x - _MIX_R * y) & _M32
    return v ^ (v >> 16)


def _seed_pool(seed: int) -> tuple[list, int]:
    """The entropy pool of ``SeedSequence(seed, spawn_key=(r,))`` before the spawn key is mixed in (it does not
    depend on ``r``: the seed's words, zero-padded to the pool size, come first), and the hash constant then."""
    ent = _words(seed)
    ent += [0] * (_POOL - len(ent))  # a spawn key is given, so the run entropy is padded to the pool size
    const = _INIT_A
    pool = []
    for i in range(_POOL):
        h, const = _hashmix(ent[i], const)
        pool.append(h)
    for i_src in range(_POOL):
        for i_dst in range(_POOL):
            if i_src != i_dst:
                h, const = _hashmix(pool[i_src], const)
                pool[i_dst] = _mix(pool[i_dst], h)
    for word in ent[_POOL:]:
        for i_dst in range(_POOL):
            h, const = _hashmix(word, const)
            pool[i_dst] = _mix(pool[i_dst], h)
    return pool, const


def _spawned_states(seed: int, runs: np.ndarray) -> np.ndarray:
    """``SeedSequence(seed, spawn_key=(r,)).generate_state(4, np.uint64)`` for every ``r`` of ``runs`` (uint64,
    all ``< 2**64``), vectorized over the runs: the same uint32 arithmetic, so the same bits."""
    pool, const = _seed_pool(seed)
    pool = [np.full(runs.shape, p, dtype=np.uint32) for p in pool]
    lo = (runs & np.uint64(_M32)).astype(np.uint32)
    hi = (runs >> np.uint64(32)).astype(np.uint32)
    for i_dst in range(_POOL):  # the spawn key's first word (every r has one, 0 included)
        h, const = _hashmix(lo, const)
        pool[i_dst] = _mix(pool[i_dst], h)
    two = hi != 0  # r >= 2**32 has a second word
    if two.any():
        for i_dst in range(_POOL):
            h, const = _hashmix(hi, const)
            pool[i_dst] = np.where(two, _mix(pool[i_dst], h), pool[i_dst])
    const = _INIT_B
    words = []
    for i in range(2 * _POOL):  # generate_state(4, uint64): 8 uint32 words cycling through the pool
        nxt = (const * _MULT_B) & _M32
        v = (pool[i % _POOL] ^ np.uint32(const)) * np.uint32(nxt)
        words.append((v ^ (v >> np.uint32(16))).astype(np.uint64))
        const = nxt
    return np.stack([words[2 * j] | (words[2 * j + 1] << np.uint64(32)) for j in range(_POOL)], axis=1)


def stream_states(seed: int, start: int, stop: int) -> np.ndarray:
    """Initial xoshiro256** states, shape ``(stop - start, 4)``, for runs ``start .. stop-1``.

    Row ``i`` is ``numpy.random.SeedSequence(seed, spawn_key=(start + i,)).generate_state(4, np.uint64)``, computed
    for all runs at once (:func:`_spawned_states`; run indices from ``2**64`` on, which no simulation reaches, go
    through SeedSequence itself).

    Parameters
    ----------
    seed : int
        The simulation's seed, an integer ``>= 0`` (any size).
    start, stop : int
        The run range ``[start, stop)``, ``0 <= start <= stop``.

    Returns
    -------
    numpy.ndarray
        uint64 array ``(stop - start, 4)``; an all-zero row (a fixed point of xoshiro, never seen) gets word 0 = 1.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    seed, start, stop = int(seed), int(start), int(stop)
    if stop - start <= MEMO_RUNS:
        return _memo_states(seed, start, stop).copy()
    return _states(seed, start, stop)


#: Ranges of at most this many runs are kept by :func:`_memo_states` (a sweep's chunks are 100,000 runs).
MEMO_RUNS = 1 << 18


@functools.lru_cache(maxsize=4)
def _memo_states(seed: int, start: int, stop: int) -> np.ndarray:
    """:func:`_states`, of which the last few results are kept (read-only; :func:`stream_states` hands out copies):
    the cells of a sweep compute the same run ranges one after another (:func:`sims.studies.sweep.run_sweep` orders
    the chunks so), and the states of 100,000 runs cost 10 ms to compute, 0.5 ms to copy; at most 4 x 8 MB kept."""
    out = _states(seed, start, stop)
    out.flags.writeable = False
    return out


def _states(seed: int, start: int, stop: int) -> np.ndarray:
    """:func:`stream_states` computed."""
    out = np.empty((stop - start, 4), dtype=np.uint64)
    fast = max(min(stop, 2**64) - start, 0)
    if fast:
        out[:fast] = _spawned_states(seed, np.arange(start, start + fast, dtype=np.uint64))
    for i, r in enumerate(range(start + fast, stop), start=fast):
        out[i] = np.random.SeedSequence(seed, spawn_key=(r,)).generate_state(4, np.uint64)
    zero = ~out.any(axis=1)  # the all-zero state is a fixed point of xoshiro; never happens in practice
    out[zero, 0] = 1
    return out


@njit(inline="always", cache=True)
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@njit(inline="always", cache=True)
def next_u64(s):
    """xoshiro256** step on the state row ``s`` (uint64[4]); returns 64 random bits."""
    result = _rotl(s[1] * np.uint64(5), 7) * np.uint64(9)
    t = s[1] << np.uint64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@njit(inline="always", cache=True)
def uniform(s):
    """A double uniform on ``[0, 1)`` with 53 random bits."""
    return float(next_u64(s) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(inline="always", cache=True)
def normal_pair(s):
    """Two independent standard normals (Box-Muller)."""
    u1 = 1.0 - uniform(s)  # in (0, 1], so log is finite
    u2 = uniform(s)
    rad = math.sqrt(-2.0 * math.log(u1))
    ang = 2.0 * math.pi * u2
    return rad * math.cos(ang), rad * math.sin(ang)


@njit(cache=True)
def uniform_call(s):
    """:func:`uniform` compiled once as a function of its own (see :func:`normal_pair_call`)."""
    return uniform(s)


@njit(cache=True, fastmath=FASTMATH)
def normal_pair_call(s):
    """:func:`normal_pair` compiled once as a function of its own, for the kernels that draw a few normals per
    step or per run (population GD's noise, the samplers, :func:`fill_normal`).

    Why: inlined at numba's IR level (``inline="always"``), every call site copies xoshiro and Box-Muller into its
    caller's IR, about 430 IR statements each, and numba's passes on the caller grow with them.  Called, they are
    compiled once (0.3 s) and LLVM still inlines them into the caller's machine code after linking.  Measured on
    the first population GD call (CPU seconds of numba's compile events): the engine's entry point 5.25 -> 4.15 s,
    the samplers' ``_draw`` with its callees 2.27 -> 1.29 s.

    Compiled with the engines' fastmath flags (:data:`sims.engines.common.FASTMATH`), which it had when inlined
    into population GD: without them the noisy GD steps ran 2-3% slower (one thread, interleaved calls), with them
    within 0.5%.  No operation here can be rewritten by those flags (the products by powers of two are exact;
    nothing else combines), so every caller, the samplers included, gets the same bits as before (checked on
    noisy GD and every sampler kind)."""
    return normal_pair(s)


@njit(cache=True)
def fill_normal(s, out):
    """Fill ``out`` (1-D float64) with standard normals."""
    n = out.shape[0]
    i = 0
    while i + 1 < n:
        x, y = normal_pair_call(s)
        out[i] = x
        out[i + 1] = y
        i += 2
    if i < n:
        x, _ = normal_pair_call(s)
        out[i] = x


# ---- Ziggurat normals (Marsaglia & Tsang 2000, 256 layers, 64-bit draws) ------------------------------------
#
# The half-normal density shape f(x) = exp(-x^2/2) is covered by 255 horizontal rectangles and a base strip (the
# rectangle [0, r] x [0, f(r)] plus the tail x > r), all of area v.  Layer i (1..255) spans x in [0, x_i) with
# x_1 < ... < x_255 = r; the base strip is sampled on [0, v / f(r)).  One xoshiro256** output gives the layer
# (8 bits), the sign (1 bit) and a 52-bit uniform abscissa; x = U x_i is returned at once when it lies under the
# layer above (x < x_{i-1}, ~99% of draws), otherwise the wedge is tested against f exactly, and the base
# strip's overhang is replaced by an exact tail sample (Marsaglia 1964).  The result is an exact N(0, 1) draw up to
# the 52-bit grid of the abscissa.  ``r`` solves "the top layer also has area v" (found with 40-digit mpmath; it
# equals numpy's ``ziggurat_nor_r``).

ZIG_R = 3.6541528853610087963519472518
ZIG_LAYERS = 256
_ZIG_BITS = 52


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    r = ZIG_R
    f_r = math.exp(-0.5 * r * r)
    v = r * f_r + math.sqrt(math.pi / 2.0) * math.erfc(r / math.sqrt(2.0))
    m = float(2**_ZIG_BITS)
    x = np.empty(ZIG_LAYERS)  # x[i]: right edge of layer i; x[0] stands for the base strip's width v / f(r)
    x[ZIG_LAYERS - 1] = r
    for i in range(ZIG_LAYERS - 2, 0, -1):
        x[i] = math.sqrt(-2.0 * math.log(v / x[i + 1] + math.exp(-0.5 * x[i + 1] ** 2)))
    x[0] = v / f_r
    wi = x / m
    fi = np.exp(-0.5 * x * x)
    fi[0] = 1.0  # f at x_0 = 0, the top of layer 1 (the base strip never uses fi[0] in its wedge test)
    ki = np.empty(ZIG_LAYERS, dtype=np.uint64)
    ki[0] = np.uint64(math.floor(r / x[0] * m))  # the base strip's rectangle part
    ki[1] = np.uint64(0)  # the top layer is all wedge (x_0 = 0)
    for i in range(2, ZIG_LAYERS):
        ki[i] = np.uint64(math.floor(x[i - 1] / x[i] * m))
    return wi, ki, fi, v


ZIG_WI, ZIG_KI, ZIG_FI, ZIG_V = _ziggurat_tables()
_ZIG_INV_R = 1.0 / ZIG_R


@njit(inline="always", cache=True)
def xoshiro(s0, s1, s2, s3):
    """xoshiro256** on a state held in four scalars: ``(result, s0, s1, s2, s3)`` (same stream as next_u64)."""
    result = _rotl(s1 * np.uint64(5), 7) * np.uint64(9)
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return result, s0, s1, s2, s3


@njit(inline="always", cache=True)
def _u01_open0(bits):
    """A double uniform on ``(0, 1]`` from 64 random bits (so its log is finite)."""
    return float((bits >> np.uint64(11)) + np.uint64(1)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _zig_slow(idx, x, s0, s1, s2, s3):
    """The rare branch of :func:`zig_normal` (~1% of draws): base-strip tail or wedge test.

    Returns ``(accepted, value, s0, s1, s2, s3)``; ``x`` carries the sign of the draw."""
    if idx == 0:  # x lies beyond r in the base strip: sample the tail x > r exactly instead
        while True:
            b1, s0, s1, s2, s3 = xoshiro(s0, s1, s2, s3)
            b2, s0, s1, s2, s3 = xoshiro(s0, s1, s2, s3)
            xx = -math.log(_u01_open0(b1)) * _ZIG_INV_R
            yy = -math.log(_u01_open0(b2))
            if yy + yy > xx * xx:
                val = ZIG_R + xx
                return True, (-val if x < 0.0 else val), s0, s1, s2, s3
    b, s0, s1, s2, s3 = xoshiro(s0, s1, s2, s3)
    u = float(b >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    if (ZIG_FI[idx - 1] - ZIG_FI[idx]) * u + ZIG_FI[idx] < math.exp(-0.5 * x * x):
        return True, x, s0, s1, s2, s3
    return False, 0.0, s0, s1, s2, s3


@njit(inline="always", cache=True)
def zig_normal(s0, s1, s2, s3):
    """One standard normal by the 256-layer Ziggurat: ``(z, s0, s1, s2, s3)`` (state held in scalars)."""
    while True:
        b, s0, s1, s2, s3 = xoshiro(s0, s1, s2, s3)
        idx = np.intp(b & np.uint64(0xFF))
        rabs = b >> np.uint64(64 - _ZIG_BITS)
        x = float(rabs) * ZIG_WI[idx]
        if (b >> np.uint64(8)) & np.uint64(1):
            x = -x
        if rabs < ZIG_KI[idx]:
            return x, s0, s1, s2, s3
        ok, z, s0, s1, s2, s3 = _zig_slow(idx, x, s0, s1, s2, s3)
        if ok:
            return z, s0, s1, s2, s3


@njit(cache=True)
def fill_normal_zig(s, out):
    """Fill ``out`` (1-D float64) with standard normals by the Ziggurat, advancing the state row ``s``."""
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for i in range(out.shape[0]):
        out[i], s0, s1, s2, s3 = zig_normal(s0, s1, s2, s3)
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3


# ---- Gamma and chi-square variates (Marsaglia & Tsang 2000) -------------------------------------------------
#
# For shape alpha >= 1, with d = alpha - 1/3 and c = 1 / sqrt(9 d): draw x ~ N(0, 1), set v = (1 + c x)^3 and
# accept d v when v > 0 and log(u) < x^2 / 2 + d (1 - v + log v) for u uniform on (0, 1] (the squeeze
# u < 1 - 0.0331 x^4 accepts most draws without a log).  The result is an exact Gamma(alpha, 1) draw.  For
# alpha < 1 the boost Gamma(alpha) = Gamma(alpha + 1) U^(1/alpha) applies.  Both normals of each Box-Muller pair
# are tried in turn (they are independent, so the law is unchanged); everything comes from the run's own stream.


@njit(cache=True)
def _gamma_ge1(s, alpha):
    """A Gamma(alpha, 1) variate for ``alpha >= 1`` (Marsaglia-Tsang)."""
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        pair = normal_pair(s)
        for x in pair:
            v = 1.0 + c * x
            if v <= 0.0:
                continue
            v = v * v * v
            u = 1.0 - uniform(s)  # in (0, 1], so log is finite
            x2 = x * x
            if u < 1.0 - 0.0331 * x2 * x2 or math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
                return d * v


@njit(cache=True)
def gamma(s, alpha):
    """A Gamma(``alpha``, 1) variate (``alpha > 0``) from the state row ``s``; 0.0 for ``alpha <= 0``.

    Marsaglia-Tsang for ``alpha >= 1``; for ``alpha < 1`` the boost ``Gamma(alpha + 1) * U^(1 / alpha)``."""
    if alpha <= 0.0:
        return 0.0
    if alpha >= 1.0:
        return _gamma_ge1(s, alpha)
    g = _gamma_ge1(s, alpha + 1.0)
    return g * (1.0 - uniform(s)) ** (1.0 / alpha)


@njit(cache=True)
def chi_square(s, dof):
    """A chi-square variate with ``dof`` degrees of freedom (``2 Gamma(dof / 2)``); exactly 0.0 for ``dof <= 0``."""
    if dof <= 0:
        return 0.0
    return 2.0 * gamma(s, 0.5 * dof)
