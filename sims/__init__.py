"""Simulations of the shallow CNN/ResNet: numba kernels, schedules, runs, sweeps, tables, plots and the CLI."""

from sims.methods.distill import Fade, fold_shortcut, simulate_fading
from sims.methods.expansion import Expansion, contract
from sims.methods.laperm import simulate_laperm
from sims.runs.classify import OUTCOMES
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule, Segment
from sims.runs.simulate import SimulationResult, Tolerances, record_steps, simulate

__all__ = [
    "OUTCOMES",
    "Expansion",
    "Fade",
    "Init",
    "Schedule",
    "Segment",
    "SimulationResult",
    "Teacher",
    "Tolerances",
    "contract",
    "fold_shortcut",
    "record_steps",
    "simulate",
    "simulate_fading",
    "simulate_laperm",
]
