"""Simulations of the shallow CNN/ResNet: numba kernels, schedules, runs, sweeps, tables, plots and the CLI."""

from sims.classify import OUTCOMES
from sims.samplers import Init, Teacher
from sims.schedules import Schedule, Segment
from sims.simulate import SimulationResult, Tolerances, record_steps, simulate

__all__ = [
    "OUTCOMES",
    "Init",
    "Schedule",
    "Segment",
    "SimulationResult",
    "Teacher",
    "Tolerances",
    "record_steps",
    "simulate",
]
