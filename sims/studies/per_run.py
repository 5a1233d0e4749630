"""The per-run table of a simulation result: one row per run, the columns
:data:`sims.runs.simulate.FRAME_COLUMNS` (outcome, stop reason, final loss and angle, steps to tolerance, fitted and
theoretical rates, ...) and, for a run of an engine, its reference loss and per-run extras.

A sweep's dry run finds each cell's columns from it (:mod:`sims.studies.spec`), and every chunk of a sweep is this
table written to Parquet (:func:`run_table`, built straight from the result's arrays: a large chunk never passes
through a pandas frame).  Joining a sweep's chunks and summarizing them is :mod:`sims.studies.summary`'s work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numba import njit

from sims.runs.simulate import FRAME_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

#: The most distinct values :func:`_text_array` finds one by one before it converts every string instead.
MAX_DISTINCT = 64


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
    """A ``large_string`` Arrow array of a text column with few distinct values (outcomes, stop reasons): the
    distinct values in the order they first occur and each run's index among them (:func:`_distinct_rows`, on the
    strings' code points), then one gather (``take``) from the distinct values.  Exact, and several times faster
    than converting each string (per 100,000 runs of 5 outcomes: 1.6 ms, against 5.8 ms comparing the strings with
    each distinct value in NumPy and 8 ms converting each; casting a dictionary array instead of ``take`` is
    slower).  A column with more than :data:`MAX_DISTINCT` values, or not of NumPy's ``str`` type, takes the general
    conversion."""
    import pyarrow as pa

    if values.dtype.kind != "U" or values.ndim != 1 or values.dtype.itemsize == 0:
        return pa.array(values.astype(str), type=pa.large_string())
    points = np.ascontiguousarray(values).view(np.uint32).reshape(len(values), values.dtype.itemsize // 4)
    codes = np.empty(len(values), dtype=np.int32)
    first = np.empty(MAX_DISTINCT, dtype=np.int64)
    found = _distinct_rows(points, first, codes)
    if found < 0:  # many distinct values: the general conversion
        return pa.array(values.astype(str), type=pa.large_string())
    distinct = [str(values[i]) for i in first[:found]]
    return pa.array(distinct, type=pa.large_string()).take(pa.array(codes))


@njit(cache=True, nogil=True)
def _distinct_rows(points, first, codes):
    """Each row of ``points`` (the code points of fixed-width strings, one string per row) is given the index of
    the first earlier row equal to it among the distinct ones (``codes``); ``first`` receives the rows where the
    distinct values first occur.  Returns their count, or -1 when there are more than ``len(first)``."""
    found = 0
    width = points.shape[1]
    for i in range(points.shape[0]):
        code = -1
        for d in range(found):
            j = first[d]
            same = True
            for c in range(width):
                if points[i, c] != points[j, c]:
                    same = False
                    break
            if same:
                code = d
                break
        if code < 0:
            if found == first.shape[0]:
                return -1
            first[found] = i
            code = found
            found += 1
        codes[i] = code
    return found
