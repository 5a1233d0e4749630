"""A shortcut whose weight fades to zero: ``u_t = (w + lambda_t v) / ||w + lambda_t v||``, ``lambda_t: 1 -> 0``.

Nothing new has to be derived symbolically: at every step the network is the CNN with the effective filter
``w~_t = w + lambda_t v``, so (writing ``L_cnn`` for the CNN population loss of :mod:`theory.landscape`)

- loss at step ``t``: ``L_t(w, a) = L_cnn(w + lambda_t v, a)``;
- gradients: ``dw~/dw = I``, hence ``grad_w L_t = grad_{w~} L_cnn(w~_t, a) = L_c (I - u u^T) w* / ||w~_t||``
  (orthogonal to ``w~_t``) and ``grad_a L_t = grad_a L_cnn``: the fixed-``v`` ResNet formulas with ``v`` replaced by
  ``lambda_t v``;
- GD on ``w`` moves the effective filter by the GD step *plus a jump*:
  ``w~_{t+1} = w_{t+1} + lambda_{t+1} v = (w~_t - eta_w grad) + (lambda_{t+1} - lambda_t) v``.
  The GD part never shrinks ``||w~||`` (it is orthogonal to ``w~``); the jump can, so unlike the fixed-shortcut
  ResNet the effective filter may pass near 0 while the shortcut fades;
- to first order the jump changes the loss by ``(lambda_{t+1} - lambda_t) dL/dlambda`` with
  ``dL/dlambda = v . grad_{w~} L_cnn = L_c (v.w* - (u.v)(u.w*)) / ||w~||``.  It vanishes at ``u = w*`` (the minimum
  is stationary), so a slow fade costs only second order per step while GD re-aligns the filter; an abrupt removal
  is a finite jump: the ResNet's minima form the ray ``w = mu w* - v`` and removing ``v`` turns the filter to
  ``mu w* - v``, off the minimum;
- where the abrupt removal lands: ResNet GD never shrinks ``||w + v||`` from ``||v|| = 1``, so ``mu >= 1``; for a
  teacher with ``v.w* >= 0`` (the cap of the liu2019 setting) ``cos(phi) = (mu - v.w*) / ||mu w* - v|| >= 0``, i.e.
  ``phi <= pi/2``, where ``a(phi).a* > 0`` (SCIENCE.md 3), and ``a = a*`` gives ``a.a* = ||a*||^2 > 0``: the plain
  CNN restarts on the global side of the saddle (no proof of convergence, but it explains why removing a converged
  shortcut does not send runs to the spurious point);
- once ``lambda_t = 0`` the dynamics are exactly GD on the plain CNN from the filter ``w`` that the fading phase
  produced, and the fixed points are the CNN's (SCIENCE.md 3).

The functions below evaluate these at a given ``lambda``; the simulation kernel is :mod:`sims.methods.distill`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from theory.landscape import population_gradient, population_loss
from theory.validation import as_vector, shortcut_vector


def _lam(lam: Any) -> float:
    try:
        x = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a finite number >= 0; got {lam!r}") from None
    if not (np.isfinite(x) and x >= 0.0):
        raise ValueError(f"lam must be a finite number >= 0; got {lam!r}")
    return x


def fading_filter(w: Any, lam: Any, *, shortcut: Any = None) -> np.ndarray:
    """The effective filter ``w + lambda v`` (``v`` the unit shortcut direction, default ``1_p / sqrt(p)``)."""
    w = as_vector(w, "w")
    return w + _lam(lam) * shortcut_vector(shortcut, w.size)


def fading_loss(w: Any, a: Any, lam: Any, *, w_star: Any, a_star: Any, shortcut: Any = None) -> float:
    """Population loss of the network with shortcut weight ``lam``: ``L_cnn(w + lam v, a)``."""
    return population_loss(fading_filter(w, lam, shortcut=shortcut), a, w_star=w_star, a_star=a_star, model="cnn")


def fading_gradient(
    w: Any, a: Any, lam: Any, *, w_star: Any, a_star: Any, shortcut: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_w, grad_a)`` at shortcut weight ``lam``; ``grad_w = grad_{w~}`` because ``dw~/dw = I``."""
    wt = fading_filter(w, lam, shortcut=shortcut)
    return population_gradient(wt, a, w_star=w_star, a_star=a_star, model="cnn")


def fading_dloss_dlam(w: Any, a: Any, lam: Any, *, w_star: Any, a_star: Any, shortcut: Any = None) -> float:
    """``dL/dlambda = v . grad_{w~} L_cnn``: the first-order loss change per unit change of the shortcut weight."""
    w = as_vector(w, "w")
    v = shortcut_vector(shortcut, w.size)
    grad_w, _ = fading_gradient(w, a, lam, w_star=w_star, a_star=a_star, shortcut=v)
    return float(v @ grad_w)
