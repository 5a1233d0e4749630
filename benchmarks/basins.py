"""Time of the exact basins of gradient flow: the outcome map from an ``n x n`` grid of starts in the plane
``(phi_0, a_0 = t a*)`` (:func:`sims.runs.basins.plane_runs`, the map's loose solver tolerances) and the boundary
curve (:func:`sims.runs.basins.boundary`, 61 lines, ``tol = 1e-6``, the engine's default solver tolerances).

Also checks the map's loose tolerances: the same grid with the engine's defaults (``rtol = 1e-10``, ``atol =
1e-12``) must give the same outcome at every start (reports the count of differing starts and both times).  Warm
numba cache; best of ``--repeat``.

    python benchmarks/basins.py [--n 400] [--repeat 3] [--threads N] [--out basins.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

import sims
from sims.runs import basins


def best_of(repeat: int, fn):
    """``(best seconds, last value)`` of ``repeat`` calls of ``fn``."""
    best, value = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    phi, t = np.meshgrid(np.linspace(*basins.PHI_RANGE, args.n), np.linspace(*basins.T_RANGE, args.n))
    basins.plane_runs(phi[:2, :2], t[:2, :2], threads=args.threads)  # compile / load the cache
    t_map, res = best_of(args.repeat, lambda: basins.plane_runs(phi, t, threads=args.threads))
    t_tight, tight = best_of(1, lambda: basins.plane_runs(phi, t, flow=sims.Flow(), threads=args.threads))
    t_curve, curve = best_of(args.repeat, lambda: basins.boundary(threads=args.threads))
    row = dict(n=args.n, starts=args.n**2, map_s=t_map, starts_per_s=args.n**2 / t_map, counts=res.counts(),
               mean_flow_steps=float(res.extras["flow_steps"].mean()), tight_map_s=t_tight,
               differing_outcomes=int(np.sum(res.outcome != tight.outcome)), boundary_s=t_curve,
               boundary_points=int(curve.phi.size), boundary_runs=curve.runs, boundary_undecided=curve.undecided,
               load_average=os.getloadavg()[0])
    print(f"map {args.n} x {args.n}: {t_map:.2f} s ({row['starts_per_s']:.0f} starts/s, "
          f"{row['mean_flow_steps']:.0f} solver steps per run), outcomes {row['counts']}")
    print(f"  with the engine's default tolerances: {t_tight:.2f} s, {row['differing_outcomes']} outcomes differ")
    print(f"boundary: {curve.phi.size} points to tol {curve.tol:g} in {t_curve:.2f} s ({curve.runs} flow runs, "
          f"{curve.undecided} probes neither global nor spurious); load average {row['load_average']:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
