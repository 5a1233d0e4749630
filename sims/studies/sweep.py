"""Running a sweep: a :class:`~sims.studies.spec.SweepSpec` computed chunk by chunk (in-process or on Dask),
with atomic per-chunk persistence and resume, into a directory that ends with the per-run table, the summary and
the metadata (:mod:`sims.studies.summary`).

The modules of a sweep, each importing only the ones before it:

- :mod:`sims.studies.config`: the sweep file's schema (pydantic models);
- :mod:`sims.studies.store`: the chunks on disk, verified, and the directory's lock;
- :mod:`sims.studies.per_run`: the per-run table of one simulation result (what a chunk holds);
- :mod:`sims.studies.spec`: a sweep file validated and expanded into its cells (:func:`build_spec`);
- :mod:`sims.studies.summary`: the joined per-run table, the summary with Wilson intervals, the metadata;
- this module: the chunks computed, checked (output directory, memory), resumed (:func:`run_sweep`).

Every public name of the others that a sweep's user needs is importable from here too (:func:`build_spec`,
:func:`load_summary`, :class:`SweepError`, ...).

Results do not depend on how the runs are chunked or where the chunks run.  :func:`run_chunk` writes each chunk's
per-run table straight from the result's arrays into Parquet.  A sweep of at least :data:`LARGE_TRIALS` runs per
cell without an explicit chunk uses chunks of :func:`auto_chunk` runs (20,000 to 100,000).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sims.studies import store
from sims.studies.config import BASE_KEYS, DEFAULT_BASE, ENGINE_KINDS, SCHEDULE_KINDS, STEP_RULES, SWEEP_KEYS
from sims.studies.per_run import run_columns, run_frame, run_table
from sims.studies.spec import (
    LARGE_CHUNK,
    LARGE_TRIALS,
    MAX_AUTO_CHUNK,
    MAX_DEPTH,
    Cell,
    SweepError,
    SweepSpec,
    auto_chunk,
    build_spec,
    chunk_name,
    fixed_teacher,
    load_toml,
    matched_schedule,
    parse_value,
    simulate_cell,
    simulation_kwargs,
    simulation_kwargs_fast,
)
from sims.studies.summary import (
    SUMMARY_COLUMNS,
    SUMMARY_INPUTS,
    cell_columns,
    collect,
    load_summary,
    metadata,
    rate_with_interval,
    summarize_chunks,
    summarize_runs,
    to_parquet,
    write_runs,
)

if TYPE_CHECKING:
    import pyarrow as pa

#: The public names of the modules of a sweep, importable from here as they were before the module was split.
__all__ = [
    "BASE_KEYS", "DEFAULT_BASE", "ENGINE_KINDS", "LARGE_CHUNK", "LARGE_TRIALS", "MAX_AUTO_CHUNK", "MAX_DEPTH",
    "ROW_BYTES", "SCHEDULE_KINDS", "STEP_RULES", "SUMMARY_COLUMNS", "SUMMARY_INPUTS", "SUMMARY_ROW_BYTES",
    "SUMMARY_THREADS", "summary_threads",
    "SWEEP_KEYS", "Cell", "SweepError", "SweepOutcome", "SweepSpec", "adopt_chunk", "auto_chunk", "build_spec",
    "cell_columns", "check_memory", "check_output_dir", "chunk_kwargs", "chunk_table", "chunk_threads",
    "chunks_in_flight",
    "check_table_memory", "collect", "fixed_teacher", "load_summary", "load_toml", "matched_schedule", "metadata",
    "numba_threads", "parse_value", "rate_with_interval", "run_chunk", "run_columns", "run_frame", "run_sweep",
    "run_table", "simulation_kwargs", "simulation_kwargs_fast", "summarize_chunks", "summarize_runs", "write_runs",
]


def run_chunk(params: dict[str, Any], seed: int, first: int, runs: int, threads: int | None = None,
              identity: dict[str, Any] | None = None, vectors: bool = True) -> bytes:
    """Simulate one chunk and return its per-run table as Parquet bytes (what a Dask worker sends back), with
    ``identity`` (fingerprint, cell, chunk, first run, runs) in the file's metadata.  ``vectors``: the sweep's
    :attr:`SweepSpec.vectors` (False: the chunk runs on the order parameters alone)."""
    return store.table_bytes(chunk_table(params, seed, first, runs, threads, vectors), identity or {})


def chunk_table(params: dict[str, Any], seed: int, first: int, runs: int, threads: int | None = None,
                vectors: bool = True) -> pa.Table:
    """The per-run table of one chunk as a ``pyarrow.Table`` (:func:`run_chunk` before the Parquet encoding; an
    in-process sweep builds the table and encodes it in its writer thread, beside the next chunk's computation)."""
    return run_table(*_simulate_chunk(params, seed, first, runs, threads, vectors))


def _simulate_chunk(params: dict[str, Any], seed: int, first: int, runs: int, threads: int | None,
                    vectors: bool) -> tuple[Any, Any]:
    """One chunk's :class:`sims.SimulationResult` and the cell's engine (:func:`run_table`'s arguments)."""
    kw = chunk_kwargs(params, vectors)
    res = simulate_cell(kw, runs=runs, seed=seed, run_offset=first, threads=threads, vectors=vectors)
    return res, kw["engine"]


def chunk_kwargs(params: dict[str, Any], vectors: bool) -> dict[str, Any]:
    """The keyword arguments of :func:`sims.simulate` a chunk of a cell runs with: the cell's, except that a cell of
    plain population GD on the order parameters (``vectors`` False, no engine) records only its first and last
    step (``n_record = 2``).  A chunk keeps no trajectory (:func:`run_table`), and on the lockstep driver a record
    step only routes the run through the scalar pass, which takes the per-run driver's decisions, so no per-run
    column changes (checked bit for bit on every cell of ``liu2019``; a test compares a sweep's rows with
    :func:`sims.simulate` at the cell's ``n_record``), while the engine saves ~20% of its time (9 of 15 record
    steps of ``liu2019`` fall within a typical run's ~200 steps)."""
    kw = simulation_kwargs_fast(params)
    if not vectors and kw["engine"] is None and kw["algorithm"] == "gd":
        kw["n_record"] = 2
    return kw


#: Bytes per row of the per-run table held in memory when it is joined as one frame (:func:`collect`; measured:
#: 180 with pandas' Arrow-backed strings, more with object strings; the join holds it twice or more).
ROW_BYTES = 800
#: Bytes per run of one cell held while the summary of that cell is computed from its chunks
#: (:func:`summarize_chunks`: the columns :data:`SUMMARY_INPUTS` in Arrow, as a frame, and the selections of them).
SUMMARY_ROW_BYTES = 256


#: Cells the end of a sweep summarizes side by side at most (:func:`summary_threads`).
SUMMARY_THREADS = 2


def summary_threads(spec: SweepSpec) -> int:
    """Cells :func:`summarize_chunks` summarizes side by side at the end of a sweep: :data:`SUMMARY_THREADS`, at most
    the cores this process may use and the cells, and fewer if the memory for that many cells' summary columns
    (:data:`SUMMARY_ROW_BYTES` per run) is not available (:func:`check_memory` counts one).  The summary is the
    same whatever the number."""
    from sims.runs.memory import available_bytes

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(SUMMARY_THREADS, cores, len(spec.cells)))
    while n > 1 and n * SUMMARY_ROW_BYTES * spec.trials > available_bytes():
        n -= 1
    return n


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
    local Dask cluster runs ``workers`` chunks at once, this process :func:`chunks_in_flight`.  On a remote
    ``scheduler`` the workers' memory is theirs (each chunk is checked where it runs).  The results are streamed
    from the chunks (:func:`summarize_chunks`, :func:`write_runs`): what grows with the sweep is one cell's summary
    columns (:data:`SUMMARY_ROW_BYTES` per run), not the per-run table (a table that reads it checks
    :func:`check_table_memory` when it does).  A sweep without vectors (:attr:`SweepSpec.vectors`) needs no memory
    that grows with ``k`` or ``p``.
    """
    from sims.runs.memory import available_bytes, format_size, simulate_bytes

    runs = min(spec.chunk, spec.trials)
    local = 1 if workers or remote else chunks_in_flight(spec)  # chunks computed at once in this process
    threads = 1 if workers or local > 1 else numba_threads()

    def chunk_bytes(runs: int) -> int:
        return max(simulate_bytes(k=c.params["k"], p=c.params["p"], runs=runs, steps=c.params["steps"],
                                  n_record=c.params["n_record"], algorithm=c.params["algorithm"],
                                  batch_size=c.params.get("batch_size"), threads=threads, vectors=spec.vectors)
                   for c in spec.cells)

    at_once = 0 if remote else (workers or local)
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
    """Run (or resume) a sweep into a directory; in-process by default, on Dask with ``workers`` or ``scheduler``.

    Before anything is written, the directory and the memory are checked (:func:`check_output_dir`,
    :func:`check_memory`).  The directory is then locked for the whole run (:func:`sims.studies.store.directory_lock`).
    On resume every chunk on disk is verified against the manifest; damaged ones are reported in one line through
    ``log`` and recomputed, so a resumed sweep ends with the result of an uninterrupted one.  The summary is
    streamed from the chunks (:func:`sims.studies.summary.summarize_chunks`), and so is ``runs.parquet``
    (:func:`sims.studies.summary.write_runs`): the memory does not grow with the sweep.  A sweep that fails before
    writing a chunk leaves no directory behind.

    Parameters
    ----------
    spec : SweepSpec
        The sweep (:func:`build_spec`).
    out : str or os.PathLike
        The sweep directory: new, empty, or holding this same sweep (which is then resumed).
    workers : int, optional
        Run on a local Dask cluster of this many single-threaded worker processes.
    scheduler : str, optional
        Run on the Dask cluster of this scheduler (``"tcp://HOST:PORT"``).
    quiet : bool, default False
        Show no progress bar.
    connect_timeout : float, default 5.0
        Seconds to wait for the ``scheduler``.
    on_chunk : callable, optional
        Called with the cell index of every chunk once it is written.
    wait : float, default 0.0
        Seconds to wait for another sweep holding the directory's lock (``math.inf``: as long as it takes).
    log : callable, optional
        Receives the one-line reports (damaged chunks, waiting for the lock); by default they go to standard error.
    runs : bool, default True
        Also write the joined per-run table ``runs.parquet``.  Without it (``--no-runs``) the chunks are the
        per-run record; a later run of the same sweep with ``runs=True`` resumes them all and writes the table.

    Returns
    -------
    SweepOutcome
        The summary, the chunks computed now and those resumed, and the damaged chunks recomputed; its ``runs``
        (the per-run table) is read when first asked for.

    Raises
    ------
    SweepError
        For a directory holding another sweep, not writable or locked by another sweep; a sweep this machine has
        no memory for; an unreachable scheduler; a chunk failing on the Dask cluster; a failed write (disk full,
        permission denied), after which the chunks finished before it are kept and rerunning resumes them.

    Examples
    --------
    >>> from sims.studies import sweep
    >>> spec = sweep.build_spec({"sweep": {"name": "demo", "trials": 8, "seed": 0, "chunk": 4},
    ...                          "base": {"k": 4, "p": 4, "steps": 2000}})
    >>> outcome = sweep.run_sweep(spec, "demo", quiet=True)     # writes the directory ./demo
    >>> outcome.computed_chunks, outcome.resumed_chunks, list(outcome.summary["trials"])
    (2, 0, [8])
    >>> sweep.run_sweep(spec, "demo", quiet=True).resumed_chunks  # again: every chunk is verified and resumed
    2
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
    (:func:`auto_chunk`) and with the directory's chunk it is the directory's configuration: a sweep started
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
    return {chunk_name(c[0], c[1]): (c, {"fingerprint": fp, "cell": c[0], "chunk": c[1], "first_run": c[2],
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
             "cells": spec.cell_records(),
             "source": spec.raw}, indent=1, default=str).encode())
    expected = _expected_chunks(spec)
    columns = {n: spec.cells[e[0][0]].columns for n, e in expected.items()}
    good, damaged, bad_lines = store.verify_chunks(out, {n: e[1] for n, e in expected.items()}, columns)
    report = store.damage_report(damaged, bad_lines)
    if report:
        log(report)
        store.compact_manifest(out, good)  # keep only what proved itself, so the report is not repeated
    good_set = set(good)
    todo = _teacher_order(spec, [(name, unit, ident) for name, (unit, ident) in expected.items()
                                 if name not in good_set])
    total_runs = len(spec.cells) * spec.trials
    from tqdm.auto import tqdm

    bar = tqdm(total=total_runs, initial=total_runs - sum(u[3] for _, u, _ in todo), unit="run", desc=spec.name,
               disable=True if quiet else None, smoothing=0.1)
    written = [0]

    def done(unit) -> None:
        written[0] += 1
        bar.update(unit[3])
        if on_chunk:
            on_chunk(unit[0])

    try:
        _write_all(out, _compute(spec, todo, client, local_cluster), done)
    except store.StoreError as exc:
        raise SweepError(f"{exc}; the sweep stopped and keeps its {len(good) + written[0]} finished chunks: rerun "
                         "the same command to resume") from None
    finally:
        bar.close()
    summary = summarize_chunks(out, spec, summary_threads(spec))
    try:
        if write:  # without: a runs.parquet an earlier run of this sweep wrote stays (the same runs, bit for bit)
            write_runs(out, spec)
        store.atomic_write(out / "summary.parquet", to_parquet(summary))
        store.atomic_write(out / "summary.csv", summary.to_csv(index=False).encode())
        store.atomic_write(out / "metadata.json", json.dumps(metadata(spec), indent=1, default=str).encode())
    except store.StoreError as exc:
        raise SweepError(f"{exc}; all chunks are finished: rerun the same command to write the results") from None
    return SweepOutcome(out, None, summary, len(todo), len(good), time.perf_counter() - t0, damaged, spec=spec,
                        wrote_runs=write)


def _persist(out: Path, name: str, data: bytes | pa.Table | Callable[[], pa.Table], ident: dict[str, Any],
             rows: int) -> None:
    """Write one chunk (:func:`sims.studies.store.write_chunk`), building its table first if ``data`` is a function
    (:func:`run_table` of a result) and Parquet-encoding it if it is a table."""
    if callable(data):
        data = data()
    if not isinstance(data, bytes):
        data = store.table_bytes(data, ident)
    store.write_chunk(out, name, data, ident, rows)


def _write_all(out: Path, chunks, done: Callable[[Any], None]) -> None:
    """Persist every ``(name, unit, identity, data)`` of ``chunks`` in a writer thread, one chunk behind the
    computation: chunk ``i``'s table is built, encoded, hashed, written and fsynced (work that mostly releases the
    GIL) while chunk ``i + 1`` is computed.  ``done(unit)`` is called in this thread, in order, once a chunk is on
    disk with its manifest line.  At most two chunks are held; whatever happens, a chunk handed to the writer is
    finished before this returns or raises (the pool is shut down waiting), and a write's error
    (:class:`sims.studies.store.StoreError`) is raised here.  After a failed write no later chunk is written (as
    without the thread: the sweep stops at the first failure and keeps the chunks before it)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    failed = threading.Event()

    def persist(*args) -> None:
        if failed.is_set():
            return
        try:
            _persist(*args)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(1, thread_name_prefix="shallowres-writer") as pool:
        pending = None
        for name, unit, ident, data in chunks:
            fut = pool.submit(persist, out, name, data, ident, unit[3])
            if pending is not None:
                pending[0].result()
                done(pending[1])
            pending = (fut, unit)
        if pending is not None:
            pending[0].result()
            done(pending[1])


def _teacher_order(spec: SweepSpec, todo: list) -> list:
    """The chunks to compute, those with the same teachers one after another: by first run, then by what the
    teachers depend on (``p``, ``k``, the teacher's law), then by cell.  The methods of a ``(k, p)`` draw the same
    teachers run by run, so the teacher-only work of a chunk is then found in the memo of the one before
    (:mod:`sims.runs.memo`).  The order changes no result (each run draws from its own stream)."""
    def teachers(cell: int) -> str:
        params = spec.cells[cell].params
        return json.dumps([params.get("p"), params.get("k"), params.get("teacher")], sort_keys=True, default=str)

    keys = {c.index: teachers(c.index) for c in spec.cells}
    return sorted(todo, key=lambda item: (item[1][2], keys[item[1][0]], item[1][0]))


def _local_chunk(spec: SweepSpec, unit: tuple[int, int, int, int], threads: int | None) -> Callable[[], pa.Table]:
    """Simulate one chunk in this process; a function giving its Arrow table (:func:`run_table`)."""
    return functools.partial(run_table, *_simulate_chunk(spec.cells[unit[0]].params, spec.seed, unit[2], unit[3],
                                                         threads, spec.vectors))


def _compute_local(spec: SweepSpec, todo):
    """:func:`_compute` in this process: :func:`chunk_threads` chunks computed at once, each on one engine thread,
    and up to :func:`chunks_in_flight` held, yielded in the order of ``todo``.  Why: a chunk alternates between the
    engine (compiled, without the GIL) and per-run NumPy work between its phases (draws, schedule, classification,
    rates), much of it on one core; chunks side by side keep both cores busy, and chunks computed ahead of the one
    the writer waits for keep them busy while that one waits (for the warmup child's flow engine, say).  Each run
    draws from its own stream, so nothing depends on which chunk runs beside which."""
    ahead = chunks_in_flight(spec)
    if ahead <= 1:
        for name, unit, ident in todo:
            yield name, unit, ident, _local_chunk(spec, unit, None)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    items = iter(todo)
    with ThreadPoolExecutor(chunk_threads(spec), thread_name_prefix="shallowres-chunk") as pool:
        running: deque = deque()
        for item in itertools.islice(items, ahead):
            running.append((item, pool.submit(_local_chunk, spec, item[1], 1)))
        try:
            while running:
                (name, unit, ident), fut = running.popleft()
                table = fut.result()
                nxt = next(items, None)
                if nxt is not None:
                    running.append((nxt, pool.submit(_local_chunk, spec, nxt[1], 1)))
                yield name, unit, ident, table
        finally:
            for _, fut in running:
                fut.cancel()


#: Chunk threads of an in-process sweep on the order parameters beyond numba's thread count: a chunk's Python work
#: between its kernels holds the GIL, and one more chunk fills those gaps (``liu2019 --trials 1000000``, warm cache,
#: 2 cores: the sweep used 1.95 cores instead of 1.85).
EXTRA_CHUNK_THREADS = 1
#: Computed chunks such a sweep may hold beyond its chunk threads while the writer waits for an earlier chunk, so a
#: chunk that waits (for the warmup child's flow engine: :mod:`sims.runs.warmup`) holds up no other.
CHUNKS_AHEAD = 2


def chunk_threads(spec: SweepSpec) -> int:
    """Chunks an in-process sweep computes at once: for a sweep on the order parameters (``SweepSpec.vectors``
    False, whose chunks are small) numba's thread count plus :data:`EXTRA_CHUNK_THREADS`, each chunk on one engine
    thread; else 1 (a chunk's engine then uses the threads).  Also 1 under numba's ``workqueue`` threading layer,
    which must not run parallel kernels from two threads at once (``omp`` and ``tbb`` may)."""
    if spec.vectors or numba_threads() <= 1:
        return 1
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return 1
    return numba_threads() + EXTRA_CHUNK_THREADS if layer in ("omp", "tbb") else 1


def chunks_in_flight(spec: SweepSpec) -> int:
    """Chunks an in-process sweep holds at once (what :func:`check_memory` counts): its :func:`chunk_threads` and,
    where that is more than one, up to :data:`CHUNKS_AHEAD` computed chunks waiting for the writer."""
    threads = chunk_threads(spec)
    return threads + CHUNKS_AHEAD if threads > 1 else 1


def _compute(spec: SweepSpec, todo, client, local_cluster: bool):
    """Yield ``(name, unit, identity, data)`` for every chunk to compute, in-process (``data``: a function giving
    the chunk's Arrow table, :func:`run_table` of the chunk's result) or on Dask (its Parquet bytes,
    :func:`run_chunk`; in the order they finish).  A worker that dies is replaced and its chunk rescheduled by
    Dask."""
    if client is None:
        yield from _compute_local(spec, todo)
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
