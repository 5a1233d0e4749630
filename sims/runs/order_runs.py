"""Runs known only by their order parameters (``sims.simulate(vectors=False)``): the reduced engine's start and
constants from the drawn order parameters, the initial angle and norm, and the result's ``order`` columns.

The order parameters (:func:`sims.runs.order_samplers.draw_order_parameters`) are exactly the reduced engine's
inputs (:mod:`sims.engines.reduced`): the start ``u = c0``, ``r1 = r0``, ``r2 = 0``, ``(x, y, z) = (1, 0, -1)``
(``a = a0``) and the constants ``Q0, S0, P0, Ss, Qs`` (the shortcut's coordinates ``v_u, v_1, v_2`` only serve a
moving shortcut, which this path does not run: 0).  Nothing here is of size ``k`` or ``p``.
"""

from __future__ import annotations

import numpy as np

from sims.runs.order_samplers import OrderParameters
from theory import closed_forms as tcf

#: Keys of the initial order parameters in ``SimulationResult.order`` (:class:`OrderParameters`' fields).
INITIAL_FIELDS: tuple[str, ...] = OrderParameters._fields
#: Keys of the final coordinates in ``SimulationResult.order``: ``w~ = u w* + r1 e1``, ``a = x a0 + y 1 + (1 + z) a*``.
FINAL_FIELDS: tuple[str, ...] = ("u", "r1", "x", "y", "z")
#: Prefix of the order columns in ``SimulationResult.extras``.
PREFIX = "order."


def engine_inputs(op: OrderParameters) -> tuple[np.ndarray, np.ndarray]:
    """``(start, consts)`` of :class:`sims.engines.reduced.ReducedGD` (columns ``STATE_FIELDS``, ``CONST_FIELDS``)
    from the order parameters: the same arrays :func:`sims.runs.plain.reduced_coordinates` computes from vectors
    with these dot products."""
    R = op.c0.shape[0]
    start = np.zeros((R, 6))
    start[:, 0] = op.c0
    start[:, 1] = op.r0
    start[:, 3] = 1.0
    start[:, 5] = -1.0
    consts = np.zeros((R, 8))
    for j, name in enumerate(("Q0", "S0", "P0", "Ss", "Qs")):
        consts[:, j] = getattr(op, name)
    return start, consts


def initial_angle(op: OrderParameters) -> tuple[np.ndarray, np.ndarray]:
    """``(phi0, norm0)``: the angle between ``w~0`` and ``w*`` (``atan2(r0, c0)``, exact at 0 and pi) and
    ``||w~0|| = sqrt(c0^2 + r0^2)``."""
    return np.arctan2(op.r0, op.c0), np.sqrt(op.c0 * op.c0 + op.r0 * op.r0)


def gram(op: OrderParameters) -> tuple[np.ndarray, ...]:
    """``(Q0, S0, P0, Ss, Qs)``: the Gram entries of ``(a0, 1, a*)`` (with ``k = 1.1``)."""
    return op.Q0, op.S0, op.P0, op.Ss, op.Qs


def order_columns(op: OrderParameters, final: np.ndarray) -> dict[str, np.ndarray]:
    """The ``extras`` entries behind ``SimulationResult.order``: the initial order parameters and the final
    coordinates (``final``: the engine's ``out``, rows ``u, r1, r2, x, y, z``), keys prefixed :data:`PREFIX`."""
    out = {PREFIX + name: np.ascontiguousarray(getattr(op, name)) for name in INITIAL_FIELDS}
    for name, j in zip(FINAL_FIELDS, (0, 1, 3, 4, 5), strict=True):
        out[PREFIX + name] = np.ascontiguousarray(final[:, j])
    return out


def from_vectors(WT0: np.ndarray, WS: np.ndarray, A0: np.ndarray, AS: np.ndarray,
                 v: np.ndarray) -> OrderParameters:
    """The order parameters of runs given as vectors (effective filters ``WT0``, teachers ``WS, AS``, heads ``A0``,
    shortcut direction ``v``), computed as :func:`sims.runs.plain.reduced_coordinates` does: a run started from
    them follows the vector-built reduced run bit for bit (tests compare the two paths)."""
    c0 = np.einsum("ij,ij->i", WT0, WS)
    r0 = np.linalg.norm(WT0 - c0[:, None] * WS, axis=1)
    return OrderParameters(c0, r0, A0.sum(axis=1), np.einsum("ij,ij->i", A0, A0), np.einsum("ij,ij->i", A0, AS),
                           AS.sum(axis=1), np.einsum("ij,ij->i", AS, AS), WS @ v)


def unnormalized_rates(glob: np.ndarray, etas: tuple[np.ndarray, np.ndarray], sizes: tuple[int, int],
                       final: np.ndarray, consts: np.ndarray, flow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(rate^2, share)`` of the unnormalized CNN's runs ``glob`` (NaN elsewhere) from their final coordinates
    ``final`` (rows ``u, r1, r2, x, y, z``) and constants ``consts`` (``Q0, S0, P0, Ss, Qs, ...``): what
    ``sims.runs.simulate._unnormalized_rate`` computes from the vectors (its docstring), without them.

    The Hessian maps ``span{w~, w*} x span{a0, 1, a*}`` into itself and acts on the complements as multiples of
    the identity (``-L_c c / n^2 + L_rho / n`` on the filter's, ``2 L_Q`` on the head's), and the rescaling
    direction and the displacement from the minimum lie in that small space: the modes are those of the Hessian
    written in an orthonormal basis of it (at most 2 + 3 coordinates, the head's from the Gram matrix of
    ``(a0, 1, a*)``) and the complements' (which hold no loss).  ``flow``: gradient flow, whose modes contract
    by ``exp(-mu)`` per unit of time instead of ``|1 - mu|`` per step."""
    ew, ea = etas
    R = glob.shape[0]
    rate2 = np.full(R, np.nan)
    share = np.full(R, np.nan)
    for r in np.flatnonzero(glob):
        rate, share[r] = _unnormalized_rate_gram(final[r], consts[r], float(ew[r]), float(ea[r]), sizes, flow)
        rate2[r] = rate**2
    return rate2, share


def _head_frame(consts: np.ndarray, k: int) -> np.ndarray:
    """Rows: coordinates of ``a0, 1, a*`` in an orthonormal basis of ``min(k, 3)`` directions holding them (from
    the eigendecomposition of their Gram matrix; extra directions where it is singular are complement ones)."""
    Q0, S0, P0, Ss, Qs = consts[:5]
    G = np.array([[Q0, S0, P0], [S0, float(k), Ss], [P0, Ss, Qs]])
    lam, V = np.linalg.eigh(G)
    m = min(k, 3)
    return V[:, 3 - m:] * np.sqrt(np.maximum(lam[3 - m:], 0.0))[None, :]


def _unnormalized_rate_gram(state: np.ndarray, consts: np.ndarray, eta_w: float, eta_a: float,
                            sizes: tuple[int, int], flow: bool = False) -> tuple[float, float]:
    """One run of :func:`unnormalized_rates`: ``(rate, share)``."""
    k, p = sizes
    if not (eta_w > 0 and eta_a > 0):
        return 1.0, float("nan")
    u0, r1, _, x, y, z = state
    Ss, Qs = consts[3], consts[4]
    dw = min(p, 2)
    wt, ws = np.array([u0, r1])[:dw], np.array([1.0, 0.0])[:dw]
    a0c, onec, asc = _head_frame(consts, k)
    a = x * a0c + y * onec + (1.0 + z) * asc
    n = float(np.linalg.norm(wt))
    uu = wt / n
    c_raw = float(uu @ ws)
    t = ws - c_raw * uu
    s_raw = float(np.linalg.norm(t))
    h = float(np.hypot(c_raw, s_raw))
    c, s = c_raw / h, s_raw / h
    args = (n, float(np.arctan2(s_raw, c_raw)), c, s, float(a @ onec), float(a @ a), float(a @ asc), Ss, Qs)
    L_rho, L_c, L_S, L_Q, L_P = tcf.gradient(*args)
    (H_rr, H_rc, H_rS, H_rQ, H_rP, H_cc_s2, H_cS, H_cQ, H_cP, H_SS, H_SQ, H_SP, H_QQ, H_QP, H_PP) = tcf.hessian(*args)
    proj = np.eye(dw) - np.outer(uu, uu)
    dc = t / n
    e = t / s if s > 0.0 else np.zeros(dw)
    H_ww = (H_cc_s2 * np.outer(e, e) / n**2 - L_c * (np.outer(uu, t) + np.outer(t, uu) + c * proj) / n**2
            + H_rr * np.outer(uu, uu) + H_rc * (np.outer(uu, dc) + np.outer(dc, uu)) + L_rho * proj / n)
    dS, dQ, dP = onec, 2.0 * a, asc
    H_aw = np.outer(H_cS * dS + H_cQ * dQ + H_cP * dP, dc) + np.outer(H_rS * dS + H_rQ * dQ + H_rP * dP, uu)
    H_aa = (H_SS * np.outer(dS, dS) + H_QQ * np.outer(dQ, dQ) + H_PP * np.outer(dP, dP)
            + H_SQ * (np.outer(dS, dQ) + np.outer(dQ, dS)) + H_SP * (np.outer(dS, dP) + np.outer(dP, dS))
            + H_QP * (np.outer(dQ, dP) + np.outer(dP, dQ)) + 2.0 * L_Q * np.eye(a.size))
    H = np.block([[H_ww, H_aw.T], [H_aw, H_aa]])
    d = dw + a.size
    dh = np.sqrt(np.concatenate([np.full(dw, eta_w), np.full(a.size, eta_a)]))
    S = dh[:, None] * H * dh[None, :]
    ev = np.concatenate([wt, -a]) / dh
    q, _ = np.linalg.qr(np.column_stack([ev / np.linalg.norm(ev), np.eye(d)]))
    B = q[:, 1:d]
    mu, U = np.linalg.eigh(B.T @ S @ B)
    disp = np.concatenate([wt - n * ws, a - asc / n])
    energy = np.maximum(mu, 0.0) * (U.T @ (B.T @ (disp / dh))) ** 2 / 2.0
    # The complements: the filter's (p - 2 directions) and the head's (k - 3), without loss.
    extra = [eta_w * (-L_c * c / n**2 + L_rho / n)] * (p > dw) + [eta_a * 2.0 * L_Q] * (k > a.size)
    mu = np.concatenate([mu, extra])
    energy = np.concatenate([energy, np.zeros(len(extra))])
    order = np.argsort(mu, kind="stable")
    factor = np.exp(-mu[order]) if flow else np.abs(1.0 - mu[order])
    slow = int(np.argmax(factor))
    total = float(energy.sum())
    return float(factor[slow]), (float(energy[order][slow] / total) if total > 0 else float("nan"))
