"""Simulations of the shallow CNN/ResNet: numba kernels, schedules, runs, sweeps, tables, plots and the CLI."""

from sims.classify import OUTCOMES
from sims.distill import Fade, fold_shortcut, simulate_fading
from sims.expansion import Expansion, contract
from sims.laperm import simulate_laperm
from sims.samplers import Init, Teacher
from sims.schedules import Schedule, Segment
from sims.simulate import SimulationResult, Tolerances, record_steps, simulate

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
