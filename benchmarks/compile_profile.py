"""Where a first call's numba compile time goes: per compiled function, per compiler pass, and LLVM's share.

Run: ``python benchmarks/compile_profile.py [vector|reduced|sgd]`` (default ``vector``: population GD,
``simulate(engine="vector")``).  It points numba at a fresh temporary cache directory, makes the first call of
``sims.simulate(model="resnet", p=8, k=8, runs=4, steps=50, schedule=Schedule.two_stage(10, 0.001, 0.5, 0.1, 0.5),
basin="none")`` with the chosen engine, and prints:

- every compiled function (numba's ``numba:compile`` events), nested as numba compiled them, with its inclusive
  and exclusive (callees' compiles subtracted) time;
- the compiler passes (``numba:run_pass`` events) of more than 0.1 s, by pass and function;
- LLVM's share: its function passes, its module passes after linking, and the machine-code generation, per
  library (timed by wrapping numba's ``CPUCodeLibrary`` methods).

Times are the process's CPU seconds (``time.process_time``), so a machine shared with other jobs moves them less
than wall time; numba compiles on the calling thread.  The driver's module docstring (:mod:`sims.engines.driver`)
quotes the breakdown this gives for population GD.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")  # before numba is imported: a cold cache
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from numba.core import codegen  # noqa: E402
from numba.core import event as ev  # noqa: E402

LLVM: dict[tuple[str, str], float] = collections.defaultdict(float)


def _time_llvm(cls: type, name: str, tag: str) -> None:
    """Accumulate the CPU time of ``cls.name`` into :data:`LLVM` under ``(tag, library name)``."""
    orig = getattr(cls, name)

    def timed(self, *args, **kwargs):
        t0 = time.process_time()
        try:
            return orig(self, *args, **kwargs)
        finally:
            LLVM[(tag, self.name)] += time.process_time() - t0

    setattr(cls, name, timed)


class Nested(ev.Listener):
    """Records events with their inclusive and exclusive CPU time and their nesting depth."""

    def __init__(self) -> None:
        self.stack: list[list] = []
        self.done: list[tuple[dict, float, float, int]] = []

    def on_start(self, event: ev.Event) -> None:
        self.stack.append([event, time.process_time(), 0.0])

    def on_end(self, event: ev.Event) -> None:
        _, t0, children = self.stack.pop()
        dt = time.process_time() - t0
        if self.stack:
            self.stack[-1][2] += dt
        self.done.append((event.data, dt, dt - children, len(self.stack)))


def main(which: str) -> None:
    _time_llvm(codegen.CPUCodeLibrary, "_optimize_functions", "LLVM function passes")
    _time_llvm(codegen.CPUCodeLibrary, "_optimize_final_module", "LLVM module passes")
    _time_llvm(codegen.JITCodeLibrary, "_finalize_specific", "machine code")
    compiles, passes = Nested(), Nested()
    ev.register("numba:compile", compiles)
    ev.register("numba:run_pass", passes)
    t0 = time.process_time()
    import sims

    t1 = time.process_time()
    kw = dict(model="resnet", p=8, k=8, runs=4, steps=50, schedule=sims.Schedule.two_stage(10, 0.001, 0.5, 0.1, 0.5),
              basin="none")
    if which == "vector":
        kw["engine"] = "vector"
    elif which == "sgd":
        kw.update(algorithm="sgd", batch_size=64)
    elif which != "reduced":
        raise ValueError(f"which must be one of 'vector', 'reduced', 'sgd'; got {which!r}")
    sims.simulate(**kw)
    t2 = time.process_time()
    print(f"{which}: import {t1 - t0:.2f} s, first call {t2 - t1:.2f} s (CPU)")
    print("compiled functions: inclusive, exclusive CPU s")
    for data, dt, excl, depth in compiles.done:
        if dt >= 0.02:
            print(f"{dt:7.2f} {excl:7.2f} {'  ' * depth}{data['dispatcher'].py_func.__qualname__}")
    print(f"sum of exclusive times: {sum(x[2] for x in compiles.done):.2f} s")
    by_pass: dict[str, float] = collections.defaultdict(float)
    for data, _, excl, _ in passes.done:
        by_pass[data["name"]] += excl
    print("compiler passes over 0.1 s (exclusive; native_lowering includes LLVM):")
    for name, t in sorted(by_pass.items(), key=lambda x: -x[1]):
        if t > 0.1:
            print(f"{t:7.2f} {name}")
    print("LLVM over 0.05 s:")
    for (tag, lib), t in sorted(LLVM.items(), key=lambda x: -x[1]):
        if t > 0.05:
            print(f"{t:7.2f} {tag} [{lib[:60]}]")
    print(f"LLVM total: {sum(LLVM.values()):.2f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vector")
