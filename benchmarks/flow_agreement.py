"""Outcomes of gradient flow against finite-step GD with tiny steps on the default ``liu2019`` teachers.

For every cell of ``sims/studies/configs/liu2019.toml`` (five methods x nine ``(k, p)``), the same runs are
integrated as gradient flow (``sims.simulate(algorithm="flow")``) and trained by the order-parameter GD engine with
every step ``m`` times smaller over ``m`` times as many steps (:func:`sims.runs.flow.finite_step_twin`).  Prints the
share of runs with the same outcome, and for each disagreement where it lies: the run's twins at ``4 m`` and
``16 m`` (whose outcomes converge to the flow's if the disagreement is GD's O(eta/m) error), the flow at a tighter
tolerance, and the closest approach of the run to the saddle's alignment (the smallest ``|a.a*| / ||a*||^2`` once
``phi > phi_s / 2``... measured on the recorded trajectory, a crude distance to the basin boundary).

    python benchmarks/flow_agreement.py [--trials N] [--m 100] [--out flow_agreement.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import sims
from sims.runs.flow import Flow, finite_step_twin
from sims.studies import sweep

CONFIG = Path(__file__).resolve().parents[1] / "sims" / "studies" / "configs" / "liu2019.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    spec = sweep.build_spec(sweep.load_toml(CONFIG), overrides={"trials": args.trials})
    total = same = 0
    t_flow = t_gd = 0.0
    rows = []
    for cell in spec.cells:
        kw = sweep.simulation_kwargs(cell.params)
        kw.pop("engine", None)
        kw.pop("algorithm", None)
        kw.update(runs=spec.trials, seed=spec.seed)
        t0 = time.perf_counter()
        fl = sims.simulate(algorithm="flow", **kw)
        t1 = time.perf_counter()
        gd = finite_step_twin(args.m, **kw)
        t2 = time.perf_counter()
        t_flow += t1 - t0
        t_gd += t2 - t1
        agree = fl.outcome == gd.outcome
        total += agree.size
        same += int(agree.sum())
        for r in np.flatnonzero(~agree):
            rows.append(_disagreement(kw, int(r), fl, gd, args.m, cell))
        print(f"{cell.method:28s} k={cell.params['k']:3d} p={cell.params['p']:3d}: {agree.mean():.4f} "
              f"flow {fl.counts()} gd {gd.counts()}", flush=True)
    print(f"\nsame outcome: {same}/{total} = {same / total:.5f}; flow {t_flow:.1f} s, GD/{args.m} {t_gd:.1f} s")
    for row in rows:
        print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps({"same": same, "total": total, "m": args.m, "disagreements": rows},
                                             indent=1))


def _disagreement(kw: dict, r: int, fl: sims.SimulationResult, gd: sims.SimulationResult, m: int, cell) -> dict:
    """Where a disagreeing run lies: its twins at finer steps and the flow at a tighter tolerance."""
    one = dict(kw, runs=1, run_offset=r)
    finer = [str(finite_step_twin(mm, **one).outcome[0]) for mm in (4 * m, 16 * m)]
    tight = str(sims.simulate(algorithm="flow", engine=Flow(rtol=1e-13, atol=1e-15), **one).outcome[0])
    traj = fl.trajectory_of(r)
    qs = float(np.sum(fl.a_star[r] ** 2))
    return dict(method=cell.method, k=cell.params["k"], p=cell.params["p"], run=r, flow=str(fl.outcome[r]),
                flow_stop=str(fl.stop_reason[r]), flow_time=float(fl.steps[r]), gd=str(gd.outcome[r]),
                gd_stop=str(gd.stop_reason[r]), gd_time=float(gd.steps[r] / m), gd_finer=finer, flow_tight=tight,
                min_alignment=float(np.min(np.abs(traj["alignment"])) / qs))


if __name__ == "__main__":
    main()
