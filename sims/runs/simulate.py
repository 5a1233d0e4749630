"""``simulate``: batched training runs of the shallow CNN/ResNet, with a result object that says why each run
stopped, where it ended (classified against the theory's fixed points), how fast it got there, and its
log-spaced trajectory."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

import numba
import numpy as np
from numba import njit

import theory
from sims.engines import closed_forms as _cf
from sims.engines import driver, reduced
from sims.engines import flow as flow_engine
from sims.engines.rng import stream_states
from sims.runs import attractor, memory, order_runs, plain, registry, samplers, warmup  # noqa: F401 (plain registers the plain engines)
from sims.runs import classify as _classify
from sims.runs import flow as _flow  # (importing it registers the gradient-flow engine)
from sims.runs.order_samplers import OrderParameters, draw_order_parameters
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule
from theory import Model

ALGORITHMS: tuple[str, ...] = ("gd", "sgd", "gd-fixed", "flow")
#: A rate window spanning fewer steps than this does not count as a fit of the linear regime.
MIN_WINDOW_STEPS = 4
#: Columns of :meth:`SimulationResult.to_frame`, the per-run table of sweeps (``run`` is ``run_index``).
FRAME_COLUMNS: tuple[str, ...] = ("run", "outcome", "stop_reason", "steps", "final_loss", "final_phi",
                                  "final_alignment", "final_grad_norm", "steps_to_tol", "slow_phase_end",
                                  "fitted_rate", "theory_rate", "linear_regime", "warmup_steps", "warmup_eta_w",
                                  "basin")


@dataclass(frozen=True)
class Tolerances:
    """Stopping rules and the levels the rates are measured between.

    Loss levels are relative to ``L_ref``, the loss of the zero network ``E[f*^2]/2`` (:func:`theory.loss_ref`),
    so they mean the same at every ``k``; ``grad_tol`` is relative to ``sqrt(L_ref)``.

    Parameters
    ----------
    loss_tol : float, default 1e-10
        Stop: converged (global minimum), finite and ``>= 0``.
    grad_tol : float, default 1e-10
        Stop: stationary (saddle or spurious point), finite and ``>= 0``.
    eps : float, default 1e-6
        ``steps_to_tol`` counts the steps to reach this loss.
    divergence : float, default 1e8
        A loss above this (or non-finite) is divergence; ``> 0``.
    rate_window : tuple of float, default (1e-4, 1e-6, 1e-9)
        Loss levels ``hi > mid > lo > 0``: the rate is measured between ``mid`` and ``lo``; the run counts as in
        the linear regime when the rate between ``hi`` and ``mid`` agrees with it within ``linear_rtol``.
    linear_rtol : float, default 0.01
        The agreement of the two rates, in log-rate per step.
    stop_trapped : bool, default True
        Stop runs that provably entered the spurious basin (noise-free population GD only).

    Raises
    ------
    ValueError
        Naming the field, for a level that is not a finite number in its range or a ``rate_window`` that is not
        decreasing.

    Examples
    --------
    >>> import sims
    >>> kw = dict(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> sims.simulate(**kw).steps, sims.simulate(tolerances=sims.Tolerances(loss_tol=1e-6), **kw).steps
    (array([29,  4, 30]), array([17,  4, 19]))
    >>> sims.Tolerances(rate_window=(1e-6, 1e-4, 1e-9))
    Traceback (most recent call last):
    ...
    ValueError: tolerances.rate_window must be three loss levels hi > mid > lo > 0; got (1e-06, 0.0001, 1e-09)
    """

    loss_tol: float = 1e-10  # stop: converged (global minimum)
    grad_tol: float = 1e-10  # stop: stationary (saddle or spurious point)
    eps: float = 1e-6  # steps_to_tol counts the steps to reach this loss
    divergence: float = 1e8  # a loss above this (or non-finite) is divergence
    # Loss levels hi > mid > lo: the rate is measured between mid and lo; the run counts as in the linear regime
    # when the rate between hi and mid agrees with it within linear_rtol (in log-rate per step).
    rate_window: tuple[float, float, float] = (1e-4, 1e-6, 1e-9)
    linear_rtol: float = 0.01
    stop_trapped: bool = True  # stop runs that provably entered the spurious basin (noise-free GD only)

    def __post_init__(self) -> None:
        def real(name: str, value: Any) -> float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError(f"tolerances.{name} must be a finite number; got {value!r}") from None

        for name in ("loss_tol", "grad_tol", "eps", "linear_rtol"):
            x = real(name, getattr(self, name))
            if not (math.isfinite(x) and x >= 0.0):
                raise ValueError(f"tolerances.{name} must be a finite number >= 0; got {getattr(self, name)!r}")
        if not real("divergence", self.divergence) > 0.0:
            raise ValueError(f"tolerances.divergence must be > 0; got {self.divergence!r}")
        try:
            hi, mid, lo = (real("rate_window", x) for x in self.rate_window)
        except (TypeError, ValueError):
            raise ValueError(f"tolerances.rate_window must be three loss levels hi > mid > lo > 0; "
                             f"got {self.rate_window!r}") from None
        if not (math.isfinite(hi) and hi > mid > lo > 0.0):
            raise ValueError(f"tolerances.rate_window must be three loss levels hi > mid > lo > 0; "
                             f"got {self.rate_window!r}")


@dataclass
class SimulationResult:
    """What :func:`sims.simulate` returns: per-run arrays (first axis: run) and the settings that produced them.

    ``outcome`` and ``stop_reason`` are string arrays (see :data:`sims.runs.classify.OUTCOMES` and
    :data:`sims.engines.driver.STOP_NAMES`).  ``steps_to_tol`` and ``slow_phase_end`` are ``-1`` where the event never
    happened.  ``trajectory`` has shape ``(runs, len(trajectory_steps), 4)`` with columns
    :data:`sims.engines.driver.TRAJ_FIELDS`; entries after a run's stop are NaN (use :meth:`trajectory_of`).
    ``fitted_rate`` is the measured per-step loss contraction at the end of the run (between the levels
    ``rate_window[1:]``), ``linear_regime`` says whether the run was in the asymptotic linear regime there (the
    rate one window earlier agrees, both windows span at least ``MIN_WINDOW_STEPS`` steps, and the slowest Hessian
    mode carries at least 90% of the final loss), and
    ``theory_rate`` is the contraction the Hessian at the reached global minimum
    predicts for the final step sizes (rate and theory are NaN for runs that did not reach the global minimum).

    ``w, a`` (final), ``w0, a0`` (initial) and ``w_star, a_star`` are per-run vectors, ``(runs, p)`` and
    ``(runs, k)``; they are None for a result of ``simulate(..., vectors=False)``, which holds no vector at all.
    Such a result has instead :attr:`order`: a dict of per-run arrays, the initial order parameters ``c0 = w~0.w*``,
    ``r0 = ||w~0 - c0 w*||``, ``S0 = 1.a0``, ``Q0 = a0.a0``, ``P0 = a0.a*``, ``Ss = 1.a*``, ``Qs = a*.a*``,
    ``vw = v.w*`` and the final coordinates ``u, r1, x, y, z`` of ``w~ = u w* + r1 e1`` and ``a = x a0 + y 1 +
    (1 + z) a*`` (``e1``: the unit vector of ``w~0 - c0 w*``); they are stored in :attr:`extras` under
    ``"order.<name>"`` (so that slicing and :meth:`concat` treat them like every per-run array).

    Parameters
    ----------
    settings : dict
        The arguments of the call (samplers and schedule as dicts), ``runs`` and ``run_offset`` included.
    run_index : numpy.ndarray
        The runs' numbers (``run_offset`` on), int.
    outcome, stop_reason : numpy.ndarray
        Where each run ended and why it stopped, str.
    steps : numpy.ndarray
        Steps taken, int.
    final_loss, final_phi, final_alignment, final_grad_norm : numpy.ndarray
        Loss, angle, ``a.a*`` and gradient norm at the stop.
    steps_to_tol, slow_phase_end : numpy.ndarray
        The first step with loss ``<= tolerances.eps`` and the end of the slow phase (``a.a* > 0``), ``-1`` where
        it never happened.
    fitted_rate, theory_rate : numpy.ndarray
        The measured and the predicted per-step loss contraction (NaN off the global minimum).
    linear_regime : numpy.ndarray
        Whether the run was in the asymptotic linear regime where the rate was measured, bool.
    w, a, w0, a0 : numpy.ndarray or None
        Final and initial weights, ``(runs, p)`` and ``(runs, k)`` (the ResNet's ``w`` is its residual branch).
    w_star, a_star : numpy.ndarray or None
        The teachers, ``(runs, p)`` and ``(runs, k)``.
    loss_ref : numpy.ndarray
        ``L_ref`` per run, the unit of the loss levels (1 for a zero teacher).
    trajectory_steps : numpy.ndarray
        The recorded steps (:func:`sims.record_steps`).
    trajectory : numpy.ndarray
        ``(runs, len(trajectory_steps), 4)``, columns :data:`sims.engines.driver.TRAJ_FIELDS`.
    warmup_steps, warmup_eta_w : numpy.ndarray
        Stage I's length and filter step per run: the prescribed warmup's ``T1`` and ``eta_w^I``, else the
        schedule's first segment (length 0 for a one-segment schedule).
    extras : dict of str to numpy.ndarray, optional
        The engine's per-run extras (and the order parameters of a ``vectors=False`` result).
    basin : numpy.ndarray or None, optional
        Where population gradient flow from each run's final state goes, str (:data:`sims.runs.attractor.BASINS`:
        ``global``, ``spurious``, ``saddle``, ``undecided``, ``diverged``): for a run still on its way (SGD near a
        fixed point, perturbed GD, GD out of steps), the fixed point it was headed for.  None for
        ``simulate(..., basin="none")``; :meth:`basin_by_flow` computes it by the flow for every run.

    Examples
    --------
    >>> import numpy as np, sims
    >>> res = sims.simulate(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0), n_record=8)
    >>> len(res), res.outcome.tolist(), res.stop_reason.tolist(), res.steps.tolist()
    (3, ['global', 'spurious', 'global'], ['loss_tol', 'trapped', 'loss_tol'], [29, 4, 30])
    >>> res.counts()
    {'global': 2, 'spurious': 1, 'saddle': 0, 'not_converged': 0, 'diverged': 0}
    >>> res.trajectory_steps, res.trajectory_of(0)["step"]        # run 0 stopped at step 29
    (array([  0,   1,   5,  13,  33,  82, 200]), array([ 0,  1,  5, 13]))
    >>> list(res.to_frame().columns[:4])
    ['run', 'outcome', 'stop_reason', 'steps']
    >>> res.basin.tolist()              # ended at the fixed points: the basins are the outcomes
    ['global', 'spurious', 'global']
    """

    settings: dict[str, Any]
    run_index: np.ndarray
    outcome: np.ndarray
    stop_reason: np.ndarray
    steps: np.ndarray
    final_loss: np.ndarray
    final_phi: np.ndarray
    final_alignment: np.ndarray
    final_grad_norm: np.ndarray
    steps_to_tol: np.ndarray
    slow_phase_end: np.ndarray
    fitted_rate: np.ndarray
    theory_rate: np.ndarray
    linear_regime: np.ndarray
    w: np.ndarray | None
    a: np.ndarray | None
    w0: np.ndarray | None
    a0: np.ndarray | None
    w_star: np.ndarray | None
    a_star: np.ndarray | None
    loss_ref: np.ndarray
    trajectory_steps: np.ndarray
    trajectory: np.ndarray
    warmup_steps: np.ndarray
    warmup_eta_w: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    basin: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.outcome.shape[0])

    @property
    def has_vectors(self) -> bool:
        """Whether the result holds the per-run vectors (False for ``simulate(..., vectors=False)``)."""
        return self.a_star is not None

    @property
    def order(self) -> dict[str, np.ndarray] | None:
        """The per-run order parameters of a ``vectors=False`` result (class docstring), None otherwise."""
        pre = order_runs.PREFIX
        if pre + "c0" not in self.extras:
            return None
        return {key[len(pre):]: val for key, val in self.extras.items() if key.startswith(pre)}

    def require_vectors(self, what: str) -> None:
        """Refuse (``ValueError``) ``what`` on a result without vectors (``simulate(..., vectors=False)``)."""
        if not self.has_vectors:
            raise ValueError(f"{what} needs the per-run vectors (w, a, w0, a0, w_star, a_star), but this result was "
                             "computed with simulate(..., vectors=False) and holds only the order parameters "
                             "(result.order); rerun with vectors=True (the default)")

    def counts(self) -> dict[str, int]:
        """Number of runs per outcome."""
        return {name: int(np.sum(self.outcome == name)) for name in _classify.OUTCOMES}

    def basin_counts(self) -> dict[str, int]:
        """Number of runs per basin (:data:`sims.runs.attractor.BASINS`); ``ValueError`` without basins."""
        if self.basin is None:
            raise ValueError("this result has no basins (simulate(..., basin='none')); compute them with "
                             "result.basin_by_flow()")
        return {name: int(np.sum(self.basin == name)) for name in attractor.BASINS}

    def basin_by_flow(self, *, time: float | None = None, threads: int | None = None) -> np.ndarray:
        """Every run's basin computed by the flow, including the runs whose stop decides it (``loss_tol``,
        ``trapped``; :func:`sims.runs.attractor.basins` with ``mode="flow"``): the check of ``basin="auto"``.

        Parameters
        ----------
        time : float, optional
            The flow's time budget (units of ``1/eta``; default: the run's step budget, within ``[1000, 10^5]``,
            :func:`sims.runs.attractor.default_time`).
        threads : int, optional
            Threads of the flow (the result does not depend on it).

        Returns
        -------
        numpy.ndarray
            One of :data:`sims.runs.attractor.BASINS` per run (``self.basin`` is left as it is).
        """
        return attractor.basins(self, "flow", time=time, threads=threads)

    def trajectory_of(self, run: int) -> dict[str, np.ndarray]:
        """The recorded trajectory of one run up to its stop: ``{"step": ..., "loss": ..., ...}``."""
        valid = ~np.isnan(self.trajectory[run, :, 0])
        out = {"step": self.trajectory_steps[valid]}
        for j, name in enumerate(driver.TRAJ_FIELDS):
            out[name] = self.trajectory[run, valid, j]
        return out

    def to_frame(self):
        """Per-run table (pandas DataFrame) of the scalar fields, columns :data:`FRAME_COLUMNS` (``basin``: None
        for a result without basins)."""
        import pandas as pd

        return pd.DataFrame({name: getattr(self, "run_index" if name == "run" else name) for name in FRAME_COLUMNS})

    @staticmethod
    def concat(parts: list[SimulationResult]) -> SimulationResult:
        """Join results of consecutive run ranges of the same configuration (e.g. chunks of a sweep)."""
        if not parts:
            raise ValueError("parts must hold at least one SimulationResult")
        if len({p.has_vectors for p in parts}) > 1:
            raise ValueError("parts mix results with vectors and results of simulate(..., vectors=False); join "
                             "results of one kind")
        out = {}
        for f in fields(SimulationResult):
            if f.name in ("settings", "trajectory_steps"):
                out[f.name] = getattr(parts[0], f.name)
            elif f.name == "extras":
                out[f.name] = {key: np.concatenate([p.extras[key] for p in parts]) for key in parts[0].extras}
            elif getattr(parts[0], f.name) is None:  # the vectors of results without them
                out[f.name] = None
            else:
                out[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        out["settings"] = dict(out["settings"], runs=len(out["outcome"]), run_offset=int(out["run_index"][0]))
        return SimulationResult(**out)


def _check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi and value > hi):
        rng = f"[{lo}, {hi}]" if hi else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}; got {value!r}")
    return int(value)


def _explicit_init(init: Any, runs: int, p: int, k: int, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """``init=(w0, a0)`` given as arrays: shapes ``(p,)``/``(k,)`` (shared) or ``(runs, p)``/``(runs, k)``."""
    try:
        w0, a0 = init
        w0 = np.array(w0, dtype=np.float64, ndmin=1)
        a0 = np.array(a0, dtype=np.float64, ndmin=1)
    except (TypeError, ValueError):
        raise ValueError("init must be a sims.Init or a pair of arrays (w0, a0)") from None
    out = []
    for arr, n, name in ((w0, p, "w0"), (a0, k, "a0")):
        if arr.ndim == 1:
            arr = np.repeat(arr[None, :], runs, axis=0)
        if arr.shape != (runs, n):
            raise ValueError(f"init {name} must have shape ({n},) or ({runs}, {n}); got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"init {name} must be finite")
        out.append(np.ascontiguousarray(arr))
    if not model.shortcut and np.any(np.linalg.norm(out[0], axis=1) == 0.0):
        raise ValueError(f"init w0 = 0 is not allowed for model {model.name!r}: a CNN filter needs a direction")
    return out[0], out[1]


def record_steps(max_steps: int, n_record: int) -> np.ndarray:
    """``n_record`` log-spaced steps in ``[0, max_steps]`` (0 and ``max_steps`` included, duplicates dropped).

    The steps at which :func:`sims.simulate` records each run's trajectory: log-spaced, because GD's slow phase
    and its linear convergence are both visible on a log axis, and cheap whatever the step budget.

    Parameters
    ----------
    max_steps : int
        The step budget, ``>= 0``.
    n_record : int
        The number of points asked for, ``>= 2`` (fewer are returned where rounding makes steps coincide).

    Returns
    -------
    numpy.ndarray
        The steps, increasing, int64.

    Raises
    ------
    ValueError
        If ``n_record < 2``.

    Examples
    --------
    >>> import sims
    >>> sims.record_steps(1000, 8)
    array([   0,    2,    9,   31,   99,  315, 1000])
    >>> sims.record_steps(3, 64)
    array([0, 1, 2, 3])
    """
    if n_record <= 1:
        raise ValueError(f"n_record must be >= 2 (the first and the last step); got {n_record}")
    pts = np.unique(np.round(np.geomspace(1, max_steps + 1, n_record - 1)).astype(np.int64) - 1)
    return np.unique(np.concatenate([[0], pts, [max_steps]])).astype(np.int64)


def _settings_dict(**kw: Any) -> dict[str, Any]:
    out = {}
    for key, val in kw.items():
        if is_dataclass(val):
            val = {"type": type(val).__name__, **asdict(val)}
        elif isinstance(val, np.ndarray):
            val = val.tolist()
        out[key] = val
    return out


def simulate(
    *,
    model: Model | str = "resnet",
    k: int,
    p: int,
    runs: int,
    steps: int,
    schedule: Schedule,
    teacher: Teacher | tuple[Any, Any] | None = None,
    init: Init | tuple[Any, Any] | None = None,
    algorithm: str = "gd",
    batch_size: int | None = None,
    shortcut: Any = None,
    seed: int = 0,
    run_offset: int = 0,
    tolerances: Tolerances | None = None,
    n_record: int = 64,
    allow_unstable: bool = False,
    threads: int | None = None,
    engine: Any = None,
    expansion: Any = None,
    vectors: bool | str = True,
    basin: str = "auto",
) -> SimulationResult:
    """Train ``runs`` independent networks and return a :class:`SimulationResult`.

    Each run ``r`` (numbered from ``run_offset``) draws its teacher (unless ``teacher=(w_star, a_star)`` fixes
    one for all), its initialization and any noise from its own stream ``SeedSequence(seed, spawn_key=(r,))``,
    so results are bit-identical whatever the thread count or the split of runs into calls.  Every engine draws
    the same teachers and inits from the same seed, so engines are paired run by run.

    Parameters
    ----------
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The student (and teacher) architecture.
    k, p : int
        Number of patches and patch dimension.
    runs, steps : int
        Independent networks, and the step budget of each.
    schedule : Schedule
        Per-layer step sizes (:class:`Schedule`: constant, two-stage, layerwise, piecewise, perturbed, prescribed
        warmup).
    teacher : Teacher or tuple of array_like, optional
        A :class:`Teacher` sampler (default ``Teacher()``) or explicit ``(w_star, a_star)``.
    init : Init or tuple of array_like, optional
        An :class:`Init` sampler (default: ``w0 = 0`` for the ResNet, a uniform unit ``w0`` for the CNNs, ``a0``
        uniform in the ball of radius ``||a*||``) or explicit ``(w0, a0)``, shared (1-D) or per run (2-D).
    algorithm : {"gd", "sgd", "gd-fixed", "flow"}, default "gd"
        Population GD on the closed forms, online SGD with a fresh Gaussian minibatch of ``batch_size`` each step,
        GD on a fixed sample of ``batch_size`` inputs drawn once per run, or population GD's gradient flow (step
        sizes as rates, ``steps`` the largest flow time, times in place of steps: :mod:`sims.runs.flow`).
    batch_size : int, optional
        Minibatch (``"sgd"``) or sample size (``"gd-fixed"``), ``>= 1``.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).
    seed, run_offset : int, default 0
        The streams' seed, and the number of the first run.
    tolerances : Tolerances, optional
        Stop levels (``loss_tol``, ``grad_tol``, divergence) relative to ``L_ref``.
    n_record : int, default 64
        Log-spaced trajectory points kept per run.
    allow_unstable : bool, default False
        Allow ``eta_a`` above the stability limit ``4 pi / (k + pi - 1)``.
    threads : int, optional
        Threads of the kernels (default: all cores); results do not depend on it.
    engine : None, str or options object
        Which engine trains (:mod:`sims.runs.registry`): None (the plain network's engine of ``algorithm``), a
        registered name (:func:`engine_names`), or an options object: :class:`sims.Expansion`, :class:`sims.Fade`,
        :class:`sims.LaPerm`, :class:`sims.Flow`.  ``expansion=X`` is an alias of ``engine=X``.
    expansion : Expansion, optional
        Alias of ``engine``.
    vectors : bool or "auto", default True
        ``False`` runs on the order parameters alone, drawn directly with the law of the vector draws (the same law,
        not the same numbers; :mod:`sims.runs.order_samplers`): O(1) work and memory per run and step whatever ``k``
        and ``p``; the result's vectors are None and ``result.order`` holds the order parameters.  It needs
        ``algorithm`` "gd" or "flow", a noise-free schedule, ``engine`` None, "gd", "reduced" or "flow", and
        samplers rather than arrays.  ``"auto"``: without vectors wherever that is allowed.
    basin : {"auto", "flow", "none"}, default "auto"
        ``result.basin``, where gradient flow from each run's end goes (:mod:`sims.runs.attractor`): ``"auto"`` flows
        the runs whose stop leaves it open (not ``loss_tol``, ``trapped`` or diverged), ``"flow"`` every run that
        did not diverge, ``"none"`` leaves ``result.basin`` None.

    Returns
    -------
    SimulationResult
        Per-run outcome, stop reason, final loss and angle, steps to tolerance, fitted and predicted rates,
        trajectories, and the final and initial weights.

    Raises
    ------
    ValueError
        Naming the field: negative or non-finite step sizes, ``eta_a`` above the stability limit (unless
        ``allow_unstable``), ``T1 > steps``, ``runs = 0``, a CNN with ``w0 = 0``, an unknown name, an option the
        engine does not take, or a request larger than the machine's memory.

    Examples
    --------
    >>> import sims
    >>> res = sims.simulate(model="resnet", k=4, p=4, runs=100, steps=2000,
    ...                     schedule=sims.Schedule.prescribed_warmup(eta_w=1/4, eta_a=1.0),
    ...                     teacher=sims.Teacher(w="cap", require_spurious=True), seed=0)
    >>> res.counts()
    {'global': 100, 'spurious': 0, 'saddle': 0, 'not_converged': 0, 'diverged': 0}
    """
    if not (isinstance(vectors, (bool, np.bool_)) or (isinstance(vectors, str) and vectors == "auto")):
        raise ValueError(f"vectors must be True, False or 'auto'; got {vectors!r}")
    attractor.check_mode(basin)
    name, spec, opts = _select(engine, expansion, algorithm)
    if isinstance(engine, str) and engine in ALGORITHMS:
        algorithm = engine
    call = _validate_common(spec, opts, model=model, k=k, p=p, runs=runs, steps=steps, schedule=schedule,
                            teacher=teacher, init=init, algorithm=algorithm, batch_size=batch_size, shortcut=shortcut,
                            seed=seed, run_offset=run_offset, tolerances=tolerances, n_record=n_record,
                            allow_unstable=bool(allow_unstable), threads=threads)
    res = _run(name, spec, opts, spec.validate(opts, call), vectors)
    if isinstance(engine, str) and engine not in ALGORITHMS:
        res.settings["engine"] = name
    if basin != "none":
        res.basin = attractor.basins(res, basin, threads=call.threads)
    return res


def _run(name: str, spec: registry.EngineSpec, opts: Any, call: registry.Call, vectors: bool | str) -> SimulationResult:
    """Run a validated call with vectors (:func:`run_engine`) or without (:func:`run_without_vectors`; ``"auto"``:
    wherever that is allowed)."""
    why = _why_vectors(name, call)
    if isinstance(vectors, str):
        vectors = why is not None
    if vectors:
        return run_engine(spec, opts, call)
    if why is not None:
        raise ValueError(f"vectors=False needs the order-parameter engine, which does not run here: {why}")
    return run_without_vectors(call, flow_opts=opts if name == "flow" else None)


def _why_vectors(name: str, call: registry.Call) -> str | None:
    """Why a call needs vectors (the order-parameter engine does not run it), or None where ``vectors=False`` is
    allowed."""
    why = None
    if call.algorithm not in ("gd", "flow"):
        why = f"algorithm {call.algorithm!r} samples inputs (only population GD, algorithm='gd', has order parameters)"
    elif name not in ("gd", "reduced", "flow"):
        why = f"engine {name!r} trains vectors (use engine None, 'gd', 'reduced' or 'flow')"
    elif any(seg.noise_w > 0.0 or seg.noise_a > 0.0 for seg in call.schedule.segments):
        why = "the schedule adds noise (a perturbed step leaves the order parameters' subspace)"
    elif not isinstance(call.teacher, Teacher):
        why = "teacher is given as vectors (pass a sims.Teacher sampler)"
    elif call.explicit is not None:
        why = "init is given as arrays (pass a sims.Init sampler)"
    return why


def _select(engine: Any, expansion: Any, algorithm: Any) -> tuple[str, registry.EngineSpec, Any]:
    """``(name, spec, options)`` of the engine a call selects (``expansion=`` is an alias of ``engine=``)."""
    if expansion is not None:
        if engine is not None:
            raise ValueError("pass the engine once: engine= or its alias expansion=, not both")
        if not registry.selects(expansion, "expansion"):
            raise ValueError(f"expansion must be a sims.Expansion; got {type(expansion).__name__}")
        engine = expansion
    if algorithm == "flow" and engine is not None and engine != "flow" and not registry.selects(engine, "flow"):
        raise ValueError(f"engine = {engine!r} takes finite steps; algorithm='flow' integrates gradient flow: pass "
                         "engine=None, 'flow' or sims.Flow(...)")
    if isinstance(engine, str) and engine in ALGORITHMS:  # the plain engine of an algorithm, by name
        if algorithm not in ("gd", engine):
            raise ValueError(f"engine = {engine!r} contradicts algorithm = {algorithm!r}")
        return registry.lookup(engine)
    if engine is None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
        return registry.lookup(algorithm)
    return registry.lookup(engine)


def _validate_common(spec: registry.EngineSpec, opts: Any, *, model: Any, k: Any, p: Any, runs: Any, steps: Any,
                     schedule: Any, teacher: Any, init: Any, algorithm: Any, batch_size: Any, shortcut: Any,
                     seed: Any, run_offset: Any, tolerances: Any, n_record: Any, allow_unstable: bool,
                     threads: Any) -> registry.Call:
    """The common arguments checked (``ValueError`` naming the field) and defaulted (teacher, init, tolerances:
    the engine's defaults)."""
    model = Model.of(model)
    k = _check_int(k, "k", 1)
    p = _check_int(p, "p", 1)
    runs = _check_int(runs, "runs", 1)
    steps = _check_int(steps, "steps", 0)
    run_offset = _check_int(run_offset, "run_offset", 0)
    seed = _check_int(seed, "seed", 0)
    n_record = _check_int(n_record, "n_record", 2, 100_000)  # step 0 and the last step at least
    if algorithm in ("sgd", "gd-fixed"):
        batch_size = _check_int(batch_size, "batch_size", 1)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a sims.Schedule; got {type(schedule).__name__}")
    tolerances = Tolerances() if tolerances is None else tolerances
    if not isinstance(tolerances, Tolerances):
        raise ValueError(f"tolerances must be a sims.Tolerances; got {type(tolerances).__name__}")
    explicit = None
    if init is not None and not isinstance(init, Init):
        explicit = _explicit_init(init, runs, p, k, model)
        init = None
    init = spec.default_init(opts, model) if init is None else init
    init.validate(model.name)
    if threads is not None:
        threads = _check_int(threads, "threads", 1, numba.config.NUMBA_NUM_THREADS)
    v = theory.validation.shortcut_vector(shortcut, p)
    return registry.Call(model, k, p, runs, steps, schedule, spec.default_teacher(opts) if teacher is None else teacher,
                         init, explicit, algorithm, batch_size, v, seed, run_offset, tolerances, n_record,
                         allow_unstable, threads)


def angles(WT: np.ndarray, WS: np.ndarray) -> np.ndarray:
    """Angle between each row of ``WT`` (nonzero) and the unit rows of ``WS`` (atan2 form, exact at 0 and pi)."""
    n = np.linalg.norm(WT, axis=1)
    c = np.einsum("ij,ij->i", WT, WS) / n
    return np.arctan2(np.linalg.norm(WS - (c / n)[:, None] * WT, axis=1), c)


def loss_ref(AS: np.ndarray) -> np.ndarray:
    """``L_ref = E[f*^2] / 2`` per run, the loss of the zero network (1 where it vanishes): loss levels are
    relative to it, so they mean the same at every ``k``."""
    return theory.loss_ref(AS, safe=True)


def draw(call: registry.Call) -> registry.Draws:
    """Every run's teacher and init from its own stream (``SeedSequence(seed, spawn_key=(r,))``), the same draws
    for every engine (so engines run with one seed are paired run by run); the streams are advanced past them."""
    states = stream_states(call.seed, call.run_offset, call.run_offset + call.runs)
    p, k, teacher = call.p, call.k, call.teacher
    if isinstance(teacher, Teacher):
        teacher.validate(k)
        WS, AS, W0, A0 = samplers.draw(states, p=p, k=k, teacher=teacher, init=call.init, shortcut=call.shortcut)
    else:
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
        _, _, W0, A0 = samplers.draw(states, p=p, k=k, teacher=dummy, init=call.init, shortcut=call.shortcut)
        WS = np.repeat(w_star[None, :], call.runs, axis=0)
        AS = np.repeat(a_star[None, :], call.runs, axis=0)
    if call.explicit is not None:  # the streams were still advanced by the draw, so noise does not depend on init
        W0, A0 = call.explicit
    return registry.Draws(states, WS, AS, W0, A0)


def _resolve(call: registry.Call, draws: registry.Draws, start: registry.Start) -> Any:
    """The schedule resolved at the engine's starting point (the prescribed warmup needs its angle and norm)."""
    norm0 = np.linalg.norm(start.WT0, axis=1)
    if np.any(norm0 == 0.0):
        raise ValueError("init gives a zero effective filter (w0 + shortcut = 0): the direction is undefined")
    phi0 = start.phi0
    if phi0 is None:
        WT0, WS = start.WT0, draws.WS
        phi0 = np.arctan2(np.linalg.norm(WS - (np.einsum("ij,ij->i", WT0, WS) / norm0**2)[:, None] * WT0, axis=1),
                          np.einsum("ij,ij->i", WT0, WS) / norm0)
    if call.schedule.prescribed and not call.model.normalized:
        raise ValueError("schedule: the prescribed warmup needs a weight-normalized model ('resnet' or 'cnn')")
    return call.schedule.resolve(call.steps, runs=call.runs, phi0=phi0, norm0=norm0, a0=start.A0, a_star=draws.AS)


def run_engine(spec: registry.EngineSpec, opts: Any, call: registry.Call) -> SimulationResult:
    """The pipeline after validation: memory check, draws, the engine's start, schedule, build, run on the driver,
    the engine's finish, classification, rates and the result."""
    check_memory(k=call.k, p=call.p, runs=call.runs, steps=call.steps, n_record=call.n_record,
                 algorithm=call.algorithm, batch_size=call.batch_size, threads=call.threads,
                 extra_per_run=spec.extra_per_run(opts, call))
    draws = draw(call)
    start = spec.start(opts, call, draws)
    sched = _resolve(call, draws, start)
    rec = record_steps(call.steps, call.n_record)
    setup = registry.Setup(draws, start, sched, rec, np.ascontiguousarray(start.WT0.copy()),
                           np.ascontiguousarray(start.A0.copy()))
    built = spec.build(opts, call, setup)
    tol = call.tolerances
    out = spec.make_outputs(opts, call.runs, rec.size)
    prob = driver.make_problem(draws.WS, draws.AS, _classify.saddle_angles_batch(draws.AS), sched, draws.states, rec,
                               tol.rate_window)  # the saddle angles serve the trapped stop and the classification
    stops = driver.make_stops(tol, call.steps, tol.stop_trapped and built.trapped)
    driver.run_batch(built.entry, built.workspace, built.eng, prob, stops, out, call.runs, call.threads)
    fin = spec.finish(opts, call, setup, built, out)
    base = dict(model=call.model.name, k=call.k, p=call.p, runs=call.runs, steps=call.steps, schedule=call.schedule,
                teacher=call.teacher, init=call.init, algorithm=call.algorithm, batch_size=call.batch_size,
                shortcut=call.shortcut, seed=call.seed, run_offset=call.run_offset, tolerances=tol,
                n_record=call.n_record, allow_unstable=call.allow_unstable)
    return assemble_result(_settings_dict(**spec.settings(opts, call, base)), call, setup, out, fin,
                           phi_s=prob.phi_saddle)


def run_without_vectors(call: registry.Call, op: OrderParameters | None = None,
                        flow_opts: Any = None) -> SimulationResult:
    """The pipeline of ``simulate(..., vectors=False)`` after validation: memory check (no vectors), the order
    parameters drawn from the runs' streams (or ``op``, e.g. those of vector draws,
    :func:`sims.runs.order_runs.from_vectors`), the reduced engine's start, the schedule resolved at it, the run
    on the driver (teachers known by their invariants only: the problem's ``WS, AS`` are ``(runs, 0)``), and
    classification and rates from the final coordinates.  ``flow_opts``: integrate gradient flow instead
    (:class:`sims.Flow`, :mod:`sims.engines.flow`), on the same inputs."""
    R, k, p, tol = call.runs, call.k, call.p, call.tolerances
    check_memory(k=k, p=p, runs=R, steps=call.steps, n_record=call.n_record, threads=call.threads, vectors=False)
    states = stream_states(call.seed, call.run_offset, call.run_offset + R)
    if op is None:
        op = draw_order_parameters(states, p=p, k=k, teacher=call.teacher, init=call.init, model=call.model)
    start, consts = order_runs.engine_inputs(op)
    phi0, norm0 = order_runs.initial_angle(op)
    if np.any(norm0 == 0.0):
        raise ValueError("init gives a zero effective filter (w0 + shortcut = 0): the direction is undefined")
    if call.schedule.prescribed and not call.model.normalized:
        raise ValueError("schedule: the prescribed warmup needs a weight-normalized model ('resnet' or 'cnn')")
    sched = call.schedule.resolve(call.steps, runs=R, phi0=phi0, norm0=norm0, k=k, gram=order_runs.gram(op))
    rec = record_steps(call.steps, call.n_record)
    if flow_opts is None:
        eng, entry = reduced.engine(start, consts, k, call.model.normalized)
        work, out = reduced.workspace, driver.make_outputs(R, rec.size)
    else:
        eng = flow_engine.engine(start, consts, k, call.model.normalized, flow_opts.rtol, flow_opts.atol,
                                 max_nsteps=_flow.step_cap(call.steps), method=flow_opts.method)
        entry, work, out = flow_engine.run_range, flow_engine.workspace, flow_engine.make_outputs(R, rec.size)
    phi_s = _classify.saddle_angles_gram(k, op.Ss, op.Qs)
    none = np.empty((R, 0))
    prob = driver.make_problem(none, none, phi_s, sched, states, rec, tol.rate_window)
    if flow_opts is not None or call.model.normalized:  # a child may be compiling the engine: wait, then load it
        warmup.ready("flow" if flow_opts is not None else "reduced")
    driver.run_batch(entry, work, eng, prob, driver.make_stops(tol, call.steps, tol.stop_trapped), out, R,
                     call.threads)
    final = eng.out
    lref = theory.closed_forms.loss_ref(op.Ss, op.Qs)
    lref = np.where(lref > 0, lref, 1.0)
    scale = np.ones(R) if call.model.normalized else np.sqrt(final[:, 0] ** 2 + final[:, 1] ** 2 + final[:, 2] ** 2)
    code = _classify.classify_gram(final_loss=out.final[:, 0], final_phi=out.final[:, 1],
                                   head=tuple(np.ascontiguousarray(final[:, 3:6].T)),
                                   gram=order_runs.gram(op), k=k, scale=scale, stop_reason=out.stop_reason,
                                   loss_ref=lref, loss_tol=tol.loss_tol, phi_s=phi_s)
    rates = _rates_gram(out.rate_pts, code, call.model, final, consts, (k, p), sched, tol.linear_rtol,
                        flow_opts is not None)
    base = dict(model=call.model.name, k=k, p=p, runs=R, steps=call.steps, schedule=call.schedule,
                teacher=call.teacher, init=call.init, algorithm=call.algorithm, batch_size=call.batch_size,
                shortcut=None, seed=call.seed, run_offset=call.run_offset,
                tolerances=tol, n_record=call.n_record, allow_unstable=call.allow_unstable, vectors=False)
    vectors = dict.fromkeys(("w", "a", "w0", "a0", "w_star", "a_star"))
    extras = order_runs.order_columns(op, final)
    if flow_opts is not None:
        base["flow"] = {"rtol": flow_opts.rtol, "atol": flow_opts.atol, "method": flow_engine.METHODS[eng.method]}
        extras.update(flow_steps=eng.nsteps, flow_nfev=eng.nfev)
    return _result(_settings_dict(**base), call, sched, rec, out, code, rates, lref, vectors, extras)


def check_memory(*, k: int, p: int, runs: int, steps: int, n_record: int, algorithm: str = "gd",
                 batch_size: int | None = None, threads: int | None = None, extra_per_run: int = 0,
                 vectors: bool = True) -> int:
    """Refuse (``ValueError``) a :func:`simulate` call the machine has no memory for; return the estimate in bytes.

    The estimate is :func:`sims.runs.memory.simulate_bytes`; the message names the sizes, the estimate, what is
    available, how many runs per call would fit, and the remedy.  ``extra_per_run``: float64 numbers an engine
    holds per run beyond the plain network's (e.g. LaPerm's sorted values and optimizer moments, an expansion's
    factors; :meth:`sims.runs.registry.EngineSpec.extra_per_run`).  ``vectors=False``: a call without vectors
    (``simulate(..., vectors=False)``), whose memory does not grow with ``k`` or ``p``.
    """
    threads = numba.get_num_threads() if threads is None else threads
    sizes = dict(k=k, p=p, steps=steps, n_record=n_record, algorithm=algorithm, batch_size=batch_size,
                 threads=threads, factors=extra_per_run, vectors=vectors)
    need = memory.simulate_bytes(runs=runs, **sizes)
    free = memory.available_bytes()
    if need > free:
        fixed = memory.simulate_bytes(runs=0, **sizes)
        per_run = max(memory.simulate_bytes(runs=1, **sizes) - fixed, 1)
        fit = max((free - fixed) // per_run, 0)
        memory.require(need, what=f"simulate(k={k}, p={p}, runs={runs}, n_record={n_record}, algorithm={algorithm!r}"
                       + (f", batch_size={batch_size}" if batch_size else "") + ")",
                       remedy=f"use fewer runs per call (about {fit} fit) and join the results "
                       "(SimulationResult.concat), or run a sweep, whose chunks bound the memory")
    return need


def assemble_result(settings: dict[str, Any], call: registry.Call, setup: registry.Setup, out: driver.Outputs,
                    fin: registry.Finished, *, phi_s: np.ndarray | None = None) -> SimulationResult:
    """Classify what the engine deployed, fit the rates and build the :class:`SimulationResult` (every engine);
    ``phi_s``: the teachers' saddle angles the engine ran with (computed here if not given)."""
    runs, draws, sched, tol = call.runs, setup.draws, setup.sched, call.tolerances
    lref = loss_ref(draws.AS)
    scale = np.ones(runs) if fin.model.normalized else np.linalg.norm(fin.WT, axis=1)
    code = _classify.classify(final_loss=out.final[:, 0], final_phi=out.final[:, 1], a=fin.A, a_star=draws.AS,
                              scale=scale, stop_reason=out.stop_reason, loss_ref=lref, loss_tol=tol.loss_tol,
                              phi_s=phi_s)
    if fin.stuck is not None:
        code = np.where(fin.stuck & (code != _classify.SPURIOUS), _classify.SADDLE, code)
    if fin.theory_rate:
        rates = _rates(out.rate_pts, code, fin.model, fin.WT, fin.A, draws.WS, draws.AS, sched, tol.linear_rtol,
                       fin.continuous)
    else:
        fitted, linear = fitted_rates(out.rate_pts, code, sched, tol.linear_rtol)
        rates = (fitted, linear, np.full(runs, np.nan))
    vectors = dict(w=fin.w, a=fin.A, w0=setup.start.w0, a0=setup.start.a0, w_star=draws.WS, a_star=draws.AS)
    return _result(settings, call, sched, setup.rec, out, code, rates, lref, vectors, fin.extras)


def _result(settings: dict[str, Any], call: registry.Call, sched: Any, rec: np.ndarray, out: driver.Outputs,
            code: np.ndarray, rates: tuple[np.ndarray, np.ndarray, np.ndarray], lref: np.ndarray,
            vectors: dict[str, Any], extras: dict[str, np.ndarray]) -> SimulationResult:
    """The :class:`SimulationResult` from the resolved schedule, the record steps, the driver's outputs, the outcome
    codes, the rates ``(fitted, linear, predicted)`` and the vectors (``w, a, w0, a0, w_star, a_star``, None
    without vectors)."""
    runs = call.runs
    fitted, linear, predicted = rates
    return SimulationResult(
        settings=settings,
        run_index=np.arange(call.run_offset, call.run_offset + runs, dtype=np.int64),
        outcome=_classify.labels(_classify.OUTCOMES, code),
        stop_reason=_classify.labels(driver.STOP_NAMES, out.stop_reason),
        steps=out.stop_step,
        final_loss=out.final[:, 0],
        final_phi=out.final[:, 1],
        final_alignment=out.final[:, 2],
        final_grad_norm=out.final[:, 3],
        steps_to_tol=out.steps_tol,
        slow_phase_end=out.slow_end,
        fitted_rate=fitted,
        theory_rate=predicted,
        linear_regime=linear,
        **vectors,
        loss_ref=lref,
        trajectory_steps=rec,
        trajectory=out.traj,
        warmup_steps=sched.warmup_steps if sched.warmup_steps is not None
        else np.full(runs, call.schedule.stage_one_steps),
        warmup_eta_w=sched.warmup_eta_w if sched.warmup_eta_w is not None else np.full(runs, sched.eta_w[0, 0]),
        extras=extras,
    )


def _rates(rate_pts, code, model, WT, A, WS, AS, sched, linear_rtol, flow=False):
    """Measured per-step loss contraction, whether the curve was geometric, and the theory's ``rate^2`` (``flow``:
    per unit of time of gradient flow, ``exp(-2 eta lambda)``)."""
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs may hold inf; they get NaN rates
        return _rates_impl(rate_pts, code, model, WT, A, WS, AS, sched, linear_rtol, flow)


def fitted_rates(rate_pts, code, sched, linear_rtol):
    """Measured per-step loss contraction between the last two rate levels, and whether the rate one window
    earlier agrees (both windows in the last schedule segment and at least ``MIN_WINDOW_STEPS`` long)."""
    # Whole-array arithmetic (rows: contiguous), then the runs without a window set to NaN: the same values as
    # computing on the selected runs only (NumPy's log and exp are elementwise), in half the time.
    t_hi, L_hi, t_mid, L_mid, t_lo, L_lo = np.ascontiguousarray(rate_pts.T)
    # Only windows that lie in the last segment measure the final step sizes' rate.
    last_start = sched.seg_end[:, -2] if sched.seg_end.shape[1] > 1 else np.zeros(1)
    glob = code == _classify.GLOBAL
    ok = glob & (t_mid >= last_start) & (t_lo > t_mid) & (L_mid > 0) & (L_lo > 0)
    ok_hi = ok & (t_hi >= last_start) & (t_mid > t_hi) & (L_hi > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lo = np.where(ok, np.log(L_lo / L_mid) / (t_lo - t_mid), np.nan)
        log_hi = np.where(ok_hi, np.log(L_mid / L_hi) / (t_mid - t_hi), np.nan)
        fitted = np.where(ok, np.exp(log_lo), np.nan)
        linear = ok_hi & (np.abs(log_hi / log_lo - 1.0) <= linear_rtol)
    linear &= (t_lo - t_mid >= MIN_WINDOW_STEPS) & (t_mid - t_hi >= MIN_WINDOW_STEPS)
    return fitted, linear


def _final_step_sizes(sched: Any, R: int) -> tuple[np.ndarray, np.ndarray]:
    """Each run's ``(eta_w, eta_a)`` of the last schedule segment."""
    last = sched.eta_w.shape[1] - 1
    sr = np.arange(R) if sched.eta_w.shape[0] > 1 else np.zeros(R, dtype=np.int64)
    return sched.eta_w[sr, last], sched.eta_a[sr, last]


def _rates_impl(rate_pts, code, model, WT, A, WS, AS, sched, linear_rtol, flow=False):
    R = len(code)
    glob = code == _classify.GLOBAL
    fitted, linear = fitted_rates(rate_pts, code, sched, linear_rtol)
    ew, ea = _final_step_sizes(sched, R)
    if not model.normalized:
        predicted = np.full(R, np.nan)
        share = np.full(R, np.nan)
        for r in np.flatnonzero(glob):
            rate, share[r] = _unnormalized_rate(WT[r], A[r], ew[r], ea[r], WS[r], AS[r], flow)
            predicted[r] = rate**2
        linear &= share >= 0.9  # as for the normalized models below: the slowest mode must carry the loss
        return fitted, linear, predicted
    k, p = A.shape[1], WT.shape[1]
    n = np.linalg.norm(WT, axis=1)
    qs = np.einsum("ij,ij->i", AS, AS)
    cos_phi = np.clip(np.einsum("ij,ij->i", WT, WS) / n, -1.0, 1.0)
    d = A - AS
    d1 = d.sum(axis=1) ** 2 / k
    d2 = np.einsum("ij,ij->i", d, d) - d1
    predicted, share = _normalized_rate(glob, (ew, ea), (k, p), n, qs, np.arccos(cos_phi), (d1, d2), flow)
    linear &= share >= 0.9
    return fitted, linear, predicted


def _normalized_rate(glob, etas, sizes, n, qs, phi, dev, flow=False):
    """``(rate^2, share)`` of the normalized models at their final state: the Hessian's prediction (runs ``glob``,
    NaN elsewhere) and the slowest mode's share of the loss, from ``||w~||``, ``Qs``, ``phi`` and the squared
    deviation ``a - a*`` along ``1`` and across it, ``dev = (d1, d2)``.  ``flow``: gradient flow, whose mode ``i``
    contracts by ``exp(-eta_i lambda_i)`` per unit of time.  The three modes are handled as three arrays, the
    slowest picked as ``argmax`` over them would (first maximum, a NaN first), without stacking them (the same
    values, about 2x less time)."""
    # At the global minimum the Hessian is block diagonal with modes (w-tangent, Q*/(2 n^2)),
    # (a along 1, (k+pi-1)/(2 pi)), (a orthogonal to 1, (pi-1)/(2 pi)); GD contracts mode i by |1 - eta lambda_i|.
    (ew, ea), (k, p), (d1, d2) = etas, sizes, dev
    lam_ones, lam_perp = theory.a_hessian_eigenvalues(k)
    lam = (qs / (2.0 * n**2), lam_ones, lam_perp)
    factors = []
    for eta, lm, present in zip((ew, ea, ea), lam, (p > 1, True, k > 1), strict=True):
        f = np.exp(-eta * lm) if flow else np.abs(1.0 - eta * lm)
        factors.append(np.broadcast_to(f if present else 0.0, np.shape(glob)).astype(np.float64))
    slow, best = _first_argmax(factors)
    predicted = np.where(glob, best**2, np.nan)
    # Share of the final loss in each mode (quadratic model): the asymptotic rate is only observable where the
    # slowest mode carries the loss; elsewhere a faster mode with a larger amplitude still dominates.
    energy = (qs * phi**2 / 4.0, lam_ones * d1 / 2.0, lam_perp * np.maximum(d2, 0.0) / 2.0)
    total = (energy[0] + energy[1]) + energy[2]  # the order of a sum over a row of three
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(slow == 0, energy[0], np.where(slow == 1, energy[1], energy[2])) / total
    return predicted, share


def _first_argmax(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(index, value)`` per element of the largest of ``values`` as ``np.argmax`` over them stacked picks it: the
    first maximum, or the first NaN if there is one."""
    slow = np.zeros(np.shape(values[0]), dtype=np.int64)
    best = values[0].copy()
    for i, v in enumerate(values[1:], start=1):
        take = (v > best) | (np.isnan(v) & ~np.isnan(best))
        slow[take] = i
        best = np.where(take, v, best)
    return slow, best


@njit(cache=True, nogil=True, error_model="numpy")
def _gram_rate_rows(final, consts, k, out):
    """:func:`_rates_gram`'s inputs of :func:`_normalized_rate` run by run, from the final coordinates ``(u, r1,
    r2, x, y, z)`` and the constants ``(Q0, S0, P0, Ss, Qs, ...)`` (rows of ``(runs, 6)`` and ``(runs, >= 5)``:
    read in place, not transposed): the rows of ``out`` are ``||w~||``, ``cos phi`` clipped to ``[-1, 1]`` (its
    ``arccos`` is taken in NumPy, as before), ``d1 = Ds^2 / k`` and ``d2 = Dq - d1``.  The same operations as
    the NumPy expressions."""
    for r in range(final.shape[0]):
        u, r1, r2 = final[r, 0], final[r, 1], final[r, 2]
        n = math.sqrt(u * u + r1 * r1 + r2 * r2)
        c = u / n
        c = -1.0 if c < -1.0 else c
        c = 1.0 if c > 1.0 else c
        Ds, _, Dq = _cf.gram_deviations(final[r, 3], final[r, 4], final[r, 5], consts[r, 0], consts[r, 1],
                                        consts[r, 2], k, consts[r, 3], consts[r, 4])
        d1 = Ds * Ds / k
        out[0, r] = n
        out[1, r] = c
        out[2, r] = d1
        out[3, r] = Dq - d1


def _rates_gram(rate_pts, code, model, final, consts, sizes, sched, linear_rtol, flow=False):
    """:func:`_rates` of runs known by their order parameters: ``final`` the reduced engine's final coordinates
    ``(u, r1, r2, x, y, z)`` per run, ``consts`` its constants (``Q0, S0, P0, Ss, Qs, ...``), ``sizes = (k, p)``."""
    R = len(code)
    k, p = sizes
    glob = code == _classify.GLOBAL
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs may hold inf; they get NaN rates
        fitted, linear = fitted_rates(rate_pts, code, sched, linear_rtol)
        ew, ea = _final_step_sizes(sched, R)
        if not model.normalized:
            predicted, share = order_runs.unnormalized_rates(glob, (ew, ea), (k, p), final, consts, flow)
            linear &= share >= 0.9
            return fitted, linear, predicted
        rows = np.empty((4, R))
        _gram_rate_rows(np.ascontiguousarray(final), np.ascontiguousarray(consts), float(k), rows)
        n, cos_phi, d1, d2 = rows
        predicted, share = _normalized_rate(glob, (ew, ea), (k, p), n, np.ascontiguousarray(consts[:, 4]),
                                            np.arccos(cos_phi), (d1, d2), flow)
        linear &= share >= 0.9
        return fitted, linear, predicted


def _unnormalized_rate(w, a, eta_w, eta_a, w_star, a_star, flow=False):
    """``(rate, share)`` of GD near a global minimum of the unnormalized CNN: the per-step contraction factor of the
    slowest mode that changes the function, and that mode's share of the loss (quadratic model).

    The rescaling ``(w, a) -> (c w, a / c)`` leaves the function unchanged, so the Hessian annihilates its tangent
    ``d = (w, -a)`` and the linearized map ``J = I - D H`` (``D = diag(eta)``) keeps ``d`` fixed: eigenvalue 1, a
    drift along the valley of minima that costs no loss (``theory.gd_linear_rate`` keeps that mode and returns 1).
    ``J`` is similar to ``I - S`` with ``S = D^1/2 H D^1/2`` symmetric, and ``S e = 0`` for ``e ~ D^-1/2 d``; on
    ``e``'s complement (basis ``B``) the modes are the eigenpairs ``(mu_i, U_i)`` of ``B^T S B``, each contracting by
    ``|1 - mu_i|`` and holding the loss ``mu_i y_i^2 / 2`` with ``y = U^T B^T D^-1/2 x``, ``x`` the displacement
    from the minimum ``(||w|| w*, a* / ||w||)`` that computes the same function as ``(w, a)`` would at ``phi = 0``.
    """
    p, k = w.size, a.size
    if not (eta_w > 0 and eta_a > 0):
        return 1.0, math.nan
    H = theory.population_hessian(w, a, w_star=w_star, a_star=a_star, model=theory.CNN_UNNORMALIZED)
    dh = np.sqrt(np.concatenate([np.full(p, eta_w), np.full(k, eta_a)]))
    S = dh[:, None] * H * dh[None, :]
    e = np.concatenate([w, -a]) / dh
    q, _ = np.linalg.qr(np.column_stack([e / np.linalg.norm(e), np.eye(p + k)]))
    B = q[:, 1 : p + k]
    mu, U = np.linalg.eigh(B.T @ S @ B)
    factor = np.exp(-mu) if flow else np.abs(1.0 - mu)  # flow: exp(-mu) per unit of time
    slow = int(np.argmax(factor))
    n = float(np.linalg.norm(w))
    x = np.concatenate([w - n * w_star, a - a_star / n])
    y = U.T @ (B.T @ (x / dh))
    energy = np.maximum(mu, 0.0) * y**2 / 2.0
    total = float(energy.sum())
    return float(factor[slow]), (float(energy[slow] / total) if total > 0 else math.nan)
