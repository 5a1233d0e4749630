"""The cells of a sweep file: a parsed TOML file (plus command-line overrides) validated and expanded into a
:class:`SweepSpec`, one :class:`Cell` per method and grid point, each with the keyword arguments of
:func:`sims.simulate` it runs with.

A sweep file has four tables (see ``sims/studies/configs/example.toml``)::

    [sweep]    name, trials, seed, chunk            # chunk: runs per unit of work and per file
    [base]     model, k, p, steps, algorithm, batch_size, n_record, allow_unstable,
               teacher = {...}, init = {...}, schedule = {...}, tolerances = {...}, engine = {...}
    [grid]     any base field (dotted for nested ones, e.g. "schedule.eta_w") -> list of values;
               "f1,f2" -> list of [v1, v2] points (the fields vary together)
    [methods.LABEL]  overrides of base fields; every method is crossed with the whole grid

The tables are declared as pydantic models in :mod:`sims.studies.config` (types, ranges, defaults, descriptions;
``shallowres schema`` prints them as a JSON Schema): :func:`build_spec` validates ``[sweep]`` and every cell with
them, so a bad value is one line naming the cell, the field and what it accepts, and nothing has been written.
Every cell also runs once (a dry run of one run), which checks what only the simulation checks and finds the
cell's per-run columns.

``engine`` selects the engine of :func:`sims.simulate`: ``kind = "fade"``, ``"laperm"``,
``"expansion"`` with their options, or any registered engine's name; without it the plain network runs.

Every grid cell runs ``trials`` runs numbered ``0 .. trials-1`` with the sweep's seed, so all methods of a
``(k, p)`` cell see the same teachers (common random numbers), and every engine draws them (and the init) the same
way, so the cells are paired run by run.  Running a spec is :mod:`sims.studies.sweep`'s work.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import theory
from sims.methods.distill import Fade
from sims.methods.expansion import Expansion
from sims.methods.laperm import LaPerm
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule, Segment
from sims.runs.simulate import FRAME_COLUMNS, SimulationResult, Tolerances, simulate
from sims.studies import config
from sims.studies.config import BASE_KEYS, DEFAULT_BASE, SWEEP_KEYS, show
from sims.studies.names import LARGE_CHUNK, LARGE_TRIALS, MAX_AUTO_CHUNK, SweepError
from sims.studies.per_run import run_frame

#: How deep arrays and tables may nest in a sweep file (a schedule's segments sit 6 levels down).
MAX_DEPTH = 16
# LARGE_TRIALS, LARGE_CHUNK, MAX_AUTO_CHUNK: see sims.studies.names (the command line's parser reads them)


def auto_chunk(trials: int) -> int:
    """The chunk of a large sweep without an explicit one: ``trials // 10`` within ``[LARGE_CHUNK,
    MAX_AUTO_CHUNK]`` (20,000 at 100,000 trials per cell, 100,000 from a million on).  Measured on the
    ``liu2019`` table at a million trials per cell: chunks of 100,000 rather than 20,000 save the per-chunk costs
    of 1,800 chunks."""
    return min(MAX_AUTO_CHUNK, max(LARGE_CHUNK, trials // 10))




@dataclass(frozen=True)
class Cell:
    """One grid cell: a method label and the fully resolved base configuration."""

    index: int
    method: str
    params: dict[str, Any]
    #: Columns of the cell's per-run table: :data:`sims.runs.simulate.FRAME_COLUMNS`, and for a cell with an
    #: ``engine`` also ``loss_ref`` and the engine's per-run ``extras`` (found by the dry run of :func:`build_spec`).
    columns: tuple[str, ...] = FRAME_COLUMNS
    #: Whether the cell can run without vectors, on the order parameters alone (``simulate(vectors=False)``: the
    #: order-parameter engine runs it), as its dry run found.
    order_parameters: bool = False


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: its ``[sweep]`` settings (name, trials per cell, seed, runs per chunk) and its cells, one
    per method and grid point; ``raw`` is the parsed file it was built from (recorded in ``config.json``)."""

    name: str
    trials: int
    seed: int
    chunk: int
    cells: tuple[Cell, ...]
    grid_keys: tuple[str, ...]
    raw: dict[str, Any]
    #: Whether ``chunk`` is :func:`auto_chunk`'s in place of the file's smaller one (a large sweep without an
    #: explicit chunk; see :func:`build_spec`).
    chunk_auto: bool = False

    @property
    def vectors(self) -> bool:
        """Whether the cells run with the per-run vectors: False when every cell can run on the order parameters
        alone (the per-run table holds no vector), True otherwise.  One choice for the whole sweep, because the two
        draw the same law but not the same numbers: so the cells stay paired run by run."""
        return not all(c.order_parameters for c in self.cells)

    def fingerprint(self) -> str:
        """Hash of everything that determines the results and the chunk layout."""
        payload = {"trials": self.trials, "seed": self.seed, "chunk": self.chunk,
                   "cells": [[c.method, c.params] for c in self.cells]}
        if not self.vectors:  # (absent for sweeps with vectors: their fingerprints are those of earlier releases)
            payload["vectors"] = False
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def chunks(self) -> list[tuple[int, int, int, int]]:
        """``(cell, chunk, first_run, runs)`` for every unit of work."""
        out = []
        for c in self.cells:
            for j, start in enumerate(range(0, self.trials, self.chunk)):
                out.append((c.index, j, start, min(self.chunk, self.trials - start)))
        return out

    def cell_records(self) -> list[dict[str, Any]]:
        """Every cell as ``{"index", "method", "params"}``: how ``config.json`` and ``metadata.json`` list them."""
        return [{"index": c.index, "method": c.method, "params": c.params} for c in self.cells]


def chunk_name(cell: int, chunk: int) -> str:
    """The file name of a unit of work of :meth:`SweepSpec.chunks` in a sweep directory's ``chunks/``."""
    return f"cell{cell:04d}-chunk{chunk:05d}.parquet"


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep file; a missing or malformed file is a :class:`SweepError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SweepError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise SweepError(f"config file {str(path)!r} is a directory") from None
    except OSError as exc:
        raise SweepError(f"config file {str(path)!r} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SweepError(f"config file {str(path)!r} is not UTF-8 text (byte {data[exc.start]:#04x} at line "
                         f"{line})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an integer beyond Python's 4300 digits; nesting beyond recursion
        raise SweepError(f"config file {str(path)!r} is not valid TOML: {_toml_limit(text, exc)}") from None


def _toml_limit(text: str, exc: Exception) -> str:
    """Which limit a TOML text the parser gave up on exceeded, and on which line."""
    if isinstance(exc, RecursionError):
        depth = 0
        for i, ch in enumerate(text):
            depth += (ch in "[{") - (ch in "]}")
            if depth > MAX_DEPTH:
                return f"arrays/tables nested more than {MAX_DEPTH} levels deep (line {text.count(chr(10), 0, i) + 1})"
        return "arrays/tables nested too deeply"
    m = re.search(r"\d[\d_]{4299,}", text)
    where = f" (line {text.count(chr(10), 0, m.start()) + 1})" if m else ""
    return f"an integer has more than 4300 digits{where}"


def _unknown(keys: Iterable[str], valid: Iterable[str], where: str) -> None:
    bad = sorted(set(keys) - set(valid))
    if bad:
        raise SweepError(f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(repr(b) for b in bad)} in {where}; "
                         f"valid keys: {', '.join(sorted(valid))}")


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] not in BASE_KEYS:
        _unknown([parts[0]], BASE_KEYS, "a field name")
    cur = d
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value


def dotted_value(params: dict[str, Any], key: str) -> Any:
    """The value of a dotted field (``"schedule.eta_w"``) in a cell's ``params``; None where it is absent."""
    val: Any = params
    for part in key.split("."):
        val = val.get(part) if isinstance(val, dict) else None
    return val


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict) and key not in ("schedule", "engine"):
            out[key] = _merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def parse_value(text: str, *, name: str = "value") -> Any:
    """A CLI ``--set`` value: TOML syntax if it parses (numbers, booleans, arrays), else a plain string.  A value
    beyond the parser's limits (an integer of more than 4300 digits, nesting deeper than it recurses) is a
    :class:`SweepError` naming ``name``."""
    try:
        value = tomllib.loads(f"x = {text}")["x"]
    except tomllib.TOMLDecodeError:
        return text
    except (ValueError, RecursionError) as exc:
        raise SweepError(f"{name}: {_toml_limit(text, exc)}") from None
    return value


def _check_depth(value: Any, path: tuple[str, ...], depth: int = 0) -> None:
    """Refuse arrays/tables nested more than :data:`MAX_DEPTH` levels (``depth``: the level ``value`` sits at),
    naming the field (the first three keys of its ``path``); iterative, so any depth the parser produced is safe
    to walk."""
    stack = [(value, depth, path)]
    while stack:
        val, d, at = stack.pop()
        if d > MAX_DEPTH:
            raise SweepError(f"{'.'.join(show(p) for p in at[:3]) or 'the sweep file'} nests arrays/tables more "
                             f"than {MAX_DEPTH} levels deep")
        if isinstance(val, dict):
            stack.extend((v, d + 1, at + (k,)) for k, v in val.items())
        elif isinstance(val, list):
            stack.extend((v, d + 1, at) for v in val)



def build_spec(raw: dict[str, Any], *, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Validate a parsed sweep file and expand it into its cells, one per method and grid point.

    A cell's fields are the schema's defaults, then ``[base]``, then its method's overrides, then its grid point,
    then ``overrides``, which win over all.  ``[sweep]`` and every cell are validated by the schema
    (:mod:`sims.studies.config`) and every cell runs once (a dry run of one run, which also finds its per-run
    columns), so a bad value fails here, in one line naming the cell and the field, before anything is written.
    A sweep of at least :data:`LARGE_TRIALS` runs per cell without a ``chunk`` override runs chunks of
    :func:`auto_chunk` runs if its file's are smaller.

    Parameters
    ----------
    raw : dict
        The parsed sweep file (:func:`load_toml`): its tables ``sweep``, ``base``, ``grid`` and ``methods``.
    overrides : dict, optional
        ``trials``, ``seed``, ``chunk``, ``name`` or any dotted base field (``"schedule.eta_w"``), applied to every
        cell after its method and grid point (the command line's ``--set``).

    Returns
    -------
    SweepSpec
        The sweep's settings and its cells, every method crossed with the whole grid.

    Raises
    ------
    SweepError
        For an unknown key, a value out of range (naming the cell, the field and what it accepts), a grid axis that
        is not a non-empty list, or a cell the simulation refuses in its dry run.

    Examples
    --------
    >>> from sims.studies.spec import build_spec
    >>> raw = {"sweep": {"name": "demo", "trials": 8, "seed": 0, "chunk": 4},
    ...        "base": {"k": 4, "p": 4, "steps": 2000},
    ...        "methods": {"resnet": {"model": "resnet"}, "cnn": {"model": "cnn", "init": {"w": "sphere"}}}}
    >>> spec = build_spec(raw, overrides={"trials": 6})
    >>> spec.trials, [c.method for c in spec.cells], len(spec.chunks())   # two chunks of at most 4 runs a cell
    (6, ['resnet', 'cnn'], 4)
    >>> build_spec(raw, overrides={"steps": -1})
    Traceback (most recent call last):
    ...
    sims.studies.names.SweepError: cell 0 (method 'resnet'): steps must be an integer in [0, 1000000000]; got -1
    """
    if not isinstance(raw, dict):
        raise SweepError(f"a sweep file must be a table of tables; got {type(raw).__name__}")
    _check_depth(raw, ())
    for key, val in (overrides or {}).items():
        _check_depth(val, (key,), 1 + str(key).count("."))
    raw = copy.deepcopy(raw)
    _unknown(raw, ("sweep", "base", "grid", "methods"), "the sweep file (top-level tables)")
    for table in ("sweep", "base", "grid", "methods"):
        if not isinstance(raw.get(table, {}), dict):
            raise SweepError(f"[{table}] must be a table; got {raw[table]!r}")
    sweep = raw.get("sweep", {})
    base = raw.get("base", {})
    _unknown(base, BASE_KEYS, "[base]")
    field_overrides = {}
    for key, val in (overrides or {}).items():
        if key in SWEEP_KEYS:
            sweep[key] = val
        else:
            _set_dotted({}, key, None)  # validates the head of the key
            field_overrides[key] = val
    grid = raw.get("grid", {})
    axes: list[tuple[tuple[str, ...], list[list[Any]]]] = []  # (field names, one list of values per point)
    for key, vals in grid.items():
        names = tuple(key.split(","))
        for n in names:
            _set_dotted({}, n, None)  # validates the head of the key
        if not isinstance(vals, list) or not vals:
            raise SweepError(f"grid.{show(key)} must be a non-empty list of values; got {vals!r}")
        if len(names) == 1:
            axes.append((names, [[v] for v in vals]))
            continue
        for v in vals:  # a zipped axis: "k,p" = [[4, 4], [16, 16]] varies the fields together
            if not isinstance(v, list) or len(v) != len(names):
                raise SweepError(f"grid.{show(key)} must list [{', '.join(show(n) for n in names)}] points of "
                                 f"{len(names)} values each; got {v!r}")
        axes.append((names, vals))
    grid_keys = tuple(n for names, _ in axes for n in names)
    if len(set(grid_keys)) < len(grid_keys):
        dup = next(n for n in grid_keys if grid_keys.count(n) > 1)
        raise SweepError(f"grid: field {show(dup)} is varied by more than one grid key")
    methods = raw.get("methods", {}) or {"default": {}}
    for label, over in methods.items():
        if not isinstance(over, dict):
            raise SweepError(f"methods.{show(label)} must be a table of overrides; got {over!r}")
        _unknown(over, BASE_KEYS, f"[methods.{show(label)}]")
    head = _validated(config.SweepTable, sweep, prefix="sweep.", table="[sweep]")
    auto = "chunk" not in (overrides or {}) and head.trials >= LARGE_TRIALS and head.chunk < auto_chunk(head.trials)
    chunk = auto_chunk(head.trials) if auto else head.chunk
    base = _merge(DEFAULT_BASE, base)
    cells = []
    for label, over in methods.items():
        for combo in itertools.product(*(vals for _, vals in axes)):
            params = _merge(base, over)
            for (names, _), point in zip(axes, combo, strict=True):
                for key, val in zip(names, point, strict=True):
                    _set_dotted(params, key, val)
            for key, val in field_overrides.items():  # command-line overrides win over methods and grid
                _set_dotted(params, key, val)
            # Every cell is validated by the schema and a one-run dry run, which also gives its per-run columns.
            where = f"cell {len(cells)} (method {label!r})"
            _, columns, order = _checked_kwargs(params, where)
            cells.append(Cell(len(cells), label, params, columns, order))
    return SweepSpec(head.name, head.trials, head.seed, chunk, tuple(cells), grid_keys, raw, chunk_auto=auto)


def _validated(model: type[Any], data: Any, **how: str) -> Any:
    """``data`` validated by a model of :mod:`sims.studies.config`; a problem is a :class:`SweepError` of one line
    naming the field and what it accepts (``how``: where it is, see :func:`sims.studies.config.explain`)."""
    return config.validate(model, data, error=SweepError, **how)


def _eta(table: Any, stem: str, k: int, where: str, at: str = "schedule.") -> float | None:
    try:
        return table.eta(stem, k, at)
    except ValueError as exc:
        raise SweepError(f"{where}: {exc}") from None


def _schedule(s: Any, k: int, where: str) -> Schedule:
    """The :class:`Schedule` of a validated schedule table (steps given relative are made absolute at ``k``)."""
    def eta(stem: str) -> float | None:
        return _eta(s, stem, k, where)

    try:
        if isinstance(s, config.Constant):
            return Schedule.constant(eta("eta_w"), eta("eta_a"))
        if isinstance(s, (config.TwoStage, config.Layerwise)):
            ew1 = 0.0 if isinstance(s, config.Layerwise) else eta("eta_w1")
            return Schedule.two_stage(s.T1, ew1, eta("eta_a1"), eta("eta_w2"), eta("eta_a2"))
        if isinstance(s, config.Perturbed):
            return Schedule.perturbed(eta("eta_w"), eta("eta_a"), noise=s.noise, half_life=s.half_life,
                                      noise_a=s.noise_a)
        if isinstance(s, config.PrescribedWarmup):
            return Schedule.prescribed_warmup(eta("eta_w"), eta("eta_a"), eta_a_warmup=eta("eta_a_warmup"),
                                              safety=s.safety)
        last = len(s.segments) - 1  # the last segment fills the budget: its steps are not used
        return Schedule.piecewise([Segment(None if i == last else seg.steps,
                                           _eta(seg, "eta_w", k, where, f"schedule.segments[{i}]."),
                                           _eta(seg, "eta_a", k, where, f"schedule.segments[{i}]."),
                                           seg.noise_w, seg.noise_a) for i, seg in enumerate(s.segments)])
    except SweepError:
        raise
    except ValueError as exc:  # the Schedule's own checks
        raise SweepError(f"{where}: {exc}") from None


def fixed_teacher(seed: int, k: int, p: int, require_spurious: bool) -> tuple[np.ndarray, np.ndarray]:
    """One teacher for every run of a cell, drawn from ``default_rng([seed, k, p])``: ``w*`` uniform on the
    sphere, ``a*`` standard Gaussian (redrawn until the spurious minimum exists if asked)."""
    rng = np.random.default_rng([seed, k, p])
    w = rng.standard_normal(p)
    w /= np.linalg.norm(w)
    for _ in range(10_000):
        a = rng.standard_normal(k)
        if not require_spurious or theory.spurious_exists(a):
            return w, a
    raise SweepError(f"teacher.require_spurious: no teacher with a spurious point found for k = {k}")


def _options(cls: type, table: Any, name: str, where: str, **extra: Any) -> Any:
    """A :class:`Teacher`, :class:`Init` or :class:`Tolerances` of the keys the table gives (lists as tuples; the
    class's defaults for the others), with the class's own validation."""
    given = {key: tuple(v) if isinstance(v, list) else v for key, v in table.model_dump(exclude_unset=True).items()}
    try:
        return cls(**given, **extra)
    except (TypeError, ValueError) as exc:
        raise SweepError(f"{where}: {name}: {exc}") from None


def simulation_kwargs(params: dict[str, Any], *, where: str = "base") -> dict[str, Any]:
    """Keyword arguments of :func:`simulate_cell` for one cell (those of :func:`sims.simulate` plus ``engine``),
    validated by the schema and a one-run dry run (messages name the field and its range)."""
    return _checked_kwargs(params, where)[0]


def _cell_kwargs(params: dict[str, Any], where: str) -> dict[str, Any]:
    """The keyword arguments of a cell: its table validated by :class:`sims.studies.config.Cell`, and the
    schedule, engine, teacher, init and tolerances objects built from it."""
    cell = _validated(config.Cell, params, where=where)
    kw: dict[str, Any] = {key: getattr(cell, key) for key in ("k", "p", "steps", "n_record", "model", "algorithm")}
    if cell.batch_size is not None:
        kw["batch_size"] = cell.batch_size
    kw["allow_unstable"] = cell.allow_unstable
    engine, step_rule = _engine(cell.engine, where)
    kw["schedule"] = _schedule(cell.schedule, cell.k, where)
    if step_rule == "matched":
        kw["schedule"] = matched_schedule(kw["schedule"], engine, cell.k, where)
    if isinstance(cell.teacher, config.FixedTeacher):
        kw["teacher"] = fixed_teacher(cell.teacher.fixed_seed, cell.k, cell.p, cell.teacher.require_spurious)
    else:
        kw["teacher"] = _options(Teacher, cell.teacher, "teacher", where)
    w0 = {} if cell.init.w else {"w": "zero" if theory.Model.of(cell.model).shortcut else "sphere"}
    kw["init"] = None if isinstance(engine, LaPerm) else _options(Init, cell.init, "init", where, **w0)
    kw["tolerances"] = _options(Tolerances, cell.tolerances, "tolerances", where)
    kw["engine"] = engine
    return kw


def _checked_kwargs(params: dict[str, Any], where: str) -> tuple[dict[str, Any], tuple[str, ...], bool]:
    """The cell's keyword arguments, its per-run columns and whether it runs without vectors, from a one-run dry
    run that checks everything the simulation checks (models, stability, samplers, stages <= steps, the engine's
    options)."""
    kw = _cell_kwargs(params, where)
    staged = sum(s.steps for s in kw["schedule"].segments[:-1])  # every stage but the last, which fills the budget
    if isinstance(kw["engine"], Fade):
        staged = max(staged, kw["engine"].steps)  # the fade must be over within the dry run's budget too
    try:
        # basin="none": the basin column is there all the same, and the flow from a run stopped after its stages
        # (far from every minimum) would compile the flow engine (~17 s cold) that a sweep rarely needs.
        res = simulate_cell(dict(kw, steps=min(kw["steps"], max(1, staged))), runs=1, seed=0, vectors="auto",
                            basin="none")
    except ValueError as exc:
        raise SweepError(f"{where}: {exc}") from None
    return kw, tuple(run_frame(res, kw["engine"]).columns), not res.has_vectors


def _engine(e: Any, where: str) -> tuple[Any, str | None]:
    """The ``engine=`` of :func:`sims.simulate` a validated engine table selects, and its step rule.

    ``(None, None)`` without one (the plain network, ``algorithm`` decides); a :class:`sims.Fade` for
    ``kind = "fade"``; a :class:`sims.LaPerm` for ``kind = "laperm"`` (``K = 0``: no synchronization, i.e. the
    plain inner optimizer); a :class:`sims.Expansion` for ``kind = "expansion"`` (and the sweep's ``step_rule``,
    see :func:`matched_schedule`); any other registered engine name as that name (no options).
    """
    try:
        if e is None or isinstance(e, config.RegisteredEngine):
            return (None if e is None else e.kind), None
        if isinstance(e, config.FadeEngine):
            return (Fade.custom(tuple(e.values)) if e.schedule == "custom" else Fade(e.schedule, e.steps)), None
        if isinstance(e, config.LaPermEngine):
            return LaPerm(sync_every=e.K or None, inner=e.inner, dist=e.dist, permute=e.permute,
                          adam=LaPerm.adam if e.adam is None else tuple(e.adam)), None
        return Expansion(target=e.target, depth=e.depth, rate=e.rate, init=e.init, scale=e.scale,
                         pretrain_steps=e.pretrain_steps, pretrain_batch=e.pretrain_batch,
                         pretrain_eta=None if e.pretrain_eta is None else tuple(e.pretrain_eta)), e.step_rule
    except (ValueError, TypeError) as exc:
        raise SweepError(f"{where}: engine: {exc}") from None


def matched_schedule(schedule: Schedule, expansion: Expansion, k: int, where: str = "base") -> Schedule:
    """The step rule ``"matched"`` of an expansion: an expanded layer's step is divided by its end-to-end gain
    ``N s^(2 - 2/N)`` at its typical scale (``s = 1`` for ``w``, ``s = sqrt(k)`` for ``a``: ``N`` and
    ``N k^(1 - 1/N)``), so that the contracted layer moves about as fast as without expansion.  The last
    segment's step is divided by the gain and every earlier segment keeps its ratio to the last one (so a warmup
    stays the same fraction of the final step).  Depth 1 and layers not expanded keep their steps."""
    if schedule.prescribed:
        raise SweepError(f"{where}: engine.step_rule = 'matched' needs a schedule without the prescribed warmup "
                         "(its stage-I step is computed per run)")
    N = expansion.depth
    if N == 1:
        return schedule
    gain_w = float(N) if expansion.expands_w else 1.0
    gain_a = N * float(k) ** (1.0 - 1.0 / N) if expansion.expands_a else 1.0
    last = schedule.segments[-1]

    def scaled(eta: float, last_eta: float, gain: float) -> float:
        if gain == 1.0 or eta == 0.0:
            return eta
        return eta / gain if last_eta == 0.0 else (eta / last_eta) * (last_eta / gain)

    segs = tuple(replace(seg, eta_w=scaled(seg.eta_w, last.eta_w, gain_w), eta_a=scaled(seg.eta_a, last.eta_a, gain_a))
                 for seg in schedule.segments)
    return replace(schedule, segments=segs)


def simulate_cell(kw: dict[str, Any], *, runs: int, seed: int, run_offset: int = 0, threads: int | None = None,
                  vectors: bool | str = True, basin: str = "auto") -> SimulationResult:
    """Run one cell (keyword arguments from :func:`simulation_kwargs`, ``engine`` included) by :func:`sims.simulate`.
    Every engine draws run ``r``'s teacher and init from the same stream, so the cells of a sweep are paired run by
    run.  ``vectors``: :attr:`SweepSpec.vectors` (``"auto"`` in the dry run, which finds whether the cell can run
    without them); ``basin``: :func:`sims.simulate`'s (``"none"`` in the dry run, which needs only the columns)."""
    return simulate(**kw, runs=runs, seed=seed, run_offset=run_offset, threads=threads, vectors=vectors, basin=basin)


def simulation_kwargs_fast(params: dict[str, Any]) -> dict[str, Any]:
    """Like :func:`simulation_kwargs` without the dry run (the spec was validated when it was built)."""
    return _cell_kwargs(params, "cell")
