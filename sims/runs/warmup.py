"""Compiling a table's engines in a child process while this one compiles the rest (a cold numba cache).

On a cold cache a table spends its first ~20 s compiling, one kernel after another on one core: the samplers, the
schedules' and the classification's kernels, then the engine (the lockstep GD engine on the order parameters
alone takes ~9 s; the gradient-flow engine ~17 s).  :func:`start` launches a child process (:func:`main` with
the jobs, with this process's ``NUMBA_CACHE_DIR``) that compiles the engines of the table's :data:`TABLE_JOBS`
into the cache, while this process goes on with its own work (the sweep's dry runs compile the samplers first).
Where the pipeline first runs an engine a child is compiling, it calls :func:`ready`, which waits for the child
to report that job done (one line ``ready JOB`` on its standard output), and then numba loads the kernel from
the cache instead of compiling it a second time.

**Safety.**  The child only compiles: results are the same bit for bit with and without it (the code numba loads
from its cache computes as the code it compiles, ``tests/test_sims_determinism.py``).  A child that fails a job
(``failed JOB``), dies or is killed never blocks or breaks this process: :func:`ready` returns as soon as the
child's output ends, and this process compiles the kernel itself; a child still silent after :data:`WAIT_LIMIT`
seconds is not waited for any longer.  A job that compiles a signature the pipeline does not use only costs the
wait (``tests/test_warmup.py`` checks that the pipeline loads the child's kernels).  ``SHALLOWRES_WARMUP=0``
turns the child off.

**Which jobs.**  :data:`JOBS` are the engines (one entry point each); :data:`TABLE_JOBS` the ones a table's sweep
runs on, each from a number of trials per cell on.  ``liu2019`` runs the lockstep engine; it needs the flow only
for a run that stops ``max_steps`` above the decisive level (:func:`sims.runs.attractor.decided_at_start`): none
of the 30 such runs of 4.5 million at ``--trials 100000``, one of the 77 of 45 million at ``--trials 1000000``.
Where it is needed, a chunk thread compiles it (~17 s) while the other runs on and then waits for it (chunks are
taken in order), so from :data:`FLOW_TRIALS` trials per cell on the child compiles it too, after the lockstep
engine; below, those 17 s of CPU would be spent for a kernel almost never used.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping

import numpy as np

#: The seconds :func:`ready` waits at most for a child that neither reports the job nor exits (a cold compile of
#: the flow engine takes ~17 s on a quiet machine).
WAIT_LIMIT = 300.0


def _engine_inputs(runs: int, k: int, steps: int) -> tuple:
    """What :func:`sims.runs.simulate.run_without_vectors` hands the engines, for ``runs`` simple runs: the
    coordinates and constants (:func:`sims.runs.order_runs.engine_inputs`), the resolved constant schedule, the
    problem, the stops; built by the same functions, so the compiled signature is the pipeline's."""
    from sims.engines import driver
    from sims.engines.rng import stream_states
    from sims.runs import order_runs
    from sims.runs.order_samplers import OrderParameters
    from sims.runs.schedules import Schedule
    from sims.runs.simulate import Tolerances, record_steps

    one = np.ones(runs)
    op = OrderParameters(c0=0.5 * one, r0=0.8 * one, S0=0.1 * one, Q0=0.3 * one, P0=0.05 * one, Ss=0.2 * one,
                         Qs=1.5 * one, vw=0.5 * one)
    start, consts = order_runs.engine_inputs(op)
    phi0, norm0 = order_runs.initial_angle(op)
    sched = Schedule.constant(0.1, 0.1).resolve(steps, runs=runs, phi0=phi0, norm0=norm0, k=k,
                                                gram=order_runs.gram(op))
    tol = Tolerances()
    rec = record_steps(steps, 2)
    none = np.empty((runs, 0))
    prob = driver.make_problem(none, none, np.full(runs, -1.0), sched, stream_states(0, 0, runs), rec,
                               tol.rate_window)
    return start, consts, prob, driver.make_stops(tol, steps, tol.stop_trapped), rec


def _reduced_job() -> None:
    """The lockstep GD engine on the order parameters (weight-normalized models), as ``run_without_vectors``
    runs it."""
    from sims.engines import driver, reduced

    start, consts, prob, stops, rec = _engine_inputs(2, 4, 3)
    eng, entry = reduced.engine(start, consts, 4, True)
    driver.run_batch(entry, reduced.workspace, eng, prob, stops, driver.make_outputs(2, rec.size), 2, 1)


def _flow_job() -> None:
    """The gradient-flow engine, as ``run_without_vectors`` (``algorithm="flow"``) and the basins run it."""
    from sims.engines import driver
    from sims.engines import flow as flow_engine

    start, consts, prob, stops, rec = _engine_inputs(2, 4, 3)
    eng = flow_engine.engine(start, consts, 4, True, 1e-10, 1e-12, max_nsteps=100)
    driver.run_batch(flow_engine.run_range, flow_engine.workspace, eng, prob, stops,
                     flow_engine.make_outputs(2, rec.size), 2, 1)


#: The jobs a child can run: each compiles (or loads) one engine's entry point by running it on two tiny runs.
JOBS: dict[str, Callable[[], None]] = {"reduced": _reduced_job, "flow": _flow_job}
#: Trials per cell from which a ``liu2019`` child compiles the flow engine too (module docstring).
FLOW_TRIALS = 200_000
#: The child's jobs for each table, each with the trials per cell from which it is compiled (module docstring); a
#: table not named here starts no child.
TABLE_JOBS: dict[str, tuple[tuple[str, int], ...]] = {
    "liu2019": (("reduced", 0), ("flow", FLOW_TRIALS)),
    "liu2019-flow": (("flow", 0),),
    "scaling": (("reduced", 0), ("flow", 0)),
}


#: The child's program (not ``-m sims.runs.warmup``: the package imports this module before runpy would run it).
_CHILD = "import sys; from sims.runs.warmup import main; sys.exit(main(sys.argv[1:]))"


class Warmup:
    """A child process compiling ``jobs`` (names in :data:`JOBS`) and what it has reported so far.

    A reader thread collects the child's lines; :meth:`wait` returns once the job is reported ready (True) or the
    child has failed it, ended or been silent for ``limit`` seconds (False).  :meth:`close` ends the child."""

    def __init__(self, jobs: Iterable[str], env: Mapping[str, str] | None = None) -> None:
        self.jobs = tuple(jobs)
        unknown = sorted(set(self.jobs) - set(JOBS))
        if unknown:
            raise ValueError(f"warmup jobs must be among {sorted(JOBS)}; got {unknown}")
        self._events = {job: threading.Event() for job in self.jobs}
        self.reported: dict[str, str] = {}
        child_env = dict(os.environ if env is None else env)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen([sys.executable, "-c", _CHILD, *self.jobs], env=child_env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, name="shallowres-warmup", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self.process.stdout:
                status, _, job = line.strip().partition(" ")
                if job in self._events and status in ("ready", "failed"):
                    self.reported[job] = status
                    self._events[job].set()
        except (OSError, ValueError):  # the pipe closed under us: the same as its end
            pass
        finally:  # the child ended (or its output did): nothing is coming, wait for nothing
            for event in self._events.values():
                event.set()

    def wait(self, job: str, limit: float = WAIT_LIMIT) -> bool:
        """Wait until the child reports ``job`` or cannot any more; True if it compiled it."""
        event = self._events.get(job)
        if event is None:
            return False
        event.wait(limit)
        return self.reported.get(job) == "ready"

    def close(self) -> None:
        """End the child if it still runs (its unfinished compile is lost; numba writes its cache atomically)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=5)  # the dead child's pipe has ended: the reader is done with it
        if self.process.stdout is not None:
            self.process.stdout.close()


_ACTIVE: Warmup | None = None
_LOCK = threading.Lock()


def start(jobs: Iterable[str]) -> Warmup | None:
    """Launch the child compiling ``jobs`` and make it the one :func:`ready` waits for; None (no child) for no
    jobs or with ``SHALLOWRES_WARMUP=0``.  The child is ended when this process exits, if not by :func:`stop`."""
    global _ACTIVE
    jobs = tuple(jobs)
    if not jobs or os.environ.get("SHALLOWRES_WARMUP", "1") == "0":
        return None
    stop()
    warm = Warmup(jobs)
    with _LOCK:
        _ACTIVE = warm
    atexit.register(warm.close)
    return warm


def table_jobs(name: str, trials: int) -> tuple[str, ...]:
    """The child's jobs for table ``name`` at ``trials`` runs per cell (:data:`TABLE_JOBS`; none for the others)."""
    return tuple(job for job, least in TABLE_JOBS.get(name, ()) if trials >= least)


def start_for_table(name: str, trials: int) -> Warmup | None:
    """:func:`start` with :func:`table_jobs`."""
    return start(table_jobs(name, trials))


def ready(job: str) -> None:
    """Called by the pipeline before it first runs engine ``job``: if a child is compiling it, wait for it (then
    numba loads the kernel from the cache).  Returns at once without a child or once the child is done with it."""
    warm = _ACTIVE
    if warm is not None:
        warm.wait(job)


def stop() -> None:
    """End the active child, if any (at the end of a table: a compile it has not finished is not needed)."""
    global _ACTIVE
    with _LOCK:
        warm, _ACTIVE = _ACTIVE, None
    if warm is not None:
        warm.close()


def main(jobs: list[str]) -> int:
    """The child: run each job, reporting ``ready JOB`` or ``failed JOB`` on its own line."""
    for job in jobs:
        try:
            JOBS[job]()
            status = "ready"
        except Exception:  # noqa: BLE001 - a failed warmup only means the parent compiles it
            status = "failed"
        print(f"{status} {job}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
