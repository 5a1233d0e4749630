"""The basin of every end state: where population gradient flow started from a run's final state goes.

A run that stops ``not_converged`` (SGD hovering near a fixed point, perturbed GD whose noise has not died out,
GD out of steps in its slow phase) still has a destination: the attractor of the population gradient flow started
from its final ``(w, a)`` with its teacher.  :func:`basins` computes it for the runs of a
:class:`sims.SimulationResult` and ``sims.simulate(..., basin="auto")`` stores it as ``result.basin``:

- ``global``, ``spurious``, ``saddle``: where the flow went: its loss fell below :func:`decisive_level` (then the
  side of the saddle angle decides, provably), it provably entered the spurious basin (``trapped``), it stopped at
  a stationary point (``grad_tol``), or it ended its time budget in one of the neighborhoods of
  :mod:`sims.runs.classify` (the run's tolerances);
- ``undecided``: the flow ended its time budget (:func:`default_time`: as much flow time as the run had steps,
  within ``[MIN_FLOW_TIME, FLOW_TIME]``) away from every fixed point, or its solver could not go on (a non-finite
  state: numerical trouble, the flow never increases the loss);
- ``diverged``: the run itself diverged; there is no end state to flow from.

**The flow** (:mod:`sims.engines.flow`) runs on the order parameters of the final state: the filter plane
``span{w~_final, w*}`` and the head basis ``(a_final, 1, a*)`` (:func:`sims.runs.order_runs.from_vectors` with
``w0, a0 :=`` the final state), so one run costs the same whatever ``k`` and ``p`` are.  A result without vectors
(``simulate(..., vectors=False)``) flows from its final coordinates ``(u, r1, x, y, z)`` in its own basis.  The
rates are the run's final step sizes (the last schedule segment's ``eta_w, eta_a``, read as rates per unit of
time): the flow that GD with those steps follows as the steps shrink.  The basin depends on their ratio, not on
their scale; a zero rate freezes its layer (the flow of a run whose last stage trains one layer only).  The stops
are the decisive level, the run's ``grad_tol`` (the default where a run set 0, which would never stop the flow),
the ``trapped`` stop (always on; weight-normalized models) and the time budget.

**What gets a basin.**  Every engine whose final state is a plain network: population GD (vector, reduced, flow),
SGD and fixed-sample GD, perturbed GD; an expansion's contracted ``(w, a)`` (the plain network's flow from the
contracted weights, not the factors' dynamics); the fading shortcut's deployed CNN (``result.w``, the filter with
the shortcut's weight at the stop removed); LaPerm's CNN.

**Where the flow is not needed** (``mode="auto"``): a run that stopped ``loss_tol`` has loss far below the saddle's
and the spurious point's, and the flow never increases the loss, so it converges to the global minimum; a run that
stopped ``trapped`` provably lies in the spurious basin; a diverged run has none.  Their basins are their outcomes
(the decisive level and ``trapped`` are the flow's own first checks, so flowing them gives the same: ``mode="flow"``
flows every run, and ``tests/test_basin.py`` checks that the two agree).  Of the other runs, those whose end
lies below the decisive level are decided by that same first check, applied in NumPy (:func:`decided_at_start`):
only the runs above it are flowed, so a sweep whose open runs all lie below the level never compiles the flow
engine (some 17 s cold).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import theory
from sims.engines import driver
from sims.engines import flow as flow_engine
from sims.runs import classify as _classify
from sims.runs import order_runs, warmup
from sims.runs.schedules import ResolvedSchedule
from theory import Model
from theory import closed_forms as tcf

#: The basins (same indices as :data:`sims.runs.classify.OUTCOMES`, ``undecided`` in place of ``not_converged``).
BASINS: tuple[str, ...] = ("global", "spurious", "saddle", "undecided", "diverged")
#: ``simulate(basin=...)``: flow the runs whose basin their stop leaves open, flow every run, or compute none.
MODES: tuple[str, ...] = ("auto", "flow", "none")
#: The flow's default time budget (units of ``1/eta``, as the run's steps) is the run's own step budget, at least
#: ``MIN_FLOW_TIME`` and at most ``FLOW_TIME`` (:func:`default_time`): as long again as the run had.  The cost of a
#: flow that does not decide grows with its budget (about 1.6 us per solver step, one step per 1-2 units of time at
#: liu2019's rates), and the flow of one run costs some 100 times a step of the lockstep GD engine: a budget tied to
#: the run's keeps the basins a bounded fraction of the run's cost where runs are far from done (``k = 10^6`` after
#: 1000 steps: the head's slow mode needs some 10^5 units of time).  Those costs are DP5's; from ``k = 962`` on the
#: flow is integrated by RODAS4 (:mod:`sims.engines.flow`), whose steps do not grow with the time the slow mode
#: needs (about 1,500 for a whole liu2019 run at any ``k``), so there a longer budget would cost little more.
MIN_FLOW_TIME = 1_000
FLOW_TIME = 100_000
#: The solver's tolerances (:class:`sims.Flow`'s defaults).
RTOL, ATOL = 1e-10, 1e-12


def max_solver_steps(time: float) -> int:
    """The cap on the solver's steps of one flow with time budget ``time``: ``4 time + 10,000`` (the solver takes
    0.5-1 steps per unit of time at liu2019's rates and at ``k = 10^6``); a flow that crawls (the unnormalized CNN's
    filter near ``w = 0``, where the field is singular: steps of ``1e-11``) stops there, ``undecided``, after at
    most some 0.1-0.7 s."""
    return int(4 * time) + 10_000


def default_time(steps: Any) -> float:
    """The default time budget of the flow from a run's end: its step budget, within ``[MIN_FLOW_TIME,
    FLOW_TIME]``."""
    return float(min(max(float(steps), MIN_FLOW_TIME), FLOW_TIME))


def check_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`MODES`, else ``ValueError`` naming ``basin``."""
    if not (isinstance(mode, str) and mode in MODES):
        raise ValueError(f"basin must be one of {MODES}; got {mode!r}")
    return mode


def reduced_loss(phi: np.ndarray, k: int, Ss: np.ndarray, Qs: np.ndarray) -> np.ndarray:
    """``R(phi) = L(phi, a(phi))``, the loss at angle ``phi`` with the loss-optimal head ``a(phi) = alpha 1 + beta
    a*`` (:func:`theory.algebra.optimal_a_coefficients`), from the teacher's sums ``Ss = 1.a*``, ``Qs = ||a*||^2``
    (:func:`theory.reduced_loss` without the vector ``a*``)."""
    c, s = np.cos(phi), np.sin(phi)
    alpha, beta = theory.algebra.optimal_a_coefficients(tcf.arc_cosine(phi, c, s), k, Ss)
    S = alpha * k + beta * Ss
    Q = alpha * alpha * k + 2.0 * alpha * beta * Ss + beta * beta * Qs
    P = alpha * Ss + beta * Qs
    return tcf.loss(1.0, phi, c, s, S, Q, P, Ss, Qs)


def decisive_level(k: int, Ss: np.ndarray, Qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(level, phi_s)``: per teacher, a loss level (relative to ``L_ref``; NaN where ``L_ref = 0``) below which
    the basin is decided by the angle, and the saddle angle (``-1``: no spurious point).  Below the level, gradient
    flow provably converges to the global minimum if ``phi < phi_s`` (or there is no saddle) and to the spurious
    minimum if ``phi > phi_s``.

    The stationary points are the global minimum (``phi = 0``, ``b = a*``; ``b = rho a``), ``(pi, a(pi))`` and the
    saddle ``(phi_s, a(phi_s))``: the filter's gradient vanishes only where ``phi`` is 0 or ``pi`` or ``a.a* = 0``,
    the head's only at ``a(phi)``.  Along ``R(phi) = L(phi, a(phi))`` (:func:`reduced_loss`), ``dR/dphi`` has the
    sign of ``a(phi).a*``: with a spurious point it is positive below ``phi_s`` and negative above, so ``R`` peaks
    at the saddle, ``L_s = R(phi_s) > R(pi)``; without one it is positive throughout and ``(pi, a(pi))`` is the
    saddle, the only non-global stationary point.  The level is ``(R(pi) + L_s) / 2`` with a spurious point, and
    ``R(pi) (1 - 1e-6)`` without.  No state on ``phi = phi_s`` has a loss below ``L_s`` (``R(phi_s)`` is the least
    loss there), the flow never increases the loss, and it stays bounded (weight-normalized: ``||w~||`` is
    conserved and the loss is coercive in ``a``; unnormalized: ``||w||^2 - ||a||^2`` is conserved and ``||w|| a``
    bounded): from a loss below the level it stays on its side of ``phi_s`` and converges to a stationary point
    there with a loss below ``L_s``, which is the global minimum below ``phi_s`` and the spurious minimum above.
    """
    phi_s = _classify.saddle_angles_gram(k, Ss, Qs)
    lref = tcf.loss_ref(Ss, Qs)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = reduced_loss(np.full(np.shape(Ss), math.pi), k, Ss, Qs) / lref
        top = reduced_loss(np.where(phi_s >= 0, phi_s, math.pi), k, Ss, Qs) / lref
        level = np.where(phi_s >= 0, 0.5 * (low + top), low * (1.0 - 1e-6))
    return np.where(lref > 0, level, np.nan), phi_s


#: The relative margin of :func:`decided_at_start`'s NumPy check: a run whose loss lies within it of the decisive
#: level is left to the flow.  NumPy's ``arctan2`` may differ from the compiled one in the last bit, and the loss
#: inherits that (its deviation form has no cancellation that magnifies it: ~1e-16 relative), so ``1e-9`` leaves
#: more than six orders of magnitude of room.
LEVEL_MARGIN = 1e-9


def start_observation(start: np.ndarray, consts: np.ndarray, k: int,
                      normalized: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(L, phi, P, g2)`` at the flow's initial states: the loss, the angle, ``b.a*`` and ``||grad L||^2``, as the
    flow engine observes them (:func:`sims.engines.flow._observe`, the same generated closed forms in the same
    order, vectorized over runs in NumPy: no compiled code)."""
    u, r1, x, yy, z = start[:, 0], start[:, 1], start[:, 3], start[:, 4], start[:, 5]
    Q0, S0, P0, Ss, Qs = (consts[:, j] for j in range(5))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rr = r1 * r1
        n = np.sqrt(u * u + rr)
        r = np.abs(r1)
        inv_n = 1.0 / n
        c, s = u * inv_n, r * inv_n
        omc = np.where(u > 0.0, rr / (n * (n + u)), 1.0 - c)
        phi = np.arctan2(r, u)
        rho = np.ones_like(u) if normalized else n
        Da_s, Da_p, Da_q = tcf.gram_deviations(x, yy, z, Q0, S0, P0, k, Ss, Qs)
        Ds, Dp, Dq = tcf.scaled_deviations(rho, Da_s, Da_p, Da_q, Ss, Qs)
        L = tcf.deviation_loss(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
        L_rho, L_c, L_S, L_Q, L_Pa = tcf.deviation_gradient(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
        if normalized:
            L_rho = np.zeros_like(u)
        ga2 = np.maximum(tcf.gram_deviations(2.0 * L_Q * x, 2.0 * L_Q * yy + L_S, 2.0 * L_Q * z + L_Pa,
                                             Q0, S0, P0, k, Ss, Qs)[2], 0.0)
        gw = L_c * s * inv_n
        g2 = gw * gw + L_rho * L_rho + ga2
    return L, phi, Qs + Da_p, g2


def decided_at_start(start: np.ndarray, consts: np.ndarray, *, k: int, normalized: bool,
                     tolerances: Any) -> np.ndarray:
    """The basin codes the flow's first check decides, without the flow: ``-1`` where the flow is needed.

    The flow's first stop check, at its initial state, is the decisive level (:func:`flow_outcomes`): a finite
    state whose loss is at most ``level L_ref`` (and not above ``divergence L_ref``) stops there, ``global`` if
    ``phi <= phi_s`` (or there is no saddle) and ``spurious`` above.  This applies the same check in NumPy
    (:func:`start_observation`), so that runs whose end lies below the level never compile or run the flow engine;
    a run within :data:`LEVEL_MARGIN` of the level or of the saddle angle, with a zero teacher (no level), or whose
    observation is not finite is left to the flow (``-1``).  Same arguments as :func:`flow_outcomes`; for the runs
    it decides it returns what :func:`flow_outcomes` returns (``tests/test_basin.py``).
    """
    Ss, Qs = consts[:, 3], consts[:, 4]
    level, phi_s = decisive_level(k, Ss, Qs)
    lref = tcf.loss_ref(Ss, Qs)
    L, phi, P, g2 = start_observation(start, consts, k, normalized)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(L) & np.isfinite(phi) & np.isfinite(P) & np.isfinite(g2)
        below = (finite & (lref > 0) & np.isfinite(level) & (L <= level * lref * (1.0 - LEVEL_MARGIN))
                 & ~(L > tolerances.divergence * lref))
        clear = (phi_s < 0) | (np.abs(phi - phi_s) > LEVEL_MARGIN * (1.0 + np.abs(phi_s)))
    code = np.where((phi_s >= 0) & (phi > phi_s), _classify.SPURIOUS, _classify.GLOBAL)
    return np.where(below & clear, code, -1).astype(np.int8)


def flow_outcomes(start: np.ndarray, consts: np.ndarray, *, k: int, normalized: bool, rates: tuple[Any, Any],
                  tolerances: Any, time: float = FLOW_TIME, threads: int | None = None) -> np.ndarray:
    """The basin codes (indices into :data:`BASINS`) of population gradient flow from given states.

    The flow stops when its loss falls below :func:`decisive_level` (then the angle decides: ``global`` below
    ``phi_s``, ``spurious`` above), when ``trapped`` (``spurious``), at ``grad_tol``, or at the time budget (then
    its end is classified by :func:`sims.runs.classify.classify_gram` with the run's tolerances).

    Parameters
    ----------
    start : numpy.ndarray
        ``(R, 6)``, the coordinates ``(u, r1, r2, x, y, z)`` of :mod:`sims.engines.reduced` (``r2`` must be 0).
    consts : numpy.ndarray
        ``(R, 8)``, the Gram entries ``Q0, S0, P0, Ss, Qs`` of the head basis (then three unused columns).
    k : int
        Number of patches.
    normalized : bool
        Whether the model is weight-normalized (the ResNet and the CNN; False: the unnormalized CNN).
    rates : tuple of float or numpy.ndarray
        ``(eta_w, eta_a)``, shared or per run, finite and ``>= 0``.
    tolerances : sims.Tolerances
        ``grad_tol`` (0 replaced by the default ``1e-10``), ``loss_tol`` (the classification at the time budget,
        and the stop where there is no decisive level: a zero teacher) and ``divergence``; the ``trapped`` stop is
        always on.
    time : float, default FLOW_TIME
        The flow's time budget, ``> 0``.
    threads : int, optional
        Threads (the result does not depend on it).

    Returns
    -------
    numpy.ndarray
        int8 codes, one per run (a flow that cannot go on counts as ``undecided``).

    Raises
    ------
    ValueError
        For a time budget that is not a finite number > 0 or rates that are not finite and >= 0.
    """
    from sims.runs.simulate import Tolerances

    R = start.shape[0]
    if not (isinstance(time, (int, float, np.integer, np.floating)) and math.isfinite(time) and time > 0):
        raise ValueError(f"time must be a finite number > 0; got {time!r}")
    ew = np.broadcast_to(np.asarray(rates[0], dtype=np.float64), (R,))
    ea = np.broadcast_to(np.asarray(rates[1], dtype=np.float64), (R,))
    if not (np.all(np.isfinite(ew)) and np.all(np.isfinite(ea)) and np.all(ew >= 0) and np.all(ea >= 0)):
        raise ValueError("rates (eta_w, eta_a) must be finite and >= 0")
    Ss, Qs = consts[:, 3], consts[:, 4]
    level, phi_s = decisive_level(k, Ss, Qs)
    level = np.where(np.isnan(level), tolerances.loss_tol, level)
    tol = Tolerances(loss_tol=tolerances.loss_tol, grad_tol=tolerances.grad_tol or 1e-10,
                     divergence=tolerances.divergence, stop_trapped=True)
    budget = int(math.ceil(time))
    eng = flow_engine.engine(np.ascontiguousarray(start, dtype=np.float64),
                             np.ascontiguousarray(consts, dtype=np.float64), k, normalized, RTOL, ATOL, level,
                             max_solver_steps(budget))
    out = flow_engine.make_outputs(R, 1)
    # Copies (writeable whatever R): for one run, ascontiguousarray kept the read-only broadcast view, a numba type
    # of its own, so one flowed run compiled the flow engine a second time (~17 s) beside the usual signature.
    sched = ResolvedSchedule(np.full((R, 1), budget, dtype=np.int64), np.array(ew[:, None], order="C"),
                             np.array(ea[:, None], order="C"), np.zeros(1), np.zeros(1), 1.0)
    none = np.empty((R, 0))
    prob = driver.make_problem(none, none, phi_s, sched, np.zeros((R, 4), dtype=np.uint64),
                               np.zeros(1, dtype=np.int64), tol.rate_window)
    warmup.ready("flow")  # a child may be compiling the flow engine: wait for it, then load it from the cache
    driver.run_batch(flow_engine.run_range, flow_engine.workspace, eng, prob, driver.make_stops(tol, budget, True),
                     out, R, threads)
    final = eng.out
    lref = tcf.loss_ref(Ss, Qs)
    lref = np.where(lref > 0, lref, 1.0)
    scale = np.ones(R) if normalized else np.sqrt(final[:, 0] ** 2 + final[:, 1] ** 2 + final[:, 2] ** 2)
    code = _classify.classify_gram(final_loss=out.final[:, 0], final_phi=out.final[:, 1],
                                   head=tuple(final[:, 3:6].T), gram=tuple(consts[:, :5].T), k=k, scale=scale,
                                   stop_reason=out.stop_reason, loss_ref=lref, loss_tol=tol.loss_tol, phi_s=phi_s)
    below = out.stop_reason == driver.STOP_LOSS
    above_saddle = (phi_s >= 0) & (out.final[:, 1] > phi_s)
    code = np.where(below, np.where(above_saddle, _classify.SPURIOUS, _classify.GLOBAL), code)
    return np.where(code == _classify.DIVERGED, _classify.NOT_CONVERGED, code).astype(np.int8)


def final_coordinates(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(start, consts)`` of the flow from each run's final state (:func:`flow_outcomes`' inputs): from the order
    parameters of the final vectors (``w~_final``, ``a_final``: the head basis ``(a_final, 1, a*)``), or, for a
    result without vectors, its final coordinates in its own basis."""
    order = result.order
    if order is not None:
        R = len(result)
        start = np.zeros((R, 6))
        for j, name in zip((0, 1, 3, 4, 5), order_runs.FINAL_FIELDS, strict=True):
            start[:, j] = order[name]
        start[:, 1] = np.abs(start[:, 1])
        consts = np.zeros((R, 8))
        for j, name in enumerate(("Q0", "S0", "P0", "Ss", "Qs")):
            consts[:, j] = order[name]
        return start, consts
    result.require_vectors("the basin of a result")
    model = Model.of(result.settings["model"])
    WT = result.w
    if model.shortcut:
        WT = WT + np.asarray(result.settings["shortcut"], dtype=np.float64)[None, :]
    op = order_runs.from_vectors(WT, result.w_star, result.a, result.a_star, np.zeros(WT.shape[1]))
    return order_runs.engine_inputs(op)


def final_rates(settings: dict[str, Any]) -> tuple[float, float]:
    """``(eta_w, eta_a)`` of the last schedule segment in a result's ``settings``."""
    last = settings["schedule"]["segments"][-1]
    return float(last["eta_w"]), float(last["eta_a"])


def _tolerances(settings: dict[str, Any]) -> Any:
    """The :class:`sims.Tolerances` recorded in a result's ``settings`` (the defaults where none are)."""
    from sims.runs.simulate import Tolerances

    tol = settings.get("tolerances")
    if tol is None:
        return Tolerances()
    fields = {key: val for key, val in tol.items() if key != "type"}
    return Tolerances(**dict(fields, rate_window=tuple(fields["rate_window"])))


def basins(result: Any, mode: str = "flow", *, time: float | None = None, threads: int | None = None) -> np.ndarray:
    """Each run's basin (:data:`BASINS`, a str array): where population gradient flow from its final state goes.

    Parameters
    ----------
    result : sims.SimulationResult
        Any result of :func:`sims.simulate` (with or without vectors).
    mode : {"flow", "auto"}, default "flow"
        ``"flow"``: flow every run that did not diverge; ``"auto"``: only the runs whose stop leaves the basin
        open (not ``loss_tol``, ``trapped`` or ``diverged``; module docstring) and whose end lies above the
        decisive level (:func:`decided_at_start`).
    time : float, optional
        The flow's time budget (default :func:`default_time` of the run's step budget).
    threads : int, optional
        Threads of the flow (the result does not depend on it).

    Returns
    -------
    numpy.ndarray
        One of :data:`BASINS` per run.

    Raises
    ------
    ValueError
        For a mode other than "flow" or "auto", or a time budget that is not a finite number > 0.

    Examples
    --------
    >>> import sims
    >>> from sims.runs.attractor import basins
    >>> res = sims.simulate(k=4, p=4, runs=3, steps=12, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res.outcome.tolist(), basins(res).tolist()      # runs 0 and 2 were still on their way
    (['not_converged', 'spurious', 'not_converged'], ['global', 'spurious', 'global'])
    """
    if mode not in ("flow", "auto"):
        raise ValueError(f"mode must be 'flow' or 'auto'; got {mode!r}")
    out = np.full(len(result), _classify.NOT_CONVERGED, dtype=np.int8)  # the outcomes' codes, basins' indices
    for i, name in enumerate(_classify.OUTCOMES):
        out[result.outcome == name] = i
    todo = result.outcome != "diverged"
    if mode == "auto":
        todo &= ~np.isin(result.stop_reason, ("loss_tol", "trapped"))
    idx = np.flatnonzero(todo)
    if idx.size:
        start, consts = final_coordinates(result)
        k, normalized = int(result.settings["k"]), Model.of(result.settings["model"]).normalized
        tolerances = _tolerances(result.settings)
        if mode == "auto":  # the flow's first check in NumPy: the runs it decides need no flow (nor its compile)
            code = decided_at_start(start[idx], consts[idx], k=k, normalized=normalized, tolerances=tolerances)
            out[idx] = code
            idx = idx[code < 0]
    if idx.size:
        out[idx] = flow_outcomes(start[idx], consts[idx], k=k, normalized=normalized,
                                 rates=final_rates(result.settings), tolerances=tolerances,
                                 time=default_time(result.settings["steps"]) if time is None else time,
                                 threads=threads)
    return _classify.labels(BASINS, out)
