"""Closed-form theory of shallow CNNs and ResNets under Gaussian input (pure math, no simulation).

Symbolic derivations (:mod:`theory.gaussian`, :mod:`theory.derivation`) are generated into numba-compatible
scalar code (:mod:`theory.closed_forms`, by :mod:`theory.codegen`); :mod:`theory.landscape` assembles the loss,
gradient and Hessian in ``(w, a)``; :mod:`theory.algebra` (the second layer's algebra: ``a``-Hessian,
``L_ref``, spurious point, saddle), :mod:`theory.fixed_points` and :mod:`theory.step_sizes` answer the questions
simulations ask; :class:`theory.Model` names the architecture.
"""

from theory.algebra import (
    G_MAX,
    a_hessian_eigenvalues,
    apply_m_inverse,
    loss_ref,
    m_eigenvalues,
    optimal_alignment,
    saddle_angles,
    saddle_equation,
    saddle_kernel_value,
    spurious_exists,
    spurious_margin,
)
from theory.fixed_points import (
    StationaryPoint,
    alignment_at,
    arc_cosine,
    classify_stationary_point,
    filter_at_angle,
    global_minimum,
    matrix_M,
    matrix_N,
    optimal_a,
    reduced_loss,
    saddle_angle,
    saddle_point,
    spurious_minimum,
    spurious_point,
)
from theory.landscape import (
    Landscape,
    angle,
    population_gradient,
    population_hessian,
    population_loss,
    tangent_basis,
    tangent_hessian,
)
from theory.model import CNN, CNN_UNNORMALIZED, RESNET, Model
from theory.step_sizes import gd_linear_rate, global_minimum_rate, max_stable_eta_a
from theory.validation import MODELS

__all__ = [
    "CNN",
    "CNN_UNNORMALIZED",
    "G_MAX",
    "MODELS",
    "RESNET",
    "Model",
    "Landscape",
    "StationaryPoint",
    "a_hessian_eigenvalues",
    "alignment_at",
    "angle",
    "apply_m_inverse",
    "arc_cosine",
    "classify_stationary_point",
    "filter_at_angle",
    "gd_linear_rate",
    "global_minimum",
    "global_minimum_rate",
    "matrix_M",
    "matrix_N",
    "loss_ref",
    "m_eigenvalues",
    "max_stable_eta_a",
    "optimal_a",
    "optimal_alignment",
    "population_gradient",
    "population_hessian",
    "population_loss",
    "reduced_loss",
    "saddle_angle",
    "saddle_angles",
    "saddle_equation",
    "saddle_kernel_value",
    "saddle_point",
    "spurious_exists",
    "spurious_margin",
    "spurious_minimum",
    "spurious_point",
    "tangent_basis",
    "tangent_hessian",
]
