"""Population loss, gradient and Hessian of the CNN/ResNet family in ``(w, a)`` coordinates.

The scalar closed forms live in :mod:`theory.closed_forms` (generated from :mod:`theory.derivation`); this
module adds the chain rule through the shortcut ``w~ = w + v`` and the normalization ``u = w~ / ||w~||``:

- ``grad c = t / n`` with ``n = ||w~||``, ``c = u.w*``, ``t = (I - u u^T) w*`` (so ``||t|| = sin phi``),
- ``hess c = -(u t^T + t u^T + c (I - u u^T)) / n^2``,
- ``rho = n`` for the unnormalized CNN (``grad rho = u``, ``hess rho = (I - u u^T) / n``), else ``rho = 1``.

The angle is ``phi = atan2(||t||, u.w*)``, never ``arccos``, so ``phi`` is exact at 0 and pi.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from theory import closed_forms
from theory.model import Model
from theory.validation import (
    as_vector,
    check_model,
    finite_result,
    float_guard,
    norm,
    shortcut_vector,
    unit_teacher,
)


@dataclass(frozen=True)
class Geometry:
    """Where the student's filter points relative to the teacher's: everything the closed forms need."""

    n: float  # ||w~||
    u: np.ndarray  # w~ / n
    c: float  # cos(phi)
    s: float  # sin(phi)
    phi: float  # angle between w~ and w*
    t: np.ndarray  # (I - u u^T) w*, of norm s
    rho: float  # output scale: 1 (normalized) or n (unnormalized)
    normalized: bool


def effective_filter(w: np.ndarray, model: Model, v: np.ndarray) -> np.ndarray:
    """The filter the convolution actually uses: ``w + v`` with the shortcut (ResNet), ``w`` without (CNNs).
    (``model`` is a :class:`Model`: the public functions convert names at their entry.)"""
    return w + v if model.shortcut else w


def geometry(w: np.ndarray, w_star: np.ndarray, model: Model, v: np.ndarray) -> Geometry:
    """Angle, norm and tangent vector of the effective filter; raises if its direction is undefined."""
    wt = effective_filter(w, model, v)
    n = norm(wt)
    if n == 0.0 or not np.isfinite(n):
        what = "w + shortcut (the ResNet's effective filter)" if model.shortcut else "w"
        raise ValueError(f"{what} must be nonzero and finite: the filter direction is undefined at 0")
    u = wt / n
    c_raw = float(np.dot(u, w_star))
    t = w_star - c_raw * u
    s_raw = norm(t)
    h = float(np.hypot(c_raw, s_raw))
    c, s = c_raw / h, s_raw / h
    phi = float(np.arctan2(s_raw, c_raw))
    return Geometry(n, u, c, s, phi, t, 1.0 if model.normalized else n, model.normalized)


def _inputs(w: Any, a: Any, w_star: Any, a_star: Any, model: Any, shortcut: Any, normalize: bool):
    model = Model.of(model)
    w_star = unit_teacher(w_star, normalize=normalize)
    w = as_vector(w, "w", length=w_star.size, length_of="w_star")
    a_star = as_vector(a_star, "a_star")
    a = as_vector(a, "a", length=a_star.size, length_of="a_star")
    v = shortcut_vector(shortcut, w.size)
    return w, a, w_star, a_star, model, v


def _invariants(g: Geometry, a: np.ndarray, a_star: np.ndarray) -> tuple[float, ...]:
    """Arguments of the closed forms, in :data:`theory.derivation.ARGUMENTS` order."""
    return (g.rho, g.phi, g.c, g.s, a.sum(), a @ a, a @ a_star, a_star.sum(), a_star @ a_star)


def _loss(w, a, w_star, a_star, model, v) -> float:
    g = geometry(w, w_star, model, v)
    return float(closed_forms.loss(*_invariants(g, a, a_star)))


def _gradient(w, a, w_star, a_star, model, v) -> tuple[np.ndarray, np.ndarray]:
    g = geometry(w, w_star, model, v)
    L_rho, L_c, L_S, L_Q, L_P = closed_forms.gradient(*_invariants(g, a, a_star))
    grad_w = L_c * g.t / g.n
    if not g.normalized:
        grad_w = grad_w + L_rho * g.u
    grad_a = L_S + 2.0 * L_Q * a + L_P * a_star
    return grad_w, grad_a


def _hessian(w, a, w_star, a_star, model, v) -> np.ndarray:
    g = geometry(w, w_star, model, v)
    p, k = w.size, a.size
    args = _invariants(g, a, a_star)
    L_rho, L_c, L_S, L_Q, L_P = closed_forms.gradient(*args)
    (H_rr, H_rc, H_rS, H_rQ, H_rP, H_cc_s2, H_cS, H_cQ, H_cP, H_SS, H_SQ, H_SP, H_QQ, H_QP, H_PP) = (
        closed_forms.hessian(*args)
    )
    u, t, n = g.u, g.t, g.n
    proj = np.eye(p) - np.outer(u, u)
    dc = t / n
    e = t / g.s if g.s > 0.0 else np.zeros(p)  # unit tangent toward w*; irrelevant where s = 0
    H_ww = H_cc_s2 * np.outer(e, e) / n**2 - L_c * (np.outer(u, t) + np.outer(t, u) + g.c * proj) / n**2
    # d(invariant)/da for S, Q, P, and the mixed partials with c (and rho) for each.
    dS, dQ, dP = np.ones(k), 2.0 * a, a_star
    H_aw = np.outer(H_cS * dS + H_cQ * dQ + H_cP * dP, dc)
    if not g.normalized:
        H_ww += H_rr * np.outer(u, u) + H_rc * (np.outer(u, dc) + np.outer(dc, u)) + L_rho * proj / n
        H_aw += np.outer(H_rS * dS + H_rQ * dQ + H_rP * dP, u)
    H_aa = (
        H_SS * np.outer(dS, dS)
        + H_QQ * np.outer(dQ, dQ)
        + H_PP * np.outer(dP, dP)
        + H_SQ * (np.outer(dS, dQ) + np.outer(dQ, dS))
        + H_SP * (np.outer(dS, dP) + np.outer(dP, dS))
        + H_QP * (np.outer(dQ, dP) + np.outer(dP, dQ))
        + 2.0 * L_Q * np.eye(k)
    )
    H = np.empty((p + k, p + k))
    H[:p, :p], H[p:, p:], H[p:, :p], H[:p, p:] = H_ww, H_aa, H_aw, H_aw.T
    return H


def population_loss(w: Any, a: Any, *, w_star: Any, a_star: Any, model: Model | str = "resnet", shortcut: Any = None,
                    normalize: bool = False) -> float:
    """Population loss ``1/2 E[(f(Z; w, a) - f(Z; w*, a*))^2]`` under Gaussian input, in closed form.

    The loss is ``(a^T M a - 2 a^T N(phi) a* + a*^T M a*) / (4 pi)`` in the angle ``phi`` between the effective
    filter and ``w*`` (see the science page); it is exact, so simulations and fixed points are checked against it.

    Parameters
    ----------
    w : array_like
        Student filter, shape ``(p,)``. For the ResNet the residual branch (``w = 0`` is the network at its
        shortcut); for the weight-normalized CNN any nonzero vector.
    a : array_like
        Student second layer, shape ``(k,)``.
    w_star : array_like
        Teacher filter, shape ``(p,)``, of unit norm (or any nonzero vector with ``normalize=True``).
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture (:data:`theory.MODELS`).
    shortcut : array_like, optional
        The ResNet's shortcut direction ``v``, a nonzero ``(p,)`` vector (default ``1_p / sqrt(p)``).
    normalize : bool, default False
        Rescale ``w_star`` to unit norm instead of refusing it.

    Returns
    -------
    float
        The population loss, ``>= 0``; ``0`` exactly at the global minimum.

    Raises
    ------
    ValueError
        Naming the field: an empty, 2-D, non-finite or mismatched array, ``w_star`` not of unit norm, a zero
        effective filter (CNN ``w = 0``, ResNet ``w = -v``), a zero shortcut, an unknown model, or inputs so
        large that the result overflows float64.

    Examples
    --------
    The ResNet at its zero init has the loss of the zero network, ``L_ref = E[f*^2] / 2``:

    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> round(theory.population_loss(np.zeros(4), np.zeros(4), w_star=w_star, a_star=a_star), 6)
    0.429261
    >>> theory.population_loss(w_star, a_star, w_star=w_star, a_star=a_star, model="cnn")
    0.0
    """
    args = _inputs(w, a, w_star, a_star, model, shortcut, normalize)
    with float_guard("population_loss"):
        return finite_result(_loss(*args), "population_loss")


def population_gradient(w: Any, a: Any, *, w_star: Any, a_star: Any, model: Model | str = "resnet",
                        shortcut: Any = None, normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_w L, grad_a L)`` in closed form (chain rule through shortcut and normalization).

    ``grad_a L = (M a - N(phi) a*) / (2 pi)``; for the normalized models ``grad_w L`` is orthogonal to the
    effective filter, so GD never shrinks ``||w~||``.

    Parameters
    ----------
    w : array_like
        Student filter, shape ``(p,)``. For the ResNet the residual branch (``w = 0`` is the network at its
        shortcut); for the weight-normalized CNN any nonzero vector.
    a : array_like
        Student second layer, shape ``(k,)``.
    w_star : array_like
        Teacher filter, shape ``(p,)``, of unit norm (or any nonzero vector with ``normalize=True``).
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture (:data:`theory.MODELS`).
    shortcut : array_like, optional
        The ResNet's shortcut direction ``v``, a nonzero ``(p,)`` vector (default ``1_p / sqrt(p)``).
    normalize : bool, default False
        Rescale ``w_star`` to unit norm instead of refusing it.

    Returns
    -------
    grad_w : numpy.ndarray
        Gradient in ``w``, shape ``(p,)``.
    grad_a : numpy.ndarray
        Gradient in ``a``, shape ``(k,)``.

    Raises
    ------
    ValueError
        Naming the field: an empty, 2-D, non-finite or mismatched array, ``w_star`` not of unit norm, a zero
        effective filter (CNN ``w = 0``, ResNet ``w = -v``), a zero shortcut, an unknown model, or inputs so
        large that the result overflows float64.

    Examples
    --------
    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> gw, ga = theory.population_gradient(np.zeros(4), np.full(4, 0.1), w_star=w_star, a_star=a_star)
    >>> np.round(ga, 4)
    array([-0.159 ,  0.1317, -0.0863, -0.0427])
    >>> bool(abs(gw @ (np.zeros(4) + np.ones(4) / 2)) < 1e-15)  # orthogonal to w~ = w + v
    True
    """
    args = _inputs(w, a, w_star, a_star, model, shortcut, normalize)
    with float_guard("population_gradient"):
        grad_w, grad_a = _gradient(*args)
        return finite_result(grad_w, "population_gradient"), finite_result(grad_a, "population_gradient")


def population_hessian(w: Any, a: Any, *, w_star: Any, a_star: Any, model: Model | str = "resnet", shortcut: Any = None,
                       normalize: bool = False) -> np.ndarray:
    """Full ``(p+k) x (p+k)`` Hessian in ``(w, a)`` coordinates, ``w`` first.

    The only singular partial, ``L_cc ~ 1 / sin(phi)``, enters multiplied by ``sin(phi)^2``, so the Hessian is
    finite at ``phi = 0`` and ``pi``.

    Parameters
    ----------
    w : array_like
        Student filter, shape ``(p,)``. For the ResNet the residual branch (``w = 0`` is the network at its
        shortcut); for the weight-normalized CNN any nonzero vector.
    a : array_like
        Student second layer, shape ``(k,)``.
    w_star : array_like
        Teacher filter, shape ``(p,)``, of unit norm (or any nonzero vector with ``normalize=True``).
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture (:data:`theory.MODELS`).
    shortcut : array_like, optional
        The ResNet's shortcut direction ``v``, a nonzero ``(p,)`` vector (default ``1_p / sqrt(p)``).
    normalize : bool, default False
        Rescale ``w_star`` to unit norm instead of refusing it.

    Returns
    -------
    numpy.ndarray
        The symmetric Hessian, shape ``(p + k, p + k)``.

    Raises
    ------
    ValueError
        Naming the field: an empty, 2-D, non-finite or mismatched array, ``w_star`` not of unit norm, a zero
        effective filter (CNN ``w = 0``, ResNet ``w = -v``), a zero shortcut, an unknown model, or inputs so
        large that the result overflows float64.

    See Also
    --------
    tangent_hessian : the same without the flat scale direction of the normalized models.

    Examples
    --------
    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> H = theory.population_hessian(*theory.global_minimum(w_star, a_star), w_star=w_star, a_star=a_star)
    >>> H.shape, bool(np.allclose(H, H.T))
    ((8, 8), True)
    """
    args = _inputs(w, a, w_star, a_star, model, shortcut, normalize)
    with float_guard("population_hessian"):
        return finite_result(_hessian(*args), "population_hessian")


def tangent_basis(w: Any, k: int, *, model: Model | str = "resnet", shortcut: Any = None) -> np.ndarray:
    """Orthonormal basis (columns) of the ``(w, a)`` directions that change the function.

    Normalized models are invariant to the scale of ``w~``, so the direction ``(u, 0)`` is flat and dropped;
    the unnormalized CNN keeps all ``p + k`` directions.

    Parameters
    ----------
    w : array_like
        Student filter, shape ``(p,)``.
    k : int
        Length of the second layer.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).

    Returns
    -------
    numpy.ndarray
        Shape ``(p + k, p + k - 1)`` for the normalized models, ``(p + k, p + k)`` otherwise.

    Raises
    ------
    ValueError
        If ``w`` is not a finite vector or gives a zero effective filter.

    Examples
    --------
    >>> import numpy as np, theory
    >>> B = theory.tangent_basis(np.zeros(4), 4)           # the ResNet at w = 0: u = v
    >>> B.shape, bool(np.allclose(B.T @ B, np.eye(7)))
    ((8, 7), True)
    """
    model = Model.of(model)
    w = as_vector(w, "w")
    p = w.size
    if not model.normalized:
        return np.eye(p + k)
    wt = effective_filter(w, model, shortcut_vector(shortcut, p))
    n = norm(wt)
    if n == 0.0:
        raise ValueError("w must give a nonzero effective filter (w + shortcut for the ResNet)")
    u = np.concatenate([wt / n, np.zeros(k)])
    # Complete u to an orthonormal basis with a QR of [u | I] and drop the first column.
    q, _ = np.linalg.qr(np.column_stack([u, np.eye(p + k)]))
    return q[:, 1 : p + k]


def tangent_hessian(w: Any, a: Any, *, w_star: Any, a_star: Any, model: Model | str = "resnet", shortcut: Any = None,
                    normalize: bool = False) -> np.ndarray:
    """The Hessian restricted to the tangent space (``B^T H B`` with :func:`tangent_basis` ``B``).

    Fixed points of the normalized models are classified by this matrix: the full Hessian always has a zero
    eigenvalue along the flat scale direction.

    Parameters
    ----------
    w : array_like
        Student filter, shape ``(p,)``. For the ResNet the residual branch (``w = 0`` is the network at its
        shortcut); for the weight-normalized CNN any nonzero vector.
    a : array_like
        Student second layer, shape ``(k,)``.
    w_star : array_like
        Teacher filter, shape ``(p,)``, of unit norm (or any nonzero vector with ``normalize=True``).
    a_star : array_like
        Teacher second layer, shape ``(k,)``.
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture (:data:`theory.MODELS`).
    shortcut : array_like, optional
        The ResNet's shortcut direction ``v``, a nonzero ``(p,)`` vector (default ``1_p / sqrt(p)``).
    normalize : bool, default False
        Rescale ``w_star`` to unit norm instead of refusing it.

    Returns
    -------
    numpy.ndarray
        Shape ``(p + k - 1, p + k - 1)`` for the normalized models, ``(p + k, p + k)`` otherwise.

    Raises
    ------
    ValueError
        Naming the field: an empty, 2-D, non-finite or mismatched array, ``w_star`` not of unit norm, a zero
        effective filter (CNN ``w = 0``, ResNet ``w = -v``), a zero shortcut, an unknown model, or inputs so
        large that the result overflows float64.

    Examples
    --------
    At the global minimum the filter modes have eigenvalue ``||a*||^2 / 2`` and the ``a`` modes those of
    ``M / (2 pi)``:

    >>> import numpy as np, theory
    >>> w_star, a_star = np.eye(4)[0], np.array([1.0, -1.0, 0.5, 0.2])
    >>> T = theory.tangent_hessian(*theory.global_minimum(w_star, a_star), w_star=w_star, a_star=a_star)
    >>> np.round(np.linalg.eigvalsh(T), 4)
    array([0.3408, 0.3408, 0.3408, 0.9775, 1.145 , 1.145 , 1.145 ])
    """
    H = population_hessian(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=shortcut, normalize=normalize)
    B = tangent_basis(w, len(np.atleast_1d(a)), model=model, shortcut=shortcut)
    return B.T @ H @ B


def angle(
    w: Any, *, w_star: Any, model: Model | str = "resnet", shortcut: Any = None, normalize: bool = False
) -> float:
    """The angle ``phi`` in ``[0, pi]`` between the effective filter and ``w*``.

    Computed as ``atan2(||t||, u.w*)`` with ``t = (I - u u^T) w*``, which keeps full precision near ``0`` and
    ``pi`` (``arccos`` would not).

    Parameters
    ----------
    w : array_like
        Student filter, shape ``(p,)``.
    w_star : array_like
        Teacher filter of unit norm (or any nonzero vector with ``normalize=True``).
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model, default "resnet"
        The architecture.
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).
    normalize : bool, default False
        Rescale ``w_star`` to unit norm instead of refusing it.

    Returns
    -------
    float
        The angle in radians.

    Raises
    ------
    ValueError
        Naming the field, for bad arrays, mismatched lengths or a zero effective filter.

    Examples
    --------
    >>> import numpy as np, theory
    >>> round(theory.angle(np.zeros(4), w_star=np.eye(4)[0]), 6)   # u = v = 1/2: cos(phi) = 1/2
    1.047198
    """
    model = Model.of(model)
    w_star = unit_teacher(w_star, normalize=normalize)
    w = as_vector(w, "w", length=w_star.size, length_of="w_star")
    return geometry(w, w_star, model, shortcut_vector(shortcut, w.size)).phi


@dataclass(frozen=True)
class Landscape:
    """A teacher and a model: the loss surface with its closed forms and fixed points.

    ``Landscape(w_star, a_star, model="resnet")`` validates once; its methods take ``(w, a)``.  ``model`` may be a
    :class:`theory.Model`; it is stored as its name.
    """

    w_star: np.ndarray
    a_star: np.ndarray
    model: Model | str = "resnet"
    shortcut: np.ndarray | None = None

    def __post_init__(self) -> None:
        w_star = unit_teacher(self.w_star)
        object.__setattr__(self, "w_star", w_star)
        object.__setattr__(self, "a_star", as_vector(self.a_star, "a_star"))
        object.__setattr__(self, "model", check_model(self.model))
        object.__setattr__(self, "shortcut", shortcut_vector(self.shortcut, w_star.size))

    @property
    def p(self) -> int:
        return self.w_star.size

    @property
    def k(self) -> int:
        return self.a_star.size

    def _kw(self) -> dict[str, Any]:
        return {"w_star": self.w_star, "a_star": self.a_star, "model": self.model, "shortcut": self.shortcut}

    def loss(self, w: Any, a: Any) -> float:
        return population_loss(w, a, **self._kw())

    def gradient(self, w: Any, a: Any) -> tuple[np.ndarray, np.ndarray]:
        return population_gradient(w, a, **self._kw())

    def hessian(self, w: Any, a: Any) -> np.ndarray:
        return population_hessian(w, a, **self._kw())

    def tangent_hessian(self, w: Any, a: Any) -> np.ndarray:
        return tangent_hessian(w, a, **self._kw())

    def angle(self, w: Any) -> float:
        return angle(w, w_star=self.w_star, model=self.model, shortcut=self.shortcut)
