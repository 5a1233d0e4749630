"""End-state classification against the theory's fixed points.

A run ends ``global``, ``spurious``, ``saddle``, ``not_converged`` or ``diverged``:

- ``diverged``: the loss became non-finite or exceeded the divergence threshold (the run is stopped there;
  no NaN is passed on).
- ``global``: the final loss is at most ``loss_tol`` times the zero network's loss ``L_ref`` (the loss is zero
  only on the global minima), or the
  state is within ``angle_tol`` of ``phi = 0`` and ``a`` within ``a_rtol ||a*||`` of ``a*`` (for the
  unnormalized CNN the function depends on ``||w|| a``, which is what is compared).
- ``spurious``: the teacher has a spurious minimum (theory: ``(1.a*)^2 < ((k+pi-1)/pi)||a*||^2``) and either the
  run stopped ``trapped`` (it provably entered that basin, see :mod:`sims.engines.driver`) or it sits within
  ``spurious_angle_tol`` of ``phi = pi`` with ``a`` within ``spurious_a_rtol ||a*||`` of ``a_sp``.  The angle
  tolerance is wider because GD approaches ``phi = pi`` only like ``1/t`` (the Hessian vanishes there).
- ``saddle``: within ``angle_tol`` of a non-minimum stationary point with ``a`` within ``a_rtol ||a*||`` of the
  theory's ``a``: the interior saddle ``(phi_s, a(phi_s))``, or ``(pi, a(pi))`` when ``phi = pi`` is not a minimum.
- ``not_converged``: anything else (out of steps away from every fixed point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

import theory
from sims.engines import closed_forms as _cf
from sims.engines import driver
from sims.runs.memo import ArrayMemo
from theory import closed_forms

OUTCOMES: tuple[str, ...] = ("global", "spurious", "saddle", "not_converged", "diverged")
GLOBAL, SPURIOUS, SADDLE, NOT_CONVERGED, DIVERGED = range(5)


@dataclass(frozen=True)
class Neighborhoods:
    """How close to a fixed point counts as at it (see the module docstring; all documented in the README).  Not
    :class:`sims.Tolerances`, the stopping rules."""

    angle_tol: float = 1e-3
    a_rtol: float = 1e-3
    spurious_angle_tol: float = 0.05
    spurious_a_rtol: float = 0.05


def _g(phi: np.ndarray) -> np.ndarray:
    return closed_forms.arc_cosine(phi, np.cos(phi), np.sin(phi))


def optimal_a_batch(phi: np.ndarray, a_star: np.ndarray) -> np.ndarray:
    """``a(phi) = M^{-1} N(phi) a*`` row by row (``phi``: (R,), ``a_star``: (R, k))."""
    x = a_star.sum(axis=1, keepdims=True) + (_g(phi)[:, None] - 1.0) * a_star  # N(phi) a*
    return theory.apply_m_inverse(x)


def spurious_exists_batch(a_star: np.ndarray) -> np.ndarray:
    """The theory's existence condition, row by row (:func:`theory.spurious_exists`)."""
    return theory.spurious_exists(np.atleast_2d(a_star))


def saddle_angles_batch(a_star: np.ndarray) -> np.ndarray:
    """Saddle angle ``phi_s`` per row, ``-1`` where there is none: :func:`theory.saddle_angles`' bisection,
    compiled and parallel (:func:`sims.engines.closed_forms.bisect_saddle`, the same bits).

    The engines take it as ``phi_saddle`` (``< 0``: no saddle, no ``trapped`` stop).
    """
    return _cf.bisect_saddle(*theory.algebra.saddle_targets(np.atleast_2d(a_star)), -1.0)


def classify(
    *,
    final_loss: np.ndarray,
    final_phi: np.ndarray,
    a: np.ndarray,
    a_star: np.ndarray,
    scale: np.ndarray,
    stop_reason: np.ndarray,
    loss_ref: np.ndarray,
    loss_tol: float,
    tol: Neighborhoods | None = None,
    phi_s: np.ndarray | None = None,
) -> np.ndarray:
    """Outcome code per run (indices into :data:`OUTCOMES`).  ``phi_s``: the teachers' saddle angles
    (:func:`saddle_angles_batch`, ``-1`` where there is no spurious point), if the caller has them already."""
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs may hold inf; they are labelled below
        return _classify(final_loss, final_phi, a, a_star, scale, stop_reason, loss_ref, loss_tol,
                         Neighborhoods() if tol is None else tol, phi_s)


def _classify(final_loss, final_phi, a, a_star, scale, stop_reason, loss_ref, loss_tol, tol, phi_s):
    R = a.shape[0]
    ast = np.broadcast_to(a_star, a.shape)
    fa = a * scale[:, None]  # the function depends on rho * a
    nst = np.linalg.norm(ast, axis=1)
    if phi_s is None:
        phi_s = saddle_angles_batch(ast)
    a_pi = optimal_a_batch(np.full(R, math.pi), ast)
    a_s = optimal_a_batch(np.where(phi_s >= 0, phi_s, 0.0), ast)
    dist = (np.linalg.norm(fa - ast, axis=1), np.linalg.norm(fa - a_pi, axis=1), np.linalg.norm(fa - a_s, axis=1))
    return _decide(final_loss, final_phi, dist, nst, stop_reason, loss_ref, loss_tol, tol, phi_s)


def _decide(final_loss, final_phi, dist, nst, stop_reason, loss_ref, loss_tol, tol, phi_s):
    """The outcome codes from the final loss and angle and the distances ``dist = (||rho a - a*||,
    ||rho a - a(pi)||, ||rho a - a(phi_s)||)`` (module docstring)."""
    d_glob, d_pi, d_s = dist
    ref = np.maximum(nst, 1e-300)
    out = np.full(final_loss.shape[0], NOT_CONVERGED, dtype=np.int8)
    near_global = (final_phi <= tol.angle_tol) & (d_glob <= tol.a_rtol * ref)
    glob = (final_loss <= loss_tol * loss_ref) | near_global
    exists = phi_s >= 0.0  # the saddle angle exists exactly where the spurious point does
    at_pi = (math.pi - final_phi) <= tol.spurious_angle_tol
    near_sp = at_pi & (d_pi <= tol.spurious_a_rtol * ref)
    spur = exists & ((stop_reason == driver.STOP_TRAPPED) | near_sp)
    near_saddle = exists & (np.abs(final_phi - phi_s) <= tol.angle_tol)
    near_saddle &= d_s <= tol.a_rtol * ref
    pi_saddle = ~exists & ((math.pi - final_phi) <= tol.angle_tol)
    pi_saddle &= d_pi <= tol.a_rtol * ref
    out[near_saddle | pi_saddle] = SADDLE
    out[spur] = SPURIOUS
    out[glob] = GLOBAL
    out[stop_reason == driver.STOP_DIVERGED] = DIVERGED
    return out


def saddle_angles_gram(k: int, Ss: np.ndarray, Qs: np.ndarray) -> np.ndarray:
    """:func:`saddle_angles_batch` from the teachers' sums ``Ss = 1.a*`` and ``Qs = ||a*||^2`` (``-1``: none); the
    last few chunks' results are kept (:mod:`sims.runs.memo`: the methods of a sweep's cell share its teachers)."""
    Ss = np.asarray(Ss, dtype=np.float64)
    Qs = np.asarray(Qs, dtype=np.float64)
    return _SADDLES(("saddle", int(k)), (Ss, Qs),
                    lambda s, q: (_cf.bisect_saddle(*theory.algebra.saddle_targets_of_sums(k, s, q), -1.0),))[0]


_SADDLES = ArrayMemo(4)


def classify_gram(
    *,
    final_loss: np.ndarray,
    final_phi: np.ndarray,
    head: tuple[np.ndarray, np.ndarray, np.ndarray],
    gram: tuple[np.ndarray, ...],
    k: int,
    scale: np.ndarray,
    stop_reason: np.ndarray,
    loss_ref: np.ndarray,
    loss_tol: float,
    tol: Neighborhoods | None = None,
    phi_s: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`classify` of runs known by their order parameters, without vectors.

    ``head = (x, y, z)``: the final heads' coordinates ``a = x a0 + y 1 + (1 + z) a*``; ``gram = (Q0, S0, P0, Ss,
    Qs)``: the Gram entries of ``(a0, 1, a*)``.  Every distance the classification takes is a Gram quadratic form:
    ``rho a - a* = rho x a0 + rho y 1 + (rho (1 + z) - 1) a*`` and, as ``a(phi) = alpha 1 + beta a*``
    (:func:`theory.algebra.optimal_a_coefficients`), ``rho a - a(phi)`` has the coordinates ``(rho x, rho y -
    alpha, rho (1 + z) - beta)``.  The decisions are :func:`classify`'s.
    """
    tol = Neighborhoods() if tol is None else tol
    Ss, Qs = gram[3], gram[4]
    if phi_s is None:
        phi_s = saddle_angles_gram(k, Ss, Qs)
    # a(pi) and a(phi_s) as alpha 1 + beta a*, in NumPy (g's cos and sin; the kernel does plain arithmetic only)
    coefs = (*theory.algebra.optimal_a_coefficients(_g(np.array([math.pi]))[0], k, Ss),
             *theory.algebra.optimal_a_coefficients(_g(np.where(phi_s >= 0, phi_s, 0.0)), k, Ss))
    rows = np.shape(final_loss)[0]

    def f64(arrays: tuple) -> tuple[np.ndarray, ...]:
        return tuple(np.ascontiguousarray(np.broadcast_to(a, (rows,)), dtype=np.float64) for a in arrays)

    dist = np.empty((3, rows))
    _gram_distance_rows(np.ascontiguousarray(scale, dtype=np.float64), f64(coefs), f64(head), f64(gram), float(k),
                        dist)
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs may hold inf; they are labelled after
        return _decide(final_loss, final_phi, tuple(dist), np.sqrt(Qs), stop_reason, loss_ref, loss_tol, tol, phi_s)


@njit(inline="always")
def _head_distance(x, y, z, Q0, S0, P0, k, Ss, Qs):
    """``||x a0 + y 1 + z a*||`` of one run from the Gram entries of ``(a0, 1, a*)``: the quadratic form
    (:func:`theory.closed_forms.gram_deviations`, compiled in :mod:`sims.engines.closed_forms`), clipped at 0
    against rounding as ``np.maximum(v, 0.0)`` would (a NaN stays NaN)."""
    v = _cf.gram_deviations(x, y, z, Q0, S0, P0, k, Ss, Qs)[2]
    return math.sqrt(v if not v < 0.0 else 0.0)


@njit(cache=True, nogil=True)
def _gram_distance_rows(scale, coefs, head, gram, k, out):
    """:func:`classify_gram`'s three distances run by run, in one pass (rows of ``out``: ``||rho a - a*||``,
    ``||rho a - a(pi)||``, ``||rho a - a(phi_s)||``), from the scale ``rho``, the coefficients ``coefs = (alpha,
    beta)`` of ``a(pi)`` then of ``a(phi_s)`` (:func:`theory.algebra.optimal_a_coefficients`), ``head = (x, y, z)``
    and ``gram = (Q0, S0, P0, Ss, Qs)``: the same operations in the same order as the NumPy expressions over whole
    arrays they replace, so the same doubles, in about a fifth of the time (those made 18 temporary arrays per
    distance)."""
    alpha_pi, beta_pi, alpha_s, beta_s = coefs
    x, y, z = head
    Q0, S0, P0, Ss, Qs = gram
    for r in range(out.shape[1]):
        sc = scale[r]
        bx = sc * x[r]
        by = sc * y[r]
        bz = sc * (1.0 + z[r])
        q0, s0, p0, ss, qs = Q0[r], S0[r], P0[r], Ss[r], Qs[r]
        out[0, r] = _head_distance(bx, by, bz - 1.0, q0, s0, p0, k, ss, qs)
        out[1, r] = _head_distance(bx, by - alpha_pi[r], bz - beta_pi[r], q0, s0, p0, k, ss, qs)
        out[2, r] = _head_distance(bx, by - alpha_s[r], bz - beta_s[r], q0, s0, p0, k, ss, qs)


def labels(names: tuple[str, ...], codes: np.ndarray) -> np.ndarray:
    """``names[codes]`` as a NumPy text array, the one ``np.array(names, dtype=object)[codes].astype(str)`` gives
    (the same values and the same width, that of the longest name present), by one gather from a text array of
    that width: converting every element of an object array was the slowest part of a sweep's result (0.9 s per
    4.5 million runs).

    >>> import numpy as np
    >>> from sims.runs.classify import OUTCOMES, labels
    >>> labels(OUTCOMES, np.array([0, 1, 0]))
    array(['global', 'spurious', 'global'], dtype='<U8')
    """
    codes = np.asarray(codes)
    if codes.size == 0:
        return np.array(names, dtype=object)[codes].astype(str)
    width = int(np.array([len(n) for n in names])[codes].max())
    return np.array(names, dtype=f"<U{max(width, 1)}")[codes]


def wilson(successes: np.ndarray | int, n: np.ndarray | int, z: float = 1.959963984540054):
    """Wilson score interval (95% by default) for a binomial proportion: ``(lo, hi)``.

    Every success rate the tables report carries this interval; unlike the normal approximation it stays inside
    ``[0, 1]`` and is not degenerate at 0 or ``n`` successes.

    Parameters
    ----------
    successes, n : int or numpy.ndarray
        Successes and trials (broadcast together).
    z : float, default 1.96
        The normal quantile of the confidence level.

    Returns
    -------
    lo, hi : numpy.ndarray
        The interval's bounds.

    Examples
    --------
    >>> from sims.runs.classify import wilson
    >>> [round(float(x), 4) for x in wilson(60, 100)]
    [0.502, 0.6906]
    """
    s = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    phat = s / n
    denom = 1.0 + z**2 / n
    centre = (phat + z**2 / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / denom
    lo = np.where(s == 0, 0.0, np.clip(centre - half, 0.0, 1.0))  # exact ends (no 1e-19 from rounding)
    hi = np.where(s == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    return lo, hi
