"""Step-size facts for gradient descent: the stability limit of ``eta_a`` and local linear rates.

The ``a``-Hessian is ``rho^2 M / (2 pi)`` with eigenvalues ``rho^2 (k + pi - 1) / (2 pi)`` (along ``1``) and
``rho^2 (pi - 1) / (2 pi)`` (the rest), so GD on ``a`` is stable iff ``eta_a < 4 pi / (rho^2 (k + pi - 1))``.
At the global minimum of a normalized model the Hessian is block diagonal: ``Q* / (2 n^2)`` on the ``p - 1``
tangent directions of the filter (``n = ||w~||``) and ``M / (2 pi)`` on ``a``.  GD contracts each mode by
``|1 - eta * lambda|`` per step, so the loss contracts by the square of the largest such factor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from theory.algebra import m_eigenvalues
from theory.landscape import population_hessian, tangent_basis
from theory.model import Model
from theory.validation import as_vector


def max_stable_eta_a(k: int, *, rho: float = 1.0) -> float:
    """Largest stable step on ``a``: ``4 pi / (rho^2 (k + pi - 1))`` (``rho = ||w||`` when unnormalized).

    The ``a``-Hessian is ``rho^2 M / (2 pi)``; GD on ``a`` diverges along ``1`` beyond this step.

    Parameters
    ----------
    k : int
        Length of the second layer, ``>= 1``.
    rho : float, default 1.0
        Scale of the filter (``||w||`` for the unnormalized CNN), finite and ``> 0``.

    Returns
    -------
    float
        The step size ``eta_a`` at the stability limit.

    Raises
    ------
    ValueError
        If ``k`` is not an integer ``>= 1`` or ``rho`` is not finite and positive.

    Examples
    --------
    >>> import theory
    >>> round(theory.max_stable_eta_a(4), 6)        # 4 pi / (3 + pi)
    2.046109
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    if not (np.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be finite and > 0; got {rho!r}")
    return 4.0 * math.pi / (rho**2 * m_eigenvalues(k)[0])


def _check_eta(eta: float, name: str) -> float:
    if not (np.isfinite(eta) and eta >= 0):
        raise ValueError(f"{name} must be finite and >= 0; got {eta!r}")
    return float(eta)


def global_minimum_rate(
    eta_w: float, eta_a: float, *, a_star: Any, p: int, norm: float = 1.0
) -> float:
    """Per-step contraction factor of the distance to the global minimum (normalized models).

    ``max |1 - eta * lambda|`` over the tangent Hessian's modes; ``norm`` is ``||w~||`` at the limit point.
    The loss contracts by the square of this factor per step.

    Parameters
    ----------
    eta_w, eta_a : float
        Step sizes of the filter and of the second layer, finite and ``>= 0``.
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    p : int
        Filter dimension (``p = 1`` has no tangent filter mode).
    norm : float, default 1.0
        ``||w~||`` at the limit point.

    Returns
    -------
    float
        The contraction factor; below 1 means locally convergent.

    Raises
    ------
    ValueError
        If a step size is negative or not finite, or ``a_star`` is not a finite vector.

    Examples
    --------
    >>> import numpy as np, theory
    >>> round(theory.global_minimum_rate(0.5, 0.3, a_star=np.array([1.0, -1.0, 0.5, 0.2]), p=8), 6)
    0.897746
    """
    eta_w, eta_a = _check_eta(eta_w, "eta_w"), _check_eta(eta_a, "eta_a")
    a_star = as_vector(a_star, "a_star")
    k = a_star.size
    kk, pm1 = m_eigenvalues(k)  # the a-Hessian's eigenvalues are these over 2 pi
    modes = [eta_a * kk / (2 * math.pi)]
    if k > 1:
        modes.append(eta_a * pm1 / (2 * math.pi))
    if p > 1:
        modes.append(eta_w * (a_star @ a_star) / (2.0 * norm**2))
    return max(abs(1.0 - m) for m in modes)


def gd_linear_rate(w: Any, a: Any, *, eta_w: float, eta_a: float, w_star: Any, a_star: Any,
                   model: Model | str = "resnet", shortcut: Any = None) -> float:
    """Spectral radius of the linearized GD map ``I - diag(eta_w, eta_a) H`` on the tangent space at ``(w, a)``.

    At a minimum this is the asymptotic per-step contraction of the distance (the loss contracts by its
    square).  The tangent space is invariant under the map because ``H`` annihilates the flat direction.

    Parameters
    ----------
    w, a : array_like
        The point, shapes ``(p,)`` and ``(k,)``.
    eta_w, eta_a : float
        Step sizes, finite and ``>= 0``.
    w_star, a_star : array_like
        The teacher (``w_star`` of unit norm).
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).

    Returns
    -------
    float
        The spectral radius.

    Raises
    ------
    ValueError
        If a step size is negative or not finite, or for bad arrays (as :func:`population_hessian`).

    Examples
    --------
    At the global minimum it equals :func:`global_minimum_rate`:

    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> w, a = theory.global_minimum(w_star, a_star)
    >>> rate = theory.gd_linear_rate(w, a, eta_w=0.5, eta_a=0.3, w_star=w_star, a_star=a_star)
    >>> bool(np.isclose(rate, theory.global_minimum_rate(0.5, 0.3, a_star=a_star, p=4)))
    True
    """
    eta_w, eta_a = _check_eta(eta_w, "eta_w"), _check_eta(eta_a, "eta_a")
    model = Model.of(model)
    H = population_hessian(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=shortcut)
    p = np.asarray(w).size
    k = H.shape[0] - p
    D = np.concatenate([np.full(p, eta_w), np.full(k, eta_a)])
    B = tangent_basis(w, k, model=model, shortcut=shortcut)
    J = B.T @ (np.eye(p + k) - D[:, None] * H) @ B
    return float(np.max(np.abs(np.linalg.eigvals(J))))
