"""Closed-form population loss and its partials in the invariants. GENERATED, do not edit.

Regenerate with ``python -m theory.codegen`` (sympy 1.14.0); a test fails if this file differs.
Arguments: rho, phi, c, s, S, Q, P, Ss, Qs; ``c, s`` are cos and sin of ``phi`` computed robustly by the caller.
``rho`` is 1 for weight-normalized models and ``||w||`` for the unnormalized CNN.
The second-layer functions (``m_eigenvalues`` on) are printed in the operation order of
``theory.derivation.arranged``, proven equal to their derivation there.
"""

import math

#: max over phi in [0, pi] of (pi - phi) sin(phi), attained at PHI_G_MAX (tan(phi) = pi - phi).
G_MAX = 1.8197057411596531
PHI_G_MAX = 1.112834815479359


def arc_cosine(phi, c, s):
    """g(phi) = 2 pi E[sigma(u.z) sigma(u*.z)] (arc-cosine kernel)."""
    return -c*phi + math.pi*c + s


def loss(rho, phi, c, s, S, Q, P, Ss, Qs):
    """Population loss L."""
    return (1/4)*(2*P*c*phi*rho - 2*P*rho*s + 2*P*rho - Q*rho**2 - Qs + S**2*rho**2 - 2*S*Ss*rho + Ss**2 + math.pi*(-2*P*c*rho + Q*rho**2 + Qs))/math.pi


def gradient(rho, phi, c, s, S, Q, P, Ss, Qs):
    """First partials (L_rho, L_c, L_S, L_Q, L_P)."""
    return (
        (1/2)*(P*c*phi - P*s + P - Q*rho + S**2*rho - S*Ss + math.pi*(-P*c + Q*rho))/math.pi,
        (1/2)*P*rho*(phi - math.pi)/math.pi,
        (1/2)*rho*(S*rho - Ss)/math.pi,
        (1/4)*rho**2*(-1 + math.pi)/math.pi,
        (1/2)*rho*(c*phi - math.pi*c - s + 1)/math.pi,
    )


def hessian(rho, phi, c, s, S, Q, P, Ss, Qs):
    """Second partials, pairs (rhorho, rhoc, rhoS, rhoQ, rhoP, cc, cS, cQ, cP, SS, SQ, SP, QQ, QP, PP); the cc entry is L_cc * s**2 (finite at phi in {0, pi})."""
    return (
        (1/2)*(-Q + math.pi*Q + S**2)/math.pi,
        (1/2)*P*(phi - math.pi)/math.pi,
        (S*rho - 1/2*Ss)/math.pi,
        (1/2)*rho*(-1 + math.pi)/math.pi,
        (1/2)*(c*phi - math.pi*c - s + 1)/math.pi,
        -1/2*P*rho*s/math.pi,
        0.0,
        0.0,
        (1/2)*rho*(phi - math.pi)/math.pi,
        (1/2)*rho**2/math.pi,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    )


def end_to_end(norm, N):
    """(c_perp, c_par): a balanced depth-N factorization of a row w (norm = ||w||) moves it by dw/dt = -(c_perp g_perp + c_par g_par), g = grad L split orthogonal to / along w (theory.expansion)."""
    return (
        norm**(2 - 2/N),
        N*norm**(2 - 2/N),
    )


def m_eigenvalues(k):
    """(k + pi - 1, pi - 1): eigenvalues of M = 1 1^T + (pi - 1) I along 1 and orthogonal."""
    return (
        (k + math.pi) - 1,
        math.pi - 1,
    )


def a_hessian_eigenvalues(k):
    """(lambda_1, lambda_perp) = eigenvalues of the a-Hessian M / (2 pi) (rho = 1)."""
    return (
        ((k + math.pi) - 1)/(2*math.pi),
        (math.pi - 1)/(2*math.pi),
    )


def loss_ref(Ss, Qs):
    """L_ref = E[f*^2] / 2, the loss of the zero network, from 1.a* and ||a*||^2."""
    return (Ss*Ss + (math.pi - 1)*Qs)/(4*math.pi)


def optimal_alignment(g, k, Ss, Qs):
    """The alignment ``a(phi).a*`` of the loss-optimal second layer, from ``g = g(phi)``.

    ``a(phi) = M^{-1} N(phi) a*`` minimizes the loss at fixed angle (:func:`theory.optimal_a`); its alignment
    with the teacher is ``S*^2 / (k + pi - 1) + (g - 1) (Q* - S*^2 / (k + pi - 1)) / (pi - 1)``, so it needs only
    the sums ``S* = 1.a*`` and ``Q* = ||a*||^2``.  Its sign decides the basin (positive: GD shrinks ``phi``), and it
    vanishes at the saddle angle.  Generated scalar code, numba-callable (the engines compile it); plain
    arithmetic, so NumPy arrays broadcast.

    Parameters
    ----------
    g : float or numpy.ndarray
        The arc-cosine kernel ``g(phi) = sin(phi) + (pi - phi) cos(phi)`` (:func:`theory.arc_cosine`).
    k : int
        Number of patches.
    Ss, Qs : float or numpy.ndarray
        The teacher's ``1.a*`` and ``||a*||^2``.

    Returns
    -------
    float or numpy.ndarray
        ``a(phi).a*``.

    Examples
    --------
    >>> import numpy as np, theory
    >>> a_star = np.array([1.0, -1.0, 0.5, 0.2])
    >>> S, Q = a_star.sum(), a_star @ a_star
    >>> g = np.array([theory.arc_cosine(0.0), theory.arc_cosine(np.pi)])
    >>> np.round(theory.optimal_alignment(g, 4, S, Q), 6)      # ||a*||^2 at phi = 0, negative at pi
    array([ 2.29    , -0.952259])
    """
    return (Ss*Ss)/((k + math.pi) - 1) + ((g - 1)*(Qs - (Ss*Ss)/((k + math.pi) - 1)))/(math.pi - 1)


def saddle_kernel_value(k, Ss, Qs):
    """g(phi_s): the kernel value where a(phi).a* = 0 (the saddle angle's)."""
    return 1 - ((math.pi - 1)*((Ss*Ss)/((k + math.pi) - 1)))/(Qs - (Ss*Ss)/((k + math.pi) - 1))


def spurious_margin(k, Ss, Qs):
    """(k + pi - 1) Qs - pi Ss^2: > 0 iff the spurious point exists (unscaled)."""
    return ((k + math.pi) - 1)*Qs - Ss*Ss*math.pi


def deviation_loss(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs):
    """Population loss L in the deviations of b = rho a from a* (theory.order_parameters); omc = 1 - cos(phi)."""
    return (1/4)*(Dq*(-1 + math.pi) + Ds**2 + (2*Dp + 2*Qs)*(c*phi + math.pi*omc - s))/math.pi


def deviation_gradient(rho, phi, c, s, omc, Ds, Dp, Dq, Ss, Qs):
    """(L_rho, L_c, L_S, L_Q, L_Pa = 2 L_Q + L_P) in the deviations (theory.order_parameters)."""
    return (
        (1/2)*(Ds*(Ds + Ss) + (-1 + math.pi)*(Dp + Dq) + (Dp + Qs)*(c*phi + math.pi*omc - s))/(math.pi*rho),
        (1/2)*(Dp + Qs)*(phi - math.pi)/math.pi,
        (1/2)*Ds*rho/math.pi,
        (1/4)*rho**2*(-1 + math.pi)/math.pi,
        (1/2)*rho*(c*phi + math.pi*omc - s + (-1 + math.pi)*(rho - 1))/math.pi,
    )


def gram_deviations(x, y, z, Q0, S0, P0, k, Ss, Qs):
    """(Ds, Dp, Dq) = (1.d, d.a*, ||d||^2) of d = x a0 + y 1 + z a*, from the Gram matrix of (a0, 1, a*) (theory.order_parameters)."""
    return (
        S0*x + Ss*z + k*y,
        P0*x + Qs*z + Ss*y,
        2*P0*x*z + Q0*x**2 + Qs*z**2 + 2*S0*x*y + 2*Ss*y*z + k*y**2,
    )


def scaled_deviations(rho, Ds, Dp, Dq, Ss, Qs):
    """(Ds, Dp, Dq) of b = rho a from those of a (theory.order_parameters)."""
    return (
        Ds*rho + Ss*(rho - 1),
        Dp*rho + Qs*(rho - 1),
        2*Dp*rho*(rho - 1) + Dq*rho**2 + Qs*(rho - 1)**2,
    )


def flow_field(u, r1, r2, x, y, z, inv_n, L_rho, L_c, L_S, L_Q, L_Pa, eta_w, eta_a, dlam, vu, v1, v2):
    """d(u, r1, r2, x, y, z)/dt of gradient flow with per-layer rates (eta_w, eta_a) and a shortcut weight moving at rate dlam, inv_n = 1/||w~||; L_rho = 0 for the weight-normalized models (theory.order_parameters)."""
    return (
        dlam*vu - eta_w*(L_c*inv_n**3*(r1**2 + r2**2) + L_rho*inv_n*u),
        dlam*v1 - eta_w*(-L_c*inv_n**3*r1*u + L_rho*inv_n*r1),
        dlam*v2 - eta_w*(-L_c*inv_n**3*r2*u + L_rho*inv_n*r2),
        -2*L_Q*eta_a*x,
        -eta_a*(2*L_Q*y + L_S),
        -eta_a*(L_Pa + 2*L_Q*z),
    )
