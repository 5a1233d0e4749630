"""Speed benchmark: run-steps per second of population GD on the order parameters (``sims.engines.reduced``).

Run: ``python benchmarks/reduced_throughput.py --out results.json`` (about 2-3 minutes on 2 cores, most of it
drawing the ``p = k = 10**6`` starting points; ``--quick`` for a smoke test).

**What is compared.**  Population GD of the weight-normalized ResNet is an exact map on the coordinates ``(u, r, x,
y, z)`` of ``w~ = u w* + r e`` and ``a = x a0 + y 1 + (1 + z) a*`` (``theory.order_parameters``), whose per-step
cost does not depend on ``p`` or ``k``.  Implementations:

- ``reduced``: the engine, ``sims.engines.reduced`` on the run driver (``driver.run_batch``, numba, 2 threads),
  with tolerances that never fire (``loss_tol = grad_tol = -1``, no trapped stop); every run is checked to stop at
  ``max_steps``.  Besides the map it evaluates, every step, what the driver's stop rules and records need: the
  loss, the gradient norm, the rate levels, the stop tests.
- ``numpy-reduced``, ``jax-reduced`` (``_peers.py``): the same map, elementwise over runs (``(R,)`` arrays; JAX:
  ``jit`` + ``lax.fori_loop`` over steps, float64).  They evaluate only the update (the loss once at the end), and
  skip the engine's overflow guard (it never fires here).
- ``vector``: the full-coordinate engine ``sims.engines.gd`` (``(p,)`` and ``(k,)`` vectors per run), and
  ``numpy-vector``: the fastest full-vector peer of ``gd_throughput.py`` (``_peers.make_numpy``), at
  ``p = k <= 4096`` only: at ``10**6`` one step of one run touches 4 vectors of 10**6 float64 (32 MB), and the
  batch of runs those implementations need would not fit in memory nor finish in a useful time.

**Inputs.**  At each ``p = k`` in ``{4, 16, 256, 4096, 10**6}``: the starting points ``sims.simulate(model="resnet",
seed=0)`` draws (``gd_throughput.make_problem``: ``w~0 = w0 + v``, ``a0`` in the ball, default teacher) and
``gd_throughput``'s two-stage schedule (``T1 = steps/4``; ``eta_w2 = 0.1/k``, ``eta_w1 = eta_w2/100``, ``eta_a = 0.1
x 4 pi/(k + 2 pi - 2)``).  The per-run setup of the reduced engine (drawing the vectors, ``sims.runs.plain.
reduced_coordinates``: O(p + k) per run) is **not timed**; only the stepping is.  Drawing ``R = 20000`` runs of
``4 x 10**6`` numbers is not possible, so at every size ``D`` distinct runs (``D = min(R, 2**24 // (p + k))``, at
least 16; drawn in chunks) are tiled to ``R`` (the engine advances each run from start to stop, so repeated
inputs do not share work).  The full-vector implementations run ``min(R, 2**22 // (p + k))`` runs.

**Checks before timing.**  At every size, on the timed inputs and step count: the final state of each reduced peer
against the engine's (``ReducedGD.out``) within 1e-9 relative (``||w~ - w~_eng|| / ||w~_eng||`` and the same for
``a``, from the coordinates); the final losses' relative difference is printed but not judged (``check_peers``: at
``p = k = 4`` runs converge to losses near 1e-23, where rounding alone moves the loss by 1e-5 relative); at
``p = k <= 4096``, on 32 runs and 100 steps, the reduced engine's final loss against the full-vector engine's
(within 1e-8: different floating-point paths to the same map).

**Timing.**  All (implementation, size) pairs round robin in one loop (``gd_throughput.time_interleaved``) until each
has at least 3 calls and ``--min-time`` seconds, so the load of other processes hits all of them alike; best and
median whole call.  The reduced peers do not depend on ``p, k`` (the Gram entries are data): they are timed once,
on the ``p = k = 16`` inputs.  Compilation (numba, XLA) happens in untimed warm-up calls.

Targets (printed as met / MISSED): the engine at least 2x ``jax-reduced``; at least 10x the fastest full-vector peer
at every size where that runs; at least 2e8 run-steps/s (at every size); per-step cost flat within 20% (max / min
over the sizes <= 1.2).  The engine's rate at ``p = k = 16`` is the one compared with the reduced peers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers  # noqa: E402
import gd_throughput as gdt  # noqa: E402
import numba  # noqa: E402
from _report import judge_targets, write_result  # noqa: E402

import sims  # noqa: E402
from sims.engines import driver, reduced  # noqa: E402
from sims.engines.rng import stream_states  # noqa: E402
from sims.runs import plain, samplers  # noqa: E402
from sims.runs.schedules import optimal_eta_a  # noqa: E402

THREADS = gdt.THREADS
SIZES = (4, 16, 256, 4096, 10**6)  # p = k
VECTOR_MAX = 4096  # largest p = k the full-vector implementations run at
PEER_SIZE = 16  # the reduced peers are timed on these inputs
RUNS = 20000
STEPS = 500  # reduced implementations, per call
#: Steps per call of the full-vector implementations (NumPy's call ~0.5 s at 2 cores).
VECTOR_STEPS = {4: 100, 16: 50, 256: 20, 4096: 10}
TARGET_VS_JAX = 2.0
TARGET_VS_VECTOR_PEER = 10.0
TARGET_RATE = 2e8
TARGET_FLATNESS = 1.2


# ---------------------------------------------------------------------------------------------------- inputs
def draw_problem(p: int, k: int, R: int, distinct: int, chunk_elems: int = 2**23) -> dict:
    """``distinct`` runs of ``sims.simulate``'s starting points at ``(p, k)`` (seed 0, drawn in chunks of at most
    ``chunk_elems`` numbers per array), their order parameters tiled to ``R`` runs, and the schedule's step sizes."""
    import theory

    v = theory.validation.shortcut_vector(None, p)
    starts, consts = [], []
    step = max(1, chunk_elems // max(p, k))
    t0 = time.perf_counter()
    for lo in range(0, distinct, step):
        hi = min(distinct, lo + step)
        WS, AS, W0, A0 = samplers.draw(stream_states(0, lo, hi), p=p, k=k, teacher=sims.Teacher(), init=sims.Init(),
                                       shortcut=v)
        st, cs, _ = plain.reduced_coordinates(W0 + v, WS, A0, AS)
        starts.append(st)
        consts.append(cs)
    setup_s = time.perf_counter() - t0
    reps = -(-R // distinct)
    start = np.ascontiguousarray(np.tile(np.concatenate(starts), (reps, 1))[:R])
    const = np.ascontiguousarray(np.tile(np.concatenate(consts), (reps, 1))[:R])
    if np.any(start[:, 2] != 0.0) or np.any(const[:, 5:] != 0.0):
        raise RuntimeError("a constant shortcut should leave r2 = 0 and no shortcut coordinates")
    ea = 0.1 * optimal_eta_a(k)
    ew2 = 0.1 / k
    return {"p": p, "k": k, "R": R, "distinct": distinct, "start": start, "consts": const,
            "eta_w": (ew2 / 100.0, ew2), "eta_a": (ea, ea), "setup_s": setup_s, "setup_s_per_run": setup_s / distinct}


def sched(prob: dict, steps: int) -> tuple[int, float, float, float, float]:
    return steps // 4, prob["eta_w"][0], prob["eta_a"][0], prob["eta_w"][1], prob["eta_a"][1]


def peer_inputs(prob: dict):
    """``(state, consts)`` of the reduced peers: ``(u, r, x, y, z)`` and ``(Q0, S0, P0, Ss, Qs, k)``."""
    st, cs = prob["start"], prob["consts"]
    state = tuple(np.ascontiguousarray(st[:, j]) for j in (0, 1, 3, 4, 5))
    consts = (*(np.ascontiguousarray(cs[:, j]) for j in range(5)), float(prob["k"]))
    return state, consts


def reduced_engine(prob: dict, steps: int):
    """A callable doing exactly ``steps`` steps of every run on the engine (everything but ``run_batch`` built once;
    ``run_batch`` writes the same outputs each call), and its ``(eng, out)``."""
    R, k = prob["R"], prob["k"]
    eng = reduced.ReducedGD(prob["start"], np.empty_like(prob["start"]), prob["consts"], k, True, np.empty(0), 0,
                            np.empty((0, 2)))
    rs = sims.Schedule.two_stage(*sched(prob, steps)).resolve(steps, runs=R)
    # no vectors: (R, 0) teacher rows, so that each run's invariants (the engine's teacher hook) are its own
    problem = driver.make_problem(np.zeros((R, 0)), np.zeros((R, 0)), np.full(R, -1.0), rs,
                                  np.zeros((R, 4), dtype=np.uint64), np.zeros(1, dtype=np.int64), (1e-4, 1e-6, 1e-9))
    stops = driver.Stops(steps, -1.0, -1.0, 0.0, math.inf, False)
    out = driver.make_outputs(R, 1)

    def call():
        driver.run_batch(reduced.run_range, reduced.workspace, eng, problem, stops, out, R)

    def check():
        if not (np.all(out.stop_step == steps) and np.all(out.stop_reason == driver.STOP_MAX_STEPS)):
            raise RuntimeError("reduced engine: a run stopped before max_steps; the run-step count would be wrong")

    return call, check, eng, out


def vector_problem(p: int, k: int, R: int) -> gdt.Problem:
    return gdt.make_problem(p, k, R)


# ---------------------------------------------------------------------------------------------------- checks
def _gram_norm(x, y, z, consts):
    """``||x a0 + y 1 + z a*||`` from the Gram entries ``consts = (Q0, S0, P0, Ss, Qs, k)``."""
    Q0, S0, P0, Ss, Qs, k = consts
    q = Q0 * x * x + k * y * y + Qs * z * z + 2.0 * (S0 * x * y + P0 * x * z + Ss * y * z)
    return np.sqrt(np.maximum(q, 0.0))


def state_diff(a, b, consts) -> tuple[float, float]:
    """Max over runs of ``||w~_a - w~_b|| / ||w~_a||`` and ``||a_a - a_b|| / ||a_a||`` for coordinate tuples
    ``(u, r, x, y, z)`` (the vectors' norms from the coordinates: ``w*, e`` orthonormal; ``a`` by the Gram form)."""
    du, dr = a[0] - b[0], a[1] - b[1]
    rel_w = np.hypot(du, dr) / np.hypot(a[0], a[1])
    rel_a = _gram_norm(a[2] - b[2], a[3] - b[3], a[4] - b[4], consts) / _gram_norm(a[2], a[3], 1.0 + a[4], consts)
    return float(np.max(rel_w)), float(np.max(rel_a))


def check_peers(prob: dict, peers: dict, steps: int) -> dict:
    """Each peer's final state against the engine's (``eng.out``) within 1e-9 relative (``state_diff``); the final
    losses' relative difference is printed too, but not judged: where a run has converged (losses down to 1e-23 at
    ``p = k = 4``) the loss is a square of deviations near 1e-12, and rounding differences of 1e-17 in them (the
    engine's own arctangent, ``fastmath`` reassociation) are relative differences of 1e-5 in the loss."""
    call, check, eng, out = reduced_engine(prob, steps)
    call()
    check()
    L_eng = out.final[:, 0].copy()
    eng_state = tuple(eng.out[:, j].copy() for j in (0, 1, 3, 4, 5))
    state, consts = peer_inputs(prob)
    res = {}
    for name, run in peers.items():
        if isinstance(run, str):
            res[name] = {"status": "missing"}
            continue
        fin = run(state, consts, sched(prob, steps), steps)
        rel_w, rel_a = state_diff(eng_state, fin, consts)
        L = _peers.reduced_loss(fin, consts)
        rel_L = float(np.max(np.abs(L - L_eng) / np.abs(L_eng)))
        ok = bool(max(rel_w, rel_a) <= 1e-9)
        res[name] = {"max_rel_diff_w": rel_w, "max_rel_diff_a": rel_a, "max_rel_diff_loss": rel_L, "ok": ok}
        print(f"check p = k = {prob['p']}: {name:13s} final state vs engine: max rel diff w~ {rel_w:.1e}, "
              f"a {rel_a:.1e} {'OK' if ok else 'FAILED (> 1e-9)'}; final loss max rel diff {rel_L:.1e} (loss in "
              f"[{L_eng.min():.2e}, {L_eng.max():.2e}])")
    return res


def check_vector(p: int, k: int, R: int = 32, steps: int = 100) -> dict:
    """The reduced engine against the full-coordinate engine on the same runs (same draw, seed 0)."""
    vp = vector_problem(p, k, R)
    _, _, L_vec = gdt.engine_gd(vp, steps)
    prob = draw_problem(p, k, R, R)
    call, check, eng, out = reduced_engine(prob, steps)
    call()
    check()
    rel = float(np.max(np.abs(out.final[:, 0] - L_vec) / np.abs(L_vec)))
    print(f"check p = k = {p}: reduced engine vs vector engine, {R} runs, {steps} steps: final loss max rel diff "
          f"{rel:.2e} {'OK' if rel <= 1e-8 else 'FAILED (> 1e-8)'}")
    return {"runs": R, "steps": steps, "max_rel_diff": rel, "ok": bool(rel <= 1e-8)}


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="path of the JSON file with all numbers")
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per implementation and size (>= 3 calls)")
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer runs and steps, short timings")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    info = gdt.cpu_info()
    load_start = gdt.load_average()
    print(f"machine: {info['model']}, {info['cores']} cores; numba {numba.__version__} ({numba.get_num_threads()} "
          f"threads), numpy {np.__version__}; load average {load_start}")

    R, steps, min_time, vsteps = args.runs, STEPS, args.min_time, dict(VECTOR_STEPS)
    if args.quick:
        R, steps, min_time = min(R, 4000), 100, min(min_time, 0.2)
        vsteps = {s: max(4, n // 5) for s, n in vsteps.items()}

    peers = {}
    for name, factory in (("numpy-reduced", _peers.make_numpy_reduced), ("jax-reduced", _peers.make_jax_reduced)):
        try:
            peers[name] = factory()
        except _peers.MissingError as exc:
            peers[name] = f"missing ({exc})"

    # inputs (untimed per-run setup), checks, warm-up
    draw_problem(4, 4, 2, 2)  # compile the sampler, so that the first size's setup time is not the compilation
    probs, checks, calls, checkers = {}, {"peers": {}, "vector": {}}, {}, {}
    for s in SIZES:
        distinct = max(16, min(R, 2**24 // (2 * s)))
        probs[s] = draw_problem(s, s, R, distinct)
        print(f"p = k = {s}: {distinct} distinct runs tiled to {R}; per-run setup (draw + reduced_coordinates, "
              f"untimed) {probs[s]['setup_s_per_run'] * 1e3:.3g} ms", flush=True)
        checks["peers"][s] = check_peers(probs[s], peers, steps)
        call, check, _, _ = reduced_engine(probs[s], steps)
        calls[("reduced", s)] = call
        checkers[("reduced", s)] = check
        if s <= VECTOR_MAX:
            checks["vector"][s] = check_vector(s, s)
    state, consts = peer_inputs(probs[PEER_SIZE])
    for name, run in peers.items():
        if not isinstance(run, str):
            calls[(name, PEER_SIZE)] = (lambda run=run: run(state, consts, sched(probs[PEER_SIZE], steps), steps))
    vnp = _peers.make_numpy()
    vruns = {}
    for s in SIZES:
        if s > VECTOR_MAX:
            continue
        Rv = min(R, 2**22 // (2 * s))
        vp = vector_problem(s, s, Rv)
        vruns[s] = (Rv, vsteps[s])
        calls[("vector", s)] = (lambda vp=vp, n=vsteps[s]: gdt.engine_gd(vp, n))
        calls[("numpy-vector", s)] = (lambda vp=vp, n=vsteps[s]: vnp(vp.WT0, vp.A0, vp.WS, vp.AS, vp.sched(n), n))
    for fn in calls.values():
        fn()  # warm-up: compilation, allocation (the reduced engine's calls are already compiled by the checks)

    print(f"\ntiming {len(calls)} (implementation, size) pairs round robin, >= 3 calls and {min_time} s each ...",
          flush=True)
    times = gdt.time_interleaved(calls, min_time)
    for check in checkers.values():
        check()

    rows = []
    for (impl, s), tt in times.items():
        n_runs, n_steps = vruns[s] if impl in ("vector", "numpy-vector") else (R, steps)
        best, med = float(np.min(tt)), float(np.median(tt))
        rows.append({"impl": impl, "p": s, "k": s, "runs": n_runs, "steps": n_steps, "calls": len(tt),
                     "seconds_total": float(np.sum(tt)), "seconds_best": best, "seconds_median": med,
                     "run_steps_per_s": n_runs * n_steps / best, "run_steps_per_s_median": n_runs * n_steps / med,
                     "ns_per_run_step": best / (n_runs * n_steps) * 1e9})
    for name, run in peers.items():
        if isinstance(run, str):
            rows.append({"impl": name, "status": "missing", "reason": run})

    def rate(impl, s, key="run_steps_per_s"):
        r = next((r for r in rows if r["impl"] == impl and r.get("p") == s), None)
        return r[key] if r else None

    print("\nrun-steps/s, best whole call (median in brackets); the reduced engine's stepping only (setup untimed); "
          "the reduced peers timed once, on the p = k = 16 inputs")
    print(f"{'p = k':>8s} " + " ".join(f"{n:>24s}" for n in ("reduced", "numpy-reduced", "jax-reduced", "vector",
                                                              "numpy-vector")))
    for s in SIZES:
        cells = []
        for impl in ("reduced", "numpy-reduced", "jax-reduced", "vector", "numpy-vector"):
            b, m = rate(impl, s), rate(impl, s, "run_steps_per_s_median")
            if b is None:
                if impl in ("vector", "numpy-vector") and s > VECTOR_MAX:
                    text = "skipped (size)"
                elif s == PEER_SIZE and isinstance(peers.get(impl), str):
                    text = "missing"
                else:
                    text = "-"
                cells.append(f"{text:>24s}")
            else:
                cells.append(f"{b:11.3e} ({m:9.3e})")
        print(f"{s:8d} " + " ".join(cells))

    # ratios and targets
    eng = {s: rate("reduced", s) for s in SIZES}
    eng_med = {s: rate("reduced", s, "run_steps_per_s_median") for s in SIZES}
    ratios: dict = {"reduced_vs_numpy_vector": {}, "reduced_vs_vector_engine": {}}
    targets: dict = {}
    jax_rate = rate("jax-reduced", PEER_SIZE)
    np_rate = rate("numpy-reduced", PEER_SIZE)
    if jax_rate:
        ratios["reduced_vs_jax_reduced"] = eng[PEER_SIZE] / jax_rate
        ratios["reduced_vs_jax_reduced_median"] = eng_med[PEER_SIZE] / rate("jax-reduced", PEER_SIZE,
                                                                            "run_steps_per_s_median")
        targets["vs_jax_reduced"] = {"value": ratios["reduced_vs_jax_reduced"], "target": TARGET_VS_JAX}
    if np_rate:
        ratios["reduced_vs_numpy_reduced"] = eng[PEER_SIZE] / np_rate
    for s in SIZES:
        if rate("numpy-vector", s):
            ratios["reduced_vs_numpy_vector"][s] = eng[s] / rate("numpy-vector", s)
            ratios["reduced_vs_vector_engine"][s] = eng[s] / rate("vector", s)
            targets[f"vs_numpy_vector_{s}"] = {"value": ratios["reduced_vs_numpy_vector"][s],
                                               "target": TARGET_VS_VECTOR_PEER}
    ratios["flatness_best"] = max(eng.values()) / min(eng.values())
    ratios["flatness_median"] = max(eng_med.values()) / min(eng_med.values())
    targets["rate_min_over_sizes"] = {"value": min(eng.values()), "target": TARGET_RATE}
    targets["flatness"] = {"value": ratios["flatness_best"], "target": TARGET_FLATNESS, "upper": True}

    print("\nratios (best calls; medians in the JSON):")
    if jax_rate:
        print(f"  reduced engine / jax-reduced   (p = k = {PEER_SIZE}): {ratios['reduced_vs_jax_reduced']:.2f}x "
              f"(median {ratios['reduced_vs_jax_reduced_median']:.2f}x)")
    if np_rate:
        print(f"  reduced engine / numpy-reduced (p = k = {PEER_SIZE}): {ratios['reduced_vs_numpy_reduced']:.2f}x")
    for s, v in ratios["reduced_vs_numpy_vector"].items():
        print(f"  reduced engine / numpy-vector  (p = k = {s}): {v:.3g}x   (/ vector engine: "
              f"{ratios['reduced_vs_vector_engine'][s]:.3g}x)")
    print(f"  flatness of the reduced engine's per-step cost, max/min over p = k in {SIZES}: "
          f"{ratios['flatness_best']:.3f} (medians: {ratios['flatness_median']:.3f})")
    judge_targets(targets, args.quick)

    result = {
        "machine": {**info, "python": platform.python_version(), "numba": numba.__version__, "numpy": np.__version__,
                    "threads": THREADS},
        "inputs": {s: {k: v for k, v in pr.items() if k not in ("start", "consts")} for s, pr in probs.items()},
        "check": checks,
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "settings": {"runs": R, "steps": steps, "min_time": min_time, "vector": {s: {"runs": r, "steps": n}
                                                                                 for s, (r, n) in vruns.items()},
                     "quick": args.quick, "peer_size": PEER_SIZE},
        "wall_seconds": time.perf_counter() - t_start,
        "load_average": {"start": load_start, "end": gdt.load_average()},
    }
    write_result(result, args.out, ("jax",))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
