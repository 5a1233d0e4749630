"""Fixed points of the population dynamics: global minimum, spurious point, interior saddle, classification.

With ``M = 1 1^T + (pi - 1) I`` and ``N(phi) = 1 1^T + (g(phi) - 1) I``, the ``a``-optimal second layer at
angle ``phi`` is ``a(phi) = M^{-1} N(phi) a*`` (normalized models).  ``phi = pi`` gives the spurious point
``a_sp = M^{-1} (1 1^T - I) a*``; it is a local minimum iff ``a_sp . a* < 0``, i.e. iff
``(1.a*)^2 < ((k + pi - 1) / pi) ||a*||^2``.  Between the two basins sits the angle ``phi_s`` with
``a(phi_s) . a* = 0``; since ``g`` decreases from ``pi`` to ``0`` on ``[0, pi]`` it is unique when it exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from theory import closed_forms
from theory.algebra import _margin_and_denominator, apply_m_inverse, m_eigenvalues, spurious_exists
from theory.landscape import (
    effective_filter,
    population_gradient,
    population_loss,
    tangent_basis,
    tangent_hessian,
)
from theory.model import Model
from theory.validation import as_vector, finite_result, shortcut_vector, unit_teacher

#: ``brentq``'s tolerances for :func:`saddle_angle` (absolute, relative: the smallest relative tolerance it takes).
SADDLE_XTOL, SADDLE_RTOL = 1e-300, 4 * float(np.finfo(float).eps)


def arc_cosine(phi: float) -> float:
    """The arc-cosine kernel ``g(phi) = sin(phi) + (pi - phi) cos(phi)``, from the generated closed forms.

    ``g(phi) = 2 pi E[sigma(u.z) sigma(u*.z)]`` for unit ``u, u*`` at angle ``phi`` and Gaussian ``z``: the
    student-teacher cross moment of a ReLU unit, which every loss, gradient and fixed point of the model goes
    through.  It decreases strictly from ``g(0) = pi`` to ``g(pi) = 0``.

    Parameters
    ----------
    phi : float
        The angle between the effective filter and ``w*``, in ``[0, pi]``.

    Returns
    -------
    float
        ``g(phi)``.

    Examples
    --------
    >>> import math, theory
    >>> theory.arc_cosine(0.0) == math.pi, theory.arc_cosine(math.pi / 2), round(theory.arc_cosine(math.pi), 12)
    (True, 1.0, 0.0)
    """
    return float(closed_forms.arc_cosine(phi, math.cos(phi), math.sin(phi)))


def matrix_M(k: int) -> np.ndarray:
    """The matrix ``M = 1 1^T + (pi - 1) I``: ``2 pi`` times the student's second-moment matrix.

    ``E[sigma(u.Z_i) sigma(u.Z_j)] = M_ij / (2 pi)`` for a unit filter ``u``, so ``M / (2 pi)`` is the ``a``-block
    of the Hessian of every weight-normalized model, at every point (:func:`theory.a_hessian_eigenvalues`).

    Parameters
    ----------
    k : int
        Number of patches, ``>= 1``.

    Returns
    -------
    numpy.ndarray
        ``M``, shape ``(k, k)``.

    Raises
    ------
    ValueError
        If ``k`` is not an integer ``>= 1``.

    Examples
    --------
    >>> import numpy as np, theory
    >>> np.round(theory.matrix_M(3), 4)
    array([[3.1416, 1.    , 1.    ],
           [1.    , 3.1416, 1.    ],
           [1.    , 1.    , 3.1416]])
    """
    return np.ones((k, k)) + m_eigenvalues(k)[1] * np.eye(k)


def matrix_N(phi: float, k: int) -> np.ndarray:
    """The matrix ``N(phi) = 1 1^T + (g(phi) - 1) I``: ``2 pi`` times the student-teacher cross-moment matrix.

    ``E[sigma(u.Z_i) sigma(u*.Z_j)] = N_ij(phi) / (2 pi)`` for unit filters at angle ``phi``; with :func:`matrix_M`
    it gives the loss-optimal second layer ``a(phi) = M^{-1} N(phi) a*`` (:func:`theory.optimal_a`).

    Parameters
    ----------
    phi : float
        The angle between the effective filter and ``w*``, in ``[0, pi]``.
    k : int
        Number of patches.

    Returns
    -------
    numpy.ndarray
        ``N(phi)``, shape ``(k, k)``.

    Examples
    --------
    >>> import numpy as np, theory
    >>> np.round(theory.matrix_N(np.pi, 3), 12)      # g(pi) = 0: 1 1^T - I
    array([[0., 1., 1.],
           [1., 0., 1.],
           [1., 1., 0.]])
    """
    return np.ones((k, k)) + (arc_cosine(phi) - 1.0) * np.eye(k)


def optimal_a(phi: float, a_star: Any) -> np.ndarray:
    """The second layer minimizing the loss at fixed angle ``phi``: ``M^{-1} N(phi) a*``.

    For a weight-normalized model the loss is quadratic in ``a`` with Hessian ``M / (2 pi)`` at every angle, so
    this minimizer is the point GD on ``a`` contracts toward while the filter turns; at ``phi = 0`` it is ``a*``
    and at ``phi = pi`` the spurious point's ``a_sp``.  Computed by Sherman-Morrison
    (:func:`theory.apply_m_inverse`) on ``a* / max |a*_i|``, so that no intermediate sum overflows.

    Parameters
    ----------
    phi : float
        The angle between the effective filter and ``w*``, in ``[0, pi]``.
    a_star : array_like
        Teacher second layer, shape ``(k,)``.

    Returns
    -------
    numpy.ndarray
        ``a(phi)``, shape ``(k,)``; ``a(0) = a*`` and ``a(pi) = a_sp``.

    Raises
    ------
    ValueError
        If ``phi`` lies outside ``[0, pi]``, ``a_star`` is not a finite vector, or the result overflows.

    Examples
    --------
    >>> import numpy as np, theory
    >>> a_star = np.array([1.0, -1.0, 0.5, 0.2])
    >>> np.round(theory.optimal_a(0.0, a_star), 12)
    array([ 1. , -1. ,  0.5,  0.2])
    >>> np.round(theory.optimal_a(np.pi / 2, a_star), 4)   # g(pi/2) = 1: N = 1 1^T
    array([0.114, 0.114, 0.114, 0.114])
    """
    a_star = as_vector(a_star, "a_star")
    if not 0.0 <= phi <= math.pi:
        raise ValueError(f"phi must lie in [0, pi]; got {phi}")
    # Linear in a*: work with a* / max|a*| so that sums cannot overflow, then scale back.
    m = float(np.max(np.abs(a_star)))
    if m == 0.0:
        return np.zeros_like(a_star)
    b = a_star / m
    with np.errstate(over="ignore"):
        out = m * apply_m_inverse(b.sum() + (arc_cosine(phi) - 1.0) * b)
    return finite_result(out, "optimal_a")


def alignment_at(phi: float, a_star: Any) -> float:
    """The alignment ``a(phi) . a*`` of the loss-optimal second layer with the teacher's.

    Positive means GD shrinks ``phi`` (its sign decides the basin): it is ``||a*||^2 > 0`` at ``phi = 0``,
    negative at ``phi = pi`` exactly when the spurious minimum exists, and zero at the saddle angle.  Computed from
    the vector :func:`theory.optimal_a`; :func:`theory.optimal_alignment` is the same number from sums.

    Parameters
    ----------
    phi : float
        The angle, in ``[0, pi]``.
    a_star : array_like
        Teacher second layer, shape ``(k,)``.

    Returns
    -------
    float
        ``a(phi) . a*``.

    Raises
    ------
    ValueError
        If ``phi`` lies outside ``[0, pi]`` or ``a_star`` is not a finite vector.

    Examples
    --------
    >>> import numpy as np, theory
    >>> a_star = np.array([1.0, -1.0, 0.5, 0.2])
    >>> theory.alignment_at(0.0, a_star), round(theory.alignment_at(np.pi, a_star), 6)
    (2.29, -0.952259)
    """
    a_star = as_vector(a_star, "a_star")
    return float(optimal_a(phi, a_star) @ a_star)


def spurious_point(a_star: Any) -> np.ndarray | None:
    """``a_sp = M^{-1} (1 1^T - I) a*`` of the spurious local minimum, or None when it does not exist.

    The point ``phi = pi, a = a_sp`` is a local minimum iff ``(1.a*)^2 < ((k + pi - 1) / pi) ||a*||^2``.

    Parameters
    ----------
    a_star : array_like
        Teacher second layer, shape ``(k,)``.

    Returns
    -------
    numpy.ndarray or None
        ``a_sp``, shape ``(k,)``, or None when ``phi = pi`` is not a local minimum.

    Raises
    ------
    ValueError
        If ``a_star`` is not a finite, non-empty 1-D array.

    Examples
    --------
    >>> import numpy as np, theory
    >>> np.round(theory.spurious_point(np.array([1.0, -1.0, 0.5, 0.2])), 4)
    array([-0.2997,  0.6341, -0.0663,  0.0738])
    >>> theory.spurious_point(np.ones(4)) is None      # a* = 1_k never has one
    True
    """
    a_star = as_vector(a_star, "a_star")
    if not spurious_exists(a_star):
        return None
    return optimal_a(math.pi, a_star)


def arc_cosine_from_pi(d: float) -> float:
    """``g(pi - d) = sin(d) - d cos(d)``, by its series ``d^3/3 - d^5/30 + d^7/840`` for ``d < 1e-2``.

    Accurate to the last bits near ``phi = pi``, where ``g(phi)`` itself would be lost in rounding.  Plain
    :mod:`math` (float exponents, so numba compiles the same ``pow`` calls Python makes).

    Parameters
    ----------
    d : float
        ``pi - phi``, in ``[0, pi]``.

    Returns
    -------
    float
        ``g(pi - d)``.
    """
    if d < 1e-2:
        return d**3.0 / 3.0 - d**5.0 / 30.0 + d**7.0 / 840.0
    return math.sin(d) - d * math.cos(d)


def saddle_targets(a_star: Any) -> np.ndarray:
    """Per teacher, the value ``g(phi_s) = margin / denom`` (capped at 1) that :func:`saddle_angle` solves for; NaN
    where there is no saddle (no spurious point).

    Parameters
    ----------
    a_star : array_like
        One teacher ``(k,)`` or a batch ``(R, k)``.

    Returns
    -------
    numpy.ndarray
        ``(R,)`` (``(1,)`` for one teacher), in ``(0, 1]`` or NaN.
    """
    A = np.atleast_2d(np.asarray(a_star, dtype=np.float64))
    margin, denom = _margin_and_denominator(A)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(margin > 0.0, np.minimum(margin / denom, 1.0), np.nan)


def saddle_angle(a_star: Any) -> float | None:
    """The interior angle ``phi_s`` where ``a(phi_s)^T a* = 0``, which separates the basins, or None.

    It exists iff the spurious minimum does; ``phi_s >= pi / 2`` always (equality iff ``1.a* = 0``).  It is the
    root of :func:`theory.saddle_equation`, solved here in ``delta = pi - phi`` with the cancellation-free
    ``g(phi_s) = margin / denom`` (:func:`saddle_targets`) by ``scipy.optimize.brentq`` on
    :func:`arc_cosine_from_pi` (:func:`theory.saddle_angles` solves it for a batch by bisection).

    Parameters
    ----------
    a_star : array_like
        Teacher second layer, shape ``(k,)``.

    Returns
    -------
    float or None
        ``phi_s`` in ``[pi / 2, pi)``, or None when there is no spurious minimum (and so no saddle).

    Raises
    ------
    ValueError
        If ``a_star`` is not a finite, non-empty 1-D array.

    Examples
    --------
    >>> import numpy as np, theory
    >>> round(theory.saddle_angle(np.array([1.0, -1.0, 0.5, 0.2])), 4)
    1.6208
    >>> theory.saddle_angle(np.array([1.0, -1.0])) == np.pi / 2     # 1.a* = 0
    True
    """
    a_star = as_vector(a_star, "a_star")
    # a(phi).a* = Ss^2/(k+pi-1) + (g(phi) - 1) (Qs - Ss^2/(k+pi-1)) / (pi - 1) = 0 fixes
    # g(phi_s) = ((k+pi-1) Qs - pi Ss^2) / ((k+pi-1) Qs - Ss^2) = margin / denom, in (0, 1].
    # g decreases strictly from pi to 0 on [0, pi], so the root is unique.  Solve for delta = pi - phi_s with
    # g(pi - delta) = sin(delta) - delta cos(delta) (series for small delta): near the existence boundary
    # g_s -> 0+ and g evaluated at phi ~ pi would be lost in rounding (root bracket with equal signs).
    g_s = float(saddle_targets(a_star)[0])
    if math.isnan(g_s):
        return None
    from scipy.optimize import brentq  # here, not at the top: scipy.optimize takes 0.5 s to import (sims.cli)

    delta = brentq(lambda d: arc_cosine_from_pi(d) - g_s, 0.0, math.pi, xtol=SADDLE_XTOL, rtol=SADDLE_RTOL)
    return float(math.pi - delta)


def reduced_loss(phi: float, a_star: Any) -> float:
    """Loss along the angle with ``a`` optimized, ``min_a L(phi, a)`` (normalized models, any ``p``).

    The one-dimensional landscape GD sees once ``a`` has settled: it is 0 at ``phi = 0``, has its interior maximum
    at the saddle angle and a local minimum at ``phi = pi`` exactly when the spurious point exists.  Evaluated as
    the population loss at ``a = a(phi)`` (:func:`theory.optimal_a`) of a 2-D filter with the same invariants.

    Parameters
    ----------
    phi : float
        The angle, in ``[0, pi]``.
    a_star : array_like
        Teacher second layer, shape ``(k,)``.

    Returns
    -------
    float
        ``L(phi, a(phi))``; 0 at ``phi = 0``.

    Raises
    ------
    ValueError
        If ``phi`` lies outside ``[0, pi]`` or ``a_star`` is not a finite vector.

    Examples
    --------
    >>> import numpy as np, theory
    >>> a_star = np.array([1.0, -1.0, 0.5, 0.2])
    >>> theory.reduced_loss(0.0, a_star), round(theory.reduced_loss(np.pi, a_star), 4)
    (0.0, 0.3344)
    """
    a_star = as_vector(a_star, "a_star")
    # A 2-D filter at angle phi has the same invariants as any p-dimensional one.
    w = np.array([math.cos(phi), math.sin(phi)])
    return population_loss(w, optimal_a(phi, a_star), w_star=np.array([1.0, 0.0]), a_star=a_star, model="cnn")


def filter_at_angle(
    phi: float, w_star: Any, *, model: Model | str = "resnet", shortcut: Any = None, scale: float = 1.0
) -> np.ndarray:
    """A student filter ``w`` whose effective filter has norm ``scale`` and angle ``phi`` to ``w*``.

    The rotation happens in the plane of ``w*`` and the shortcut (or of ``w*`` and a fixed coordinate axis
    when they are parallel); for ``p = 1`` only ``phi in {0, pi}`` exist.  It places a network at a chosen angle:
    the fixed points (:func:`theory.global_minimum`, :func:`theory.spurious_minimum`, :func:`theory.saddle_point`)
    are built with it.

    Parameters
    ----------
    phi : float
        The angle between the effective filter and ``w*``, in ``[0, pi]``.
    w_star : array_like
        Teacher filter of unit norm, shape ``(p,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture: the ResNet's ``w`` is the effective filter minus the shortcut.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).
    scale : float, default 1.0
        The norm of the effective filter.

    Returns
    -------
    numpy.ndarray
        ``w``, shape ``(p,)``: the effective filter itself for the CNNs, minus the shortcut for the ResNet.

    Raises
    ------
    ValueError
        If ``w_star`` is not of unit norm, ``model`` is unknown, or ``p = 1`` and ``phi`` is not 0 or ``pi``.

    Examples
    --------
    >>> import numpy as np, theory
    >>> w_star = np.eye(4)[0]
    >>> w = theory.filter_at_angle(np.pi / 2, w_star)        # the ResNet: w + v is at angle pi / 2
    >>> round(theory.angle(w, w_star=w_star), 6) == round(np.pi / 2, 6)
    True
    >>> np.round(theory.filter_at_angle(np.pi / 2, w_star, model="cnn", scale=2.0), 6)
    array([0.      , 1.154701, 1.154701, 1.154701])
    """
    model = Model.of(model)
    w_star = unit_teacher(w_star)
    p = w_star.size
    v = shortcut_vector(shortcut, p)
    if phi in (0.0, math.pi):
        wt = scale * math.cos(phi) * w_star
    else:
        if p == 1:
            raise ValueError("phi must be 0 or pi when p = 1 (a 1-D filter has no other angle)")
        cand = [v] + list(np.eye(p))
        for x in cand:
            perp = x - (x @ w_star) * w_star
            if np.linalg.norm(perp) > 1e-6:
                break
        perp /= np.linalg.norm(perp)
        wt = scale * (math.cos(phi) * w_star + math.sin(phi) * perp)
    return wt - v if model.shortcut else wt


def global_minimum(w_star: Any, a_star: Any, *, model: Model | str = "resnet", shortcut: Any = None):
    """A global minimizer ``(w, a)`` (loss 0): ``w~ = w*``, ``a = a*``; for the ResNet ``w = w* - v``.

    Normalized models have a whole ray of them (``w~ = lambda w*``); this returns ``lambda = 1``.

    Parameters
    ----------
    w_star : array_like
        Teacher filter of unit norm, shape ``(p,)``.
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture: the ResNet's ``w`` is the effective filter minus the shortcut.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).

    Returns
    -------
    w, a : numpy.ndarray
        The filter ``(p,)`` and the second layer ``(k,)``.

    Raises
    ------
    ValueError
        If ``w_star`` is not of unit norm or an array is not a finite vector.

    Examples
    --------
    >>> import numpy as np, theory
    >>> w, a = theory.global_minimum(np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2]))
    >>> w                                   # w* - v with v = 1_4 / 2
    array([ 0.5, -0.5, -0.5, -0.5])
    """
    return filter_at_angle(0.0, w_star, model=model, shortcut=shortcut), as_vector(a_star, "a_star").copy()


def spurious_minimum(w_star: Any, a_star: Any, *, model: Model | str = "resnet", shortcut: Any = None):
    """``(w, a)`` at the spurious point (``w~ = -w*``, ``a = a_sp``), or None when it does not exist.

    The local minimum GD can get stuck in: the effective filter points away from the teacher and the second layer
    is :func:`theory.spurious_point`.  It exists iff ``(1.a*)^2 < ((k + pi - 1) / pi) ||a*||^2``.

    Parameters
    ----------
    w_star : array_like
        Teacher filter of unit norm, shape ``(p,)``.
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture: the ResNet's ``w`` is the effective filter minus the shortcut.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).

    Returns
    -------
    tuple of numpy.ndarray or None
        ``(w, a)``, or None when the teacher has no spurious minimum.

    Raises
    ------
    ValueError
        If ``w_star`` is not of unit norm or an array is not a finite vector.

    Examples
    --------
    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> w, a = theory.spurious_minimum(w_star, a_star)
    >>> round(theory.angle(w, w_star=w_star), 12) == round(np.pi, 12)
    True
    """
    a_sp = spurious_point(a_star)
    if a_sp is None:
        return None
    return filter_at_angle(math.pi, w_star, model=model, shortcut=shortcut), a_sp


def saddle_point(w_star: Any, a_star: Any, *, model: Model | str = "resnet", shortcut: Any = None):
    """``(w, a)`` at the interior saddle (angle ``phi_s``, ``a = a(phi_s)``), or None (no saddle, or p = 1).

    The saddle separates the basins of the global and the spurious minimum: at its angle ``a(phi_s).a* = 0``
    (:func:`theory.saddle_angle`), and the filter is placed there by :func:`theory.filter_at_angle`.

    Parameters
    ----------
    w_star : array_like
        Teacher filter of unit norm, shape ``(p,)``.
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture: the ResNet's ``w`` is the effective filter minus the shortcut.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).

    Returns
    -------
    tuple of numpy.ndarray or None
        ``(w, a)``, or None when there is no saddle or ``p = 1`` (a 1-D filter has no interior angle).

    Raises
    ------
    ValueError
        If ``w_star`` is not of unit norm or an array is not a finite vector.

    Examples
    --------
    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> w, a = theory.saddle_point(w_star, a_star)
    >>> theory.classify_stationary_point(w, a, w_star=w_star, a_star=a_star).kind
    'saddle'
    """
    phi_s = saddle_angle(a_star)
    if phi_s is None or unit_teacher(w_star).size == 1:
        return None
    return filter_at_angle(phi_s, w_star, model=model, shortcut=shortcut), optimal_a(phi_s, a_star)


Kind = Literal["minimum", "saddle", "maximum", "not stationary"]


@dataclass(frozen=True)
class StationaryPoint:
    """What :func:`classify_stationary_point` found: the kind, and the evidence for it.

    A frozen record, so that a classification can be inspected (which eigenvalues, how many zero modes had to be
    settled by probing the loss) rather than trusted.

    Parameters
    ----------
    kind : {"minimum", "saddle", "maximum", "not stationary"}
        The verdict.
    gradient_norm : float
        The norm of the population gradient at the point.
    eigenvalues : numpy.ndarray
        The tangent-space Hessian's eigenvalues, ascending.
    degenerate : int
        The number of eigenvalues within tolerance of 0, settled by probing the loss.

    Examples
    --------
    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> sp = theory.classify_stationary_point(*theory.saddle_point(w_star, a_star), w_star=w_star, a_star=a_star)
    >>> sp.kind, int(np.sum(sp.eigenvalues < -1e-9)), sp.degenerate      # one descent direction
    ('saddle', 1, 2)
    """

    kind: Kind
    gradient_norm: float
    eigenvalues: np.ndarray  # of the tangent-space Hessian, ascending
    degenerate: int  # eigenvalues within tolerance of 0, settled by probing the loss


def classify_stationary_point(w: Any, a: Any, *, w_star: Any, a_star: Any, model: Model | str = "resnet",
                              shortcut: Any = None, grad_tol: float = 1e-8, eig_tol: float = 1e-9,
                              probe: float = 1e-2) -> StationaryPoint:
    """Classify ``(w, a)`` as minimum, saddle or maximum from the tangent-space Hessian spectrum.

    Zero eigenvalues (within ``eig_tol``) are settled by the loss along those eigenvectors at distance
    ``+-probe``: at the spurious point the Hessian vanishes in ``w`` and the loss changes like
    ``-(a.a*) delta^3 / (6 pi)`` with ``delta = pi - phi``, so only such a probe can tell a minimum.  A relaxed
    probe (``10 probe`` along the zero mode, then a Newton step over the positive modes) finds descent along
    curves as well.

    Parameters
    ----------
    w, a : array_like
        The point, shapes ``(p,)`` and ``(k,)``.
    w_star, a_star : array_like
        The teacher (``w_star`` of unit norm).
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).
    grad_tol : float, default 1e-8
        Points whose gradient norm exceeds it are ``"not stationary"``.
    eig_tol : float, default 1e-9
        Eigenvalues within ``eig_tol`` times the largest one of 0 count as zero modes.
    probe : float, default 1e-2
        Distance of the probes along the zero modes.

    Returns
    -------
    StationaryPoint
        ``kind`` (``"minimum"``, ``"saddle"``, ``"maximum"`` or ``"not stationary"``), the gradient norm, the
        tangent eigenvalues (ascending) and the number of zero modes settled by probing.

    Raises
    ------
    ValueError
        Naming the field, for bad arrays (as :func:`population_loss`).

    Examples
    --------
    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> res = theory.classify_stationary_point(*theory.spurious_minimum(w_star, a_star), w_star=w_star,
    ...                                        a_star=a_star)
    >>> res.kind, res.degenerate        # a minimum, decided by probing the zero modes
    ('minimum', 3)
    """
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": shortcut}
    w = as_vector(w, "w")
    a = as_vector(a, "a")
    gw, ga = population_gradient(w, a, **kw)
    gnorm = float(np.sqrt(gw @ gw + ga @ ga))
    H = tangent_hessian(w, a, **kw)
    lam, vec = np.linalg.eigh(H)
    if gnorm > grad_tol:
        return StationaryPoint("not stationary", gnorm, lam, 0)
    scale = max(1.0, float(np.max(np.abs(lam))) if lam.size else 1.0)
    neg = lam < -eig_tol * scale
    pos = lam > eig_tol * scale
    zero = ~(neg | pos)
    B = tangent_basis(w, a.size, model=model, shortcut=shortcut)
    p = w.size
    L0 = population_loss(w, a, **kw)
    tiny = 64 * np.finfo(float).eps * max(1.0, abs(L0))
    up = down = False
    for j in np.flatnonzero(zero):
        d = B @ vec[:, j]
        for sgn in (1.0, -1.0):
            x = sgn * probe * d
            dL = population_loss(w + x[:p], a + x[p:], **kw) - L0
            up |= dL > tiny
            down |= dL < -tiny
            # Relaxed probe: a longer step along the zero mode, then one Newton step over the curved
            # (positive) modes.  Descent along a curve, e.g. k = 1 at phi = pi where the loss drops like
            # -(a*^2) delta^6 / (36 pi^2) once a follows a(phi) ~ delta^3, is invisible on straight lines.
            y = (np.concatenate([w, a]) + 10.0 * sgn * probe * d) if pos.any() else None
            if y is not None:
                gy = np.concatenate(population_gradient(y[:p], y[p:], **kw))
                coef = vec[:, pos].T @ (B.T @ gy) / lam[pos]
                y = y - B @ (vec[:, pos] @ coef)
                down |= population_loss(y[:p], y[p:], **kw) - L0 < -tiny
    has_up, has_down = bool(pos.any() or up), bool(neg.any() or down)
    kind: Kind = "saddle" if has_up and has_down else ("maximum" if has_down else "minimum")
    return StationaryPoint(kind, gnorm, lam, int(zero.sum()))


def effective_norm(w: Any, *, model: Model | str = "resnet", shortcut: Any = None) -> float:
    """``||w~||``: ``||w + v||`` for the ResNet, ``||w||`` otherwise (sets the filter's effective step)."""
    w = as_vector(w, "w")
    return float(np.linalg.norm(effective_filter(w, Model.of(model), shortcut_vector(shortcut, w.size))))
