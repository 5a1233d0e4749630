"""The results of a sweep: its per-run table joined from the chunks (:func:`collect`, ``runs.parquet`` by
:func:`write_runs`), the per-cell summary with Wilson intervals (:func:`summarize_chunks`, :func:`summarize_runs`,
``summary.csv``), and the metadata that makes a result reproducible (:func:`metadata`, ``metadata.json``).

Results are streamed from the chunks, so a sweep's memory does not grow with its size (a million runs per cell
of the 45 cells of ``liu2019`` is 45 million runs): each chunk holds its runs' table, as
:func:`sims.studies.per_run.run_table` built it; :func:`summarize_chunks` reads, one cell at a time, only the
columns the summary needs and computes every statistic with the same code as :func:`summarize_runs` (exact
medians and quantiles: the summary is identical, byte for byte in ``summary.csv``); :func:`write_runs` appends
chunk after chunk to ``runs.parquet``.  ``runs=False`` (``--no-runs``) skips ``runs.parquet``: the chunks, which
hold every run's row and are verified on resume, are then the per-run record, and
:attr:`sims.studies.sweep.SweepOutcome.runs` joins them on demand.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sims.runs import classify
from sims.runs.simulate import FRAME_COLUMNS
from sims.studies import store
from sims.studies.spec import SweepError, SweepSpec, chunk_name, dotted_value

if TYPE_CHECKING:
    import pyarrow as pa

#: The first columns of the summary, one row per cell (the other columns follow).
SUMMARY_COLUMNS = ("method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious",
                   "p_basin_global", "p_basin_global_lo", "p_basin_global_hi", "p_basin_spurious")
#: The per-run columns the summary reads (:func:`summarize_runs`, :func:`summarize_chunks`).
SUMMARY_INPUTS: tuple[str, ...] = ("outcome", "steps_to_tol", "slow_phase_end", "linear_regime", "fitted_rate",
                                   "theory_rate", "basin")


# ---------------------------------------------------------------------------------------------------------------
# The per-run table of a sweep


def collect(out: Path, spec: SweepSpec) -> pd.DataFrame:
    """All chunk files joined into the per-run table, with the cell's method and grid values as columns
    (:func:`cell_columns`): the frame ``runs.parquet`` holds."""
    if not _uniform_columns(spec):
        return _collect_frames(out, spec)
    import pyarrow as pa

    return _to_frame(pa.concat_tables(list(_run_tables(out, spec))))


def _collect_frames(out: Path, spec: SweepSpec) -> pd.DataFrame:
    """:func:`collect` by pandas, for cells whose per-run columns differ (engines with their own extras): the
    frames are joined as :func:`pandas.concat` joins them (a column a cell lacks is missing there)."""
    frames = []
    columns = cell_columns(spec)
    for cell, chunk, _, _ in spec.chunks():
        df = pd.read_parquet(out / "chunks" / chunk_name(cell, chunk))
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


def _run_tables(out: Path, spec: SweepSpec) -> Iterator[pa.Table]:
    """Every chunk's Arrow table, in the order of :meth:`SweepSpec.chunks`, with its cell's columns first
    (:func:`_with_cell_columns`): the pieces of the per-run table when every cell has the same columns."""
    types, values = _cell_column_types(spec), _cell_values(spec)
    algorithms = {c.params["algorithm"] == "flow" for c in spec.cells}
    for cell, chunk, _, _ in spec.chunks():
        table = store.read_chunk(out, chunk_name(cell, chunk))
        if len(algorithms) > 1:  # gradient flow's times are floats, the steps of the other cells integers
            table = _times_as_floats(table)
        yield _with_cell_columns(table, values[cell], types)


#: The per-run columns that count steps, and for gradient flow its (real) time.
TIME_COLUMNS: tuple[str, ...] = ("steps", "steps_to_tol", "slow_phase_end")


def _times_as_floats(table: pa.Table) -> pa.Table:
    """A chunk's table with its :data:`TIME_COLUMNS` as float64 (exact for step counts below 2^53): the joined
    table of a sweep with gradient-flow and finite-step cells has one type per column."""
    import pyarrow as pa

    for name in TIME_COLUMNS:
        i = table.schema.get_field_index(name)
        if i >= 0 and table.schema.field(i).type != pa.float64():
            table = table.set_column(i, name, table.column(i).cast(pa.float64()))
    return table


def write_runs(out: Path, spec: SweepSpec) -> None:
    """Write ``runs.parquet`` (the per-run table of :func:`collect`) atomically.  With the same columns in every
    cell it is streamed: one chunk at a time is read, given its cell columns and appended, so the memory does not
    grow with the sweep; otherwise the frames are joined in memory first."""
    if not _uniform_columns(spec):
        store.atomic_write(out / "runs.parquet", to_parquet(_collect_frames(out, spec)))
        return
    import pyarrow.parquet as pq

    with store.atomic_file(out / "runs.parquet") as fh:
        writer = None
        for table in _run_tables(out, spec):
            if writer is None:
                writer = pq.ParquetWriter(fh, table.schema, **store.parquet_options(table.schema))
            writer.write_table(table)
        writer.close()


def cell_columns(spec: SweepSpec) -> dict[str, list[Any]]:
    """The per-cell columns of the run table: ``model``, ``k``, ``p`` and every grid key, one value per cell.

    A grid key named like a per-run column (``steps``) is called ``cell.steps``.  A key whose values are not all
    numbers, strings or booleans that Parquet holds exactly (a list such as a rate window, an integer beyond 64
    bits) is stored as the values' JSON text, so every cell has one value of one type.
    """
    out: dict[str, list[Any]] = {}
    for key in ("model", "k", "p") + tuple(k for k in spec.grid_keys if k not in ("model", "k", "p")):
        values = [dotted_value(c.params, key) for c in spec.cells]
        kinds = {"bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
                 "str" if isinstance(v, str) else "other" for v in values}
        exact = len(kinds) == 1 and "other" not in kinds and all(
            not isinstance(v, int) or isinstance(v, bool) or -2**63 <= v < 2**63 for v in values)
        if not exact:
            values = [json.dumps(v, default=str) for v in values]
        name = f"cell.{key}" if key in FRAME_COLUMNS or key in ("cell", "method") else key
        out[name] = values
    return out


# ---------------------------------------------------------------------------------------------------------------
# The summary


def rate_with_interval(row: dict[str, Any], name: str, hits: np.ndarray) -> None:
    """Set ``row["p_NAME"]`` to the fraction of true ``hits`` and ``p_NAME_lo``/``p_NAME_hi`` to its Wilson 95%
    interval."""
    n = len(hits)
    s = int(np.sum(hits))
    lo, hi = classify.wilson(s, n)
    row[f"p_{name}"], row[f"p_{name}_lo"], row[f"p_{name}_hi"] = s / n, float(lo), float(hi)


def summarize_runs(runs: pd.DataFrame, spec: SweepSpec | None = None) -> pd.DataFrame:
    """One row per grid cell: outcome rates with Wilson 95% intervals, steps to tolerance, slow phase, rates."""
    rows = []
    group_cols = ["cell", "method"] + (list(cell_columns(spec)) if spec else ["model", "k", "p"])
    for key, g in runs.groupby(group_cols, sort=True, dropna=False):
        rows.append(_summary_row(dict(zip(group_cols, key, strict=True)), g))
    return _summary_frame(rows)


def summarize_chunks(out: Path, spec: SweepSpec, threads: int = 1) -> pd.DataFrame:
    """:func:`summarize_runs` of the sweep's per-run table, streamed from the chunk files: one cell at a time per
    thread, and of each chunk only the columns :data:`SUMMARY_INPUTS` (a few tens of bytes per run of ``threads``
    cells are in memory, never the whole table).  Every statistic is computed by the same code on the same values,
    so the result is identical, medians and quantiles exact, whatever ``threads``.  The text columns (outcome,
    basin) are read as the dictionaries they are stored as (pandas categoricals: compared by code, no string per
    run; 1.6x faster on 4.5 million runs).  ``threads``: cells summarized side by side (reading Parquet and
    NumPy's partitions release the GIL: liu2019 at ``--trials 200000``, 2.4-2.6 s wall with one thread, 1.8 s
    with two where the second core was free, on a shared machine)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_cell: dict[int, list[str]] = {}
    for cell, chunk, _, _ in spec.chunks():
        by_cell.setdefault(cell, []).append(chunk_name(cell, chunk))

    def summarize(c: Any, key: dict[str, Any]) -> dict[str, Any]:
        names = by_cell[c.index]
        schema = pq.read_schema(out / "chunks" / names[0])
        text = tuple(n for n in SUMMARY_INPUTS if pa.types.is_string(schema.field(n).type)
                     or pa.types.is_large_string(schema.field(n).type))
        table = pa.concat_tables([store.read_chunk(out, name, SUMMARY_INPUTS, text) for name in names])
        return _summary_row(key, _to_frame(table))

    keys = _cell_values(spec)
    if threads <= 1:
        return _summary_frame([summarize(c, key) for c, key in zip(spec.cells, keys, strict=True)])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="shallowres-summary") as pool:
        return _summary_frame(list(pool.map(summarize, spec.cells, keys)))  # in the cells' order


def _summary_row(row: dict[str, Any], g: pd.DataFrame) -> dict[str, Any]:
    """The summary of one cell (``row``: its key columns) from its runs ``g`` (at least :data:`SUMMARY_INPUTS`)."""
    n = len(g)
    row["trials"] = n
    for name in classify.OUTCOMES:
        rate_with_interval(row, name, (g["outcome"] == name).to_numpy())
    for name in ("global", "spurious"):  # where the runs were headed (sims.runs.attractor), beside where they ended
        rate_with_interval(row, f"basin_{name}", (g["basin"] == name).to_numpy())
    reached = g.loc[g["steps_to_tol"] >= 0, "steps_to_tol"]
    row["steps_to_tol_median"] = float(reached.median()) if len(reached) else math.nan
    row["steps_to_tol_q1"] = float(reached.quantile(0.25)) if len(reached) else math.nan
    row["steps_to_tol_q3"] = float(reached.quantile(0.75)) if len(reached) else math.nan
    slow = g.loc[g["slow_phase_end"] >= 0, "slow_phase_end"]
    row["slow_phase_median"] = float(slow.median()) if len(slow) else math.nan
    lin = g.loc[g["linear_regime"], ["fitted_rate", "theory_rate"]]
    row["linear_runs"] = len(lin)
    row["fitted_rate_median"] = float(lin["fitted_rate"].median()) if len(lin) else math.nan
    row["theory_rate_median"] = float(lin["theory_rate"].median()) if len(lin) else math.nan
    err = np.abs(np.log(lin["fitted_rate"]) / np.log(lin["theory_rate"]) - 1.0) if len(lin) else []
    row["rate_log_rel_err_max"] = float(np.max(err)) if len(lin) else math.nan
    return row


def _summary_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    first = list(SUMMARY_COLUMNS)
    return df[first + [c for c in df.columns if c not in first]]


# ---------------------------------------------------------------------------------------------------------------
# Files


@functools.cache
def _package_versions() -> tuple[tuple[str, str | None], ...]:
    """The installed versions of the packages a sweep's results depend on, read once per process: reading a
    package's metadata parses its files (12 packages: about 10 ms per sweep, most of a tiny sweep's bookkeeping,
    measured in tests/test_fuzz_config.py, which runs a few hundred sweeps in one process)."""
    import importlib.metadata as im

    versions = []
    for pkg in ("shallowres", "numpy", "scipy", "sympy", "numba", "llvmlite", "pandas", "pyarrow", "dask",
                "distributed", "tqdm", "matplotlib"):
        try:
            versions.append((pkg, im.version(pkg)))
        except im.PackageNotFoundError:
            versions.append((pkg, None))
    return tuple(versions)


def metadata(spec: SweepSpec) -> dict[str, Any]:
    """The full resolved configuration, seed, versions and git commit."""
    versions = dict(_package_versions())
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
        "cells": spec.cell_records(),
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


def to_parquet(df: pd.DataFrame) -> bytes:
    """A frame as Parquet bytes (pandas' defaults, no index): how ``summary.parquet`` is written."""
    buf = io.BytesIO()
    df.to_parquet(buf, engine="pyarrow", index=False)
    return buf.getvalue()


def load_summary(out: str | os.PathLike) -> pd.DataFrame:
    """Read the summary of a finished sweep directory.

    The summary is the directory's ``summary.csv``: one row per cell, :data:`SUMMARY_COLUMNS` first (method,
    ``k``, ``p``, trials, the rate of global minima with its Wilson 95% interval, ...).  Reading it needs neither
    the sweep file nor the chunks; ``shallowres summarize DIR`` prints it.

    Parameters
    ----------
    out : str or os.PathLike
        The sweep directory (:func:`sims.studies.sweep.run_sweep`).

    Returns
    -------
    pandas.DataFrame
        The summary, as :func:`pandas.read_csv` reads ``summary.csv``.

    Raises
    ------
    SweepError
        If the directory holds no finished sweep (no ``summary.csv``).

    Examples
    --------
    >>> from sims.studies import summary, sweep
    >>> spec = sweep.build_spec({"sweep": {"name": "demo", "trials": 6, "seed": 0, "chunk": 6},
    ...                          "base": {"k": 4, "p": 4, "steps": 2000},
    ...                          "methods": {"resnet": {"model": "resnet"}, "cnn": {"model": "cnn"}}})
    >>> _ = sweep.run_sweep(spec, "demo", quiet=True)
    >>> summary.load_summary("demo")[["method", "k", "p", "trials", "p_global"]]
       method  k  p  trials  p_global
    0  resnet  4  4       6       1.0
    1     cnn  4  4       6       1.0
    """
    path = Path(out) / "summary.csv"
    if not path.exists():
        raise SweepError(f"{str(out)!r} holds no finished sweep (no summary.csv)")
    return pd.read_csv(path)
