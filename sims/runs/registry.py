"""The registry of engines: the Python side of every engine :func:`sims.simulate` can run, selected by name or by
an options object (like ``scipy.integrate.solve_ivp``'s ``METHODS``).

:func:`sims.simulate` is one pipeline for every engine: validate the common arguments (:class:`Call`), draw the
teachers and the end-to-end init from the runs' streams (:class:`Draws`), let the engine turn them into its
starting point (:meth:`EngineSpec.start`), resolve the schedule, let the engine build its compiled record
(:meth:`EngineSpec.build`), run it on the one driver (:func:`sims.engines.driver.run_batch`), let the engine say
what it deployed (:meth:`EngineSpec.finish`), classify, fit rates and assemble the :class:`sims.SimulationResult`.
An engine supplies only the hooks where it differs; the defaults of :class:`EngineSpec` are the plain network's.

Adding an engine is one file and one registration: its compiled record and hooks (:func:`sims.engines.driver.
register`), a subclass of :class:`EngineSpec` with at least :meth:`~EngineSpec.build`, and
``register_engine(name, spec)``; ``sims.simulate(engine=name)`` (or ``engine=`` an instance of the spec's
``options`` class) then runs it.  The engines of :mod:`sims.methods` register themselves when :mod:`sims` is
imported; this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

import theory
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule


class Call(NamedTuple):
    """The validated common arguments of one :func:`sims.simulate` call (an engine's ``validate`` may replace
    fields with ``call._replace(...)``).  ``shortcut`` is the unit shortcut vector ``v``; ``explicit`` the
    explicit ``(w0, a0)`` arrays of ``init=(w0, a0)`` (``init`` is then the default sampler the streams still
    advance by)."""

    model: theory.Model
    k: int
    p: int
    runs: int
    steps: int
    schedule: Schedule
    teacher: Teacher | tuple[Any, Any]
    init: Init
    explicit: tuple[np.ndarray, np.ndarray] | None
    algorithm: str
    batch_size: int | None
    shortcut: np.ndarray
    seed: int
    run_offset: int
    tolerances: Any
    n_record: int
    allow_unstable: bool
    threads: int | None


class Draws(NamedTuple):
    """What every run drew from its stream: the streams (advanced past the draws), teachers and the init."""

    states: np.ndarray  # (R, 4) uint64
    WS: np.ndarray  # (R, p) unit teacher filters
    AS: np.ndarray  # (R, k) teacher second layers
    W0: np.ndarray  # (R, p) initial filters (the ResNet's residual branch)
    A0: np.ndarray  # (R, k)


class Start(NamedTuple):
    """An engine's starting point: the effective filter ``w~_0`` and ``a_0`` the schedule is resolved at (and the
    driver starts from), the init reported as ``result.w0, result.a0``, optionally the initial angle (default:
    computed from ``WT0``) and any state of the engine's own (e.g. the factors of an expansion)."""

    WT0: np.ndarray
    A0: np.ndarray
    w0: np.ndarray
    a0: np.ndarray
    phi0: np.ndarray | None = None
    state: Any = None


class Setup(NamedTuple):
    """One call's problem as an engine builds on it: the draws, its start, the resolved schedule
    (:class:`sims.runs.schedules.ResolvedSchedule`), the record steps and the working copies ``WT, A`` of the
    start (C-contiguous; the engine trains them in place)."""

    draws: Draws
    start: Start
    sched: Any
    rec: np.ndarray
    WT: np.ndarray
    A: np.ndarray


class Built(NamedTuple):
    """An engine ready to run: its compiled entry point and workspace function (:func:`sims.engines.driver.
    run_batch`), its record, whether the ``trapped`` stop may apply (it does only if ``tolerances.stop_trapped``
    too; the bound holds for noise-free population GD), and anything the engine's ``finish`` needs besides
    (``extra``; e.g. the vectors the order-parameter engine's coordinates refer to)."""

    entry: Callable
    workspace: Callable
    eng: Any
    trapped: bool
    extra: Any = None


class Finished(NamedTuple):
    """What an engine deployed: the final effective filter ``WT`` and ``a`` (classified against the fixed points
    of ``model`` and used for the rates), the reported ``w`` (the residual branch for the ResNet), ``extras``;
    ``theory_rate``: whether the Hessian rate of plain GD applies (else NaN, and only the rate windows are
    compared); ``stuck``: runs at a stationary point of the engine's parameterization that is not the network's
    (reported ``saddle``, or ``spurious`` if they sit there), or None."""

    WT: np.ndarray
    A: np.ndarray
    w: np.ndarray
    model: theory.Model
    extras: dict[str, np.ndarray]
    theory_rate: bool = True
    stuck: np.ndarray | None = None
    continuous: bool = False  # gradient flow: times in place of steps, rates per unit of time (sims.runs.flow)


def no_noise(sched: Any) -> bool:
    """Whether the resolved schedule adds no perturbation noise (the trapped bound needs a noise-free segment)."""
    return not (sched.noise_w.any() or sched.noise_a.any())


def check_stable(call: Call) -> None:
    """Refuse ``eta_a`` above GD's stability limit on ``a`` unless ``allow_unstable``."""
    limit = theory.max_stable_eta_a(call.k)
    eta = call.schedule.max_eta_a(call.k)
    if eta > limit and not call.allow_unstable:
        raise ValueError(
            f"eta_a = {eta:g} exceeds the stability limit 2 / lambda_1 = {limit:.6g} for k = {call.k} (lambda_1 = "
            f"{theory.a_hessian_eigenvalues(call.k)[0]:.6g}, the largest eigenvalue of the a-Hessian); GD on a "
            "diverges there. Pass allow_unstable=True to study divergence."
        )


class EngineSpec:
    """The Python side of one engine.  Every hook has the plain network's behaviour by default except
    :meth:`build`; ``opts`` is the engine's options object (None for an engine selected by a name without one).

    Class attributes: ``options``, the options class that selects the engine (``engine=Options(...)``), or None;
    ``algorithms``, the values of ``simulate(algorithm=...)`` it runs.
    """

    options: type | None = None
    algorithms: tuple[str, ...] = ("gd",)

    def default_options(self, name: str) -> Any:
        """The options of ``engine=name`` (an engine with an options class needs them given)."""
        if self.options is not None:
            raise ValueError(f"engine {name!r} needs its options: pass engine=sims.{self.options.__name__}(...)")
        return None

    def default_teacher(self, opts: Any) -> Teacher:
        return Teacher()

    def default_init(self, opts: Any, model: theory.Model) -> Init:
        """The init sampler when ``init`` is not given: ``w0 = 0`` for the ResNet, a uniform unit ``w0`` else."""
        return Init(w="zero" if model.shortcut else "sphere")

    def validate(self, opts: Any, call: Call) -> Call:
        """Check the options against the common arguments; return the call (possibly with fields replaced)."""
        if call.algorithm not in self.algorithms:
            raise ValueError(f"algorithm must be one of {self.algorithms} for this engine; got {call.algorithm!r}")
        check_stable(call)
        return call

    def extra_per_run(self, opts: Any, call: Call) -> int:
        """float64 numbers the engine holds per run beyond the plain network's (for the memory check)."""
        return 0

    def start(self, opts: Any, call: Call, draws: Draws) -> Start:
        """The effective starting filter: ``w0 + v`` for the ResNet, ``w0`` for the CNNs."""
        WT0 = draws.W0 + call.shortcut if call.model.shortcut else draws.W0.copy()
        return Start(WT0, draws.A0, draws.W0, draws.A0)

    def make_outputs(self, opts: Any, runs: int, m: int) -> Any:
        """The output arrays the engine's entry point fills (default: the driver's, steps as integers)."""
        from sims.engines import driver

        return driver.make_outputs(runs, m)

    def build(self, opts: Any, call: Call, setup: Setup) -> Built:
        raise NotImplementedError(f"{type(self).__name__}.build")

    def finish(self, opts: Any, call: Call, setup: Setup, built: Built, out: Any) -> Finished:
        """What was deployed, from the trained working copies ``setup.WT, setup.A`` (and the driver's outputs
        ``out``, :class:`sims.engines.driver.Outputs`): the ResNet's residual branch is reported as ``w``."""
        w = setup.WT - call.shortcut if call.model.shortcut else setup.WT
        return Finished(setup.WT, setup.A, w, call.model, {})

    def settings(self, opts: Any, call: Call, base: dict[str, Any]) -> dict[str, Any]:
        """``result.settings`` from the common ones ``base`` (values converted afterwards: dataclasses to dicts)."""
        return base


_BY_NAME: dict[str, EngineSpec] = {}
_BY_OPTIONS: dict[type, str] = {}


def register_engine(name: str, spec: EngineSpec, *, replace: bool = False) -> EngineSpec:
    """Make ``spec`` selectable as ``sims.simulate(engine=name)`` (and by an instance of ``spec.options``).

    A name or options class already taken by another engine is refused unless ``replace``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"engine name must be a non-empty string; got {name!r}")
    if not isinstance(spec, EngineSpec):
        raise ValueError(f"spec must be a sims.EngineSpec; got {type(spec).__name__}")
    old = _BY_NAME.get(name)
    if old is not None and type(old) is not type(spec) and not replace:
        raise ValueError(f"engine {name!r} is already registered ({type(old).__name__}); pass replace=True")
    owner = _BY_OPTIONS.get(spec.options) if spec.options is not None else None
    if owner is not None and owner != name and not replace:
        raise ValueError(f"options class {spec.options.__name__} already selects engine {owner!r}")
    _BY_NAME[name] = spec
    if spec.options is not None:
        _BY_OPTIONS[spec.options] = name
    return spec


def engine_names() -> tuple[str, ...]:
    """The registered engine names."""
    return tuple(_BY_NAME)


def lookup(engine: Any) -> tuple[str, EngineSpec, Any]:
    """``(name, spec, options)`` of ``engine``: a registered name or an instance of a registered options class."""
    if isinstance(engine, str):
        spec = _BY_NAME.get(engine)
        if spec is None:
            raise ValueError(f"engine must be one of {engine_names()} or an engine's options object; got {engine!r}")
        return engine, spec, spec.default_options(engine)
    name = _BY_OPTIONS.get(type(engine))
    if name is None:
        kinds = ", ".join(f"sims.{cls.__name__}" for cls in _BY_OPTIONS)
        raise ValueError(f"engine must be a registered name {engine_names()} or an options object ({kinds}); "
                         f"got {type(engine).__name__}")
    return name, _BY_NAME[name], engine


def selects(opts: Any, name: str) -> bool:
    """Whether ``opts`` is an options object of the engine registered as ``name``."""
    return _BY_OPTIONS.get(type(opts)) == name
