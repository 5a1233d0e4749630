"""The methods' tables ``distill``, ``laperm`` and ``expand`` run as sweeps (sims/studies/configs/*.toml): the same
numbers as the comparison functions they replace (same seeds, same runs, paired the same way), the findings the
README reports at reduced size, and the sweep machinery: chunks, resume after SIGKILL, the fingerprint guard."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from kill_resume import kill_after_chunks, resume

from sims.methods import distill, expansion, laperm
from sims.studies import sweep, tables


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sims.cli", "table", *args], capture_output=True, text=True,
                          timeout=timeout)


def table_rows(name: str, tmp_path, **overrides) -> tuple[pd.DataFrame, str]:
    spec = tables.spec(name, **overrides)
    outcome = sweep.run_sweep(spec, tmp_path / name, quiet=True)
    text, _ = tables.make(name, spec, outcome, "csv")
    return pd.read_parquet(tmp_path / name / "summary.parquet"), text


def assert_same_numbers(rows: pd.DataFrame, ref: pd.DataFrame, skip: tuple[str, ...] = ()) -> None:
    """Every column the comparison function reports, row for row, exactly: the sweep runs the same simulations
    (same seed, same run numbers, same step sizes to the last bit), so even medians and Wilson bounds agree."""
    assert len(rows) == len(ref)
    cols = [c for c in ref.columns if c not in skip]
    assert set(cols) <= set(rows.columns), set(cols) - set(rows.columns)
    for c in cols:
        a, b = rows[c].reset_index(drop=True), ref[c].reset_index(drop=True)
        if b.dtype.kind == "f":
            np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float), err_msg=c)
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), c


def test_distill_sweep_equals_the_comparison_function(tmp_path):
    rows, text = table_rows("distill", tmp_path, trials=8, steps=2000)
    ref = distill.compare(trials=8, steps=2000, seed=0)
    # fade/fade_steps name the fade, which the method label (fade-linear-T500) already says.
    assert_same_numbers(rows, ref, skip=("fade", "fade_steps"))
    assert text.splitlines()[0] == ("method,k,p,trials,P(global) %,p_spurious,p_same_outcome_as_resnet,"
                                    "steps_to_tol_median,fade_end_loss_rel_median")


def test_laperm_sweep_equals_the_comparison_function(tmp_path):
    rows, text = table_rows("laperm", tmp_path, trials=8, steps=500)
    ref = laperm.compare(trials=8, steps=500, seed=0)
    assert_same_numbers(rows, ref)
    assert text.splitlines()[0] == ("method,k,p,trials,P(global) %,p_spurious,p_perm_optimal,final_loss_rel_median,"
                                    "oracle_loss_rel_median")


@pytest.mark.slow
def test_expand_sweep_equals_the_comparison_function(tmp_path):
    rows, text = table_rows("expand", tmp_path, trials=4, steps=300)
    ref = expansion.compare(k=8, p=8, trials=4, seed=0, steps=300, step_rule="matched", timing_runs=1, timing_steps=1,
                            timing_repeats=1)
    # eta_w, eta_a included: the matched step rule gives the comparison's step sizes to the last bit.
    assert_same_numbers(rows, ref, skip=("seconds_per_step",))
    assert len(rows) == 144 and "seconds_per_step" not in text


def test_distill_table_keeps_the_resnet_success_rate(tmp_path):
    out = tmp_path / "distill"
    res = cli("distill", "--trials", "60", "--chunk", "25", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    s = pd.read_csv(out / "summary.csv")
    assert {"method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious"} <= set(s)
    for _cell, g in s.groupby(["k", "p"]):
        g = g.set_index("method")
        fades = g[g.index.str.startswith("fade-")]
        assert len(fades) == 4
        # Paired runs (same teachers and inits): the fades end where the ResNet ends, run by run.
        assert (fades["p_global"] == g.loc["resnet", "p_global"]).all()
        assert (fades["p_same_outcome_as_resnet"] == 1.0).all()
        assert g.loc["cnn", "p_global"] < g.loc["resnet", "p_global"]
    assert (out / "success_rates.png").stat().st_size > 1000
    assert len(list((out / "chunks").glob("*.parquet"))) == 12 * 3  # 60 runs in chunks of 25, 12 cells


def test_laperm_table_never_reaches_the_global_minimum(tmp_path):
    out = tmp_path / "laperm"
    res = cli("laperm", "--trials", "40", "--set", "steps=2000", "--out", str(out), "--quiet", "--format", "csv")
    assert res.returncode == 0, res.stderr
    s = pd.read_csv(out / "summary.csv")
    lap = s[s["method"].str.startswith("laperm-")]
    gd = s[s["method"].str.startswith("gd-")]
    # A permutation keeps 1.a and ||a||, so the teacher's a* is out of reach: P(global) = 0 for LaPerm,
    # while plain GD from the same initial values reaches it in a constant fraction of runs.
    assert (lap["p_global"] == 0.0).all() and len(lap) == 12
    assert ((gd["p_global"] > 0.2) & (gd["p_global"] < 1.0)).all()
    k100 = lap[lap["method"].str.contains("K100")]
    k1 = lap[lap["method"].str.contains("K1-")]
    assert k100["p_perm_optimal"].mean() > k1["p_perm_optimal"].mean()


@pytest.mark.slow
def test_expand_table_depth_one_is_the_unexpanded_network(tmp_path):
    out = tmp_path / "expand"
    res = cli("expand", "--trials", "20", "--set", "steps=3000", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    s = pd.read_csv(out / "summary.csv")
    assert set(s["depth"]) == {1, 2, 3, 4} and set(s["rate"]) == {1, 2, 4} and set(s["target"]) == {"w", "a", "both"}
    assert set(s["method"]) == {"resnet-no-warmup", "resnet-warmup", "cnn-no-warmup", "cnn-warmup"}
    # Depth 1 is the unexpanded network: identical numbers whatever the target and rate, and the same as
    # sims.simulate without an expansion (tested bit for bit in test_expansion.py).
    for _method, g in s[s["depth"] == 1].groupby("method"):
        assert g["p_global"].nunique() == 1 and g["steps_to_tol_median"].nunique() == 1
    bad = cli("expand", "--set", "engine.step_rule=fast", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "engine.step_rule must be one of same, matched; got 'fast'" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_a_table_refuses_another_configuration_in_its_directory(tmp_path):
    out = tmp_path / "laperm"
    assert cli("laperm", "--trials", "4", "--set", "steps=100", "--out", str(out), "--quiet").returncode == 0
    before = sorted(p.name for p in out.rglob("*"))
    again = cli("laperm", "--trials", "4", "--set", "steps=100", "--out", str(out), "--quiet")
    assert again.returncode == 0 and "(16 chunks resumed)" in again.stderr
    bad = cli("laperm", "--trials", "5", "--set", "steps=100", "--out", str(out), "--quiet")
    assert bad.returncode == 2 and "holds a different configuration" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.slow
def test_a_table_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """``shallowres table distill`` killed by SIGKILL after a few chunks, then rerun: the finished chunks are
    kept and the result equals an uninterrupted run (the approach of test_sweep's sweep test)."""
    # No early stop: every run takes its 5000 steps, so the table takes long enough to be killed mid-way.
    args = ["distill", "--trials", "240", "--chunk", "20", "--quiet", "--format", "csv", "--set",
            "tolerances={loss_tol = 0.0, grad_tol = 0.0, stop_trapped = false}"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sims.cli", "table", *args, "--out", str(out)]
    done = kill_after_chunks(cmd, out, deadline=300)
    assert 3 <= len(done) < 144 and not (out / "summary.csv").exists()
    resume(cmd, done, timeout=600)
    # The same table uninterrupted, in one chunk per cell (results do not depend on the chunking).
    clean = tmp_path / "clean"
    assert cli(*args, "--chunk", "240", "--out", str(clean)).returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "runs.parquet"), pd.read_parquet(clean / "runs.parquet"))
    assert (out / "table.csv").read_text() == (clean / "table.csv").read_text()


@pytest.mark.slow
def test_a_table_on_a_dask_cluster_equals_the_in_process_run(tmp_path):
    """The engines' extras reach the run table from Dask workers too (the workers register the engines when they
    import sims)."""
    spec = tables.spec("laperm", trials=6, steps=200, chunk=4)
    local = sweep.run_sweep(spec, tmp_path / "local", quiet=True)
    dask = sweep.run_sweep(spec, tmp_path / "dask", workers=2, quiet=True)
    pd.testing.assert_frame_equal(local.runs, dask.runs)
    assert local.runs["perm_optimal"].notna().sum() == 12 * 6  # the 12 LaPerm cells; the 4 plain-GD cells have none


def test_the_scaling_table_is_gd_and_flow_to_a_million_without_vectors():
    """``scaling``: three methods by GD and by gradient flow for k up to 10^6 (the flow by RODAS4 from k = 962 on),
    p up to 10^6, every cell on the order parameters alone (so its memory does not grow with k or p)."""
    spec = tables.spec("scaling")
    cells = [(c.method, c.params["k"], c.params["p"], c.params["algorithm"]) for c in spec.cells]
    assert spec.vectors is False and len(cells) == len(set(cells)) == 108
    assert {m for m, *_ in cells} == {"resnet-no-warmup", "resnet-prescribed-warmup", "cnn"}
    assert max(k for _, k, _, a in cells if a == "gd") == 10**6 and max(p for _, _, p, _ in cells) == 10**6
    assert max(k for _, k, _, a in cells if a == "flow") == 10**6
    assert sweep.check_memory(spec) < 2**30  # 200 runs at k = p = 10^6: no vectors


def test_the_scaling_table_renders_gd_and_flow_side_by_side(tmp_path):
    spec = tables.spec("scaling", trials=4, k=10, steps=20_000)  # every cell at k = 10: the table's shape, quickly
    outcome = sweep.run_sweep(spec, tmp_path / "s", quiet=True)
    text, figs = tables.make("scaling", spec, outcome)
    header = text.splitlines()[2]
    for method in ("resnet-no-warmup", "resnet-prescribed-warmup", "cnn"):
        assert f"{method} (gd)" in header and f"{method} (flow)" in header
    assert sorted(f.name for f in figs) == ["scaling.pdf", "scaling.png"]
    assert set(outcome.summary["algorithm"]) == {"gd", "flow"}


def test_liu2019_flow_is_liu2019_by_gradient_flow_on_the_same_teachers(tmp_path):
    """``liu2019-flow``: the liu2019 sweep with algorithm = "flow" in every cell (its own name and directory), the
    same seed and so the same teachers and starts; the flow's outcome is GD's on almost every run (they differ
    only near a basin boundary) and the prescribed warmup never fails."""
    flow, gd = tables.spec("liu2019-flow", trials=40), tables.spec("liu2019", trials=40)
    assert flow.name == "liu2019-flow" and flow.seed == gd.seed and len(flow.cells) == len(gd.cells) == 45
    assert {c.params["algorithm"] for c in flow.cells} == {"flow"} and flow.fingerprint() != gd.fingerprint()
    a = sweep.run_sweep(flow, tmp_path / "f", quiet=True)
    text, _ = tables.make("liu2019-flow", flow, a)
    assert "gradient flow" in text.splitlines()[0]
    pres = a.summary[a.summary["method"] == "resnet-prescribed-warmup"]
    assert (pres["p_global"] == 1.0).all()
