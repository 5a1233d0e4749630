"""The sweep file's schema, declared with pydantic v2: every table a typed model, the schedule kinds a union
tagged by ``kind``, the accepted ranges and descriptions in the fields (so they are in the JSON Schema that
``shallowres schema`` prints and in the configuration reference, :func:`reference_markdown`).

A sweep file (:class:`SweepFile`) has four tables: ``[sweep]`` (:class:`SweepTable`), ``[base]`` (a :class:`Cell`),
``[grid]`` and ``[methods.LABEL]`` (overrides of ``[base]``).  :mod:`sims.studies.sweep` validates ``[sweep]`` and
the keys of the other tables when it reads the file, and every *cell* (``[base]`` merged with a method, a grid point
and the ``--set`` values) with :class:`Cell`: a value in ``[base]`` may be replaced or completed by a method, the
grid or ``--set``, so the values are checked where they are final.  A :class:`pydantic.ValidationError` becomes one
line naming the cell, the field (``schedule.segments[0].eta_w``) and what it accepts (:func:`explain`).

The models check types, choices, ranges and the rules between fields of one cell; what depends on the dynamics
(the stability limit of a step, stages within the step budget, an engine's own rules) is checked by a one-run dry
run of every cell in :func:`sims.studies.sweep.build_spec`.  Values are checked strictly: no string is read as a
number, no ``true`` as 1, no float as an integer; integers are accepted where a number is.
"""

import json
import math
from collections.abc import Iterable
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic.fields import FieldInfo

from sims.methods.distill import FADE_KINDS
from sims.methods.expansion import INITS as EXPANSION_INITS
from sims.methods.expansion import TARGETS as EXPANSION_TARGETS
from sims.methods.laperm import INIT_DISTS as LAPERM_INITS
from sims.methods.laperm import INNER as LAPERM_INNER
from sims.methods.laperm import PERMUTE as LAPERM_PERMUTE
from sims.runs.registry import engine_names
from sims.runs.samplers import INIT_A, INIT_W, MIN_W_SCALE, TEACHER_A, TEACHER_W
from sims.runs.schedules import MIN_HALF_LIFE
from sims.runs.simulate import ALGORITHMS
from theory.validation import MODELS

SCHEDULE_KINDS: tuple[str, ...] = ("constant", "two-stage", "layerwise", "piecewise", "perturbed", "prescribed-warmup")
#: Engine kinds with options in a sweep file; any other registered engine name (:func:`sims.engine_names`, e.g. one
#: registered by :func:`sims.register_engine`) is selected by ``engine = { kind = NAME }`` alone.
ENGINE_KINDS: tuple[str, ...] = ("fade", "laperm", "expansion")
STEP_RULES: tuple[str, ...] = ("same", "matched")
MAX_STEPS = 10**9
MAX_SEED = 2**63 - 1

#: The resolved ``[base]`` a file starts from (a cell has no ``engine`` unless one is given).
DEFAULT_BASE: dict[str, Any] = {
    "model": "resnet", "k": 16, "p": 16, "steps": 20000, "algorithm": "gd", "batch_size": None, "n_record": 32,
    "allow_unstable": False, "teacher": {}, "init": {}, "schedule": {"kind": "prescribed-warmup", "eta_w_rel": 0.25,
                                                                   "eta_a_rel": 0.9},
    "tolerances": {},
}


class Table(BaseModel):
    """A TOML table: strict types, unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, validate_default=True)
    #: How a message names a table of this model after its path (``{kind!r}``: its raw ``kind``), e.g.
    #: ``schedule (kind 'constant')``.
    note: ClassVar[str] = ""
    #: Keys listed as valid besides the model's fields (a teacher table may switch to ``fixed_seed``).
    also_valid: ClassVar[tuple[str, ...]] = ()
    #: The model's tag in a union not tagged by a ``kind`` (teachers), or for any ``kind`` (registered engines).
    tag: ClassVar[str] = ""


def _no_default(schema: dict[str, Any]) -> None:
    """Drop a default JSON cannot write (``inf``) from a field's JSON Schema; its description says it."""
    schema.pop("default", None)


def _number(default: float | None, description: str, *, finite: bool = True, **limits: float) -> Any:
    return Field(default, description=description, allow_inf_nan=not finite, **limits)


def _rate(description: str) -> Any:
    return Field(None, ge=0.0, allow_inf_nan=False, description=description)


def _choice(choices: Iterable[str]) -> Any:
    return Literal[tuple(choices)]  # type: ignore[valid-type]


def _rel(stem: str, what: str) -> str:
    scale = "of 4 pi / (k + 2 pi - 2), the fastest contracting step" if stem.startswith("eta_a") else "of 2 / k"
    return f"{what} as a fraction {scale} (instead of {stem})."


# ---------------------------------------------------------------------------------------------------------------
# [sweep]


class SweepTable(Table):
    """``[sweep]``: the sweep's name, size, seed and chunking."""

    name: str = Field("sweep", min_length=1, max_length=100, description=(
        "Label of the sweep (progress bar, metadata) and of its default output directory runs/NAME."),
        json_schema_extra={"x-accepts": "1 to 100 printable characters without '/' or '\\' (it names the default "
                                        "output directory runs/NAME)"})
    trials: int = Field(1000, ge=1, le=MAX_STEPS, description="Runs per grid cell.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description=(
        "Base seed: run r of every cell uses SeedSequence(seed, spawn_key=(r,)), so all methods of a (k, p) cell "
        "see the same teachers."))
    chunk: int = Field(1000, ge=1, le=10**7, description=(
        "Runs per unit of work and per chunk file (the resume granularity). From 100,000 trials per cell a sweep "
        "without an explicit chunk runs chunks of a tenth of the trials, 20,000 to 100,000."))
    description: str = Field("", description="Free text (kept in the metadata).")

    @model_validator(mode="after")
    def _name_is_a_directory_name(self) -> "SweepTable":
        name = self.name
        if not name.isprintable() or name in (".", "..") or set(name) & set("/\\"):
            raise ValueError("{at}name must be " + _extra(SweepTable.model_fields["name"], "x-accepts") +
                             f"; got {name!r}")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Schedules


class _Rates(Table):
    """A table of step sizes, each given absolutely (``eta_w``) or relative (``eta_w_rel``): exactly one of the
    two for each of :attr:`required`, at most one for each of :attr:`optional`."""

    note: ClassVar[str] = "kind {kind!r}"
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _one_of_each_pair(self) -> "_Rates":
        for stem in self.required + self.optional:
            absolute, rel = getattr(self, stem), getattr(self, f"{stem}_rel")
            if absolute is not None and rel is not None:
                raise ValueError(f"give either {{at}}{stem} or {{at}}{stem}_rel, not both")
            if absolute is None and rel is None and stem in self.required:
                raise ValueError(f"{{at}}{stem} (or {{at}}{stem}_rel) is required")
        return self

    def eta(self, stem: str, k: int, at: str = "schedule.") -> float | None:
        """The step ``stem`` in absolute terms at ``k`` (None if an optional one is not given); a relative step
        whose absolute value is not finite is a ValueError naming it (``at``: the table's path)."""
        rel = getattr(self, f"{stem}_rel")
        if rel is None:
            return getattr(self, stem)
        from sims.runs.schedules import optimal_eta_a

        value = rel * (optimal_eta_a(k) if stem.startswith("eta_a") else 2.0 / k)
        if not math.isfinite(value):
            raise ValueError(f"{at}{stem}_rel must be a finite number >= 0; got {rel!r}")
        return value


class Constant(_Rates):
    """``kind = "constant"``: one step size per layer for the whole run."""

    required: ClassVar[tuple[str, ...]] = ("eta_w", "eta_a")
    kind: Literal["constant"]
    eta_w: float | None = _rate("Step of w.")
    eta_w_rel: float | None = _rate(_rel("eta_w", "Step of w"))
    eta_a: float | None = _rate("Step of a.")
    eta_a_rel: float | None = _rate(_rel("eta_a", "Step of a"))


class TwoStage(_Rates):
    """``kind = "two-stage"``: steps ``(eta_w1, eta_a1)`` for the first ``T1`` steps, then ``(eta_w2, eta_a2)``."""

    required: ClassVar[tuple[str, ...]] = ("eta_w1", "eta_a1", "eta_w2", "eta_a2")
    kind: Literal["two-stage"]
    T1: int = Field(ge=0, description="Length of stage I in steps (at most the run's steps).")
    eta_w1: float | None = _rate("Step of w in stage I.")
    eta_w1_rel: float | None = _rate(_rel("eta_w1", "Step of w in stage I"))
    eta_a1: float | None = _rate("Step of a in stage I.")
    eta_a1_rel: float | None = _rate(_rel("eta_a1", "Step of a in stage I"))
    eta_w2: float | None = _rate("Step of w in stage II.")
    eta_w2_rel: float | None = _rate(_rel("eta_w2", "Step of w in stage II"))
    eta_a2: float | None = _rate("Step of a in stage II.")
    eta_a2_rel: float | None = _rate(_rel("eta_a2", "Step of a in stage II"))


class Layerwise(_Rates):
    """``kind = "layerwise"``: a two-stage schedule that trains only ``a`` in stage I (``eta_w1 = 0``)."""

    required: ClassVar[tuple[str, ...]] = ("eta_a1", "eta_w2", "eta_a2")
    kind: Literal["layerwise"]
    T1: int = Field(ge=0, description="Length of stage I in steps (at most the run's steps).")
    eta_a1: float | None = _rate("Step of a in stage I.")
    eta_a1_rel: float | None = _rate(_rel("eta_a1", "Step of a in stage I"))
    eta_w2: float | None = _rate("Step of w in stage II.")
    eta_w2_rel: float | None = _rate(_rel("eta_w2", "Step of w in stage II"))
    eta_a2: float | None = _rate("Step of a in stage II.")
    eta_a2_rel: float | None = _rate(_rel("eta_a2", "Step of a in stage II"))


class Perturbed(_Rates):
    """``kind = "perturbed"``: constant steps plus Gaussian gradient noise, annealed with a half-life."""

    required: ClassVar[tuple[str, ...]] = ("eta_w", "eta_a")
    kind: Literal["perturbed"]
    eta_w: float | None = _rate("Step of w.")
    eta_w_rel: float | None = _rate(_rel("eta_w", "Step of w"))
    eta_a: float | None = _rate("Step of a.")
    eta_a_rel: float | None = _rate(_rel("eta_a", "Step of a"))
    noise: float = _number(0.0, "Standard deviation of the noise added to each gradient entry of w.", ge=0.0)
    half_life: float = Field(math.inf, ge=MIN_HALF_LIFE, description=(
        f"Steps over which the noise halves (at least {MIN_HALF_LIFE:g}); default inf: no annealing."),
        json_schema_extra=_no_default)
    noise_a: float | None = _number(None, "Noise on the gradient of a (default: the same as noise).", ge=0.0)


class PrescribedWarmup(_Rates):
    """``kind = "prescribed-warmup"``: a two-stage warmup whose stage-I length and step of ``w`` come, per run,
    from the contraction bound of ``a`` (SCIENCE.md); ``(eta_w, eta_a)`` are stage II's steps."""

    required: ClassVar[tuple[str, ...]] = ("eta_w", "eta_a")
    optional: ClassVar[tuple[str, ...]] = ("eta_a_warmup",)
    kind: Literal["prescribed-warmup"]
    eta_w: float | None = _rate("Step of w in stage II.")
    eta_w_rel: float | None = _rate(_rel("eta_w", "Step of w in stage II"))
    eta_a: float | None = _rate("Step of a in stage II.")
    eta_a_rel: float | None = _rate(_rel("eta_a", "Step of a in stage II"))
    eta_a_warmup: float | None = _rate("Step of a in stage I (default: 4 pi / (k + 2 pi - 2), the fastest "
                                       "contracting one; must contract a).")
    eta_a_warmup_rel: float | None = _rate(_rel("eta_a_warmup", "Step of a in stage I"))
    safety: float = Field(1.0, gt=0.0, le=1.0, description="Factor (0, 1] on the prescribed stage-I step of w.",
                          json_schema_extra={"x-must": "lie in (0, 1]"})


class Segment(_Rates):
    """One segment of a piecewise schedule."""

    note: ClassVar[str] = ""
    required: ClassVar[tuple[str, ...]] = ("eta_w", "eta_a")
    steps: int | None = Field(None, ge=0, description=(
        "Length in steps; required for every segment but the last, which fills the step budget."))
    eta_w: float | None = _rate("Step of w.")
    eta_w_rel: float | None = _rate(_rel("eta_w", "Step of w"))
    eta_a: float | None = _rate("Step of a.")
    eta_a_rel: float | None = _rate(_rel("eta_a", "Step of a"))
    noise_w: float = _number(0.0, "Gradient noise on w in this segment.", ge=0.0)
    noise_a: float = _number(0.0, "Gradient noise on a in this segment.", ge=0.0)


class Piecewise(Table):
    """``kind = "piecewise"``: any sequence of segments."""

    note: ClassVar[str] = "kind {kind!r}"
    kind: Literal["piecewise"]
    segments: list[Segment] = Field(min_length=1, description=(
        "The segments in order: [{steps, eta_w, eta_a}, ..., {eta_w, eta_a}]."),
        json_schema_extra={"x-accepts": "a non-empty list of tables"})


Schedule = Annotated[Constant | TwoStage | Layerwise | Piecewise | Perturbed | PrescribedWarmup,
                     Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------------------------------
# Teacher, init, tolerances


class SampledTeacher(Table):
    """A teacher ``(w*, a*)`` drawn per run."""

    also_valid: ClassVar[tuple[str, ...]] = ("fixed_seed",)
    tag: ClassVar[str] = "sampled"
    w: _choice(TEACHER_W) = Field("cap", description=(
        "w*: uniform on the sphere, in the cap v.w* >= cos(phi_max) around the shortcut direction v, or at a fixed "
        "angle from v."))
    phi_max: float = Field(math.pi / 2, gt=0.0, le=math.pi, description="Half-angle of the cap (w = 'cap').",
                           json_schema_extra={"x-accepts": "a number in (0, pi]"})
    angle: float = Field(math.pi / 4, ge=0.0, le=math.pi, description="Angle between w* and v (w = 'angle').",
                         json_schema_extra={"x-accepts": "a number in [0, pi]"})
    a: _choice(TEACHER_A) = Field("gaussian", description="a*: standard Gaussian, all ones, or a_value.")
    a_value: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(None, description=(
        "a* for a = 'fixed' (k numbers)."), json_schema_extra={"x-accepts": "a list of k finite numbers"})
    require_spurious: bool = Field(False, description=(
        "Redraw a* until the spurious minimum exists (a = 'gaussian', k >= 2)."))


class FixedTeacher(Table):
    """One teacher for every run of a cell, drawn from ``default_rng([fixed_seed, k, p])``."""

    note: ClassVar[str] = "with fixed_seed"
    tag: ClassVar[str] = "fixed"
    fixed_seed: int = Field(ge=0, le=MAX_SEED, description="Seed of the cell's one teacher.")
    require_spurious: bool = Field(False, description="Redraw a* until the spurious minimum exists (k >= 2).")


def _teacher_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "fixed" if "fixed_seed" in value else "sampled"
    return value.tag if isinstance(value, Table) else None


Teacher = Annotated[Annotated[SampledTeacher, Tag("sampled")] | Annotated[FixedTeacher, Tag("fixed")],
                    Discriminator(_teacher_tag)]


class InitTable(Table):
    """How each run's starting point ``(w0, a0)`` is drawn."""

    w: _choice(INIT_W) | None = Field(None, description=(
        "w0: zero (ResNet only), uniform on the sphere, or Gaussian (w_scale); default zero for the ResNet, sphere "
        "for the CNNs."))
    # The lower bound is Init's (its message says why: ||w0||^2 may underflow below it).
    w_scale: float = Field(1.0, description="Scale of a Gaussian w0 (per-entry std w_scale / sqrt(p)).",
                           json_schema_extra={"minimum": MIN_W_SCALE, "x-accepts": f"a number >= {MIN_W_SCALE:g}"})
    a: _choice(INIT_A) = Field("ball", description="a0: uniform in a ball, or Gaussian.")
    a_radius: float | None = _number(None, "Radius (ball) or std (Gaussian) of a0; default ||a*|| of the run.",
                                     ge=0.0)


class TolerancesTable(Table):
    """Stopping rules; loss levels relative to the zero network's loss ``E[f*^2]/2``."""

    loss_tol: float = _number(1e-10, "Stop as converged (global minimum) below this loss.", ge=0.0)
    grad_tol: float = _number(1e-10, "Stop as stationary below this gradient norm (relative to sqrt(L_ref)).",
                              ge=0.0)
    eps: float = _number(1e-6, "steps_to_tol counts the steps to reach this loss.", ge=0.0)
    divergence: float = _number(1e8, "A loss above this (or not finite) is divergence.", finite=False, gt=0.0)
    rate_window: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        [1e-4, 1e-6, 1e-9], min_length=3, max_length=3, description=(
            "Loss levels [hi, mid, lo]: the rate is fitted between mid and lo, and the run is in the linear regime "
            "when the rate between hi and mid agrees within linear_rtol."),
        json_schema_extra={"x-accepts": "a list of three loss levels hi > mid > lo > 0"})
    linear_rtol: float = _number(0.01, "Tolerance (log-rate per step) of the linear-regime test.", ge=0.0)
    stop_trapped: bool = Field(True, description="Stop runs that provably entered the spurious basin (noise-free GD).")

    @model_validator(mode="after")
    def _window_decreases(self) -> "TolerancesTable":
        hi, mid, lo = self.rate_window
        if not hi > mid > lo:
            raise ValueError("{at}rate_window must be " + _extra(TolerancesTable.model_fields["rate_window"],
                                                                  "x-accepts") + f"; got {self.rate_window!r}")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Engines


class FadeEngine(Table):
    """``kind = "fade"``: the ResNet's shortcut weight faded from 1 to 0 (:class:`sims.Fade`)."""

    note: ClassVar[str] = "kind {kind!r}"
    kind: Literal["fade"]
    schedule: _choice(FADE_KINDS) = Field("linear", description="Shape of the fade.")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description=(
        "T_fade, the step at which the shortcut weight reaches 0 (not for a custom fade)."))
    values: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(None, description=(
        "A custom fade's table lambda_0 .. lambda_T (schedule = 'custom')."),
        json_schema_extra={"x-accepts": "a list of numbers 1 = lambda_0 >= ... >= lambda_T = 0"})

    @model_validator(mode="after")
    def _steps_or_values(self) -> "FadeEngine":
        if self.schedule == "custom":
            if self.values is None:
                raise ValueError("{at}values (the fade's table 1 = lambda_0 >= ... >= lambda_T = 0) is required for "
                                 "{at}schedule = 'custom'")
            if self.steps is not None:
                raise ValueError("{at}steps is len({at}values) - 1 for a custom fade; leave it out")
        elif self.values is not None:
            raise ValueError("{at}values is only for {at}schedule = 'custom'")
        elif self.steps is None:
            raise ValueError("{at}steps (T_fade, the step at which the shortcut weight reaches 0) is required")
        return self


class LaPermEngine(Table):
    """``kind = "laperm"``: lookahead permutation (:class:`sims.LaPerm`, CNN only)."""

    note: ClassVar[str] = "kind {kind!r}"
    kind: Literal["laperm"]
    K: int = Field(10, ge=0, le=MAX_STEPS, description="Synchronization period; 0: none (the plain inner optimizer).")
    inner: _choice(LAPERM_INNER) = Field("gd", description="Inner optimizer.")
    dist: _choice(LAPERM_INITS) = Field("gaussian", description="Distribution of the initial values it draws.")
    permute: _choice(LAPERM_PERMUTE) = Field("both", description="Which layers are permuted.")
    adam: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(None, description=(
        "Adam's [beta1, beta2, eps] (inner = 'adam'); default sims.LaPerm's."),
        json_schema_extra={"x-accepts": "three numbers [beta1, beta2, eps] with 0 <= beta1, beta2 < 1 and eps > 0"})

    @model_validator(mode="after")
    def _adam_in_range(self) -> "LaPermEngine":
        adam = self.adam
        if adam is not None and not (len(adam) == 3 and 0.0 <= adam[0] < 1.0 and 0.0 <= adam[1] < 1.0
                                     and adam[2] > 0.0):
            raise ValueError("{at}adam must be " + _extra(LaPermEngine.model_fields["adam"], "x-accepts") +
                             f"; got {adam!r}")
        return self


class ExpansionEngine(Table):
    """``kind = "expansion"``: a layer trained as a product of ``depth`` factors (:class:`sims.Expansion`)."""

    note: ClassVar[str] = "kind {kind!r}"
    kind: Literal["expansion"]
    target: _choice(EXPANSION_TARGETS) = Field("w", description="Which layer is expanded.")
    depth: int = Field(2, ge=1, le=64, description="Number of factors N.")
    rate: int = Field(1, ge=1, le=1024, description="Width multiplier of the inner factors.")
    init: _choice(EXPANSION_INITS) = Field("auto", description="How the factors start.")
    scale: float | None = _number(None, "Scale of the factors' initialization (default: the init's).", gt=0.0)
    pretrain_steps: int = Field(300, ge=0, le=MAX_STEPS, description="Pretraining steps of a nonlinear init.")
    pretrain_batch: int = Field(32, ge=1, le=10**6, description="Pretraining minibatch size.")
    pretrain_eta: list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] | None = Field(
        None, min_length=2, max_length=2, description="Pretraining steps [eta_w, eta_a] (default: the init's).",
        json_schema_extra={"x-accepts": "two finite numbers [eta_w, eta_a] >= 0"})
    step_rule: _choice(STEP_RULES) = Field("same", description=(
        "same: the schedule's steps as given; matched: an expanded layer's step divided by its end-to-end gain "
        "(not with the prescribed warmup)."))


class RegisteredEngine(Table):
    """Any other engine registered by name (:func:`sims.register_engine`): ``{ kind = NAME }``, no options."""

    note: ClassVar[str] = "kind {kind!r}, an engine without options"
    tag: ClassVar[str] = "registered"
    kind: str = Field(description="A registered engine's name (sims.engine_names()).",
                      json_schema_extra={"not": {"enum": list(ENGINE_KINDS)}})

    @model_validator(mode="before")
    @classmethod
    def _registered(cls, data: Any) -> Any:
        kind = data.get("kind") if isinstance(data, dict) else None
        others = tuple(n for n in engine_names() if n not in ENGINE_KINDS)
        if not isinstance(kind, str) or kind not in others:
            raise ValueError(f"{{at}}kind must be one of {', '.join(ENGINE_KINDS + others)} (registered engines); "
                             f"got {kind!r}")
        return data


def _engine_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind")
        return kind if isinstance(kind, str) and kind in ENGINE_KINDS else "registered"
    return getattr(value, "kind", None) if isinstance(value, BaseModel) else None


Engine = Annotated[Annotated[FadeEngine, Tag("fade")] | Annotated[LaPermEngine, Tag("laperm")]
                   | Annotated[ExpansionEngine, Tag("expansion")] | Annotated[RegisteredEngine, Tag("registered")],
                   Discriminator(_engine_tag)]


# ---------------------------------------------------------------------------------------------------------------
# A cell, the file


class Cell(Table):
    """``[base]``, a ``[methods.LABEL]`` table (overrides of ``[base]``), and every resolved grid cell."""

    model: _choice(MODELS) = Field(DEFAULT_BASE["model"], description=(
        "resnet (with the shortcut), cnn, or cnn-unnormalized."))
    k: int = Field(DEFAULT_BASE["k"], ge=1, le=10**6, description=(
        "Number of patches (cells with vectors are also bounded by the memory check)."))
    p: int = Field(DEFAULT_BASE["p"], ge=1, le=10**6, description=(
        "Patch dimension (cells with vectors are also bounded by the memory check)."))
    steps: int = Field(DEFAULT_BASE["steps"], ge=0, le=MAX_STEPS, description="Step budget per run.")
    algorithm: _choice(ALGORITHMS) = Field(DEFAULT_BASE["algorithm"], description=(
        "gd (population gradient), sgd (a fresh minibatch each step), gd-fixed (a fixed training set), flow "
        "(gradient flow, the eta -> 0 limit of gd)."))
    batch_size: int | None = Field(DEFAULT_BASE["batch_size"], ge=1, le=10**6, description=(
        "Minibatch (sgd) or training-set (gd-fixed) size."))
    n_record: int = Field(DEFAULT_BASE["n_record"], ge=2, le=100_000, description=(
        "Log-spaced trajectory points kept per run."))
    allow_unstable: bool = Field(DEFAULT_BASE["allow_unstable"], description=(
        "Allow eta_a above the stability limit 4 pi / (k + pi - 1)."))
    teacher: Teacher = Field(default_factory=dict, description=(
        "How each run's teacher is drawn, or fixed_seed for one teacher per cell."))
    init: InitTable = Field(default_factory=dict, description="How each run's starting point is drawn.")
    schedule: Schedule = Field(default_factory=lambda: dict(DEFAULT_BASE["schedule"]), description=(
        "The step-size schedule, by kind (eta_* may be given as eta_*_rel). Default: prescribed-warmup, "
        "eta_w_rel = 0.25, eta_a_rel = 0.9."))
    tolerances: TolerancesTable = Field(default_factory=dict, description="Stopping rules.")
    engine: Engine | None = Field(None, description=(
        "The engine of sims.simulate (default: the plain network; algorithm decides)."))

    @model_validator(mode="after")
    def _cross_field(self) -> "Cell":
        init = self.init.model_dump(exclude_unset=True)
        if isinstance(self.engine, LaPermEngine) and init:
            raise ValueError("engine.kind = 'laperm' draws its own initial values (engine.dist = 'gaussian' or "
                             f"'uniform'): leave init empty; got init = {init!r}")
        if self.model == "resnet" and self.p == 1 and self.init.w == "sphere":
            raise ValueError("init.w = 'sphere' cannot start the ResNet at p = 1: w0 = -v (no direction) in about "
                             "half the runs; use init.w = 'zero' or 'gaussian', or p >= 2")
        if isinstance(self.teacher, FixedTeacher) and self.teacher.require_spurious and self.k < 2:
            raise ValueError("teacher.require_spurious needs k >= 2 (k = 1 never has a spurious point)")
        return self


class SweepFile(Table):
    """A sweep file (TOML)."""

    sweep: SweepTable = Field(default_factory=SweepTable, description="The sweep's name, size, seed and chunking.")
    base: Cell = Field(default_factory=Cell, description=(
        "The configuration every cell starts from; a method, the grid and --set override its fields."))
    grid: dict[str, list[Any]] = Field(default_factory=dict, description=(
        "Field (dotted for nested ones, e.g. \"schedule.eta_w\") -> non-empty list of values, crossed with every "
        "method; \"f1,f2\" -> list of [v1, v2] points (the fields vary together)."))
    methods: dict[str, Cell] = Field(default_factory=dict, description=(
        "LABEL -> overrides of [base] (a schedule or engine table replaces base's as a whole, other tables are "
        "merged); every method runs the whole grid. Default: one method, 'default'."))


#: The keys of a ``[base]`` or ``[methods.LABEL]`` table and of a cell.
BASE_KEYS: tuple[str, ...] = tuple(Cell.model_fields)
#: The keys of ``[sweep]`` (and their types, for ``--set`` and the tests).
SWEEP_KEYS: dict[str, type] = {name: f.annotation for name, f in SweepTable.model_fields.items()}  # type: ignore[misc]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a sweep file (draft 2020-12, as pydantic writes it), for editors that complete and
    check TOML files against it (e.g. Taplo, Even Better TOML).  It checks each table as written; a ``[base]`` table
    whose schedule is completed only by the grid or ``--set`` is valid for ``shallowres`` but not for the schema."""
    schema = SweepFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "shallowres sweep file"
    return schema


# ---------------------------------------------------------------------------------------------------------------
# Messages


def show(text: Any) -> str:
    """A key or label from the user as printed in a message: as is when printable, else quoted and escaped (so a
    message stays one line)."""
    return text if isinstance(text, str) and text.isprintable() else repr(text)


def _extra(field: FieldInfo, key: str) -> str | None:
    extra = field.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None  # type: ignore[return-value]


def _bound(value: float) -> str:
    return "pi" if value == math.pi else f"{value:g}" if isinstance(value, float) else str(value)


def accepts(field: FieldInfo) -> str:
    """What a field accepts, as a message says it (``an integer in [1, 4096]``, ``one of gd, sgd, gd-fixed``): the
    field's own text if it has one, else from its type and constraints."""
    own = _extra(field, "x-accepts")
    if own:
        return own
    limits = {name: getattr(m, name) for m in field.metadata for name in ("ge", "gt", "le", "lt")
              if type(m).__name__.lower() == name}
    args = [a for a in get_args(field.annotation) if a is not type(None)]
    base = args[0] if get_origin(field.annotation) in (Union, UnionType) else field.annotation
    if base is bool:
        return "true or false"
    if get_origin(base) is Literal:
        return "one of " + ", ".join(get_args(base))
    if base is str:
        return "a string"
    lo = f"[{_bound(limits['ge'])}" if "ge" in limits else f"({_bound(limits['gt'])}" if "gt" in limits else None
    hi = f"{_bound(limits['le'])}]" if "le" in limits else f"{_bound(limits['lt'])})" if "lt" in limits else None
    if base is int:
        noun = "an integer"
    else:
        finite = any(getattr(m, "allow_inf_nan", None) is False for m in field.metadata)
        noun = "a finite number" if finite else "a number"
    if lo and hi:
        return f"{noun} in {lo}, {hi}"
    if lo:
        return f"{noun} {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
    if hi:
        return f"{noun} {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
    return noun


def _walk(model: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> tuple[str, Any, Any, type[BaseModel] | None,
                                                                            FieldInfo | None]:
    """Follow a pydantic error location through the models: ``(display path, raw value there, raw table holding it,
    the model of that table, the field)``; union tags are skipped, and an entry of a list of numbers stands for the
    list (the field)."""
    path, parent, value, field = "", None, data, None
    owner: type[BaseModel] | None = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if isinstance(part, int):
            item = _item_model(field)
            if item is None:
                break  # an entry of a list of numbers: the list is the field
            path, value, owner, field = f"{path}[{part}]", value[part] if isinstance(value, list) else None, item, None
            continue
        if field is not None:  # a table: into its model (of a union: the tag is this part of loc)
            options = _tags(_models_of(field.annotation))
            field = None
            if part in options and len(options) > 1:
                owner = options[part]
                continue
            owner = next(iter(options.values()), None)
        parent = value
        value = value.get(part) if isinstance(value, dict) else None
        path = f"{path}.{part}" if path else str(part)
        field = owner.model_fields.get(part) if owner else None
        if field is None:
            break  # an unknown key
    return path, value, parent, owner, field


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's annotation holds as a table (several for a union; none for a list of tables)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (list, dict):
        return []
    return [m for arg in get_args(annotation) for m in _models_of(arg)]


def _tags(options: list[type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Tag -> model of a union's models (its ``kind``, or the model's own :attr:`Table.tag`)."""
    out = {}
    for m in options:
        kind = m.model_fields.get("kind")
        out[m.tag or (get_args(kind.annotation)[0] if kind else m.__name__)] = m
    return out


def _item_model(field: FieldInfo | None) -> type[BaseModel] | None:
    """The model of the entries of a list of tables."""
    if field is None or get_origin(field.annotation) is not list:
        return None
    (item,) = get_args(field.annotation)
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def explain(exc: ValidationError, data: Any, model: type[BaseModel], *, where: str = "", prefix: str = "",
            table: str = "") -> str:
    """One line for the first problem of a :class:`pydantic.ValidationError` of ``model`` on ``data``.

    ``where`` opens a message about a value (``cell 0 (method 'default')``), ``prefix`` precedes the field's path
    (``sweep.``), ``table`` names the table itself in an unknown-key message (``[sweep]``; default ``where``).
    Forms: ``PATH must be ACCEPTED; got VALUE``, ``unknown key 'x' in TABLE; valid keys: ...``, ``PATH.kind must be
    one of ...``, and the rules between fields in their own words (:class:`Cell`'s checks).
    """
    errors = exc.errors(include_url=False)
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # unknown keys first
    kind, loc = err["type"], tuple(err["loc"])
    head = f"{where}: " if where else ""
    path, value, parent, owner, field = _walk(model, data, loc)
    if kind == "extra_forbidden":
        keys = sorted({e["loc"][-1] for e in errors if e["type"] == kind and tuple(e["loc"])[:-1] == loc[:-1]})
        at = _walk(model, data, loc[:-1])[0] if len(loc) > 1 else ""  # the table's path (a key may hold a '.')
        note = owner.note.format(kind=parent.get("kind")) if owner and isinstance(parent, dict) else ""
        place = (table or where) + (f": {prefix}{at}" if at else "") + (f" ({note})" if note else "")
        valid = sorted(set(owner.model_fields) | set(owner.also_valid)) if owner else []
        return (f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(repr(k) for k in keys)} in {place}; "
                f"valid keys: {', '.join(valid)}")
    if kind == "value_error":
        message = str(err["ctx"]["error"])
        return head + message.replace("{at}", f"{prefix}{path}." if path else prefix)
    if field is not None and _models_of(field.annotation) and not kind.startswith(("float", "int", "bool", "str")):
        tags = _tags(_models_of(field.annotation))
        with_kind = any("kind" in m.model_fields for m in tags.values())
        if with_kind and isinstance(value, dict) and kind.startswith("union_tag"):
            return f"{head}{prefix}{path}.kind must be one of {', '.join(tags)}; got {value.get('kind')!r}"
        return f"{head}{prefix}{path} must be a table{' with a ' + repr('kind') if with_kind else ''}; got {value!r}"
    if kind == "missing":
        return f"{head}{prefix}{path} is required"
    if field is None:
        return f"{head}{prefix}{path}: {err['msg']}"
    must = _extra(field, "x-must") or f"be {accepts(field)}"
    return f"{head}{prefix}{path} must {must}; got {value!r}"


def validate(model: type[BaseModel], data: Any, *, error: type[Exception] = ValueError, **how: str) -> Any:
    """``model`` validated from ``data``; a problem is an ``error`` of one line (:func:`explain`; ``how``: its
    ``where``, ``prefix`` and ``table``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(explain(exc, data, model, **how)) from None


# ---------------------------------------------------------------------------------------------------------------
# The configuration reference


def reference_markdown(*, heading_level: int = 2) -> str:
    """A configuration reference of the sweep file in MyST Markdown, generated from the JSON Schema: for each
    table (model) its description and a table of its fields (type, default, accepted values, description)."""
    schema = json_schema()
    defs = schema.get("$defs", {})
    h = "#" * heading_level
    order = ["SweepFile"] + [name for name in _REFERENCE_ORDER if name in defs] + \
        sorted(n for n in defs if n not in _REFERENCE_ORDER)
    lines = [f"{h} Sweep file reference", "",
             "Generated from the schema (`shallowres schema` prints it as JSON Schema). Each table below lists "
             "its keys; `kind` selects a schedule's or an engine's table.", ""]
    for name in order:
        node = schema if name == "SweepFile" else defs[name]
        model = _MODELS_BY_NAME[name]
        title = _TABLE_NAMES.get(name, name)
        lines += [f"{h}# {title[:1].upper() + title[1:] if name == 'SweepFile' else f'`{title}`'}", "",
                  _one_line(model.__doc__ or ""), "",
                  "| key | type | default | accepted | description |", "|---|---|---|---|---|"]
        required = set(node.get("required", ()))
        for key, prop in node.get("properties", {}).items():
            field = model.model_fields[key]
            default = "required" if key in required else _md(_default_text(field))
            lines.append(f"| `{key}` | {_md(_type_text(prop))} | {default} | {_md(_accepted_text(field, prop))} | "
                         f"{_md(prop.get('description', ''))} |")
        lines.append("")
    return "\n".join(lines)


_REFERENCE_ORDER = ("SweepTable", "Cell", "SampledTeacher", "FixedTeacher", "InitTable", "TolerancesTable",
                    "Constant", "TwoStage", "Layerwise", "Perturbed", "PrescribedWarmup", "Piecewise", "Segment",
                    "FadeEngine", "LaPermEngine", "ExpansionEngine", "RegisteredEngine")
_MODELS_BY_NAME: dict[str, type[BaseModel]] = {m.__name__: m for m in (
    SweepFile, SweepTable, Cell, SampledTeacher, FixedTeacher, InitTable, TolerancesTable, Constant, TwoStage,
    Layerwise, Perturbed, PrescribedWarmup, Piecewise, Segment, FadeEngine, LaPermEngine, ExpansionEngine,
    RegisteredEngine)}
_TABLE_NAMES = {"SweepFile": "the file", "SweepTable": "[sweep]", "Cell": "[base] and [methods.LABEL]",
                "SampledTeacher": "teacher", "FixedTeacher": "teacher (fixed_seed)", "InitTable": "init",
                "TolerancesTable": "tolerances", "Constant": "schedule: constant", "TwoStage": "schedule: two-stage",
                "Layerwise": "schedule: layerwise", "Perturbed": "schedule: perturbed",
                "PrescribedWarmup": "schedule: prescribed-warmup", "Piecewise": "schedule: piecewise",
                "Segment": "schedule.segments[i]", "FadeEngine": "engine: fade", "LaPermEngine": "engine: laperm",
                "ExpansionEngine": "engine: expansion", "RegisteredEngine": "engine: a registered name"}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _md(text: str) -> str:
    """Text for a Markdown table cell: one line, ``|`` escaped."""
    return _one_line(text).replace("|", "\\|")


def _type_text(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return "table (`" + _TABLE_NAMES.get(prop["$ref"].rsplit("/", 1)[-1], "") + "`)"
    if "oneOf" in prop or "anyOf" in prop:
        options = [_type_text(o) for o in prop.get("oneOf", prop.get("anyOf", [])) if o.get("type") != "null"]
        tables = [o[len("table (`"):-2] for o in options if o.startswith("table (`")]
        if len(tables) > 1 and len(tables) == len(options):
            return "table: " + ", ".join(f"`{t}`" for t in tables)
        return " or ".join(dict.fromkeys(options))
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    kind = prop.get("type", "any")
    names = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean", "array": "array",
             "object": "table"}
    if kind == "array" and "items" in prop:
        return f"array of {_type_text(prop['items'])}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"table of {_type_text(prop['additionalProperties'])}"
    return names.get(kind, str(kind))


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "its table's defaults"
    else:
        value = field.default
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "`inf`"
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`\"{value}\"`"


def _accepted_text(field: FieldInfo, prop: dict[str, Any]) -> str:
    if "const" in prop:
        return "the tag"
    if _models_of(field.annotation):
        return "see its table"
    if field.annotation is Any or get_origin(field.annotation) is dict:
        return "see description"
    return _extra(field, "x-must") or accepts(field)
