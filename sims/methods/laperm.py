"""Train-by-reconnect (LaPerm, Qiu & Suda 2020) in the shallow CNN: training by permuting the initial weight values.

The weights ``w`` (the CNN filter) and ``a`` keep their initial *values*.  An inner optimizer (population GD, or
Adam on the population gradient) runs ``K = sync_every`` steps on a copy; then the copy is *synchronized*: the
``i``-th smallest initial value is put where the copy has its ``i``-th smallest entry, separately for ``w`` and for
``a``, and the inner optimizer continues from the synchronized weights (Adam keeps its moment estimates across
synchronizations, as the inner optimizer of LaPerm does).  Synchronizations happen at steps ``K, 2K, ...`` and once
more at the end of the step budget, so the network reported is always a permutation of the initial values
(``||w||`` is kept, and the normalized CNN only sees the direction of ``w``).  ``t`` counts inner steps.

**Initial values** (``init``): ``"gaussian"`` draws ``w0`` with entries ``N(0, 1/p)`` and ``a0`` with entries
``N(0, ||a*||^2 / k)`` -- exactly the draws of ``sims.simulate(model="cnn", init=Init(w="gaussian",
a="gaussian"))`` with the same seed; ``"uniform"`` maps those same normals ``z`` through ``sqrt(3) sigma erf(z /
sqrt 2)``, which is uniform on ``[-sqrt(3) sigma, sqrt(3) sigma]`` with the same per-entry ``sigma`` and the *same
ranks* (the two distributions are coupled run by run).

**What a permutation can reach.**  ``S = 1.a`` and ``Q = ||a||^2`` do not change under a permutation of ``a``, so
the loss depends on the permutations only through ``cos(phi) = w.w* / ||w||`` and ``P = a.a*``:
``L = const - [S S* + (g(phi) - 1) P] / (2 pi)`` (SCIENCE.md 2, ``g`` the arc-cosine kernel, decreasing).  By the
rearrangement inequality ``cos(phi)`` is largest when ``w`` is ordered like ``w*`` and smallest when ordered
against it, and likewise ``P`` with ``a`` and ``a*``; the product ``(g - 1) P`` over the box of those ranges is
largest at a corner, so the best loss any permutation reaches (``extras["oracle_loss"]``) is the smallest of the
four corner losses.  Since ``a`` keeps its values, ``a = a*`` (the global minimum) is out of reach unless the
initial values happen to be ``a*``'s: the standard classification (against the theory's fixed points, on the
synchronized weights) reports such runs ``not_converged``.  The permutation-level outcome is in
``extras["perm_optimal"]`` (the synchronized weights are the best permutation) and ``extras["perm_anti"]`` (``w``
ordered against ``w*`` and ``a`` against ``a*``, and that is not the best permutation: the permutation analogue of
the spurious point ``phi = pi``, ``a.a* < 0``).

``permute="w"`` (or ``"a"``) synchronizes only that layer and trains the other freely with the inner optimizer;
this separates the two obstacles: a permuted ``w`` can only approximate the direction of ``w*`` (its best
arrangement is ordered like ``w*``), while a permuted ``a`` keeps ``1.a`` and ``||a||``, which the loss sees
directly.  The oracle then optimizes the free layer (``a = a(phi)``; ``phi = 0`` or ``pi`` by the sign of ``a.a*``).

**Stopping.**  Runs stop only at synchronizations: ``loss_tol`` (synchronized loss), ``max_steps``, ``diverged``
(any non-finite or huge loss, also of the inner copy), and ``sync_fixed``: with the GD inner optimizer in its last
schedule segment, a synchronization that returns exactly the previous synchronized weights means every later
period repeats it, so the run has reached a fixed point of the LaPerm map and is stopped (the final network is
the same as with the full budget).  ``sync_every=None`` runs the inner optimizer alone (no synchronization): with
``inner="gd"`` this is plain population GD of the CNN, with the stop rules of :func:`sims.simulate`; it is the
baseline of :func:`compare`.  The trajectory records the synchronized network (the last synchronization at or
before each recorded step); ``extras["syncs"]``, ``extras["sync_changes"]`` and ``extras["last_change_step"]`` count
synchronizations, those that changed the weights, and the step of the last change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import theory
from sims.engines import laperm as lp
from sims.runs import classify as _classify
from sims.runs.registry import Built, Call, Draws, EngineSpec, Finished, Setup, Start, check_stable, register_engine
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule, optimal_eta_a
from sims.runs.simulate import SimulationResult, Tolerances, _check_int, angles, simulate

INNER: tuple[str, ...] = ("gd", "adam")
INIT_DISTS: tuple[str, ...] = ("gaussian", "uniform")
PERMUTE: tuple[str, ...] = ("both", "w", "a")


# ---- initial values ---------------------------------------------------------------------------------------------
def _initial_values(dist: str, W0: np.ndarray, A0: np.ndarray, AS: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(w0, a0)`` of the given distribution from the Gaussian draws (see the module docstring)."""
    if dist == "gaussian":
        return W0, A0
    from scipy import special  # here, not at the top: scipy.special takes 0.2 s to import (sims.cli)

    p, k = W0.shape[1], A0.shape[1]
    sw = 1.0 / math.sqrt(p)
    sa = np.linalg.norm(AS, axis=1, keepdims=True) / math.sqrt(k)
    W = math.sqrt(3.0) * sw * special.erf(W0 / sw / math.sqrt(2.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        A = np.where(sa > 0, math.sqrt(3.0) * sa * special.erf(A0 / sa / math.sqrt(2.0)), 0.0)
    return W, A


def _arranged(sorted_vals: np.ndarray, target: np.ndarray, *, reverse: bool) -> np.ndarray:
    """Row by row: ``sorted_vals`` placed in the rank order of ``target`` (or against it)."""
    out = np.empty_like(sorted_vals)
    order = np.argsort(target, axis=1, kind="mergesort")
    vals = sorted_vals[:, ::-1] if reverse else sorted_vals
    np.put_along_axis(out, order, vals, axis=1)
    return out


def permutation_optimum(w0: Any, a0: Any, w_star: Any, a_star: Any, *, permute: str = "both") -> dict[str, np.ndarray]:
    """The best loss reachable by permuting the initial values (module docstring), row by row.

    Arrays ``(R, p)``, ``(R, k)`` (1-D inputs are one row).  ``permute``: which layers are permuted; a layer that
    is not is optimized freely (``a = a(phi)`` for a free ``a``; ``phi`` in ``{0, pi}`` for a free ``w``, the sign of
    ``a.a*`` deciding).  Returns ``oracle_loss``, the arrangements ``w_best``/``a_best`` that reach it (meaningful
    for the permuted layers), and ``w_anti``/``a_anti`` (ordered against the teacher).
    """
    if permute not in PERMUTE:
        raise ValueError(f"permute must be one of {PERMUTE}; got {permute!r}")
    w0, a0 = np.atleast_2d(np.asarray(w0, float)), np.atleast_2d(np.asarray(a0, float))
    WS = np.broadcast_to(np.atleast_2d(np.asarray(w_star, float)), w0.shape)
    AS = np.broadcast_to(np.atleast_2d(np.asarray(a_star, float)), a0.shape)
    R = len(w0)
    sw, sa = np.sort(w0, axis=1), np.sort(a0, axis=1)
    cand_w = {False: _arranged(sw, WS, reverse=False), True: _arranged(sw, WS, reverse=True)}
    cand_a = {False: _arranged(sa, AS, reverse=False), True: _arranged(sa, AS, reverse=True)}
    Ss, Qs = AS.sum(axis=1), np.einsum("ij,ij->i", AS, AS)
    best = np.full(R, np.inf)
    w_best, a_best = cand_w[False].copy(), cand_a[False].copy()
    for rw in (False, True):
        for ra in (False, True):
            if permute == "a" and rw:
                continue
            if permute == "w" and ra:
                continue
            a = cand_a[ra]
            if permute == "w":  # a free: a = a(phi), the loss-minimizing second layer at this angle
                phi = angles(cand_w[rw], WS)
                a = _classify.optimal_a_batch(phi, AS)
            P = np.einsum("ij,ij->i", a, AS)
            if permute == "a":  # w free: phi = 0 if a.a* >= 0 (the loss falls with g(phi) P), else pi
                phi = np.where(P >= 0.0, 0.0, math.pi)
            elif permute == "both":
                phi = angles(cand_w[rw], WS)
            S, Q = a.sum(axis=1), np.einsum("ij,ij->i", a, a)
            L = theory.closed_forms.loss(1.0, phi, np.cos(phi), np.sin(phi), S, Q, P, Ss, Qs)
            better = L < best
            best = np.where(better, L, best)
            w_best[better], a_best[better] = cand_w[rw][better], cand_a[ra][better]
    return {"oracle_loss": best, "w_best": w_best, "a_best": a_best, "w_anti": cand_w[True], "a_anti": cand_a[True]}


def _check_adam(adam: Any) -> tuple[float, float, float]:
    try:
        b1, b2, eps = (float(x) for x in adam)
    except (TypeError, ValueError):
        raise ValueError(f"adam must be (beta1, beta2, eps); got {adam!r}") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0 and math.isfinite(eps) and eps > 0.0):
        raise ValueError(f"adam must be (beta1, beta2, eps) with 0 <= beta1, beta2 < 1 and eps > 0; got {adam!r}")
    return b1, b2, eps


# ---- the engine ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaPerm:
    """Options of train-by-reconnect (module docstring): ``sims.simulate(engine=sims.LaPerm(...), model="cnn")``.

    ``sync_every``: the synchronization period ``K >= 1`` in inner steps (``None``: no synchronization, the plain
    inner optimizer); ``inner``: ``"gd"`` (population GD, step sizes from the schedule) or ``"adam"`` (the
    schedule's ``eta_w``/``eta_a`` are Adam's learning rates; ``adam = (beta1, beta2, eps)``); ``dist``: the
    distribution of the initial values, ``"gaussian"`` or ``"uniform"`` (``simulate_laperm``'s ``init``);
    ``permute``: the layers synchronized, ``"both"`` (LaPerm as specified), ``"w"`` or ``"a"`` (the other layer
    trains freely).

    Parameters
    ----------
    sync_every : int or None
        The synchronization period ``K >= 1`` in inner steps; None: the plain inner optimizer.
    inner : {"gd", "adam"}, default "gd"
        The inner optimizer.
    dist : {"gaussian", "uniform"}, default "gaussian"
        The distribution of the initial values.
    permute : {"both", "w", "a"}, default "both"
        The layers whose values are permuted.
    adam : tuple of float, default (0.9, 0.999, 1e-8)
        Adam's ``(beta1, beta2, eps)``: ``0 <= beta1, beta2 < 1``, ``eps > 0``.

    Raises
    ------
    ValueError
        Naming the field, for a period below 1, an unknown name or Adam parameters out of range.

    Examples
    --------
    The synchronized weights are a permutation of the initial values, so the teacher is out of reach:

    >>> import numpy as np, sims
    >>> res = sims.simulate(engine=sims.LaPerm(sync_every=10), model="cnn", k=4, p=4, runs=3, steps=300,
    ...                     schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res.outcome.tolist(), res.stop_reason.tolist()
    (['not_converged', 'not_converged', 'not_converged'], ['sync_fixed', 'sync_fixed', 'sync_fixed'])
    >>> bool(np.array_equal(np.sort(res.w, axis=1), np.sort(res.w0, axis=1)))
    True
    """

    sync_every: int | None
    inner: str = "gd"
    dist: str = "gaussian"
    permute: str = "both"
    adam: tuple[float, float, float] = (0.9, 0.999, 1e-8)

    def __post_init__(self) -> None:
        if self.sync_every is not None:
            object.__setattr__(self, "sync_every", _check_int(self.sync_every, "sync_every (K)", 1))
        if not isinstance(self.inner, str) or self.inner not in INNER:
            raise ValueError(f"inner must be one of {INNER} (the inner optimizer); got {self.inner!r}")
        if not isinstance(self.dist, str) or self.dist not in INIT_DISTS:
            raise ValueError(f"dist must be one of {INIT_DISTS} (the distribution of the initial values, "
                             f"simulate_laperm's init); got {self.dist!r}")
        if not isinstance(self.permute, str) or self.permute not in PERMUTE:
            raise ValueError(f"permute must be one of {PERMUTE} (the layers whose values are permuted); "
                             f"got {self.permute!r}")
        object.__setattr__(self, "adam", _check_adam(self.adam))

    @property
    def K(self) -> int:
        """The synchronization period, 0 for none."""
        return 0 if self.sync_every is None else self.sync_every


class LaPermSpec(EngineSpec):
    """LaPerm on the weight-normalized CNN (:mod:`sims.engines.laperm`); the initial values are drawn as
    ``Init(w="gaussian", a="gaussian")`` (then mapped to ``dist``), the default teacher is isotropic."""

    options = LaPerm

    def default_teacher(self, opts: LaPerm) -> Teacher:
        return Teacher(w="sphere")  # a permutation keeps 1.w: a teacher tied to the 1 direction would favour it

    def default_init(self, opts: LaPerm, model: theory.Model) -> Init:
        return GAUSSIAN

    def validate(self, opts: LaPerm, call: Call) -> Call:
        if call.model != theory.CNN:
            raise ValueError(f"model must be 'cnn' for LaPerm (the weight-normalized CNN); got {call.model.name!r}")
        if call.explicit is not None or call.init != GAUSSIAN:
            raise ValueError("init: LaPerm draws its initial values itself (choose their distribution with "
                             "LaPerm(dist=...))")
        if call.algorithm != "gd":
            raise ValueError(f"algorithm must be 'gd' for LaPerm (choose the inner optimizer with LaPerm(inner=...)); "
                             f"got {call.algorithm!r}")
        if any(s.noise_w > 0 or s.noise_a > 0 for s in call.schedule.segments):
            raise ValueError("schedule: perturbation noise is not supported by simulate_laperm (noise_w = noise_a = 0)")
        if opts.inner == "gd":
            check_stable(call)
        return call

    def extra_per_run(self, opts: LaPerm, call: Call) -> int:
        return 4 * (call.k + call.p)  # sorted values and the inner optimizer's moments

    def start(self, opts: LaPerm, call: Call, draws: Draws) -> Start:
        W0, A0 = _initial_values(opts.dist, draws.W0, draws.A0, draws.AS)
        return Start(W0, A0, W0, A0, phi0=angles(W0, draws.WS))

    def build(self, opts: LaPerm, call: Call, setup: Setup) -> Built:
        W0 = setup.start.w0
        WV = np.ascontiguousarray(np.sort(W0, axis=1))
        AV = np.ascontiguousarray(np.sort(setup.start.a0, axis=1))
        b1, b2, eps = opts.adam
        eng = lp.Reconnect(setup.WT, setup.A, WV, AV, int(opts.K), opts.permute != "a", opts.permute != "w",
                           INNER.index(opts.inner), float(b1), float(b2), float(eps), int(call.steps),
                           np.empty((call.runs, 3), dtype=np.int64))
        return Built(lp.run_range, lp.workspace, eng, opts.inner == "gd")

    def finish(self, opts: LaPerm, call: Call, setup: Setup, built: Built, out: Any) -> Finished:
        W, A = setup.WT, setup.A
        extras: dict[str, np.ndarray] = {}
        if opts.K > 0:
            draws, permute, sync_info = setup.draws, opts.permute, built.eng.sync_info
            opt = permutation_optimum(setup.start.w0, setup.start.a0, draws.WS, draws.AS, permute=permute)
            free = np.ones(call.runs, dtype=bool)  # a layer that is not permuted matches any arrangement
            w_ok = {key: np.all(W == opt[f"w_{key}"], axis=1) if permute != "a" else free for key in ("best", "anti")}
            a_ok = {key: np.all(A == opt[f"a_{key}"], axis=1) if permute != "w" else free for key in ("best", "anti")}
            match_best = w_ok["best"] & a_ok["best"]
            extras = {
                "syncs": sync_info[:, 0].copy(),
                "sync_changes": sync_info[:, 1].copy(),
                "last_change_step": sync_info[:, 2].copy(),
                "oracle_loss": opt["oracle_loss"],
                "perm_optimal": match_best,
                "perm_anti": w_ok["anti"] & a_ok["anti"] & ~match_best,
            }
        return Finished(W, A, W, theory.CNN, extras)

    def settings(self, opts: LaPerm, call: Call, base: dict[str, Any]) -> dict[str, Any]:
        out = dict(model=theory.CNN.name, trained_as="laperm" if opts.K else "plain")
        out.update((key, base[key]) for key in ("k", "p", "runs", "steps", "schedule"))
        out.update(sync_every=opts.sync_every, inner=opts.inner, init=opts.dist, permute=opts.permute,
                   teacher=call.teacher, adam=opts.adam, algorithm=opts.inner, batch_size=None)
        out.update((key, base[key]) for key in ("seed", "run_offset", "tolerances", "n_record", "allow_unstable"))
        return out


GAUSSIAN = Init(w="gaussian", a="gaussian")
register_engine("laperm", LaPermSpec())


def simulate_laperm(*, k: int, p: int, runs: int, steps: int, schedule: Schedule, sync_every: int | None,
                    inner: str = "gd", init: str = "gaussian", permute: str = "both",
                    teacher: Teacher | tuple[Any, Any] | None = None,
                    adam: tuple[float, float, float] = (0.9, 0.999, 1e-8), seed: int = 0, run_offset: int = 0,
                    tolerances: Tolerances | None = None, n_record: int = 64, allow_unstable: bool = False,
                    threads: int | None = None) -> SimulationResult:
    """Train ``runs`` weight-normalized CNNs by LaPerm (module docstring) and return a :class:`SimulationResult`.

    The same as ``sims.simulate(engine=LaPerm(sync_every, inner, init, permute, adam), model="cnn", ...)``.

    Parameters
    ----------
    k, p, runs, steps : int
        As :func:`sims.simulate`.
    schedule : Schedule
        As :func:`sims.simulate`.
    sync_every : int or None
        As :class:`LaPerm` (None: plain training from the same initial values).
    inner, permute : str, optional
        As :class:`LaPerm`.
    adam : tuple of float, optional
        As :class:`LaPerm`.
    seed, run_offset, n_record : int, optional
        As :func:`sims.simulate`.
    tolerances, allow_unstable, threads : optional
        As :func:`sims.simulate`.
    init : {"gaussian", "uniform"}, default "gaussian"
        The distribution of the initial values (:attr:`LaPerm.dist`).
    teacher : Teacher or tuple of array_like, optional
        Default ``Teacher(w="sphere")`` (isotropic: a permutation keeps ``1.w``, so a teacher tied to the ``1``
        direction would favour permutations).  Run ``r`` draws its teacher and Gaussian initial values exactly as
        ``sims.simulate(model="cnn", init=Init(w="gaussian", a="gaussian"))`` with the same seed; results are
        bit-identical for any thread count and run split.

    Returns
    -------
    SimulationResult
        ``result.w``/``result.a`` are the synchronized weights (a permutation of ``result.w0``/``result.a0``) and
        are classified against the theory's fixed points; ``result.extras`` holds the permutation-level results
        (``oracle_loss``: the best loss any permutation reaches; ``perm_optimal``: whether the run found it).

    Raises
    ------
    ValueError
        As :func:`sims.simulate`, and for unknown ``inner``, ``init`` or ``permute`` names.

    Examples
    --------
    A permutation keeps ``1.a`` and ``||a||``, so LaPerm cannot reach the teacher here:

    >>> import sims
    >>> res = sims.simulate_laperm(k=4, p=4, runs=20, steps=500, schedule=sims.methods.laperm.du_constant(4),
    ...                            sync_every=10)
    >>> res.counts()["global"]
    0
    """
    opts = LaPerm(sync_every=sync_every, inner=inner, dist=init, permute=permute, adam=adam)
    return simulate(engine=opts, model="cnn", k=k, p=p, runs=runs, steps=steps, schedule=schedule, teacher=teacher,
                    seed=seed, run_offset=run_offset, tolerances=tolerances, n_record=n_record,
                    allow_unstable=allow_unstable, threads=threads)


# ---- comparison -------------------------------------------------------------------------------------------------
def du_constant(k: int) -> Schedule:
    """GD without warmup as in the du2018 sweep: ``eta_w = 0.5 (2/k)``, ``eta_a = 0.9 * 4 pi / (k + 2 pi - 2)``."""
    return Schedule.constant(0.5 * 2.0 / k, 0.9 * optimal_eta_a(k))


def _row(res: SimulationResult, method: str, k: int, p: int, K: int | None, dist: str, inner: str,
         permute: str, base: SimulationResult) -> dict[str, Any]:
    from sims.runs.classify import wilson

    n = len(res)
    row: dict[str, Any] = {"method": method, "k": k, "p": p, "sync_every": K if K else 0, "init": dist,
                           "inner": inner, "permute": permute if K else "", "trials": n}
    for name in ("global", "spurious"):
        s = int(np.sum(res.outcome == name))
        lo, hi = wilson(s, n)
        row[f"p_{name}"], row[f"p_{name}_lo"], row[f"p_{name}_hi"] = s / n, float(lo), float(hi)
    row["final_loss_median"] = float(np.median(res.final_loss))
    row["final_loss_rel_median"] = float(np.median(res.final_loss / res.loss_ref))
    if K:
        for name in ("perm_optimal", "perm_anti"):
            s = int(np.sum(res.extras[name]))
            lo, hi = wilson(s, n)
            row[f"p_{name}"], row[f"p_{name}_lo"], row[f"p_{name}_hi"] = s / n, float(lo), float(hi)
        row["oracle_loss_rel_median"] = float(np.median(res.extras["oracle_loss"] / res.loss_ref))
        row["last_change_median"] = float(np.median(res.extras["last_change_step"]))
        # Paired with the plain optimizer from the same initial values: does LaPerm inherit its basin?
        for name in ("global", "spurious"):
            sel = base.outcome == name
            row[f"p_perm_optimal_if_plain_{name}"] = float(np.mean(res.extras["perm_optimal"][sel])) if sel.any() \
                else math.nan
    else:
        for name in ("perm_optimal", "perm_anti"):
            row[f"p_{name}"] = row[f"p_{name}_lo"] = row[f"p_{name}_hi"] = math.nan
        row["oracle_loss_rel_median"] = row["last_change_median"] = math.nan
        row["p_perm_optimal_if_plain_global"] = row["p_perm_optimal_if_plain_spurious"] = math.nan
    return row


def compare(
    *,
    cells: Any = ((4, 4), (16, 16)),
    sync_every: Any = (1, 10, 100),
    inits: Any = INIT_DISTS,
    inner: str = "gd",
    permute: str = "both",
    trials: int = 300,
    steps: int = 5000,
    schedule: Schedule | Any = du_constant,
    teacher: Teacher | None = None,
    seed: int = 0,
    tolerances: Tolerances | None = None,
    threads: int | None = None,
):
    """LaPerm against the plain inner optimizer from the same initial values, as a pandas DataFrame.

    One row per method x (k, p) x initial distribution: ``method`` (``"gd-gaussian"`` -- the plain optimizer,
    ``"gd"`` or ``"adam"`` -- or ``"laperm-K10-gaussian"``; with ``inner="adam"`` ``"laperm-adam-K10-gaussian"``,
    with ``permute="w"`` ``"laperm-w-K10-gaussian"``), ``k``, ``p``, ``sync_every`` (0 for the plain optimizer),
    ``init``, ``inner``, ``permute``, ``trials``, ``p_global`` with Wilson 95% interval
    (``p_global_lo``/``p_global_hi``), ``p_spurious`` (and interval), ``final_loss_median`` and
    ``final_loss_rel_median`` (loss / L_ref), and for LaPerm ``p_perm_optimal``/``p_perm_anti`` (with intervals),
    ``oracle_loss_rel_median`` (best permutation), ``last_change_median`` (step of the last effective
    synchronization) and ``p_perm_optimal_if_plain_global``/``..._spurious`` (the fraction reaching the best
    permutation among the runs whose plain-optimizer twin ended at the global minimum / the spurious point).
    All methods of a cell share teachers and initial values run by run (same ``seed``).
    ``schedule``: a :class:`Schedule` or a function ``k -> Schedule`` (default :func:`du_constant`); ``teacher``
    defaults to ``Teacher(w="sphere", require_spurious=True)`` (teachers with a spurious minimum, isotropic ``w*``).
    The ``laperm`` table (:func:`sims.studies.tables.laperm_rows`) gives the same numbers from a resumable sweep.

    Parameters
    ----------
    cells : sequence of (int, int), default ((4, 4), (16, 16))
        The ``(k, p)`` pairs.
    sync_every : sequence of int, default (1, 10, 100)
        The synchronization periods ``K >= 1`` compared.
    inits : sequence of str, default ("gaussian", "uniform")
        The distributions of the initial values.
    inner : {"gd", "adam"}, default "gd"
        The inner optimizer (also the plain baseline's).
    permute : {"both", "w", "a"}, default "both"
        The layers whose values are permuted.
    trials : int, default 300
        Runs per method and cell, ``>= 1``.
    steps : int, default 5000
        The step budget of each run.
    schedule : Schedule or callable, default du_constant
        A :class:`Schedule`, or a function ``k -> Schedule``.
    teacher : Teacher, optional
        Default ``Teacher(w="sphere", require_spurious=True)``.
    seed : int, default 0
        The streams' seed, shared by every method.
    tolerances : Tolerances, optional
        As :func:`sims.simulate`.
    threads : int, optional
        As :func:`sims.simulate`.

    Returns
    -------
    pandas.DataFrame
        One row per method x ``(k, p)`` x initial distribution, the columns above.

    Raises
    ------
    ValueError
        For ``trials < 1``, ``cells`` that are not ``(k, p)`` pairs, a period below 1, or any argument
        :func:`sims.simulate_laperm` refuses.

    Examples
    --------
    >>> from sims.methods import laperm
    >>> df = laperm.compare(cells=((4, 4),), sync_every=(10,), inits=("gaussian",), trials=4, steps=300)
    >>> df[["method", "p_global", "p_perm_optimal"]].to_dict("list")
    {'method': ['gd-gaussian', 'laperm-K10-gaussian'], 'p_global': [0.75, 0.0], 'p_perm_optimal': [nan, 0.75]}
    """
    import pandas as pd

    teacher = Teacher(w="sphere", require_spurious=True) if teacher is None else teacher
    trials = _check_int(trials, "trials", 1)
    try:
        cells = [(int(k), int(p)) for k, p in cells]
    except (TypeError, ValueError):
        raise ValueError(f"cells must be a sequence of (k, p) pairs; got {cells!r}") from None
    Ks = [_check_int(K, "sync_every (K)", 1) for K in sync_every]
    inits = list(inits)
    rows = []
    for k, p in cells:
        sch = schedule(k) if callable(schedule) and not isinstance(schedule, Schedule) else schedule
        for dist in inits:
            kw = dict(k=k, p=p, runs=trials, steps=steps, schedule=sch, inner=inner, init=dist, teacher=teacher,
                      seed=seed, tolerances=tolerances, threads=threads, n_record=2)
            base = simulate_laperm(sync_every=None, **kw)
            rows.append(_row(base, f"{inner}-{dist}", k, p, None, dist, inner, permute, base))
            tag = "laperm" + ("" if inner == "gd" else f"-{inner}") + ("" if permute == "both" else f"-{permute}")
            for K in Ks:
                res = simulate_laperm(sync_every=K, permute=permute, **kw)
                rows.append(_row(res, f"{tag}-K{K}-{dist}", k, p, K, dist, inner, permute, base))
    return pd.DataFrame(rows)
