"""Sweeps: spec parsing and validation, chunk-independence, resume after SIGKILL, Dask equality, summaries."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kill_resume import kill_after_chunks, resume

from sims.runs import classify
from sims.studies import sweep, tables

SMALL = """
[sweep]
name = "small"
trials = 40
seed = 3
chunk = 16

[base]
steps = 3000
n_record = 8
teacher = { w = "cap", a = "gaussian", require_spurious = true }

[grid]
k = [4, 8]
p = [3]

[methods.resnet]
model = "resnet"
schedule = { kind = "constant", eta_w_rel = 0.5, eta_a_rel = 0.9 }

[methods.cnn]
model = "cnn"
init = { w = "sphere", a = "ball" }
schedule = { kind = "two-stage", T1 = 50, eta_w1_rel = 0.01, eta_a1_rel = 0.9, eta_w2_rel = 0.5, eta_a2_rel = 0.9 }
"""


def small_spec(**overrides) -> sweep.SweepSpec:
    import tomllib

    return sweep.build_spec(tomllib.loads(SMALL), overrides=overrides)


def test_grid_expands_methods_times_grid_and_keeps_labels():
    spec = small_spec()
    assert [c.method for c in spec.cells] == ["resnet", "resnet", "cnn", "cnn"]
    assert [c.params["k"] for c in spec.cells] == [4, 8, 4, 8]
    # 40 trials in chunks of 16: 16 + 16 + 8 runs per cell.
    assert [c[3] for c in spec.chunks() if c[0] == 0] == [16, 16, 8]


def test_overrides_change_single_fields_and_the_fingerprint():
    base, other = small_spec(), small_spec(steps=500, **{"teacher.require_spurious": False})
    assert all(c.params["steps"] == 500 for c in other.cells)
    assert all(c.params["teacher"] == {"w": "cap", "a": "gaussian", "require_spurious": False} for c in other.cells)
    # An override that does not fit a method's schedule kind is an error naming the method and the valid keys.
    with pytest.raises(sweep.SweepError, match=r"unknown key 'eta_a_rel' in cell 2 \(method 'cnn'\)"):
        small_spec(**{"schedule.eta_a_rel": 0.5})
    assert base.fingerprint() != other.fingerprint()
    assert small_spec().fingerprint() == base.fingerprint()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[sweep]\nnmae = 'x'\n", "unknown key 'nmae' in [sweep]; valid keys: chunk, description, name, seed, trials"),
        ("[base]\nmodle = 'cnn'\n", "unknown key 'modle' in [base]; valid keys:"),
        ("[base]\nk = 0\n", "k must be an integer in [1, 1000000]; got 0"),
        ("[sweep]\ntrials = -1\n", "sweep.trials must be an integer in [1, 1000000000]; got -1"),
        ("[base]\nmodel = 'vgg'\n", "model must be one of"),
        ("[base]\nschedule = { kind = 'cosine' }\n", "schedule.kind must be one of"),
        ("[base]\nschedule = { kind = 'constant', eta_w = 1.0, eta_a = 5.0 }\n", "stability limit"),
        ("[base]\nschedule = { kind = 'constant', eta_w = -1.0, eta_a = 0.1 }\n", "eta_w must be a finite number >= 0"),
        ("[base]\nteacher = { w = 'cube' }\n", "teacher.w must be one of"),
        ("[base]\nteacher = { colour = 1 }\n",
         "unknown key 'colour' in cell 0 (method 'default'): teacher; valid keys: a, a_value, angle, fixed_seed"),
        ("[grid]\nfoo = [1, 2]\n", "unknown key 'foo' in a field name"),
        ("[grid]\nk = []\n", "grid.k must be a non-empty list"),
        ("[base]\nmodel = 'cnn'\ninit = { w = 'zero' }\n", "init.w = 'zero' is not allowed"),
        ("[base]\nsteps = 10\nschedule = { kind = 'two-stage', T1 = 50, eta_w1 = 0.0, eta_a1 = 0.1, "
         "eta_w2 = 0.1, eta_a2 = 0.1 }\n", "T1 must be <= steps"),
    ],
)
def test_bad_configs_name_the_field_and_range(text, needle):
    import tomllib

    with pytest.raises(sweep.SweepError) as err:
        sweep.build_spec(tomllib.loads(text))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_results_do_not_depend_on_chunking(tmp_path):
    a = sweep.run_sweep(small_spec(chunk=16), tmp_path / "a", quiet=True)
    b = sweep.run_sweep(small_spec(chunk=7), tmp_path / "b", quiet=True)
    pd.testing.assert_frame_equal(a.runs, b.runs)
    # The summary has the columns users' scripts read.
    for col in sweep.SUMMARY_COLUMNS:
        assert col in a.summary.columns
    on_disk = pd.read_csv(tmp_path / "a" / "summary.csv")
    assert list(on_disk["method"]) == ["resnet", "resnet", "cnn", "cnn"]  # in the order of the spec
    assert (on_disk["trials"] == 40).all()
    assert ((on_disk["p_global_lo"] <= on_disk["p_global"]) & (on_disk["p_global"] <= on_disk["p_global_hi"])).all()
    meta = (tmp_path / "a" / "metadata.json").read_text()
    assert '"seed": 3' in meta and '"numba"' in meta


def test_rerun_resumes_without_recomputing(tmp_path):
    spec = small_spec()
    first = sweep.run_sweep(spec, tmp_path, quiet=True)
    assert first.computed_chunks == len(spec.chunks())
    os.unlink(tmp_path / "chunks" / "cell0002-chunk00001.parquet")
    again = sweep.run_sweep(spec, tmp_path, quiet=True)
    assert again.computed_chunks == 1 and again.resumed_chunks == len(spec.chunks()) - 1
    pd.testing.assert_frame_equal(first.runs, again.runs)


def test_another_configuration_in_the_same_directory_is_refused(tmp_path):
    sweep.run_sweep(small_spec(), tmp_path, quiet=True)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(sweep.SweepError, match="holds a different configuration"):
        sweep.run_sweep(small_spec(steps=100), tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_wilson_interval_matches_the_textbook_values():
    # Wilson (1927) 95% interval for 0/10 is [0, 0.2775]; for 10/10 [0.7225, 1]; for 50/100 [0.4038, 0.5962].
    lo, hi = classify.wilson(np.array([0, 10, 50]), np.array([10, 10, 100]))
    np.testing.assert_allclose(lo, [0.0, 0.72246, 0.40383], atol=1e-5)
    np.testing.assert_allclose(hi, [0.27754, 1.0, 0.59617], atol=1e-5)


@pytest.mark.slow
def test_dask_local_cluster_gives_bit_identical_results(tmp_path):
    spec = small_spec()
    local = sweep.run_sweep(spec, tmp_path / "local", quiet=True)
    dask = sweep.run_sweep(spec, tmp_path / "dask", workers=2, quiet=True)
    pd.testing.assert_frame_equal(local.runs, dask.runs)
    pd.testing.assert_frame_equal(local.summary, dask.summary)


KILL_CONFIG = """
[sweep]
name = "killme"
trials = 600
seed = 11
chunk = 20

[base]
model = "cnn"
k = 16
p = 16
steps = 40000
n_record = 8
init = { w = "sphere", a = "ball" }
teacher = { w = "sphere", a = "gaussian" }
schedule = { kind = "constant", eta_w_rel = 0.5, eta_a_rel = 0.9 }
# never stop early, so every chunk costs the same and the sweep takes several seconds
tolerances = { loss_tol = 0.0, grad_tol = 0.0, stop_trapped = false, divergence = 1e300 }
"""


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tmp_path):
    cfg = tmp_path / "kill.toml"
    cfg.write_text(KILL_CONFIG)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sims.cli", "sweep", str(cfg), "--out", str(out), "--quiet", "--format", "csv"]
    done = kill_after_chunks(cmd, out)
    assert 3 <= len(done) < 30 and not (out / "summary.csv").exists()
    for f in done:  # atomic writes: every chunk file on disk is complete
        assert len(pd.read_parquet(f)) == 20
    resume(cmd, done)
    import tomllib

    clean = sweep.run_sweep(sweep.build_spec(tomllib.loads(KILL_CONFIG)), tmp_path / "clean", quiet=True)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "runs.parquet"), clean.runs)


@pytest.mark.slow
def test_liu2019_at_reduced_size_shows_the_papers_ordering(tmp_path):
    """ResNet + prescribed warmup never fails; CNN success strictly between 0 and 1; ResNet without warmup in
    between (per cell), at 300 trials per cell on the default grid."""
    spec = tables.spec("liu2019", trials=300)
    s = sweep.run_sweep(spec, tmp_path, quiet=True).summary.set_index(["method", "k", "p"])
    for k in (4, 16, 64):
        for p in (4, 16, 64):
            presc = s.loc[("resnet-prescribed-warmup", k, p)]
            nowarm = s.loc[("resnet-no-warmup", k, p)]
            cnn = s.loc[("cnn-no-warmup", k, p)]
            assert presc["p_global"] == 1.0 and presc["trials"] == 300
            assert 0.0 < cnn["p_global"] < 1.0 and cnn["p_global_hi"] < 1.0 and cnn["p_global_lo"] > 0.0
            assert cnn["p_global"] < nowarm["p_global"] < 1.0
            assert cnn["p_spurious"] > 0.0
    text, figs = tables.make("liu2019", spec, sweep.SweepOutcome(tmp_path, pd.read_parquet(tmp_path / "runs.parquet"),
                                                                pd.read_csv(tmp_path / "summary.csv"), 0, 0, 0.0))
    assert "resnet-prescribed-warmup" in text and "100.0 [98.7, 100.0]" in text
    assert all(Path(f).stat().st_size > 1000 for f in figs)
