"""Helpers shared by the reparameterization studies (:mod:`sims.methods.distill`, :mod:`sims.methods.laperm`):
teacher and
initialization draws from the per-run streams (the same draws :func:`sims.simulate` makes), thread control and the
reference loss.  Copied from the engine's conventions rather than hooked into :mod:`sims.runs.simulate`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np

import theory
from sims.engines.rng import stream_states
from sims.runs import samplers
from sims.runs.samplers import Init, Teacher
from sims.runs.simulate import _check_int


def check_threads(threads: Any) -> int | None:
    return None if threads is None else _check_int(threads, "threads", 1, numba.config.NUMBA_NUM_THREADS)


@contextmanager
def numba_threads(threads: int | None) -> Iterator[None]:
    old = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def draw_problem(
    *, k: int, p: int, runs: int, teacher: Any, init: Init, v: np.ndarray, seed: int, run_offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(states, WS, AS, W0, A0)`` for runs ``run_offset ..``: exactly the draws of :func:`sims.simulate` with the
    same ``teacher``, ``init``, ``seed`` (so methods run with one seed are paired run by run)."""
    states = stream_states(seed, run_offset, run_offset + runs)
    if isinstance(teacher, Teacher):
        teacher.validate(k)
        WS, AS, W0, A0 = samplers.draw(states, p=p, k=k, teacher=teacher, init=init, shortcut=v)
        return states, WS, AS, W0, A0
    try:
        w_star, a_star = teacher
    except (TypeError, ValueError):
        raise ValueError("teacher must be a sims.Teacher or a pair (w_star, a_star)") from None
    w_star = theory.validation.unit_teacher(w_star)
    a_star = theory.validation.as_vector(a_star, "a_star")
    if w_star.size != p or a_star.size != k:
        raise ValueError(f"teacher (w_star, a_star) must have lengths (p, k) = ({p}, {k}); "
                         f"got ({w_star.size}, {a_star.size})")
    dummy = Teacher(a="fixed", a_value=tuple(a_star))
    _, _, W0, A0 = samplers.draw(states, p=p, k=k, teacher=dummy, init=init, shortcut=v)
    WS = np.repeat(w_star[None, :], runs, axis=0)
    AS = np.repeat(a_star[None, :], runs, axis=0)
    return states, WS, AS, W0, A0


def angles(WT: np.ndarray, WS: np.ndarray) -> np.ndarray:
    """Angle between each row of ``WT`` (nonzero) and the unit rows of ``WS`` (atan2 form, exact at 0 and pi)."""
    n = np.linalg.norm(WT, axis=1)
    c = np.einsum("ij,ij->i", WT, WS) / n
    return np.arctan2(np.linalg.norm(WS - (c / n)[:, None] * WT, axis=1), c)


def loss_ref(AS: np.ndarray) -> np.ndarray:
    """``L_ref = E[f*^2] / 2`` per run (1 where it vanishes), as in :func:`sims.simulate`."""
    ref = (AS.sum(axis=1) ** 2 + (math.pi - 1.0) * np.einsum("ij,ij->i", AS, AS)) / (4.0 * math.pi)
    return np.where(ref > 0, ref, 1.0)
