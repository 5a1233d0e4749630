"""The Gaussian-ReLU algebra of the second layer, in one place: what simulations need of the landscape.

For the weight-normalized models (``rho = 1``) the ``a``-Hessian is ``M / (2 pi)`` with ``M = 1 1^T + (pi - 1) I``
everywhere, the loss-optimal second layer at angle ``phi`` is ``a(phi) = M^{-1} N(phi) a*`` with
``N(phi) = 1 1^T + (g(phi) - 1) I``, and everything below follows from those (:mod:`theory.derivation` derives each
quantity from the symbolic loss; :mod:`theory.closed_forms` holds the generated scalar code, numba-compatible):

- :func:`a_hessian_eigenvalues`: ``((k + pi - 1) / (2 pi), (pi - 1) / (2 pi))``;
- :func:`loss_ref`: ``L_ref = E[f*^2] / 2 = ((1.a*)^2 + (pi - 1) ||a*||^2) / (4 pi)``, the zero network's loss;
- :func:`spurious_margin` / :func:`spurious_exists`: the spurious point ``phi = pi`` is a local minimum iff
  ``(1.a*)^2 < ((k + pi - 1) / pi) ||a*||^2``;
- :func:`optimal_alignment`: ``a(phi).a*`` from ``g = g(phi)``; :func:`saddle_equation` and
  :func:`saddle_angles`: the saddle angle ``phi_s`` where it vanishes;
- :func:`apply_m_inverse`: ``M^{-1} x`` row-wise; :data:`G_MAX` ``= max (pi - phi) sin(phi)``.

Array functions take one teacher ``a*`` of shape ``(k,)`` or a batch ``(R, k)`` (leading axis = runs) and return
a scalar or an ``(R,)`` array.  Their floating-point operation order is the one the simulations have always used,
so the values are bit-identical to the hand-written code they replace.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from theory import closed_forms as _cf

# Row-wise dot products that round exactly like ``b @ b`` on each row (NumPy >= 2; before, a loop of exactly that).
_vecdot = getattr(np, "vecdot", None) or (lambda x, y: np.array([u @ v for u, v in zip(x, y, strict=True)]))

#: ``max over phi in [0, pi] of (pi - phi) sin(phi)`` (at ``tan(phi) = pi - phi``), generated to full precision.
G_MAX: float = _cf.G_MAX
#: ``a(phi).a*`` from ``g = g(phi)``, ``k``, ``S* = 1.a*``, ``Q* = ||a*||^2`` (generated scalar, numba-callable;
#: plain arithmetic, so NumPy arrays work too).
optimal_alignment = _cf.optimal_alignment


def _check_k(k: Any) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    return int(k)


def _rows(a_star: Any, name: str = "a_star") -> tuple[np.ndarray, bool]:
    """``a_star`` as a finite float64 ``(R, k)`` array, and whether the input was a single vector."""
    try:
        arr = np.asarray(a_star, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be an array of real numbers of shape (k,) or (R, k) ({exc})") from None
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be a 1-D array (k,) or a batch (R, k); got shape {arr.shape}")
    if arr.shape[-1] < 1:
        raise ValueError(f"{name} must have length >= 1 (k >= 1); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return (np.ascontiguousarray(arr[None, :]) if arr.ndim == 1 else np.ascontiguousarray(arr)), arr.ndim == 1


def _out(x: np.ndarray, single: bool) -> Any:
    return x[0].item() if single else x


def m_eigenvalues(k: int) -> tuple[float, float]:
    """``(k + pi - 1, pi - 1)``: the eigenvalues of ``M = 1 1^T + (pi - 1) I`` along ``1`` and orthogonal to it."""
    return _cf.m_eigenvalues(_check_k(k))


def a_hessian_eigenvalues(k: int) -> tuple[float, float]:
    """``(lam_ones, lam_perp) = ((k + pi - 1) / (2 pi), (pi - 1) / (2 pi))``: the ``a``-block of the Hessian.

    The block is ``M / (2 pi)`` at every point of a weight-normalized model (``rho^2`` times that for the
    unnormalized CNN): ``lam_ones`` along ``1``, ``lam_perp`` with multiplicity ``k - 1`` (absent for ``k = 1``).
    """
    return _cf.a_hessian_eigenvalues(_check_k(k))


def loss_ref(a_star: Any, *, safe: bool = False) -> Any:
    """``L_ref = E[f*^2] / 2 = ((1.a*)^2 + (pi - 1) ||a*||^2) / (4 pi)``: the loss of the zero network, per row.

    It is the unit of every loss tolerance, so that they mean the same at every ``k``.  It is 0 only for
    ``a* = 0``; ``safe=True`` returns 1 there instead, so that dividing by it stays finite (a zero teacher's loss
    is 0 at the start and every tolerance is met).
    """
    A, single = _rows(a_star)
    ref = _cf.loss_ref(A.sum(axis=1), np.einsum("ij,ij->i", A, A))
    if safe:
        ref = np.where(ref > 0, ref, 1.0)
    return _out(ref, single)


def _margin_and_denominator(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``A`` (R, k), for ``b = a* / max |a*_i|``: ``(margin, denom)`` (both 0 for a zero row).

    ``margin = (k + pi - 1) Q - pi S^2 = (k - 1) Q - pi (S^2 - Q)`` with ``S^2 - Q = sum_i b_i (S - b_i)``: exactly
    0 for ``k = 1`` (where ``S^2`` and ``Q`` may round differently) and free of overflow.
    ``denom = (k + pi - 1) Q - S^2 = (k + pi - 2) Q - (S^2 - Q) >= margin``; ``margin / denom = g(phi_s)``.
    (``np.vecdot`` rounds exactly like ``b @ b`` on each row, which :func:`theory.saddle_angle` always used.)
    """
    m = np.max(np.abs(A), axis=1)
    B = A / np.where(m > 0.0, m, 1.0)[:, None]
    k = A.shape[1]
    S = B.sum(axis=1)
    Q = _vecdot(B, B)
    cross = _vecdot(B, S[:, None] - B)
    margin = (k - 1.0) * Q - math.pi * cross
    denom = (k + math.pi - 2.0) * Q - cross
    return margin, denom


def spurious_margin(a_star: Any) -> Any:
    """``((k + pi - 1) ||a*||^2 - pi (1.a*)^2) / max_i |a*_i|^2`` per row: > 0 iff the spurious point exists.

    This is ``pi`` times the textbook ``((k + pi - 1) / pi) ||a*||^2 - (1.a*)^2``, rescaled by the largest entry
    (the criterion is scale invariant) and computed without cancellation (exactly 0 for ``k = 1``, where the
    spurious point never exists) or overflow.  A zero teacher has margin 0.
    """
    A, single = _rows(a_star)
    return _out(_margin_and_denominator(A)[0], single)


def spurious_exists(a_star: Any) -> Any:
    """Whether ``phi = pi`` is a spurious local minimum: ``(1.a*)^2 < ((k + pi - 1) / pi) ||a*||^2`` (per row).

    Decided by the sign of :func:`spurious_margin`; a bool for one teacher, a bool array for a batch.
    """
    A, single = _rows(a_star)
    exists = _margin_and_denominator(A)[0] > 0.0
    return bool(exists[0]) if single else exists


def apply_m_inverse(x: Any) -> np.ndarray:
    """``M^{-1} x`` along the last axis (``k = x.shape[-1]``), by Sherman-Morrison:
    ``(x - (1.x) / (k + pi - 1) 1) / (pi - 1)``."""
    X = np.asarray(x, dtype=np.float64)
    kk, pm1 = m_eigenvalues(X.shape[-1])
    return (X - X.sum(axis=-1, keepdims=True) / kk) / pm1


def optimal_a_coefficients(g: Any, k: int, S_star: Any) -> tuple[Any, Any]:
    """``(alpha, beta)`` with ``a(phi) = M^{-1} N(phi) a* = alpha 1 + beta a*``, from ``g = g(phi)`` and
    ``S* = 1.a*``: ``alpha = S* (pi - g) / ((k + pi - 1)(pi - 1))``, ``beta = (g - 1) / (pi - 1)``.  So ``a(phi)``
    lies in ``span{1, a*}`` and its distances to heads given by coordinates are Gram quadratic forms (plain
    arithmetic: arrays broadcast)."""
    kk, pm1 = m_eigenvalues(k)
    return S_star * (math.pi - g) / (kk * pm1), (g - 1.0) / pm1


def saddle_kernel_value(a_star: Any) -> Any:
    """``g(phi_s) = 1 - (pi - 1) (S*^2 / kk) / (Q* - S*^2 / kk)`` (``kk = k + pi - 1``) per row.

    Meaningful where the spurious point exists (then it lies in ``(0, 1]``); elsewhere it is returned as computed
    (possibly ``<= 0``, ``inf`` or NaN for ``a*`` parallel to ``1`` or zero), for the caller to mask.
    """
    A, single = _rows(a_star)
    return _out(_saddle_g(A), single)


def _saddle_g(A: np.ndarray) -> np.ndarray:
    """:func:`saddle_kernel_value` of the checked rows ``A`` (R, k)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _cf.saddle_kernel_value(A.shape[1], A.sum(axis=1), np.einsum("ij,ij->i", A, A))


def saddle_equation(phi: Any, k: int, S_star: Any, Q_star: Any) -> Any:
    """``g(phi) - g(phi_s)``: zero exactly at the saddle angle, positive below it, negative above it.

    Its sign is the sign of ``a(phi).a* = (g(phi) - g(phi_s)) (Q* - S*^2 / (k + pi - 1)) / (pi - 1)``
    (:data:`optimal_alignment`), since ``Q* - S*^2 / (k + pi - 1) > 0`` for any nonzero ``a*``; ``g`` decreases
    strictly on ``[0, pi]``, so the root is unique where it exists.  Broadcasts over arrays.
    """
    phi = np.asarray(phi, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_s = _cf.saddle_kernel_value(_check_k(k), np.asarray(S_star, dtype=np.float64),
                                      np.asarray(Q_star, dtype=np.float64))
    out = _cf.arc_cosine(phi, np.cos(phi), np.sin(phi)) - g_s
    return float(out) if np.ndim(out) == 0 else out


def saddle_angles(a_star: Any, *, missing: float = math.nan) -> Any:
    """Saddle angle ``phi_s`` per row (``missing`` where there is no spurious point), by bisection.

    64 halvings of ``[0, pi]`` on the sign of :func:`saddle_equation` (compared as ``g(phi) > g(phi_s)``, which is
    the same test) reach float64 resolution.  :func:`theory.saddle_angle` solves the same equation for one teacher
    with a root finder near ``pi``; the two agree to ~1e-15.
    """
    A, single = _rows(a_star)
    return _out(_bisect_saddle(*saddle_targets(A), missing), single)


def saddle_targets(a_star: Any) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`saddle_angles` bisects on, per row of ``a_star`` (R, k): ``g(phi_s)``
    (:func:`saddle_kernel_value`) and where the spurious point exists, so that a compiled bisection (the engines')
    can run the same halvings.

    >>> from theory.algebra import saddle_targets
    >>> g_s, exists = saddle_targets([[1.0, -1.0, 0.5, 0.2]])
    >>> bool(exists[0]), round(float(g_s[0]), 6)
    (True, 0.922693)
    """
    A = _rows(a_star)[0]
    return _saddle_g(A), _margin_and_denominator(A)[0] > 0.0


def saddle_angles_of_sums(k: int, S_star: Any, Q_star: Any, *, missing: float = math.nan) -> np.ndarray:
    """:func:`saddle_angles` from the teachers' sums ``S* = 1.a*`` and ``Q* = ||a*||^2`` (arrays ``(R,)``), for
    runs known only by their order parameters.

    The same bisection on the same ``g(phi_s)`` (:func:`saddle_kernel_value` of ``(k, S*, Q*)``), so where ``S*, Q*``
    are ``a*.sum()`` and ``a*.a*`` the angles are bit-identical to :func:`saddle_angles`; existence is decided by
    the unscaled margin ``(k + pi - 1) Q* - pi S*^2 > 0`` (never for ``k = 1``), which agrees with the scaled one
    except within rounding of the boundary.
    """
    return _bisect_saddle(*saddle_targets_of_sums(k, S_star, Q_star), missing)


def saddle_targets_of_sums(k: int, S_star: Any, Q_star: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`saddle_targets` from the teachers' sums ``S* = 1.a*`` and ``Q* = ||a*||^2`` (arrays ``(R,)``): what
    :func:`saddle_angles_of_sums` bisects on.

    >>> from theory.algebra import saddle_targets_of_sums
    >>> g_s, exists = saddle_targets_of_sums(4, [0.7], [2.29])
    >>> bool(exists[0]), round(float(g_s[0]), 6)
    (True, 0.922693)
    """
    k = _check_k(k)
    Ss = np.atleast_1d(np.asarray(S_star, dtype=np.float64))
    Qs = np.atleast_1d(np.asarray(Q_star, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g_s = _cf.saddle_kernel_value(k, Ss, Qs)
        exists = (_cf.spurious_margin(k, Ss, Qs) > 0.0) & (k > 1)
    return g_s, exists


def _bisect_saddle(g_s: np.ndarray, exists: np.ndarray, missing: float) -> np.ndarray:
    """64 halvings of ``[0, pi]`` on ``g(phi) > g_s`` per entry; ``missing`` where not ``exists``."""
    lo = np.zeros(len(g_s))
    hi = np.full(len(g_s), math.pi)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = _cf.arc_cosine(mid, np.cos(mid), np.sin(mid)) > g_s  # g decreases: the root lies to the right
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return np.where(exists, 0.5 * (lo + hi), missing)
