"""Gradient flow at large ``k``: runs per second and solver steps per run of DP5 and RODAS4 (``sims.Flow(method=)``).

liu2019-like runs on the order parameters (``vectors=False``, ``p = 16``, teachers on the half sphere with a
spurious minimum, ``a0`` in the ball, constant rates ``eta_w = 0.5 (2/k)``, ``eta_a = 0.9`` of optimal, no step
budget to speak of): the ResNet from ``w0 = 0`` and the CNN from a uniform ``w0``, at each ``k`` of ``--k``.  The
head's flow has rates about 1.8 and ``1.8 (pi - 1)/k`` per unit of time, so DP5 (explicit) needs ``O(k)`` steps
per run and RODAS4 (linearly implicit) a number that does not grow with ``k``; DP5 is skipped where it would take
more than ``--dp5-max-k``.  Warm numba cache; wall and CPU (user + sys) seconds of each call.

    python benchmarks/flow_stiff.py [--k 16,10000,1000000] [--runs 400] [--threads N] [--out stiff.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import sims


def problem(model: str, k: int, runs: int) -> dict:
    ea, ew = 0.9 * 4 * math.pi / (k + 2 * math.pi - 2), 0.5 * 2 / k
    init = sims.Init(w="zero" if model == "resnet" else "sphere", a="ball")
    teacher = sims.Teacher(w="cap", phi_max=math.pi / 2, require_spurious=True)
    return dict(model=model, k=k, p=16, runs=runs, steps=10**8, schedule=sims.Schedule.constant(ew, ea),
                teacher=teacher, init=init, seed=2019, vectors=False, n_record=8)


def measure(kw: dict, method: str, threads: int | None) -> dict:
    sims.simulate(algorithm="flow", engine=sims.Flow(method=method), **dict(kw, runs=2), threads=threads)
    c0, t0 = os.times(), time.perf_counter()
    res = sims.simulate(algorithm="flow", engine=sims.Flow(method=method), **kw, threads=threads)
    wall, c1 = time.perf_counter() - t0, os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return dict(model=kw["model"], k=kw["k"], method=res.settings["flow"]["method"], runs=kw["runs"],
                runs_per_s=kw["runs"] / wall, wall_s=wall, cpu_s=cpu,
                mean_steps=float(res.extras["flow_steps"].mean()), mean_flow_time=float(res.steps.mean()),
                counts=res.counts())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", default="16,10000,1000000")
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--dp5-max-k", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for k in (int(v) for v in args.k.split(",")):
        for model in ("resnet", "cnn"):
            for method in ("dp5", "rodas4"):
                if method == "dp5" and k > args.dp5_max_k:
                    continue
                row = measure(problem(model, k, args.runs), method, args.threads)
                rows.append(row)
                print(f"k={k:>8d} {model:7s} {method:6s} {row['runs_per_s']:9.1f} runs/s  wall {row['wall_s']:6.2f} s"
                      f"  cpu {row['cpu_s']:6.2f} s  {row['mean_steps']:8.0f} steps/run  {row['counts']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
