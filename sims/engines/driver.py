"""The one compiled run driver: every engine's loop, stop decision, recording and final state.

An engine (population GD, SGD, a deep linear expansion, LaPerm, ...) supplies only what is its own: the state it
carries, how it starts from a run's ``(w0, a0)``, how it observes the population quantities, and one step.  The
driver owns everything else, for every engine alike:

- the per-run setup: the teacher's invariants ``||w*||^2, 1.a*, ||a*||^2``, ``L_ref`` (the loss of the zero
  network, so every tolerance means the same at every ``k``) and the tolerances scaled by it;
- the schedule lookup (the segment of step ``t``, its step sizes and noise, the noise's annealing);
- one stop decision, each reason with one meaning (:data:`STOP_NAMES`):

  ``diverged``   the loss exceeds ``divergence * L_ref``, the observation is not finite, or a step would leave the
                 state non-finite.  The run stops at its last finite state: the final ``(w, a)`` and ``final`` are
                 that state's, the final loss is finite, or ``inf`` if finite weights overflow the loss (never NaN);
  ``loss_tol``   the loss is at most ``loss_tol * L_ref`` (the global minimum);
  ``grad_tol``   ``||grad||^2 <= grad_tol^2 L_ref`` (a stationary point);
  engine stops   e.g. ``stuck`` (expansion: the factors' gradient vanishes), ``sync_fixed`` (LaPerm);
  ``max_steps``  the step budget is spent;
  ``trapped``    provably in the spurious basin: ``phi > phi_saddle``, ``a.a* < 0``, the last (noise-free) segment,
                 and ``||a - a(phi)|| ||a*|| < -a(phi).a*`` by the bound ``||a - a(phi)|| <= ||grad_a|| / lambda_perp``
                 (``lambda_perp = (pi - 1)/(2 pi)``, the ``a``-Hessian's smallest eigenvalue; times the engine's
                 ``trap_factor``) -- ``phi`` then grows toward ``pi``;

- the events: the end of the slow phase (first ``a.a* > 0``), the steps to ``eps * L_ref``, the rate levels (the
  last downward crossing of each of three loss levels), the log-spaced trajectory; and the final outputs.

**How engines plug in.**  An engine is a ``NamedTuple`` class of its options and state arrays and a set of hooks
(``numba.njit(inline="always")`` functions named as the stubs :func:`begin`, :func:`observe`, :func:`gates`,
:func:`step`, ... below).  ``run_range = register(Record, begin=..., observe=..., ...)`` returns the engine's
compiled entry point: the driver's loop (:func:`_template`, written once) as a new function object whose globals
bind the stub names to the engine's hooks.  numba inlines the hooks into the loop at its IR level and caches the
result per engine (the cache key holds the engine's record type, a hash of the engine's file and
:data:`SOURCE_STAMP`).  An engine file also provides ``workspace(eng, p, k)``, the work arrays of one thread
(allocated in Python, so engines that allocate nothing compile without reference counting); its optional
``views`` hook turns them into what the other hooks get, once per call of the entry point (population GD carves
its work vectors out of one block there: carved in each hook, the 20 slices cost 0.4 s of compile time).

Why this design (measured on the 2-core machine when it was chosen):

- the hooks must be inlined at numba's IR level: compiled as separate functions and inlined by LLVM, they round
  differently (LLVM optimizes each before inlining), and population GD would no longer reproduce its hand-written
  loop bit for bit (it does: ``tests/regression/fixture_v1.npz``);
- the hooks must be inlined into the loop itself, once.  The first design resolved generic hooks through
  ``numba.extending.overload`` and inlined a per-run function into a per-batch function into the entry point:
  numba compiled each hook twice (to type it, then to inline it) and re-ran its untyped passes on the whole
  inlined loop at every level, and the first call of population GD compiled in 18 s.  With the loop bound to the
  hooks directly it compiles in 7.3 s, and in 5.1 s once the fading shortcut's code became a compile-time branch of
  its own engine (the hand-written loop of before the driver: 4.2 s, without the overflow guard).  The other
  engines compile faster than their hand-written loops did (SGD 9.7 s instead of 14.0 s, expansions 10.4 s instead
  of 18.8 s);
- a closure per engine would compile as fast but numba does not find a closure in its cache in the next process;
  the template's function objects share the template's code and file, and each has its own cache index (named
  after the engine's record);
- arrays carried through tuples cost reference counting in the loop (40% slower GD): the entry points compile with
  ``_nrt=False`` where they allocate nothing, and the state lives in the workspace;
- speed against the hand-written loops (2 threads, benchmarks/gd_throughput.py, interleaved pairs of runs):
  population GD 0.94-0.99x, SGD 0.96-0.97x.  Threads' work arrays must not share cache lines
  (:func:`sims.engines.common.unshared_empty`): with numpy's adjacent small arrays two threads ran at 0.87x.

Where the first call's compile time goes (population GD, ``simulate(engine="vector")`` at ``p = k = 8`` on a
fresh numba cache; CPU seconds of numba's compile events, ``numba.core.event``, one run each on the 2-core machine):
this entry point 3.6 s (its own passes: numba's lowering 0.6, LLVM 0.6, type inference 0.6, inlining the hooks
0.7, SSA and rewrites 0.7; the loss and its gradient 0.25), the samplers' ``_draw`` with its callees 1.3, the
saddle angles 0.4: 5.4 s of a 5.6 s call.  It was 8.3 s: the entry point 5.0, ``_draw`` 2.1, the saddle angles
0.95.  What cut it, without changing a bit of any result: the random streams' normals are called, not inlined at
numba's IR level, in the noise loops and the samplers (:func:`sims.engines.rng.normal_pair_call`: about -1.1 s
for the entry point, -0.8 for ``_draw``); the ``views`` hook above (about -0.4); the saddle angles' kernel is a
serial loop on threads, not a ``prange`` loop (-0.55, :func:`sims.engines.closed_forms.bisect_saddle`).  What is
left is mostly the loop's own size (4545 typed IR statements: the template 1070, the GD step
with its four update loops 930, the stop decision 460): taking the trapped test out of line would save 0.05 s;
the four update loops (noisy or not, for ``w`` and ``a``) keep the noise-free ones free of random draws.

Runs are independent: run ``r`` is advanced from start to stop by one thread, with its own random stream, so
results do not depend on the thread count or on how runs are split.  :func:`run_batch` runs an engine's entry point
on ``numba.get_num_threads()`` Python threads taking chunks of runs in turn (the entry points release the GIL; a
``prange`` driver compiles about twice as slowly).
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numba
import numpy as np
from numba import njit

from sims.engines import closed_forms as cf
from sims.engines.common import FASTMATH, run_chunks
from theory import closed_forms as _tcf

#: Why a run stopped; codes index this tuple.
STOP_NAMES: tuple[str, ...] = ("loss_tol", "grad_tol", "diverged", "max_steps", "trapped", "stuck", "sync_fixed")
STOP_LOSS, STOP_GRAD, STOP_DIVERGED, STOP_MAX_STEPS, STOP_TRAPPED, STOP_STUCK, STOP_SYNC_FIXED = range(7)
#: Trajectory columns.
TRAJ_FIELDS: tuple[str, ...] = ("loss", "phi", "alignment", "dist_a")
_PI = math.pi


class Problem(NamedTuple):
    """What every run of a batch is trained on: teachers, schedule, noise, random streams, recording."""

    WS: np.ndarray  # (Rt, p) teacher filters, Rt = 1 (shared) or R
    AS: np.ndarray  # (Rt, k) teacher second layers
    phi_saddle: np.ndarray  # (Rt,) saddle angle of each teacher, -1 where the spurious point does not exist
    seg_end: np.ndarray  # (Rs, nseg) int64: step at which each schedule segment ends; Rs = 1 or R
    eta_w: np.ndarray  # (Rs, nseg) step sizes of the filter
    eta_a: np.ndarray  # (Rs, nseg) step sizes of the second layer
    noise_w: np.ndarray  # (nseg,) perturbation std on w per step
    noise_a: np.ndarray  # (nseg,)
    noise_decay: float  # multiplicative decay of the noise std per step (annealing)
    states: np.ndarray  # (R, 4) uint64 random streams, one per run
    record_steps: np.ndarray  # (m,) int64 ascending steps at which the trajectory is recorded
    rate_levels: np.ndarray  # (3,) loss levels hi > mid > lo (relative to L_ref) of the rate measurement


class Stops(NamedTuple):
    """The stop rules (loss levels relative to ``L_ref``, the gradient relative to ``sqrt(L_ref)``)."""

    max_steps: int
    loss_tol: float
    grad_tol: float
    eps_steps: float  # steps_to_tol counts the steps to reach this loss
    divergence: float
    stop_trapped: bool


class Outputs(NamedTuple):
    """Per-run outputs the driver fills."""

    traj: np.ndarray  # (R, m, 4) loss, phi, a.a*, ||a - a*|| at the record steps; NaN after the stop
    final: np.ndarray  # (R, 4) loss, phi, a.a*, gradient norm at the stop
    stop_step: np.ndarray  # (R,) int64
    stop_reason: np.ndarray  # (R,) int64 codes of STOP_NAMES
    slow_end: np.ndarray  # (R,) int64 first step with a.a* > 0, -1 if never
    steps_tol: np.ndarray  # (R,) int64 first step with loss <= eps_steps L_ref, -1 if never
    rate_pts: np.ndarray  # (R, 6) step and loss at the last downward crossing of each rate level, -1 if none


def make_problem(WS: np.ndarray, AS: np.ndarray, phi_saddle: np.ndarray, sched: Any, states: np.ndarray,
                 record_steps: np.ndarray, rate_window: Any) -> Problem:
    """The :class:`Problem` of a batch from its teachers, resolved schedule (``sims.runs.schedules.ResolvedSchedule``),
    streams, record steps and rate levels."""
    return Problem(WS, AS, phi_saddle, sched.seg_end, sched.eta_w, sched.eta_a, sched.noise_w, sched.noise_a,
                   float(sched.noise_decay), states, record_steps, np.asarray(rate_window, dtype=np.float64))


def make_stops(tolerances: Any, max_steps: int, stop_trapped: bool) -> Stops:
    """The :class:`Stops` from a ``sims.Tolerances`` (``stop_trapped``: whether the trapped test may stop runs)."""
    return Stops(int(max_steps), float(tolerances.loss_tol), float(tolerances.grad_tol), float(tolerances.eps),
                 float(tolerances.divergence), bool(stop_trapped))


def make_outputs(R: int, m: int) -> Outputs:
    """Empty output arrays for ``R`` runs and ``m`` record steps."""
    i64 = np.int64
    return Outputs(np.empty((R, m, 4)), np.empty((R, 4)), np.empty(R, i64), np.empty(R, i64), np.empty(R, i64),
                   np.empty(R, i64), np.empty((R, 6)))


# ---------------------------------------------------------------------------------------------------------------
# Hooks and registration: an engine binds its hook functions to the driver's loop.

HOOKS: tuple[str, ...] = ("views", "teacher", "begin", "observe", "gates", "note", "traj_point", "on_record",
                          "extra_stop", "trap_factor", "step", "finish")


def register(record: type, *, options: dict[str, Any] | None = None, **hooks: Callable) -> Callable:
    """Register the engine whose state record is the ``NamedTuple`` class ``record`` and return its compiled entry
    point ``run_range(lo, hi, eng, ws, prob, stops, out)`` (for :func:`run_batch`).

    ``hooks``: ``numba.njit(inline="always")`` functions named as the stubs below; ``begin, observe, step, finish``
    are required, the others default to the plain network's behaviour (the teacher's invariants from its vectors
    ``prob.WS, prob.AS``; every state is the deployed network; no extra stop; ``trap_factor`` 1).  ``options``:
    numba options of the entry point (e.g. ``error_model="numpy"``, ``_nrt=False`` where the engine allocates
    nothing).  The entry point is the driver's loop (:func:`_template`)
    with the hooks bound in its globals, compiled once per engine and cached (module docstring)."""
    missing = {"begin", "observe", "step", "finish"} - set(hooks)
    unknown = set(hooks) - set(HOOKS)
    if missing or unknown:
        raise ValueError(f"engine {record.__name__}: missing hooks {sorted(missing)}, unknown hooks {sorted(unknown)}")
    bound = dict(globals(), **dict(_DEFAULTS, **hooks))
    loop = types.FunctionType(_template.__code__, bound, "run_range", _template.__defaults__, _template.__closure__)
    # One cache index per engine (numba names it after the function): an index shared by all engines would hold
    # the signatures of every engine, and a process that cannot import one of them (an engine defined in a test
    # file) could not read the index at all.
    loop.__qualname__ = f"run_range_{record.__module__.replace('.', '_')}_{record.__qualname__}"
    loop.__doc__ = f"Advance runs ``lo .. hi-1`` of engine {record.__name__} (compiled by the run driver)."
    module_file = getattr(sys.modules.get(record.__module__), "__file__", None)
    return entry_point(engine_file=module_file, **(options or {}))(loop)


# The hooks.  The driver's loop calls these names; an engine's entry point binds them to the engine's functions
# (these stubs only document each hook's arguments and results).
def views(eng, ws):  # -> wsp, what the other hooks get as their work space (once per call; e.g. views of ws's arrays)
    raise NotImplementedError


def teacher(eng, prob, tr):  # -> (||w*||^2, 1.a*, ||a*||^2, k) of teacher tr
    raise NotImplementedError


def begin(eng, wsp, prob, r, tr, tv):  # load run r's state -> carry (a tuple of scalars)
    raise NotImplementedError


def observe(eng, wsp, carry, tv):  # -> (L, phi, c, s, P, g2, ga2, aux)
    raise NotImplementedError


def gates(eng, wsp, carry, t):  # -> (net, deployed, grad_ok, rate_ok, trap_ok)
    raise NotImplementedError


def note(eng, wsp, carry, r, t, L, phi, P, finite):  # engine-specific events of an observation
    raise NotImplementedError


def traj_point(eng, wsp, carry, L, phi, P):  # -> (loss, phi, a.a*, ||a - a*||) recorded at a record step
    raise NotImplementedError


def on_record(eng, wsp, r, rec):  # engine-specific recording at record index rec
    raise NotImplementedError


def extra_stop(eng, wsp, carry, aux, t, seg, max_steps, tol):  # -> an engine stop code, or -1
    raise NotImplementedError


def trap_factor(eng):  # -> safety factor (>= 1) of the trapped bound
    raise NotImplementedError


def step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t):  # -> (carry, ok); ok False: the state is left unchanged
    raise NotImplementedError


def finish(eng, wsp, prob, r, rec, carry):  # store the final state and engine outputs; pad after record rec
    raise NotImplementedError


# Defaults for the optional hooks (the plain network).
@njit(inline="always")
def _views_none(eng, ws):
    return ws


@njit(inline="always")
def _teacher_vectors(eng, prob, tr):
    ws2, Ss, Qs = teacher_invariants(prob.WS, prob.AS, tr)
    return ws2, Ss, Qs, prob.AS.shape[1]


@njit(inline="always")
def _gates_always(eng, wsp, carry, t):
    return True, True, True, True, True


@njit(inline="always")
def _note_nothing(eng, wsp, carry, r, t, L, phi, P, finite):
    return None


@njit(inline="always")
def _on_record_nothing(eng, wsp, r, rec):
    return None


@njit(inline="always")
def _no_extra_stop(eng, wsp, carry, aux, t, seg, max_steps, tol):
    return -1


@njit(inline="always")
def _trap_factor_one(eng):
    return 1.0


_DEFAULTS: dict[str, Callable] = {"views": _views_none, "teacher": _teacher_vectors, "gates": _gates_always,
                                  "note": _note_nothing, "on_record": _on_record_nothing, "extra_stop": _no_extra_stop,
                                  "trap_factor": _trap_factor_one}


# ---------------------------------------------------------------------------------------------------------------
# The driver


@njit(inline="always")
def store_traj(out, r, rec, q):
    """Store the trajectory point ``q`` (the four values of an engine's ``traj_point``: loss, angle, alignment,
    head distance) of run ``r`` at record ``rec``."""
    out.traj[r, rec, 0] = q[0]
    out.traj[r, rec, 1] = q[1]
    out.traj[r, rec, 2] = q[2]
    out.traj[r, rec, 3] = q[3]


@njit(inline="always")
def track_rate_levels(t, L, levels, pts):
    """Keep, per loss level ``levels[lv]`` (``rate_levels[lv] * L_ref``), the step and loss of the last downward
    crossing (a rise above the level forgets it): the points :func:`sims.runs.simulate.fitted_rates` measures the
    linear rate between.  ``pts = (t_hi, L_hi, t_mid, L_mid, t_lo, L_lo)``, ``-1`` where there is none; returns
    the updated points (kept in registers during a run, stored when it stops)."""
    t0, L0, t1, L1, t2, L2 = pts
    if L > levels[0]:
        t0 = -1.0
    elif t0 < 0.0:
        t0 = float(t)
        L0 = L
    if L > levels[1]:
        t1 = -1.0
    elif t1 < 0.0:
        t1 = float(t)
        L1 = L
    if L > levels[2]:
        t2 = -1.0
    elif t2 < 0.0:
        t2 = float(t)
        L2 = L
    return t0, L0, t1, L1, t2, L2


#: ``a(phi).a*`` with ``a(phi) = M^{-1} N(phi) a*`` the loss-minimizing second layer at angle ``phi``, from
#: ``g = g(phi)``, ``k``, ``1.a*``, ``||a*||^2`` (generated: :func:`theory.optimal_alignment`).
optimal_alignment = njit(inline="always")(_tcf.optimal_alignment)
#: ``pi - 1``: the eigenvalue of ``M = 2 pi x (the a-Hessian)`` orthogonal to ``1``, its smallest.
_M_PERP = _tcf.m_eigenvalues(1)[1]


@njit(inline="always")
def teacher_invariants(WS, AS, tr):
    """``(||w*||^2, 1.a*, ||a*||^2)`` of teacher ``tr``."""
    ws2 = 0.0
    Ss = 0.0
    Qs = 0.0
    for i in range(WS.shape[1]):
        ws2 += WS[tr, i] * WS[tr, i]
    for j in range(AS.shape[1]):
        Ss += AS[tr, j]
        Qs += AS[tr, j] * AS[tr, j]
    return ws2, Ss, Qs


@njit(inline="always")
def _stop_reason(obs, finite, where, tv, gate, tol, trap, extra, stops):
    """The stop decision (module docstring): a reason code, or -1 to go on.  ``obs = (L, phi, c, s, P, g2, ga2)``,
    ``where = (t, seg, nseg)``, ``trap = (phi_saddle, trap_factor, last segment noisy)``."""
    L, phi, c, s, P, g2, ga2 = obs
    t, seg, nseg = where
    phs, tf, last_noisy = trap
    net, deployed, grad_ok, rate_ok, trap_ok = gate
    tol_loss, tol_grad2, tol_div = tol
    ws2, Ss, Qs, k = tv
    if not finite or L > tol_div:
        return STOP_DIVERGED
    if net and deployed and L <= tol_loss:
        return STOP_LOSS
    if net and deployed and grad_ok and g2 <= tol_grad2:
        return STOP_GRAD
    if extra >= 0:
        return extra
    if t >= stops.max_steps:
        return STOP_MAX_STEPS
    if (stops.stop_trapped and trap_ok and net and deployed and not last_noisy and phs >= 0.0 and phi > phs
            and P < 0.0 and seg == nseg - 1):
        # grad_a = M (a - a(phi)) / (2 pi) and M >= (pi - 1) I, so ||a - a(phi)|| <= 2 pi ||grad_a|| / (pi - 1)
        # and a.a* <= a(phi).a* + ||a - a(phi)|| ||a*|| < 0: phi keeps growing toward pi.
        g = cf.arc_cosine(phi, c, s)
        if tf * 2.0 * _PI * math.sqrt(ga2) / _M_PERP * math.sqrt(Qs) < -optimal_alignment(g, k, Ss, Qs):
            return STOP_TRAPPED
    return -1


def _template(lo, hi, eng, ws, prob, stops, out):
    """The loop of every engine: advance runs ``lo .. hi-1`` of the batch in the work space ``ws``.  Never called
    as it is: :func:`register` compiles it with an engine's hooks bound to the names ``begin``, ``observe``, ..."""
    wsp = views(eng, ws)
    nseg = prob.seg_end.shape[1]
    last_noisy = prob.noise_w[nseg - 1] > 0.0 or prob.noise_a[nseg - 1] > 0.0
    for r0 in range(lo, hi):
        r = np.int64(r0)
        tr = r if prob.WS.shape[0] > 1 else np.int64(0)
        sr = r if prob.seg_end.shape[0] > 1 else np.int64(0)
        m = prob.record_steps.shape[0]
        tv = teacher(eng, prob, tr)
        ws2, Ss, Qs, _ = tv
        carry = begin(eng, wsp, prob, r, tr, tv)
        phs = prob.phi_saddle[tr]
        L_ref = cf.loss(1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, Ss, Qs)
        if not L_ref > 0.0:
            L_ref = 1.0
        tol = (stops.loss_tol * L_ref, stops.grad_tol * stops.grad_tol * L_ref if stops.grad_tol >= 0.0 else -1.0,
               stops.divergence * L_ref)
        tol_eps = stops.eps_steps * L_ref
        tf = trap_factor(eng)
        seg = 0
        rec = 0
        # The events of the run are kept in registers and stored when it stops.
        slow_end = -1
        steps_tol = -1
        levels = (prob.rate_levels[0] * L_ref, prob.rate_levels[1] * L_ref, prob.rate_levels[2] * L_ref)
        pts = (-1.0, -1.0, -1.0, -1.0, -1.0, -1.0)
        sigma_scale = 1.0
        prev_phi = 0.0
        prev_P = 0.0
        t = 0
        while True:
            L, phi, c, s, P, g2, ga2, aux = observe(eng, wsp, carry, tv)
            gate = gates(eng, wsp, carry, t)
            net, deployed, grad_ok, rate_ok, trap_ok = gate
            finite = math.isfinite(L) and math.isfinite(phi) and math.isfinite(P) and math.isfinite(g2)
            if net and P > 0.0 and slow_end < 0:
                slow_end = t
            if net and deployed and L <= tol_eps and steps_tol < 0:
                steps_tol = t
            if rate_ok and net and deployed:
                pts = track_rate_levels(t, L, levels, pts)
            note(eng, wsp, carry, r, t, L, phi, P, finite)
            while rec < m and prob.record_steps[rec] == t:
                store_traj(out, r, rec, traj_point(eng, wsp, carry, L, phi, P))
                on_record(eng, wsp, r, rec)
                rec += 1
            while seg < nseg - 1 and t >= prob.seg_end[sr, seg]:
                seg += 1
            extra = extra_stop(eng, wsp, carry, aux, t, seg, stops.max_steps, tol)
            reason = _stop_reason((L, phi, c, s, P, g2, ga2), finite, (t, seg, nseg), tv, gate, tol,
                                  (phs, tf, last_noisy), extra, stops)
            ok = True
            if reason < 0:
                ew = prob.eta_w[sr, seg]
                ea = prob.eta_a[sr, seg]
                sw = prob.noise_w[seg] * sigma_scale
                sa = prob.noise_a[seg] * sigma_scale
                carry, ok = step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t)
                if sw > 0.0 or sa > 0.0:
                    sigma_scale *= prob.noise_decay
                if not ok:  # the step would leave the state non-finite: stop at this (finite) state
                    reason = STOP_DIVERGED
            if reason >= 0:
                out.stop_reason[r] = reason
                out.stop_step[r] = t
                out.slow_end[r] = slow_end
                out.steps_tol[r] = steps_tol
                for f in range(6):
                    out.rate_pts[r, f] = pts[f]
                if finite:
                    out.final[r, 0] = L
                    out.final[r, 1] = phi
                    out.final[r, 2] = P
                    out.final[r, 3] = math.sqrt(g2)
                else:  # finite weights whose loss overflows: an infinite loss, the last finite angle and alignment
                    out.final[r, 0] = math.inf
                    out.final[r, 1] = prev_phi
                    out.final[r, 2] = prev_P
                    out.final[r, 3] = math.inf
                break
            prev_phi = phi
            prev_P = P
            t += 1
        finish(eng, wsp, prob, r, rec, carry)
        for q in range(rec, m):
            for f in range(4):
                out.traj[r, q, f] = np.nan


# ---------------------------------------------------------------------------------------------------------------
# Entry points: compiled per engine, cached with the engine's file, recompiled when the driver changes

#: Sources compiled into every engine's entry point besides the engine's own file (the driver, the shared helpers,
#: the generated closed forms, the random streams, the gradient helpers of the engines).
_COMPILED_SOURCES = ("sims/engines/driver.py", "sims/engines/lockstep.py", "sims/engines/attributes.py",
                     "sims/engines/common.py", "sims/engines/closed_forms.py",
                     "sims/engines/rng.py",
                     "sims/engines/finite_sample.py", "sims/engines/expansion_kernels.py", "theory/closed_forms.py")


def _source_stamp() -> str:
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for rel in _COMPILED_SOURCES:
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


#: Hash of :data:`_COMPILED_SOURCES`.  numba checks a cached function only against its own file, so an entry point
#: would outlive an edit of the driver; the stamp is part of every entry point's cache key, so it does not.
SOURCE_STAMP = _source_stamp()


def entry_point(engine_file: str | None = None, **options: Any) -> Callable:
    """Compile an engine's entry point ``run_range(lo, hi, eng, ws, prob, stops, out)``: ``nogil``, cached, with
    :data:`FASTMATH` (unless ``options`` give another ``fastmath``) and the given numba ``options``, and with
    :data:`SOURCE_STAMP` and a hash of ``engine_file`` (the engine's own source) in its cache key."""
    from numba.core.caching import FunctionCache

    stamp = (SOURCE_STAMP, _file_hash(engine_file))

    class StampedCache(FunctionCache):
        def _index_key(self, sig, codegen):
            return super()._index_key(sig, codegen) + stamp

    def decorate(py_func: Callable) -> Callable:
        disp = njit(nogil=True, cache=True, **dict(dict(fastmath=FASTMATH), **options))(py_func)
        disp._cache = StampedCache(py_func)
        return disp

    return decorate


def _file_hash(path: str | None) -> str:
    import hashlib

    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:16]
    except OSError:
        return ""


@contextmanager
def numba_threads(threads: int | None) -> Iterator[None]:
    """Run the block with numba's thread count set to ``threads`` (unchanged if None), and restore it after (for the
    ``prange`` kernels outside the driver, e.g. an expansion's pretraining)."""
    old = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def run_batch(entry: Callable, workspace: Callable, eng: Any, prob: Problem, stops: Stops, out: Outputs,
              runs: int, threads: int | None = None) -> None:
    """Run ``entry(lo, hi, eng, ws, prob, stops, out)`` (an engine's compiled entry point) over all ``runs``.

    Runs are split into chunks that ``threads`` (default ``numba.get_num_threads()``) Python threads take in turn,
    each with its own work space ``ws = workspace(eng, p, k)``; the entry points release the GIL, and each run is
    advanced by one thread from start to stop, so results do not depend on the thread count or the chunking.
    """
    p, k = prob.WS.shape[1], prob.AS.shape[1]

    def start() -> Callable[[int, int], None]:
        ws = workspace(eng, p, k)
        return lambda lo, hi: entry(lo, hi, eng, ws, prob, stops, out)

    run_chunks(runs, start, threads)
