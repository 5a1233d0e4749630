"""Gradient flow in the pipeline: ``sims.simulate(algorithm="flow")`` (or ``engine="flow"``, or
``engine=sims.Flow(rtol=..., atol=...)``) integrates the continuous-time limit of population GD on the order
parameters (:mod:`sims.engines.flow`), and :func:`finite_step_twin` runs the finite-step engine on the same runs
with steps ``m`` times smaller, to compare the two.

The result is the usual :class:`sims.SimulationResult`, with flow time in place of steps: ``steps`` is the flow
time at the stop, ``steps_to_tol`` and ``slow_phase_end`` the times of those events (floats; ``-1``: never),
``trajectory_steps`` the (integer) times at which the trajectory is recorded, ``fitted_rate`` the loss contraction
per unit of time and ``theory_rate`` its prediction at the reached minimum, ``exp(-2 eta_i lambda_i)`` of the
slowest Hessian mode (the flow's limit of GD's ``(1 - eta_i lambda_i)^2``); the final ``w, a`` are rebuilt from
the coordinates as for the reduced engine (:func:`sims.runs.plain.rebuild`); ``extras["flow_steps"]`` and
``extras["flow_nfev"]`` count each run's accepted steps and field evaluations.  The schedule gives the rates of
each segment (its step sizes, read as rates per unit of time); ``steps`` is the largest flow time.
``vectors=False`` runs the flow on the order parameters alone, as it does GD
(:func:`sims.runs.simulate.run_without_vectors`).

Refused (``ValueError`` naming the field): a schedule with noise (the flow is deterministic), SGD settings
(``batch_size``), an engine that takes finite steps (``engine="vector"``, ``"reduced"``, ...) with
``algorithm="flow"``, and tolerances of the solver outside ``[1e-14, 1e-2]`` (``rtol``) or ``(0, 1e-2]``
(``atol``), and ``eta_a`` above GD's stability limit unless ``allow_unstable=True``: the flow itself has no such
limit, but rates no GD can follow are not the limit of the GD the flow stands for (and the explicit DP5's steps
shrink like ``1 / (eta_a lambda_1)``).  ``sims.Flow(method=...)`` picks the integrator: DP5, or RODAS4 for the
stiff flow at large ``k`` (the default ``"auto"`` takes RODAS4 from ``k = 962`` on; :mod:`sims.engines.flow`);
``settings["flow"]["method"]`` records the one used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sims.engines import flow
from sims.runs.plain import rebuild, reduced_coordinates
from sims.runs.registry import Built, Call, EngineSpec, Finished, Setup, check_stable, register_engine


@dataclass(frozen=True)
class Flow:
    """Options of the gradient-flow engine: the solver's tolerances.

    scipy's ``rtol``, ``atol``: the local error estimate is kept below ``atol + rtol |y|`` in the RMS norm over the
    coordinates.  The defaults are tight: the coordinates are O(1) and tend to 0 at the global minimum (a loss of
    ``1e-10 L_ref`` puts them near ``1e-5``), where ``atol = 1e-12`` still leaves seven digits.

    Parameters
    ----------
    rtol : float, default 1e-10
        Relative tolerance, in ``[1e-14, 1e-2]``.
    atol : float, default 1e-12
        Absolute tolerance, in ``(0, 1e-2]``.
    method : {"auto", "dp5", "rodas4"}, default "auto"
        The integrator (:mod:`sims.engines.flow`): the explicit Dormand-Prince 5(4), the linearly implicit RODAS4
        for the stiff flow at large ``k``, or the one the head's stiffness calls for (RODAS4 from ``k = 962`` on:
        :func:`sims.engines.flow.select_method`).  The one used is recorded in the result's settings.

    Raises
    ------
    ValueError
        For a tolerance out of its range (naming ``flow.rtol`` or ``flow.atol``) or an unknown ``flow.method``.

    Examples
    --------
    >>> import numpy as np, sims
    >>> kw = dict(model="resnet", k=4, p=4, runs=3, steps=300, schedule=sims.Schedule.constant(0.5, 1.0), seed=0)
    >>> res = sims.simulate(engine=sims.Flow(rtol=1e-8, atol=1e-10), algorithm="flow", **kw)
    >>> res.outcome.tolist(), np.round(res.final_phi, 6)
    (['global', 'spurious', 'global'], array([0.     , 1.73923, 0.     ]))
    """

    rtol: float = 1e-10
    atol: float = 1e-12
    method: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.method, str) and self.method in ("auto",) + flow.METHODS):
            raise ValueError(f"flow.method must be one of {('auto',) + flow.METHODS}; got {self.method!r}")
        for name, lo, closed in (("rtol", 1e-14, True), ("atol", 0.0, False)):
            val = getattr(self, name)
            ok = isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, bool)
            x = float(val) if ok else math.nan
            if not (ok and math.isfinite(x) and (x >= lo if closed else x > lo) and x <= 1e-2):
                rng = f"[{lo:g}, 0.01]" if closed else f"({lo:g}, 0.01]"
                raise ValueError(f"flow.{name} must be a number in {rng}; got {val!r}")
            object.__setattr__(self, name, x)


def step_cap(steps: int) -> int:
    """The most solver steps a flow run may take before it stops as ``diverged``: ``1000 max(steps, 1) + 10^5``.

    The flow is singular where the effective filter vanishes (the unnormalized CNN's ``w -> 0``: the angle turns
    arbitrarily fast), and there the solver's steps shrink without bound (to about ``1e-11`` of a unit of time in a
    run seen here) instead of failing, so without a cap such a run would never end.  A regular run needs a few
    steps per unit of time at most (about 6 at ``k = 16``, fewer at large ``k``), far below the cap.

    Parameters
    ----------
    steps : int
        The run's flow-time budget (``simulate``'s ``steps``).

    Returns
    -------
    int
        The cap on accepted steps per run.

    Examples
    --------
    >>> from sims.runs.flow import step_cap
    >>> step_cap(20000)
    20100000
    """
    return 1000 * max(int(steps), 1) + 100_000


class FlowSpec(EngineSpec):
    """Gradient flow on the order parameters (:mod:`sims.engines.flow`): noise-free schedules, population loss."""

    options = Flow
    algorithms = ("flow",)

    def default_options(self, name: str) -> Flow:
        return Flow()

    def validate(self, opts: Flow, call: Call) -> Call:
        if call.algorithm != "flow":
            raise ValueError("engine 'flow' integrates gradient flow: algorithm must be 'flow'; "
                             f"got {call.algorithm!r}")
        if call.batch_size is not None:
            raise ValueError(f"batch_size must be None for algorithm='flow' (the flow follows the population "
                             f"gradient, it samples no minibatch); got {call.batch_size!r}")
        for i, seg in enumerate(call.schedule.segments):
            if seg.noise_w > 0.0 or seg.noise_a > 0.0:
                raise ValueError(f"algorithm='flow' needs a noise-free schedule: schedule.segments[{i}] has noise "
                                 f"(noise_w = {seg.noise_w:g}, noise_a = {seg.noise_a:g}); gradient flow is "
                                 "deterministic")
        check_stable(call)
        return call

    def make_outputs(self, opts: Flow, runs: int, m: int) -> flow.FlowOutputs:
        return flow.make_outputs(runs, m)

    def build(self, opts: Flow, call: Call, setup: Setup) -> Built:
        start, consts, basis = reduced_coordinates(setup.WT, setup.draws.WS, setup.A, setup.draws.AS)
        eng = flow.engine(start, consts, call.k, call.model.normalized, opts.rtol, opts.atol,
                          max_nsteps=step_cap(call.steps), method=opts.method)
        return Built(flow.run_range, flow.workspace, eng, True, basis)

    def finish(self, opts: Flow, call: Call, setup: Setup, built: Built, out: Any) -> Finished:
        """The vectors rebuilt from the final coordinates; the solver's counts as extras."""
        WT, A = rebuild(built.eng.out, built.extra, setup.WT, setup.A)
        w = WT - call.shortcut if call.model.shortcut else WT
        extras = {"flow_steps": built.eng.nsteps, "flow_nfev": built.eng.nfev}
        return Finished(WT, A, w, call.model, extras, continuous=True)

    def settings(self, opts: Flow, call: Call, base: dict[str, Any]) -> dict[str, Any]:
        method = flow.METHODS[flow.select_method(opts.method, call.k)]
        return dict(base, flow={"rtol": opts.rtol, "atol": opts.atol, "method": method})


FLOW = register_engine("flow", FlowSpec())


def field_function(consts: np.ndarray, k: int, normalized: bool, eta_w: float, eta_a: float):
    """The flow's right-hand side ``f(t, y)`` of one run in plain Python (``y = (u, r, x, y, z)``, ``consts`` a row
    of the engine's constants), for ``scipy.integrate.solve_ivp``: the reference the compiled integrator is tested
    and benchmarked against.  The same generated closed forms as the engine (:func:`sims.engines.flow._observe`)."""
    from theory import closed_forms as tcf

    Q0, S0, P0, Ss, Qs = (float(v) for v in consts[:5])

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        u, r1, x, y, z = (float(v) for v in state)
        n = math.sqrt(u * u + r1 * r1)
        inv_n = 1.0 / n
        c, s = u * inv_n, abs(r1) * inv_n
        omc = r1 * r1 / (n * (n + u)) if u > 0.0 else 1.0 - c
        phi = math.atan2(abs(r1), u)
        rho = 1.0 if normalized else n
        dev = tcf.scaled_deviations(rho, *tcf.gram_deviations(x, y, z, Q0, S0, P0, k, Ss, Qs), Ss, Qs)
        L_rho, L_c, L_S, L_Q, L_Pa = tcf.deviation_gradient(rho, phi, c, s, omc, *dev, Ss, Qs)
        d = tcf.flow_field(u, r1, 0.0, x, y, z, inv_n, 0.0 if normalized else L_rho, L_c, L_S, L_Q, L_Pa,
                           eta_w, eta_a, 0.0, 0.0, 0.0, 0.0)
        return np.array([d[0], d[1], d[3], d[4], d[5]])

    return rhs


def refine(sched: Any, m: int) -> Any:
    """The resolved schedule ``sched`` (:class:`sims.runs.schedules.ResolvedSchedule`) with steps ``m`` times
    smaller and ``m`` times as many: segment ends times ``m``, step sizes over ``m`` (so ``m t`` steps of it
    approximate flow time ``t`` of the original's rates)."""
    from dataclasses import replace

    return replace(sched, seg_end=sched.seg_end * m, eta_w=sched.eta_w / m, eta_a=sched.eta_a / m,
                   warmup_steps=None if sched.warmup_steps is None else sched.warmup_steps * m,
                   warmup_eta_w=None if sched.warmup_eta_w is None else sched.warmup_eta_w / m)


def finite_step_twin(m: int, **kwargs: Any) -> Any:
    """Finite-step GD on the runs a gradient flow integrates, with steps ``m`` times smaller.

    The order-parameter engine on the runs ``sims.simulate(algorithm="flow", **kwargs)`` integrates: the same
    draws, the schedule resolved as the flow resolves it (the prescribed warmup at the given step sizes) and then
    refined (:func:`refine`), ``m`` times the step budget, the trajectory recorded at ``m`` times the flow's record
    times.  Its ``steps`` (and the other step counts) divided by ``m`` are comparable with the flow's times; as
    ``m`` grows its runs converge to the flow's (Euler's method: the error at a fixed time is O(eta / m)).

    Parameters
    ----------
    m : int
        The refinement (>= 1): steps ``m`` times smaller, ``m`` times as many.
    **kwargs
        The arguments of ``sims.simulate(algorithm="flow", ...)`` (``algorithm`` and ``engine`` are set here).

    Returns
    -------
    sims.SimulationResult
        The finite-step runs (step counts in steps of the refined schedule).

    Raises
    ------
    ValueError
        For ``m < 1`` and whatever :func:`sims.simulate` refuses (naming the field).

    Examples
    --------
    >>> import numpy as np, sims
    >>> from sims.runs.flow import finite_step_twin
    >>> kw = dict(model="resnet", k=4, p=4, runs=3, steps=300, schedule=sims.Schedule.constant(0.5, 1.0), seed=0)
    >>> flow = sims.simulate(algorithm="flow", **kw)
    >>> twin = finite_step_twin(10, **kw)
    >>> flow.outcome.tolist(), np.round(flow.steps, 1), twin.steps / 10
    (['global', 'spurious', 'global'], array([33.9,  3.8, 33.7]), array([33.4,  3.8, 33.4]))
    """
    from sims.runs import simulate as sim

    m = sim._check_int(m, "m", 1)
    kwargs = dict(kwargs, algorithm="gd")
    _, spec, opts = sim._select(kwargs.pop("engine", "reduced"), None, "gd")
    call = sim._validate_common(spec, opts, **{f: kwargs.get(f, d) for f, d in _SIMULATE_DEFAULTS.items()})
    call = spec.validate(opts, call)
    draws = sim.draw(call)
    start = spec.start(opts, call, draws)
    sched = refine(sim._resolve(call, draws, start), m)
    rec = sim.record_steps(call.steps, call.n_record) * m
    call = call._replace(steps=call.steps * m)
    sim.check_memory(k=call.k, p=call.p, runs=call.runs, steps=call.steps, n_record=rec.size, threads=call.threads)
    setup = Setup(draws, start, sched, rec, np.ascontiguousarray(start.WT0.copy()), np.ascontiguousarray(start.A0))
    built = spec.build(opts, call, setup)
    tol = call.tolerances
    out = spec.make_outputs(opts, call.runs, rec.size)
    phi_s = sim._classify.saddle_angles_batch(draws.AS)
    prob = sim.driver.make_problem(draws.WS, draws.AS, phi_s, sched, draws.states, rec, tol.rate_window)
    stops = sim.driver.make_stops(tol, call.steps, tol.stop_trapped and built.trapped)
    sim.driver.run_batch(built.entry, built.workspace, built.eng, prob, stops, out, call.runs, call.threads)
    fin = spec.finish(opts, call, setup, built, out)
    settings = sim._settings_dict(model=call.model.name, k=call.k, p=call.p, runs=call.runs, steps=call.steps,
                                  schedule=call.schedule, algorithm="gd", seed=call.seed, refined=m)
    return sim.assemble_result(settings, call, setup, out, fin, phi_s=phi_s)


#: The arguments of ``sims.simulate`` :func:`finite_step_twin` passes on, with their defaults.
_SIMULATE_DEFAULTS: dict[str, Any] = dict(model="resnet", k=None, p=None, runs=None, steps=None, schedule=None,
                                          teacher=None, init=None, algorithm="gd", batch_size=None, shortcut=None,
                                          seed=0, run_offset=0, tolerances=None, n_record=64, allow_unstable=False,
                                          threads=None)
