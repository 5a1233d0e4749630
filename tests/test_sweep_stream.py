"""Large sweeps: the summary streamed from the chunks, ``--no-runs``, chunks written from Arrow, automatic large
chunks, and the memory they need."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pytest
from kill_resume import kill_after_chunks, resume

from sims import cli
from sims.runs.simulate import FRAME_COLUMNS
from sims.studies import per_run, store, summary, sweep, tables
from sims.studies.spec import simulate_cell

STREAM = """
[sweep]
name = "stream"
trials = 30
seed = 5
chunk = 8

[base]
steps = 2000
n_record = 8
teacher = { w = "cap", a = "gaussian", require_spurious = true }

[grid]
k = [4, 8]
"schedule.eta_w_rel" = [0.25, 0.5]

[methods.resnet]
model = "resnet"
schedule = { kind = "constant", eta_w_rel = 0.5, eta_a_rel = 0.9 }

[methods.cnn]
model = "cnn"
init = { w = "sphere", a = "ball" }
schedule = { kind = "constant", eta_w_rel = 0.5, eta_a_rel = 0.9 }
"""


def stream_spec(**overrides) -> sweep.SweepSpec:
    return sweep.build_spec(tomllib.loads(STREAM), overrides=overrides)


def test_streamed_summary_equals_the_in_memory_summary(tmp_path):
    spec = stream_spec()
    outcome = sweep.run_sweep(spec, tmp_path, quiet=True)
    by_pandas = summary._collect_frames(tmp_path, spec)  # the per-run table as it was joined before streaming
    pd.testing.assert_frame_equal(sweep.collect(tmp_path, spec), by_pandas, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs.parquet"), by_pandas, check_exact=True)
    in_memory = sweep.summarize_runs(by_pandas, spec)
    pd.testing.assert_frame_equal(outcome.summary, in_memory, check_exact=True)
    pd.testing.assert_frame_equal(sweep.summarize_chunks(tmp_path, spec), in_memory, check_exact=True)
    for threads in (2, 3, 16):  # cells side by side: the same rows in the same order
        pd.testing.assert_frame_equal(sweep.summarize_chunks(tmp_path, spec, threads), in_memory, check_exact=True)
    assert (tmp_path / "summary.csv").read_text() == in_memory.to_csv(index=False)
    assert list(outcome.summary["schedule.eta_w_rel"]) == [0.25, 0.5] * 4  # a float grid column stays a float
    assert outcome.summary["trials"].eq(30).all() and outcome.summary["linear_runs"].gt(0).any()


@pytest.mark.parametrize("engine", [None, {"kind": "fade", "steps": 50}, {"kind": "laperm", "K": 5}])
def test_the_chunk_built_from_arrays_equals_the_one_built_from_a_frame(engine):
    """run_chunk builds its Arrow table from the result's arrays: same names, types and values as the pandas
    frame of run_frame gave (the columns verify_chunks checks, the values collect reads)."""
    model = "cnn" if engine and engine["kind"] == "laperm" else "resnet"
    params = {"model": model, "k": 4, "p": 4, "steps": 300, "n_record": 8, "algorithm": "gd",
              "teacher": {"a": "gaussian"}, "init": {}, "engine": engine,
              "schedule": {"kind": "constant", "eta_w_rel": 0.5, "eta_a_rel": 0.9}, "tolerances": {}}
    kw = sweep.simulation_kwargs(params)
    res = simulate_cell(kw, runs=25, seed=2)
    table = sweep.run_table(res, kw["engine"])
    frame = pa.Table.from_pandas(sweep.run_frame(res, kw["engine"]), preserve_index=False)
    assert table.schema.names == frame.schema.names and table.schema.names[:len(FRAME_COLUMNS)] == list(FRAME_COLUMNS)
    assert table.schema.equals(frame.schema.remove_metadata())
    pd.testing.assert_frame_equal(summary._to_frame(table), summary._to_frame(frame), check_exact=True)  # NaN == NaN
    if engine:
        assert "loss_ref" in table.schema.names and len(table.schema.names) > 16  # the engine's extras too


def test_text_columns_with_a_rare_value_are_converted_exactly():
    import numpy as np

    values = np.array(["global"] * 100 + ["saddle"], dtype=str)  # the rare value is past the sampled first ones
    assert per_run._text_array(values).to_pylist() == values.tolist()
    assert per_run._text_array(values).type == pa.large_string()


@pytest.mark.parametrize("distinct", [1, 2, 5, per_run.MAX_DISTINCT, per_run.MAX_DISTINCT + 1, 300])
@pytest.mark.parametrize("runs", [0, 1, 7, 5000])
def test_text_columns_equal_the_general_conversion(distinct, runs):
    """Distinct values found one by one (rare ones late, the empty string, beyond MAX_DISTINCT the general path):
    the same array as converting every string; other dtypes (object) take the general conversion."""
    import numpy as np

    rng = np.random.default_rng(distinct * 10_000 + runs)
    pool = np.array([f"v{i}" for i in range(distinct - 1)] + [""])
    values = pool[rng.integers(0, len(pool), runs)]
    values[: min(runs, 100)] = pool[0]
    want = pa.array(values.astype(str), type=pa.large_string())
    got = per_run._text_array(values)
    assert got.type == pa.large_string() and got.equals(want)
    obj = np.array(["x", None, "y"], dtype=object)
    assert per_run._text_array(obj).equals(pa.array(obj.astype(str), type=pa.large_string()))


def test_no_runs_writes_no_per_run_table_and_the_same_results(tmp_path, capsys):
    cfg = tmp_path / "stream.toml"
    cfg.write_text(STREAM)
    full, lean = tmp_path / "full", tmp_path / "lean"
    assert cli.main(["sweep", str(cfg), "--out", str(full), "--quiet", "--format", "csv"]) == 0
    full_out = capsys.readouterr()
    assert cli.main(["sweep", str(cfg), "--out", str(lean), "--quiet", "--format", "csv", "--no-runs"]) == 0
    lean_out = capsys.readouterr()
    assert not (lean / "runs.parquet").exists() and "runs.parquet" not in lean_out.err
    assert lean_out.out == full_out.out
    for name in ("summary.csv", "manifest.jsonl"):
        assert (lean / name).read_bytes() == (full / name).read_bytes()
    assert len(list((lean / "chunks").glob("*.parquet"))) == len(stream_spec().chunks())
    # The per-run table is still there, in the chunks: joined on demand, equal to the full run's file.
    outcome = sweep.run_sweep(stream_spec(), lean, quiet=True, runs=False)
    assert outcome.computed_chunks == 0 and not outcome.wrote_runs
    pd.testing.assert_frame_equal(outcome.runs, pd.read_parquet(full / "runs.parquet"), check_exact=True)
    # A later run without --no-runs resumes every chunk and writes it.
    assert cli.main(["sweep", str(cfg), "--out", str(lean), "--quiet", "--format", "csv"]) == 0
    assert f"({len(stream_spec().chunks())} chunks resumed)" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(lean / "runs.parquet"), pd.read_parquet(full / "runs.parquet"),
                                  check_exact=True)


def test_table_no_runs_prints_the_same_table(tmp_path, capsys):
    args = ["table", "liu2019", "--trials", "12", "--set", "steps=2000", "--quiet"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    with_runs = capsys.readouterr().out
    assert cli.main(args + ["--out", str(tmp_path / "b"), "--no-runs"]) == 0
    assert capsys.readouterr().out == with_runs
    assert not (tmp_path / "b" / "runs.parquet").exists()
    for name in ("summary.csv", "table.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_plot_reads_a_no_runs_sweep(tmp_path, capsys):
    out = tmp_path / "liu"
    assert cli.main(["table", "liu2019", "--trials", "8", "--set", "steps=1000", "--quiet", "--no-runs",
                     "--out", str(out)]) == 0
    assert cli.main(["plot", "success-rates", "--sweep", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "success_rates.png").stat().st_size > 0


def test_help_documents_no_runs():
    for command in ("table", "sweep"):
        text = cli.build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "--no-runs" in text and "runs.parquet" in text


def test_large_sweeps_get_large_chunks_unless_the_chunk_is_given():
    small = stream_spec()
    assert (small.chunk, small.chunk_auto) == (8, False)
    large = stream_spec(trials=sweep.LARGE_TRIALS)
    assert (large.chunk, large.chunk_auto) == (sweep.LARGE_CHUNK, True)
    given = stream_spec(trials=sweep.LARGE_TRIALS, chunk=8)
    assert (given.chunk, given.chunk_auto) == (8, False) and given.fingerprint() != large.fingerprint()
    assert len(large.chunks()) == len(large.cells) * sweep.LARGE_TRIALS // sweep.LARGE_CHUNK
    # The packaged tables keep their chunk at their default sizes.
    for name in tables.TABLES:
        spec = tables.spec(name, trials=200) if name != "liu2019" else tables.spec(name)
        assert spec.chunk == tables.config(name)["sweep"]["chunk"] and not spec.chunk_auto


def test_a_directory_written_with_the_files_chunk_is_resumed_not_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("sims.studies.spec.LARGE_TRIALS", 30)  # where build_spec reads it
    monkeypatch.setattr("sims.studies.spec.LARGE_CHUNK", 16)
    first = sweep.run_sweep(stream_spec(chunk=8), tmp_path, quiet=True)  # as written before the automatic chunk
    auto = stream_spec()
    assert auto.chunk_auto and auto.chunk == 16 and auto.fingerprint() != stream_spec(chunk=8).fingerprint()
    again = sweep.run_sweep(auto, tmp_path, quiet=True)
    assert again.computed_chunks == 0 and again.resumed_chunks == len(stream_spec(chunk=8).chunks())
    pd.testing.assert_frame_equal(again.summary, first.summary, check_exact=True)
    with pytest.raises(sweep.SweepError, match="holds a different configuration"):
        sweep.run_sweep(stream_spec(steps=100), tmp_path, quiet=True)


def test_a_million_trials_fit_the_memory_but_their_joined_table_is_refused(monkeypatch):
    from sims.runs import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)
    spec = tables.spec("liu2019", trials=10**6)
    assert spec.chunk == sweep.MAX_AUTO_CHUNK == sweep.auto_chunk(10**6)
    # The chunks held at once (the chunk threads and those computed ahead of the writer), each estimated under
    # 256 MiB, and one cell's summary columns (256 bytes per run: 256 MB): nothing grows with the 45 million runs.
    assert sweep.check_memory(spec) < sweep.chunks_in_flight(spec) * 2**28 + 2**28
    with pytest.raises(sweep.SweepError, match="per-run table of sweep 'liu2019' .45000000 runs. needs about"):
        sweep.check_table_memory(spec)


KILL = """
[sweep]
name = "killme"
trials = 400
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
tolerances = { loss_tol = 0.0, grad_tol = 0.0, stop_trapped = false, divergence = 1e300 }
"""


@pytest.mark.slow
def test_sigkill_of_a_no_runs_sweep_then_resume_equals_uninterrupted(tmp_path):
    cfg = tmp_path / "kill.toml"
    cfg.write_text(KILL)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sims.cli", "sweep", str(cfg), "--out", str(out), "--quiet", "--format", "csv",
           "--no-runs"]
    done = kill_after_chunks(cmd, out)
    assert 3 <= len(done) < 20 and not (out / "summary.csv").exists()
    resume(cmd, done)
    assert not (out / "runs.parquet").exists()
    spec = sweep.build_spec(tomllib.loads(KILL))
    good, damaged, _ = store.verify_chunks(out, {n: e[1] for n, e in sweep._expected_chunks(spec).items()},
                                           spec.cells[0].columns)
    assert len(good) == len(spec.chunks()) and not damaged
    clean = sweep.run_sweep(spec, tmp_path / "clean", quiet=True)
    assert (out / "summary.csv").read_bytes() == (tmp_path / "clean" / "summary.csv").read_bytes()
    pd.testing.assert_frame_equal(sweep.collect(out, spec), clean.runs, check_exact=True)


def test_a_sweep_runs_on_the_order_parameters_only_where_every_cell_can(tmp_path):
    """A sweep whose cells are all population GD without noise runs them on the order parameters alone
    (``simulate(vectors=False)``: the chunks equal that call's runs), one with another engine keeps the vectors in
    every cell (so the cells stay paired run by run), and the choice is part of the fingerprint and the metadata."""
    import numpy as np

    from sims import simulate

    spec = sweep.build_spec(tomllib.loads(STREAM))
    assert all(c.order_parameters for c in spec.cells) and spec.vectors is False
    outcome = sweep.run_sweep(spec, tmp_path / "a", quiet=True)
    runs = pd.read_parquet(outcome.out / "runs.parquet")
    cell = spec.cells[3]
    res = simulate(**sweep.simulation_kwargs_fast(cell.params), runs=spec.trials, seed=spec.seed, vectors=False)
    mine = runs[runs["cell"] == 3].sort_values("run")
    np.testing.assert_array_equal(mine["final_loss"].to_numpy(), res.final_loss)
    np.testing.assert_array_equal(mine["outcome"].to_numpy(), res.outcome)
    assert json.loads((outcome.out / "metadata.json").read_text())["vectors"] is False

    raw = tomllib.loads(STREAM)
    raw["methods"]["fade"] = {"model": "resnet", "engine": {"kind": "fade", "steps": 50}}
    mixed = sweep.build_spec(raw)
    assert not mixed.cells[-1].order_parameters and mixed.vectors is True
    with_vectors = replace(spec, cells=tuple(replace(c, order_parameters=False) for c in spec.cells))
    assert with_vectors.vectors and with_vectors.fingerprint() != spec.fingerprint()  # same cells, other draws
    vec = simulate(**sweep.simulation_kwargs_fast(mixed.cells[3].params), runs=mixed.trials, seed=mixed.seed)
    out = sweep.run_sweep(mixed, tmp_path / "b", quiet=True)
    mixed_runs = pd.read_parquet(out.out / "runs.parquet")
    np.testing.assert_array_equal(mixed_runs[mixed_runs["cell"] == 3].sort_values("run")["final_loss"].to_numpy(),
                                  vec.final_loss)


def test_chunks_recording_only_the_ends_hold_the_rows_of_the_cells_n_record(tmp_path):
    """A chunk of plain GD on the order parameters runs with n_record = 2 (sweep.chunk_kwargs: it keeps no
    trajectory); its rows must be those of sims.simulate at the cell's own n_record, bit for bit, on cells with a
    prescribed warmup, a two-stage schedule and no warmup (record steps, segment ends and stops all interleave)."""
    raw = tomllib.loads(STREAM)
    raw["base"].update(steps=20000, n_record=16)
    raw["grid"] = {"k": [4, 16]}
    raw["methods"]["prescribed"] = {"model": "resnet", "schedule": {"kind": "prescribed-warmup", "eta_w_rel": 0.5,
                                                                    "eta_a_rel": 0.9}}
    raw["methods"]["two-stage"] = {"model": "cnn", "init": {"w": "sphere", "a": "ball"},
                                   "schedule": {"kind": "two-stage", "T1": 200, "eta_w1_rel": 0.01,
                                                "eta_a1_rel": 0.9, "eta_w2_rel": 0.5, "eta_a2_rel": 0.9}}
    spec = sweep.build_spec(raw, overrides={"trials": 400, "chunk": 200})
    assert not spec.vectors
    assert all(sweep.chunk_kwargs(c.params, spec.vectors)["n_record"] == 2 for c in spec.cells)
    sweep.run_sweep(spec, tmp_path, quiet=True, runs=False)
    for cell in spec.cells:
        kw = sweep.simulation_kwargs_fast(cell.params)
        assert kw["n_record"] == 16
        want = per_run.run_frame(simulate_cell(kw, runs=400, seed=spec.seed, vectors=False), kw["engine"])
        got = pd.concat([pd.read_parquet(tmp_path / "chunks" / sweep.chunk_name(cell.index, j)) for j in (0, 1)],
                        ignore_index=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_summary_threads_respect_cores_cells_and_memory(monkeypatch):
    """Two cells side by side where two cores and the memory for two cells' summary columns are there; one
    otherwise (the summary is the same, tested above)."""
    from sims.runs import memory

    spec = stream_spec()
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**12)
    cores = len(os.sched_getaffinity(0))
    assert sweep.summary_threads(spec) == min(sweep.SUMMARY_THREADS, cores)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * sweep.SUMMARY_ROW_BYTES * spec.trials - 1)
    assert sweep.summary_threads(spec) == 1
