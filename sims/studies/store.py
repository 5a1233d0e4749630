"""Persistence of a sweep directory: chunks that prove themselves, atomic writes, and one sweep per directory.

A sweep directory ``DIR`` holds::

    config.json          the resolved configuration and its fingerprint (written once)
    manifest.jsonl       one line per finished chunk: file name, rows, size, SHA-256, fingerprint
    chunks/*.parquet     one Parquet file per chunk, carrying the same identity in its key-value metadata
    .shallowres.lock     the lock held by the sweep writing into DIR (``.shallowres.lock.json``: who holds it)

Why a manifest: a chunk file is written atomically (temporary file, fsync, rename), so a crash never leaves half a
chunk under its final name; but a disk, a copy or a sync tool can still damage a finished file.  The manifest
records what each chunk must be, so a resumed sweep checks every chunk against it (:func:`verify_chunks`) and
recomputes the ones that fail, naming each and the reason.  The manifest is append-only (one ``fsync``\\ ed JSON line
per chunk, the last line for a chunk wins), so recording a chunk costs O(1) whatever the sweep's size; a line cut by
a crash is unreadable and its chunk is recomputed.

Chunks are written by :func:`table_bytes` from an Arrow table (:func:`parquet_options`: dictionary encoding for
text only, no statistics, which is several times faster than pandas' defaults); large outputs are written piece by
piece through :func:`atomic_file`, with the guarantees of :func:`atomic_write`.

Why a lock: two sweeps writing the same directory would both compute everything.  :func:`directory_lock` takes an
OS-level lock (``filelock``, ``flock`` on POSIX) that the kernel releases when its process dies, so a lock left by
a killed process never blocks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST = "manifest.jsonl"
LOCK = ".shallowres.lock"
LOCK_INFO = ".shallowres.lock.json"
#: Files of ours that may exist in a directory before any sweep output does.
HOUSEKEEPING = frozenset({LOCK, LOCK_INFO})
#: Key of the chunk identity in a chunk's Parquet key-value metadata.
META_KEY = b"shallowres.chunk"


class StoreError(ValueError):
    """A sweep directory cannot be used or written (one readable line)."""


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the whole new one.

    A failure (disk full, permission denied, ...) removes the temporary file and raises :class:`StoreError`
    naming the directory and the cause, so no partial file is ever left under any name.
    """
    with atomic_file(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, piece by piece, with the guarantees of :func:`atomic_write`: it is
    a temporary file beside ``path``, fsynced and renamed to ``path`` when the block ends, and removed if the block
    raises (an ``OSError`` becomes a :class:`StoreError` naming the directory and the cause).  For outputs too
    large to hold in memory, such as a large sweep's ``runs.parquet``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"cannot write to {str(path.parent)!r}: {_describe(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {path.name!r} to {str(path.parent)!r}: {_describe(exc)}") from None
        raise


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How chunks and the joined per-run table are written: Snappy, dictionary encoding for the text columns only
    (numbers gain nothing from it and it is the slowest part of the writer), no column statistics (nothing reads
    them)."""
    import pyarrow as pa

    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    return {"compression": "snappy", "use_dictionary": text, "write_statistics": False}


def table_bytes(table: pa.Table, identity: dict) -> bytes:
    """A chunk's per-run table (a ``pyarrow.Table``) as Parquet bytes, with ``identity`` (fingerprint, cell, chunk,
    runs) in its key-value metadata, so a file also says which sweep and which chunk it belongs to."""
    import pyarrow.parquet as pq

    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps(identity, sort_keys=True).encode()
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, **parquet_options(table.schema))
    return buf.getvalue()


@dataclass(frozen=True)
class ChunkRecord:
    """What a finished chunk must be: its manifest line."""

    name: str
    identity: dict
    rows: int
    size: int
    sha256: str

    def line(self) -> str:
        return json.dumps({"name": self.name, "identity": self.identity, "rows": self.rows, "size": self.size,
                           "sha256": self.sha256}, sort_keys=True)


def write_chunk(out: Path, name: str, data: bytes, identity: dict, rows: int) -> ChunkRecord:
    """Write one chunk atomically into ``out/chunks`` and append its record to the manifest (both fsynced)."""
    atomic_write(out / "chunks" / name, data)
    rec = ChunkRecord(name, identity, rows, len(data), hashlib.sha256(data).hexdigest())
    try:
        fd = os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (rec.line() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        # The chunk has no record, so a resume recomputes it: nothing unverified is ever trusted.
        raise StoreError(f"cannot write {MANIFEST!r} to {str(out)!r}: {_describe(exc)}") from None
    return rec


# ---------------------------------------------------------------------------------------------------------------
# Verifying


def read_manifest(out: Path) -> tuple[dict[str, ChunkRecord], list[int]]:
    """The manifest's records by chunk name (the last line for a name wins) and the numbers of unreadable lines."""
    records: dict[str, ChunkRecord] = {}
    bad: list[int] = []
    path = out / MANIFEST
    if not path.exists():
        return records, bad
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                d = json.loads(raw)
                rec = ChunkRecord(str(d["name"]), dict(d["identity"]), int(d["rows"]), int(d["size"]),
                                  str(d["sha256"]))
            except (ValueError, TypeError, KeyError, AttributeError):
                bad.append(number)
                continue
            records[rec.name] = rec
    return records, bad


def check_chunk(path: Path, expected: dict, record: ChunkRecord | None, columns: tuple[str, ...]) -> str | None:
    """Why the chunk file at ``path`` cannot be trusted, or ``None`` if it proves itself.

    It must exist, have a manifest record for exactly this chunk (``expected``: fingerprint, cell, chunk, first
    run, runs), match the record's size and SHA-256, and be a Parquet file whose metadata names this chunk and
    whose table has ``expected["runs"]`` rows and exactly ``columns``.
    """
    import pyarrow.parquet as pq

    exists = path.exists()
    if record is None:
        return "no manifest record" if exists else "missing"
    if not exists:
        return "missing file (the manifest records it)"
    if record.identity != expected:
        return "manifest record is for another configuration or chunk"
    data = path.read_bytes()
    if len(data) != record.size:
        return f"size {len(data)} bytes, manifest says {record.size}" + (" (truncated)" if len(data) < record.size
                                                                         else "")
    if hashlib.sha256(data).hexdigest() != record.sha256:
        return "checksum mismatch"
    try:
        meta = pq.read_metadata(io.BytesIO(data))
        identity = json.loads((meta.metadata or {}).get(META_KEY, b"null"))
    except Exception as exc:  # pyarrow raises several types for damaged files  # noqa: BLE001
        return f"not a readable Parquet file ({type(exc).__name__})"
    if identity != expected:
        return "belongs to another configuration or chunk"
    if meta.num_rows != expected["runs"] or meta.num_rows != record.rows:
        return f"{meta.num_rows} rows, expected {expected['runs']}"
    names = tuple(meta.schema.to_arrow_schema().names)
    if names != columns:
        return "wrong columns"
    return None


def verify_chunks(out: Path, expected: dict[str, dict], columns: tuple[str, ...] | dict[str, tuple[str, ...]]
                  ) -> tuple[list[str], dict[str, str], list[int]]:
    """Check every chunk of a sweep directory against the manifest (``columns``: of every chunk, or per chunk name).

    Returns the names that prove themselves, the damaged ones with the reason (files that exist, or that the
    manifest records, but cannot be trusted; chunks simply not computed yet are in neither), and the numbers of
    unreadable manifest lines.
    """
    records, bad_lines = read_manifest(out)
    good: list[str] = []
    damaged: dict[str, str] = {}
    for name, ident in expected.items():
        cols = columns[name] if isinstance(columns, dict) else columns
        reason = check_chunk(out / "chunks" / name, ident, records.get(name), cols)
        if reason is None:
            good.append(name)
        elif reason != "missing":
            damaged[name] = reason
    return good, damaged, bad_lines


def compact_manifest(out: Path, keep: list[str]) -> None:
    """Rewrite the manifest (atomically) with the records of the chunks in ``keep`` only: after damaged chunks
    and unreadable lines were reported, they are dropped rather than reported again on the next resume."""
    records, _ = read_manifest(out)
    atomic_write(out / MANIFEST, "".join(records[name].line() + "\n" for name in keep).encode())


def damage_report(damaged: dict[str, str], bad_lines: list[int], shown: int = 6) -> str | None:
    """One line naming the damaged chunks (and unreadable manifest lines) and why, or ``None``."""
    if not damaged and not bad_lines:
        return None
    items = [f"{name} ({why})" for name, why in damaged.items()]
    more = f", and {len(items) - shown} more" if len(items) > shown else ""
    parts = []
    if items:
        parts.append(f"{len(items)} damaged chunk{'s' if len(items) > 1 else ''} will be recomputed: "
                     f"{', '.join(items[:shown])}{more}")
    if bad_lines:
        parts.append(f"manifest line{'s' if len(bad_lines) > 1 else ''} {', '.join(map(str, bad_lines[:shown]))} "
                     "unreadable (ignored)")
    return "resume: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# One sweep per directory


def _holder(out: Path) -> str:
    try:
        info = json.loads((out / LOCK_INFO).read_text())
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{' '.join(str(a) for a in info['argv'])}")
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def directory_lock(out: Path, *, wait: float = 0.0, log=None) -> Iterator[None]:
    """Hold the lock of sweep directory ``out`` (created if needed) for the duration of the block.

    ``wait``: seconds to wait for another sweep to release it (``math.inf``: until it does; 0: not at all).  If it
    stays taken, raise :class:`StoreError` naming the holder (pid, host, start time, command line).  The lock is
    an OS lock, so a holder that was killed has released it.
    """
    from filelock import FileLock, Timeout

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create output directory {str(out)!r}: {_describe(exc)}") from None
    lock = FileLock(out / LOCK, timeout=-1, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(out)
        if wait <= 0:
            raise StoreError(f"output directory {str(out)!r} is in use by another sweep ({holder}); wait for it "
                             "(--wait) or use another --out") from None
        if log is not None:
            log(f"waiting for output directory {str(out)!r}, in use by {holder}")
        try:
            lock.acquire(timeout=-1 if wait == float("inf") else wait)
        except Timeout:
            raise StoreError(f"output directory {str(out)!r} is still in use after {wait:g} s by {_holder(out)}") \
                from None
    except OSError as exc:
        raise StoreError(f"cannot lock output directory {str(out)!r}: {_describe(exc)}") from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with contextlib.suppress(StoreError):  # who holds it is a courtesy to the next process, not a requirement
            atomic_write(out / LOCK_INFO, json.dumps(info).encode())
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_chunk(out: Path, name: str, columns: tuple[str, ...] | None = None,
               dictionary: tuple[str, ...] = ()) -> pa.Table:
    """A verified chunk file of ``out/chunks`` as a ``pyarrow.Table`` (only ``columns`` if given; the text columns
    in ``dictionary`` as dictionary arrays, which is how they are stored: no string is built per row)."""
    import pyarrow.parquet as pq

    return pq.read_table(out / "chunks" / name, columns=list(columns) if columns is not None else None,
                         read_dictionary=list(dictionary) or None)
