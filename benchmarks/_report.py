"""Reporting shared by the throughput benchmarks: the targets' verdicts and the result file."""

from __future__ import annotations

import json
from pathlib import Path


def judge_targets(targets: dict[str, dict], quick: bool) -> None:
    """Set each target's ``met`` (``value >= target``, or ``<=`` where ``upper``; ``None`` for a ``--quick`` smoke
    test, whose numbers are not a measurement) and print the verdicts."""
    for t in targets.values():
        t["met"] = None if quick else bool(t["value"] <= t["target"] if t.get("upper") else t["value"] >= t["target"])
    if quick:
        print("\n--quick: a smoke test; its numbers are not a measurement and no target is judged")
        return
    print("\ntargets:")
    for name, t in targets.items():
        rel = "<=" if t.get("upper") else ">="
        print(f"  {name:22s} {t['value']:.3g} (target {rel} {t['target']:g}): {'met' if t['met'] else 'MISSED'}")


def write_result(result: dict, out: str | Path, libraries: tuple[str, ...] = ()) -> None:
    """Record the versions of the optional peer ``libraries`` (or ``"missing"``) in ``result["machine"]``, write
    ``result`` as JSON to ``out`` and say so with the benchmark's wall time."""
    for name in libraries:
        try:
            result["machine"][name] = __import__(name).__version__
        except ImportError:
            result["machine"][name] = "missing"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {out} ({result['wall_seconds']:.0f} s)")
