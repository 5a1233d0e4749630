"""Kill-and-resume scaffolding shared by the sweep tests: start a sweep (or table) command in a child process,
SIGKILL it once a few chunks are on disk, rerun the same command, and check that it resumed from those chunks."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from sims.studies import store


def finished_chunks(out: Path) -> list[Path]:
    """The chunk files of ``out`` that are finished: on disk with their manifest record (sorted).  A chunk is
    renamed into place before its record is appended and fsynced, so a kill between the two leaves a file without
    a record, which a resume rightly recomputes ("no manifest record"): not a finished chunk."""
    records, _ = store.read_manifest(out)
    return sorted(path for path in (out / "chunks" / name for name in records) if path.exists())


def kill_after_chunks(cmd: list[str], out: Path, *, chunks: int = 3, deadline: float = 120) -> list[Path]:
    """Run ``cmd`` (which writes its chunks to ``out / "chunks"``), SIGKILL it as soon as ``chunks`` chunks are
    finished (:func:`finished_chunks`), and return the finished chunks it left.  Fails if the command ends before
    it could be killed (the test's sweep must then be made longer)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = time.time() + deadline
    while time.time() < stop and proc.poll() is None:
        if len(finished_chunks(out)) >= chunks:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return finished_chunks(out)


def resume(cmd: list[str], done: list[Path], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """Rerun ``cmd`` after :func:`kill_after_chunks` left the chunks ``done``: it must succeed and say that it
    resumed them (or one more, finished while the kill landed)."""
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert resumed.returncode == 0, resumed.stderr
    n = len(done)
    assert f"({n} chunks resumed)" in resumed.stderr or f"({n + 1} chunks resumed)" in resumed.stderr, resumed.stderr
    return resumed
