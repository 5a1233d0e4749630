"""Basins of attraction of gradient flow in the plane of starts ``(phi_0, a_0 = t a*)``, and their boundary.

**The plane.**  The teacher is ``w* = e_1`` and ``a* = (e_1 - e_2) / sqrt(2)`` (``||a*|| = 1``, ``1.a* = 0``: the
spurious point exists, :func:`sims.plots.teacher_with_ratio` with ratio 0); a start is the effective filter of
norm 1 at angle ``phi_0`` to ``w*`` (:func:`theory.filter_at_angle`) and the head ``a_0 = t a*``.  In the order
parameters of :mod:`sims.engines.reduced` such a start is ``c0 = cos phi_0``, ``r0 = sin phi_0`` and the Gram
entries ``a0.a0 = t^2``, ``1.a0 = 0``, ``a0.a* = t``, ``1.a* = 0``, ``a*.a* = 1`` (exact, nothing of size ``k`` or
``p``), and the flow runs on them (``simulate(algorithm="flow", vectors=False)``'s pipeline,
:func:`sims.runs.simulate.run_without_vectors`).

**The plane is invariant, so the boundary is the saddle's stable manifold in it.**  The head stays in ``span{a_0,
1, a*} = span{1, a*}``, ``a = alpha 1 + beta a*``; with ``1.a* = 0`` the head's flow gives ``d alpha / dt = -eta_a
(2 L_Q + k rho^2 / (2 pi)) alpha`` (``L_S = rho 1.(b - a*) / (2 pi) = rho^2 k alpha / (2 pi)``), so ``alpha = 0``
stays 0; for the weight-normalized models ``||w~||`` is conserved too.  The flow from the plane is therefore a flow
on the plane's two coordinates ``(phi, beta = a.a* / ||a*||^2)``, whose stationary points are the global minimum
``(0, 1)``, the spurious minimum at ``phi = pi`` and the saddle ``(phi_s, a(phi_s).a*)`` (the optimal head at
``phi_s`` has ``1.a = 0`` as well; for this teacher ``phi_s = pi / 2`` and ``a(phi_s) = 0``).  The basins of the
two minima are separated by the saddle's stable manifold: a curve through the saddle, which :func:`boundary`
computes.

**Provable stops.**  The runs stop as soon as their fate is provable: ``trapped`` (the flow engine's inequality
that puts a state in the spurious basin) or a loss below ``loss_tol = 1e-6 L_ref`` (:data:`TOLERANCES`).  The
flow never increases the loss, and every other stationary point lies far above that level (the saddle at
``L_ref``, the spurious minimum at ``0.78 L_ref`` for this teacher), so a state below it lies in the component of
the sublevel set that holds the global minimum and only it, and flows there.  Only the outcome matters: the map
takes the solver's tolerances :data:`MAP_FLOW` (``rtol = 1e-6``, ``atol = 1e-9``); on the 400 x 400 grid of the
docs' figure they give the same outcome at every start as the engine's defaults (``1e-10``, ``1e-12``) in a
fifth of the time (measured: 3.5 s against 18 s on the 2-core machine).  :func:`boundary` bisects with the
defaults (its probes come within ``tol`` of the manifold, where a looser solver could decide the side wrongly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import theory
from sims.runs import simulate as _sim
from sims.runs.flow import Flow
from sims.runs.order_samplers import OrderParameters
from sims.runs.schedules import Schedule, optimal_eta_a
from sims.runs.simulate import SimulationResult, Tolerances

#: The solver's tolerances for outcome maps: loose, since only the outcome is kept (module docstring).
MAP_FLOW = Flow(rtol=1e-6, atol=1e-9)
#: Stops of the plane's runs: a loss of ``1e-6 L_ref`` already proves convergence to the global minimum.
TOLERANCES = Tolerances(loss_tol=1e-6)
#: Stops of :func:`boundary`'s probes: no ``grad_tol`` stop, so that a probe that passes near the saddle goes on
#: until it leaves it towards one of the minima (it does unless it starts on the manifold to the solver's error).
BOUNDARY_TOLERANCES = Tolerances(loss_tol=1e-6, grad_tol=0.0)
#: The plotted ranges of the start's angle ``phi_0`` and of ``t`` (``a_0 = t a*``).
PHI_RANGE = (0.02, math.pi - 0.02)
T_RANGE = (-1.5, 1.5)
#: The two kinds of lines :func:`boundary` bisects along: ``"phi"`` (lines of fixed ``t``, ``phi_0`` varies) and
#: ``"t"`` (lines of fixed ``phi_0``).
ALONG = ("phi", "t")


def plane_teacher(k: int) -> np.ndarray:
    """The plane's teacher head ``a* = (e_1 - e_2) / sqrt(2)``, shape ``(k,)``.

    Unit norm and ``1.a* = 0``, so the spurious point exists (the teacher of :func:`sims.plots.teacher_with_ratio`
    with ratio 0, the one :func:`sims.plots.basins_data` draws its plane with).

    Parameters
    ----------
    k : int
        Number of patches, ``>= 2``.

    Returns
    -------
    numpy.ndarray
        ``a*``, shape ``(k,)``.

    Raises
    ------
    ValueError
        If ``k`` is not an integer ``>= 2``.

    Examples
    --------
    >>> from sims.runs import basins
    >>> basins.plane_teacher(3).round(4).tolist()
    [0.7071, -0.7071, 0.0]
    """
    k = _sim._check_int(k, "k", 2)
    a_star = np.zeros(k)
    a_star[0], a_star[1] = 1.0, -1.0
    return a_star / math.sqrt(2.0)


def plane_runs(phi0: Any, t: Any, *, model: str = "cnn", k: int = 4, p: int = 4, steps: int = 4000,
               eta_w: float = 0.25, eta_a: float | None = None, flow: Flow | None = None,
               tolerances: Tolerances | None = None, n_record: int = 2, threads: int | None = None
               ) -> SimulationResult:
    """Gradient flow from the starts ``(phi0[i], a_0 = t[i] a*)`` of the plane, one run per pair.

    The runs are built from their order parameters (module docstring) and integrated by the flow engine on the
    order parameters alone, at constant rates ``(eta_w, eta_a)``, up to flow time ``steps``; they are classified
    as every run is (``result.outcome``).  Nothing of size ``k`` or ``p`` is made, so a 400 x 400 grid is one
    call.

    Parameters
    ----------
    phi0, t : array_like
        Starting angles in ``[0, pi]`` and head coefficients (finite), broadcast to a common shape and flattened.
    model : {"cnn", "resnet", "cnn-unnormalized"}, default "cnn"
        The network.
    k, p : int, default 4
        Patches (``>= 2``: the teacher needs two coordinates) and patch dimension (``>= 2``).
    steps : int, default 4000
        The flow time at which a run still undecided stops (``not_converged``).
    eta_w, eta_a : float
        The layers' rates; ``eta_a`` defaults to 0.9 times the optimal step for ``k``
        (:func:`sims.runs.schedules.optimal_eta_a`).
    flow : sims.Flow, optional
        The solver's tolerances (default :data:`MAP_FLOW`).
    tolerances : sims.Tolerances, optional
        The stops (default :data:`TOLERANCES`).
    n_record : int, default 2
        Points of each run's recorded trajectory (``result.trajectory_of``).
    threads : int, optional
        Threads of the engine (default: numba's).

    Returns
    -------
    sims.SimulationResult
        Without vectors; run ``i`` starts from the ``i``-th pair.

    Raises
    ------
    ValueError
        Naming the field: angles outside ``[0, pi]`` or non-finite ``t``, shapes that do not broadcast, and
        whatever :func:`sims.simulate` refuses (``k``, ``p``, ``steps``, the rates, ``n_record``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> from sims.runs import basins
    >>> res = basins.plane_runs([0.5, 2.5], [0.0, 0.0])
    >>> res.outcome.tolist(), res.stop_reason.tolist()
    (['global', 'spurious'], ['loss_tol', 'trapped'])
    """
    try:
        phi0, t = np.broadcast_arrays(np.asarray(phi0, dtype=float), np.asarray(t, dtype=float))
    except ValueError:
        raise ValueError(f"phi0 and t must broadcast to one shape; got shapes {np.shape(phi0)} and {np.shape(t)}"
                         ) from None
    phi0, t = phi0.ravel(), t.ravel()
    if phi0.size == 0:
        raise ValueError("phi0 and t must hold at least one start")
    if not np.all((phi0 >= 0.0) & (phi0 <= math.pi)):
        raise ValueError(f"phi0 must lie in [0, pi]; got values in [{np.nanmin(phi0):g}, {np.nanmax(phi0):g}]"
                         + (" and NaN" if np.isnan(phi0).any() else ""))
    if not np.all(np.isfinite(t)):
        raise ValueError("t must be finite")
    k = _sim._check_int(k, "k", 2)
    p = _sim._check_int(p, "p", 2)
    eta_a = 0.9 * optimal_eta_a(k) if eta_a is None else eta_a
    flow = MAP_FLOW if flow is None else flow
    if not isinstance(flow, Flow):
        raise ValueError(f"flow must be a sims.Flow; got {type(flow).__name__}")
    name, spec, opts = _sim._select(flow, None, "flow")
    call = _sim._validate_common(spec, opts, model=model, k=k, p=p, runs=phi0.size, steps=steps,
                                 schedule=Schedule.constant(eta_w, eta_a), teacher=None, init=None, algorithm="flow",
                                 batch_size=None, shortcut=None, seed=0, run_offset=0,
                                 tolerances=TOLERANCES if tolerances is None else tolerances, n_record=n_record,
                                 allow_unstable=False, threads=threads)
    call = spec.validate(opts, call)
    one = np.ones(phi0.size)
    op = OrderParameters(c0=np.cos(phi0), r0=np.sin(phi0), S0=np.zeros(phi0.size), Q0=t * t, P0=t.copy(),
                         Ss=np.zeros(phi0.size), Qs=one, vw=one / math.sqrt(p))
    return _sim.run_without_vectors(call, op, flow_opts=opts)


def saddle(k: int = 4) -> tuple[float, float]:
    """The saddle ``(phi_s, a(phi_s).a* / ||a*||^2)`` of the plane's teacher: a point of the plane (module
    docstring), and of its basin boundary.

    Parameters
    ----------
    k : int, default 4
        Number of patches, ``>= 2``.

    Returns
    -------
    tuple of float
        ``(phi_s, t_s)``.

    Raises
    ------
    ValueError
        If ``k`` is not an integer ``>= 2``.

    Examples
    --------
    >>> from sims.runs import basins
    >>> [round(v, 12) for v in basins.saddle(4)]
    [1.570796326795, 0.0]
    """
    a_star = plane_teacher(k)
    phi_s = float(theory.saddle_angle(a_star))
    return phi_s, float(theory.alignment_at(phi_s, a_star)) / float(a_star @ a_star)


@dataclass(frozen=True)
class Boundary:
    """The basin boundary in the plane of starts as points on lines, each in a bracket that the flow decides.

    On line ``line[j]`` (the coordinate ``along`` varies, the other is ``fixed[line[j]]``) the start at ``lo[j]``
    flows to one side and the start at ``hi[j]`` to the other (``global_at_lo[j]``: the one at ``lo`` reaches the
    global minimum), with ``hi - lo <= 2 tol``; the point is the middle, within ``tol`` of a change of outcome.

    Parameters
    ----------
    phi, t : numpy.ndarray
        The points, shape ``(m,)``, ordered by line and along it.
    lo, hi : numpy.ndarray
        The brackets on the line's coordinate, shape ``(m,)``.
    line : numpy.ndarray
        The index of each point's line into ``fixed`` (int64, ``(m,)``).
    global_at_lo : numpy.ndarray
        Whether the start at ``lo`` reaches the global minimum (bool, ``(m,)``).
    along : str
        ``"phi"`` (lines of fixed ``t``) or ``"t"`` (lines of fixed ``phi_0``).
    fixed : numpy.ndarray
        The fixed coordinate of each line.
    crossings : numpy.ndarray
        Crossings found per line (0: none within the line's range).
    tol : float
        The requested tolerance on the line's coordinate.
    runs : int
        Flow runs spent (the coarse samples and every bisection probe).
    undecided : int
        Probes whose run ended neither at the global nor the spurious minimum (counted on the spurious side).

    Examples
    --------
    >>> from sims.runs import basins
    >>> b = basins.boundary(lines=[0.0], tol=1e-4)
    >>> b.along, b.crossings.tolist(), round(float(b.phi[0]), 3), float(b.hi[0] - b.lo[0]) <= 2e-4
    ('phi', [1], 1.571, True)
    """

    phi: np.ndarray
    t: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    line: np.ndarray
    global_at_lo: np.ndarray
    along: str
    fixed: np.ndarray
    crossings: np.ndarray
    tol: float
    runs: int
    undecided: int


def boundary(*, model: str = "cnn", k: int = 4, p: int = 4, steps: int = 4000, eta_w: float = 0.25,
             eta_a: float | None = None, tol: float = 1e-6, along: str = "phi", lines: Any = 61, coarse: int = 64,
             flow: Flow | None = None, threads: int | None = None) -> Boundary:
    """The boundary between the basins of the global and the spurious minimum in the plane of starts, to ``tol``.

    The boundary is the stable manifold of the saddle cut by the plane (module docstring).  Each line through the
    plane (``along="phi"``: a line of fixed ``t`` on which ``phi_0`` varies over :data:`PHI_RANGE`; ``"t"``: fixed
    ``phi_0``, ``t`` over :data:`T_RANGE`) is sampled at ``coarse`` evenly spaced starts; every pair of neighbours
    whose runs end on different sides (the global minimum, or not) brackets a crossing, and all brackets of all
    lines are bisected together, one batched flow (:func:`plane_runs`) per level, until they are at most ``2 tol``
    wide.  A line without a change of outcome has no point (``crossings`` 0); a line with several changes has a
    point per change.  Crossings closer together than the coarse spacing (an even number between two neighbours)
    are not seen: for the plane's teacher the boundary is a curve crossed once by every line of fixed ``t`` (the
    default lines), which the tests check.

    Parameters
    ----------
    model : {"cnn", "resnet", "cnn-unnormalized"}, default "cnn"
        The network, as for :func:`plane_runs`.
    k, p : int, default 4
        Patches and patch dimension, as for :func:`plane_runs`.
    steps : int, default 4000
        The flow time after which an undecided probe stops.
    eta_w, eta_a : float
        The layers' rates (``eta_a`` defaults to 0.9 times the optimal step for ``k``).
    tol : float, default 1e-6
        Half the final bracket width on the line's coordinate, in ``(0, 0.1]``.
    along : {"phi", "t"}, default "phi"
        The coordinate that varies on a line.
    lines : int or array_like, default 61
        The lines' fixed coordinates, or their number (evenly spaced over the other range, ends included).
    coarse : int, default 64
        Coarse samples per line, ``>= 2``.
    flow : sims.Flow, optional
        The solver's tolerances (default the engine's, ``sims.Flow()``: the probes come within ``tol`` of the
        manifold, where the flow's error must stay far below ``tol``).  The probes stop as
        :data:`BOUNDARY_TOLERANCES` says.
    threads : int, optional
        Threads of the engine.

    Returns
    -------
    Boundary
        The points with their brackets.

    Raises
    ------
    ValueError
        Naming the field: ``tol`` not in ``(0, 0.1]``, ``along`` unknown, ``lines`` not a positive integer or not
        finite values inside the range, ``coarse < 2``, and what :func:`plane_runs` refuses.

    Examples
    --------
    >>> from sims.runs import basins
    >>> b = basins.boundary(lines=3, coarse=16, tol=1e-3)
    >>> b.crossings.tolist(), b.t.tolist()
    ([1, 1, 1], [-1.5, 0.0, 1.5])
    >>> bool(b.global_at_lo.all())       # small angles reach the global minimum
    True
    """
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.integer | np.floating) \
            or not (0.0 < float(tol) <= 0.1):
        raise ValueError(f"tol must be a number in (0, 0.1] (the bracket's half width on the line); got {tol!r}")
    tol = float(tol)
    if along not in ALONG:
        raise ValueError(f"along must be one of {ALONG}; got {along!r}")
    coarse = _sim._check_int(coarse, "coarse", 2)
    moving, other = (PHI_RANGE, T_RANGE) if along == "phi" else (T_RANGE, PHI_RANGE)
    if isinstance(lines, int | np.integer) and not isinstance(lines, bool):
        fixed = np.linspace(*other, _sim._check_int(lines, "lines", 1)) if lines != 1 else np.array([sum(other) / 2])
    else:
        fixed = np.asarray(lines, dtype=float).ravel() if not isinstance(lines, bool) else np.array([])
        if fixed.size == 0 or not np.all((fixed >= other[0]) & (fixed <= other[1])):
            raise ValueError(f"lines must be a positive number of lines or values in [{other[0]:g}, {other[1]:g}] "
                             f"(the range of {'t' if along == 'phi' else 'phi0'}); got {lines!r}")
    flow = Flow() if flow is None else flow
    kw = dict(model=model, k=k, p=p, steps=steps, eta_w=eta_w, eta_a=eta_a, flow=flow, threads=threads,
              tolerances=BOUNDARY_TOLERANCES)
    stats = {"runs": 0, "undecided": 0}

    def reaches_global(x: np.ndarray, f: np.ndarray) -> np.ndarray:
        phi0, t = (x, f) if along == "phi" else (f, x)
        res = plane_runs(phi0, t, **kw)
        stats["runs"] += res.outcome.size
        stats["undecided"] += int(np.sum(~np.isin(res.outcome, ("global", "spurious"))))
        return res.outcome == "global"

    grid = np.linspace(*moving, coarse)
    side = reaches_global(np.tile(grid, fixed.size), np.repeat(fixed, coarse)).reshape(fixed.size, coarse)
    line, cell = np.nonzero(side[:, 1:] != side[:, :-1])
    lo, hi, at_lo = grid[cell], grid[cell + 1], side[line, cell]
    width = (moving[1] - moving[0]) / (coarse - 1)
    for _ in range(max(0, math.ceil(math.log2(width / (2.0 * tol))))) if line.size else ():
        mid = 0.5 * (lo + hi)
        same = reaches_global(mid, fixed[line]) == at_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    mid = 0.5 * (lo + hi)
    f = fixed[line]
    return Boundary(phi=mid if along == "phi" else f, t=f if along == "phi" else mid, lo=lo, hi=hi,
                    line=line.astype(np.int64), global_at_lo=at_lo, along=along, fixed=fixed,
                    crossings=np.bincount(line, minlength=fixed.size), tol=tol, runs=stats["runs"],
                    undecided=stats["undecided"])

