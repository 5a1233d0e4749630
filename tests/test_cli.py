"""The command line, run as a user would (subprocess): bad input is one line on stderr, exit code 2, and leaves
no output behind; good input writes the sweep directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SWEEP = """
[sweep]
name = "cli"
trials = 12
seed = 1
chunk = 6

[base]
k = 4
p = 4
steps = 2000
schedule = { kind = "constant", eta_w_rel = 0.5, eta_a_rel = 0.9 }
"""


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sims.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # one readable line, no traceback
    for needle in needles:
        assert needle in lines[0]


def test_missing_config(tmp_path):
    res = cli("sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out"))
    assert_user_error(res, "nope.toml", "does not exist")
    assert not (tmp_path / "out").exists()


def test_malformed_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[sweep\ntrials = 3\n")
    res = cli("sweep", str(cfg), "--out", str(tmp_path / "out"))
    assert_user_error(res, "is not valid TOML")
    assert not (tmp_path / "out").exists()


def test_unknown_key_lists_the_valid_ones(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(SWEEP.replace("steps = 2000", "stpes = 2000"))
    res = cli("sweep", str(cfg), "--out", str(tmp_path / "out"))
    assert_user_error(res, "unknown key 'stpes' in [base]", "valid keys: algorithm, allow_unstable, batch_size")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "k=0"], "k must be an integer in [1, 1000000]; got 0"),
        (["--set", "schedule.eta_a_rel=3.0"], "exceeds the stability limit"),
        (["--trials", "0"], "--trials must be an integer in [1, 1000000000]; got 0"),
        (["--set", "nonsense"], "--set takes FIELD=VALUE"),
        (["--set", 'engine={kind="expansion", depth=0}'], "engine.depth must be an integer in [1, 64]; got 0"),
        (["--set", 'engine={kind="fade", steps=5000}'], "fade.steps = 5000 must be <= steps = 2000"),
    ],
)
def test_out_of_range_values_name_the_field(tmp_path, args, needle):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    res = cli("sweep", str(cfg), "--out", str(tmp_path / "out"), *args)
    assert_user_error(res, needle)
    assert not (tmp_path / "out").exists()


def test_unreachable_scheduler_fails_fast_without_outputs(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    res = cli("sweep", str(cfg), "--out", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9", timeout=120)
    assert_user_error(res, "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9' within 5 s")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_directory(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    # /proc refuses new files even for root, where permission bits would not.
    res = cli("sweep", str(cfg), "--out", "/proc/shallowres-test-out")
    assert_user_error(res, "is not writable")
    target = tmp_path / "afile"
    target.write_text("x")
    res = cli("sweep", str(cfg), "--out", str(target / "sub"))
    assert_user_error(res, "is a file, not a directory")


def test_run_resume_summarize_and_refuse_another_configuration(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    out = tmp_path / "out"
    res = cli("sweep", str(cfg), "--out", str(out), "--quiet", "--format", "csv")
    assert res.returncode == 0, res.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert {"method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious"} <= set(summary)
    assert summary["trials"].tolist() == [12]
    res2 = cli("sweep", str(cfg), "--out", str(out), "--quiet")
    assert res2.returncode == 0 and "(2 chunks resumed)" in res2.stderr
    before = sorted(p.name for p in out.rglob("*"))
    res3 = cli("sweep", str(cfg), "--out", str(out), "--set", "steps=100")
    assert_user_error(res3, "holds a different configuration")
    assert sorted(p.name for p in out.rglob("*")) == before
    res4 = cli("summarize", str(out), "--format", "csv")
    assert res4.returncode == 0 and res4.stdout.startswith("method,k,p,trials,p_global")
    assert_user_error(cli("summarize", str(tmp_path)), "holds no finished sweep")


def test_table_command_writes_table_and_figure(tmp_path):
    out = tmp_path / "liu"
    res = cli("table", "liu2019", "--trials", "20", "--set", "steps=3000", "--out", str(out), "--quiet",
              "--format", "latex")
    assert res.returncode == 0, res.stderr
    assert res.stdout.lstrip().startswith("% P(global minimum)") and r"\begin{tabular}" in res.stdout
    for name in ("summary.csv", "summary.parquet", "runs.parquet", "metadata.json", "success_rates.png",
                 "success_rates.pdf"):
        assert (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "summary.csv")) == 45


def test_landscape_command():
    res = cli("landscape", "--k", "4", "--p", "8", "--a-star", "1,-1,0.5,0.2")
    assert res.returncode == 0, res.stderr
    assert "spurious point exists" in res.stdout and "phi_s = 1.620828" in res.stdout
    assert_user_error(cli("landscape", "--k", "0"), "--k must be an integer in [1, 1000000]; got 0")
    assert_user_error(cli("landscape", "--k", "3", "--a-star", "1,2"), "--a-star must have k = 3 entries")
    assert Path(sys.executable).exists()
