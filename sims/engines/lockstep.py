"""The lockstep driver: the run driver for engines whose state is a few scalars per run, SIMD over runs.

:mod:`sims.engines.driver` advances one run from start to stop.  For an engine whose step costs O(1) -- population
GD on its order parameters (:mod:`sims.engines.reduced`) -- that is one chain of dependent operations (square
roots, divisions, an arctangent) whose latency sets the pace: about 1.5e7 run-steps per second per thread.  This
driver advances a block of :data:`LANES` runs side by side instead, each lane holding one run, so the compiler
vectorizes the observation and the step across lanes (AVX2/AVX-512), and the chains of different runs overlap.
Its functions compile with LLVM attributes numba has no option for (:mod:`sims.engines.attributes`): 512-bit
vectors (8 lanes per instruction) where the CPU has them, about 24% more run-steps per CPU-second than LLVM's
default 256 bits; and the scalar pass's per-lane step and the lane start inlined by LLVM (a call of theirs moves
some 200 values, the fields of the records, through the stack), which halves the engine time of liu2019's short
runs.  The same bits either way.

Each iteration does, for every occupied lane,

1. **the vector pass** (one loop over lanes in groups of :data:`GROUP`, with no branch the compiler cannot turn
   into a select): the engine's ``observe`` at the lane's state, then the test whether this step of the run is
   *quiet* -- no stop, no event, no record, no segment change, no engine note (every condition of
   :func:`sims.engines.driver._stop_reason` and of the driver's events, evaluated without branches, the trapped
   test included) -- and, for quiet lanes, the engine's ``step``; a lane that is not quiet keeps its state;
2. **the scalar pass** over the lanes that were not quiet: exactly the per-run driver's body for that step (the
   events, the record, the segment change, the stop decision of :func:`sims.engines.driver._stop_reason`, then the
   step); a run that stops is finished and its lane takes the next run of the range.

So every run goes through the same decisions as on the per-run driver, with the same stop reasons, events and
outputs.  When the range has no more runs, the occupied lanes are packed to the front, so a long last run does
not drag a block of empty lanes with it.

Determinism.  A run's arithmetic depends only on its own values: which pass a step takes is decided by the run's
own state, a lane computes the same whatever its position (the vector loop runs over whole groups of
:data:`GROUP` lanes, so there is no scalar remainder), and runs do not interact.  Results are bit-identical
whatever the thread count or the split of runs.  The compiler options exclude reassociation
(:data:`FASTMATH`), which could compute a vector lane differently from the scalar pass, and contraction, which
numba's in-process compilation and its cache applied differently.

An engine registers with :func:`register` and provides, besides the per-run hooks ``teacher, observe, step,
gates, traj_point, finish`` of :mod:`sims.engines.driver` (``observe`` and ``step`` as pure functions of the
carry), ``load`` (a run into a lane), ``state`` (a lane's carry), ``commit`` (keep the new carry where quiet),
``move`` (copy a lane, for packing) and ``park`` (a harmless state for an empty lane).
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from sims.engines import attributes, driver
from sims.engines.common import unshared_empty
from sims.engines.driver import store_traj
from theory import closed_forms as _tcf

#: Runs advanced side by side by one thread.
LANES = 64
#: Lanes of one vector group (a multiple of every SIMD width; the vector loop runs over whole groups).
GROUP = 8
#: Compiler options of the lockstep entry points: reciprocals (``x / pi`` as a product), no reassociation and no
#: contraction into fused multiply-adds.  With ``contract`` the code numba compiles in the process and the code it
#: loads from its cache contracted differently (the results of a cold and a warm cache differed in the last bits;
#: ``tests/test_sims_determinism.py`` checks that they do not, for every engine); without it the engine is about 9%
#: slower.
FASTMATH = {"arcp"}
_BIG_T = np.iinfo(np.int64).max
#: Relative slack of the vector pass's tests (see :func:`_vector_pass`).
SLACK = 1e-9
#: The arc-cosine kernel, inlined (a call in the vector pass would keep it from vectorizing).
_arc_cosine = njit(inline="always")(_tcf.arc_cosine)
#: Private, IR-inlined copies of the closed forms the driver's decisions call (``loss`` for ``L_ref``,
#: ``arc_cosine`` in the trapped test), as a module the copied decision function reads ``cf`` from.  The lockstep
#: engines must not compile the shared dispatchers of :mod:`sims.engines.closed_forms`: a kernel compiled after
#: them in the same process linked them differently, and the per-run engines' results then depended on which
#: engine the process had compiled first (last bits).
_CF = types.ModuleType("sims.engines.lockstep._cf")
_CF.loss = njit(inline="always")(_tcf.loss)
_CF.arc_cosine = _arc_cosine
_stop_reason = njit(inline="always")(types.FunctionType(driver._stop_reason.py_func.__code__,
                                                        dict(vars(driver), cf=_CF), "_stop_reason"))

# Integer lane fields (rows of Lanes.I) and float lane fields (rows of Lanes.F).
RUN, T, SEG, REC, SLOW, STEPS_TOL, SEG_END, NEXT_REC, QUIET, NEXT_T, FORCE = range(11)
N_INT = 11
(TOL_LOSS, TOL_GRAD2, TOL_DIV, TOL_EPS, LEV0, LEV1, LEV2, PT0, PT1, PT2, PT3, PT4, PT5, PHS, WS2, SS, QS, PREV_PHI,
 PREV_P, EW, EA, THR_LO, THR_HI, THR_G, WATCH_P, CAND_ON, O_L, O_PHI, O_C, O_S, O_P, O_G2, O_GA2) = range(33)
N_FLOAT = 33


class Lanes(NamedTuple):
    """The driver's per-lane bookkeeping (one per thread): integer and float fields, field ``f`` of lane ``i`` at
    ``f * LANES + i``.  Flat arrays with a compile-time row length: the compiler then sees that the rows of one
    array never overlap, and the vector pass needs only a few run-time alias checks (with 2-D arrays of run-time
    strides it needs one per pair of rows, more than LLVM allows, and does not vectorize)."""

    I: np.ndarray  # (N_INT * LANES,) int64  # noqa: E741
    F: np.ndarray  # (N_FLOAT * LANES,)


def lanes() -> Lanes:
    """Empty lane bookkeeping for one thread (on cache lines of its own)."""
    return Lanes(unshared_empty(N_INT * LANES, np.int64), unshared_empty(N_FLOAT * LANES))


HOOKS: tuple[str, ...] = ("teacher", "load", "state", "commit", "move", "park", "observe", "gates", "note",
                          "next_event", "step", "traj_point", "finish")


def register(record: type, *, options: dict[str, Any] | None = None, **hooks: Callable) -> Callable:
    """Register a lockstep engine (state record ``record``, a ``NamedTuple`` class) and return its compiled entry
    point ``run_range(lo, hi, eng, ws, prob, stops, out)`` for :func:`sims.engines.driver.run_batch`; ``ws`` is
    ``(engine work space, lanes())``.  Every hook in :data:`HOOKS` is required except ``gates``, ``note`` (default:
    the plain network's) and ``next_event``.  An engine's gates may change only at the steps ``next_event`` names
    (the scalar pass takes those steps, calls ``note`` and reads the gates again)."""
    hooks.setdefault("gates", driver._DEFAULTS["gates"])
    hooks.setdefault("note", driver._DEFAULTS["note"])
    hooks.setdefault("next_event", _no_event)
    missing = set(HOOKS) - set(hooks)
    unknown = set(hooks) - set(HOOKS)
    if missing or unknown:
        raise ValueError(f"engine {record.__name__}: missing hooks {sorted(missing)}, unknown hooks {sorted(unknown)}")
    bound = dict(globals(), **hooks)
    opts = dict(options or {}, fastmath=FASTMATH)
    # The driver's helpers, with the engine's hooks bound in their globals too: the small ones inlined, the passes
    # compiled as functions of their own (inlining them all into one function compiles several times slower).
    for helper in _INLINED:
        bound[helper.__name__] = njit(inline="always")(types.FunctionType(helper.__code__, bound, helper.__name__))
    for helper in _CALLED:
        bound[helper.__name__] = njit(**opts, **attributes.options(inline=helper in _LLVM_INLINED))(
            types.FunctionType(helper.__code__, bound, helper.__name__))
    loop = types.FunctionType(_template.__code__, bound, "run_range", _template.__defaults__, _template.__closure__)
    loop.__qualname__ = f"lockstep_{record.__module__.replace('.', '_')}_{record.__qualname__}"
    loop.__doc__ = f"Advance runs ``lo .. hi-1`` of engine {record.__name__} in lockstep (the lockstep driver)."
    module_file = getattr(sys.modules.get(record.__module__), "__file__", None)
    return driver.entry_point(engine_file=module_file, **opts, **attributes.options())(loop)


# Stubs of the hooks (the per-run ones, teacher ... finish, are documented in sims.engines.driver).
teacher = driver.teacher
observe = driver.observe
gates = driver.gates
note = driver.note
step = driver.step
traj_point = driver.traj_point
finish = driver.finish


def load(eng, ews, prob, i, r, tr, tv):  # put run r (teacher row tr, invariants tv) into lane i
    raise NotImplementedError


def state(eng, ews, i):  # -> the carry of lane i
    raise NotImplementedError


def commit(eng, ews, i, old, new, keep):  # store new (if keep) or old into lane i, without branches
    raise NotImplementedError


def move(eng, ews, src, dst):  # copy lane src into lane dst
    raise NotImplementedError


def park(eng, ews, i):  # a harmless finite state for an empty lane
    raise NotImplementedError


def next_event(eng, t):  # -> the first step >= t at which the engine's gates change or it takes a note
    raise NotImplementedError


@njit(inline="always")
def _no_event(eng, t):
    return _BIG_T


def _segment(prob, sr, seg, t, nseg):
    """The segment of step ``t`` from segment ``seg`` on, and the step at which it ends (``_BIG_T``: the last)."""
    while seg < nseg - 1 and t >= prob.seg_end[sr, seg]:
        seg += 1
    return seg, (prob.seg_end[sr, seg] if seg < nseg - 1 else _BIG_T)


def _start_lane(eng, ews, LI, LF, prob, stops, i, r):
    """Lane ``i`` takes run ``r``: the engine loads it, the driver sets its tolerances, events and segment."""
    tr = r if prob.WS.shape[0] > 1 else np.int64(0)
    sr = r if prob.seg_end.shape[0] > 1 else np.int64(0)
    tv = teacher(eng, prob, tr)
    ws2, Ss, Qs, _ = tv
    load(eng, ews, prob, i, r, tr, tv)
    L_ref = _CF.loss(1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, Ss, Qs)
    if not L_ref > 0.0:
        L_ref = 1.0
    LF[TOL_LOSS * LANES + i] = stops.loss_tol * L_ref
    LF[TOL_GRAD2 * LANES + i] = stops.grad_tol * stops.grad_tol * L_ref if stops.grad_tol >= 0.0 else -1.0
    LF[TOL_DIV * LANES + i] = stops.divergence * L_ref
    LF[TOL_EPS * LANES + i] = stops.eps_steps * L_ref
    for lv in range(3):
        LF[(LEV0 + lv) * LANES + i] = prob.rate_levels[lv] * L_ref
    for f in range(6):
        LF[(PT0 + f) * LANES + i] = -1.0
    LF[PHS * LANES + i] = prob.phi_saddle[tr]
    LF[WS2 * LANES + i] = ws2
    LF[SS * LANES + i] = Ss
    LF[QS * LANES + i] = Qs
    LF[PREV_PHI * LANES + i] = 0.0
    LF[PREV_P * LANES + i] = 0.0
    seg, seg_end = _segment(prob, sr, np.int64(0), np.int64(0), prob.seg_end.shape[1])
    LF[EW * LANES + i] = prob.eta_w[sr, seg]
    LF[EA * LANES + i] = prob.eta_a[sr, seg]
    LI[RUN * LANES + i] = r
    LI[T * LANES + i] = 0
    LI[SEG * LANES + i] = seg
    LI[SEG_END * LANES + i] = seg_end
    LI[REC * LANES + i] = 0
    LI[NEXT_REC * LANES + i] = prob.record_steps[0] if prob.record_steps.shape[0] > 0 else -1
    LI[SLOW * LANES + i] = -1
    LI[STEPS_TOL * LANES + i] = -1
    LI[QUIET * LANES + i] = 0
    LI[FORCE * LANES + i] = 0
    _watch(eng, ews, LI, LF, stops, i, np.int64(0), prob.seg_end.shape[1],
           stops.stop_trapped and not (prob.noise_w[-1] > 0.0 or prob.noise_a[-1] > 0.0))


def _free_lane(eng, ews, LI, i):
    """Lane ``i`` holds no run: a harmless state the vector pass may compute on (step 0, never quiet)."""
    LI[RUN * LANES + i] = -1
    LI[T * LANES + i] = 0
    LI[NEXT_T * LANES + i] = 0
    LI[FORCE * LANES + i] = 0
    LI[QUIET * LANES + i] = 1  # skipped by the scalar pass
    park(eng, ews, i)


def _maybe_trapped(ga2, Qs, phi, c, s, k, Ss):
    """Whether the trapped inequality of :func:`sims.engines.driver._stop_reason` (``trap_factor`` 1) may hold:
    ``2 pi sqrt(ga2) sqrt(Qs) / (pi - 1) < -a(phi).a*`` in squares (no square root), with a relative slack of
    :data:`SLACK`, so that it is never False where the driver's test is True."""
    opt = driver.optimal_alignment(_arc_cosine(phi, c, s), k, Ss, Qs)
    lhs = (2.0 * math.pi / driver._M_PERP) ** 2 * ga2 * Qs
    return (opt < 0.0) & (lhs < opt * opt * (1.0 + SLACK))


def _template(lo, hi, eng, ws, prob, stops, out):
    """The lockstep loop (module docstring); never called as it is: :func:`register` binds the hooks."""
    ews, lns = ws
    LI, LF = lns.I, lns.F
    nseg = prob.seg_end.shape[1]
    last_noisy = prob.noise_w[nseg - 1] > 0.0 or prob.noise_a[nseg - 1] > 0.0
    k = teacher(eng, prob, np.int64(0))[3]
    nxt = np.int64(lo)
    span = np.int64(0)  # not the literal 0: the passes would compile once more for Literal[int](0)
    for i in range(LANES):
        if nxt < hi:
            _start_lane(eng, ews, LI, LF, prob, stops, i, nxt)
            nxt += 1
            span = i + 1
        else:
            _free_lane(eng, ews, LI, i)
    while span > 0:
        # 1. the vector pass: observe every lane, step the quiet ones (and those the scalar pass let go on)
        _vector_pass(eng, ews, LI, LF, span, k)
        # 2. the scalar pass: the per-run driver's decisions for the lanes that were not quiet
        for i in range(span):
            if LI[QUIET * LANES + i] != 0:
                continue
            if _scalar_step(eng, ews, LI, LF, prob, stops, out, i, k, last_noisy):
                if nxt < hi:
                    _start_lane(eng, ews, LI, LF, prob, stops, i, nxt)
                    nxt += 1
                else:
                    _free_lane(eng, ews, LI, i)
        if nxt >= hi:
            span = _pack(eng, ews, LI, LF, span)


def _vector_pass(eng, ews, LI, LF, span, k):
    """Observe every lane; step the lanes whose step is quiet (module docstring).  No branch here that the
    compiler cannot turn into a select: the loop is vectorized across lanes.

    The tests read what :func:`_watch` prepared per lane when the lane last went through the scalar pass: the
    first step of the next event (a record, a segment change, the step budget), the loss band ``(THR_LO, THR_HI]``
    outside which a stop or an event happens, the gradient level, whether ``a.a* > 0`` would end the slow phase,
    whether the trapped test applies.  Every test leans toward "not quiet" by :data:`SLACK`: a borderline case
    goes to the scalar pass, which decides it exactly as the per-run driver does."""
    for i in range(-(-span // GROUP) * GROUP):
        t = LI[T * LANES + i]
        carry = state(eng, ews, i)
        Qs = LF[QS * LANES + i]
        tv = (LF[WS2 * LANES + i], LF[SS * LANES + i], Qs, k)
        L, phi, c, s, P, g2, ga2, aux = observe(eng, ews, carry, tv)
        q = (LI[RUN * LANES + i] >= 0) & (t < LI[NEXT_T * LANES + i])
        q &= math.isfinite(L) & math.isfinite(phi) & math.isfinite(P) & math.isfinite(g2)
        q &= (L > LF[THR_LO * LANES + i]) & (L <= LF[THR_HI * LANES + i]) & (g2 > LF[THR_G * LANES + i])
        q &= not ((LF[WATCH_P * LANES + i] > 0.0) & (P > -SLACK * Qs))
        phs = LF[PHS * LANES + i]
        cand = (LF[CAND_ON * LANES + i] > 0.0) & (phi > phs - SLACK) & (P < SLACK * Qs)
        q &= not (cand & _maybe_trapped(ga2, Qs, phi, c, s, k, LF[SS * LANES + i]))
        forced = LI[FORCE * LANES + i] != 0  # the scalar pass took this step's decisions: step
        q |= forced
        new, ok = step(eng, ews, carry, aux, tv, LF[EW * LANES + i], LF[EA * LANES + i], 0.0, 0.0, t)
        q &= ok
        commit(eng, ews, i, carry, new, q)
        LI[T * LANES + i] = t + q
        LI[QUIET * LANES + i] = q
        LI[FORCE * LANES + i] = forced & (not q)
        LF[O_L * LANES + i] = L
        LF[O_PHI * LANES + i] = phi
        LF[O_C * LANES + i] = c
        LF[O_S * LANES + i] = s
        LF[O_P * LANES + i] = P
        LF[O_G2 * LANES + i] = g2
        LF[O_GA2 * LANES + i] = ga2
        LF[PREV_PHI * LANES + i] = phi if q else LF[PREV_PHI * LANES + i]
        LF[PREV_P * LANES + i] = P if q else LF[PREV_P * LANES + i]


def _watch(eng, ews, LI, LF, stops, i, t, nseg, trap_on):
    """What the vector pass tests for lane ``i`` from step ``t`` on (see :func:`_vector_pass`); the engine's gates
    are those of step ``t`` (the lockstep driver takes engines whose gates do not change along a run)."""
    net, deployed, grad_ok, rate_ok, trap_ok = gates(eng, ews, state(eng, ews, i), t)
    nd = net and deployed
    lo_ = -math.inf
    hi_ = LF[TOL_DIV * LANES + i]
    if nd:
        lo_ = max(lo_, LF[TOL_LOSS * LANES + i])
        if LI[STEPS_TOL * LANES + i] < 0:
            lo_ = max(lo_, LF[TOL_EPS * LANES + i])
    if rate_ok and nd:
        for lv in range(3):
            if LF[(PT0 + 2 * lv) * LANES + i] < 0.0:  # above the level: crossing it downward is an event
                lo_ = max(lo_, LF[(LEV0 + lv) * LANES + i])
            else:  # below: rising above it forgets the crossing
                hi_ = min(hi_, LF[(LEV0 + lv) * LANES + i])
    # the band and the gradient level with their slack applied here once, not in every vector pass
    LF[THR_LO * LANES + i] = lo_ * (1.0 + SLACK)
    LF[THR_HI * LANES + i] = hi_ * (1.0 - SLACK)
    LF[THR_G * LANES + i] = LF[TOL_GRAD2 * LANES + i] * (1.0 + SLACK) if nd and grad_ok else -math.inf
    LF[WATCH_P * LANES + i] = 1.0 if net and LI[SLOW * LANES + i] < 0 else 0.0
    cand = trap_on and trap_ok and nd and LF[PHS * LANES + i] >= 0.0 and LI[SEG * LANES + i] == nseg - 1
    LF[CAND_ON * LANES + i] = 1.0 if cand else 0.0
    nxt = min(min(stops.max_steps, LI[SEG_END * LANES + i]), next_event(eng, t))
    if LI[NEXT_REC * LANES + i] >= 0:
        nxt = min(nxt, LI[NEXT_REC * LANES + i])
    LI[NEXT_T * LANES + i] = nxt


def _pack(eng, ews, LI, LF, span):
    """Move the occupied lanes to the front (the range has no more runs); return the new span."""
    dst = 0
    for src in range(span):
        if LI[RUN * LANES + src] < 0:
            continue
        if src != dst:
            move(eng, ews, src, dst)
            for f in range(N_INT):
                LI[f * LANES + dst] = LI[f * LANES + src]
            for f in range(N_FLOAT):
                LF[f * LANES + dst] = LF[f * LANES + src]
            _free_lane(eng, ews, LI, src)
        dst += 1
    return dst


def _scalar_step(eng, ews, LI, LF, prob, stops, out, i, k, last_noisy):
    """The per-run driver's decisions for lane ``i`` at its step ``t``, from the observation the vector pass
    stored: events, record, segment, stop.  True if the run stopped (then finished); else the lane is let go on
    (``FORCE``: the next vector pass takes the step).  A lane that was let go on and still did not step would
    have left the finite states: it stops ``diverged``, as on the per-run driver."""
    r = LI[RUN * LANES + i]
    t = LI[T * LANES + i]
    nseg = prob.seg_end.shape[1]
    m = prob.record_steps.shape[0]
    carry = state(eng, ews, i)
    tv = (LF[WS2 * LANES + i], LF[SS * LANES + i], LF[QS * LANES + i], k)
    L, phi, c, s, P = LF[O_L * LANES + i], LF[O_PHI * LANES + i], LF[O_C * LANES + i], LF[O_S * LANES + i], \
        LF[O_P * LANES + i]
    g2, ga2 = LF[O_G2 * LANES + i], LF[O_GA2 * LANES + i]
    finite = math.isfinite(L) and math.isfinite(phi) and math.isfinite(P) and math.isfinite(g2)
    rec = LI[REC * LANES + i]
    if LI[FORCE * LANES + i] != 0:
        reason = driver.STOP_DIVERGED
    else:
        gate = gates(eng, ews, carry, t)
        net, deployed, grad_ok, rate_ok, trap_ok = gate
        if net and P > 0.0 and LI[SLOW * LANES + i] < 0:
            LI[SLOW * LANES + i] = t
        if net and deployed and L <= LF[TOL_EPS * LANES + i] and LI[STEPS_TOL * LANES + i] < 0:
            LI[STEPS_TOL * LANES + i] = t
        if rate_ok and net and deployed:
            levels = (LF[LEV0 * LANES + i], LF[LEV1 * LANES + i], LF[LEV2 * LANES + i])
            pts = driver.track_rate_levels(t, L, levels, (LF[PT0 * LANES + i], LF[PT1 * LANES + i],
                                                          LF[PT2 * LANES + i], LF[PT3 * LANES + i],
                                                          LF[PT4 * LANES + i], LF[PT5 * LANES + i]))
            for f in range(6):
                LF[(PT0 + f) * LANES + i] = pts[f]
        note(eng, ews, carry, r, t, L, phi, P, finite)
        while rec < m and prob.record_steps[rec] == t:
            store_traj(out, r, rec, traj_point(eng, ews, carry, L, phi, P))
            rec += 1
        LI[REC * LANES + i] = rec
        LI[NEXT_REC * LANES + i] = prob.record_steps[rec] if rec < m else -1
        sr = r if prob.seg_end.shape[0] > 1 else np.int64(0)
        seg, seg_end = _segment(prob, sr, LI[SEG * LANES + i], t, nseg)
        LI[SEG * LANES + i] = seg
        LI[SEG_END * LANES + i] = seg_end
        LF[EW * LANES + i] = prob.eta_w[sr, seg]
        LF[EA * LANES + i] = prob.eta_a[sr, seg]
        tol = (LF[TOL_LOSS * LANES + i], LF[TOL_GRAD2 * LANES + i], LF[TOL_DIV * LANES + i])
        reason = _stop_reason((L, phi, c, s, P, g2, ga2), finite, (t, seg, nseg), tv, gate, tol,
                                     (LF[PHS * LANES + i], 1.0, last_noisy), -1, stops)
        if reason < 0:
            LI[FORCE * LANES + i] = 1
            LF[PREV_PHI * LANES + i] = phi
            LF[PREV_P * LANES + i] = P
            _watch(eng, ews, LI, LF, stops, i, t + 1, nseg, stops.stop_trapped and not last_noisy)
            return False
    out.stop_reason[r] = reason
    out.stop_step[r] = t
    out.slow_end[r] = LI[SLOW * LANES + i]
    out.steps_tol[r] = LI[STEPS_TOL * LANES + i]
    for f in range(6):
        out.rate_pts[r, f] = LF[(PT0 + f) * LANES + i]
    if finite:
        out.final[r, 0] = L
        out.final[r, 1] = phi
        out.final[r, 2] = P
        out.final[r, 3] = math.sqrt(g2)
    else:  # finite weights whose loss overflows: an infinite loss, the last finite angle and alignment
        out.final[r, 0] = math.inf
        out.final[r, 1] = LF[PREV_PHI * LANES + i]
        out.final[r, 2] = LF[PREV_P * LANES + i]
        out.final[r, 3] = math.inf
    finish(eng, ews, prob, r, rec, carry)
    for q in range(rec, m):
        for f in range(4):
            out.traj[r, q, f] = np.nan
    return True


#: Helpers of the loop, compiled per engine with its hooks (see :func:`register`): inlined, and called.
_INLINED = (_segment, _free_lane, _maybe_trapped, _watch)
_CALLED = (_start_lane, _vector_pass, _pack, _scalar_step)
#: ... of which those LLVM inlines into their callers (:mod:`sims.engines.attributes`).
_LLVM_INLINED = (_start_lane, _scalar_step)
