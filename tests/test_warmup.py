"""The warmup child (:mod:`sims.runs.warmup`): it compiles engines into the numba cache beside the parent, the
parent waits for it and loads them, and a child that fails or dies never blocks or breaks the parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sims.runs import warmup

ROOT = Path(__file__).resolve().parents[1]

# A liu2019 cell on the order parameters (the lockstep engine): its simulate() arguments.
CELL = """dict(model="cnn", k=16, p=16, runs=300, steps=20000, seed=3, vectors=False,
            init=sims.Init(w="sphere", a="ball"), teacher=sims.Teacher(w="cap", a="gaussian", require_spurious=True),
            schedule=sims.Schedule.constant(0.0625, 0.9 * 4 * np.pi / (16 + 2 * np.pi - 2)))"""
FIELDS = ("steps", "final_loss", "final_phi", "outcome", "basin")
# The cell with the warmup child compiling the lockstep engine, its results and the engine's cache statistics.
PROBE = textwrap.dedent(f"""
    import json, sys
    import numpy as np
    import sims
    from sims.engines import reduced
    from sims.runs import warmup
    warm = warmup.start(["reduced"])
    res = sims.simulate(**{CELL})
    np.savez(sys.argv[1], **{{key: np.asarray(getattr(res, key)).astype(str) if key in ("outcome", "basin")
                             else getattr(res, key) for key in {FIELDS!r}}})
    stats = reduced.run_range.stats
    print(json.dumps({{"reported": warm.reported, "hits": sum(stats.cache_hits.values()),
                      "misses": sum(stats.cache_misses.values())}}))
    warmup.stop()
""")


@pytest.mark.slow
def test_the_parent_loads_the_childs_engine_and_gets_the_same_bits(tmp_path):
    """On a fresh cache with the child compiling the lockstep engine, the parent's pipeline waits for it and loads
    the engine from the cache (a cache hit, no miss: the child compiled the signature the pipeline uses).  Its
    results are bit-identical to this process's, which ran the cell without a child (one cold compile, not two:
    that a fresh cache without the child compiles is numba's own behaviour)."""
    import sims

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "child.npz"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out)], env=env, capture_output=True, text=True,
                          timeout=900, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["reported"] == {"reduced": "ready"}
    assert report["hits"] >= 1 and report["misses"] == 0, report
    res = sims.simulate(**eval(CELL, {"np": np, "sims": sims}))  # this process: no warmup child
    with np.load(out) as data:
        assert set(data.files) == set(FIELDS)
        for key in FIELDS:
            mine = np.asarray(getattr(res, key))
            np.testing.assert_array_equal(data[key], mine.astype(str) if key in ("outcome", "basin") else mine,
                                          err_msg=key)
        assert len(set(data["outcome"].tolist())) >= 2


def test_a_dead_child_never_blocks_the_parent():
    """A child killed before it reports anything: :meth:`Warmup.wait` returns False when its output ends (no wait
    for the limit), :func:`warmup.ready` returns, and the pipeline runs (compiling or loading by itself)."""
    import sims

    warm = warmup.start(["reduced", "flow"])
    assert warm is not None
    warm.process.kill()  # the child this test started, by its handle
    try:
        assert warm.wait("reduced") is False and warm.wait("flow") is False
        assert warm.process.wait(timeout=60) is not None and warm.reported == {}
        warmup.ready("reduced")
        res = sims.simulate(k=4, p=4, runs=20, steps=200, vectors=False, seed=1,
                            schedule=sims.Schedule.constant(0.25, 1.0))
        assert len(res) == 20
    finally:
        warmup.stop()
    assert warmup._ACTIVE is None


def test_a_failed_job_is_reported_and_the_rest_still_run(monkeypatch, capsys):
    """The child's loop: a job that raises is reported ``failed``, the next one still runs."""
    ran = []

    def boom():
        raise RuntimeError("no compiler")

    monkeypatch.setitem(warmup.JOBS, "reduced", boom)
    monkeypatch.setitem(warmup.JOBS, "flow", lambda: ran.append("flow"))
    assert warmup.main(["reduced", "flow"]) == 0
    assert capsys.readouterr().out.splitlines() == ["failed reduced", "ready flow"]
    assert ran == ["flow"]


def test_bad_jobs_and_the_switch(monkeypatch):
    with pytest.raises(ValueError, match=r"warmup jobs must be among \['flow', 'reduced'\]; got \['gd'\]"):
        warmup.Warmup(["gd"])
    monkeypatch.setenv("SHALLOWRES_WARMUP", "0")
    assert warmup.start(["reduced"]) is None and warmup.start_for_table("liu2019", 1000) is None
    monkeypatch.delenv("SHALLOWRES_WARMUP")
    assert warmup.start([]) is None and warmup.start_for_table("du2018", 10**6) is None
    assert warmup.table_jobs("liu2019", 1000) == ("reduced",)
    assert warmup.table_jobs("liu2019", warmup.FLOW_TRIALS) == ("reduced", "flow")
    assert warmup.table_jobs("liu2019-flow", 1) == ("flow",) and warmup.table_jobs("two-phase", 10**6) == ()
    assert {job for jobs in warmup.TABLE_JOBS.values() for job, _ in jobs} <= set(warmup.JOBS)
