"""The one-shot tables ``distill`` and ``laperm`` through the CLI at reduced size."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sims.cli", *args], capture_output=True, text=True, timeout=600)


def test_distill_table_keeps_the_resnet_success_rate(tmp_path):
    out = tmp_path / "distill"
    res = cli("table", "distill", "--trials", "60", "--out", str(out), "--quiet")
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
    # Same command again: same configuration, recomputed in place; another configuration is refused.
    assert cli("table", "distill", "--trials", "60", "--out", str(out), "--quiet").returncode == 0
    bad = cli("table", "distill", "--trials", "61", "--out", str(out), "--quiet")
    assert bad.returncode == 2 and "holds a different configuration" in bad.stderr
    bad = cli("table", "distill", "--workers", "2", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--workers does not apply to table distill" in bad.stderr


def test_laperm_table_never_reaches_the_global_minimum(tmp_path):
    out = tmp_path / "laperm"
    res = cli("table", "laperm", "--trials", "40", "--set", "steps=2000", "--out", str(out), "--quiet",
              "--format", "csv")
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


def test_expand_table_depth_one_is_the_unexpanded_network(tmp_path):
    out = tmp_path / "expand"
    res = cli("table", "expand", "--trials", "20", "--set", "steps=3000", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    s = pd.read_csv(out / "summary.csv")
    assert set(s["depth"]) == {1, 2, 3, 4} and set(s["rate"]) == {1, 2, 4} and set(s["target"]) == {"w", "a", "both"}
    assert set(s["method"]) == {"resnet-no-warmup", "resnet-warmup", "cnn-no-warmup", "cnn-warmup"}
    # Depth 1 is the unexpanded network: identical numbers whatever the target and rate, and the same as
    # sims.runs.simulate without an expansion (tested bit for bit in test_expansion.py).
    for _method, g in s[s["depth"] == 1].groupby("method"):
        assert g["p_global"].nunique() == 1 and g["steps_to_tol_median"].nunique() == 1
    assert s["seconds_per_step"].notna().all()  # measured, not judged: tests never time things
    bad = cli("table", "expand", "--set", "step_rule=fast", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "step_rule must be 'same' or 'matched'" in bad.stderr
