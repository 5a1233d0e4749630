"""Simulations of the shallow CNN/ResNet: numba kernels, schedules, runs, sweeps, tables, plots and the CLI.

:func:`simulate` runs every engine (:mod:`sims.runs.registry`): the plain network's (``algorithm=``), and by
``engine=`` a registered name or options object (:class:`Expansion`, :class:`Fade`, :class:`LaPerm`).  Importing
:mod:`sims` registers the engines of :mod:`sims.methods`; :func:`register_engine` adds one.
"""

from sims.methods.distill import Fade, fold_shortcut, simulate_fading
from sims.methods.expansion import Expansion, contract
from sims.methods.laperm import LaPerm, simulate_laperm
from sims.runs.classify import OUTCOMES
from sims.runs.flow import Flow
from sims.runs.registry import Built, Call, Draws, EngineSpec, Finished, Setup, Start, engine_names, register_engine
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule, Segment
from sims.runs.simulate import SimulationResult, Tolerances, record_steps, simulate

__all__ = [
    "OUTCOMES",
    "Built",
    "Call",
    "Draws",
    "EngineSpec",
    "Expansion",
    "Fade",
    "Finished",
    "Flow",
    "Init",
    "LaPerm",
    "Schedule",
    "Segment",
    "Setup",
    "SimulationResult",
    "Start",
    "Teacher",
    "Tolerances",
    "contract",
    "engine_names",
    "fold_shortcut",
    "record_steps",
    "register_engine",
    "simulate",
    "simulate_fading",
    "simulate_laperm",
]
