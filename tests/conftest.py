"""Shared hooks: print the measured Monte Carlo agreement and finite-difference errors after the run; the numba
cache probe (every kernel compiled once in a child process), the docs build and the notebook runs: all three in the
background while the suite runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from background import BackgroundJob


class _CacheProbe(BackgroundJob):
    """``tests/ir_scan.py`` run twice on one fresh numba cache directory: the first child compiles every kernel,
    saves every engine's results and scans the optimized IR; the second loads every kernel from that cache and
    saves the results again.  The two children run one after the other in a background thread, started once the
    tests that need them are collected, so their minutes of compiling overlap the rest of the suite."""

    prefix = "shallowres-cache-probe-"

    def __init__(self) -> None:
        super().__init__()
        self._out: SimpleNamespace | None = None
        self._error = ""

    def run(self) -> None:
        script = str(Path(__file__).with_name("ir_scan.py"))
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(self.dir, "cache"))
        runs = {}
        for name, extra in (("cold", []), ("warm", ["--no-scan"])):
            path = os.path.join(self.dir, f"{name}.npz")
            proc = subprocess.run([sys.executable, script, "--results", path, *extra], env=env, capture_output=True,
                                  text=True, timeout=1200)
            if proc.returncode != 0:
                self._error = f"{name} child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                return
            runs[name] = (path, proc)
        self._out = SimpleNamespace(cold=runs["cold"][0], warm=runs["warm"][0], scan=runs["cold"][1].stdout,
                                    summary=runs["cold"][1].stderr)

    def result(self) -> SimpleNamespace:
        self.start()
        self.join()
        if self._out is None:
            pytest.fail(self._error or "the cache probe did not finish")
        return self._out


_PROBE = _CacheProbe()


#: Background jobs of test modules started at collection (``SITE_BUILD`` of tests/test_docs.py, ``NOTEBOOK_RUNS``
#: of tests/test_notebooks.py).
_STARTED: list = []


def pytest_collection_finish(session):
    if any("numba_cache_probe" in getattr(item, "fixturenames", ()) for item in session.items):
        _PROBE.start()
    site = next((item for item in session.items if "site" in getattr(item, "fixturenames", ())), None)
    if site is not None:  # the docs build (tests/test_docs.py), in the background from now on
        site.module.SITE_BUILD.start()
        _STARTED.append(site.module.SITE_BUILD)
    runs = [item for item in session.items if "notebook_runs" in getattr(item, "fixturenames", ())]
    if runs:  # the notebook runs (tests/test_notebooks.py), one after another in the background, after the build
        # (one background lane besides the cache probe: the build's time limit holds on 2 cores)
        after = None if site is None else site.module.SITE_BUILD.join
        runs[0].module.NOTEBOOK_RUNS.start([(item.callspec.params["path"], item.callspec.params["size"])
                                            for item in runs], after=after)
        _STARTED.append(runs[0].module.NOTEBOOK_RUNS)


def pytest_unconfigure(config):
    _PROBE.cleanup()
    for job in _STARTED:
        job.cleanup()


@pytest.fixture(scope="session")
def numba_cache_probe() -> SimpleNamespace:
    """The cache probe's outputs: ``cold`` and ``warm`` (paths of the ``.npz`` results of the compiling and of the
    loading child), ``scan`` (the IR scan's offending loops, one JSON line each) and ``summary`` (its stderr)."""
    return _PROBE.result()


def pytest_terminal_summary(terminalreporter):
    mc = getattr(sys.modules.get("test_theory_montecarlo"), "AGREEMENT", None)
    if mc:
        models = sorted({m for _, _, m in mc})
        worst = {m: max(z for (_, _, mm), z in mc.items() if mm == m) for m in models}
        terminalreporter.write_line(
            "Monte Carlo agreement, max |diff| / SE per model: " + ", ".join(f"{m} {z:.2f}" for m, z in worst.items())
        )
    fd = getattr(sys.modules.get("test_theory_derivatives"), "WORST", None)
    if fd and any(fd.values()):
        terminalreporter.write_line(
            "finite differences, worst relative error: " + ", ".join(f"{k} {v:.2g}" for k, v in fd.items())
        )
