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
    """The validated common arguments of one :func:`sims.simulate` call, as every engine hook receives them.

    An engine's ``validate`` may replace fields with ``call._replace(...)``.  The fields are the arguments of
    :func:`sims.simulate` after checking and defaulting, except the two below.

    Parameters
    ----------
    model : theory.Model
        The architecture.
    k, p, runs, steps : int
        Patches, patch dimension, runs and step budget.
    schedule : sims.Schedule
        The step-size schedule.
    teacher : sims.Teacher or tuple of array_like
        The teacher sampler, or explicit ``(w_star, a_star)``.
    init : sims.Init
        The init sampler (with ``init=(w0, a0)``, the default sampler the streams still advance by).
    explicit : tuple of numpy.ndarray or None
        The explicit ``(w0, a0)`` arrays of ``init=(w0, a0)``, ``(runs, p)`` and ``(runs, k)``, else None.
    algorithm : str
        ``"gd"``, ``"sgd"`` or ``"gd-fixed"``.
    batch_size : int or None
        Minibatch or sample size of the finite-sample algorithms.
    shortcut : numpy.ndarray
        The unit shortcut vector ``v``, ``(p,)``.
    seed, run_offset : int
        The streams' seed and the number of the first run.
    tolerances : sims.Tolerances
        The stopping rules.
    n_record : int
        Log-spaced trajectory points per run.
    allow_unstable : bool
        Whether ``eta_a`` above the stability limit is allowed.
    threads : int or None
        Threads of the kernels.

    Examples
    --------
    An engine that keeps only the first and the last trajectory point, by replacing a field in ``validate``:

    >>> import sims
    >>> from sims.runs.plain import GDSpec
    >>> class Quiet(GDSpec):
    ...     def validate(self, opts, call):
    ...         return super().validate(opts, call._replace(n_record=2))
    >>> _ = sims.register_engine("gd-quiet", Quiet())
    >>> kw = dict(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> sims.simulate(engine="gd-quiet", **kw).trajectory_steps
    array([  0, 200])
    """

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
    """What every run drew from its stream: the streams (advanced past the draws), teachers and the init.

    Every engine receives the same draws for the same seed, so engines are paired run by run; an engine's
    ``start`` hook turns them into its starting point.

    Parameters
    ----------
    states : numpy.ndarray
        The runs' random streams, ``(R, 4)`` uint64, advanced past the draws (noise continues from there).
    WS : numpy.ndarray
        Unit teacher filters, ``(R, p)``.
    AS : numpy.ndarray
        Teacher second layers, ``(R, k)``.
    W0 : numpy.ndarray
        Initial filters, ``(R, p)`` (the ResNet's residual branch).
    A0 : numpy.ndarray
        Initial second layers, ``(R, k)``.

    Examples
    --------
    An engine that starts every run's second layer at the teacher's:

    >>> import numpy as np, sims
    >>> from sims.runs.plain import GDSpec
    >>> class TeacherHead(GDSpec):
    ...     def start(self, opts, call, draws):
    ...         start = super().start(opts, call, draws)
    ...         return start._replace(A0=draws.AS.copy(), a0=draws.AS.copy())
    >>> _ = sims.register_engine("gd-teacher-head", TeacherHead())
    >>> kw = dict(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res = sims.simulate(engine="gd-teacher-head", **kw)
    >>> bool(np.array_equal(res.a0, res.a_star)), res.counts()["global"]
    (True, 3)
    """

    states: np.ndarray  # (R, 4) uint64
    WS: np.ndarray  # (R, p) unit teacher filters
    AS: np.ndarray  # (R, k) teacher second layers
    W0: np.ndarray  # (R, p) initial filters (the ResNet's residual branch)
    A0: np.ndarray  # (R, k)


class Start(NamedTuple):
    """An engine's starting point, returned by its ``start`` hook.

    The schedule is resolved at it (the prescribed warmup needs its angle and norm) and the driver starts from it.

    Parameters
    ----------
    WT0 : numpy.ndarray
        The effective filters ``w~_0``, ``(R, p)``.
    A0 : numpy.ndarray
        The second layers ``a_0``, ``(R, k)``.
    w0, a0 : numpy.ndarray
        The init reported as ``result.w0, result.a0`` (for the ResNet ``w0`` is the residual branch).
    phi0 : numpy.ndarray, optional
        The initial angles ``(R,)`` (default: computed from ``WT0``).
    state : object, optional
        Any state of the engine's own (e.g. the factors of an expansion).

    Examples
    --------
    An engine that starts at the teacher's filter (``w~_0 = w*``), so every run starts at angle 0:

    >>> import sims
    >>> from sims.runs.plain import GDSpec
    >>> class FromTeacher(GDSpec):
    ...     def start(self, opts, call, draws):
    ...         WT0 = draws.WS.copy()
    ...         w0 = WT0 - call.shortcut if call.model.shortcut else WT0
    ...         return sims.Start(WT0, draws.A0, w0, draws.A0)
    >>> _ = sims.register_engine("gd-from-teacher", FromTeacher())
    >>> kw = dict(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res = sims.simulate(engine="gd-from-teacher", **kw)
    >>> res.final_phi, res.counts()["global"]
    (array([0., 0., 0.]), 3)
    """

    WT0: np.ndarray
    A0: np.ndarray
    w0: np.ndarray
    a0: np.ndarray
    phi0: np.ndarray | None = None
    state: Any = None


class Setup(NamedTuple):
    """One call's problem as an engine's ``build`` and ``finish`` hooks see it.

    The pipeline assembles it after the engine's ``start``; the engine trains the working copies in place.

    Parameters
    ----------
    draws : Draws
        What the runs drew.
    start : Start
        The engine's starting point.
    sched : sims.runs.schedules.ResolvedSchedule
        The schedule resolved per run.
    rec : numpy.ndarray
        The record steps (:func:`sims.record_steps`).
    WT, A : numpy.ndarray
        C-contiguous working copies of ``start.WT0`` and ``start.A0``.

    Examples
    --------
    An engine that reports the norm of each run's starting effective filter (1 for the ResNet from ``w0 = 0``):

    >>> import numpy as np, sims
    >>> from sims.runs.plain import GDSpec
    >>> class StartNorm(GDSpec):
    ...     def finish(self, opts, call, setup, built, out):
    ...         fin = super().finish(opts, call, setup, built, out)
    ...         return fin._replace(extras={"start_norm": np.linalg.norm(setup.start.WT0, axis=1)})
    >>> _ = sims.register_engine("gd-start-norm", StartNorm())
    >>> kw = dict(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> sims.simulate(engine="gd-start-norm", **kw).extras["start_norm"]
    array([1., 1., 1.])
    """

    draws: Draws
    start: Start
    sched: Any
    rec: np.ndarray
    WT: np.ndarray
    A: np.ndarray


class Built(NamedTuple):
    """An engine ready to run, returned by its ``build`` hook and run on :func:`sims.engines.driver.run_batch`.

    The pipeline hands its fields to the one run driver, so every engine shares the stops, monitors and records.

    Parameters
    ----------
    entry : callable
        The compiled entry point (a run range of :func:`sims.engines.driver.register`).
    workspace : callable
        The function that allocates a thread's workspace.
    eng : object
        The engine's compiled record.
    trapped : bool
        Whether the ``trapped`` stop may apply (it does only if ``tolerances.stop_trapped`` too; the bound holds
        for noise-free population GD).
    extra : object, optional
        Anything the engine's ``finish`` needs besides (e.g. the vectors the order-parameter engine's coordinates
        refer to).

    Examples
    --------
    An engine that never stops a run as ``trapped`` (it trains to the step budget instead):

    >>> import sims
    >>> from sims.runs.plain import GDSpec
    >>> class Untrapped(GDSpec):
    ...     def build(self, opts, call, setup):
    ...         return super().build(opts, call, setup)._replace(trapped=False)
    >>> _ = sims.register_engine("gd-untrapped", Untrapped())
    >>> kw = dict(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> sims.simulate(**kw).stop_reason.tolist()
    ['loss_tol', 'trapped', 'loss_tol']
    >>> sims.simulate(engine="gd-untrapped", **kw).stop_reason.tolist()
    ['loss_tol', 'max_steps', 'loss_tol']
    """

    entry: Callable
    workspace: Callable
    eng: Any
    trapped: bool
    extra: Any = None


class Finished(NamedTuple):
    """What an engine deployed, returned by its ``finish`` hook.

    The pipeline classifies ``(WT, A)`` against the fixed points of ``model``, fits the rates on it and reports
    ``w`` as ``result.w``.

    Parameters
    ----------
    WT : numpy.ndarray
        The final effective filters, ``(R, p)``.
    A : numpy.ndarray
        The final second layers, ``(R, k)``.
    w : numpy.ndarray
        The reported filters (the residual branch for the ResNet), ``(R, p)``.
    model : theory.Model
        The model deployed (e.g. the CNN after a fading shortcut).
    extras : dict of str to numpy.ndarray
        Per-run arrays stored in ``result.extras``.
    theory_rate : bool, default True
        Whether the Hessian rate of plain GD applies (else NaN, and only the rate windows are compared).
    stuck : numpy.ndarray, optional
        Runs at a stationary point of the engine's parameterization that is not the network's (reported
        ``saddle``, or ``spurious`` if they sit there), or None.
    continuous : bool, default False
        Whether the engine integrated gradient flow (:mod:`sims.runs.flow`): its step counts are times (floats)
        and its rates are per unit of time.

    Examples
    --------
    An engine that reports the final norm of the effective filter as an extra (GD steps are orthogonal to ``w~``,
    so it never shrinks below the start's 1):

    >>> import numpy as np, sims
    >>> from sims.runs.plain import GDSpec
    >>> class Norms(GDSpec):
    ...     def finish(self, opts, call, setup, built, out):
    ...         fin = super().finish(opts, call, setup, built, out)
    ...         return fin._replace(extras={"norm": np.linalg.norm(fin.WT, axis=1)})
    >>> _ = sims.register_engine("gd-norms", Norms())
    >>> kw = dict(k=4, p=4, runs=3, steps=200, schedule=sims.Schedule.constant(0.5, 1.0))
    >>> np.round(sims.simulate(engine="gd-norms", **kw).extras["norm"], 4)
    array([1.0735, 1.0456, 1.1352])
    """

    WT: np.ndarray
    A: np.ndarray
    w: np.ndarray
    model: theory.Model
    extras: dict[str, np.ndarray]
    theory_rate: bool = True
    stuck: np.ndarray | None = None
    continuous: bool = False


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
    """The Python side of one engine: the hooks :func:`sims.simulate` calls.

    Every hook has the plain network's behaviour by default except :meth:`build`; ``opts`` is the engine's
    options object (None for an engine selected by a name without one).  The pipeline calls, in order,
    :meth:`default_options`, :meth:`default_teacher`, :meth:`default_init`, :meth:`validate`,
    :meth:`extra_per_run`, :meth:`start`, :meth:`build`, :meth:`finish` and :meth:`settings`
    (:mod:`sims.runs.registry`).  Register an instance with :func:`sims.register_engine`.

    Attributes
    ----------
    options : type or None
        The options class that selects the engine (``engine=Options(...)``), or None.
    algorithms : tuple of str
        The values of ``simulate(algorithm=...)`` it runs (default ``("gd",)``).

    Examples
    --------
    Population GD on the full coordinates (:class:`sims.runs.plain.GDSpec` supplies :meth:`build`) whose
    runs all start at the teacher's filter:

    >>> import sims
    >>> from sims.runs.plain import GDSpec
    >>> class FromTeacher(GDSpec):
    ...     def start(self, opts, call, draws):
    ...         WT0 = draws.WS.copy()
    ...         w0 = WT0 - call.shortcut if call.model.shortcut else WT0
    ...         return sims.Start(WT0, draws.A0, w0, draws.A0)
    >>> isinstance(FromTeacher(), sims.EngineSpec), FromTeacher.options, FromTeacher.algorithms
    (True, None, ('gd',))
    >>> _ = sims.register_engine("from-teacher", FromTeacher())
    >>> res = sims.simulate(engine="from-teacher", k=4, p=4, runs=3, steps=200,
    ...                     schedule=sims.Schedule.constant(0.5, 1.0))
    >>> res.counts()["global"], res.settings["engine"]
    (3, 'from-teacher')
    """

    options: type | None = None
    algorithms: tuple[str, ...] = ("gd",)

    def default_options(self, name: str) -> Any:
        """The options of ``engine=name`` (an engine with an options class needs them given)."""
        if self.options is not None:
            raise ValueError(f"engine {name!r} needs its options: pass engine=sims.{self.options.__name__}(...)")
        return None

    def default_teacher(self, opts: Any) -> Teacher:
        """The teacher sampler when ``teacher`` is not given: ``Teacher()``."""
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
        """The engine's compiled record on the working copies ``setup.WT, setup.A`` (every engine supplies it)."""
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

    This is how an engine joins the one pipeline of :func:`sims.simulate` (the engines of :mod:`sims.methods`
    register themselves when :mod:`sims` is imported).  A name or options class already taken by another engine
    is refused unless ``replace``; registering the same spec class again under its name is allowed.

    Parameters
    ----------
    name : str
        The engine's name (``engine=name``; a sweep file's ``engine = { kind = name }``).
    spec : EngineSpec
        The engine's hooks.
    replace : bool, default False
        Replace an engine already registered under ``name`` or with the same options class.

    Returns
    -------
    EngineSpec
        ``spec``, so that a module can keep it (``GD = register_engine("gd", AutoGDSpec())``).

    Raises
    ------
    ValueError
        If ``name`` is not a non-empty string, ``spec`` is not an :class:`EngineSpec`, or the name or options
        class is taken and ``replace`` is False.

    Examples
    --------
    >>> import sims
    >>> from sims.runs.plain import GDSpec
    >>> spec = sims.register_engine("gd-full-coordinates", GDSpec())
    >>> "gd-full-coordinates" in sims.engine_names()
    True
    >>> sims.register_engine("gd", GDSpec())
    Traceback (most recent call last):
    ...
    ValueError: engine 'gd' is already registered (AutoGDSpec); pass replace=True
    """
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
    """The registered engine names, in the order of registration.

    These are the values ``sims.simulate(engine=...)`` and a sweep file's ``engine = { kind = ... }`` accept; the
    list grows with every :func:`sims.register_engine`.

    Returns
    -------
    tuple of str
        The names.

    Examples
    --------
    >>> import sims
    >>> sims.engine_names()[:8]
    ('vector', 'reduced', 'gd', 'sgd', 'gd-fixed', 'flow', 'fade', 'expansion')
    """
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
