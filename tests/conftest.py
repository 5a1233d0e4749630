"""Shared hooks: print the measured Monte Carlo agreement and finite-difference errors after the run."""

from __future__ import annotations

import sys


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
