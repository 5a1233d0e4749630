"""Per-run random streams that do not depend on threads or chunking.

Run ``r`` of a simulation with seed ``s`` draws from xoshiro256** seeded by
``numpy.random.SeedSequence(s, spawn_key=(r,))``, which is exactly the ``r``-th child of
``SeedSequence(s).spawn(...)``.  The generator lives in a 4-word ``uint64`` state row per run and is advanced
only by that run's own code inside the numba kernels, so any split of runs into chunks or threads gives the
same numbers.  Normals come from the Box-Muller transform (both values are used).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_MASK = 0xFFFFFFFFFFFFFFFF


def stream_states(seed: int, start: int, stop: int) -> np.ndarray:
    """Initial xoshiro256** states, shape ``(stop - start, 4)``, for runs ``start .. stop-1``."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    out = np.empty((stop - start, 4), dtype=np.uint64)
    for i, r in enumerate(range(start, stop)):
        out[i] = np.random.SeedSequence(int(seed), spawn_key=(r,)).generate_state(4, np.uint64)
        if not out[i].any():  # the all-zero state is a fixed point of xoshiro; never happens in practice
            out[i, 0] = 1
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
def fill_normal(s, out):
    """Fill ``out`` (1-D float64) with standard normals."""
    n = out.shape[0]
    i = 0
    while i + 1 < n:
        x, y = normal_pair(s)
        out[i] = x
        out[i + 1] = y
        i += 2
    if i < n:
        x, _ = normal_pair(s)
        out[i] = x
