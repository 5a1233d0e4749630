"""Kill-and-resume scaffolding shared by the sweep tests: start a sweep (or table) command in a child process,
SIGKILL it once a few chunks are on disk, rerun the same command, and check that it resumed from those chunks."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def kill_after_chunks(cmd: list[str], out: Path, *, chunks: int = 3, deadline: float = 120) -> list[Path]:
    """Run ``cmd`` (which writes its chunks to ``out / "chunks"``), SIGKILL it as soon as ``chunks`` chunk files
    exist, and return the chunk files it left (sorted).  Fails if the command ends before it could be killed (the
    test's sweep must then be made longer)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    where = out / "chunks"
    stop = time.time() + deadline
    while time.time() < stop and proc.poll() is None:
        if where.exists() and len(list(where.glob("*.parquet"))) >= chunks:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return sorted(where.glob("*.parquet"))


def resume(cmd: list[str], done: list[Path], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """Rerun ``cmd`` after :func:`kill_after_chunks` left the chunks ``done``: it must succeed and say that it
    resumed them (or one more, finished while the kill landed)."""
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert resumed.returncode == 0, resumed.stderr
    n = len(done)
    assert f"({n} chunks resumed)" in resumed.stderr or f"({n + 1} chunks resumed)" in resumed.stderr, resumed.stderr
    return resumed
