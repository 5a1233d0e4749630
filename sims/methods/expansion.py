"""Deep linear expansions (ExpandNets; Arora, Cohen, Hazan 2018) of the filter and/or the second layer.

A layer with ``m`` inputs and one output (the filter ``w``: ``m = p``, the ResNet's residual branch only, the
shortcut ``v`` stays fixed: ``w~ = v + W_N ... W_1``; the second layer ``a``: ``m = k``) is written as a product of
``N`` linear factors ``W_N ... W_1`` with ExpandNets' widths at expansion rate ``r``: the first hidden layer has
``r m`` units, the others ``r`` (``r n`` with ``n = 1``).  The network computes exactly the same function as the
contracted one (:func:`contract`), so the population loss, its closed forms, the classification against the fixed
points and every monitor of the run driver (:mod:`sims.engines.driver`) carry over unchanged; only the training
dynamics differ.

Use it through :func:`sims.simulate` (``expansion=sims.Expansion(...)``); the result is a
:class:`sims.SimulationResult` whose ``w, a, w0, a0`` are the *contracted* weights and whose ``extras`` hold the
factors (``"factors"``, ``"factors0"``: flat per-run buffers, see :class:`Layout`).  Differences from the plain
engine:

- stop reason ``"stuck"``: the gradient with respect to the factors vanished (``<= grad_tol``) while the
  contracted gradient did not, a stationary point created by the factorization (all factors zero is one for
  ``N >= 2``).  Such runs are classified ``"saddle"`` (``"spurious"`` if they sit at the spurious minimum), never
  ``"global"``; ``extras["factor_grad_norm"]`` holds the factor-gradient norm at the stop.
- ``trapped`` stops (population GD only) use a safety factor ``sqrt(cond M) = sqrt((k + pi - 1)/(pi - 1))`` on
  the error bound when ``a`` is expanded (its dynamics is preconditioned, so only the ``M``-norm error is
  controlled).
- ``theory_rate`` is NaN (the Hessian rate of plain GD does not apply) and ``linear_regime`` only checks that the
  two rate windows agree.
- ``algorithm``: ``"gd"`` (population) or ``"sgd"`` (online SGD, fresh Gaussian minibatch each step, Ziggurat
  normals from the run's stream); ``"gd-fixed"`` is not supported.  Monitoring (loss, stops, trajectory) is
  population-level for both, as in the plain engine.
- every schedule applies: the resolved per-segment ``eta_w`` / ``eta_a`` are used for every factor of ``w`` / of
  ``a``; the prescribed warmup is computed from the contracted init; perturbation noise is added to every trained
  parameter (each factor entry).

Depth ``N = 1`` with the ``"auto"``/``"balanced"`` init is the unexpanded network itself and is dispatched to the
plain engine, so its results are bit-identical to ``sims.simulate`` without expansion.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numba
import numpy as np

import theory
from sims.engines import driver
from sims.engines import expansion as ex_engine
from sims.engines import expansion_kernels as ek
from sims.runs import registry
from sims.runs.registry import Built, Call, Draws, EngineSpec, Finished, Setup, Start, no_noise, register_engine
from sims.runs.samplers import Init
from sims.runs.schedules import Schedule
from sims.runs.simulate import Tolerances, angles, simulate
from theory import Model

TARGETS: tuple[str, ...] = ("w", "a", "both")
INITS: tuple[str, ...] = ("auto", "balanced", "gaussian", "zero-last", "zero", "plus-init")
ENGINES: tuple[str, ...] = ("auto", "factored")
_DEFAULT_SCALE = {"gaussian": 0.1, "zero-last": 1.0, "plus-init": 1.0}


def _int_field(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"expansion.{name} must be an integer >= {lo}; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Expansion:
    """Which layer to expand, how deep and wide, and how to initialize the factors.

    ``target``: ``"w"`` (the filter; for the ResNet the residual branch), ``"a"`` or ``"both"`` (same depth and
    rate for both).  ``depth``: number of factors ``N >= 1``.  ``rate``: ExpandNets' expansion rate ``r >= 1``
    (integer).  ``init``:

    - ``"balanced"``: a balanced rank-one chain (``W_{j+1}^T W_{j+1} = W_j W_j^T``) realizing the engine's
      end-to-end init (``w0, a0`` drawn by :class:`sims.Init`, or the explicit ``w0`` / ``a0`` given here):
      ``W_j = s q_j q_{j-1}^T`` with ``s = ||w0||^(1/N)``, ``q_0 = w0 / ||w0||``, ``q_N = 1`` and uniform random
      unit ``q_1 .. q_{N-1}`` (a rank-one chain rotated by random orthogonal matrices).  A zero ``w0`` gives all
      factors zero.
    - ``"auto"`` (default): ``"balanced"``, except that a zero end-to-end init (the ResNet's ``w0 = 0``) uses
      ``"zero-last"`` (balanced would be the all-zero saddle).
    - ``"gaussian"``: i.i.d. entries ``N(0, scale^2 / fan_in)``, so ``||W_N ... W_1|| ~ scale^N`` (default
      ``scale = 0.1``: small, unbalanced).
    - ``"zero-last"``: ResNet-style zero product: Gaussian factors (default ``scale = 1``) and a zero last factor.
    - ``"zero"``: all factors zero: for ``N >= 2`` every factor gradient vanishes (a saddle; the run stops
      ``"stuck"``).
    - ``"plus-init"``: ExpandNets' ``+Init``: train the nonlinear counterpart (ReLU between the factors) with online
      SGD for ``pretrain_steps`` steps of ``pretrain_batch`` inputs from Gaussian factors (``scale = 1``; the
      ResNet's residual branch with a zero last factor) and the engine's init of the plain layer, with step sizes
      ``pretrain_eta = (eta_w, eta_a)`` (default: the schedule's last segment), then use the trained weights as the
      linear network's init.  Deterministic per run (numba, the run's own stream).

    The CNNs need a nonzero filter, so ``"zero"`` / ``"zero-last"`` of ``w`` are only allowed for the ResNet.

    ``record_weights``: store the contracted ``(w, a)`` at the trajectory steps in ``extras["w_traj"]`` (runs,
    steps, p) and ``extras["a_traj"]`` (runs, steps, k).  ``engine``: ``"auto"`` runs depth 1 with the
    ``"auto"``/``"balanced"`` init (the unexpanded network) on the plain engine; ``"factored"`` always uses the
    factor kernel.

    Parameters
    ----------
    target : {"w", "a", "both"}, default "w"
        The layer(s) expanded.
    depth : int, default 2
        The number of factors ``N >= 1``.
    rate : int, default 1
        ExpandNets' expansion rate ``r >= 1``.
    init : {"auto", "balanced", "gaussian", "zero-last", "zero", "plus-init"}, default "auto"
        The factors' initialization (above).
    scale : float, optional
        The Gaussian factors' scale, finite and ``> 0`` (default 0.1 for ``"gaussian"``, 1 otherwise).
    w0, a0 : tuple of float, optional
        Explicit end-to-end inits the balanced factors realize (finite rows).
    pretrain_steps : int, default 300
        ``"plus-init"``: steps of the nonlinear pretraining, ``>= 0``.
    pretrain_batch : int, default 32
        ``"plus-init"``: inputs per pretraining step, ``>= 1``.
    pretrain_eta : tuple of float, optional
        ``"plus-init"``: ``(eta_w, eta_a)`` of the pretraining, finite and ``>= 0``.
    record_weights : bool, default False
        Store the contracted weights along the trajectory.
    engine : {"auto", "factored"}, default "auto"
        Dispatch the unexpanded network to the plain engine, or always use the factor kernel.

    Raises
    ------
    ValueError
        Naming the field (``expansion.<name>``), for a value out of its range or an unknown name.

    Examples
    --------
    GD on two factors of the ResNet's residual branch; the factors contract to the reported ``w``:

    >>> import numpy as np, sims
    >>> from sims.methods.expansion import Layout
    >>> ex = sims.Expansion(target="w", depth=2)
    >>> res = sims.simulate(engine=ex, k=4, p=4, runs=3, steps=300, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res.counts()["global"], res.steps.tolist()
    (3, [29, 48, 31])
    >>> w, _ = sims.contract(res.extras["factors"], Layout.of(ex, p=4, k=4))
    >>> bool(np.allclose(w, res.w, rtol=0.0, atol=1e-15))
    True
    """

    target: str = "w"
    depth: int = 2
    rate: int = 1
    init: str = "auto"
    scale: float | None = None
    w0: tuple[float, ...] | None = None
    a0: tuple[float, ...] | None = None
    pretrain_steps: int = 300
    pretrain_batch: int = 32
    pretrain_eta: tuple[float, float] | None = None
    record_weights: bool = False
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"expansion.target must be one of {TARGETS}; got {self.target!r}")
        _int_field(self.depth, "depth", 1)
        _int_field(self.rate, "rate", 1)
        if self.init not in INITS:
            raise ValueError(f"expansion.init must be one of {INITS}; got {self.init!r}")
        if self.scale is not None:
            try:
                sc = float(self.scale)
            except (TypeError, ValueError):
                sc = math.nan
            if not (math.isfinite(sc) and sc > 0.0):
                raise ValueError(f"expansion.scale must be a finite number > 0; got {self.scale!r}")
        _int_field(self.pretrain_steps, "pretrain_steps", 0)
        _int_field(self.pretrain_batch, "pretrain_batch", 1)
        if self.pretrain_eta is not None:
            try:
                ok = len(self.pretrain_eta) == 2 and all(math.isfinite(float(x)) and float(x) >= 0.0
                                                         for x in self.pretrain_eta)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"expansion.pretrain_eta must be two finite numbers >= 0 (eta_w, eta_a); "
                                 f"got {self.pretrain_eta!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"expansion.engine must be one of {ENGINES}; got {self.engine!r}")
        for name in ("w0", "a0"):
            val = getattr(self, name)
            if val is not None:
                _end_to_end_row(val, f"expansion.{name}")

    @property
    def expands_w(self) -> bool:
        """Whether the filter is expanded."""
        return self.target in ("w", "both")

    @property
    def expands_a(self) -> bool:
        """Whether the second layer is expanded."""
        return self.target in ("a", "both")

    @property
    def is_plain(self) -> bool:
        """Depth 1 realizing the engine's own init: the unexpanded network, run by the plain engine."""
        return (self.depth == 1 and self.init in ("auto", "balanced") and self.w0 is None and self.a0 is None
                and self.engine == "auto" and not self.record_weights)

    def scale_for(self, init: str) -> float:
        """The Gaussian factors' scale of ``init``: ``scale`` if given, else the init's default."""
        return float(self.scale) if self.scale is not None else _DEFAULT_SCALE.get(init, 1.0)


def _end_to_end_row(value: Any, name: str, length: int | None = None) -> np.ndarray:
    """A finite row ``1 x m`` (given as a vector or a ``(1, m)`` matrix) a factorization can realize."""
    try:
        x = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite row vector; got {value!r}") from None
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a row (1 x m): the expanded layer has one output; got shape {x.shape}")
    if length is not None and x.size != length:
        raise ValueError(f"{name} must have length {length}; got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite; a balanced factorization cannot realize {x.tolist()!r}")
    return x


def factor_dims(m: int, depth: int, rate: int) -> tuple[int, ...]:
    """``(d_0, ..., d_N)``: ExpandNets' widths for a layer with ``m`` inputs and one output (``r m`` then ``r``)."""
    depth = _int_field(depth, "depth", 1)
    rate = _int_field(rate, "rate", 1)
    hidden = [rate * m] + [rate] * (depth - 2) if depth >= 2 else []
    return (int(m), *hidden, 1)


@dataclass(frozen=True)
class Layout:
    """Shapes and offsets of the factors in a run's flat buffer: the ``w`` group (if expanded) first, then ``a``.

    ``table`` has one row ``(group, j, rows, cols, offset)`` per factor ``W_j`` (group 0: ``w``, 1: ``a``)."""

    p: int
    k: int
    target: str
    depth: int
    rate: int

    @staticmethod
    def of(expansion: Expansion, *, p: int, k: int) -> Layout:
        return Layout(int(p), int(k), expansion.target, int(expansion.depth), int(expansion.rate))

    def _group(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(off, dim, uoff)`` int64 arrays of the group (``off`` empty if it is not expanded)."""
        expanded = self.target in (name, "both")
        if not expanded:
            return np.zeros(0, np.int64), np.ones(1, np.int64), np.zeros(1, np.int64)
        dim = np.array(factor_dims(self.p if name == "w" else self.k, self.depth, self.rate), dtype=np.int64)
        sizes = dim[1:] * dim[:-1]
        start = self.group_size("w") if name == "a" else 0
        off = start + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        uoff = np.concatenate([[0], np.cumsum(dim)[:-1]]).astype(np.int64)
        return off, dim, uoff

    def group_size(self, name: str) -> int:
        if self.target not in (name, "both"):
            return 0
        dim = factor_dims(self.p if name == "w" else self.k, self.depth, self.rate)
        return int(sum(dim[j] * dim[j - 1] for j in range(1, len(dim))))

    @property
    def w_group(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._group("w")

    @property
    def a_group(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._group("a")

    @property
    def size(self) -> int:
        return self.group_size("w") + self.group_size("a")

    @property
    def table(self) -> np.ndarray:
        rows = []
        for g, name in enumerate(("w", "a")):
            off, dim, _ = self._group(name)
            for j in range(len(off)):
                rows.append((g, j + 1, dim[j + 1], dim[j], off[j]))
        return np.array(rows, dtype=np.int64).reshape(-1, 5)

    def unflatten(self, buf: np.ndarray) -> dict[str, list[np.ndarray]]:
        """``{"w": [W_1, ..., W_N], "a": [...]}`` (views) of one run's flat buffer (absent groups omitted)."""
        buf = np.asarray(buf)
        if buf.shape[-1] != self.size:
            raise ValueError(f"factors must have {self.size} entries per run for this layout; got {buf.shape[-1]}")
        out: dict[str, list[np.ndarray]] = {}
        for g, name in enumerate(("w", "a")):
            mats = [buf[..., o : o + r * c].reshape(*buf.shape[:-1], r, c)
                    for gg, _, r, c, o in self.table if gg == g]
            if mats:
                out[name] = mats
        return out

    def flatten(self, factors: dict[str, list[np.ndarray]]) -> np.ndarray:
        """Inverse of :meth:`unflatten` for one run."""
        buf = np.empty(self.size)
        for g, name in enumerate(("w", "a")):
            rows = [row for row in self.table if row[0] == g]
            if not rows:
                continue
            mats = factors.get(name)
            if mats is None or len(mats) != len(rows):
                raise ValueError(f"factors[{name!r}] must hold {len(rows)} matrices")
            for (_, j, r, c, o), mat in zip(rows, mats, strict=True):
                mat = np.asarray(mat, dtype=float)
                if mat.shape != (r, c):
                    raise ValueError(f"factors[{name!r}][{j - 1}] must have shape {(int(r), int(c))}; got {mat.shape}")
                buf[o : o + r * c] = mat.ravel()
        return buf


def _product(mats: list[np.ndarray]) -> np.ndarray:
    out = np.asarray(mats[0], dtype=float)
    for mat in mats[1:]:
        out = np.asarray(mat, dtype=float) @ out
    if out.shape[0] != 1:
        raise ValueError(f"the factors must contract to a row (one output); got shape {out.shape}")
    return out[0]


def contract(factors: Any, layout: Layout | None = None, *, w: Any = None, a: Any = None
             ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Factors -> ``(w, a)``, the contracted weights (``w`` is the ResNet's residual branch, without ``v``).

    Exact: the product of the factors, evaluated right to left.

    Parameters
    ----------
    factors : dict or numpy.ndarray
        ``{"w": [W_1, ..., W_N], "a": [...]}`` (each product ``W_N ... W_1`` must be a row), or a flat buffer
        ``(size,)`` / ``(R, size)`` with its :class:`Layout` (e.g. ``result.extras["factors"]``).
    layout : Layout, optional
        The buffer's layout (needed for a flat buffer).
    w, a : array_like, optional
        A layer that is not expanded is passed through from these (``None`` if not given).

    Returns
    -------
    w, a : numpy.ndarray or None
        The contracted filter and second layer.

    Raises
    ------
    ValueError
        For unknown keys, factors whose shapes do not chain to a row, or a buffer that does not match its layout.

    Examples
    --------
    >>> import numpy as np, sims
    >>> w, a = sims.contract({"w": [np.ones((2, 4)), np.array([[0.5, -0.5]])]}, a=np.ones(3))
    >>> w, a
    (array([0., 0., 0., 0.]), array([1., 1., 1.]))
    """
    if isinstance(factors, dict):
        unknown = set(factors) - {"w", "a"}
        if unknown:
            raise ValueError(f"factors keys must be 'w' and/or 'a'; got {sorted(unknown)}")
        cw = _product(factors["w"]) if factors.get("w") else (None if w is None else np.asarray(w, dtype=float))
        ca = _product(factors["a"]) if factors.get("a") else (None if a is None else np.asarray(a, dtype=float))
        return cw, ca
    if layout is None:
        raise ValueError("contract: a flat factor buffer needs its layout (sims.methods.expansion.Layout)")
    buf = np.asarray(factors, dtype=float)
    batch = buf.ndim == 2
    buf2 = np.ascontiguousarray(np.atleast_2d(buf))
    if buf2.shape[1] != layout.size:
        raise ValueError(f"factors must have {layout.size} entries per run for this layout; got {buf2.shape[1]}")
    outs = []
    for name, plain in (("w", w), ("a", a)):
        off, dim, uoff = layout._group(name)
        if len(off):
            out = np.empty((buf2.shape[0], int(dim[0])))
            ek.contract_all(buf2, off, dim, uoff, out)
            outs.append(out if batch else out[0])
        else:
            outs.append(None if plain is None else np.asarray(plain, dtype=float))
    return outs[0], outs[1]


def balanced_factors(end_to_end: Any, depth: int, rate: int = 1, *, seed: int = 0) -> list[np.ndarray]:
    """A balanced factorization ``[W_1, ..., W_N]`` (ExpandNets' widths) of the row ``end_to_end`` (NumPy; the
    kernels use the same construction from each run's stream): ``W_j = s q_j q_{j-1}^T``, ``s = ||e||^(1/N)``."""
    e = _end_to_end_row(end_to_end, "end_to_end")
    dims = factor_dims(e.size, depth, rate)
    N = len(dims) - 1
    if N == 1:
        return [e[None, :].copy()]
    nu = float(np.linalg.norm(e))
    if nu == 0.0:
        return [np.zeros((dims[j], dims[j - 1])) for j in range(1, N + 1)]
    rng = np.random.default_rng(seed)
    s = nu ** (1.0 / N)
    qs = [e / nu]
    for j in range(1, N):
        q = rng.standard_normal(dims[j])
        qs.append(q / np.linalg.norm(q))
    qs.append(np.ones(1))
    return [s * np.outer(qs[j], qs[j - 1]) for j in range(1, N + 1)]


def balance_gap(mats: list[np.ndarray]) -> float:
    """``max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F`` (zero for a balanced chain)."""
    gaps = [np.linalg.norm(mats[j + 1].T @ mats[j + 1] - mats[j] @ mats[j].T) for j in range(len(mats) - 1)]
    return float(max(gaps, default=0.0))


# ---- NumPy reference forward passes (for tests and checks) ------------------------------------------------------


def _filter_out(Z: np.ndarray, mats: list[np.ndarray] | None, w: np.ndarray | None, v: np.ndarray) -> np.ndarray:
    """Pre-activations ``(batch, k)`` of every patch, applying the factors in sequence (``W_1`` first)."""
    if mats is None:
        return Z @ (w + v)
    h = Z[..., :, None]  # (batch, k, p, 1): each patch as a column
    for mat in mats:
        h = mat @ h
    return h[..., 0, 0] + Z @ v


def forward(Z: np.ndarray, *, w_factors: list[np.ndarray] | None = None, a_factors: list[np.ndarray] | None = None,
            w: Any = None, a: Any = None, model: Model | str = "resnet", shortcut: Any = None) -> np.ndarray:
    """``f(Z)`` for inputs ``Z`` (batch, k, p) of the expanded network: every patch goes through ``W_1, ..., W_N``
    in sequence (plus the shortcut ``v`` for the ResNet), the normalization, the ReLU, then the hidden vector goes
    through ``A_1, ..., A_N``.  Plain layers are given as ``w=`` / ``a=``.  The norm in the normalization is the
    effective filter's (population second moment of the pre-activation), computed from the factors."""
    model = Model.of(model)
    Z = np.asarray(Z, dtype=float)
    p = Z.shape[-1]
    v = theory.validation.shortcut_vector(shortcut, p) if model.shortcut else np.zeros(p)
    s = _filter_out(Z, w_factors, None if w is None else np.asarray(w, dtype=float), v)
    if model.normalized:
        # ||w~||^2 = E[(w~.z)^2]: apply the factors to the identity (the same sequence of products)
        wt = _filter_out(np.eye(p)[None], w_factors, None if w is None else np.asarray(w, dtype=float), v)[0]
        s = s / np.linalg.norm(wt)
    x = np.maximum(s, 0.0)
    if a_factors is None:
        return x @ np.asarray(a, dtype=float)
    h = x[..., :, None]
    for mat in a_factors:
        h = mat @ h
    return h[..., 0, 0]


# ---- simulation --------------------------------------------------------------------------------------------------


def _resolve_init(expansion: Expansion, model: Model, group: str, e2e: np.ndarray) -> str:
    """The factor init of ``group`` given the end-to-end targets ``e2e`` (R, m) of every run.  ``"auto"``: zero-last
    when every target is zero (the ResNet's ``w0 = 0``), balanced otherwise (a zero target among nonzero ones is
    then balanced to all-zero factors)."""
    init = expansion.init
    zero = ~np.any(e2e, axis=1)
    if init == "auto":
        init = "zero-last" if zero.all() else "balanced"
    if init == "plus-init":
        init = "zero-last" if (group == "w" and model.shortcut) else "gaussian"
    if group == "w" and not model.shortcut:
        if init in ("zero", "zero-last") or (init == "balanced" and zero.any()):
            raise ValueError(f"expansion.init = {expansion.init!r} gives the {model.name} a zero filter w (no "
                             "direction); "
                             "use 'balanced', 'gaussian' or 'plus-init'")
    return init


_INIT_CODES = {"balanced": ek.INIT_BALANCED, "gaussian": ek.INIT_GAUSSIAN, "zero-last": ek.INIT_ZERO_LAST,
               "zero": ek.INIT_ZERO}


def initial_factors(expansion: Expansion, layout: Layout, *, model: Model | str, W0: np.ndarray, A0: np.ndarray,
                    WS: np.ndarray, AS: np.ndarray, v: np.ndarray, states: np.ndarray, schedule: Schedule
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(F, W0c, A0c, pretrain_done)``: every run's factors and the contracted init (residual ``w``, ``a``),
    drawing from (and advancing) each run's stream ``states``.  ``W0, A0`` are the engine's draws (the balanced
    init's end-to-end targets, and the init of plain layers)."""
    model = Model.of(model)
    R, p = W0.shape
    k = A0.shape[1]
    if expansion.w0 is not None:
        W0 = np.repeat(_end_to_end_row(expansion.w0, "expansion.w0", p)[None, :], R, axis=0)
    if expansion.a0 is not None:
        A0 = np.repeat(_end_to_end_row(expansion.a0, "expansion.a0", k)[None, :], R, axis=0)
    codes = {}
    for g, E in (("w", W0), ("a", A0)):
        if layout.target in (g, "both"):
            codes[g] = _resolve_init(expansion, model, g, E)
    w_off, w_dim, w_uoff = layout.w_group
    a_off, a_dim, a_uoff = layout.a_group
    F = np.zeros((R, layout.size))
    W0 = np.ascontiguousarray(W0, dtype=float)
    A0 = np.ascontiguousarray(A0, dtype=float)
    cw = codes.get("w", "balanced")
    ca = codes.get("a", "balanced")
    ek.init_factors(F, w_off, w_dim, a_off, a_dim, _INIT_CODES[cw], _INIT_CODES[ca], expansion.scale_for(cw),
                    expansion.scale_for(ca), W0, A0, states)
    Wp = W0.copy()
    Ap = A0.copy()
    done = np.zeros(R, dtype=np.int64)
    if expansion.init == "plus-init" and expansion.pretrain_steps > 0:
        if expansion.pretrain_eta is not None:
            ew, ea = (float(x) for x in expansion.pretrain_eta)
        else:
            last = schedule.segments[-1]
            ew, ea = float(last.eta_w), float(last.eta_a)
        ek.pretrain_nonlinear(F, layout.w_group, layout.a_group, Wp, Ap, v, WS, AS, model.normalized,
                              (np.int64(expansion.pretrain_steps), np.int64(expansion.pretrain_batch), ew, ea), states,
                              done)
    cwv, cav = contract(F, layout, w=Wp, a=Ap)
    return F, np.ascontiguousarray(cwv), np.ascontiguousarray(cav), done


def check(expansion: Any) -> Expansion:
    """``expansion`` if it is a :class:`Expansion` (validated on construction), else a ValueError."""
    if not isinstance(expansion, Expansion):
        raise ValueError(f"expansion must be a sims.Expansion; got {type(expansion).__name__}")
    return expansion


class ExpansionSpec(EngineSpec):
    """GD or SGD on the factors of a deep linear expansion (:mod:`sims.engines.expansion`; module docstring).
    Depth 1 realizing the engine's init (:attr:`Expansion.is_plain`) is the unexpanded network: it runs on the
    plain engine of ``algorithm`` (bit-identical to ``sims.simulate`` without expansion) and records the
    expansion in the settings."""

    options = Expansion
    algorithms = ("gd", "sgd")

    @staticmethod
    def _plain(opts: Expansion, call: Call) -> EngineSpec | None:
        return registry.lookup(call.algorithm)[1] if opts.is_plain else None

    def validate(self, opts: Expansion, call: Call) -> Call:
        plain = self._plain(opts, call)
        if plain is not None:
            return plain.validate(None, call)
        if call.algorithm not in self.algorithms:
            raise ValueError(f"algorithm must be 'gd' or 'sgd' with an expansion; got {call.algorithm!r}")
        return super().validate(opts, call)

    def extra_per_run(self, opts: Expansion, call: Call) -> int:
        return Layout.of(opts, p=call.p, k=call.k).size

    def start(self, opts: Expansion, call: Call, draws: Draws) -> Start:
        plain = self._plain(opts, call)
        if plain is not None:
            return plain.start(None, call, draws)
        vk = call.shortcut if call.model.shortcut else np.zeros(call.p)
        layout = Layout.of(opts, p=call.p, k=call.k)
        with driver.numba_threads(call.threads):
            F, W0c, A0c, pre_done = initial_factors(opts, layout, model=call.model, W0=draws.W0, A0=draws.A0,
                                                    WS=draws.WS, AS=draws.AS, v=vk, states=draws.states,
                                                    schedule=call.schedule)
        WT0 = W0c + vk
        if not (np.all(np.isfinite(WT0)) and np.all(np.isfinite(A0c))):
            raise ValueError("the expanded init is not finite (the +Init pretraining diverged: lower pretrain_eta)")
        if np.any(np.linalg.norm(WT0, axis=1) == 0.0):
            raise ValueError("the expanded init gives a zero effective filter (w0 + shortcut = 0): the direction is "
                             "undefined")
        return Start(WT0, A0c, W0c, A0c, state=(layout, F, F.copy(), pre_done, vk))

    def build(self, opts: Expansion, call: Call, setup: Setup) -> Built:
        plain = self._plain(opts, call)
        if plain is not None:
            return plain.build(None, call, setup)
        layout, F, _, _, vk = setup.start.state
        p, k = call.p, call.k
        a_factored = opts.expands_a and opts.depth > 1
        m_ones, m_perp = theory.m_eigenvalues(k)  # sqrt(cond M): the a-dynamics is preconditioned
        trap_factor = math.sqrt(m_ones / m_perp) if a_factored else 1.0
        w_off, w_dim, w_uoff = layout.w_group
        a_off, a_dim, a_uoff = layout.a_group
        mode = ex_engine.MODE_GD if call.algorithm == "gd" else ex_engine.MODE_SGD
        wrec = np.empty((call.runs, setup.rec.size if opts.record_weights else 0, p + k))
        eng = ex_engine.Expanded(int(mode), int(call.batch_size or 1), F, w_off, w_dim, w_uoff, a_off, a_dim, a_uoff,
                                 setup.WT, setup.A, vk, call.model.normalized, float(trap_factor), wrec,
                                 np.empty(call.runs))
        return Built(ex_engine.run_range, ex_engine.workspace, eng, no_noise(setup.sched) and call.algorithm == "gd")

    def finish(self, opts: Expansion, call: Call, setup: Setup, built: Built, out: Any) -> Finished:
        plain = self._plain(opts, call)
        if plain is not None:
            return plain.finish(None, call, setup, built, out)
        _, F, F0, pre_done, vk = setup.start.state
        p, eng = call.p, built.eng
        extras = {"factors": F, "factors0": F0, "factor_grad_norm": eng.fgrad, "pretrain_steps": pre_done}
        if opts.record_weights:
            extras["w_traj"] = eng.wrec[:, :, :p].copy()
            extras["a_traj"] = eng.wrec[:, :, p:].copy()
        return Finished(setup.WT, setup.A, setup.WT - vk, call.model, extras, theory_rate=False,
                        stuck=out.stop_reason == driver.STOP_STUCK)

    def settings(self, opts: Expansion, call: Call, base: dict[str, Any]) -> dict[str, Any]:
        out = dict(base, expansion=opts)
        if not opts.is_plain:
            out["factor_table"] = Layout.of(opts, p=call.p, k=call.k).table.tolist()
        return out


register_engine("expansion", ExpansionSpec())


# ---- the end-to-end dynamics and where it holds ---------------------------------------------------------------


def end_to_end(*, model: str, w0: Any, a0: Any, w_star: Any, a_star: Any, schedule: Schedule, steps: int,
               target: str, depth: int, shortcut: Any = None, record: Any = None,
               threads: int | None = None) -> dict[str, np.ndarray]:
    """Integrate the end-to-end dynamics of balanced depth-``depth`` factorizations on the contracted weights.

    Euler steps with the schedule's step sizes (numba, parallel over runs): an expanded row ``x`` moves by
    ``-eta (c_perp g_perp + c_par g_par)`` with the generated ``theory.closed_forms.end_to_end`` coefficients
    (Arora, Cohen, Hazan 2018).  It is the prediction GD on balanced factors is compared with
    (:func:`end_to_end_deviation`).

    Parameters
    ----------
    model : {"resnet", "cnn", "cnn-unnormalized"} or theory.Model
        The architecture.
    w0, a0 : array_like
        The contracted init, ``(R, p)`` (the residual filter for the ResNet) and ``(R, k)``.
    w_star, a_star : array_like
        The teachers, ``(1 or R, p)`` and ``(1 or R, k)``.
    schedule : Schedule
        The step sizes (resolved at the init).
    steps : int
        The number of Euler steps.
    target : {"w", "a", "both"}
        The expanded layer(s).
    depth : int
        The number of factors ``N >= 1`` (1: plain GD).
    shortcut : array_like, optional
        The ResNet's shortcut direction (default ``1_p / sqrt(p)``).
    record : array_like of int, optional
        The steps to record (default: every step up to ``steps``).
    threads : int, optional
        Threads of the kernel (default: all).

    Returns
    -------
    dict of str to numpy.ndarray
        ``{"steps", "w", "a", "loss"}``: the ``m`` recorded steps, ``w`` (R, m, p), ``a`` (R, m, k) and
        ``loss`` (R, m) (NaN after a non-finite state).

    Raises
    ------
    ValueError
        For an unknown ``model`` or ``target``, or ``depth < 1``.

    Examples
    --------
    >>> import numpy as np, sims
    >>> from sims.methods.expansion import end_to_end
    >>> sched = sims.Schedule.constant(0.05, 0.5)
    >>> res = sims.simulate(k=4, p=4, runs=2, steps=0, schedule=sched)      # draws teachers and inits
    >>> out = end_to_end(model="resnet", w0=res.w0 + 0.1, a0=res.a0, w_star=res.w_star, a_star=res.a_star,
    ...                  schedule=sched, steps=20, target="w", depth=2)
    >>> out["w"].shape, np.round(out["loss"][:, [0, -1]], 4)
    ((2, 21, 4), array([[1.8771, 0.2574],
           [1.4471, 0.8688]]))
    """
    model = Model.of(model)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    depth = _int_field(depth, "depth", 1)
    W = np.ascontiguousarray(np.atleast_2d(np.asarray(w0, dtype=float))).copy()
    A = np.ascontiguousarray(np.atleast_2d(np.asarray(a0, dtype=float))).copy()
    WS = np.ascontiguousarray(np.atleast_2d(np.asarray(w_star, dtype=float)))
    AS = np.ascontiguousarray(np.atleast_2d(np.asarray(a_star, dtype=float)))
    R, p = W.shape
    k = A.shape[1]
    v = theory.validation.shortcut_vector(shortcut, p) if model.shortcut else np.zeros(p)
    WT0 = W + v
    norm0 = np.linalg.norm(WT0, axis=1)
    phi0 = angles(WT0, np.broadcast_to(WS, WT0.shape))
    sched = schedule.resolve(int(steps), runs=R, phi0=phi0, norm0=norm0, a0=A, a_star=AS)
    rec = np.arange(int(steps) + 1, dtype=np.int64) if record is None else np.asarray(record, dtype=np.int64)
    wrec = np.empty((R, rec.size, p + k))
    lrec = np.empty((R, rec.size))
    with driver.numba_threads(threads):
        ek.end_to_end_gd(W, A, v, WS, AS, model.normalized, (target in ("w", "both"), target in ("a", "both"),
                         np.int64(depth)), (sched.seg_end, sched.eta_w, sched.eta_a), np.int64(steps),
                         (rec, wrec, lrec))
    return {"steps": rec, "w": wrec[:, :, :p], "a": wrec[:, :, p:], "loss": lrec}


def end_to_end_deviation(*, expansion: Expansion, model: str = "resnet", k: int = 8, p: int = 8, runs: int = 8,
                         steps: int = 2000, schedule: Schedule | None = None, teacher: Any = None,
                         init: Any = None, seed: int = 0, n_record: int = 48, shortcut: Any = None):
    """Factor GD against the end-to-end prediction from the same contracted init, run by run (pandas DataFrame).

    Trains the factors for exactly ``steps`` population-GD steps (no early stop: ``loss_tol = grad_tol = 0``, no
    trapped stop), integrates :func:`end_to_end` with the same steps from the contracted init, and reports at
    the log-spaced record steps the relative deviation of the expanded weights,
    ``||x_factors(t) - x_end_to_end(t)|| / ||x_end_to_end(t)||`` with ``x`` the contracted expanded layer(s)
    (``w``: the residual filter for the ResNet; ``a``; or both concatenated).  Columns: ``init, depth, rate, run,
    step, deviation, loss_factors, loss_end_to_end, balance_gap0`` (``balance_gap0``: the initial
    ``max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||`` of the run).  Plot-ready: one curve per (init, run)."""
    import pandas as pd

    if schedule is None:
        schedule = Schedule.constant(0.01, 0.01)
    tol = Tolerances(loss_tol=0.0, grad_tol=0.0, stop_trapped=False)
    ex = replace(check(expansion), record_weights=True)
    res = simulate(expansion=ex, model=model, k=k, p=p, runs=runs, steps=steps, schedule=schedule, teacher=teacher,
                 init=init, seed=seed, n_record=n_record, shortcut=shortcut, tolerances=tol)
    e2e = end_to_end(model=model, w0=res.w0, a0=res.a0, w_star=res.w_star, a_star=res.a_star, schedule=schedule,
                     steps=steps, target=ex.target, depth=ex.depth, shortcut=shortcut, record=res.trajectory_steps)
    parts_f, parts_e = [], []
    if ex.expands_w:
        parts_f.append(res.extras["w_traj"])
        parts_e.append(e2e["w"])
    if ex.expands_a:
        parts_f.append(res.extras["a_traj"])
        parts_e.append(e2e["a"])
    xf = np.concatenate(parts_f, axis=2)
    xe = np.concatenate(parts_e, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.linalg.norm(xf - xe, axis=2) / np.linalg.norm(xe, axis=2)
    layout = Layout.of(ex, p=p, k=k)
    gaps = []
    for r in range(runs):
        groups = layout.unflatten(res.extras["factors0"][r])
        gaps.append(max(balance_gap(m) for m in groups.values()))
    R, m = dev.shape
    return pd.DataFrame({
        "init": ex.init,
        "depth": ex.depth,
        "rate": ex.rate,
        "run": np.repeat(res.run_index, m),
        "step": np.tile(res.trajectory_steps, R),
        "deviation": dev.ravel(),
        "loss_factors": res.trajectory[:, :, 0].ravel(),
        "loss_end_to_end": e2e["loss"].ravel(),
        "balance_gap0": np.repeat(gaps, m),
    })


def deviation_study(*, cases: tuple[tuple[str, float | None], ...] = (("balanced", None), ("gaussian", 0.3),
                                                                       ("gaussian", 1.0)),
                    depths: tuple[int, ...] = (2, 3), target: str = "both", **kw):
    """:func:`end_to_end_deviation` for several ``(init, scale)`` cases and depths, concatenated.

    Where the end-to-end formula holds (balanced factors: deviation ``O(eta)``) and where it does not
    (unbalanced Gaussian factors: order one); plot it with :func:`plot_deviation`.

    Parameters
    ----------
    cases : tuple of (str, float or None)
        The factors' ``(init, scale)`` (default: balanced, Gaussian of scale 0.3 and 1).
    depths : tuple of int, default (2, 3)
        The depths ``N``.
    target : {"w", "a", "both"}, default "both"
        The expanded layer(s).
    **kw
        Passed to :func:`end_to_end_deviation` (``model``, ``k``, ``p``, ``runs``, ``steps``, ``schedule``,
        ``teacher``, ``init``, ``seed``, ``n_record``, ``shortcut``).

    Returns
    -------
    pandas.DataFrame
        The rows of every case and depth, with a ``scale`` column (NaN for the default scale).

    Raises
    ------
    ValueError
        For an invalid :class:`Expansion` (unknown init, depth below 1) or any argument :func:`sims.simulate`
        refuses.

    Examples
    --------
    >>> from sims.methods.expansion import deviation_study
    >>> df = deviation_study(cases=(("balanced", None), ("gaussian", 1.0)), depths=(2,), k=4, p=4, runs=2,
    ...                      steps=100, n_record=4)
    >>> df.groupby("init")["deviation"].max().round(3).to_dict()     # balanced: O(eta); unbalanced: order one
    {'balanced': 0.002, 'gaussian': 0.859}
    """
    import pandas as pd

    frames = []
    for init, scale in cases:
        for depth in depths:
            df = end_to_end_deviation(expansion=Expansion(target=target, depth=depth, init=init, scale=scale), **kw)
            df["scale"] = math.nan if scale is None else float(scale)
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ---- comparison table ---------------------------------------------------------------------------------------------

#: Columns of :func:`compare`.
COMPARE_COLUMNS: tuple[str, ...] = (
    "method", "model", "warmup", "target", "depth", "rate", "trials", "p_global", "p_global_lo", "p_global_hi",
    "p_spurious", "p_spurious_lo", "p_spurious_hi", "p_saddle", "p_not_converged", "p_diverged",
    "steps_to_tol_median", "seconds_per_step", "eta_w", "eta_a", "init")


def _compare_schedule(k: int, warmup: bool, eta_w: float, eta_a: float, T1: int, eta_w1: float) -> Schedule:
    return Schedule.two_stage(T1, eta_w1, eta_a, eta_w, eta_a) if warmup else Schedule.constant(eta_w, eta_a)


def _seconds_per_step(kw: dict[str, Any], expansion: Expansion | None, runs: int, steps: int, repeats: int) -> float:
    """Wall time per run-step: the best-of-``repeats`` time of ``2 steps`` minus that of ``steps`` fixed-length steps
    (no early stop), divided by ``runs * steps``, so per-call costs (draws, init, classification) cancel.  Timed
    with Gaussian factors and step sizes scaled by 1e-6 (the cost of a step depends on neither, and nothing
    diverges or stops); +Init pretraining is not counted; numba compiled beforehand."""
    tol = Tolerances(loss_tol=0.0, grad_tol=0.0, stop_trapped=False)
    last = kw["schedule"].segments[-1]
    if expansion is not None and not expansion.is_plain:
        expansion = replace(expansion, init="gaussian", scale=1.0)
    args = dict(kw, runs=runs, tolerances=tol, n_record=2,
                schedule=Schedule.constant(1e-6 * last.eta_w, 1e-6 * last.eta_a))
    simulate(**dict(args, runs=min(runs, 2), steps=2), expansion=expansion)  # compile / load the cache

    def best(n: int) -> float:
        out = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = simulate(**args, steps=n, expansion=expansion)
            out = min(out, time.perf_counter() - t0)
        if not np.all(res.steps == n):
            raise RuntimeError(f"timing run stopped early ({sorted(set(res.stop_reason))})")
        return out

    return max(best(2 * steps) - best(steps), 0.0) / (runs * steps)


def _step_rule(ex: Expansion, rule: str, eta_w: float, eta_a: float, k: int) -> tuple[float, float]:
    """The factors' steps of :func:`compare`: ``"same"``, or ``"matched"`` (an expanded layer's step divided by the
    end-to-end gain ``N s^(2 - 2/N)``, ``s = 1`` for ``w`` and ``sqrt(k)`` for ``a``)."""
    if rule == "matched" and ex.depth > 1:
        if ex.expands_w:
            eta_w = eta_w / ex.depth
        if ex.expands_a:
            eta_a = eta_a / (ex.depth * float(k) ** (1.0 - 1.0 / ex.depth))
    return eta_w, eta_a


def _outcome_columns(res: Any) -> dict[str, Any]:
    """The outcome columns of a :func:`compare` row: ``trials``, ``p_global`` and ``p_spurious`` with Wilson 95%
    intervals, the other outcomes' rates, and the median steps to tolerance over the runs that reached it."""
    from sims.runs.classify import wilson

    n = len(res)
    row: dict[str, Any] = {"trials": n}
    for name in ("global", "spurious"):
        c = int(np.sum(res.outcome == name))
        lo, hi = wilson(c, n)
        row.update({f"p_{name}": c / n, f"p_{name}_lo": float(lo), f"p_{name}_hi": float(hi)})
    for name in ("saddle", "not_converged", "diverged"):
        row[f"p_{name}"] = float(np.mean(res.outcome == name))
    reached = res.steps_to_tol[res.steps_to_tol >= 0]
    row["steps_to_tol_median"] = float(np.median(reached)) if reached.size else math.nan
    return row


def compare(*, k: int = 8, p: int = 8, trials: int = 200, seed: int = 0, depths: tuple[int, ...] = (1, 2, 3, 4),
            rates: tuple[int, ...] = (1, 2, 4), targets: tuple[str, ...] = ("w", "a", "both"),
            models: tuple[str, ...] = ("resnet", "cnn"), warmups: tuple[bool, ...] = (False, True),
            steps: int = 20000, eta_w_rel: float = 0.5, eta_a_rel: float = 0.9, warmup_steps: int = 200,
            warmup_eta_w_rel: float = 0.01, step_rule: str = "same", init: str = "auto", teacher: Any = None,
            timing_runs: int = 32, timing_steps: int = 5000, timing_repeats: int = 3, threads: int | None = None,
            progress: bool = False):
    """Rows for the expansion table: success rates, steps to tolerance and cost per step of GD on the factors.

    For each model (the ResNet from ``w0 = 0``, the CNN from a uniform unit ``w0``; ``a0`` uniform in the ball of
    radius ``||a*||``), with and without Liu et al.'s two-stage warmup (``warmup_steps`` steps with ``eta_w`` scaled
    by ``warmup_eta_w_rel``), each target, depth and rate: ``trials`` runs of population GD (teachers ``w*`` on the
    half sphere ``v.w* >= 0``, Gaussian ``a*`` with a spurious minimum, as in the liu2019 sweep; the same seed, so
    every cell sees the same teachers and end-to-end inits), expansion init ``init`` (default ``"auto"``: balanced
    realization of the engine's init, ``"zero-last"`` for the ResNet's zero residual branch).

    Step sizes: ``eta_w = eta_w_rel * 2 / k``, ``eta_a = eta_a_rel * 4 pi / (k + 2 pi - 2)`` as in the sweeps.
    ``step_rule``: ``"same"`` applies them to every factor; ``"matched"`` divides an expanded layer's step by the
    end-to-end gain ``N s^(2 - 2/N)`` at its typical scale (``s = 1`` for ``w``, ``s = sqrt(k)``, the typical
    ``||a*||``, for ``a``), so that the contracted layer moves about as fast as without expansion.

    Columns :data:`COMPARE_COLUMNS`: ``p_*`` outcome rates with Wilson 95% intervals, ``steps_to_tol_median`` over
    the runs that reached ``Tolerances().eps``, ``seconds_per_step`` the wall time per run-step from runs of
    ``timing_steps`` and ``2 timing_steps`` steps (best of ``timing_repeats``, their difference, so per-call costs
    cancel).  Depth 1 is the unexpanded network (the plain engine's numbers, the same for every target and rate).
    The ``expand`` table (:func:`sims.studies.tables.expand_rows`) runs the same cells as a resumable sweep.

    Parameters
    ----------
    k, p : int, default 8
        Patches and patch dimension.
    trials : int, default 200
        Runs per cell.
    seed : int, default 0
        The streams' seed, shared by every cell.
    depths, rates : tuple of int
        The depths ``N`` (default 1 to 4) and expansion rates ``r`` (default 1, 2, 4).
    targets : tuple of str, default ("w", "a", "both")
        The expanded layer(s).
    models : tuple of str, default ("resnet", "cnn")
        The models.
    warmups : tuple of bool, default (False, True)
        Without and with the two-stage warmup.
    steps : int, default 20000
        The step budget of each run.
    eta_w_rel, eta_a_rel : float, default 0.5 and 0.9
        The step sizes relative to ``2 / k`` and ``4 pi / (k + 2 pi - 2)``.
    warmup_steps : int, default 200
        The warmup's length.
    warmup_eta_w_rel : float, default 0.01
        The warmup's factor on ``eta_w``.
    step_rule : {"same", "matched"}, default "same"
        The step of an expanded layer's factors (above).
    init : str, default "auto"
        The factors' initialization (:class:`Expansion`).
    teacher : Teacher, optional
        Default: ``w*`` on the half sphere, Gaussian ``a*`` with a spurious minimum.
    timing_runs, timing_steps, timing_repeats : int, default 32, 5000 and 3
        The size of the timing runs (above).
    threads : int, optional
        Threads of the kernels (default: all).
    progress : bool, default False
        Print one line per cell.

    Returns
    -------
    pandas.DataFrame
        One row per model x warmup x target x depth x rate, columns :data:`COMPARE_COLUMNS`; the settings in
        ``df.attrs``.

    Raises
    ------
    ValueError
        For an unknown ``step_rule`` or target, or any argument :func:`sims.simulate` refuses.

    Examples
    --------
    >>> from sims.methods import expansion
    >>> df = expansion.compare(k=4, p=4, trials=4, depths=(1, 2), rates=(1,), targets=("w",), models=("resnet",),
    ...                        warmups=(False,), steps=300, timing_runs=2, timing_steps=10, timing_repeats=1)
    >>> df[["method", "depth", "p_global", "steps_to_tol_median"]].to_dict("list")
    {'method': ['resnet-no-warmup', 'resnet-no-warmup'], 'depth': [1, 2], 'p_global': [1.0, 1.0],
     'steps_to_tol_median': [20.0, 30.5]}
    """
    import pandas as pd

    from sims.runs.samplers import Teacher as _Teacher
    from sims.runs.schedules import optimal_eta_a

    if step_rule not in ("same", "matched"):
        raise ValueError(f"step_rule must be 'same' or 'matched'; got {step_rule!r}")
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"targets: each must be one of {TARGETS}; got {t!r}")
    teacher = _Teacher(w="cap", phi_max=math.pi / 2, a="gaussian", require_spurious=True) if teacher is None \
        else teacher
    rows = []
    cache: dict[tuple, tuple[Any, float]] = {}
    for model, warmup, target, depth, rate in itertools.product(models, warmups, targets, depths, rates):
        method = f"{model}-{'warmup' if warmup else 'no-warmup'}"
        ex = Expansion(target=target, depth=depth, rate=rate, init=init)
        ew, ea = _step_rule(ex, step_rule, eta_w_rel * 2.0 / k, eta_a_rel * optimal_eta_a(k), k)
        sched = _compare_schedule(k, warmup, ew, ea, warmup_steps, warmup_eta_w_rel * ew)
        kw = dict(model=model, k=k, p=p, schedule=sched, teacher=teacher, seed=seed, threads=threads,
                  init=Init(w="zero" if Model.of(model).shortcut else "sphere", a="ball"))
        key = (model, warmup) if ex.is_plain else (model, warmup, target, depth, rate)
        if key not in cache:
            t0 = time.perf_counter()
            res = simulate(**kw, runs=trials, steps=steps, n_record=2, expansion=ex)
            cache[key] = res, _seconds_per_step(kw, ex, timing_runs, timing_steps, timing_repeats)
            if progress:
                print(f"{method} {target} N={depth} r={rate}: {res.counts()} ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
        res, sps = cache[key]
        rows.append({"method": method, "model": model, "warmup": bool(warmup), "target": target, "depth": depth,
                     "rate": rate, **_outcome_columns(res), "seconds_per_step": sps, "eta_w": ew, "eta_a": ea,
                     "init": init})
    df = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    df.attrs.update(k=k, p=p, seed=seed, steps=steps, step_rule=step_rule, threads=threads or numba.get_num_threads())
    return df


def plot_deviation(df, ax=None):
    """Plot :func:`end_to_end_deviation` / :func:`deviation_study` output: relative deviation against the step
    (log-log), one line per run, one colour per ``(init, scale, depth)``.  Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    keys = [c for c in ("init", "scale", "depth") if c in df.columns]
    for i, (key, g) in enumerate(df.groupby(keys, dropna=False)):
        label = ", ".join(f"{name}={val}" for name, val in zip(keys, key if isinstance(key, tuple) else (key,),
                                                                 strict=True))
        for j, (_, run) in enumerate(g.groupby("run")):
            run = run[run["step"] > 0]
            ax.loglog(run["step"], run["deviation"], color=f"C{i}", alpha=0.6, label=label if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("||x_factors - x_end_to_end|| / ||x_end_to_end||")
    ax.legend(fontsize="small")
    return ax
