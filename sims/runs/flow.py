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

Refused (``ValueError`` naming the field): a schedule with noise (the flow is deterministic), SGD settings
(``batch_size``), an engine that takes finite steps (``engine="vector"``, ``"reduced"``, ...) with
``algorithm="flow"``, and tolerances of the solver outside ``[1e-14, 1e-2]`` (``rtol``) or ``(0, 1e-2]``
(``atol``).  GD's stability limit on ``eta_a`` does not apply to the flow (it has none); the solver's steps shrink
instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sims.engines import flow
from sims.runs.plain import rebuild, reduced_coordinates
from sims.runs.registry import Built, Call, EngineSpec, Finished, Setup, register_engine


@dataclass(frozen=True)
class Flow:
    """Options of the gradient-flow engine: the solver's relative and absolute tolerances (scipy's ``rtol``,
    ``atol``: the local error estimate is kept below ``atol + rtol |y|`` in the RMS norm over the coordinates).

    The defaults are tight: the coordinates are O(1) and tend to 0 at the global minimum (a loss of ``1e-10
    L_ref`` puts them near ``1e-5``), where ``atol = 1e-12`` still leaves seven digits.
    """

    rtol: float = 1e-10
    atol: float = 1e-12

    def __post_init__(self) -> None:
        for name, lo, closed in (("rtol", 1e-14, True), ("atol", 0.0, False)):
            val = getattr(self, name)
            ok = isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, bool)
            x = float(val) if ok else math.nan
            if not (ok and math.isfinite(x) and (x >= lo if closed else x > lo) and x <= 1e-2):
                rng = f"[{lo:g}, 0.01]" if closed else f"({lo:g}, 0.01]"
                raise ValueError(f"flow.{name} must be a number in {rng}; got {val!r}")
            object.__setattr__(self, name, x)


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
        return call

    def make_outputs(self, opts: Flow, runs: int, m: int) -> flow.FlowOutputs:
        return flow.make_outputs(runs, m)

    def build(self, opts: Flow, call: Call, setup: Setup) -> Built:
        start, consts, basis = reduced_coordinates(setup.WT, setup.draws.WS, setup.A, setup.draws.AS)
        eng = flow.engine(start, consts, call.k, call.model.normalized, opts.rtol, opts.atol)
        return Built(flow.run_range, flow.workspace, eng, True, basis)

    def finish(self, opts: Flow, call: Call, setup: Setup, built: Built, out: Any) -> Finished:
        """The vectors rebuilt from the final coordinates; the solver's counts as extras."""
        WT, A = rebuild(built.eng.out, built.extra, setup.WT, setup.A)
        w = WT - call.shortcut if call.model.shortcut else WT
        extras = {"flow_steps": built.eng.nsteps, "flow_nfev": built.eng.nfev}
        return Finished(WT, A, w, call.model, extras, continuous=True)

    def settings(self, opts: Flow, call: Call, base: dict[str, Any]) -> dict[str, Any]:
        return dict(base, flow={"rtol": opts.rtol, "atol": opts.atol})


FLOW = register_engine("flow", FlowSpec())
