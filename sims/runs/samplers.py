"""Teachers and initializations, drawn per run from that run's own random stream.

Teacher filters ``w*``: uniform on the sphere (``"sphere"``), uniform on the cap ``v.w* >= cos(phi_max)``
(``"cap"``), or at a fixed angle from the shortcut ``v`` (``"angle"``).  Teacher second layers ``a*``: standard
Gaussian (``"gaussian"``), ``1_k`` (``"ones"``) or a fixed vector (``"fixed"``); ``require_spurious=True`` redraws a
Gaussian ``a*`` until the spurious local minimum exists.  Student filters ``w0``: zero (ResNet, the network
starts at the shortcut), uniform on the unit sphere, or Gaussian of a given scale.  Student ``a0``: uniform in
the ball of radius ``a_radius`` (default ``||a*||``) or Gaussian with per-entry std ``a_radius / sqrt(k)``.

The cap uses the exact marginal of ``t = v.w*`` on the sphere, ``(t + 1)/2 ~ Beta((p-1)/2, (p-1)/2)``, by
inverse CDF, so it stays exact and cheap for small caps in high dimension.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit

from sims.engines import closed_forms as cf
from sims.engines.rng import fill_normal, normal_pair_call, uniform_call
from theory import Model

TEACHER_W = ("sphere", "cap", "angle")
TEACHER_A = ("gaussian", "ones", "fixed")
INIT_W = ("zero", "sphere", "gaussian")
INIT_A = ("ball", "gaussian")
_MAX_REDRAWS = 10_000
#: Smallest ``Init.w_scale``: around 1e-160 the squares in ``||w0||`` underflow and some runs (not all) would
#: start from a filter of norm 0.
MIN_W_SCALE = 1e-100


@dataclass(frozen=True)
class Teacher:
    """How each run's teacher ``(w*, a*)`` is drawn (see :mod:`sims.runs.samplers`).

    A sampler rather than arrays, so that every run draws its own teacher from its own stream (and a sweep is a
    distribution over teachers); pass explicit ``(w_star, a_star)`` to :func:`sims.simulate` for one fixed
    teacher.  The fields are checked when a simulation uses it (:meth:`validate`, which needs ``k``).

    Parameters
    ----------
    w : {"cap", "sphere", "angle"}, default "cap"
        ``w*`` uniform on the cap ``v.w* >= cos(phi_max)`` around the shortcut ``v``, uniform on the sphere, or
        at the fixed angle ``angle`` from ``v``.
    phi_max : float, default pi / 2
        The cap's half-angle, in ``(0, pi]`` (``"cap"``).
    angle : float, default pi / 4
        The angle between ``w*`` and ``v``, in ``[0, pi]`` (``"angle"``).
    a : {"gaussian", "ones", "fixed"}, default "gaussian"
        ``a*`` standard Gaussian, ``1_k``, or ``a_value``.
    a_value : tuple of float, optional
        The fixed ``a*`` (``k`` finite numbers; ``"fixed"``).
    require_spurious : bool, default False
        Redraw a Gaussian ``a*`` until the spurious local minimum exists (needs ``k >= 2``).

    Raises
    ------
    ValueError
        From :meth:`validate` (run by :func:`sims.simulate`), naming the field: an unknown kind, an angle out of
        range, an ``a_value`` of the wrong length, or ``require_spurious`` without a Gaussian ``a*`` or with
        ``k = 1``.

    Examples
    --------
    >>> import numpy as np, sims, theory
    >>> kw = dict(k=4, p=4, runs=3, steps=0, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res = sims.simulate(teacher=sims.Teacher(w="angle", angle=np.pi / 3, a="ones"), **kw)
    >>> np.round(res.w_star @ (np.ones(4) / 2), 12), res.a_star[0]       # v.w* = cos(pi / 3)
    (array([0.5, 0.5, 0.5]), array([1., 1., 1., 1.]))
    >>> res = sims.simulate(teacher=sims.Teacher(require_spurious=True), **kw)
    >>> theory.spurious_exists(res.a_star)
    array([ True,  True,  True])
    """

    w: str = "cap"
    phi_max: float = math.pi / 2  # "cap": the cap's half-angle around v
    angle: float = math.pi / 4  # "angle": angle between w* and v
    a: str = "gaussian"
    a_value: tuple[float, ...] | None = None  # "fixed"
    require_spurious: bool = False

    def validate(self, k: int) -> None:
        """Check the fields for ``k`` patches (``ValueError`` naming the field)."""
        if self.w not in TEACHER_W:
            raise ValueError(f"teacher.w must be one of {TEACHER_W}; got {self.w!r}")
        if self.a not in TEACHER_A:
            raise ValueError(f"teacher.a must be one of {TEACHER_A}; got {self.a!r}")
        if not (0.0 < self.phi_max <= math.pi):
            raise ValueError(f"teacher.phi_max must lie in (0, pi]; got {self.phi_max!r}")
        if not (0.0 <= self.angle <= math.pi):
            raise ValueError(f"teacher.angle must lie in [0, pi]; got {self.angle!r}")
        if self.a == "fixed":
            if self.a_value is None or len(self.a_value) != k or not np.all(np.isfinite(self.a_value)):
                raise ValueError(f"teacher.a_value must be {k} finite numbers when teacher.a = 'fixed'")
        if self.require_spurious:
            if self.a != "gaussian":
                raise ValueError("teacher.require_spurious needs teacher.a = 'gaussian' (the others are fixed)")
            if k < 2:
                raise ValueError("teacher.require_spurious needs k >= 2: for k = 1 the spurious point never exists")


@dataclass(frozen=True)
class Init:
    """How each run's starting point ``(w0, a0)`` is drawn (see :mod:`sims.runs.samplers`).

    Like :class:`Teacher`, a sampler: every run draws its own init from its own stream.  The default of
    :func:`sims.simulate` is ``Init(w="zero")`` for the ResNet (the network starts at the shortcut) and
    ``Init(w="sphere")`` for the CNNs.  The fields are checked when a simulation uses it (:meth:`validate`).

    Parameters
    ----------
    w : {"zero", "sphere", "gaussian"}, default "zero"
        ``w0 = 0`` (the ResNet only), uniform on the unit sphere, or Gaussian with per-entry std
        ``w_scale / sqrt(p)``.
    w_scale : float, default 1.0
        The Gaussian filter's scale, finite and ``>= 1e-100`` (``"gaussian"``).
    a : {"ball", "gaussian"}, default "ball"
        ``a0`` uniform in the ball of radius ``a_radius``, or Gaussian with per-entry std ``a_radius / sqrt(k)``.
    a_radius : float, optional
        Finite and ``>= 0``; default ``||a*||`` of the run's teacher.

    Raises
    ------
    ValueError
        From :meth:`validate` (run by :func:`sims.simulate`), naming the field: an unknown kind, a scale or
        radius out of range, or ``w = "zero"`` for a CNN (its filter needs a direction).

    Examples
    --------
    >>> import numpy as np, sims
    >>> kw = dict(k=4, p=4, runs=3, steps=0, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res = sims.simulate(model="cnn", init=sims.Init(w="gaussian", a_radius=0.5), **kw)
    >>> np.round(np.linalg.norm(res.w0, axis=1), 4), bool(np.all(np.linalg.norm(res.a0, axis=1) <= 0.5))
    (array([1.2173, 0.7138, 1.1645]), True)
    >>> sims.Init().validate("cnn")
    Traceback (most recent call last):
    ...
    ValueError: init.w = 'zero' is not allowed for model 'cnn': a CNN filter w0 = 0 has no direction ...
    """

    w: str = "zero"
    w_scale: float = 1.0  # "gaussian": per-entry std is w_scale / sqrt(p)
    a: str = "ball"
    a_radius: float | None = None  # default ||a*|| of the run's teacher

    def validate(self, model: Model | str) -> None:
        """Check the fields for ``model`` (``ValueError`` naming the field)."""
        if self.w not in INIT_W:
            raise ValueError(f"init.w must be one of {INIT_W}; got {self.w!r}")
        if self.a not in INIT_A:
            raise ValueError(f"init.a must be one of {INIT_A}; got {self.a!r}")
        model = Model.of(model)
        if not model.shortcut and self.w == "zero":
            raise ValueError(
                f"init.w = 'zero' is not allowed for model {model.name!r}: a CNN filter w0 = 0 has no direction "
                "(use 'sphere' or 'gaussian')"
            )
        if not (math.isfinite(self.w_scale) and self.w_scale >= MIN_W_SCALE):  # smaller: ||w0||^2 may underflow
            raise ValueError(f"init.w_scale must be finite and > 0 (at least {MIN_W_SCALE:g}); got {self.w_scale!r}")
        if self.a_radius is not None and not (math.isfinite(self.a_radius) and self.a_radius >= 0):
            raise ValueError(f"init.a_radius must be finite and >= 0; got {self.a_radius!r}")


@njit(cache=True)
def _unit_orthogonal(st, v, out):
    """A uniform unit vector orthogonal to the unit vector ``v`` (p >= 2)."""
    fill_normal(st, out)
    d = 0.0
    for i in range(out.shape[0]):
        d += out[i] * v[i]
    nn = 0.0
    for i in range(out.shape[0]):
        out[i] -= d * v[i]
        nn += out[i] * out[i]
    nn = math.sqrt(nn)
    for i in range(out.shape[0]):
        out[i] /= nn


@njit(cache=True, nogil=True)
def _draw(lo, hi, states, v, codes, values, out):
    """Runs ``lo .. hi-1``'s draws from their streams: ``codes = (teacher.w, teacher.a, init.w, init.a,
    require_spurious)``, ``values = (fixed a*, init.w_scale, init.a_radius or -1)``, ``out = (U_cap, E_perp, AS, W0,
    A0, fail)``.  A serial loop run on threads by :func:`draw` (a ``prange`` loop compiles twice as slowly, and
    numba 0.68 could lose its writes to ``fail``).  Its uniforms and normals are calls of
    :func:`sims.engines.rng.uniform_call` and :func:`sims.engines.rng.normal_pair_call`, not inlined copies of the
    generator: this kernel with its callees compiles in 1.3 s instead of 2.1 (CPU s, the same bits)."""
    tw_code, ta_code, iw_code, ia_code, require_spurious = codes
    a_fixed, w_scale, a_radius = values
    U_cap, E_perp, AS, W0, A0, fail = out
    p = W0.shape[1]
    k = A0.shape[1]
    for r in range(lo, hi):
        st = states[r]
        # teacher filter: a uniform number for the cap's marginal, and a direction orthogonal to v
        U_cap[r] = uniform_call(st)
        if p >= 2:
            _unit_orthogonal(st, v, E_perp[r])
        else:
            x, _ = normal_pair_call(st)
            E_perp[r, 0] = 1.0 if x >= 0 else -1.0  # sign for the sphere in 1-D
        # teacher second layer
        ast = AS[r]
        if ta_code == 0:
            tries = 0
            while True:
                fill_normal(st, ast)
                if not require_spurious:
                    break
                s = 0.0
                q = 0.0
                for j in range(k):
                    s += ast[j]
                    q += ast[j] * ast[j]
                if cf.spurious_margin(k, s, q) > 0.0:  # the spurious point exists (exactly 0 for k = 1)
                    break
                tries += 1
                if tries > _MAX_REDRAWS:
                    fail[r] = True
                    break
        elif ta_code == 1:
            for j in range(k):
                ast[j] = 1.0
        else:
            for j in range(k):
                ast[j] = a_fixed[j]
        # student filter
        w = W0[r]
        if iw_code == 0:
            for i in range(p):
                w[i] = 0.0
        else:
            fill_normal(st, w)
            if iw_code == 1:
                nn = 0.0
                for i in range(p):
                    nn += w[i] * w[i]
                nn = math.sqrt(nn)
                for i in range(p):
                    w[i] /= nn
            else:
                for i in range(p):
                    w[i] *= w_scale / math.sqrt(p)
        # student second layer
        a = A0[r]
        rad = a_radius
        if rad < 0.0:
            rad = 0.0
            for j in range(k):
                rad += ast[j] * ast[j]
            rad = math.sqrt(rad)
        fill_normal(st, a)
        if ia_code == 0:
            nn = 0.0
            for j in range(k):
                nn += a[j] * a[j]
            scale = rad * uniform_call(st) ** (1.0 / k) / math.sqrt(nn)
        else:
            scale = rad / math.sqrt(k)
        for j in range(k):
            a[j] *= scale


def _on_threads(work, R: int, chunk: int = 4096) -> None:
    """``work(lo, hi)`` over chunks of the ``R`` runs on ``numba.get_num_threads()`` threads (``work`` releases
    the GIL; each run draws from its own stream, so the split does not change any number)."""
    starts = list(range(0, R, chunk))
    threads = max(1, min(numba.get_num_threads(), len(starts)))
    if threads == 1:
        work(0, R)
        return
    with ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(work, lo, min(lo + chunk, R)) for lo in starts]:
            fut.result()


def betaincinv_threads(half: float, x: np.ndarray) -> np.ndarray:
    """``special.betaincinv(half, half, x)`` elementwise, on numba's thread count: the ufunc releases the GIL and
    each element is computed alone, so the slices give the same bits as one call (it is most of the draw's time)."""
    from scipy import special  # here, not at the top: scipy.special takes 0.2 s to import (sims.cli)

    parts = min(numba.get_num_threads(), max(1, x.shape[0] // 4096))
    if parts == 1:
        return special.betaincinv(half, half, x)
    out = np.empty_like(x)
    bounds = np.linspace(0, x.shape[0], parts + 1).astype(np.int64)

    def part(i: int) -> None:
        out[bounds[i]:bounds[i + 1]] = special.betaincinv(half, half, x[bounds[i]:bounds[i + 1]])

    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(part, range(parts)))
    return out


def draw(
    states: np.ndarray, *, p: int, k: int, teacher: Teacher, init: Init, shortcut: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``(w_star, a_star, w0, a0)`` for each run, advancing each run's stream in ``states`` in place."""
    R = states.shape[0]
    U_cap = np.empty(R)
    E_perp = np.empty((R, p))
    AS = np.empty((R, k))
    W0 = np.empty((R, p))
    A0 = np.empty((R, k))
    fail = np.zeros(R, dtype=np.bool_)
    a_fixed = np.asarray(teacher.a_value if teacher.a == "fixed" else np.zeros(k), dtype=np.float64)
    codes = (TEACHER_W.index(teacher.w), TEACHER_A.index(teacher.a), INIT_W.index(init.w), INIT_A.index(init.a),
             bool(teacher.require_spurious))
    values = (a_fixed, float(init.w_scale), -1.0 if init.a_radius is None else float(init.a_radius))
    out = (U_cap, E_perp, AS, W0, A0, fail)
    _on_threads(lambda lo, hi: _draw(lo, hi, states, shortcut, codes, values, out), R)
    if fail.any():
        raise ValueError(f"teacher.require_spurious: no Gaussian a* with a spurious point in {_MAX_REDRAWS} draws")
    # Teacher filter from the cap's marginal: t = v.w*, w* = t v + sqrt(1 - t^2) e_perp.
    if p == 1:
        if teacher.w == "sphere" or (teacher.w == "cap" and teacher.phi_max >= math.pi):  # the cap is the sphere
            WS = E_perp.copy()
        elif teacher.w == "cap":
            WS = np.repeat(shortcut[None, :], R, axis=0)  # the only unit vectors are +-v; the cap holds +v only
        else:
            if teacher.angle not in (0.0, math.pi):
                raise ValueError("teacher.angle must be 0 or pi when p = 1")
            WS = np.repeat(shortcut[None, :] * math.cos(teacher.angle), R, axis=0)
        return WS, AS, W0, A0
    if teacher.w == "angle":
        t = np.full(R, math.cos(teacher.angle))
        s = np.full(R, math.sin(teacher.angle))
    else:
        # Sample y = (1 - t) / 2, which has the same Beta(half, half) law, below y_max = (1 - cos(phi_max)) / 2 =
        # sin(phi_max / 2)^2: the cap's mass I(y_max) is then computed without cancellation even when it is below
        # 1e-16 (a small cap in high dimension; 1 - I(x) would round to 0 there and every draw would be t = 1).
        # The quantile (1 - U) I(y_max) makes this the same map U -> t as the lower-tail form in exact arithmetic.
        from scipy import special  # here, not at the top: scipy.special takes 0.2 s to import (sims.cli)

        half = (p - 1) / 2.0
        mass = special.betainc(half, half, math.sin(teacher.phi_max / 2.0) ** 2) if teacher.w == "cap" else 1.0
        y = np.clip(betaincinv_threads(half, (1.0 - U_cap) * mass), 0.0, 1.0)
        t = 1.0 - 2.0 * y
        s = 2.0 * np.sqrt(y * (1.0 - y))  # sqrt(1 - t^2) without cancellation near t = +-1
    WS = t[:, None] * shortcut[None, :] + s[:, None] * E_perp
    WS /= np.linalg.norm(WS, axis=1, keepdims=True)
    return WS, AS, W0, A0
