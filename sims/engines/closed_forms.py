"""numba-compiled versions of the generated closed forms in :mod:`theory.closed_forms`.

``theory`` emits plain Python with :mod:`math` only; this module compiles it, so the formulas the kernels use are
exactly the ones the theory tests check.
"""

from __future__ import annotations

from numba import njit

from theory import closed_forms as _cf

arc_cosine = njit(cache=True)(_cf.arc_cosine)
loss = njit(cache=True)(_cf.loss)
gradient = njit(cache=True)(_cf.gradient)
hessian = njit(cache=True)(_cf.hessian)
#: ``(k + pi - 1) ||a*||^2 - pi (1.a*)^2`` from ``k, 1.a*, ||a*||^2``: > 0 iff the spurious point exists.
spurious_margin = njit(cache=True)(_cf.spurious_margin)
#: The order-parameter forms of :mod:`theory.order_parameters` (the reduced engine, :mod:`sims.engines.reduced`).
deviation_loss = njit(cache=True)(_cf.deviation_loss)
deviation_gradient = njit(cache=True)(_cf.deviation_gradient)
gram_deviations = njit(cache=True)(_cf.gram_deviations)
scaled_deviations = njit(cache=True)(_cf.scaled_deviations)
