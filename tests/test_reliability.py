"""Nothing lost, nothing killed: damaged chunks are found and recomputed, memory is checked before it is spent,
one sweep per directory, failed writes stop cleanly, and a dead Dask worker changes nothing."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from test_sweep import SMALL, small_spec

import sims
from sims import cli
from sims.runs import memory
from sims.runs.simulate import FRAME_COLUMNS
from sims.studies import store, sweep
from sims.studies.spec import chunk_name

VICTIM = "cell0001-chunk00001.parquet"  # cell 1 (k = 8), runs 16..31



@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """An uninterrupted sweep: the reference every damaged-and-resumed one must equal."""
    out = tmp_path_factory.mktemp("clean") / "sweep"
    sweep.run_sweep(small_spec(), out, quiet=True)
    return out


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """The same grid with another seed: its chunks are valid files of another configuration."""
    out = tmp_path_factory.mktemp("other") / "sweep"
    sweep.run_sweep(small_spec(seed=4), out, quiet=True)
    return out


def _manifest_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / store.MANIFEST).read_text().splitlines()]


def _rewrite_manifest(out: Path, lines: list[dict]) -> None:
    (out / store.MANIFEST).write_text("".join(json.dumps(x) + "\n" for x in lines))


def _truncate(out: Path, other: Path) -> None:
    path = out / "chunks" / VICTIM
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(out: Path, other: Path) -> None:
    path = out / "chunks" / VICTIM
    path.write_bytes(os.urandom(path.stat().st_size))  # same size: only the checksum can tell


def _empty(out: Path, other: Path) -> None:
    (out / "chunks" / VICTIM).write_bytes(b"")


def _wrong_schema(out: Path, other: Path) -> None:
    df = pd.read_parquet(out / "chunks" / VICTIM).rename(columns={"outcome": "result"})
    df.to_parquet(out / "chunks" / VICTIM, index=False)


def _wrong_rows(out: Path, other: Path) -> None:
    df = pd.read_parquet(out / "chunks" / VICTIM)
    df.iloc[:5].to_parquet(out / "chunks" / VICTIM, index=False)


def _from_other_configuration(out: Path, other: Path) -> None:
    shutil.copyfile(other / "chunks" / VICTIM, out / "chunks" / VICTIM)


def _record_without_file(out: Path, other: Path) -> None:
    os.unlink(out / "chunks" / VICTIM)


def _file_without_record(out: Path, other: Path) -> None:
    _rewrite_manifest(out, [x for x in _manifest_lines(out) if x["name"] != VICTIM])


def _forged_record(out: Path, other: Path) -> None:
    """Another configuration's chunk *and* a manifest record rewritten to match its bytes: only the identity stored
    inside the Parquet file can tell."""
    import hashlib

    _from_other_configuration(out, other)
    data = (out / "chunks" / VICTIM).read_bytes()
    lines = _manifest_lines(out)
    for x in lines:
        if x["name"] == VICTIM:
            x["size"], x["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    _rewrite_manifest(out, lines)


def _garbage_manifest_line(out: Path, other: Path) -> None:
    text = (out / store.MANIFEST).read_text().splitlines(keepends=True)
    victim = next(i for i, x in enumerate(text) if VICTIM in x)
    text[victim] = text[victim][: len(text[victim]) // 2] + "\n"  # a line cut in the middle
    (out / store.MANIFEST).write_text("".join(text))


DAMAGE = {
    "truncated": (_truncate, "truncated"),
    "garbage": (_garbage, "checksum mismatch"),
    "empty": (_empty, "size 0 bytes"),
    # A rewritten file: its size or (if by chance the same) its checksum differs from the record.
    "wrong-schema": (_wrong_schema, "manifest says|checksum mismatch"),
    "wrong-rows": (_wrong_rows, "manifest says|checksum mismatch"),
    "other-configuration": (_from_other_configuration, "manifest says|checksum mismatch"),
    "record-without-file": (_record_without_file, "missing file"),
    "file-without-record": (_file_without_record, "no manifest record"),
    "forged-record": (_forged_record, "belongs to another configuration"),
    "cut-manifest-line": (_garbage_manifest_line, "no manifest record"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_chunk_is_named_recomputed_and_the_result_equals_an_uninterrupted_run(case, clean, other, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(clean, out)
    damage, reason = DAMAGE[case]
    damage(out, other)
    lines: list[str] = []
    resumed = sweep.run_sweep(small_spec(), out, quiet=True, log=lines.append)
    assert list(resumed.damaged) == [VICTIM] and re.search(reason, resumed.damaged[VICTIM])
    assert len(lines) == 1 and lines[0].startswith("resume: 1 damaged chunk will be recomputed: " + VICTIM)
    assert re.search(reason, lines[0]) and "\n" not in lines[0]
    if case == "cut-manifest-line":
        assert "unreadable (ignored)" in lines[0]
    assert resumed.computed_chunks == 1 and resumed.resumed_chunks == len(small_spec().chunks()) - 1
    pd.testing.assert_frame_equal(resumed.runs, pd.read_parquet(clean / "runs.parquet"))
    # The repaired directory proves itself: a further resume finds nothing to redo.
    again = sweep.run_sweep(small_spec(), out, quiet=True, log=lines.append)
    assert again.computed_chunks == 0 and again.damaged == {} and len(lines) == 1


def test_every_chunk_carries_its_identity_and_the_manifest_its_checksum(clean):
    import hashlib

    import pyarrow.parquet as pq

    spec = small_spec()
    records, bad = store.read_manifest(clean)
    assert not bad and len(records) == len(spec.chunks())
    for cell, chunk, first, runs in spec.chunks():
        name = chunk_name(cell, chunk)
        data = (clean / "chunks" / name).read_bytes()
        rec = records[name]
        assert (rec.size, rec.sha256, rec.rows) == (len(data), hashlib.sha256(data).hexdigest(), runs)
        ident = json.loads(pq.read_metadata(io.BytesIO(data)).metadata[store.META_KEY])
        assert ident == rec.identity == {"fingerprint": spec.fingerprint(), "cell": cell, "chunk": chunk,
                                         "first_run": first, "runs": runs}
        assert store.check_chunk(clean / "chunks" / name, ident, rec, FRAME_COLUMNS) is None


def test_cli_resume_reports_damage_in_one_line_and_exits_0(clean, tmp_path, capsys):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "sweep"
    shutil.copytree(clean, out)
    _truncate(out, out)
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet", "--format", "csv"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"shallowres: resume: 1 damaged chunk will be recomputed: {VICTIM} (size ")
    assert "(11 chunks resumed)" in err[1]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "runs.parquet"), pd.read_parquet(clean / "runs.parquet"))


# ---------------------------------------------------------------------------------------------------------------
# Failed writes


def _fail_on_call(n: int, exc: OSError):
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(fd)

    return fsync


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_failed_chunk_write_stops_with_one_line_leaves_no_partial_chunk_and_resumes(code, clean, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "sweep"
    # fsync calls: the lock's holder note, config.json, then per chunk the file and its manifest line; fail in
    # the 4th chunk file.
    monkeypatch.setattr(store.os, "fsync", _fail_on_call(9, OSError(code, os.strerror(code))))
    with pytest.raises(sweep.SweepError) as err:
        sweep.run_sweep(small_spec(), out, quiet=True)
    msg = str(err.value)
    assert "\n" not in msg and str(out / "chunks") in msg and os.strerror(code) in msg
    assert errno.errorcode[code] in msg and "keeps its 3 finished chunks: rerun the same command" in msg
    monkeypatch.undo()
    assert not list(out.rglob("*.tmp")), "a partial chunk was left behind"
    assert len(list((out / "chunks").glob("*.parquet"))) == 3 and not (out / "summary.csv").exists()
    resumed = sweep.run_sweep(small_spec(), out, quiet=True)
    assert resumed.damaged == {} and resumed.resumed_chunks == 3
    pd.testing.assert_frame_equal(resumed.runs, pd.read_parquet(clean / "runs.parquet"))


def test_unwritable_directory_in_the_cli_is_exit_2_and_one_line(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(store.tempfile, "mkstemp", refuse)
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied (EACCES)" in err and str(out) in err
    assert not out.exists()  # nothing was written, so nothing is left


# ---------------------------------------------------------------------------------------------------------------
# Memory


def test_a_call_larger_than_the_machine_is_refused_before_it_allocates():
    """The call of the issue report (about 115 GB) was OOM-killed; now it is a ValueError naming sizes and remedy.
    It runs in a child whose address space is capped at 6 GB, so a regression fails with MemoryError instead of
    taking the test machine down."""
    code = textwrap.dedent("""
        import resource, sims
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        try:
            sims.simulate(model="resnet", k=4096, p=4096, runs=200000, steps=10,
                          schedule=sims.Schedule.constant(1e-3, 1e-3))
        except ValueError as exc:
            print(exc)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SHALLOWRES_MEMORY_LIMIT=""))
    assert proc.returncode == 0, proc.stderr[-2000:]
    msg = proc.stdout.strip()
    assert msg.startswith("simulate(k=4096, p=4096, runs=200000, n_record=64, algorithm='gd') needs about ")
    assert "GB of memory but only" in msg and "use fewer runs per call (about" in msg and "run a sweep" in msg


def test_the_estimate_bounds_the_measured_peak_memory():
    """simulate's peak resident memory (measured in a child) stays below the estimate used to refuse calls, and
    the estimate is not wildly pessimistic (within a factor 2.5)."""
    # The peak is reset after the warm-up (Linux: "5" > /proc/self/clear_refs resets VmHWM), so numba's compiling,
    # which on a cold cache peaks higher than the call itself, does not hide the call's own peak.
    code = textwrap.dedent("""
        import re, sys, sims
        def status(field):
            with open("/proc/self/status") as fh:
                return int(re.search(field + r":\\s+(\\d+) kB", fh.read()).group(1)) * 1024
        k, p, runs = map(int, sys.argv[1:4])
        kw = dict(model="resnet", k=k, p=p, steps=3, n_record=8, schedule=sims.Schedule.constant(1e-4, 1e-4))
        sims.simulate(runs=2, **kw)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = status("VmRSS")
        sims.simulate(runs=runs, **kw)
        print(status("VmHWM") - base)
        """)
    for k, p, runs in ((8, 2048, 10000), (1024, 64, 10000)):
        proc = subprocess.run([sys.executable, "-c", code, str(k), str(p), str(runs)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        measured = int(proc.stdout.strip())
        estimate = memory.simulate_bytes(k=k, p=p, runs=runs, steps=3, n_record=8)
        assert 0.4 * estimate < measured < estimate, (k, p, measured, estimate)


def test_memory_limit_is_honoured_and_the_suggested_run_count_fits(monkeypatch):
    kw = dict(model="resnet", k=64, p=64, steps=3, n_record=8, schedule=sims.Schedule.constant(1e-3, 1e-3))
    monkeypatch.setenv(memory.ENV_LIMIT, "20MB")
    with pytest.raises(ValueError, match=r"needs about .* but only 20 MB is available; use fewer runs per call "
                                         r"\(about (\d+) fit\)") as err:
        sims.simulate(runs=100000, **kw)
    fit = int(re.search(r"about (\d+) fit", str(err.value)).group(1))
    assert fit > 100
    assert len(sims.simulate(runs=fit, **kw)) == fit
    with pytest.raises(ValueError, match="needs about"):
        sims.simulate(runs=fit + 1, **kw)
    monkeypatch.setenv(memory.ENV_LIMIT, "lots")
    with pytest.raises(ValueError, match="SHALLOWRES_MEMORY_LIMIT must be a size"):
        sims.simulate(runs=1, **kw)


BIG = """
[sweep]
name = "big"
trials = 200000
chunk = 200000

[base]
model = "resnet"
k = 4096
p = 4096
steps = 10
# perturbed GD: the noise leaves the order parameters' subspace, so the cells need their vectors (a sweep without
# them needs no memory that grows with k and p)
schedule = { kind = "perturbed", eta_w = 0.001, eta_a = 0.001, noise = 0.01 }
"""


def test_cli_refuses_a_sweep_larger_than_the_machine_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "big.toml"
    cfg.write_text(BIG)
    out = tmp_path / "big"
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep 'big' needs about" in err and "use a smaller --chunk (about" in err
    assert not out.exists()
    # At a chunk size that fits, the same sweep passes the check (it is not run here).
    spec = sweep.build_spec(tomllib.loads(BIG), overrides={"chunk": 1000})
    assert sweep.check_memory(spec) < memory.available_bytes()
    # A per-run table too large for memory whatever the chunk: fewer trials is the remedy.
    huge = sweep.build_spec(tomllib.loads(BIG), overrides={"trials": 10**9, "chunk": 100, "k": 4, "p": 4})
    with pytest.raises(sweep.SweepError, match=r"use fewer --trials \(the per-run table alone needs"):
        sweep.check_memory(huge)


# ---------------------------------------------------------------------------------------------------------------
# One sweep per directory

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sims.studies import store
    with store.directory_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """)


def _holder(out: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_sweep_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(clean, tmp_path, capsys):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "sweep"
    holder = _holder(out, 600)
    try:
        assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by another sweep (pid " + str(holder.pid) + " on " in err
        assert "--wait" in err and not (out / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock is gone with its process (its lock file stays): the sweep runs at once.
    assert (out / store.LOCK).exists()
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet", "--format", "csv"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "runs.parquet"), pd.read_parquet(clean / "runs.parquet"))


def test_wait_waits_for_the_holder_then_runs(clean, tmp_path, capsys):
    out = tmp_path / "sweep"
    holder = _holder(out, 1.5)
    lines: list[str] = []
    try:
        res = sweep.run_sweep(small_spec(), out, quiet=True, wait=120.0, log=lines.append)
    finally:
        holder.wait()
    assert len(lines) == 1 and lines[0].startswith(f"waiting for output directory {str(out)!r}, in use by pid "
                                                   f"{holder.pid}")
    pd.testing.assert_frame_equal(res.runs, pd.read_parquet(clean / "runs.parquet"))
    with pytest.raises(SystemExit):
        cli.main(["sweep", "x.toml", "--wait", "-1"])
    assert "--wait takes a number of seconds >= 0; got '-1'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# A dead Dask worker

SLOW = """
[sweep]
name = "dask-kill"
trials = 240
seed = 5
chunk = 10

[base]
model = "cnn"
k = 16
p = 16
steps = 20000
n_record = 8
init = { w = "sphere", a = "ball" }
teacher = { w = "sphere", a = "gaussian" }
schedule = { kind = "constant", eta_w_rel = 0.5, eta_a_rel = 0.9 }
tolerances = { loss_tol = 0.0, grad_tol = 0.0, stop_trapped = false, divergence = 1e300 }
"""


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_is_replaced_and_the_result_is_unchanged(tmp_path):
    from dask.distributed import Client, LocalCluster

    spec = sweep.build_spec(tomllib.loads(SLOW))
    reference = sweep.run_sweep(spec, tmp_path / "local", quiet=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        before = client.run(os.getpid)
        killed: list[int] = []

        def kill_one_busy_worker(cell: int) -> None:
            if killed:
                return
            busy = [addr for addr, tasks in client.processing().items() if tasks and addr in before]
            assert busy, "no worker is computing a chunk; make the chunks longer"
            killed.append(before[busy[0]])
            os.kill(before[busy[0]], signal.SIGKILL)

        res = sweep.run_sweep(spec, tmp_path / "dask", scheduler=cluster.scheduler_address, quiet=True,
                              on_chunk=kill_one_busy_worker)
        assert killed
        client.wait_for_workers(2, timeout=60)
        after = set(client.run(os.getpid).values())
        assert killed[0] not in after  # the nanny replaced the dead worker
    assert res.computed_chunks == len(spec.chunks())
    pd.testing.assert_frame_equal(res.runs, reference.runs)
    pd.testing.assert_frame_equal(res.summary, reference.summary)

