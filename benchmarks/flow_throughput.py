"""Throughput of gradient flow (``sims.simulate(algorithm="flow")``) against ``scipy.integrate.solve_ivp`` per run.

liu2019-like problems (``k = p = 16``, teachers on the half sphere with a spurious minimum, ``a0`` in the ball,
the fixed two-stage warmup ``T1 = 200``): the ResNet from ``w0 = 0`` and the CNN from a uniform ``w0``.  The engine
integrates ``--runs`` runs (warm numba cache; the best of ``--repeat``); ``solve_ivp(method="RK45")`` integrates the
first ``--ivp-runs`` of them with the same tolerances and the same right-hand side in Python
(:func:`sims.runs.flow.field_function`), segment by segment up to the engine's stop time of each run, without event
functions (so its time is a lower bound: events would add to it).  Prints runs per second of both and the ratio.

    python benchmarks/flow_throughput.py [--runs 20000] [--ivp-runs 200] [--threads N] [--out flow.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from scipy.integrate import solve_ivp

import sims
from sims.runs.flow import Flow, field_function
from sims.runs.plain import reduced_coordinates


def problem(model: str, runs: int, k: int = 16, p: int = 16) -> dict:
    ea = 0.9 * 4 * math.pi / (k + 2 * math.pi - 2)
    schedule = sims.Schedule.two_stage(200, 0.01 * 2 / k, ea, 0.5 * 2 / k, ea)
    init = sims.Init(w="zero" if model == "resnet" else "sphere", a="ball")
    teacher = sims.Teacher(w="cap", phi_max=math.pi / 2, require_spurious=True)
    return dict(model=model, k=k, p=p, runs=runs, steps=20000, schedule=schedule, teacher=teacher, init=init,
                seed=2019)


def engine_rate(kw: dict, repeat: int, threads: int | None) -> tuple[float, sims.SimulationResult]:
    sims.simulate(algorithm="flow", **dict(kw, runs=64), threads=threads)  # compile / load the cache
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = sims.simulate(algorithm="flow", **kw, threads=threads)
        best = min(best, time.perf_counter() - t0)
    return kw["runs"] / best, res


def ivp_rate(kw: dict, res: sims.SimulationResult, n: int, flow: Flow) -> float:
    k, p = kw["k"], kw["p"]
    shortcut = 1.0 / math.sqrt(p) if kw["model"] == "resnet" else 0.0
    start, consts, _ = reduced_coordinates(res.w0[:n] + shortcut, res.w_star[:n], res.a0[:n], res.a_star[:n])
    segs = kw["schedule"].segments
    t0 = time.perf_counter()
    for r in range(n):
        y = start[r, [0, 1, 3, 4, 5]]
        t, t_stop = 0.0, float(res.steps[r])
        for i, seg in enumerate(segs):
            end = t_stop if i == len(segs) - 1 else min(t + seg.steps, t_stop)
            if end <= t:
                break
            f = field_function(consts[r], k, kw["model"] != "cnn-unnormalized", seg.eta_w, seg.eta_a)
            sol = solve_ivp(f, (t, end), y, method="RK45", rtol=flow.rtol, atol=flow.atol)
            y, t = sol.y[:, -1], end
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--ivp-runs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    flow = Flow()
    rows = []
    for model in ("resnet", "cnn"):
        kw = problem(model, args.runs)
        rate, res = engine_rate(kw, args.repeat, args.threads)
        ivp = ivp_rate(kw, res, args.ivp_runs, flow)
        steps = res.extras["flow_steps"]
        row = dict(model=model, runs=args.runs, engine_runs_per_s=rate, ivp_runs_per_s=ivp, ratio=rate / ivp,
                   mean_flow_time=float(res.steps.mean()), mean_steps=float(steps.mean()),
                   mean_nfev=float(res.extras["flow_nfev"].mean()), counts=res.counts())
        rows.append(row)
        print(f"{model:7s} engine {rate:10.0f} runs/s  solve_ivp {ivp:8.1f} runs/s  ratio {rate / ivp:8.0f}x  "
              f"(mean flow time {row['mean_flow_time']:.0f}, {row['mean_steps']:.0f} steps, "
              f"{row['mean_nfev']:.0f} evaluations per run)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
