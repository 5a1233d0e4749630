"""Gradient flow on the order parameters: the continuous-time limit of population GD, integrated by a compiled
Dormand-Prince 5(4) with scipy's error control, with the stops located on its dense output.

**What is integrated.**  The flow with per-layer rates, time ``t`` in units of ``1/eta`` ("steps": ``t`` steps of
GD with small steps approximate flow time ``t``): ``dw/dt = -eta_w grad_w L``, ``da/dt = -eta_a grad_a L``, on
the coordinates of :mod:`sims.engines.reduced` (``w~ = u w* + r e``, ``a = x a0 + y 1 + (1 + z) a*``; without a
moving shortcut ``r2 = 0`` throughout, so the state is ``(u, r, x, y, z)``).  The vector field is the generated
``theory.closed_forms.flow_field`` (derived and proven in :mod:`theory.order_parameters`: the GD map the reduced
engine runs is exactly its Euler step).  With a schedule the rates are those of the schedule's segment at time
``t`` (piecewise constant): each segment is integrated separately, from its own initial step, and its end is a
breakpoint of the integration.

**Why a compiled Dormand-Prince and not ``scipy.integrate.solve_ivp``.**  Measured on liu2019-like problems
(``benchmarks/flow_throughput.py``, ``k = p = 16``, two-stage warmup, about 700 steps per run):
``solve_ivp(method="RK45")`` with a Python right-hand side integrates 26 runs per second (5 ms per hundred steps,
without event functions), this engine 2700-2900 runs per second on the 2-core machine, about 100x: 10^6 runs take
six minutes here and would take eleven hours with ``solve_ivp``.  The integrator here is scipy's RK45
transcribed: the same tableau (``C, A, B, E``) and quartic dense output (``P_DENSE``), the same error control (RMS
norm of ``err / (atol + rtol max(|y|, |y_new|))``, safety 0.9, step factors clamped to ``[0.2, 10]``, no growth
right after a rejection, the minimum step ``10 ulp(t)``) and the same initial step selection (Hairer, Norsett,
Wanner II.4); tests check that it takes ``solve_ivp``'s steps on the same problem.  Every evaluation of the field
calls one compiled copy of it (:func:`_eval_call`): inlined into DP5's stages (two more copies) it ran 2-3% faster
(CPU per call of 4,000 runs, ``k = p = 16``: 1.19-1.22 s against 1.22-1.26 s) and compiled about 4 s longer, and
constants are passed as ``int64`` so that no callee is compiled once per literal (a first flow call cold: 24 s ->
17 s wall, results bit-identical).  Runs are
independent and each is integrated by one thread (:func:`sims.engines.driver.run_batch`), so results are
bit-identical for every thread count and split of runs.
The code is compiled without fastmath (nothing reassociated or contracted).

**Stiffness: RODAS4 at large k.**  The head's flow is linear in ``(x, y, z)`` at a frozen filter, with rates
``eta_a lambda`` for the eigenvalues ``lambda_1 = (k + pi - 1) / (2 pi)`` (along ``1``) and ``lambda_perp = (pi - 1) /
(2 pi)`` of its Hessian: at Liu et al.'s ``eta_a = 0.9 (4 pi / (k + 2 pi - 2))`` about 1.8 and ``1.8 (pi - 1) / k``
per unit of time.  The run lasts ``O(k)`` units of time (the slow mode), and an explicit method's step is bounded by
its stability region on the fast one (``h <= 3.3 / 1.8``), so DP5 takes about ``1.3 k`` steps per run (measured:
385 at ``k = 16``, 1,590 at ``10^3``, 12,900 at ``10^4``; ``10^5`` took 23 s for 64 runs).  RODAS4 (Hairer and
Wanner's 6-stage Rosenbrock method of order 4 with an embedded order-3 estimate, L-stable and stiffly accurate) is
linearly implicit: each step solves with ``I / (h gamma) - J`` (the 5 x 5 Jacobian by forward differences, an LU
with partial pivoting), so its steps follow the slow dynamics whatever the fast rate: 1,500-1,630 per ResNet run
from ``k = 10^3`` to ``10^6``.  Measured (``benchmarks/flow_stiff.py``, one thread, CPU time per run, ``p = 16``,
liu2019-like constant rates, 400 ResNet and 400 CNN runs, the 2-core machine shared with other jobs): DP5 0.23-0.25
ms at ``k = 16``, 1.9-2.6 ms at ``10^3``, 26-36 ms at ``10^4`` (and ``O(k)`` on: seconds per run at ``10^6``);
RODAS4 1.3-1.5 ms at ``16``, 1.9-2.4 ms at ``10^3``, 2.2-2.5 ms at ``10^4``, 2.4-2.8 ms at ``10^6``.  A RODAS4
step costs 11 field evaluations (5 stages, the end, 5 for the Jacobian) against DP5's 6, and at small ``k`` at
``rtol = 1e-10`` its lower order takes three times DP5's steps, so DP5 stays below the crossover: ``method="auto"``
(:func:`select_method`) takes RODAS4 where the Hessian's stiffness ratio ``lambda_1 / lambda_perp`` reaches
:data:`STIFF_RATIO` (``k >= 962``; the measured break-even is near ``k = 1000``).  The choice depends on ``k``
alone, so one call uses one method, recorded in the result's ``settings["flow"]["method"]``.  Same control as DP5
(RMS norm over ``atol + rtol max(|y|, |y_new|)``, safety 0.9, factors in ``[0.2, 10]``, no growth after a
rejection, exponent ``-1/4`` of the order-3 estimate), the same initial step, stops and events; its dense output
is the cubic Hermite interpolant of the step's ends and fields (O(h^4), like the method).  On the liu2019 teachers
the two methods give the same outcome on 20,000 of 20,000 runs at ``k = 16`` and 4,000 of 4,000 at ``k = 1000``,
and the same ``loss_tol`` stop times to ``8e-9`` relative; at ``k = 10^6`` RODAS4 follows the exact frozen-filter
head flow (a matrix exponential) to ``1e-11`` (``tests/test_flow_stiff.py``).  Why not an exponential integrator or
a change of variables: the stiff mode's rate depends on ``rho = ||w~||`` for the unnormalized CNN and couples to the
filter through ``Dp``; a Rosenbrock method needs no structure beyond the small dense Jacobian, and was the simplest to
make accurate to the tolerance.

**Stops and events** (the finite-step engines' rules, :func:`sims.engines.driver._stop_reason`, on the flow): at
the start of every segment the stop rules are checked at the current state; after every accepted step the
conditions are evaluated at its end, and a stop whose condition holds there is located on the dense output
(modified regula falsi, the Illinois variant, to ``1e-13`` of the step), the earliest one stops the run at the
located time, ties going in the driver's order:

- ``loss_tol``: ``L <= loss_tol L_ref``;  ``grad_tol``: ``||grad||^2 <= grad_tol^2 L_ref`` (the gradient of the
  loss, not the field: the same level as GD's);
- ``trapped`` (weight-normalized models, the last segment, a teacher with a spurious minimum): ``2 pi ||grad_a||
  ||a*|| / (pi - 1) < -a(phi).a*``, which implies ``phi > phi_s`` and ``a.a* < 0``: the located time is the
  bracket's end at which the inequality holds, so the reported state provably lies in the spurious basin;
- ``max_steps``: the flow time reaches ``steps``;
- ``diverged``: a non-finite state or field, a loss above ``divergence L_ref``, or a step below the minimum step
  (the solver cannot go on: scipy's "required step size is less than spacing between numbers"): the run stops
  at its last finite state.  The flow never increases the loss, so this flags numerical trouble only.

The events of the result are located the same way: ``slow_end`` (first time ``a.a* > 0``), ``steps_tol`` (first
time ``L <= eps L_ref``), the rate levels (the last downward crossing of each loss level: the flow's loss
decreases, so its only one), and the trajectory at the requested times (the dense output evaluated there).  Event
conditions are tested at step ends, as ``solve_ivp`` tests sign changes: a condition that holds only strictly
inside one step is not seen (steps are a fraction of the slowest mode's time scale, so this needs a gradient norm
that dips below ``grad_tol`` and rises again within one step).

The result's times are floats: ``stop_step`` (the flow time at the stop), ``slow_end`` and ``steps_tol`` (``-1``:
never); ``nsteps``/``nfev`` count the accepted steps and the field evaluations of each run.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from sims.engines import driver
from sims.engines.common import unshared_empty
from theory import closed_forms as _tcf

_gram = njit(inline="always")(_tcf.gram_deviations)
_scaled = njit(inline="always")(_tcf.scaled_deviations)
_loss = njit(inline="always")(_tcf.deviation_loss)
_gradient = njit(inline="always")(_tcf.deviation_gradient)
_field = njit(inline="always")(_tcf.flow_field)
_arc_cosine = njit(inline="always")(_tcf.arc_cosine)
_optimal_alignment = njit(inline="always")(_tcf.optimal_alignment)
_loss_ref = njit(inline="always")(_tcf.loss_ref)
_M_PERP = _tcf.m_eigenvalues(1)[1]
#: The compiled helpers: no fastmath (the integration follows scipy's arithmetic), numpy's division semantics.
_jit = njit(error_model="numpy")
#: ``np.int64``: a constant argument passed through it is typed ``int64``, not ``Literal[int]``, so a callee is compiled
#: once, not once per constant (``_locate`` was compiled five times, ``_eval_call`` three; about 4 s of cold compile).
_I64 = np.int64

#: Size of the integrated state ``(u, r, x, y, z)``.
NY = 5
#: Columns of :attr:`FlowGD.start` and :attr:`FlowGD.out` (those of the reduced engine; ``r2`` stays 0).
STATE_FIELDS: tuple[str, ...] = ("u", "r1", "r2", "x", "y", "z")
_IDX = (0, 1, 3, 4, 5)  # state column of each integrated coordinate

# scipy.integrate.RK45's Dormand-Prince tableau and dense output (scipy/integrate/_ivp/rk.py).
C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0])
A = np.array([
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [1 / 5, 0.0, 0.0, 0.0, 0.0],
    [3 / 40, 9 / 40, 0.0, 0.0, 0.0],
    [44 / 45, -56 / 15, 32 / 9, 0.0, 0.0],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
])
B = np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84])
E = np.array([-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40])
P_DENSE = np.array([
    [1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
    [0.0, 0.0, 0.0, 0.0],
    [0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
    [0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
    [0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
    [0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
    [0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
])
SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
#: ``-1 / (error estimator order + 1)``.
ERROR_EXPONENT = -1.0 / 5.0
#: Event location: relative width (in units of the step) at which the bracket is accepted, and iteration cap.
LOCATE_TOL = 1e-13
LOCATE_ITERS = 100

# Event codes (an event function g is "triggered" where g <= 0, the trapped one where g < 0).
EV_LOSS, EV_GRAD, EV_TRAP, EV_EPS, EV_SLOW, EV_LEVEL = range(6)

#: Integrators: scipy's explicit Dormand-Prince 5(4), and Hairer and Wanner's RODAS4, a linearly implicit
#: (Rosenbrock) L-stable method of order 4(3) for the stiff flow at large ``k``.
METHOD_DP5, METHOD_RODAS4 = 0, 1
METHODS: tuple[str, ...] = ("dp5", "rodas4")
#: ``method="auto"`` integrates with RODAS4 where the head's Hessian ``M / (2 pi)`` has a stiffness ratio
#: ``lambda_1 / lambda_perp = (k + pi - 1) / (pi - 1)`` of at least this (``k >= 962``), with DP5 below
#: (module docstring: the measured crossover).
STIFF_RATIO = 450.0

# RODAS4 (Hairer and Wanner, Solving ODEs II, section IV.7, the coefficients of their code rodas.f) in the form
# (I / (h gamma) - J) U_i = f(y + sum_j RA[i, j] U_j) + sum_j RC[i, j] U_j / h,  y_new = y + sum_i RM[i] U_i,
# with the error estimate U_6 (the method is stiffly accurate: y_new is the last stage's state plus U_6).
R_GAMMA = 0.25
_RA_LOW = (1.544, 0.9466785280815826, 0.2557011698983284, 3.314825187068521, 2.896124015972201,
           0.9986419139977817, 1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895,
           1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1.0)
_RC_LOW = (-5.6688, -2.430093356833875, -0.2063599157091915, -0.1073529058151375, -9.594562251023355,
           -20.47028614809616, 7.496443313967647, -10.24680431464352, -33.99990352819905, 11.7089089320616,
           8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054)


def _lower(values: tuple[float, ...]) -> np.ndarray:
    """The strictly lower triangular 6 x 6 matrix with ``values`` row by row."""
    out = np.zeros((6, 6))
    out[np.tril_indices(6, -1)] = values
    return out


RA = _lower(_RA_LOW)
RC = _lower(_RC_LOW)
RM = np.array([RA[5, 0], RA[5, 1], RA[5, 2], RA[5, 3], 1.0, 1.0])
#: ``-1 / (embedded order + 1)`` of RODAS4's error estimate.
R_ERROR_EXPONENT = -1.0 / 4.0
#: Relative (and, below ``|y_j| = 1``, absolute) increment of the forward differences of the Jacobian.
JAC_DELTA = 1.4901161193847656e-08


class FlowGD(NamedTuple):
    """Gradient flow on the order parameters of ``R`` runs: ``start``/``out`` the coordinates
    :data:`STATE_FIELDS`, ``consts`` those of :class:`sims.engines.reduced.ReducedGD` (``Q0, S0, P0, Ss, Qs`` and
    the unused shortcut coordinates), the solver's tolerances, and per run the accepted steps and field
    evaluations.  ``loss_level``: per-run ``loss_tol`` (relative to ``L_ref``) in place of the stops' shared one,
    or empty (``(0,)``: the shared one for every run).  ``max_nsteps``: a cap on each run's accepted steps (``<= 0``:
    none); a run that reaches it stops ``diverged`` at its last state, as where the solver cannot go on (e.g. the
    unnormalized CNN's filter passing near ``w = 0``, where the field is singular and the steps shrink to
    ``1e-11``)."""

    start: np.ndarray  # (R, 6)
    out: np.ndarray  # (R, 6)
    consts: np.ndarray  # (R, 8)
    k: int
    normalized: bool
    rtol: float
    atol: float
    nsteps: np.ndarray  # (R,) int64
    nfev: np.ndarray  # (R,) int64
    loss_level: np.ndarray  # (R,) or (0,)
    max_nsteps: int
    method: int  # METHOD_DP5 or METHOD_RODAS4


class FlowOutputs(NamedTuple):
    """The driver's :class:`sims.engines.driver.Outputs` with times in place of steps (floats, ``-1``: never)."""

    traj: np.ndarray  # (R, m, 4)
    final: np.ndarray  # (R, 4)
    stop_step: np.ndarray  # (R,) flow time at the stop
    stop_reason: np.ndarray  # (R,) int64
    slow_end: np.ndarray  # (R,) first time with a.a* > 0
    steps_tol: np.ndarray  # (R,) first time with loss <= eps L_ref
    rate_pts: np.ndarray  # (R, 6)


def select_method(method: str, k: int) -> int:
    """The integrator's code for ``method`` (``"dp5"``, ``"rodas4"`` or ``"auto"``: RODAS4 where the head's
    stiffness ratio ``(k + pi - 1) / (pi - 1)`` reaches :data:`STIFF_RATIO`, DP5 below)."""
    if method == "auto":
        return METHOD_RODAS4 if (k + math.pi - 1.0) / (math.pi - 1.0) >= STIFF_RATIO else METHOD_DP5
    if method not in METHODS:
        raise ValueError(f"flow.method must be one of {('auto',) + METHODS}; got {method!r}")
    return METHODS.index(method)


def engine(start: np.ndarray, consts: np.ndarray, k: int, normalized: bool, rtol: float,
           atol: float, loss_level: np.ndarray | None = None, max_nsteps: int = 0, method: str = "auto") -> FlowGD:
    """The record of ``R`` runs (outputs allocated); ``loss_level``: per-run ``loss_tol`` levels (relative to
    ``L_ref``; None: the stops' shared ``loss_tol``); ``max_nsteps``: a cap on each run's accepted steps (0:
    none); ``method``: the integrator (:func:`select_method`)."""
    R = start.shape[0]
    level = np.empty(0) if loss_level is None else np.ascontiguousarray(loss_level, dtype=np.float64)
    return FlowGD(np.ascontiguousarray(start), np.zeros_like(start), np.ascontiguousarray(consts), int(k),
                  bool(normalized), float(rtol), float(atol), np.zeros(R, np.int64), np.zeros(R, np.int64), level,
                  int(max_nsteps), select_method(method, int(k)))


def make_outputs(R: int, m: int) -> FlowOutputs:
    """Empty outputs for ``R`` runs and ``m`` record times."""
    return FlowOutputs(np.empty((R, m, 4)), np.empty((R, 4)), np.empty(R), np.empty(R, np.int64), np.empty(R),
                       np.empty(R), np.empty((R, 6)))


def workspace(eng: FlowGD, p: int, k: int) -> tuple[np.ndarray, ...]:
    """One thread's work arrays: the stages ``K`` (7 x 5), the states ``y, y_new, y_tmp`` (3 x 5), the dense
    output's coefficients ``Q`` (5 x 4), and RODAS4's: its stages ``U`` (6 x 5), the Jacobian and the LU factors
    of ``I / (h gamma) - J`` (2 x 5 x 5) and the pivots (5)."""
    return (unshared_empty(7 * NY).reshape(7, NY), unshared_empty(3 * NY).reshape(3, NY),
            unshared_empty(NY * 4).reshape(NY, 4), unshared_empty(6 * NY).reshape(6, NY),
            unshared_empty(2 * NY * NY).reshape(2, NY, NY), unshared_empty(NY, np.int64))


@njit(inline="always")
def _observe(y, consts, k, normalized):
    """At the state ``y = (u, r, x, y, z)``: ``(L, phi, c, s, P, ||grad||^2, ||grad_a||^2)`` and the partials
    ``(1/n, L_rho, L_c, L_S, L_Q, L_Pa)`` (``L_rho = 0`` for the weight-normalized models), as the reduced engine
    observes (deviation forms: losses far below ``1e-12 L_ref`` resolved)."""
    u, r1, x, yy, z = y[0], y[1], y[2], y[3], y[4]
    Q0, S0, P0, Ss, Qs = consts[0], consts[1], consts[2], consts[3], consts[4]
    rr = r1 * r1
    n = math.sqrt(u * u + rr)
    r = abs(r1)
    inv_n = 1.0 / n
    c = u * inv_n
    s = r * inv_n
    omc = rr / (n * (n + u)) if u > 0.0 else 1.0 - c
    phi = math.atan2(r, u)
    rho = 1.0 if normalized else n
    Da_s, Da_p, Da_q = _gram(x, yy, z, Q0, S0, P0, k, Ss, Qs)
    Ds, Dp, Dq = _scaled(rho, Da_s, Da_p, Da_q, Ss, Qs)
    L = _loss(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
    L_rho, L_c, L_S, L_Q, L_Pa = _gradient(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs)
    if normalized:
        L_rho = 0.0
    ga2 = max(_gram(2.0 * L_Q * x, 2.0 * L_Q * yy + L_S, 2.0 * L_Q * z + L_Pa, Q0, S0, P0, k, Ss, Qs)[2], 0.0)
    gw = L_c * s * inv_n
    g2 = gw * gw + L_rho * L_rho + ga2
    return (L, phi, c, s, Qs + Da_p, g2, ga2), (inv_n, L_rho, L_c, L_S, L_Q, L_Pa)


@njit(inline="always")
def _eval(y, consts, k, normalized, ew, ea, K, row):
    """The field at ``y`` with rates ``(ew, ea)`` into ``K[row]``; returns the observation."""
    obs, (inv_n, L_rho, L_c, L_S, L_Q, L_Pa) = _observe(y, consts, k, normalized)
    d = _field(y[0], y[1], 0.0, y[2], y[3], y[4], inv_n, L_rho, L_c, L_S, L_Q, L_Pa, ew, ea, 0.0, 0.0, 0.0, 0.0)
    K[row, 0] = d[0]
    K[row, 1] = d[1]
    K[row, 2] = d[3]
    K[row, 3] = d[4]
    K[row, 4] = d[5]
    return obs


@_jit
def _observation(y, consts, k, normalized):
    """:func:`_observe`'s observation alone, compiled as a function of its own: the calls off the stepping path
    (events, records, stops, failures) share one copy instead of inlining one each, which keeps the compile time
    down (the arithmetic is the same, so are the results, bit for bit)."""
    return _observe(y, consts, k, normalized)[0]


@_jit
def _eval_call(y, consts, k, normalized, ew, ea, K, row):
    """:func:`_eval` as a function of its own: every evaluation of the field (DP5's and RODAS4's stages, a
    segment's start, the initial step, the Jacobian) calls this one compiled copy (module docstring: inlining the
    stages saved 2-3% of run time and cost about 4 s of compile time)."""
    return _eval(y, consts, k, normalized, ew, ea, K, row)


@njit(inline="always")
def _rms(v0, v1, v2, v3, v4):
    return math.sqrt((v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3 + v4 * v4) / NY)


@_jit
def _initial_step(y, f0, consts, k, normalized, ew, ea, rtol, atol, interval, K, ytmp):
    """scipy's ``select_initial_step`` (order 4; uses ``K[6]`` as scratch): ``(h, evaluations)``."""
    if interval == 0.0:
        return 0.0, 0
    d0 = 0.0
    d1 = 0.0
    for i in range(NY):
        sc = atol + abs(y[i]) * rtol
        d0 += (y[i] / sc) ** 2
        d1 += (f0[i] / sc) ** 2
    d0 = math.sqrt(d0 / NY)
    d1 = math.sqrt(d1 / NY)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, interval)
    for i in range(NY):
        ytmp[i] = y[i] + h0 * f0[i]
    _eval_call(ytmp, consts, k, normalized, ew, ea, K, _I64(6))
    d2 = 0.0
    for i in range(NY):
        sc = atol + abs(y[i]) * rtol
        d2 += ((K[6, i] - f0[i]) / sc) ** 2
    d2 = math.sqrt(d2 / NY) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** 0.2
    return min(100.0 * h0, h1, interval), 1


@_jit
def _dense(y, Q, h, theta, out):
    """The dense output at ``t + theta h`` (scipy's ``RkDenseOutput``: ``y + h Q (theta, theta^2, theta^3,
    theta^4)``) into ``out``."""
    for i in range(NY):
        p = theta
        acc = 0.0
        for j in range(4):
            acc += Q[i, j] * p
            p *= theta
        out[i] = y[i] + h * acc


@_jit
def _event_value(code, level, y, consts, k, normalized, tf):
    """The event function ``code`` at the state ``y`` (triggered where <= 0, the trapped one where < 0)."""
    obs = _observation(y, consts, k, normalized)
    L, phi, c, s, P, g2, ga2 = obs
    if code == EV_LOSS or code == EV_EPS or code == EV_LEVEL:
        return L - level
    if code == EV_GRAD:
        return g2 - level
    if code == EV_SLOW:
        return -P
    Ss, Qs = consts[3], consts[4]
    opt = _optimal_alignment(_arc_cosine(phi, c, s), k, Ss, Qs)
    return tf * 2.0 * math.pi * math.sqrt(ga2) / _M_PERP * math.sqrt(Qs) + opt


@njit(inline="always")
def _triggered(code, g):
    return g < 0.0 if (code == EV_TRAP or code == EV_SLOW) else g <= 0.0


@_jit
def _locate(code, level, y, Q, h, hi, g_hi, consts, k, normalized, tf, tmp):
    """The first ``theta`` in ``(0, hi]`` where event ``code`` is triggered, given that it is not at 0 and is at
    ``hi`` (value ``g_hi``): modified regula falsi (Illinois) on the dense output; the returned end of the bracket
    is one where the event is triggered."""
    a = 0.0
    g_a = _event_value(code, level, y, consts, k, normalized, tf)
    b = hi
    g_b = g_hi
    side = 0
    for it in range(LOCATE_ITERS):
        if b - a <= LOCATE_TOL:
            break
        m = b - g_b * (b - a) / (g_b - g_a)
        if it >= 40 or not (a < m < b):  # slow or degenerate: bisect
            m = 0.5 * (a + b)
        _dense(y, Q, h, m, tmp)
        g_m = _event_value(code, level, tmp, consts, k, normalized, tf)
        if _triggered(code, g_m):
            b = m
            g_b = g_m
            if side == -1:
                g_a *= 0.5
            side = -1
        else:
            a = m
            g_a = g_m
            if side == 1:
                g_b *= 0.5
            side = 1
    return b


@_jit
def _stop_now(obs, finite, tol, trap_on, phs, tf, k, Ss, Qs):
    """The stop decision at one state apart from the step budget: a reason code, or -1."""
    L, phi, c, s, P, g2, ga2 = obs
    tol_loss, tol_grad2, tol_div = tol
    if not finite or L > tol_div:
        return driver.STOP_DIVERGED
    if L <= tol_loss:
        return driver.STOP_LOSS
    if g2 <= tol_grad2:
        return driver.STOP_GRAD
    if trap_on and phs >= 0.0 and phi > phs and P < 0.0:
        opt = _optimal_alignment(_arc_cosine(phi, c, s), k, Ss, Qs)
        if tf * 2.0 * math.pi * math.sqrt(ga2) / _M_PERP * math.sqrt(Qs) < -opt:
            return driver.STOP_TRAPPED
    return -1


@_jit
def _finite(obs):
    L, phi, c, s, P, g2, ga2 = obs
    return math.isfinite(L) and math.isfinite(phi) and math.isfinite(P) and math.isfinite(g2)


@_jit
def _record(out, r, rec, obs, y, consts, k):
    L, phi, c, s, P, g2, ga2 = obs
    out.traj[r, rec, 0] = L
    out.traj[r, rec, 1] = phi
    out.traj[r, rec, 2] = P
    out.traj[r, rec, 3] = math.sqrt(max(_gram(y[2], y[3], y[4], consts[0], consts[1], consts[2], k, consts[3],
                                              consts[4])[2], 0.0))


@njit(inline="always")
def _step_factor(err_norm, rejected, exponent):
    """scipy's step-size control, shared by DP5 and RODAS4 (``exponent``: ``-1 / (order of the estimate + 1)``):
    ``(accepted, factor)``, the step accepted when ``err_norm < 1`` and the factor of the next step size (no growth
    right after a rejection; a non-finite error shrinks the step as a large one does)."""
    if err_norm < 1.0:
        factor = MAX_FACTOR if err_norm == 0.0 else min(MAX_FACTOR, SAFETY * err_norm ** exponent)
        if rejected:
            factor = min(1.0, factor)
        return True, factor
    if not math.isfinite(err_norm):
        err_norm = 1e300
    return False, max(MIN_FACTOR, SAFETY * err_norm ** exponent)


@_jit
def _attempt(ws, ctx, rates, ctl, t, t_end, h_abs):
    """One accepted step from ``(t, y = Y[0])`` with scipy's RK45 control (module docstring): the stages into
    ``K``, the new state into ``Y[1]``; returns ``(ok, t_new, h, next h_abs, observation at t_new, evaluations)``,
    ``ok`` False when the step would fall below the minimum step."""
    K, Y = ws[0], ws[1]
    y, y_new, tmp = Y[0], Y[1], Y[2]
    consts, k, normalized, tf = ctx
    ew, ea = rates
    rtol, atol = ctl
    min_step = 10.0 * (np.nextafter(t, np.inf) - t)
    h_abs = max(h_abs, min_step)
    rejected = False
    nfev = 0
    while True:
        if h_abs < min_step:
            return False, t, 0.0, h_abs, _observation(y, consts, k, normalized), nfev
        t_new = min(t + h_abs, t_end)
        h = t_new - t
        h_abs = abs(h)
        for st in range(1, 6):
            for i in range(NY):
                acc = 0.0
                for j in range(st):
                    acc += A[st, j] * K[j, i]
                tmp[i] = y[i] + h * acc
            _eval_call(tmp, consts, k, normalized, ew, ea, K, st)
        for i in range(NY):
            acc = 0.0
            for j in range(6):
                acc += B[j] * K[j, i]
            y_new[i] = y[i] + h * acc
        obs_new = _eval_call(y_new, consts, k, normalized, ew, ea, K, _I64(6))
        nfev += 6
        err = 0.0
        for i in range(NY):
            acc = 0.0
            for j in range(7):
                acc += E[j] * K[j, i]
            sc = atol + max(abs(y[i]), abs(y_new[i])) * rtol
            err += (acc * h / sc) ** 2
        err_norm = math.sqrt(err / NY)
        accepted, factor = _step_factor(err_norm, rejected, ERROR_EXPONENT)
        if accepted:
            return True, t_new, h, h_abs * factor, obs_new, nfev
        h_abs *= factor
        rejected = True


@_jit
def _jacobian(y, consts, k, normalized, rates, K, J, tmp):
    """The field's Jacobian at ``y`` into ``J`` by forward differences from ``K[0] = f(y)`` (``K[6]`` scratch):
    increments :data:`JAC_DELTA` ``max(|y_j|, 1)``, so its relative error is about ``1e-8``, which moves RODAS4's
    result by far less than its error estimate (the method's order conditions hold to that accuracy)."""
    for j in range(NY):
        for i in range(NY):
            tmp[i] = y[i]
        d = JAC_DELTA * max(abs(y[j]), 1.0)
        tmp[j] = y[j] + d
        d = tmp[j] - y[j]  # the increment actually represented
        _eval_call(tmp, consts, k, normalized, rates[0], rates[1], K, _I64(6))
        for i in range(NY):
            J[i, j] = (K[6, i] - K[0, i]) / d


@_jit
def _lu(G, piv):
    """LU factorization with partial pivoting of the 5 x 5 ``G`` in place; False if it is singular."""
    for c in range(NY):
        p = c
        for i in range(c + 1, NY):
            if abs(G[i, c]) > abs(G[p, c]):
                p = i
        piv[c] = p
        if not G[p, c] != 0.0:  # zero or NaN
            return False
        if p != c:
            for j in range(NY):
                G[c, j], G[p, j] = G[p, j], G[c, j]
        for i in range(c + 1, NY):
            G[i, c] /= G[c, c]
            for j in range(c + 1, NY):
                G[i, j] -= G[i, c] * G[c, j]
    return True


@_jit
def _lu_solve(G, piv, b):
    """Solve ``G x = b`` in place in ``b`` from :func:`_lu`'s factors."""
    for c in range(NY):
        p = piv[c]
        if p != c:
            b[c], b[p] = b[p], b[c]
        for i in range(c + 1, NY):
            b[i] -= G[i, c] * b[c]
    for c in range(NY - 1, -1, -1):
        for j in range(c + 1, NY):
            b[c] -= G[c, j] * b[j]
        b[c] /= G[c, c]


@_jit
def _rodas_stages(ws, ctx, rates, h):
    """RODAS4's stages ``U`` of a step ``h`` from ``y = Y[0]`` (``K[0] = f(y)``, the Jacobian in ``JG[0]``; the
    stage fields into ``K[1..5]``) and the new state into ``Y[1]``; False if ``I / (h gamma) - J`` is singular."""
    K, Y, U, JG, piv = ws[0], ws[1], ws[3], ws[4], ws[5]
    y, y_new, tmp = Y[0], Y[1], Y[2]
    consts, k, normalized, tf = ctx
    G = JG[1]
    for i in range(NY):
        for j in range(NY):
            G[i, j] = -JG[0, i, j]
        G[i, i] += 1.0 / (h * R_GAMMA)
    if not _lu(G, piv):
        return False
    for st in range(6):
        if st > 0:
            for i in range(NY):
                acc = 0.0
                for j in range(st):
                    acc += RA[st, j] * U[j, i]
                tmp[i] = y[i] + acc
            _eval_call(tmp, consts, k, normalized, rates[0], rates[1], K, st)
        for i in range(NY):
            acc = 0.0
            for j in range(st):
                acc += RC[st, j] * U[j, i]
            U[st, i] = K[st, i] + acc / h
        _lu_solve(G, piv, U[st])
    for i in range(NY):
        acc = 0.0
        for j in range(6):
            acc += RM[j] * U[j, i]
        y_new[i] = y[i] + acc
    return True


@_jit
def _attempt_rodas(ws, ctx, rates, ctl, t, t_end, h_abs):
    """One accepted RODAS4 step from ``(t, y = Y[0])``, as :func:`_attempt` (its returns, its error control with
    the estimate ``U_6`` of order 3: exponent ``-1/4``), the Jacobian taken once at ``y``."""
    K, Y, U, JG = ws[0], ws[1], ws[3], ws[4]
    y, y_new = Y[0], Y[1]
    consts, k, normalized, tf = ctx
    rtol, atol = ctl
    min_step = 10.0 * (np.nextafter(t, np.inf) - t)
    h_abs = max(h_abs, min_step)
    rejected = False
    _jacobian(y, consts, k, normalized, rates, K, JG[0], Y[2])
    nfev = NY
    nan = math.nan
    obs_new = (nan, nan, nan, nan, nan, nan, nan)  # unused where the step fails (the caller observes y)
    while True:
        if h_abs < min_step:
            return False, t, 0.0, h_abs, obs_new, nfev
        t_new = min(t + h_abs, t_end)
        h = t_new - t
        h_abs = abs(h)
        err_norm = math.inf
        if _rodas_stages(ws, ctx, rates, h):
            obs_new = _eval_call(y_new, consts, k, normalized, rates[0], rates[1], K, _I64(6))
            nfev += 6
            err = 0.0
            for i in range(NY):
                sc = atol + max(abs(y[i]), abs(y_new[i])) * rtol
                err += (U[5, i] / sc) ** 2
            err_norm = math.sqrt(err / NY)
        # err_norm inf: a singular matrix or a non-finite stage, shrunk as after a large error
        accepted, factor = _step_factor(err_norm, rejected, R_ERROR_EXPONENT)
        if accepted:
            return True, t_new, h, h_abs * factor, obs_new, nfev
        h_abs *= factor
        rejected = True


@_jit
def _hermite_coefficients(K, Y, h, Q):
    """RODAS4's dense output: the cubic Hermite interpolant of ``(y, f(y))`` and ``(y_new, f(y_new))`` (``K[0]``,
    ``K[6]``) in :func:`_dense`'s form (``Q[:, 3] = 0``), accurate to O(h^4) like the method."""
    for i in range(NY):
        d = (Y[1, i] - Y[0, i]) / h
        Q[i, 0] = K[0, i]
        Q[i, 1] = 3.0 * d - 2.0 * K[0, i] - K[6, i]
        Q[i, 2] = K[0, i] + K[6, i] - 2.0 * d
        Q[i, 3] = 0.0


@_jit
def _dense_coefficients(K, Q):
    """``Q = K^T P_DENSE``: the dense output's coefficients of the step just taken."""
    for i in range(NY):
        for j in range(4):
            acc = 0.0
            for st in range(7):
                acc += K[st, i] * P_DENSE[st, j]
            Q[i, j] = acc


@_jit
def _step_stop(ws, ctx, h, obs_new, tol, trap):
    """The stop of the step just taken, if any: ``(code, theta)``, the earliest located one (ties in the driver's
    order), ``code`` -1 if none.  ``trap = (trapped test on, phi_s)``."""
    Y, Q = ws[1], ws[2]
    y, y_new, tmp = Y[0], Y[1], Y[2]
    consts, k, normalized, tf = ctx
    L1, phi1, c1, s1, P1, g21, ga21 = obs_new
    if L1 > tol[2]:
        return driver.STOP_DIVERGED, 1.0
    theta = 1.0
    code = -1
    for ev, level, g in ((EV_LOSS, tol[0], L1 - tol[0]), (EV_GRAD, tol[1], g21 - tol[1])):
        if _triggered(ev, g):
            th = _locate(ev, level, y, Q, h, 1.0, g, consts, k, normalized, tf, tmp)
            if code < 0 or th < theta:
                theta = th
                code = driver.STOP_LOSS if ev == EV_LOSS else driver.STOP_GRAD
    trap_on, phs = trap
    if trap_on and phs >= 0.0 and phi1 > phs and P1 < 0.0:
        g = _event_value(EV_TRAP, 0.0, y_new, consts, k, normalized, tf)
        if _triggered(EV_TRAP, g):
            th = _locate(_I64(EV_TRAP), 0.0, y, Q, h, 1.0, g, consts, k, normalized, tf, tmp)
            if code < 0 or th < theta:
                theta = th
                code = driver.STOP_TRAPPED
    return code, theta


@_jit
def _step_events(ws, ctx, t, h, theta, obs_end, levels, ev):
    """The events of the step just taken, up to ``theta`` (the stop, or 1): ``ev = (slow_end, steps_tol, pts,
    tol_eps)``; returns the updated ``(slow_end, steps_tol)`` (``pts`` is updated in place)."""
    Y, Q = ws[1], ws[2]
    y, tmp = Y[0], Y[2]
    consts, k, normalized, tf = ctx
    slow_end, steps_tol, pts, tol_eps = ev
    L1, phi1, c1, s1, P1, g21, ga21 = obs_end
    if slow_end < 0.0 and P1 > 0.0:
        slow_end = t + h * _locate(_I64(EV_SLOW), 0.0, y, Q, h, theta, -P1, consts, k, normalized, tf, tmp)
    if steps_tol < 0.0 and L1 <= tol_eps:
        steps_tol = t + h * _locate(_I64(EV_EPS), tol_eps, y, Q, h, theta, L1 - tol_eps, consts, k, normalized, tf, tmp)
    for lv in range(3):
        if L1 > levels[lv]:
            pts[2 * lv] = -1.0
        elif pts[2 * lv] < 0.0:
            th = _locate(_I64(EV_LEVEL), levels[lv], y, Q, h, theta, L1 - levels[lv], consts, k, normalized, tf, tmp)
            _dense(y, Q, h, th, tmp)
            pts[2 * lv] = t + h * th
            pts[2 * lv + 1] = _observation(tmp, consts, k, normalized)[0]
    return slow_end, steps_tol


@_jit
def _step_records(ws, ctx, t, h, theta, obs_end, prob, out, r, rec):
    """Record the trajectory at the record times in ``(t, t + theta h]`` (dense output); returns the next index."""
    Y, Q = ws[1], ws[2]
    y, y_new, tmp = Y[0], Y[1], Y[2]
    consts, k, normalized, tf = ctx
    t_hi = t + theta * h
    m = prob.record_steps.shape[0]
    while rec < m and prob.record_steps[rec] <= t_hi:
        th = (prob.record_steps[rec] - t) / h
        if th >= theta:
            obs_r = obs_end
            for i in range(NY):
                tmp[i] = y_new[i]
        else:
            _dense(y, Q, h, th, tmp)
            obs_r = _observation(tmp, consts, k, normalized)
        _record(out, r, rec, obs_r, tmp, consts, k)
        rec += 1
    return rec


@_jit
def _point_events(obs, t, levels, ev, finite):
    """The events at one state (a segment's start): ``ev = (slow_end, steps_tol, pts, tol_eps)`` as in
    :func:`_step_events`."""
    slow_end, steps_tol, pts, tol_eps = ev
    L, phi, c, s, P, g2, ga2 = obs
    if finite and P > 0.0 and slow_end < 0.0:
        slow_end = t
    if finite and L <= tol_eps and steps_tol < 0.0:
        steps_tol = t
    for lv in range(3):
        if L > levels[lv]:
            pts[2 * lv] = -1.0
        elif pts[2 * lv] < 0.0:
            pts[2 * lv] = t
            pts[2 * lv + 1] = L
    return slow_end, steps_tol


@_jit
def _segment(prob, sr, seg, t, T):
    """The segment of time ``t`` from ``seg`` on and its end (at most ``T``)."""
    nseg = prob.seg_end.shape[1]
    while seg < nseg - 1 and t >= prob.seg_end[sr, seg]:
        seg += 1
    return seg, (min(float(prob.seg_end[sr, seg]), T) if seg < nseg - 1 else T)


@_jit
def _thresholds(consts, prob, stops, loss_tol):
    """``(tol, tol_eps, levels)``: the stop levels (``loss_tol`` the run's), the steps-to-tol level and the rate
    levels, scaled by ``L_ref``."""
    L_ref = _loss_ref(consts[3], consts[4])
    if not L_ref > 0.0:
        L_ref = 1.0
    tol = (loss_tol * L_ref, stops.grad_tol * stops.grad_tol * L_ref if stops.grad_tol >= 0.0 else -1.0,
           stops.divergence * L_ref)
    levels = (prob.rate_levels[0] * L_ref, prob.rate_levels[1] * L_ref, prob.rate_levels[2] * L_ref)
    return tol, stops.eps_steps * L_ref, levels


@_jit
def _run_one(r, eng, ws, prob, stops, out):
    """Integrate run ``r`` from time 0 to its stop (module docstring)."""
    K, Y, Q = ws[0], ws[1], ws[2]
    y, y_new = Y[0], Y[1]
    consts = eng.consts[r]
    ctx = (consts, eng.k, eng.normalized, 1.0)
    ctl = (eng.rtol, eng.atol)
    sr = r if prob.seg_end.shape[0] > 1 else 0
    nseg = prob.seg_end.shape[1]
    T = float(stops.max_steps)
    loss_tol = eng.loss_level[r] if eng.loss_level.shape[0] > 0 else stops.loss_tol
    tol, tol_eps, levels = _thresholds(consts, prob, stops, loss_tol)
    pts = np.full(6, -1.0)
    phs = prob.phi_saddle[r] if prob.phi_saddle.shape[0] > 1 else prob.phi_saddle[0]
    for i in range(NY):
        y[i] = eng.start[r, _IDX[i]]
    t, seg, rec, slow_end, steps_tol, nsteps, nfev, t_stop = 0.0, 0, 0, -1.0, -1.0, 0, 0, 0.0
    reason = -1
    final = (0.0, 0.0, 0.0, 0.0)
    while reason < 0:
        # A segment starts at t: its rates, the events and stops at the current state, then its integration.
        seg, t_end = _segment(prob, sr, seg, t, T)
        rates = (prob.eta_w[sr, seg], prob.eta_a[sr, seg])
        trap = (stops.stop_trapped and eng.normalized and seg == nseg - 1, phs)
        obs = _eval_call(y, consts, eng.k, eng.normalized, rates[0], rates[1], K, _I64(0))
        nfev += 1
        finite = _finite(obs)
        slow_end, steps_tol = _point_events(obs, t, levels, (slow_end, steps_tol, pts, tol_eps), finite)
        for i in range(NY):
            y_new[i] = y[i]
        rec = _step_records(ws, ctx, t, 1.0, 0.0, obs, prob, out, r, _I64(rec))  # the records at time t
        reason = _stop_now(obs, finite, tol, trap[0], phs, 1.0, eng.k, consts[3], consts[4])
        if reason < 0 and t >= T:
            reason = driver.STOP_MAX_STEPS
        if reason >= 0:
            t_stop = t
            L, phi, c, s, P, g2, ga2 = obs
            final = (L, phi, P, math.sqrt(g2)) if finite else (math.inf, phi, P, math.inf)
            break
        h_abs, ne = _initial_step(y, K[0], consts, eng.k, eng.normalized, rates[0], rates[1], ctl[0], ctl[1],
                                  t_end - t, K, Y[2])
        nfev += ne
        while t < t_end:
            if eng.method == METHOD_RODAS4:
                ok, t_new, h, h_abs, obs_new, ne = _attempt_rodas(ws, ctx, rates, ctl, t, t_end, h_abs)
            else:
                ok, t_new, h, h_abs, obs_new, ne = _attempt(ws, ctx, rates, ctl, t, t_end, h_abs)
            nfev += ne
            finite_new = ok and _finite(obs_new) and (eng.max_nsteps <= 0 or nsteps < eng.max_nsteps)
            for i in range(NY):
                finite_new = finite_new and math.isfinite(y_new[i])
            if not finite_new:  # below the minimum step, past the step cap, or a non-finite state: stop here
                reason = driver.STOP_DIVERGED
                t_stop = t
                L, phi, c, s, P, g2, ga2 = _observation(y, consts, eng.k, eng.normalized)
                final = (L, phi, P, math.sqrt(g2))
                break
            nsteps += 1
            if eng.method == METHOD_RODAS4:
                _hermite_coefficients(K, Y, h, Q)
            else:
                _dense_coefficients(K, Q)
            code, theta = _step_stop(ws, ctx, h, obs_new, tol, trap)
            if code < 0 and t_new >= T:
                code = driver.STOP_MAX_STEPS
            obs_end = obs_new
            if code >= 0 and theta < 1.0:  # the stop lies inside the step: its state from the dense output
                _dense(y, Q, h, theta, y_new)
                obs_end = _observation(y_new, consts, eng.k, eng.normalized)
            else:
                theta = 1.0
            slow_end, steps_tol = _step_events(ws, ctx, t, h, theta, obs_end, levels,
                                               (slow_end, steps_tol, pts, tol_eps))
            rec = _step_records(ws, ctx, t, h, theta, obs_end, prob, out, r, rec)
            for i in range(NY):
                y[i] = y_new[i]
            if code >= 0:
                reason = code
                t_stop = t + theta * h if theta < 1.0 else t_new
                L1, phi1, c1, s1, P1, g21, ga21 = obs_end
                final = (L1, phi1, P1, math.sqrt(g21))
                break
            t = t_new
            for i in range(NY):
                K[0, i] = K[6, i]
    for f in range(6):
        eng.out[r, f] = 0.0
    for i in range(NY):
        eng.out[r, _IDX[i]] = y[i]
    _store(r, eng, out, prob, (reason, t_stop, slow_end, steps_tol, rec), pts, final, (nsteps, nfev))


@_jit
def _store(r, eng, out, prob, ends, pts, final, counts):
    """The run's outputs: stop, events, rate points, final observation, NaN trajectory after the stop, and the
    solver's counts."""
    reason, t_stop, slow_end, steps_tol, rec = ends
    out.stop_reason[r] = reason
    out.stop_step[r] = t_stop
    out.slow_end[r] = slow_end
    out.steps_tol[r] = steps_tol
    for f in range(6):
        out.rate_pts[r, f] = pts[f]
    for f in range(4):
        out.final[r, f] = final[f]
    for q in range(rec, prob.record_steps.shape[0]):
        for f in range(4):
            out.traj[r, q, f] = np.nan
    eng.nsteps[r] = counts[0]
    eng.nfev[r] = counts[1]


@driver.entry_point(engine_file=__file__, fastmath=False, error_model="numpy")
def run_range(lo, hi, eng, ws, prob, stops, out):
    """Integrate runs ``lo .. hi-1`` (the entry point :func:`sims.engines.driver.run_batch` calls)."""
    for r in range(lo, hi):
        _run_one(np.int64(r), eng, ws, prob, stops, out)
