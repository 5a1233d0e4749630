"""The plain network's engines in the registry: population GD (``"gd"``: the order-parameter engine where it
applies, else the full-coordinate one; ``"reduced"`` and ``"vector"`` force one) and the finite-sample engines
(``"sgd"``, ``"gd-fixed"``), the engines of ``sims.simulate(algorithm=...)`` without ``engine=``."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from sims.engines import finite_sample, gd, reduced, sgd
from sims.runs.registry import Built, Call, EngineSpec, Finished, Setup, no_noise, register_engine


class GDSpec(EngineSpec):
    """Population GD on the full coordinates with the closed-form gradients (:mod:`sims.engines.gd`): O(k + p)
    per step, any schedule (noise included).  The reference the order-parameter engine is tested against."""

    def build(self, opts: Any, call: Call, setup: Setup) -> Built:
        eng = gd.plain(setup.WT, setup.A, call.model.normalized)
        return Built(gd.run_range, gd.workspace, eng, no_noise(setup.sched))


class Basis(NamedTuple):
    """The vectors a reduced run's coordinates refer to: the filter's ``w* , e1, e2`` and the head's ``a0, a*``."""

    WS: np.ndarray  # (R, p)
    E1: np.ndarray  # (R, p)
    E2: np.ndarray | None  # (R, p) with a moving shortcut (what of v lies outside span{w*, w~0}), else None
    A0: np.ndarray  # (R, k)
    AS: np.ndarray  # (R, k)


def reduced_coordinates(WT0: np.ndarray, WS: np.ndarray, A0: np.ndarray, AS: np.ndarray,
                        V: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Basis]:
    """The order parameters of runs given as vectors: ``(start, consts, basis)`` of :class:`sims.engines.reduced.
    ReducedGD` (``start``: ``u = w~0.w*``, ``r1 = ||w~0 - u w*||``, ``r2 = 0``, ``(x, y, z) = (1, 0, -1)``).

    ``V``: the shortcut direction when its weight moves (its coordinates ``v_u, v_1, v_2`` then fill ``consts``
    and ``e2`` spans what of ``v`` lies outside ``span{w*, w~0}``)."""
    R = WT0.shape[0]
    u = np.einsum("ij,ij->i", WT0, WS)
    E1 = u[:, None] * WS
    np.subtract(WT0, E1, out=E1)
    r1 = np.linalg.norm(E1, axis=1)
    _normalize(E1, r1)
    start = np.zeros((R, 6))
    start[:, 0] = u
    start[:, 1] = r1
    start[:, 3] = 1.0
    start[:, 5] = -1.0
    consts = np.zeros((R, 8))
    consts[:, 0] = np.einsum("ij,ij->i", A0, A0)
    consts[:, 1] = A0.sum(axis=1)
    consts[:, 2] = np.einsum("ij,ij->i", A0, AS)
    consts[:, 3] = AS.sum(axis=1)
    consts[:, 4] = np.einsum("ij,ij->i", AS, AS)
    E2 = None
    if V is not None:
        consts[:, 5] = WS @ V
        consts[:, 6] = E1 @ V
        E2 = V[None, :] - consts[:, 5:6] * WS - consts[:, 6:7] * E1
        v2 = np.linalg.norm(E2, axis=1)
        _normalize(E2, v2)
        consts[:, 7] = v2
    return start, consts, Basis(WS, E1, E2, A0, AS)


def _normalize(E: np.ndarray, norms: np.ndarray) -> None:
    """Rows of ``E`` divided by ``norms`` in place (rows of norm 0 stay 0: the direction is never used)."""
    nz = norms > 0.0
    E[nz] /= norms[nz, None]
    E[~nz] = 0.0


def rebuild(state: np.ndarray, basis: Basis, WT: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vectors ``(w~, a)`` of reduced runs from their coordinates ``state`` (rows ``u, r1, r2, x, y, z``),
    written into ``WT, A`` (no temporaries of their size: the memory check counts no more)."""
    np.multiply(state[:, 0:1], basis.WS, out=WT)
    _axpy(WT, state[:, 1], basis.E1)
    if basis.E2 is not None:
        _axpy(WT, state[:, 2], basis.E2)
    np.multiply(state[:, 3:4], basis.A0, out=A)
    A += state[:, 4:5]
    _axpy(A, 1.0 + state[:, 5], basis.AS)
    return WT, A


def _axpy(Y: np.ndarray, coef: np.ndarray, X: np.ndarray, rows: int = 4096) -> None:
    """``Y += coef[:, None] * X`` in blocks of rows (a temporary of at most ``rows`` rows)."""
    for lo in range(0, Y.shape[0], rows):
        Y[lo:lo + rows] += coef[lo:lo + rows, None] * X[lo:lo + rows]


class ReducedSpec(EngineSpec):
    """Population GD on the order parameters (:mod:`sims.engines.reduced`): O(1) per step, whatever ``k`` and
    ``p`` are; noise-free schedules only (a noisy step leaves the subspace)."""

    def validate(self, opts: Any, call: Call) -> Call:
        call = super().validate(opts, call)
        noisy = [i for i, seg in enumerate(call.schedule.segments) if seg.noise_w > 0.0 or seg.noise_a > 0.0]
        if noisy:
            raise ValueError(f"engine = 'reduced' needs a noise-free schedule: schedule.segments[{noisy[0]}] has "
                             "noise (a perturbed step leaves the order parameters' subspace); use engine='vector'")
        return call

    def build(self, opts: Any, call: Call, setup: Setup) -> Built:
        start, consts, basis = reduced_coordinates(setup.WT, setup.draws.WS, setup.A, setup.draws.AS)
        eng, entry = reduced.engine(start, consts, call.k, call.model.normalized)
        return Built(entry, reduced.workspace, eng, True, basis)

    def finish(self, opts: Any, call: Call, setup: Setup, built: Built, out: Any) -> Finished:
        """The vectors rebuilt from the final coordinates (:func:`rebuild`)."""
        WT, A = rebuild(built.eng.out, built.extra, setup.WT, setup.A)
        w = WT - call.shortcut if call.model.shortcut else WT
        return Finished(WT, A, w, call.model, {})


class AutoGDSpec(EngineSpec):
    """Population GD as ``simulate(algorithm="gd")`` runs it: on the order parameters (:class:`ReducedSpec`)
    when the schedule is noise-free, on the full coordinates (:class:`GDSpec`) otherwise."""

    @staticmethod
    def _pick(sched: Any) -> EngineSpec:
        return REDUCED if no_noise(sched) else VECTOR

    def build(self, opts: Any, call: Call, setup: Setup) -> Built:
        return self._pick(setup.sched).build(opts, call, setup)

    def finish(self, opts: Any, call: Call, setup: Setup, built: Built, out: Any) -> Finished:
        spec = REDUCED if isinstance(built.eng, reduced.ReducedGD) else VECTOR
        return spec.finish(opts, call, setup, built, out)


class FiniteSampleSpec(EngineSpec):
    """Online SGD and GD on a fixed sample (:mod:`sims.engines.sgd`); never ``trapped`` (the steps are noisy)."""

    algorithms = ("sgd", "gd-fixed")

    def build(self, opts: Any, call: Call, setup: Setup) -> Built:
        eng = finite_sample.engine(call.algorithm, call.batch_size, setup.WT, setup.A, setup.draws.WS,
                                   setup.draws.AS, call.model.normalized)
        return Built(sgd.run_range, sgd.workspace, eng, False)


VECTOR = register_engine("vector", GDSpec())
REDUCED = register_engine("reduced", ReducedSpec())
GD = register_engine("gd", AutoGDSpec())
SGD = register_engine("sgd", FiniteSampleSpec())
register_engine("gd-fixed", SGD)
