"""Overhead of the Dask path against the in-process path on the same sweep (not a test).

Runs the ``liu2019`` table sweep (default 1000 trials per cell, 45 cells) three ways into fresh directories:
in-process, on a local Dask cluster with two worker processes (``--workers 2``), and checks that the per-run
tables are identical.  Prints wall times and the ratio; ``--out`` writes them as JSON.

    python benchmarks/dask_overhead.py [--trials 1000] [--chunk 1000] [--out dask.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from sims.studies import sweep, tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    spec = tables.spec("liu2019", trials=args.trials, chunk=args.chunk)
    with tempfile.TemporaryDirectory() as tmp:
        sweep.run_sweep(spec, Path(tmp) / "warm", quiet=True)  # numba cache warm for both paths
        t0 = time.perf_counter()
        local = sweep.run_sweep(spec, Path(tmp) / "local", quiet=True)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        dask = sweep.run_sweep(spec, Path(tmp) / "dask", workers=2, quiet=True)
        t_dask = time.perf_counter() - t0
        pd.testing.assert_frame_equal(local.runs, dask.runs)
    result = {"cells": len(spec.cells), "trials": spec.trials, "chunk": spec.chunk, "in_process_s": t_local,
              "dask_2_workers_s": t_dask, "ratio": t_dask / t_local, "identical": True}
    print(f"liu2019: {len(spec.cells)} cells x {spec.trials} runs, chunk {spec.chunk}")
    print(f"in-process          {t_local:8.2f} s")
    print(f"dask, 2 workers     {t_dask:8.2f} s   ({t_dask / t_local:.2f}x, includes cluster start-up)")
    print("per-run results identical: yes")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
