"""Order parameters of each run's teacher and start, drawn directly: O(1) work and memory per run.

Population GD on the two-layer non-overlapping model stays in a low-dimensional subspace, so a run is described
by a few scalars.  :func:`draw_order_parameters` draws them with the same joint law as the vector samplers of
:mod:`sims.runs.samplers` (``samplers.draw`` followed by the dot products), without building any vector of length
``p`` or ``k``.  The fields of :class:`OrderParameters` (``w~0 = w0 + v`` for the ResNet, ``w0`` for the CNNs):

- ``c0 = w~0 . w*`` and ``r0 = ||w~0 - c0 w*||``: the student filter's parts along and across the teacher's;
- ``S0 = 1.a0``, ``Q0 = a0.a0``, ``P0 = a0.a*``; ``Ss = 1.a*``, ``Qs = a*.a*``;
- ``vw = v.w*``: the teacher's cosine to the shortcut direction ``v``.

Every law is invariant under rotations that fix ``v`` (the teacher laws are defined relative to ``v``, the
student filter laws are rotation invariant), so nothing depends on which unit vector ``v`` is.  Derivations, with
``t = v.w*``, ``s = sqrt(1 - t^2)`` and, for ``p >= 2``, ``e`` the unit vector of ``v - t w*`` (any unit vector
orthogonal to ``w*`` when ``s = 0``):

- teacher ``w*``: only ``t`` matters.  ``"sphere"`` and ``"cap"``: ``y = (1 - t)/2`` is Beta((p-1)/2, (p-1)/2)
  (truncated to ``y <= sin(phi_max/2)^2`` for the cap), drawn by inverse CDF exactly as ``samplers.draw`` does;
  ``"angle"``: ``t = cos(angle)``.  For ``p = 1``: ``t = +-1`` with probability 1/2 (sphere, and the cap with
  ``phi_max = pi``), ``t = 1`` (other caps), ``t = cos(angle)`` for an angle 0 or pi (others raise).
- student ``w0``, independent of ``w*``: with ``g ~ N(0, I_p)``, its coordinates along the orthonormal
  ``w*, e`` are independent normals ``g1, g2`` and the rest has squared norm ``X ~ chi2_{p-2}`` (``g2 = X = 0``
  for ``p = 1``).  ``"zero"``: ``w0 = 0``; ``"sphere"``: ``w0 = g / ||g||`` with ``||g||^2 = g1^2 + g2^2 + X``;
  ``"gaussian"``: ``w0 = sigma g`` with ``sigma = w_scale / sqrt(p)``.  Then with ``b = 1`` for the ResNet and
  ``0`` for the CNNs: ``c0 = w0.w* + b t`` and ``r0 = sqrt((w0.e + b s)^2 + |rest of w0|^2)``.  (For the CNN
  this is ``c0 = g1 / ||g||`` for the sphere, ``c0 ~ N(0, sigma^2)`` and ``r0^2 ~ sigma^2 chi2_{p-1}`` for the
  Gaussian.)
- teacher ``a*``: along ``u = 1_k / sqrt(k)`` and the unit ``f`` of ``a* - (a*.u) u``, ``a* = h u + m f`` with
  ``Ss = sqrt(k) h``, ``Qs = h^2 + m^2``.  ``"gaussian"``: ``h ~ N(0, 1)`` and ``m^2 ~ chi2_{k-1}`` independent;
  ``require_spurious`` redraws ``(h, m^2)`` until ``spurious_margin(k, Ss, Qs) > 0``, which depends on nothing
  else, so this is the vector sampler's rejection exactly.  ``"ones"``: ``h = sqrt(k)``, ``m = 0``; ``"fixed"``:
  ``h = (1.a*)/sqrt(k)``, ``m = ||a* - mean(a*) 1||`` (computed once from ``a_value``).
- student ``a0``, given ``a*``: with ``g' ~ N(0, I_k)``, its coordinates along ``u, f`` are independent normals
  ``n1, n2`` and the rest has squared norm ``Z ~ chi2_{k-2}`` (``n2 = Z = 0`` for ``k = 1``; when ``m = 0`` the
  direction ``f`` is arbitrary and only ``n2^2 + Z ~ chi2_{k-1}`` matters).  ``"ball"``: ``a0 = rho g'/||g'||``
  with ``rho = R U^(1/k)``; ``"gaussian"``: ``a0 = (R / sqrt(k)) g'``; ``R = a_radius``, default ``sqrt(Qs)`` of
  the run.  Then ``S0 = sqrt(k) a0.u``, ``Q0 = |a0|^2`` and ``P0 = h a0.u + m a0.f``.

Each run draws only from its own stream (``states[r]``, advanced in place), in a numba loop over runs, so the
arrays are bit-identical for any thread count or split of the runs; the Beta quantiles are computed afterwards,
vectorized, from a uniform each run drew.  The draws are not the vector sampler's numbers, only its law.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from sims.engines import closed_forms as cf
from sims.engines.rng import chi_square, normal_pair, uniform
from sims.runs import samplers
from sims.runs.memo import ArrayMemo
from sims.runs.samplers import INIT_A, INIT_W, TEACHER_A, Init, Teacher
from theory import Model


class OrderParameters(NamedTuple):
    """Per-run order parameters, float64 arrays of shape ``(runs,)`` (see the module docstring for each law)."""

    c0: np.ndarray  #: ``w~0 . w*``
    r0: np.ndarray  #: ``||w~0 - (w~0 . w*) w*||`` (>= 0)
    S0: np.ndarray  #: ``1.a0``
    Q0: np.ndarray  #: ``a0.a0``
    P0: np.ndarray  #: ``a0.a*``
    Ss: np.ndarray  #: ``1.a*``
    Qs: np.ndarray  #: ``a*.a*``
    vw: np.ndarray  #: ``v.w*``


@njit(cache=True)
def _teacher_a(st, k, ta_code, require_spurious, h_fixed, m_fixed):
    """``(h, m, fail)``: a*'s coordinate along ``1/sqrt(k)`` and the norm of the rest (see the module docstring)."""
    if ta_code != 0:
        return h_fixed, m_fixed, False
    tries = 0
    while True:
        h, _ = normal_pair(st)
        m2 = chi_square(st, k - 1)
        if not require_spurious:
            return h, math.sqrt(m2), False
        if cf.spurious_margin(k, math.sqrt(k) * h, h * h + m2) > 0.0:
            return h, math.sqrt(m2), False
        tries += 1
        if tries > samplers._MAX_REDRAWS:
            return h, math.sqrt(m2), True


@njit(cache=True)
def _frame_draw(st, n):
    """For ``g ~ N(0, I_n)``: its coordinates on two fixed orthonormal directions and the squared norm of the
    rest, ``(g1, g2, X)`` with ``X ~ chi2_{n-2}`` (``g2 = 0`` for ``n = 1``)."""
    g1, g2 = normal_pair(st)
    if n < 2:
        g2 = 0.0
    return g1, g2, chi_square(st, n - 2)


@njit(parallel=True, cache=True)
def _draw_teacher(states, k, codes, values, out, fail):
    """Each run's teacher scalars from its stream, the first draws of the run.  ``codes = (teacher.a,
    require_spurious)``, ``values = (h, m, Ss, Qs of a deterministic a*)``; the rows of ``out`` (5, runs) are
    ``U_cap, h, m, Ss, Qs`` (``a* = h u + m f``).

    The outputs are one 2-D array and one flag array, not a tuple of arrays: numba 0.68 loses some writes to
    arrays unpacked from a tuple argument inside a ``prange`` loop."""
    ta_code, require_spurious = codes
    h_fixed, m_fixed, ss_fixed, qs_fixed = values
    sk = math.sqrt(k)
    for r in prange(states.shape[0]):
        st = states[r]
        out[0, r] = uniform(st)  # the cap's uniform, mapped to t = v.w* after the loop
        # teacher second layer: a* = h u + m f
        h, m, failed = _teacher_a(st, k, ta_code, require_spurious, h_fixed, m_fixed)
        fail[r] = failed
        out[1, r] = h
        out[2, r] = m
        if ta_code == 0:
            out[3, r] = sk * h
            out[4, r] = h * h + m * m
        else:  # the deterministic a*'s own sums, as the vector sampler computes them
            out[3, r] = ss_fixed
            out[4, r] = qs_fixed


@njit(parallel=True, cache=True)
def _draw_init(states, p, k, teacher, codes, values, out):
    """Each run's start from its stream, after its teacher's draws (:func:`_draw_teacher`, whose ``out`` is
    ``teacher``).  ``codes = (init.w, init.a)``, ``values = (w_scale, a_radius or -1)``; the rows of ``out`` (6,
    runs) are ``w_par, w_perp, w_rest2, S0, Q0, P0`` with ``w0 = w_par w* + w_perp e + rest``, ``|rest|^2 =
    w_rest2``."""
    iw_code, ia_code = codes
    w_scale, a_radius = values
    sk = math.sqrt(k)
    for r in prange(states.shape[0]):
        st = states[r]
        h = teacher[1, r]
        m = teacher[2, r]
        # student filter, on the frame (w*, e, rest)
        if iw_code == 0:
            out[0, r] = 0.0
            out[1, r] = 0.0
            out[2, r] = 0.0
        else:
            g1, g2, x = _frame_draw(st, p)
            scale = w_scale / math.sqrt(p) if iw_code == 2 else 1.0 / math.sqrt(g1 * g1 + g2 * g2 + x)
            out[0, r] = scale * g1
            out[1, r] = scale * g2
            out[2, r] = scale * scale * x
        # student second layer, on the frame (u, f, rest)
        rad = a_radius if a_radius >= 0.0 else math.sqrt(teacher[4, r])
        n1, n2, z = _frame_draw(st, k)
        nn = n1 * n1 + n2 * n2 + z
        if ia_code == 0:
            rho = rad * uniform(st) ** (1.0 / k)
            scale = rho / math.sqrt(nn)
            out[4, r] = rho * rho
        else:
            scale = rad / sk
            out[4, r] = scale * scale * nn
        out[3, r] = sk * scale * n1
        out[5, r] = scale * (h * n1 + m * n2)


def _teacher_draws(states: np.ndarray, k: int, codes: tuple, values: tuple) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_draw_teacher` (``states`` advanced in place), from the memo when the same streams drew the same
    teachers in one of the last chunks (:mod:`sims.runs.memo`: the methods of a sweep's ``(k, p)`` share their
    teachers run by run; the memo also gives the streams' states after the teacher's draws)."""
    R = states.shape[0]

    def compute(st: np.ndarray) -> tuple[np.ndarray, ...]:
        st = st.copy()
        out = np.empty((5, R))
        fail = np.zeros(R, dtype=np.bool_)
        _draw_teacher(st, k, codes, values, out, fail)
        return out, fail, st

    out, fail, after = _TEACHERS(("teacher", k, codes, values), (states,), compute)
    states[...] = after
    return out, fail


#: The teacher draws of the last few chunks (see :func:`_teacher_draws`).
_TEACHERS = ArrayMemo(4)


def _check(states: np.ndarray, p: int, k: int, teacher: Teacher, init: Init, model: Model | str) -> Model:
    """Validate the inputs (ValueError naming the field) and return the model."""
    for name, value in (("p", p), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if not isinstance(states, np.ndarray) or states.dtype != np.uint64 or states.ndim != 2 or states.shape[1] != 4:
        raise ValueError("states must be a uint64 array of shape (runs, 4) (sims.engines.rng.stream_states)")
    if not states.flags.c_contiguous or not states.flags.writeable:
        raise ValueError("states must be C-contiguous and writeable (the streams are advanced in place)")
    if not isinstance(teacher, Teacher):
        raise ValueError(f"teacher must be a sims.Teacher; got {type(teacher).__name__}")
    if not isinstance(init, Init):
        raise ValueError(f"init must be a sims.Init; got {type(init).__name__}")
    model = Model.of(model)
    teacher.validate(int(k))
    init.validate(model)
    if p == 1 and teacher.w == "angle" and teacher.angle not in (0.0, math.pi):
        raise ValueError("teacher.angle must be 0 or pi when p = 1")
    return model


def _fixed_a(teacher: Teacher, k: int) -> tuple[float, float, float, float]:
    """``(h, m, Ss, Qs)`` of a deterministic ``a*``: its coordinate along ``1/sqrt(k)``, the norm of the rest, and
    ``1.a*``, ``a*.a*`` computed from the vector (exact for ``1_k``)."""
    if teacher.a == "ones":
        return math.sqrt(k), 0.0, float(k), float(k)
    if teacher.a == "fixed":
        a = np.asarray(teacher.a_value, dtype=np.float64)
        return float(a.sum()) / math.sqrt(k), float(np.linalg.norm(a - a.mean())), float(a.sum()), float(a @ a)
    return 0.0, 0.0, 0.0, 0.0


def _cosines(U: np.ndarray, p: int, teacher: Teacher) -> tuple[np.ndarray, np.ndarray]:
    """``t = v.w*`` and ``s = sqrt(1 - t^2)`` from each run's uniform ``U`` (the vector sampler's map U -> t)."""
    R = U.shape[0]
    if p == 1:
        if teacher.w == "sphere" or (teacher.w == "cap" and teacher.phi_max >= math.pi):
            t = np.where(U < 0.5, 1.0, -1.0)
        elif teacher.w == "cap":
            t = np.ones(R)
        else:
            t = np.full(R, math.cos(teacher.angle))  # angle 0 or pi (checked): exactly +-1
        return t, np.zeros(R)
    if teacher.w == "angle":
        return np.full(R, math.cos(teacher.angle)), np.full(R, math.sin(teacher.angle))
    from scipy import special  # here, not at the top: scipy.special takes 0.2 s to import (sims.cli)

    half = (p - 1) / 2.0
    mass = special.betainc(half, half, math.sin(teacher.phi_max / 2.0) ** 2) if teacher.w == "cap" else 1.0
    return _COSINES(("cosines", half, mass), (U,), lambda u: _beta_cosines(half, mass, u))


def _beta_cosines(half: float, mass: float, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.clip(samplers.betaincinv_threads(half, (1.0 - U) * mass), 0.0, 1.0)
    return 1.0 - 2.0 * y, 2.0 * np.sqrt(y * (1.0 - y))


#: The cosines of the last few chunks' teachers (most of a draw's time): the methods of a sweep's ``(k, p)`` share
#: their teachers run by run (:mod:`sims.runs.memo`).
_COSINES = ArrayMemo(4)


def draw_order_parameters(
    states: np.ndarray, *, p: int, k: int, teacher: Teacher, init: Init, model: Model | str
) -> OrderParameters:
    """Draw each run's order parameters directly, with the joint law of :func:`sims.runs.samplers.draw`.

    O(1) work and memory per run whatever ``p`` and ``k`` (no vector of length ``p`` or ``k`` is built, except
    ``teacher.a_value`` for ``teacher.a = "fixed"``, read once), so teachers and starts of very wide models can be
    drawn for many runs.  The laws and their derivations are in the module docstring.

    Parameters
    ----------
    states : numpy.ndarray
        ``(runs, 4)`` uint64 stream states (:func:`sims.engines.rng.stream_states`), one per run; each run draws
        from its own row only, which is advanced in place.  The result is therefore the same for any thread count
        and any split of the runs into calls (with the matching rows).
    p, k : int
        Filter size and number of patches (>= 1).
    teacher : sims.Teacher
        Law of ``(w*, a*)``; ``w*`` is relative to the shortcut direction ``v`` (any unit vector: the order
        parameters' law does not depend on which).
    init : sims.Init
        Law of ``(w0, a0)``.
    model : theory.Model or str
        Only ``model.shortcut`` matters: the ResNet's effective filter is ``w0 + v``, a CNN's is ``w0``.

    Returns
    -------
    OrderParameters
        ``c0, r0, S0, Q0, P0, Ss, Qs, vw``, float64 arrays of shape ``(runs,)``.

    Raises
    ------
    ValueError
        On bad input (the message names the field), where ``samplers.draw`` refuses (``p = 1`` with an angle other
        than 0 or pi), and when ``teacher.require_spurious`` finds no ``a*`` in ``samplers._MAX_REDRAWS`` draws.
    """
    model = _check(states, p, k, teacher, init, model)
    p, k = int(p), int(k)
    R = states.shape[0]
    h_fixed, m_fixed, ss_fixed, qs_fixed = _fixed_a(teacher, k)
    tdraw, fail = _teacher_draws(states, k, (TEACHER_A.index(teacher.a), bool(teacher.require_spurious)),
                                 (h_fixed, m_fixed, ss_fixed, qs_fixed))
    if fail.any():
        raise ValueError(
            f"teacher.require_spurious: no Gaussian a* with a spurious point in {samplers._MAX_REDRAWS} draws")
    out = np.empty((6, R))
    _draw_init(states, p, k, tdraw, (INIT_W.index(init.w), INIT_A.index(init.a)),
               (float(init.w_scale), -1.0 if init.a_radius is None else float(init.a_radius)), out)
    U_cap, Ss, Qs = tdraw[0], tdraw[3], tdraw[4]
    w_par, w_perp, w_rest2, S0, Q0, P0 = out  # C-contiguous rows
    t, s = _cosines(U_cap, p, teacher)
    b = 1.0 if model.shortcut else 0.0
    c0 = w_par + b * t
    r0 = np.hypot(w_perp + b * s, np.sqrt(w_rest2))
    return OrderParameters(c0, r0, S0, Q0, P0, Ss, Qs, t)
