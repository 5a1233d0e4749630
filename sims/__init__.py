"""Simulations of the shallow CNN/ResNet: numba kernels, schedules, runs, sweeps, tables, plots and the CLI."""
