"""Memory is checked before it is spent: estimates of what a call needs, and what the machine can give.

A call that needs more memory than the machine has is refused with a :class:`ValueError` that names the sizes, the
estimate and the remedy, before anything large is allocated, instead of being killed by the OS.  ``simulate``
refuses rather than splitting itself into pieces: its result holds per-run arrays of ``k + p`` numbers, so a call
too large to compute is also too large to return; a sweep is the tool for many runs (its chunks bound the memory).

**Memory per run** of :func:`sims.simulate` (measured as peak resident memory, float64 everywhere): about
``8 (8 k + 6 p + 4 m + 64)`` bytes, where ``m = min(n_record, steps + 1)`` is the trajectory length: the teacher,
the start, the working copy and the final state of ``w`` (``p`` each) and ``a`` (``k`` each), their temporaries,
and the trajectory's four columns (``simulate(vectors=False)``: no ``k`` or ``p`` term, :data:`PER_RUN_ORDER` numbers
per run instead).  Finite-sample training adds per thread its work space: the fixed training set
(``8 batch_size k p`` bytes) for ``gd-fixed``, a block of at most ``2^20`` inputs' worth for ``sgd``.
:data:`MARGIN` covers what the measurement does not (allocator slack, Python objects).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

#: Safety factor on the measured estimate.
MARGIN = 1.25
#: float64 numbers held per run, per patch (k), per filter entry (p), per recorded step and fixed.
PER_K, PER_P, PER_RECORD, PER_RUN = 8, 6, 4, 64
#: float64 numbers per run of a call without vectors (``simulate(vectors=False)``) besides ``PER_RUN`` and the
#: trajectory: the order parameters drawn, the engine's start, constants and end, the result's columns and their
#: temporaries (a generous count: none of them depends on ``k`` or ``p``).
PER_RUN_ORDER = 96
#: Environment variable capping the memory this package may plan to use (bytes, or with a unit: "8GB", "512MiB").
ENV_LIMIT = "SHALLOWRES_MEMORY_LIMIT"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``"123"``, ``"8GB"``, ``"1.5 GiB"``...; a malformed size is a ``ValueError`` naming the variable."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{ENV_LIMIT} must be a size such as 8GB, 512MiB or a number of bytes; got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(nbytes: float) -> str:
    """``nbytes`` in readable units (decimal: kB, MB, GB, TB)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} B"


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 (or v1) memory limit, if one is set."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:
            return None
        return max(int(limit) - usage, 0)
    return None


def available_bytes() -> int:
    """What this process may still allocate: the smallest of the kernel's ``MemAvailable``, the room under a
    cgroup limit, and ``SHALLOWRES_MEMORY_LIMIT`` if set (physical pages as a last resort)."""
    candidates = [x for x in (_meminfo_available(), _cgroup_available()) if x is not None]
    env = os.environ.get(ENV_LIMIT)
    if env:
        candidates.append(parse_size(env))
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 2**62  # unknown platform: nothing to check against
    return min(candidates)


def simulate_bytes(*, k: int, p: int, runs: int, steps: int, n_record: int, algorithm: str = "gd",
                   batch_size: int | None = None, threads: int = 1, factors: int = 0, vectors: bool = True) -> int:
    """Estimated peak memory of one :func:`sims.simulate` call (see the module docstring).

    ``factors``: extra float64 numbers per run (the factors of a deep linear expansion, held several times).
    ``vectors=False``: the call holds no vector of length ``k`` or ``p`` per run (``simulate(vectors=False)``),
    only :data:`PER_RUN_ORDER` numbers per run besides the trajectory, and the shortcut direction (``p``, once).
    """
    m = min(n_record, steps + 1)
    if not vectors:
        return int(math.ceil(MARGIN * 8.0 * (runs * (PER_RECORD * m + PER_RUN + PER_RUN_ORDER) + p)))
    per_run = PER_K * k + PER_P * p + PER_RECORD * m + PER_RUN + 4 * factors
    total = 8.0 * runs * per_run
    if algorithm == "gd-fixed" and batch_size:
        total += 8.0 * threads * batch_size * (k * p + 1)
    elif algorithm == "sgd" and batch_size:
        from sims.engines.finite_sample import chunk_samples

        total += 8.0 * threads * chunk_samples(batch_size, k, p) * (k * p + 5 * k)
    return int(math.ceil(MARGIN * total))


def require(nbytes: int, *, what: str, remedy: str) -> None:
    """Refuse (``ValueError``) a plan needing ``nbytes`` when the machine cannot give them."""
    free = available_bytes()
    if nbytes > free:
        raise ValueError(f"{what} needs about {format_size(nbytes)} of memory but only {format_size(free)} is "
                         f"available; {remedy}")
