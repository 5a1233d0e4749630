"""Step-size schedules: constant, two-stage warmup, layerwise, piecewise-constant, perturbed, and the
theory-prescribed warmup.

A schedule is a tuple of :class:`Segment` (steps, ``eta_w``, ``eta_a``, perturbation noise); the last segment
runs until the step budget.  :meth:`Schedule.resolve` turns it into the per-run arrays the kernels take.

**The prescribed warmup** (:meth:`Schedule.prescribed_warmup`) chooses, per run, the Stage-I length ``T1`` and
filter step ``eta_w^I`` from a bound that keeps ``phi`` below the saddle angle ``phi_s`` while ``a.a*`` turns
positive.  With ``phi_0`` the initial angle, target ``phi_max = (phi_0 + phi_s) / 2`` (``phi_s = pi`` when there
is no spurious point) and ``P_min = a(phi_max).a* > 0`` (``a(phi).a*`` decreases in ``phi``):

1. ``a`` contracts toward the moving target ``a(phi_t)`` at rate ``r_a = max |1 - eta_a lambda|`` over the
   ``a``-Hessian's eigenvalues ``(k + pi - 1)/(2 pi)`` and ``(pi - 1)/(2 pi)``.
2. The filter step is orthogonal to ``w~`` and ``||w~|| >= n_0`` never shrinks, so one step turns ``phi`` by at
   most ``eta_w G |a.a*| / (2 pi n_0^2)`` with ``G = max (pi - phi) sin(phi) = 1.8197...`` (:data:`G_BOUND`); with
   ``|a.a*| <= ||a*|| A`` (``A`` bounds ``||a_t||``) that is ``delta <= eta_w G ||a*|| A / (2 pi n_0^2)``.
3. ``a(phi)`` moves by at most ``G ||a*|| / (pi - 1)`` per radian, so the tracking error obeys
   ``e_t <= r_a^t e_0 + D`` with ``D = G ||a*|| delta / ((pi - 1)(1 - r_a))``; ``eta_w^I`` is chosen so that
   ``D ||a*|| <= P_min / 4``.
4. Then ``a_t.a* >= P_min - (r_a^t e_0 + D) ||a*|| >= P_min / 4 > 0`` for ``t >= t_+ = log(2 e_0 ||a*|| / P_min)
   / log(1 / r_a)``; before ``t_+`` the angle grows by at most ``t_+ delta``, and ``eta_w^I`` is chosen so that
   ``t_+ delta <= phi_max - phi_0``.  After ``t_+`` the filter moves toward ``w*``.
5. ``T1 = 2 t_+ + 10`` (margin for ``a`` to settle); Stage II uses the caller's ``eta_w, eta_a``.

When ``phi_0 >= phi_s`` no warmup can help (GD from there goes to the spurious point); such runs get
``eta_w^I = 0`` for ``T1`` steps and ``guaranteed = False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

import theory
from sims.engines import closed_forms
from theory import closed_forms as _tcf

#: The bound's ``G``: an upper bound of :data:`theory.G_MAX` ``= max_{phi in [0, pi]} (pi - phi) sin(phi)
#: = 1.81970574116`` (tested).  It was typed as 1.8197057955 (3e-8 above the maximum, so the bound holds); the exact
#: value would move ``eta_w^I`` in its last bits and with it every prescribed-warmup result, so it is kept.
G_BOUND = 1.8197057955
#: Shortest noise half-life of :meth:`Schedule.perturbed` (below about 1/1075 steps the decay factor
#: ``0.5 ** (1 / half_life)`` underflows to 0).
MIN_HALF_LIFE = 1e-3


@dataclass(frozen=True)
class Segment:
    """A stretch of ``steps`` GD steps with fixed step sizes and perturbation noise (``steps=None``: to the end).

    The building block of a :class:`Schedule`, which checks its fields (a segment alone is a plain record).

    Parameters
    ----------
    steps : int or None
        The segment's length in steps, ``>= 0``; None for the last segment, which runs to the step budget.
    eta_w, eta_a : float
        The step sizes of the filter and of the second layer, finite and ``>= 0``.
    noise_w, noise_a : float, default 0.0
        The std of the Gaussian perturbation added to each weight per step (perturbed GD), finite and ``>= 0``.

    Examples
    --------
    >>> import sims
    >>> stage_one = sims.Segment(100, eta_w=0.0, eta_a=1.0)       # train a alone for 100 steps
    >>> sims.Schedule.piecewise([stage_one, sims.Segment(None, 0.5, 1.0)]).stage_one_steps
    100
    """

    steps: int | None
    eta_w: float
    eta_a: float
    noise_w: float = 0.0
    noise_a: float = 0.0


@dataclass(frozen=True)
class ResolvedSchedule:
    """Per-run arrays for the kernels; ``Rs = 1`` when every run shares the schedule."""

    seg_end: np.ndarray  # (Rs, nseg) int64
    eta_w: np.ndarray  # (Rs, nseg)
    eta_a: np.ndarray  # (Rs, nseg)
    noise_w: np.ndarray  # (nseg,)
    noise_a: np.ndarray  # (nseg,)
    noise_decay: float
    warmup_steps: np.ndarray | None = None  # (R,) T1 of the prescribed warmup
    warmup_eta_w: np.ndarray | None = None  # (R,) eta_w^I of the prescribed warmup
    guaranteed: np.ndarray | None = None  # (R,) whether the bound applies (phi_0 < phi_s)


def _check_rate(value: float, name: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Schedule:
    """Piecewise-constant per-layer step sizes (and optional annealed perturbation noise).

    Build one with a constructor (:meth:`constant`, :meth:`two_stage`, :meth:`layerwise`, :meth:`piecewise`,
    :meth:`perturbed`, :meth:`prescribed_warmup`); :meth:`resolve` turns it into the per-run arrays the kernels
    take.  Per-layer step sizes matter here because the warmup that avoids the spurious minimum is a small filter
    step while ``a`` settles (Liu et al. 2019); the prescribed warmup chooses it per run from a bound
    (:mod:`sims.runs.schedules`).

    Parameters
    ----------
    segments : tuple of Segment
        At least one; only the last may have ``steps=None`` (it runs to the step budget).
    noise_decay : float, default 1.0
        Per-step factor of the perturbation noise, in ``(0, 1]`` (1: no annealing).
    name : str, default "custom"
        The constructor's name, reported in ``result.settings``.
    prescribed : bool, default False
        Whether stage I is the prescribed warmup (resolved per run).
    safety : float, default 1.0
        Prescribed warmup: factor on ``eta_w^I``, in ``(0, 1]``.
    extra : dict, optional
        Constructor-specific settings (the prescribed warmup's ``eta_a_warmup``).

    Raises
    ------
    ValueError
        Naming the field: no segments, a segment length that is not an integer ``>= 0`` (or None before the
        last), a step size or noise that is negative or not finite, ``noise_decay`` or ``safety`` outside
        ``(0, 1]``.

    Examples
    --------
    >>> import sims
    >>> sched = sims.Schedule.two_stage(100, 0.01, 1.0, 0.5, 1.0)    # Liu et al.'s warmup
    >>> sched.name, sched.stage_one_steps, [seg.eta_w for seg in sched.segments]
    ('two-stage', 100, [0.01, 0.5])
    >>> resolved = sched.resolve(1000, runs=2)     # shared by the runs: one row
    >>> resolved.seg_end, resolved.eta_w
    (array([[ 100, 1000]]), array([[0.01, 0.5 ]]))
    >>> sims.Schedule.constant(-1.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: eta_w must be a finite number >= 0; got -1.0
    """

    segments: tuple[Segment, ...]
    noise_decay: float = 1.0
    name: str = "custom"
    prescribed: bool = False
    safety: float = 1.0  # prescribed warmup: multiply eta_w^I by this (<= 1)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("schedule.segments must hold at least one segment")
        for i, seg in enumerate(self.segments):
            last = i == len(self.segments) - 1
            if seg.steps is None and not last:
                raise ValueError(f"schedule.segments[{i}].steps must be an integer >= 0 (only the last may be None)")
            if seg.steps is not None and (not isinstance(seg.steps, (int, np.integer)) or isinstance(seg.steps, bool)
                                          or seg.steps < 0):
                raise ValueError(f"schedule.segments[{i}].steps must be an integer >= 0; got {seg.steps!r}")
            for f in ("eta_w", "eta_a", "noise_w", "noise_a"):
                _check_rate(getattr(seg, f), f"schedule.segments[{i}].{f}")
        if not (_is_real(self.noise_decay) and math.isfinite(self.noise_decay) and 0.0 < self.noise_decay <= 1.0):
            raise ValueError(f"schedule.noise_decay must lie in (0, 1]; got {self.noise_decay!r}")
        if not (_is_real(self.safety) and 0.0 < self.safety <= 1.0):
            raise ValueError(f"schedule.safety must lie in (0, 1]; got {self.safety!r}")

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def constant(cls, eta_w: float, eta_a: float) -> Schedule:
        """One step size per layer throughout (no warmup)."""
        return cls((Segment(None, _check_rate(eta_w, "eta_w"), _check_rate(eta_a, "eta_a")),), name="constant")

    @classmethod
    def two_stage(cls, T1: int, eta_w1: float, eta_a1: float, eta_w2: float, eta_a2: float) -> Schedule:
        """Liu et al.'s warmup: ``T1`` steps with ``(eta_w1, eta_a1)``, then ``(eta_w2, eta_a2)``."""
        return cls(
            (
                Segment(T1, _check_rate(eta_w1, "eta_w1"), _check_rate(eta_a1, "eta_a1")),
                Segment(None, _check_rate(eta_w2, "eta_w2"), _check_rate(eta_a2, "eta_a2")),
            ),
            name="two-stage",
        )

    @classmethod
    def layerwise(cls, T1: int, eta_a1: float, eta_w2: float, eta_a2: float) -> Schedule:
        """Stage I trains only ``a`` (``eta_w = 0``), then both layers."""
        sched = cls.two_stage(T1, 0.0, eta_a1, eta_w2, eta_a2)
        return cls(sched.segments, name="layerwise")

    @classmethod
    def piecewise(cls, segments: list[tuple[int | None, float, float]] | list[Segment]) -> Schedule:
        """Any piecewise-constant per-layer schedule: ``[(steps, eta_w, eta_a), ..., (None, eta_w, eta_a)]``."""
        segs = tuple(s if isinstance(s, Segment) else Segment(*s) for s in segments)
        return cls(segs, name="piecewise")

    @classmethod
    def perturbed(
        cls, eta_w: float, eta_a: float, *, noise: float, half_life: float = math.inf, noise_a: float | None = None
    ) -> Schedule:
        """Perturbed GD (Zhou, Liu et al. 2019): Gaussian noise of std ``noise`` added to the weights each step,
        annealed geometrically with the given half-life in steps (``inf``: no annealing)."""
        noise = _check_rate(noise, "noise")
        try:
            ok = _is_real(half_life) and float(half_life) >= MIN_HALF_LIFE
        except OverflowError:
            ok = False
        if not ok:
            raise ValueError(f"half_life must be > 0 steps (at least {MIN_HALF_LIFE:g}; inf: no annealing); "
                             f"got {half_life!r}")
        decay = 1.0 if math.isinf(half_life) else 0.5 ** (1.0 / half_life)
        na = noise if noise_a is None else _check_rate(noise_a, "noise_a")
        return cls((Segment(None, eta_w, eta_a, noise, na),), noise_decay=decay, name="perturbed")

    @classmethod
    def prescribed_warmup(
        cls, eta_w: float, eta_a: float, *, eta_a_warmup: float | None = None, safety: float = 1.0
    ) -> Schedule:
        """Two-stage warmup whose ``T1`` and ``eta_w^I`` come, per run, from the bound in the module docstring.

        Stage II uses ``(eta_w, eta_a)``; Stage I uses ``eta_a_warmup`` (default: the step ``4 pi / (k + 2 pi - 2)``
        that contracts ``a`` fastest).
        """
        warm = math.nan if eta_a_warmup is None else _check_rate(eta_a_warmup, "eta_a_warmup")
        segs = (Segment(0, 0.0, 0.0), Segment(None, _check_rate(eta_w, "eta_w"), _check_rate(eta_a, "eta_a")))
        return cls(segs, name="prescribed-warmup", prescribed=True, safety=safety, extra={"eta_a_warmup": warm})

    # ---- use ----------------------------------------------------------------------------------------------
    @property
    def stage_one_steps(self) -> int:
        """The length of the first segment when there are several (stage I), else 0."""
        return int(self.segments[0].steps or 0) if len(self.segments) > 1 else 0

    def max_eta_a(self, k: int) -> float:
        """The largest ``eta_a`` of any segment (with the prescribed warmup's stage-I step), for the stability check."""
        etas = [s.eta_a for s in self.segments]
        if self.prescribed:
            warm = self.extra.get("eta_a_warmup", math.nan)
            etas.append(optimal_eta_a(k) if math.isnan(warm) else warm)
        return max(etas)

    def resolve(self, max_steps: int, *, runs: int, **context) -> ResolvedSchedule:
        """Per-run arrays; the prescribed warmup needs ``context``: the vectors' (``phi0, norm0, a0, a_star``,
        :func:`prescribed_warmup_steps`) or the order parameters' (``phi0, norm0, k, gram``,
        :func:`prescribed_warmup_steps_gram`)."""
        total = sum(s.steps for s in self.segments[:-1])
        if total > max_steps:
            raise ValueError(
                f"schedule stage lengths add up to {total} steps (T1 for a two-stage schedule), more than "
                f"steps = {max_steps}; T1 must be <= steps"
            )
        ends = np.cumsum([s.steps for s in self.segments[:-1]] + [0]).astype(np.int64)[None, :]
        ends[:, -1] = max_steps  # the last segment runs to the step budget (not T1 + budget)
        eta_w = np.array([[s.eta_w for s in self.segments]])
        eta_a = np.array([[s.eta_a for s in self.segments]])
        noise_w = np.array([s.noise_w for s in self.segments])
        noise_a = np.array([s.noise_a for s in self.segments])
        if not self.prescribed:
            return ResolvedSchedule(ends, eta_w, eta_a, noise_w, noise_a, self.noise_decay)
        warm = self.extra.get("eta_a_warmup", math.nan)
        bound = prescribed_warmup_steps_gram if "gram" in context else prescribed_warmup_steps
        T1, ew1, ok = bound(eta_a_warmup=None if math.isnan(warm) else warm, **context)
        ew1 = ew1 * self.safety
        T1 = np.minimum(T1, max_steps)
        ends = np.repeat(ends, runs, axis=0)
        ends[:, 0] = T1
        eta_w = np.repeat(eta_w, runs, axis=0)
        eta_w[:, 0] = ew1
        eta_a = np.repeat(eta_a, runs, axis=0)
        k = context["k"] if "gram" in context else context["a_star"].shape[1]
        eta_a[:, 0] = optimal_eta_a(k) if math.isnan(warm) else warm
        return ResolvedSchedule(ends, eta_w, eta_a, noise_w, noise_a, self.noise_decay, T1, ew1, ok)


def optimal_eta_a(k: int) -> float:
    """The step that contracts ``a`` fastest: ``2 / (lambda_max + lambda_min) = 4 pi / (k + 2 pi - 2)`` over the
    ``a``-Hessian's eigenvalues (:func:`theory.a_hessian_eigenvalues`); for ``k = 1`` the single eigenvalue ``1/2``
    gives ``2``."""
    if k == 1:
        return 2.0
    return 4.0 * math.pi / (k + 2.0 * math.pi - 2.0)


def _a_contraction(eta_a: float, k: int) -> float:
    lam_ones, lam_perp = theory.a_hessian_eigenvalues(k)
    lams = [lam_ones] + ([lam_perp] if k > 1 else [])  # lam_perp has multiplicity k - 1
    return max(abs(1.0 - eta_a * lam) for lam in lams)


#: Row-wise dot products that round exactly like ``x @ y`` on each row (NumPy >= 2; before, a loop of exactly that).
_rowdot = getattr(np, "vecdot", None) or (lambda x, y: np.array([u @ v for u, v in zip(x, y, strict=True)]))


def _optimal_a_rows(g: np.ndarray, A: np.ndarray) -> np.ndarray:
    """:func:`theory.optimal_a` row by row from ``g = g(phi)`` (R,) and teachers ``A`` (R, k): the same operations
    (``a*`` scaled by its largest entry, ``M^{-1}`` by Sherman-Morrison), so the same bits."""
    m = np.max(np.abs(A), axis=1)
    m = np.where(m > 0.0, m, 1.0)[:, None]  # a zero teacher's row is never used
    B = A / m
    with np.errstate(over="ignore", invalid="ignore"):
        return m * theory.apply_m_inverse(B.sum(axis=1)[:, None] + (g[:, None] - 1.0) * B)


def prescribed_warmup_steps(
    *, phi0: np.ndarray, norm0: np.ndarray, a0: np.ndarray, a_star: np.ndarray, eta_a_warmup: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(T1, eta_w^I, guaranteed)`` per run from the bound in the module docstring.

    Vectorized over the runs: the row operations in NumPy, the saddle angle by the compiled Brent iteration of
    :func:`theory.saddle_angle` and the per-run scalar arithmetic compiled with :mod:`math` (:func:`_warmup_kernel`),
    each the same operations as the per-run definition, so the same bits.

    Parameters
    ----------
    phi0, norm0 : numpy.ndarray
        Initial angle and ``||w~_0||`` per run, ``(R,)``.
    a0 : numpy.ndarray
        Initial second layers ``(R, k)``.
    a_star : numpy.ndarray
        Teachers' second layers ``(R, k)``, or ``(1, k)`` shared by all runs.
    eta_a_warmup : float, optional
        Stage I's ``eta_a`` (default: :func:`optimal_eta_a`); it must contract ``a``.

    Returns
    -------
    tuple of numpy.ndarray
        ``T1`` (int64), ``eta_w^I`` (float64), ``guaranteed`` (bool), each ``(R,)``.
    """
    R, k = a0.shape
    pm1 = theory.m_eigenvalues(k)[1]  # pi - 1: M's eigenvalue orthogonal to 1, so ||M^{-1}|| = 1 / (pi - 1)
    eta_a = optimal_eta_a(k) if eta_a_warmup is None else eta_a_warmup
    r_a = _a_contraction(eta_a, k)
    if not r_a < 1.0:
        raise ValueError(f"eta_a_warmup = {eta_a} does not contract a (needs 0 < eta_a < {theory.max_stable_eta_a(k)})")
    teachers = np.ascontiguousarray(a_star, dtype=np.float64)
    rows = np.arange(R) if teachers.shape[0] > 1 else np.zeros(R, dtype=np.intp)
    nst = np.sqrt(_rowdot(teachers, teachers))[rows]
    phi_s = closed_forms.saddle_angles_brent(teachers, missing=math.pi)[rows]
    abs_sum = np.abs(teachers.sum(axis=1))[rows]
    A = teachers[rows]
    phi0 = np.asarray(phi0, dtype=np.float64)
    norm0 = np.asarray(norm0, dtype=np.float64)
    a_opt0 = _optimal_a_rows(closed_forms.arc_cosine_rows(phi0), A)
    d0 = a0 - a_opt0
    e0 = np.sqrt(_rowdot(d0, d0))
    used = nst != 0.0  # theory.optimal_a refuses a non-finite result (float64 overflow) where it is used
    below = used & (phi0 < phi_s)
    a_max = _optimal_a_rows(closed_forms.arc_cosine_rows(0.5 * (phi0 + phi_s)), A)
    if not (np.isfinite(a_opt0[used]).all() and np.isfinite(a_max[below]).all()):
        raise theory.validation.overflow_error("optimal_a")
    p_min = _rowdot(a_max, A)
    T1, ew, ok, bad = _warmup_kernel(phi0, phi_s, norm0, nst, e0, p_min, abs_sum,
                                     (pm1, r_a, math.sqrt(k), G_BOUND, 2.0))
    if bad.any():
        raise ValueError("prescribed warmup: the number of steps to contract a is not finite (inputs too large "
                         "or a degenerate teacher)")
    return T1, ew, ok


def prescribed_warmup_steps_gram(
    *, phi0: np.ndarray, norm0: np.ndarray, k: int, gram: tuple[np.ndarray, ...], eta_a_warmup: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`prescribed_warmup_steps` from the runs' order parameters, without vectors.

    Everything the bound takes of ``a0`` and ``a*`` is a function of the Gram entries of ``(a0, 1, a*)``:
    ``||a*|| = sqrt(Qs)``, ``|1.a*| = |Ss|``, the saddle angle (its ``g(phi_s) = ((k + pi - 1) Qs - pi Ss^2) /
    ((k + pi - 1) Qs - Ss^2)``, solved by the same compiled Brent iteration), ``P_min = a(phi_max).a*``
    (:func:`theory.optimal_alignment`) and ``e_0 = ||a0 - a(phi_0)||``, the Gram quadratic form of the coordinates
    ``(1, -alpha, -beta)`` of ``a0 - a(phi_0)`` on ``(a0, 1, a*)`` (``a(phi) = alpha 1 + beta a*``,
    :func:`theory.algebra.optimal_a_coefficients`).  The per-run arithmetic is the same kernel; the inputs agree
    with the vector form's to rounding (so ``eta_w^I`` to ~1e-15 relative and ``T1`` exactly, but where a step
    count lies within rounding of an integer).

    Parameters
    ----------
    phi0, norm0 : numpy.ndarray
        Initial angle and ``||w~_0||`` per run, ``(R,)``.
    k : int
        Number of patches.
    gram : tuple of numpy.ndarray
        ``(Q0, S0, P0, Ss, Qs)`` per run: ``a0.a0, 1.a0, a0.a*, 1.a*, a*.a*``, each ``(R,)``.
    eta_a_warmup : float, optional
        Stage I's ``eta_a`` (default: :func:`optimal_eta_a`); it must contract ``a``.

    Returns
    -------
    tuple of numpy.ndarray
        ``T1`` (int64), ``eta_w^I`` (float64), ``guaranteed`` (bool), each ``(R,)``.
    """
    Q0, S0, P0, Ss, Qs = (np.asarray(x, dtype=np.float64) for x in gram)
    pm1 = theory.m_eigenvalues(k)[1]
    eta_a = optimal_eta_a(k) if eta_a_warmup is None else eta_a_warmup
    r_a = _a_contraction(eta_a, k)
    if not r_a < 1.0:
        raise ValueError(f"eta_a_warmup = {eta_a} does not contract a (needs 0 < eta_a < {theory.max_stable_eta_a(k)})")
    phi0 = np.asarray(phi0, dtype=np.float64)
    norm0 = np.asarray(norm0, dtype=np.float64)
    nst = np.sqrt(Qs)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        margin = _tcf.spurious_margin(k, Ss, Qs)
        denom = (k + math.pi - 1.0) * Qs - Ss * Ss
        g_s = np.where((margin > 0.0) & (k > 1), np.minimum(margin / denom, 1.0), np.nan)
        phi_s = closed_forms._saddle_angles_brent(g_s, theory.fixed_points.SADDLE_XTOL,
                                                  theory.fixed_points.SADDLE_RTOL, math.pi)
        alpha, beta = theory.algebra.optimal_a_coefficients(closed_forms.arc_cosine_rows(phi0), k, Ss)
        e0 = np.sqrt(np.maximum(_tcf.gram_deviations(1.0, -alpha, -beta, Q0, S0, P0, k, Ss, Qs)[2], 0.0))
        p_min = theory.optimal_alignment(closed_forms.arc_cosine_rows(0.5 * (phi0 + phi_s)), k, Ss, Qs)
    used = nst != 0.0
    below = used & (phi0 < phi_s)
    if not (np.isfinite(e0[used]).all() and np.isfinite(p_min[below]).all()):
        raise theory.validation.overflow_error("optimal_a")
    T1, ew, ok, bad = _warmup_kernel(phi0, phi_s, norm0, nst, e0, p_min, np.abs(Ss),
                                     (pm1, r_a, math.sqrt(k), G_BOUND, 2.0))
    if bad.any():
        raise ValueError("prescribed warmup: the number of steps to contract a is not finite (inputs too large "
                         "or a degenerate teacher)")
    return T1, ew, ok


@njit(cache=True)
def _contract_steps(start, target, rate):
    """:func:`_steps_to_contract` compiled (-1: not a finite count)."""
    if start <= target:
        return 0
    if rate <= 0.0:
        return 1
    q = math.log(start / target) / math.log(1.0 / rate)
    if not (q > -1.0 and q < 2.0**62):  # also NaN (a negative target): math.log refuses it in Python
        return -1
    return int(math.ceil(q))


@njit(cache=True)
def _warmup_kernel(phi0, phi_s, norm0, nst, e0, p_min, abs_sum, consts):
    """The per-run arithmetic of :func:`prescribed_warmup_steps` in the order of the bound (module docstring).
    ``consts = (pi - 1, r_a, sqrt(k), G_BOUND, 2.0)``; the exponent 2.0 comes in at run time so that
    ``norm0 ** 2`` stays the C library's ``pow``, as NumPy's scalar power is."""
    pm1, r_a, sqrt_k, g_bound, two = consts
    R = phi0.shape[0]
    T1 = np.zeros(R, dtype=np.int64)
    ew = np.zeros(R)
    ok = np.zeros(R, dtype=np.bool_)
    bad = np.zeros(R, dtype=np.bool_)
    for r in range(R):
        if nst[r] == 0.0:
            ok[r] = True
            continue
        if phi0[r] >= phi_s[r]:
            t_plus = _contract_steps(2.0 * e0[r] * nst[r], 1.0, r_a)
            T1[r], bad[r] = 2 * t_plus + 10, t_plus < 0
            continue
        phi_max = 0.5 * (phi0[r] + phi_s[r])
        delta_cap = p_min[r] / 4.0 / nst[r] * pm1 * (1.0 - r_a) / (g_bound * nst[r])  # D ||a*|| <= P_min / 4
        A = abs_sum[r] * sqrt_k / pm1 + nst[r] + e0[r] + p_min[r] / (4.0 * nst[r])
        t_plus = _contract_steps(2.0 * e0[r] * nst[r], p_min[r], r_a)
        if t_plus > 0:
            cap = (phi_max - phi0[r]) / t_plus
            if cap < delta_cap:
                delta_cap = cap
        ew[r] = delta_cap * 2.0 * math.pi * norm0[r] ** two / (g_bound * nst[r] * A)
        T1[r], ok[r], bad[r] = 2 * t_plus + 10, True, t_plus < 0
    return T1, ew, ok, bad


def _steps_to_contract(start: float, target: float, rate: float) -> int:
    """Smallest ``t >= 0`` with ``start * rate^t <= target``."""
    if start <= target:
        return 0
    if rate <= 0.0:
        return 1
    return int(math.ceil(math.log(start / target) / math.log(1.0 / rate)))
