"""``simulate``: batched training runs of the shallow CNN/ResNet, with a result object that says why each run
stopped, where it ended (classified against the theory's fixed points), how fast it got there, and its
log-spaced trajectory."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

import numba
import numpy as np

import theory
from sims.engines import driver
from sims.engines.rng import stream_states
from sims.runs import classify as _classify
from sims.runs import memory, samplers
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule
from theory.validation import check_model

ALGORITHMS: tuple[str, ...] = ("gd", "sgd", "gd-fixed")
#: A rate window spanning fewer steps than this does not count as a fit of the linear regime.
MIN_WINDOW_STEPS = 4
#: Columns of :meth:`SimulationResult.to_frame`, the per-run table of sweeps (``run`` is ``run_index``).
FRAME_COLUMNS: tuple[str, ...] = ("run", "outcome", "stop_reason", "steps", "final_loss", "final_phi",
                                  "final_alignment", "final_grad_norm", "steps_to_tol", "slow_phase_end",
                                  "fitted_rate", "theory_rate", "linear_regime", "warmup_steps", "warmup_eta_w")


@dataclass(frozen=True)
class Tolerances:
    """Stopping rules.  Loss levels are relative to ``L_ref``, the loss of the zero network ``E[f*^2]/2``,
    so they mean the same at every ``k``; ``grad_tol`` is relative to ``sqrt(L_ref)``."""

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
    """Per-run arrays (first axis: run) and the settings that produced them.

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
    w: np.ndarray
    a: np.ndarray
    w0: np.ndarray
    a0: np.ndarray
    w_star: np.ndarray
    a_star: np.ndarray
    loss_ref: np.ndarray
    trajectory_steps: np.ndarray
    trajectory: np.ndarray
    warmup_steps: np.ndarray
    warmup_eta_w: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.outcome.shape[0])

    def counts(self) -> dict[str, int]:
        """Number of runs per outcome."""
        return {name: int(np.sum(self.outcome == name)) for name in _classify.OUTCOMES}

    def trajectory_of(self, run: int) -> dict[str, np.ndarray]:
        """The recorded trajectory of one run up to its stop: ``{"step": ..., "loss": ..., ...}``."""
        valid = ~np.isnan(self.trajectory[run, :, 0])
        out = {"step": self.trajectory_steps[valid]}
        for j, name in enumerate(driver.TRAJ_FIELDS):
            out[name] = self.trajectory[run, valid, j]
        return out

    def to_frame(self):
        """Per-run table (pandas DataFrame) of the scalar fields, columns :data:`FRAME_COLUMNS`."""
        import pandas as pd

        return pd.DataFrame({name: getattr(self, "run_index" if name == "run" else name) for name in FRAME_COLUMNS})

    @staticmethod
    def concat(parts: list[SimulationResult]) -> SimulationResult:
        """Join results of consecutive run ranges of the same configuration (e.g. chunks of a sweep)."""
        if not parts:
            raise ValueError("parts must hold at least one SimulationResult")
        out = {}
        for f in fields(SimulationResult):
            if f.name in ("settings", "trajectory_steps"):
                out[f.name] = getattr(parts[0], f.name)
            elif f.name == "extras":
                out[f.name] = {key: np.concatenate([p.extras[key] for p in parts]) for key in parts[0].extras}
            else:
                out[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        out["settings"] = dict(out["settings"], runs=len(out["outcome"]), run_offset=int(out["run_index"][0]))
        return SimulationResult(**out)


def _check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi and value > hi):
        rng = f"[{lo}, {hi}]" if hi else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}; got {value!r}")
    return int(value)


def _explicit_init(init: Any, runs: int, p: int, k: int, model: str) -> tuple[np.ndarray, np.ndarray]:
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
    if model != "resnet" and np.any(np.linalg.norm(out[0], axis=1) == 0.0):
        raise ValueError(f"init w0 = 0 is not allowed for model {model!r}: a CNN filter needs a direction")
    return out[0], out[1]


def record_steps(max_steps: int, n_record: int) -> np.ndarray:
    """``n_record`` log-spaced steps in ``[0, max_steps]`` (0 and ``max_steps`` included, duplicates dropped)."""
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
    model: str = "resnet",
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
    expansion: Any = None,
) -> SimulationResult:
    """Train ``runs`` independent networks and return a :class:`SimulationResult`.

    Each run ``r`` (numbered from ``run_offset``) draws its teacher (unless ``teacher=(w_star, a_star)`` fixes
    one for all), its initialization and any noise from its own stream ``SeedSequence(seed, spawn_key=(r,))``,
    so results are bit-identical whatever the thread count or the split of runs into calls.

    ``algorithm``: ``"gd"`` (population gradient descent, closed-form gradients), ``"sgd"`` (online SGD with a
    fresh Gaussian minibatch of ``batch_size`` each step) or ``"gd-fixed"`` (GD on a fixed sample of
    ``batch_size`` inputs drawn once per run).  ``init`` is a :class:`Init` sampler (default: ``w0 = 0`` for the
    ResNet, a uniform unit ``w0`` for the CNNs, ``a0`` uniform in the ball of radius ``||a*||``) or explicit arrays
    ``(w0, a0)``, shared (1-D) or per run (2-D).

    ``expansion``: a :class:`sims.Expansion` trains a deep linear expansion of ``w`` and/or ``a`` instead (see
    :mod:`sims.methods.expansion`: same draws and result, with the contracted weights and the factors in ``extras``).
    """
    if expansion is not None:
        from sims.methods import expansion as _expansion

        if _expansion.check(expansion).is_plain:  # depth 1 realizing the engine's init: the unexpanded network
            return _expansion.run_plain(simulate, locals())
    teacher = Teacher() if teacher is None else teacher
    tolerances = Tolerances() if tolerances is None else tolerances
    model = check_model(model)
    k = _check_int(k, "k", 1)
    p = _check_int(p, "p", 1)
    runs = _check_int(runs, "runs", 1)
    steps = _check_int(steps, "steps", 0)
    run_offset = _check_int(run_offset, "run_offset", 0)
    _check_int(seed, "seed", 0)
    n_record = _check_int(n_record, "n_record", 2, 100_000)  # step 0 and the last step at least
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
    if algorithm != "gd":
        batch_size = _check_int(batch_size, "batch_size", 1)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a sims.Schedule; got {type(schedule).__name__}")
    limit = theory.max_stable_eta_a(k)
    if schedule.max_eta_a(k) > limit and not allow_unstable:
        raise ValueError(
            f"eta_a = {schedule.max_eta_a(k):g} exceeds the stability limit 4 pi / (k + pi - 1) = {limit:.6g} for "
            f"k = {k}; GD on a diverges there. Pass allow_unstable=True to study divergence."
        )
    explicit = None
    if init is None:
        init = Init(w="zero" if model == "resnet" else "sphere")
    elif not isinstance(init, Init):
        explicit = _explicit_init(init, runs, p, k, model)
        init = Init(w="zero" if model == "resnet" else "sphere")
    init.validate(model)
    if threads is not None:
        threads = _check_int(threads, "threads", 1, numba.config.NUMBA_NUM_THREADS)
    v = theory.validation.shortcut_vector(shortcut, p)
    check_memory(k=k, p=p, runs=runs, steps=steps, n_record=n_record, algorithm=algorithm, batch_size=batch_size,
                 threads=threads, expansion=expansion)

    states = stream_states(seed, run_offset, run_offset + runs)
    if isinstance(teacher, Teacher):
        teacher.validate(k)
        WS, AS, W0, A0 = samplers.draw(states, p=p, k=k, teacher=teacher, init=init, shortcut=v)
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
        _, _, W0, A0 = samplers.draw(states, p=p, k=k, teacher=dummy, init=init, shortcut=v)
        WS = np.repeat(w_star[None, :], runs, axis=0)
        AS = np.repeat(a_star[None, :], runs, axis=0)
    if explicit is not None:  # the streams were still advanced by the draw, so noise does not depend on init
        W0, A0 = explicit
    if expansion is not None:  # train the factors from the same draws (sims.methods.expansion)
        return _expansion.train(expansion, model=model, k=k, p=p, runs=runs, steps=steps, schedule=schedule,
                                teacher=teacher, init=init, algorithm=algorithm, batch_size=batch_size, v=v, seed=seed,
                                run_offset=run_offset, tolerances=tolerances, n_record=n_record,
                                allow_unstable=allow_unstable, threads=threads, states=states, WS=WS, AS=AS, W0=W0,
                                A0=A0)
    WT0 = W0 + v if model == "resnet" else W0.copy()
    norm0 = np.linalg.norm(WT0, axis=1)
    if np.any(norm0 == 0.0):
        raise ValueError("init gives a zero effective filter (w0 + shortcut = 0): the direction is undefined")
    phi0 = np.arctan2(np.linalg.norm(WS - (np.einsum("ij,ij->i", WT0, WS) / norm0**2)[:, None] * WT0, axis=1),
                      np.einsum("ij,ij->i", WT0, WS) / norm0)
    if schedule.prescribed and model == "cnn-unnormalized":
        raise ValueError("schedule: the prescribed warmup needs a weight-normalized model ('resnet' or 'cnn')")
    sched = schedule.resolve(steps, runs=runs, phi0=phi0, norm0=norm0, a0=A0, a_star=AS)

    rec = record_steps(steps, n_record)
    phi_s = _classify.saddle_angles_batch(AS)
    out = _run_kernel(algorithm, model, (WT0, A0, WS, AS, phi_s, states), sched, steps, tolerances, rec, batch_size,
                      threads)
    WT, A, traj, final, stop_step, stop_reason, slow_end, steps_tol, rate_pts = out

    loss_ref = (AS.sum(axis=1) ** 2 + (math.pi - 1.0) * np.einsum("ij,ij->i", AS, AS)) / (4.0 * math.pi)
    loss_ref = np.where(loss_ref > 0, loss_ref, 1.0)
    scale = np.linalg.norm(WT, axis=1) if model == "cnn-unnormalized" else np.ones(runs)
    code = _classify.classify(final_loss=final[:, 0], final_phi=final[:, 1], a=A, a_star=AS, scale=scale,
                              stop_reason=stop_reason, loss_ref=loss_ref, loss_tol=tolerances.loss_tol)
    fitted, linear, predicted = _rates(rate_pts, code, model, WT, A, WS, AS, sched, tolerances.linear_rtol)
    W = WT - v if model == "resnet" else WT
    settings = _settings_dict(model=model, k=k, p=p, runs=runs, steps=steps, schedule=schedule, teacher=teacher,
                              init=init, algorithm=algorithm, batch_size=batch_size, shortcut=v, seed=seed,
                              run_offset=run_offset, tolerances=tolerances, n_record=n_record,
                              allow_unstable=allow_unstable)
    return assemble_result(settings=settings, run_offset=run_offset, code=code, stop_names=driver.STOP_NAMES,
                           stop_reason=stop_reason, stop_step=stop_step, final=final, steps_tol=steps_tol,
                           slow_end=slow_end, fitted=fitted, theory_rate=predicted, linear=linear, w=W, a=A, w0=W0,
                           a0=A0, w_star=WS, a_star=AS, loss_ref=loss_ref, rec=rec, traj=traj, sched=sched,
                           schedule=schedule)


def check_memory(*, k: int, p: int, runs: int, steps: int, n_record: int, algorithm: str = "gd",
                 batch_size: int | None = None, threads: int | None = None, expansion: Any = None,
                 extra_per_run: int = 0, caller: str = "simulate") -> int:
    """Refuse (``ValueError``) a :func:`simulate` call the machine has no memory for; return the estimate in bytes.

    The estimate is :func:`sims.runs.memory.simulate_bytes`; the message names the sizes, the estimate, what is
    available, how many runs per call would fit, and the remedy.  ``extra_per_run``: float64 numbers an engine
    holds per run beyond the plain network's (e.g. LaPerm's sorted values and optimizer moments).
    """
    threads = numba.get_num_threads() if threads is None else threads
    factors = extra_per_run
    if expansion is not None:
        from sims.methods.expansion import Layout

        lay = Layout.of(expansion, p=p, k=k)
        factors += lay.group_size("w") + lay.group_size("a")
    sizes = dict(k=k, p=p, steps=steps, n_record=n_record, algorithm=algorithm, batch_size=batch_size,
                 threads=threads, factors=factors)
    need = memory.simulate_bytes(runs=runs, **sizes)
    free = memory.available_bytes()
    if need > free:
        fixed = memory.simulate_bytes(runs=0, **sizes)
        per_run = max(memory.simulate_bytes(runs=1, **sizes) - fixed, 1)
        fit = max((free - fixed) // per_run, 0)
        memory.require(need, what=f"{caller}(k={k}, p={p}, runs={runs}, n_record={n_record}, algorithm={algorithm!r}"
                       + (f", batch_size={batch_size}" if batch_size else "") + ")",
                       remedy=f"use fewer runs per call (about {fit} fit) and join the results "
                       "(SimulationResult.concat), or run a sweep, whose chunks bound the memory")
    return need


def assemble_result(*, settings, run_offset, code, stop_names, stop_reason, stop_step, final, steps_tol, slow_end,
                    fitted, theory_rate, linear, w, a, w0, a0, w_star, a_star, loss_ref, rec, traj, sched, schedule,
                    extras=None) -> SimulationResult:
    """A :class:`SimulationResult` from a kernel's outputs (shared by every engine: plain, expansion, fading,
    LaPerm); ``stop_names`` maps the kernel's stop codes to names."""
    runs = len(code)
    return SimulationResult(
        settings=settings,
        run_index=np.arange(run_offset, run_offset + runs, dtype=np.int64),
        outcome=np.array(_classify.OUTCOMES, dtype=object)[code].astype(str),
        stop_reason=np.array(stop_names, dtype=object)[stop_reason].astype(str),
        steps=stop_step,
        final_loss=final[:, 0],
        final_phi=final[:, 1],
        final_alignment=final[:, 2],
        final_grad_norm=final[:, 3],
        steps_to_tol=steps_tol,
        slow_phase_end=slow_end,
        fitted_rate=fitted,
        theory_rate=theory_rate,
        linear_regime=linear,
        w=w,
        a=a,
        w0=w0,
        a0=a0,
        w_star=w_star,
        a_star=a_star,
        loss_ref=loss_ref,
        trajectory_steps=rec,
        trajectory=traj,
        warmup_steps=sched.warmup_steps if sched.warmup_steps is not None else np.full(runs, schedule.stage_one_steps),
        warmup_eta_w=sched.warmup_eta_w if sched.warmup_eta_w is not None else np.full(runs, sched.eta_w[0, 0]),
        extras={} if extras is None else extras,
    )


def _run_kernel(algorithm, model, draws, sched, steps, tol, rec, batch_size, threads):
    """Run the engine of ``algorithm`` (:mod:`sims.engines`) on copies of the starting points;
    ``draws = (w~0, a0, w*, a*, saddle angles, streams)``."""
    WT0, A0, WS, AS, phi_s, states = draws
    from sims.engines import finite_sample, gd, sgd

    R = WT0.shape[0]
    WT = np.ascontiguousarray(WT0.copy())
    A = np.ascontiguousarray(A0.copy())
    out = driver.make_outputs(R, rec.size)
    normalized = model != "cnn-unnormalized"
    prob = driver.make_problem(WS, AS, phi_s, sched, states, rec, tol.rate_window)
    if algorithm == "gd":
        no_noise = not (sched.noise_w.any() or sched.noise_a.any())
        stops = driver.make_stops(tol, steps, tol.stop_trapped and no_noise)
        eng, engine = gd.plain(WT, A, normalized), gd
    else:
        stops = driver.make_stops(tol, steps, False)
        eng, engine = finite_sample.engine(algorithm, batch_size, WT, A, WS, AS, normalized), sgd
    driver.run_batch(engine.run_range, engine.workspace, eng, prob, stops, out, R, threads)
    return WT, A, out.traj, out.final, out.stop_step, out.stop_reason, out.slow_end, out.steps_tol, out.rate_pts


def _rates(rate_pts, code, model, WT, A, WS, AS, sched, linear_rtol):
    """Measured per-step loss contraction, whether the curve was geometric, and the theory's ``rate^2``."""
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs may hold inf; they get NaN rates
        return _rates_impl(rate_pts, code, model, WT, A, WS, AS, sched, linear_rtol)


def fitted_rates(rate_pts, code, sched, linear_rtol):
    """Measured per-step loss contraction between the last two rate levels, and whether the rate one window
    earlier agrees (both windows in the last schedule segment and at least ``MIN_WINDOW_STEPS`` long)."""
    R = len(code)
    t_hi, L_hi, t_mid, L_mid, t_lo, L_lo = rate_pts.T
    # Only windows that lie in the last segment measure the final step sizes' rate.
    last_start = sched.seg_end[:, -2] if sched.seg_end.shape[1] > 1 else np.zeros(1)
    glob = code == _classify.GLOBAL
    ok = glob & (t_mid >= last_start) & (t_lo > t_mid) & (L_mid > 0) & (L_lo > 0)
    ok_hi = ok & (t_hi >= last_start) & (t_mid > t_hi) & (L_hi > 0)
    fitted = np.full(R, np.nan)
    log_lo = np.full(R, np.nan)
    log_hi = np.full(R, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lo[ok] = np.log(L_lo[ok] / L_mid[ok]) / (t_lo[ok] - t_mid[ok])
        log_hi[ok_hi] = np.log(L_mid[ok_hi] / L_hi[ok_hi]) / (t_mid[ok_hi] - t_hi[ok_hi])
        fitted[ok] = np.exp(log_lo[ok])
        linear = ok_hi & (np.abs(log_hi / log_lo - 1.0) <= linear_rtol)
    linear &= (t_lo - t_mid >= MIN_WINDOW_STEPS) & (t_mid - t_hi >= MIN_WINDOW_STEPS)
    return fitted, linear


def _rates_impl(rate_pts, code, model, WT, A, WS, AS, sched, linear_rtol):
    R = len(code)
    glob = code == _classify.GLOBAL
    fitted, linear = fitted_rates(rate_pts, code, sched, linear_rtol)
    predicted = np.full(R, np.nan)
    last = sched.eta_w.shape[1] - 1
    sr = np.arange(R) if sched.eta_w.shape[0] > 1 else np.zeros(R, dtype=np.int64)
    ew, ea = sched.eta_w[sr, last], sched.eta_a[sr, last]
    if model == "cnn-unnormalized":
        share = np.full(R, np.nan)
        for r in np.flatnonzero(glob):
            rate, share[r] = _unnormalized_rate(WT[r], A[r], ew[r], ea[r], WS[r], AS[r])
            predicted[r] = rate**2
        linear &= share >= 0.9  # as for the normalized models below: the slowest mode must carry the loss
        return fitted, linear, predicted
    # Normalized models: at the global minimum the Hessian is block diagonal with modes (w-tangent, Q*/(2 n^2)),
    # (a along 1, (k+pi-1)/(2 pi)), (a orthogonal to 1, (pi-1)/(2 pi)); GD contracts mode i by |1 - eta lambda_i|.
    k, p = A.shape[1], WT.shape[1]
    n = np.linalg.norm(WT, axis=1)
    qs = np.einsum("ij,ij->i", AS, AS)
    lam = np.stack([qs / (2.0 * n**2), np.full(R, (k + math.pi - 1.0) / (2 * math.pi)),
                    np.full(R, (math.pi - 1.0) / (2 * math.pi))], axis=1)
    eta = np.stack([ew, ea, ea], axis=1)
    present = np.stack([np.full(R, p > 1), np.ones(R, bool), np.full(R, k > 1)], axis=1)
    factor = np.where(present, np.abs(1.0 - eta * lam), 0.0)
    slow = np.argmax(factor, axis=1)
    predicted[glob] = factor[glob, slow[glob]] ** 2
    # Share of the final loss in each mode (quadratic model): the asymptotic rate is only observable where the
    # slowest mode carries the loss; elsewhere a faster mode with a larger amplitude still dominates.
    cos_phi = np.clip(np.einsum("ij,ij->i", WT, WS) / n, -1.0, 1.0)
    phi = np.arccos(cos_phi)
    d = A - AS
    d1 = d.sum(axis=1) ** 2 / k
    d2 = np.einsum("ij,ij->i", d, d) - d1
    energy = np.stack([qs * phi**2 / 4.0, lam[:, 1] * d1 / 2.0, lam[:, 2] * np.maximum(d2, 0.0) / 2.0], axis=1)
    total = energy.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = energy[np.arange(R), slow] / total
    linear &= share >= 0.9
    return fitted, linear, predicted


def _unnormalized_rate(w, a, eta_w, eta_a, w_star, a_star):
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
    H = theory.population_hessian(w, a, w_star=w_star, a_star=a_star, model="cnn-unnormalized")
    dh = np.sqrt(np.concatenate([np.full(p, eta_w), np.full(k, eta_a)]))
    S = dh[:, None] * H * dh[None, :]
    e = np.concatenate([w, -a]) / dh
    q, _ = np.linalg.qr(np.column_stack([e / np.linalg.norm(e), np.eye(p + k)]))
    B = q[:, 1 : p + k]
    mu, U = np.linalg.eigh(B.T @ S @ B)
    factor = np.abs(1.0 - mu)
    slow = int(np.argmax(factor))
    n = float(np.linalg.norm(w))
    x = np.concatenate([w - n * w_star, a - a_star / n])
    y = U.T @ (B.T @ (x / dh))
    energy = np.maximum(mu, 0.0) * y**2 / 2.0
    total = float(energy.sum())
    return float(factor[slow]), (float(energy[slow] / total) if total > 0 else math.nan)
