"""Closed-form population loss and its partials in the invariants. GENERATED, do not edit.

Regenerate with ``python -m theory.codegen`` (sympy 1.14.0); a test fails if this file differs.
Arguments: rho, phi, c, s, S, Q, P, Ss, Qs; ``c, s`` are cos and sin of ``phi`` computed robustly by the caller.
``rho`` is 1 for weight-normalized models and ``||w||`` for the unnormalized CNN.
"""

import math


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
