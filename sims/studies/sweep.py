"""Batch sweeps: a TOML spec, chunked execution (in-process or on Dask), atomic per-chunk persistence with
resume, and the per-cell summary with Wilson intervals.

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

``engine`` selects the engine of :func:`sims.simulate` (:func:`make_engine`): ``kind = "fade"``, ``"laperm"``,
``"expansion"`` with their options, or any registered engine's name; without it the plain network runs.

Every grid cell runs ``trials`` runs numbered ``0 .. trials-1`` with the sweep's seed, so all methods of a
``(k, p)`` cell see the same teachers (common random numbers), and every engine draws them (and the init) the same
way, so the cells are paired run by run.  Results do not depend on how the runs are chunked or where the chunks
run.

Results are streamed from the chunks, so a sweep's memory does not grow with its size (a million runs per cell
of the 45 cells of ``liu2019`` is 45 million runs): :func:`run_chunk` writes each chunk's per-run table straight
from the result's arrays into Parquet (:func:`run_table`); :func:`summarize_chunks` reads, one cell at a time, only
the columns the summary needs and computes every statistic with the same code as :func:`summarize_runs` (exact
medians and quantiles: the summary is identical, byte for byte in ``summary.csv``); :func:`write_runs` appends
chunk after chunk to ``runs.parquet``.  ``runs=False`` (``--no-runs``) skips ``runs.parquet``: the chunks, which
hold every run's row and are verified on resume, are then the per-run record, and
:attr:`SweepOutcome.runs` joins them on demand.  A sweep of at least :data:`LARGE_TRIALS` runs per cell without
an explicit chunk uses chunks of :data:`LARGE_CHUNK` runs.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import theory
from sims.methods.distill import Fade
from sims.methods.expansion import Expansion
from sims.methods.laperm import LaPerm
from sims.runs import classify
from sims.runs.samplers import Init, Teacher
from sims.runs.schedules import Schedule, Segment
from sims.runs.simulate import FRAME_COLUMNS, Tolerances, simulate
from sims.studies import config, store

if TYPE_CHECKING:
    import pyarrow as pa

#: Re-exported from :mod:`sims.studies.config`, where the schema is declared.
SWEEP_KEYS = config.SWEEP_KEYS
BASE_KEYS = config.BASE_KEYS
DEFAULT_BASE = config.DEFAULT_BASE
SCHEDULE_KINDS = config.SCHEDULE_KINDS
ENGINE_KINDS = config.ENGINE_KINDS
STEP_RULES = config.STEP_RULES
#: How deep arrays and tables may nest in a sweep file (a schedule's segments sit 6 levels down).
MAX_DEPTH = 16
#: A sweep of at least ``LARGE_TRIALS`` runs per cell whose chunk is not given explicitly (``--chunk``, the
#: ``chunk`` override) runs chunks of ``LARGE_CHUNK`` runs if its file's are smaller: a chunk's fixed costs (the
#: draws' and the engine's parallel start, the classification, one Parquet file, two fsyncs) are then a small
#: part of its work, and a 45-cell sweep of a million runs per cell has 2,250 chunk files, not 45,000.  The chunk
#: is part of the fingerprint; a directory written with the file's chunk is resumed with it (:func:`adopt_chunk`).
LARGE_TRIALS = 100_000
LARGE_CHUNK = 20_000
SUMMARY_COLUMNS = ("method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious")


class SweepError(ValueError):
    """A problem with a sweep's configuration or output directory (one readable line)."""


# ---------------------------------------------------------------------------------------------------------------
# Spec


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
    name: str
    trials: int
    seed: int
    chunk: int
    cells: tuple[Cell, ...]
    grid_keys: tuple[str, ...]
    raw: dict[str, Any]
    #: Whether ``chunk`` is :data:`LARGE_CHUNK` in place of the file's smaller one (a large sweep without an
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
            raise SweepError(f"{'.'.join(_show(p) for p in at[:3]) or 'the sweep file'} nests arrays/tables more "
                             f"than {MAX_DEPTH} levels deep")
        if isinstance(val, dict):
            stack.extend((v, d + 1, at + (k,)) for k, v in val.items())
        elif isinstance(val, list):
            stack.extend((v, d + 1, at) for v in val)


_show = config.show


def build_spec(raw: dict[str, Any], *, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Validate a parsed sweep file (plus ``overrides``: ``trials``, ``seed``, ``chunk``, ``name`` or any dotted
    base field, applied to every cell after methods and grid) and expand its grid into cells."""
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
            raise SweepError(f"grid.{_show(key)} must be a non-empty list of values; got {vals!r}")
        if len(names) == 1:
            axes.append((names, [[v] for v in vals]))
            continue
        for v in vals:  # a zipped axis: "k,p" = [[4, 4], [16, 16]] varies the fields together
            if not isinstance(v, list) or len(v) != len(names):
                raise SweepError(f"grid.{_show(key)} must list [{', '.join(_show(n) for n in names)}] points of "
                                 f"{len(names)} values each; got {v!r}")
        axes.append((names, vals))
    grid_keys = tuple(n for names, _ in axes for n in names)
    if len(set(grid_keys)) < len(grid_keys):
        dup = next(n for n in grid_keys if grid_keys.count(n) > 1)
        raise SweepError(f"grid: field {_show(dup)} is varied by more than one grid key")
    methods = raw.get("methods", {}) or {"default": {}}
    for label, over in methods.items():
        if not isinstance(over, dict):
            raise SweepError(f"methods.{_show(label)} must be a table of overrides; got {over!r}")
        _unknown(over, BASE_KEYS, f"[methods.{_show(label)}]")
    head = _validated(config.SweepTable, sweep, prefix="sweep.", table="[sweep]")
    auto = "chunk" not in (overrides or {}) and head.trials >= LARGE_TRIALS and head.chunk < LARGE_CHUNK
    chunk = LARGE_CHUNK if auto else head.chunk
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
    """Keyword arguments of :func:`_simulate_cell` for one cell (those of :func:`sims.simulate` plus ``engine``),
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
        res = _simulate_cell(dict(kw, steps=min(kw["steps"], max(1, staged))), runs=1, seed=0, vectors="auto")
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


def _simulate_cell(kw: dict[str, Any], *, runs: int, seed: int, run_offset: int = 0, threads: int | None = None,
                   vectors: bool | str = True):
    """Run one cell (keyword arguments from :func:`simulation_kwargs`, ``engine`` included) by :func:`sims.simulate`.
    Every engine draws run ``r``'s teacher and init from the same stream, so the cells of a sweep are paired run by
    run.  ``vectors``: :attr:`SweepSpec.vectors` (``"auto"`` in the dry run, which finds whether the cell can run
    without them)."""
    return simulate(**kw, runs=runs, seed=seed, run_offset=run_offset, threads=threads, vectors=vectors)


def run_frame(res: Any, engine: Any) -> pd.DataFrame:
    """The per-run table of a result: :data:`sims.runs.simulate.FRAME_COLUMNS`; with an ``engine`` also
    ``loss_ref`` and every per-run scalar of ``res.extras`` (one value per run; a name taken by another column
    gets the prefix ``extras.``), which the tables summarize from the persisted chunks."""
    return pd.DataFrame(dict(run_columns(res, engine)))


def run_columns(res: Any, engine: Any) -> list[tuple[str, np.ndarray]]:
    """``(name, array)`` of every column of :func:`run_frame`, in its order (the arrays of ``res``, not copies)."""
    cols = [(name, getattr(res, "run_index" if name == "run" else name)) for name in FRAME_COLUMNS]
    if engine is None:
        return cols
    cols.append(("loss_ref", res.loss_ref))
    taken = {name for name, _ in cols} | {"cell", "method", "model", "k", "p"}
    for key, val in res.extras.items():
        val = np.asarray(val)
        if val.ndim == 1 and len(val) == len(res) and val.dtype.kind in "biuf":
            name = f"extras.{key}" if key in taken else key
            at = [i for i, c in enumerate(cols) if c[0] == name]  # as a frame's column assignment: in place
            if at:
                cols[at[0]] = (name, val)
            else:
                cols.append((name, val))
    return cols


def run_table(res: Any, engine: Any) -> pa.Table:
    """The per-run table of a result as a ``pyarrow.Table`` built from its arrays (the columns of
    :func:`run_frame`, the types pandas gives them: text as ``large_string``, numbers and booleans as they are),
    without a pandas frame in between: what :func:`run_chunk` writes."""
    import pyarrow as pa

    arrays = []
    names = []
    for name, val in run_columns(res, engine):
        if val.dtype.kind in "UO":
            arrays.append(_text_array(val))
        else:
            arrays.append(pa.array(val))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _text_array(values: np.ndarray) -> pa.Array:
    """A ``large_string`` Arrow array of a text column with few distinct values (outcomes, stop reasons): codes
    found by comparison, then one gather from the distinct values (several times faster than converting each
    string)."""
    import pyarrow as pa

    distinct = list(dict.fromkeys(values[: min(len(values), 64)].tolist()))
    codes = np.full(len(values), -1, dtype=np.int32)
    for i, text in enumerate(distinct):
        codes[values == text] = i
    if (codes < 0).any():  # a value not among the first ones: the general conversion
        return pa.array(values.astype(str), type=pa.large_string())
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(distinct, type=pa.large_string())) \
        .cast(pa.large_string())


# ---------------------------------------------------------------------------------------------------------------
# Execution


def _chunk_name(cell: int, chunk: int) -> str:
    return f"cell{cell:04d}-chunk{chunk:05d}.parquet"


def run_chunk(params: dict[str, Any], seed: int, first: int, runs: int, threads: int | None = None,
              identity: dict[str, Any] | None = None, vectors: bool = True) -> bytes:
    """Simulate one chunk and return its per-run table as Parquet bytes (what a Dask worker sends back), with
    ``identity`` (fingerprint, cell, chunk, first run, runs) in the file's metadata.  ``vectors``: the sweep's
    :attr:`SweepSpec.vectors` (False: the chunk runs on the order parameters alone)."""
    kw = simulation_kwargs_fast(params)
    res = _simulate_cell(kw, runs=runs, seed=seed, run_offset=first, threads=threads, vectors=vectors)
    return store.table_bytes(run_table(res, kw["engine"]), identity or {})


def simulation_kwargs_fast(params: dict[str, Any]) -> dict[str, Any]:
    """Like :func:`simulation_kwargs` without the dry run (the spec was validated when it was built)."""
    return _cell_kwargs(params, "cell")


def _to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, engine="pyarrow", index=False)
    return buf.getvalue()


#: Bytes per row of the per-run table held in memory when it is joined as one frame (:func:`collect`; measured:
#: 180 with pandas' Arrow-backed strings, more with object strings; the join holds it twice or more).
ROW_BYTES = 800
#: Bytes per run of one cell held while the summary of that cell is computed from its chunks
#: (:func:`summarize_chunks`: the columns :data:`SUMMARY_INPUTS` in Arrow, as a frame, and the selections of them).
SUMMARY_ROW_BYTES = 256


def check_output_dir(out: Path, spec: SweepSpec) -> bool:
    """Refuse a directory holding another configuration or one we cannot write; True if resuming."""
    cfg = out / "config.json"
    if cfg.exists():
        try:
            old = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            raise SweepError(f"output directory {str(out)!r} has an unreadable config.json; use another --out") \
                from None
        if not isinstance(old, dict) or old.get("fingerprint") != spec.fingerprint():
            found = old.get("fingerprint") if isinstance(old, dict) else None
            raise SweepError(
                f"output directory {str(out)!r} holds a different configuration (fingerprint "
                f"{found} != {spec.fingerprint()}); use another --out or delete it"
            )
        _check_writable(out, out)
        return True
    if out.exists() and not out.is_dir():
        raise SweepError(f"output path {str(out)!r} exists and is not a directory")
    if out.exists() and any(p.name not in store.HOUSEKEEPING for p in out.iterdir()):
        raise SweepError(f"output directory {str(out)!r} is not empty and holds no sweep; use another --out")
    _check_writable(out if out.exists() else _existing_parent(out), out)
    return False


def _check_writable(directory: Path, out: Path) -> None:
    """Probe with a temporary file (removed at once): permission bits do not tell for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise SweepError(f"output directory {str(out)!r} is not writable ({exc.strerror} in {str(directory)!r})") \
            from None


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise SweepError(f"output path {str(path)!r} is a file, not a directory")
    return path


def check_memory(spec: SweepSpec, *, workers: int | None = None, remote: bool = False) -> int:
    """Refuse (:class:`SweepError`) a sweep this machine has no memory for; return the estimate in bytes.

    A chunk needs what :func:`sims.simulate` needs for ``chunk`` runs (:func:`sims.runs.memory.simulate_bytes`); a
    local Dask cluster runs ``workers`` chunks at once.  On a remote ``scheduler`` the workers' memory is theirs
    (each chunk is checked where it runs).  The results are streamed from the chunks (:func:`summarize_chunks`,
    :func:`write_runs`): what grows with the sweep is one cell's summary columns (:data:`SUMMARY_ROW_BYTES` per
    run), not the per-run table (a table that reads it checks :func:`check_table_memory` when it does).
    """
    from sims.runs.memory import available_bytes, format_size, simulate_bytes

    runs = min(spec.chunk, spec.trials)
    threads = 1 if workers else numba_threads()

    def chunk_bytes(runs: int) -> int:
        return max(simulate_bytes(k=c.params["k"], p=c.params["p"], runs=runs, steps=c.params["steps"],
                                  n_record=c.params["n_record"], algorithm=c.params["algorithm"],
                                  batch_size=c.params.get("batch_size"), threads=threads) for c in spec.cells)

    at_once = 0 if remote else (workers or 1)
    table = SUMMARY_ROW_BYTES * spec.trials
    need = at_once * chunk_bytes(runs) + table
    free = available_bytes()
    if need <= free:
        return need
    per_run = max(chunk_bytes(1) - chunk_bytes(0), 1)
    fit = (free - table - at_once * chunk_bytes(0)) // max(at_once * per_run, 1)
    remedy = (f"use a smaller --chunk (about {fit} runs fit)" + (" or fewer --workers" if at_once > 1 else "")
              if fit >= 1 else "use fewer --trials (the per-run table alone needs "
              f"{format_size(table)} to summarize one cell)")
    raise SweepError(f"sweep {spec.name!r} needs about {format_size(need)} of memory ({at_once} chunk"
                     f"{'s' if at_once != 1 else ''} of {runs} runs at once: {format_size(chunk_bytes(runs))} each; "
                     f"the summary of one cell of {spec.trials} runs: {format_size(table)}) but only "
                     f"{format_size(free)} is available; {remedy}")


def check_table_memory(spec: SweepSpec) -> int:
    """Refuse (:class:`SweepError`) to join a sweep's whole per-run table in memory (:func:`collect`, which the
    ``du2018``, ``two-phase``, ``distill`` and ``laperm`` tables read) when it would not fit; the estimate in
    bytes (:data:`ROW_BYTES` per run)."""
    from sims.runs.memory import available_bytes, format_size

    need = ROW_BYTES * len(spec.cells) * spec.trials
    free = available_bytes()
    if need > free:
        raise SweepError(f"the per-run table of sweep {spec.name!r} ({len(spec.cells) * spec.trials} runs) needs "
                         f"about {format_size(need)} of memory but only {format_size(free)} is available; use fewer "
                         "--trials (its chunks are kept and verified)")
    return need


def numba_threads() -> int:
    """Threads a chunk computed in this process uses."""
    import numba

    return numba.get_num_threads()


class SweepOutcome:
    """What :func:`run_sweep` did: the per-run table and summary, the chunks computed now and those resumed
    (verified on disk), and the damaged chunks found and recomputed (file name -> reason).

    ``runs`` is read when first asked for (a summary-only table such as ``liu2019`` never holds it): from
    ``runs.parquet`` if the sweep wrote it, else joined from the chunks (:func:`collect`) after a memory check.
    """

    def __init__(self, out: Path, runs: pd.DataFrame | None, summary: pd.DataFrame, computed_chunks: int,
                 resumed_chunks: int, seconds: float, damaged: dict[str, str] | None = None, *,
                 spec: SweepSpec | None = None, wrote_runs: bool = True) -> None:
        self.out = Path(out)
        self._runs = runs
        self.summary = summary
        self.computed_chunks = computed_chunks
        self.resumed_chunks = resumed_chunks
        self.seconds = seconds
        self.damaged = {} if damaged is None else damaged
        self.spec = spec
        #: Whether the sweep wrote ``runs.parquet`` (``False`` with ``runs=False``, ``--no-runs``).
        self.wrote_runs = wrote_runs

    @property
    def runs(self) -> pd.DataFrame:
        """The per-run table (:func:`collect`), read on first use."""
        if self._runs is None:
            if (self.out / "runs.parquet").exists():  # this sweep's (same fingerprint), whichever run wrote it
                self._runs = pd.read_parquet(self.out / "runs.parquet")
            elif self.spec is None:
                raise SweepError(f"{str(self.out)!r}: no per-run table (runs.parquet) and no sweep to join it from")
            else:
                check_table_memory(self.spec)
                self._runs = collect(self.out, self.spec)
        return self._runs

    def __repr__(self) -> str:
        return (f"SweepOutcome(out={str(self.out)!r}, cells={len(self.summary)}, computed_chunks="
                f"{self.computed_chunks}, resumed_chunks={self.resumed_chunks}, seconds={self.seconds:.3g}, "
                f"wrote_runs={self.wrote_runs})")


def _stderr_line(text: str) -> None:
    print(f"shallowres: {text}", file=sys.stderr, flush=True)


def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    quiet: bool = False,
    connect_timeout: float = 5.0,
    on_chunk: Callable[[int], None] | None = None,
    wait: float = 0.0,
    log: Callable[[str], None] | None = None,
    runs: bool = True,
) -> SweepOutcome:
    """Run (or resume) a sweep into ``out``; in-process by default, on Dask with ``workers`` or ``scheduler``.

    The summary is streamed from the chunks (:func:`summarize_chunks`); ``runs``: also write the joined per-run
    table ``runs.parquet`` (streamed too, :func:`write_runs`).  Without it (``--no-runs``) the chunks are the
    per-run record (a later run of the same sweep with ``runs=True`` resumes them all and writes the table).

    Before anything is written, the directory and the memory are checked (:func:`check_output_dir`,
    :func:`check_memory`).  The directory is then locked for the whole run (:func:`sims.studies.store.directory_lock`;
    ``wait``: seconds to wait for another sweep holding it, ``math.inf`` for as long as it takes).  On resume every
    chunk on disk is verified against the manifest; damaged ones are reported in one line through ``log``
    (default: standard error) and recomputed.  A failed write (disk full, permission denied) stops the sweep
    with a :class:`SweepError` naming the directory and the cause; the chunks finished before it are kept.
    """
    t0 = time.perf_counter()
    out = Path(out)
    log = _stderr_line if log is None else log
    spec = adopt_chunk(spec, out)
    check_output_dir(out, spec)  # refused here, nothing has been created
    check_memory(spec, workers=workers, remote=scheduler is not None)
    existed = out.exists()
    client = cluster = None
    try:
        if scheduler is not None or workers is not None:
            client, cluster = _dask_client(workers, scheduler, connect_timeout)
        with store.directory_lock(out, wait=wait, log=log):
            try:
                return _run_locked(spec, out, client, cluster is not None, quiet, on_chunk, log, t0, runs)
            except BaseException:
                if not existed and not any(p.is_file() and p.name not in store.HOUSEKEEPING for p in out.rglob("*")):
                    shutil.rmtree(out, ignore_errors=True)  # failed before writing anything: leave nothing behind
                raise
    except store.StoreError as exc:
        raise SweepError(str(exc)) from None
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def adopt_chunk(spec: SweepSpec, out: Path) -> SweepSpec:
    """``spec`` with the chunk of the sweep already in ``out`` if ``spec``'s chunk was chosen automatically
    (:data:`LARGE_CHUNK`) and with the directory's chunk it is the directory's configuration: a sweep started
    with its file's chunk (or before the automatic choice existed) is resumed, not refused.  Else ``spec``."""
    if not spec.chunk_auto:
        return spec
    try:
        old = json.loads((out / "config.json").read_text())
        chunk = old["chunk"]
    except (OSError, ValueError, TypeError, KeyError):
        return spec
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk == spec.chunk:
        return spec
    other = replace(spec, chunk=chunk, chunk_auto=False)
    return other if other.fingerprint() == old.get("fingerprint") else spec


def _expected_chunks(spec: SweepSpec) -> dict[str, tuple[tuple[int, int, int, int], dict[str, Any]]]:
    """Chunk file name -> (unit of work, identity recorded in the file and the manifest)."""
    fp = spec.fingerprint()
    return {_chunk_name(c[0], c[1]): (c, {"fingerprint": fp, "cell": c[0], "chunk": c[1], "first_run": c[2],
                                          "runs": c[3]}) for c in spec.chunks()}


def _run_locked(spec, out, client, local_cluster, quiet, on_chunk, log, t0, write: bool) -> SweepOutcome:
    resuming = check_output_dir(out, spec)  # again: another sweep may have written here before we got the lock
    chunk_dir = out / "chunks"
    try:
        chunk_dir.mkdir(parents=True, exist_ok=True)
        for stale in itertools.chain(chunk_dir.glob(".*.tmp"), out.glob(".*.tmp")):  # a killed run's half write
            stale.unlink()
    except OSError as exc:
        raise SweepError(f"cannot prepare {str(chunk_dir)!r}: {exc.strerror}") from None
    if not resuming:
        store.atomic_write(out / "config.json", json.dumps(
            {"fingerprint": spec.fingerprint(), "name": spec.name, "trials": spec.trials, "seed": spec.seed,
             "chunk": spec.chunk, "grid_keys": list(spec.grid_keys),
             "cells": [{"index": c.index, "method": c.method, "params": c.params} for c in spec.cells],
             "source": spec.raw}, indent=1, default=str).encode())
    expected = _expected_chunks(spec)
    columns = {n: spec.cells[e[0][0]].columns for n, e in expected.items()}
    good, damaged, bad_lines = store.verify_chunks(out, {n: e[1] for n, e in expected.items()}, columns)
    report = store.damage_report(damaged, bad_lines)
    if report:
        log(report)
        store.compact_manifest(out, good)  # keep only what proved itself, so the report is not repeated
    good_set = set(good)
    todo = [(name, unit, ident) for name, (unit, ident) in expected.items() if name not in good_set]
    total_runs = len(spec.cells) * spec.trials
    from tqdm.auto import tqdm

    bar = tqdm(total=total_runs, initial=total_runs - sum(u[3] for _, u, _ in todo), unit="run", desc=spec.name,
               disable=True if quiet else None, smoothing=0.1)
    written = 0
    try:
        for name, unit, ident, data in _compute(spec, todo, client, local_cluster):
            store.write_chunk(out, name, data, ident, unit[3])
            written += 1
            bar.update(unit[3])
            if on_chunk:
                on_chunk(unit[0])
    except store.StoreError as exc:
        raise SweepError(f"{exc}; the sweep stopped and keeps its {len(good) + written} finished chunks: rerun "
                         "the same command to resume") from None
    finally:
        bar.close()
    summary = summarize_chunks(out, spec)
    try:
        if write:  # without: a runs.parquet an earlier run of this sweep wrote stays (the same runs, bit for bit)
            write_runs(out, spec)
        store.atomic_write(out / "summary.parquet", _to_parquet(summary))
        store.atomic_write(out / "summary.csv", summary.to_csv(index=False).encode())
        store.atomic_write(out / "metadata.json", json.dumps(metadata(spec), indent=1, default=str).encode())
    except store.StoreError as exc:
        raise SweepError(f"{exc}; all chunks are finished: rerun the same command to write the results") from None
    return SweepOutcome(out, None, summary, len(todo), len(good), time.perf_counter() - t0, damaged, spec=spec,
                        wrote_runs=write)


def _compute(spec: SweepSpec, todo, client, local_cluster: bool):
    """Yield ``(name, unit, identity, parquet bytes)`` for every chunk to compute, in-process or on Dask (in the
    order they finish).  A worker that dies is replaced and its chunk rescheduled by Dask."""
    if client is None:
        for name, unit, ident in todo:
            yield name, unit, ident, run_chunk(spec.cells[unit[0]].params, spec.seed, unit[2], unit[3],
                                               identity=ident, vectors=spec.vectors)
        return
    from dask.distributed import as_completed

    threads = 1 if local_cluster else None
    with client.as_current():
        futures = {client.submit(run_chunk, spec.cells[unit[0]].params, spec.seed, unit[2], unit[3], threads,
                                 ident, spec.vectors, pure=False, key=f"{spec.fingerprint()}-{unit[0]}-{unit[1]}"):
                   (name, unit, ident) for name, unit, ident in todo}
        try:
            for fut in as_completed(futures):
                name, unit, ident = futures[fut]
                try:
                    data = fut.result()
                except ValueError as exc:  # e.g. a remote worker without the memory for a chunk
                    raise SweepError(f"chunk {name}: {exc}") from None
                except Exception as exc:  # KilledWorker: the chunk killed its workers several times  # noqa: BLE001
                    raise SweepError(f"chunk {name} failed on the Dask cluster: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
                yield name, unit, ident, data
        finally:
            client.cancel(list(futures))


def _dask_client(workers: int | None, scheduler: str | None, timeout: float):
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout=f"{timeout}s", set_as_default=False), None
        except (OSError, TimeoutError) as exc:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s ({exc})") from None
    if not isinstance(workers, int) or workers < 1:
        raise SweepError(f"--workers must be an integer >= 1; got {workers!r}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    return Client(cluster, set_as_default=False), cluster


def collect(out: Path, spec: SweepSpec) -> pd.DataFrame:
    """All chunk files joined into the per-run table, with the cell's method and grid values as columns
    (:func:`cell_columns`): the frame ``runs.parquet`` holds."""
    if not _uniform_columns(spec):
        return _collect_frames(out, spec)
    import pyarrow as pa

    types, values = _cell_column_types(spec), _cell_values(spec)
    tables = [_with_cell_columns(store.read_chunk(out, _chunk_name(cell, chunk)), values[cell], types)
              for cell, chunk, _, _ in spec.chunks()]
    return _to_frame(pa.concat_tables(tables))


def _collect_frames(out: Path, spec: SweepSpec) -> pd.DataFrame:
    """:func:`collect` by pandas, for cells whose per-run columns differ (engines with their own extras): the
    frames are joined as :func:`pandas.concat` joins them (a column a cell lacks is missing there)."""
    frames = []
    columns = cell_columns(spec)
    for cell, chunk, _, _ in spec.chunks():
        df = pd.read_parquet(out / "chunks" / _chunk_name(cell, chunk))
        df.insert(0, "cell", cell)
        df.insert(1, "method", spec.cells[cell].method)
        for j, (name, values) in enumerate(columns.items()):
            df.insert(2 + j, name, [values[cell]] * len(df))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """A pandas frame of an Arrow table, converted as :func:`pandas.read_parquet` converts a file without pandas
    metadata (``to_pandas`` with the default types; a fresh ``RangeIndex``)."""
    return table.replace_schema_metadata(None).to_pandas()


def _uniform_columns(spec: SweepSpec) -> bool:
    """Whether every cell has the same per-run columns (then the per-run table is joined and written in Arrow,
    chunk by chunk)."""
    return len({c.columns for c in spec.cells}) == 1


def _cell_column_types(spec: SweepSpec) -> dict[str, pa.DataType]:
    """The Arrow type of each per-cell column of the run table (:func:`cell_columns`), as the joined pandas frame
    has it: ``large_string`` for text, ``bool``, ``int64`` if every cell's value is an integer, else ``double``."""
    import pyarrow as pa

    out = {"cell": pa.int64(), "method": pa.large_string()}
    for name, values in cell_columns(spec).items():
        if all(isinstance(v, bool) for v in values):
            out[name] = pa.bool_()
        elif all(isinstance(v, str) for v in values):
            out[name] = pa.large_string()
        elif all(isinstance(v, int) for v in values):
            out[name] = pa.int64()
        else:
            out[name] = pa.float64()
    return out


def _cell_values(spec: SweepSpec) -> list[dict[str, Any]]:
    """Per cell: its values of the columns :func:`collect` puts first (``cell``, ``method``, :func:`cell_columns`)."""
    columns = cell_columns(spec)
    return [{"cell": c.index, "method": c.method, **{name: vals[c.index] for name, vals in columns.items()}}
            for c in spec.cells]


def _with_cell_columns(table: pa.Table, values: dict[str, Any], types: dict[str, pa.DataType]) -> pa.Table:
    """A chunk's Arrow table with its cell's ``values`` (:func:`_cell_values`, Arrow ``types``) as the first
    columns (the chunk's own metadata dropped)."""
    import pyarrow as pa

    n = table.num_rows
    first = [pa.repeat(pa.scalar(float(v) if types[name] == pa.float64() else v, type=types[name]), n)
             for name, v in values.items()]
    return pa.Table.from_arrays(first + table.columns, names=list(values) + table.column_names)


def write_runs(out: Path, spec: SweepSpec) -> None:
    """Write ``runs.parquet`` (the per-run table of :func:`collect`) atomically.  With the same columns in every
    cell it is streamed: one chunk at a time is read, given its cell columns and appended, so the memory does not
    grow with the sweep; otherwise the frames are joined in memory first."""
    if not _uniform_columns(spec):
        store.atomic_write(out / "runs.parquet", _to_parquet(_collect_frames(out, spec)))
        return
    import pyarrow.parquet as pq

    types, values = _cell_column_types(spec), _cell_values(spec)
    with store.atomic_file(out / "runs.parquet") as fh:
        writer = None
        for cell, chunk, _, _ in spec.chunks():
            table = _with_cell_columns(store.read_chunk(out, _chunk_name(cell, chunk)), values[cell], types)
            if writer is None:
                writer = pq.ParquetWriter(fh, table.schema, **store.parquet_options(table.schema))
            writer.write_table(table)
        writer.close()


def _param(params: dict[str, Any], key: str) -> Any:
    val: Any = params
    for part in key.split("."):
        val = val.get(part) if isinstance(val, dict) else None
    return val


def cell_columns(spec: SweepSpec) -> dict[str, list[Any]]:
    """The per-cell columns of the run table: ``model``, ``k``, ``p`` and every grid key, one value per cell.

    A grid key named like a per-run column (``steps``) is called ``cell.steps``.  A key whose values are not all
    numbers, strings or booleans that Parquet holds exactly (a list such as a rate window, an integer beyond 64
    bits) is stored as the values' JSON text, so every cell has one value of one type.
    """
    out: dict[str, list[Any]] = {}
    for key in ("model", "k", "p") + tuple(k for k in spec.grid_keys if k not in ("model", "k", "p")):
        values = [_param(c.params, key) for c in spec.cells]
        kinds = {"bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
                 "str" if isinstance(v, str) else "other" for v in values}
        exact = len(kinds) == 1 and "other" not in kinds and all(
            not isinstance(v, int) or isinstance(v, bool) or -2**63 <= v < 2**63 for v in values)
        if not exact:
            values = [json.dumps(v, default=str) for v in values]
        name = f"cell.{key}" if key in FRAME_COLUMNS or key in ("cell", "method") else key
        out[name] = values
    return out


def rate_with_interval(row: dict[str, Any], name: str, hits: np.ndarray) -> None:
    """Set ``row["p_NAME"]`` to the fraction of true ``hits`` and ``p_NAME_lo``/``p_NAME_hi`` to its Wilson 95%
    interval."""
    n = len(hits)
    s = int(np.sum(hits))
    lo, hi = classify.wilson(s, n)
    row[f"p_{name}"], row[f"p_{name}_lo"], row[f"p_{name}_hi"] = s / n, float(lo), float(hi)


#: The per-run columns the summary reads (:func:`summarize_runs`, :func:`summarize_chunks`).
SUMMARY_INPUTS: tuple[str, ...] = ("outcome", "steps_to_tol", "slow_phase_end", "linear_regime", "fitted_rate",
                                   "theory_rate")


def summarize_runs(runs: pd.DataFrame, spec: SweepSpec | None = None) -> pd.DataFrame:
    """One row per grid cell: outcome rates with Wilson 95% intervals, steps to tolerance, slow phase, rates."""
    rows = []
    group_cols = ["cell", "method"] + (list(cell_columns(spec)) if spec else ["model", "k", "p"])
    for key, g in runs.groupby(group_cols, sort=True, dropna=False):
        rows.append(_summary_row(dict(zip(group_cols, key, strict=True)), g))
    return _summary_frame(rows)


def summarize_chunks(out: Path, spec: SweepSpec) -> pd.DataFrame:
    """:func:`summarize_runs` of the sweep's per-run table, streamed from the chunk files: one cell at a time, and
    of each chunk only the columns :data:`SUMMARY_INPUTS` (a few tens of bytes per run of one cell are in memory,
    never the whole table).  Every statistic is computed by the same code on the same values, so the result is
    identical, medians and quantiles exact."""
    import pyarrow as pa

    by_cell: dict[int, list[str]] = {}
    for cell, chunk, _, _ in spec.chunks():
        by_cell.setdefault(cell, []).append(_chunk_name(cell, chunk))
    rows = []
    for c, key in zip(spec.cells, _cell_values(spec), strict=True):
        table = pa.concat_tables([store.read_chunk(out, name, SUMMARY_INPUTS) for name in by_cell[c.index]])
        rows.append(_summary_row(key, _to_frame(table)))
    return _summary_frame(rows)


def _summary_row(row: dict[str, Any], g: pd.DataFrame) -> dict[str, Any]:
    """The summary of one cell (``row``: its key columns) from its runs ``g`` (at least :data:`SUMMARY_INPUTS`)."""
    n = len(g)
    row["trials"] = n
    for name in classify.OUTCOMES:
        rate_with_interval(row, name, (g["outcome"] == name).to_numpy())
    reached = g.loc[g["steps_to_tol"] >= 0, "steps_to_tol"]
    row["steps_to_tol_median"] = float(reached.median()) if len(reached) else math.nan
    row["steps_to_tol_q1"] = float(reached.quantile(0.25)) if len(reached) else math.nan
    row["steps_to_tol_q3"] = float(reached.quantile(0.75)) if len(reached) else math.nan
    slow = g.loc[g["slow_phase_end"] >= 0, "slow_phase_end"]
    row["slow_phase_median"] = float(slow.median()) if len(slow) else math.nan
    lin = g[g["linear_regime"]]
    row["linear_runs"] = len(lin)
    row["fitted_rate_median"] = float(lin["fitted_rate"].median()) if len(lin) else math.nan
    row["theory_rate_median"] = float(lin["theory_rate"].median()) if len(lin) else math.nan
    err = np.abs(np.log(lin["fitted_rate"]) / np.log(lin["theory_rate"]) - 1.0) if len(lin) else []
    row["rate_log_rel_err_max"] = float(np.max(err)) if len(lin) else math.nan
    return row


def _summary_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    first = [c for c in ("method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious")]
    return df[first + [c for c in df.columns if c not in first]]


def metadata(spec: SweepSpec) -> dict[str, Any]:
    """The full resolved configuration, seed, versions and git commit."""
    import importlib.metadata as im

    versions = {}
    for pkg in ("shallowres", "numpy", "scipy", "sympy", "numba", "llvmlite", "pandas", "pyarrow", "dask",
                "distributed", "tqdm", "matplotlib"):
        try:
            versions[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            versions[pkg] = None
    return {
        "name": spec.name,
        "fingerprint": spec.fingerprint(),
        "trials": spec.trials,
        "seed": spec.seed,
        "chunk": spec.chunk,
        # False: every cell ran on the order parameters alone (simulate(vectors=False): the same law of teachers
        # and starts, drawn directly)
        "vectors": spec.vectors,
        "grid_keys": list(spec.grid_keys),
        "cells": [{"index": c.index, "method": c.method, "params": c.params} for c in spec.cells],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_summary(out: str | os.PathLike) -> pd.DataFrame:
    """The summary of a finished sweep directory."""
    path = Path(out) / "summary.csv"
    if not path.exists():
        raise SweepError(f"{str(out)!r} holds no finished sweep (no summary.csv)")
    return pd.read_csv(path)
