"""Residual distillation in the shallow model: train with a shortcut, deploy without.

**Folding** (:func:`fold_shortcut`).  The ResNet ``f(Z) = sum_j a_j sigma(u.Z_j)``, ``u = (w + v)/||w + v||``, *is* the
CNN with filter ``w + v``: deploying a trained ResNet without its shortcut costs nothing once the shortcut is
folded into the filter.  (``v`` is the unit shortcut direction; a non-unit ``shortcut`` is normalized first, as
everywhere in :mod:`theory`.)

**Fading shortcut** (:func:`simulate_fading`).  Train the network ``u_t = (w + lambda_t v) / ||w + lambda_t v||``
whose shortcut weight ``lambda_t`` decays from 1 to 0 by a :class:`Fade` (linear, cosine, step, or any monotone
table) that reaches 0 at ``T_fade <= steps``; from then on the network is the plain CNN carried by ``w`` alone, and
that CNN is what is deployed, classified and reported (``result.w`` is its filter).

Derivation of the gradient (details in :mod:`theory.fading`).  Write ``w~_t = w + lambda_t v``.  At step ``t`` the
loss is the CNN loss at ``w~_t``: ``L_t(w, a) = L_cnn(w~_t, a)``.  Since ``dw~/dw = I``,
``grad_w L_t = grad_{w~} L_cnn = L_c (I - u u^T) w* / ||w~_t||`` (with ``L_c = dL/dcos(phi)`` from the generated
closed forms), the same formula as the fixed-``v`` ResNet with ``v -> lambda_t v``; ``grad_a`` is unchanged.  A GD
step on ``w`` followed by the change of ``lambda`` moves the effective filter by

    ``w~_{t+1} = w_{t+1} + lambda_{t+1} v = (w~_t - eta_w grad_w L_t) + (lambda_{t+1} - lambda_t) v``,

the GD step (orthogonal to ``w~_t``, so it never shrinks ``||w~||``) plus a jump along ``v`` (which can shrink it).
To first order the jump changes the loss by ``(lambda_{t+1} - lambda_t) v.grad_{w~} L_cnn``.  So the fading
shortcut is population GD with a shortcut that carries a weight (:mod:`sims.engines.gd`, ``lam``): it carries
``w~`` (the angle is computed from the filter actually used, with no cancellation in ``||w + lambda v||``) and adds
the jump inside the fused update; ``w = w~ - lambda_t v`` is recovered at the end (``lambda = 0`` there).

Stopping and metrics.  While ``lambda_t > 0`` the run never stops on the loss or gradient tolerance (a converged
ResNet is knocked off its minimum when the shortcut is removed) nor as ``trapped``; from the first step with
``lambda_t = 0`` on, the stop rules are those of :func:`sims.simulate` for the plain CNN.  The trajectory and
``slow_phase_end`` use the training network at ``lambda_t``; ``steps_to_tol`` is the first step at which the
*deployable* network (``lambda_t = 0``) has loss ``<= eps``; the rate windows are taken only at ``lambda_t = 0``.
``extras["fade_end_loss"]``/``extras["fade_end_phi"]`` hold the loss and angle at the step where ``lambda`` first
reaches 0 (the moment the shortcut is gone; NaN if the run stopped earlier, i.e. diverged).  A run whose effective
filter vanishes (``w + lambda v = 0``, direction undefined; e.g. ``eta_w = 0`` throughout) stops ``diverged``.

:func:`compare` tabulates success rates of the fading shortcut against the ResNet and the plain CNN from a random
init.  Only population GD is implemented for the fading shortcut (no SGD / fixed-sample variants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import theory
from sims.engines import gd, reduced
from sims.engines.driver import Outputs
from sims.runs.plain import rebuild, reduced_coordinates
from sims.runs.registry import Built, Call, Draws, EngineSpec, Finished, Setup, Start, no_noise, register_engine
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule, optimal_eta_a
from sims.runs.simulate import SimulationResult, Tolerances, _check_int, angles, simulate

FADE_KINDS: tuple[str, ...] = ("linear", "cosine", "step", "custom")
#: How a fade is trained: on the order parameters where they apply ("auto"), or on the full coordinates.
FADE_ENGINES: tuple[str, ...] = ("auto", "vector")


# ---- folding ----------------------------------------------------------------------------------------------------
def fold_shortcut(w: Any, a: Any, *, shortcut: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Fold the shortcut of a trained ResNet ``(w, a)`` into a plain CNN ``(w + v, a)`` computing the same function.

    Parameters
    ----------
    w : array_like
        The ResNet's filter (its residual branch), ``(p,)`` or a batch ``(R, p)``.
    a : array_like
        The second layer, ``(k,)`` or ``(R, k)`` (returned as a copy).
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``), normalized to unit length as in :mod:`theory`.

    Returns
    -------
    w, a : numpy.ndarray
        The plain CNN's filter ``w + v`` and second layer.

    Raises
    ------
    ValueError
        If an array is not finite, the shapes do not match, or the shortcut is zero.

    Examples
    --------
    >>> import numpy as np, sims
    >>> sims.fold_shortcut(np.zeros(4), np.ones(4))     # v = 1_4 / 2
    (array([0.5, 0.5, 0.5, 0.5]), array([1., 1., 1., 1.]))
    """
    w_arr = np.array(w, dtype=np.float64)
    a_arr = np.array(a, dtype=np.float64)
    if w_arr.ndim not in (1, 2) or w_arr.shape[-1] < 1:
        raise ValueError(f"w must be a 1-D filter (p,) or a batch (R, p); got shape {w_arr.shape}")
    if a_arr.ndim not in (1, 2) or a_arr.shape[-1] < 1:
        raise ValueError(f"a must be a 1-D second layer (k,) or a batch (R, k); got shape {a_arr.shape}")
    if w_arr.ndim == 2 and a_arr.ndim == 2 and w_arr.shape[0] != a_arr.shape[0]:
        raise ValueError(f"w and a must hold the same number of runs; got {w_arr.shape[0]} and {a_arr.shape[0]}")
    if not (np.all(np.isfinite(w_arr)) and np.all(np.isfinite(a_arr))):
        raise ValueError("w and a must be finite")
    v = theory.validation.shortcut_vector(shortcut, w_arr.shape[-1])
    w_cnn = w_arr + v
    if np.any(np.linalg.norm(np.atleast_2d(w_cnn), axis=1) == 0.0):
        raise ValueError("w + shortcut = 0: the folded CNN filter has no direction")
    return w_cnn, a_arr


def network_output(Z: Any, w: Any, a: Any, *, model: str = "resnet", shortcut: Any = None) -> np.ndarray:
    """``f(Z; w, a) = sum_j a_j relu(u.Z_j)`` for inputs ``Z`` of shape ``(n, k, p)``; ``u`` is the normalized
    effective filter (``w + v`` for the ResNet, ``w`` for the CNN; ``w`` itself for ``"cnn-unnormalized"``)."""
    model = theory.Model.of(model)
    w = theory.validation.as_vector(w, "w")
    a = theory.validation.as_vector(a, "a")
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 3 or Z.shape[1:] != (a.size, w.size):
        raise ValueError(f"Z must have shape (n, k, p) = (n, {a.size}, {w.size}); got {Z.shape}")
    wt = theory.landscape.effective_filter(w, model, theory.validation.shortcut_vector(shortcut, w.size))
    u = wt / np.linalg.norm(wt) if model.normalized else wt
    return np.maximum(Z @ u, 0.0) @ a


# ---- fade schedules ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fade:
    """How the shortcut weight ``lambda_t`` decays from 1 to 0, reaching 0 at step ``steps`` (``T_fade``):

    - ``"linear"``: ``1 - t / T``;  ``"cosine"``: ``(1 + cos(pi t / T)) / 2``;
    - ``"step"``: 1 for ``t < T`` (a ResNet), then 0 (the shortcut removed at once);
    - ``"custom"``: ``values = (lambda_0, ..., lambda_T)``, starting at 1, non-increasing, ending at 0.

    After ``T`` the weight stays 0 (a plain CNN).  ``Fade.custom(values)`` builds the last kind.

    ``engine``: ``"auto"`` trains on the order parameters (:mod:`sims.engines.reduced`) when the schedule is
    noise-free and on the full coordinates otherwise; ``"vector"`` always on the full coordinates.
    """

    kind: str = "linear"
    steps: int | None = None
    values: tuple[float, ...] | None = None
    engine: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in FADE_KINDS:
            raise ValueError(f"fade.kind must be one of {FADE_KINDS}; got {self.kind!r}")
        if self.engine not in FADE_ENGINES:
            raise ValueError(f"fade.engine must be one of {FADE_ENGINES}; got {self.engine!r}")
        if self.kind == "custom":
            vals = _check_fade_values(self.values)
            if self.steps is not None and self.steps != vals.size - 1:
                raise ValueError(f"fade.steps must equal len(fade.values) - 1 = {vals.size - 1} for a custom fade; "
                                 f"got {self.steps!r}")
            object.__setattr__(self, "values", tuple(float(x) for x in vals))
            object.__setattr__(self, "steps", int(vals.size - 1))
            return
        if self.values is not None:
            raise ValueError("fade.values is only for fade.kind = 'custom'")
        s = self.steps
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"fade.steps must be an integer >= 1 (T_fade, the step at which lambda reaches 0); "
                             f"got {s!r}")
        object.__setattr__(self, "steps", int(s))

    @classmethod
    def custom(cls, values: Any) -> Fade:
        """A fade given as the table ``lambda_0 = 1, ..., lambda_T = 0`` (non-increasing)."""
        return cls("custom", values=values)

    @property
    def label(self) -> str:
        return f"fade-{self.kind}-T{self.steps}"

    def lambdas(self) -> np.ndarray:
        """``lambda_t`` for ``t = 0 .. T`` (float64, ``lambda_T = 0``); later steps have ``lambda = 0``."""
        T = self.steps
        t = np.arange(T + 1, dtype=np.float64)
        if self.kind == "custom":
            lam = np.array(self.values, dtype=np.float64)
        elif self.kind == "linear":
            lam = 1.0 - t / T
        elif self.kind == "cosine":
            lam = 0.5 * (1.0 + np.cos(np.pi * t / T))
        else:
            lam = np.ones(T + 1)
        lam[-1] = 0.0
        return np.clip(lam, 0.0, 1.0)


def _check_fade_values(values: Any) -> np.ndarray:
    if values is None:
        raise ValueError("fade.values is required for fade.kind = 'custom' (lambda_0 = 1, ..., lambda_T = 0)")
    try:
        vals = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fade.values must be a 1-D sequence of numbers; got {values!r}") from None
    if vals.ndim != 1 or vals.size < 2:
        raise ValueError(f"fade.values must be a 1-D sequence lambda_0 .. lambda_T of length >= 2; got shape "
                         f"{vals.shape}")
    if not np.all(np.isfinite(vals)):
        raise ValueError("fade.values must be finite")
    if vals[0] != 1.0:
        raise ValueError(f"fade.values must start at 1 (lambda_0 = 1: training starts as the ResNet); "
                         f"got {vals[0]!r}")
    rise = np.flatnonzero(np.diff(vals) > 0.0)
    if rise.size:
        i = int(rise[0])
        raise ValueError(f"fade.values must be monotone non-increasing (the shortcut only fades); values[{i}] = "
                         f"{vals[i]!r} < values[{i + 1}] = {vals[i + 1]!r}")
    if vals[-1] != 0.0:
        raise ValueError(f"fade.values must end at 0 (lambda_T = 0: the deployed network is a plain CNN); "
                         f"got {vals[-1]!r}")
    return vals


# ---- the engine: the ResNet with a schedule for the shortcut weight ---------------------------------------------
class FadeSpec(EngineSpec):
    """Population GD of the ResNet whose shortcut weight follows a :class:`Fade` (:mod:`sims.engines.gd`'s moving
    shortcut); deployed, classified and reported as the plain CNN (module docstring)."""

    options = Fade

    def validate(self, opts: Fade, call: Call) -> Call:
        if call.model != theory.RESNET:
            raise ValueError(f"model must be 'resnet' for the fading shortcut (it trains the ResNet and deploys the "
                             f"CNN); got {call.model.name!r}")
        if opts.steps > call.steps:
            raise ValueError(f"fade.steps = {opts.steps} must be <= steps = {call.steps}: the shortcut must be gone "
                             "(lambda = 0) before the step budget ends")
        return super().validate(opts, call)

    def start(self, opts: Fade, call: Call, draws: Draws) -> Start:
        WT0 = draws.W0 + opts.lambdas()[0] * call.shortcut
        return Start(WT0, draws.A0, draws.W0, draws.A0, phi0=angles(WT0, draws.WS))

    def build(self, opts: Fade, call: Call, setup: Setup) -> Built:
        """On the order parameters (:mod:`sims.engines.reduced`, span ``{w~0, v, w*}``) for noise-free schedules,
        on the full coordinates otherwise (or with ``opts.engine == "vector"``)."""
        lam = opts.lambdas()
        zero = np.flatnonzero(lam == 0.0)
        t_deployed = int(zero[0]) if zero.size else lam.size - 1
        if no_noise(setup.sched) and opts.engine != "vector":
            start, consts, basis = reduced_coordinates(setup.WT, setup.draws.WS, setup.A, setup.draws.AS,
                                                       V=call.shortcut)
            eng, entry = reduced.engine(start, consts, call.k, True, lam=lam, t_deployed=t_deployed)
            return Built(entry, reduced.workspace, eng, True, basis)
        fade_end = np.full((call.runs, 2), np.nan)
        eng = gd.FadingGD(setup.WT, setup.A, True, lam, call.shortcut, t_deployed, fade_end)
        return Built(gd.run_range_fading, gd.workspace, eng, no_noise(setup.sched))

    def finish(self, opts: Fade, call: Call, setup: Setup, built: Built, out: Outputs) -> Finished:
        lam, fade_end = built.eng.lam, built.eng.fade_end
        if built.extra is not None:  # the reduced engine: the vectors from the final coordinates
            rebuild(built.eng.out, built.extra, setup.WT, setup.A)
        lam_stop = np.where(out.stop_step < lam.size, lam[np.minimum(out.stop_step, lam.size - 1)], 0.0)
        w = setup.WT - lam_stop[:, None] * call.shortcut  # the deployed CNN's filter (lambda = 0 at the stop)
        extras = {"fade_end_loss": fade_end[:, 0].copy(), "fade_end_phi": fade_end[:, 1].copy()}
        return Finished(setup.WT, setup.A, w, theory.CNN, extras)

    def settings(self, opts: Fade, call: Call, base: dict[str, Any]) -> dict[str, Any]:
        out = dict(model=theory.CNN.name, trained_as="resnet-fading-shortcut")
        out.update((key, base[key]) for key in ("k", "p", "runs", "steps", "schedule"))
        out["fade"] = opts
        out.update((key, val) for key, val in base.items() if key not in out)
        return out


register_engine("fade", FadeSpec())


def simulate_fading(*, k: int, p: int, runs: int, steps: int, schedule: Schedule, fade: Fade,
                    teacher: Teacher | tuple[Any, Any] | None = None, init: Init | None = None, shortcut: Any = None,
                    seed: int = 0, run_offset: int = 0, tolerances: Tolerances | None = None, n_record: int = 64,
                    allow_unstable: bool = False, threads: int | None = None) -> SimulationResult:
    """Train ``runs`` networks with a fading shortcut (population GD) and return the deployed plain CNNs.

    The same as ``sims.simulate(engine=fade, model="resnet", ...)``.

    Parameters
    ----------
    k, p, runs, steps, schedule, teacher, init, shortcut
        As :func:`sims.simulate` with ``model="resnet"`` (default init ``w0 = 0``: the network starts at the
        shortcut).  Run ``r`` draws teacher and init exactly as ``sims.simulate(model="resnet", ...)`` with the same
        seed does, so the two are paired run by run; results are bit-identical for any thread count and split.
    seed, run_offset, tolerances, n_record, allow_unstable, threads
        As :func:`sims.simulate`.
    fade : Fade
        The fade of the shortcut's weight from 1 to 0, with ``fade.steps <= steps``.

    Returns
    -------
    SimulationResult
        ``result.w`` is the deployed CNN filter (``lambda = 0``), ``result.w0`` the ResNet's initial ``w``; the
        outcome classifies the plain CNN ``(w, a)`` against the theory's fixed points.

    Raises
    ------
    ValueError
        As :func:`sims.simulate`, and for a fade longer than ``steps``.

    Examples
    --------
    >>> import sims
    >>> res = sims.simulate_fading(k=4, p=4, runs=50, steps=2000, schedule=sims.methods.distill.liu_two_stage(4),
    ...                            fade=sims.Fade("cosine", steps=200), teacher=sims.Teacher(require_spurious=True))
    >>> res.counts()["global"]
    50
    """
    if not isinstance(fade, Fade):
        raise ValueError(f"fade must be a sims.Fade; got {type(fade).__name__}")
    return simulate(engine=fade, model="resnet", k=k, p=p, runs=runs, steps=steps, schedule=schedule,
                    teacher=teacher, init=init, shortcut=shortcut, seed=seed, run_offset=run_offset,
                    tolerances=tolerances, n_record=n_record, allow_unstable=allow_unstable, threads=threads)


# ---- comparison -------------------------------------------------------------------------------------------------
def liu_two_stage(k: int) -> Schedule:
    """The liu2019 sweep's two-stage warmup: ``T1 = 200`` steps with ``eta_w = 0.01 (2/k)``, then
    ``eta_w = 0.5 (2/k)``; ``eta_a = 0.9 * 4 pi / (k + 2 pi - 2)`` throughout."""
    ea = 0.9 * optimal_eta_a(k)
    return Schedule.two_stage(200, 0.01 * 2.0 / k, ea, 0.5 * 2.0 / k, ea)


def _row(res: SimulationResult, method: str, k: int, p: int, fade: Fade | None,
         paired: SimulationResult | None = None) -> dict[str, Any]:
    from sims.runs.classify import wilson

    n = len(res)
    row: dict[str, Any] = {"method": method, "k": k, "p": p, "fade": fade.kind if fade else "",
                           "fade_steps": fade.steps if fade else 0, "trials": n}
    for name in ("global", "spurious", "not_converged", "diverged"):
        s = int(np.sum(res.outcome == name))
        row[f"p_{name}"] = s / n
        if name in ("global", "spurious"):
            lo, hi = wilson(s, n)
            row[f"p_{name}_lo"], row[f"p_{name}_hi"] = float(lo), float(hi)
    if paired is not None:
        row["p_same_outcome_as_resnet"] = float(np.mean(res.outcome == paired.outcome))
    else:
        row["p_same_outcome_as_resnet"] = math.nan
    reached = res.steps_to_tol[res.steps_to_tol >= 0]
    row["steps_to_tol_median"] = float(np.median(reached)) if reached.size else math.nan
    if fade is not None:
        row["fade_end_loss_rel_median"] = float(np.nanmedian(res.extras["fade_end_loss"] / res.loss_ref))
    else:
        row["fade_end_loss_rel_median"] = math.nan
    return row


def compare(
    *,
    cells: Any = ((4, 4), (16, 16)),
    fades: Any = (Fade("linear", 500), Fade("cosine", 500), Fade("step", 500), Fade("linear", 2000)),
    trials: int = 300,
    steps: int = 5000,
    schedule: Schedule | Any = liu_two_stage,
    teacher: Teacher | None = None,
    seed: int = 0,
    tolerances: Tolerances | None = None,
    threads: int | None = None,
):
    """Success rates of the fading shortcut against the ResNet (``w0 = 0``) and the plain CNN (random unit ``w0``),
    as a pandas DataFrame with one row per method x (k, p): ``method`` (``"resnet"``, ``"cnn"``, or the fade's
    label such as ``"fade-linear-T500"``), ``k``, ``p``, ``fade``, ``fade_steps``, ``trials``, ``p_global`` with
    its Wilson 95% interval ``p_global_lo``/``p_global_hi``, ``p_spurious`` (and its interval), ``p_not_converged``,
    ``p_diverged``, ``steps_to_tol_median`` (over runs that reached ``tolerances.eps``), for the fades
    ``fade_end_loss_rel_median`` (loss / L_ref when the shortcut is gone), and ``p_same_outcome_as_resnet`` (the
    fraction of runs whose outcome equals that of the ResNet run with the same teacher and init; NaN for the CNN).

    ``cells``: (k, p) pairs; ``schedule``: a :class:`Schedule` or a function ``k -> Schedule`` (default: the
    liu2019 two-stage warmup, :func:`liu_two_stage`); ``teacher`` (default ``Teacher(require_spurious=True)``,
    ``w*`` on the half sphere around ``v``).  The ResNet and the fades share teachers and inits run by run (same
    seed); the CNN shares the teachers.
    """
    import pandas as pd

    teacher = Teacher(require_spurious=True) if teacher is None else teacher
    trials = _check_int(trials, "trials", 1)
    try:
        cells = [(int(k), int(p)) for k, p in cells]
    except (TypeError, ValueError):
        raise ValueError(f"cells must be a sequence of (k, p) pairs; got {cells!r}") from None
    fades = list(fades)
    for f in fades:
        if not isinstance(f, Fade):
            raise ValueError(f"fades must hold sims.Fade objects; got {type(f).__name__}")
    rows = []
    for k, p in cells:
        sch = schedule(k) if callable(schedule) and not isinstance(schedule, Schedule) else schedule
        kw = dict(k=k, p=p, runs=trials, steps=steps, schedule=sch, teacher=teacher, seed=seed, tolerances=tolerances,
                  threads=threads)
        resnet = simulate(model="resnet", n_record=2, **kw)
        rows.append(_row(resnet, "resnet", k, p, None, resnet))
        rows.append(_row(simulate(model="cnn", n_record=2, **kw), "cnn", k, p, None))
        for f in fades:
            rows.append(_row(simulate_fading(fade=f, n_record=2, **kw), f.label, k, p, f, resnet))
    return pd.DataFrame(rows)
