"""Engines in sweep files: ``engine = { kind = ..., options }`` per method (validated like every other key), zipped
grid axes, the matched step rule, and an engine registered in a test file run through a sweep config."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pandas as pd
import pytest
import test_engines  # noqa: F401  (registers the test engine "frozen-filter", defined in that file)

import sims
from sims.runs.schedules import Schedule, optimal_eta_a
from sims.studies import sweep

BASE = """
[sweep]
trials = 1

[base]
k = 2
p = 2
steps = 10
schedule = { kind = "constant", eta_w = 0.1, eta_a = 0.1 }
"""


def spec_of(text: str, **overrides) -> sweep.SweepSpec:
    return sweep.build_spec(tomllib.loads(text), overrides=overrides)


@pytest.mark.parametrize(
    ("engine", "extra", "needle"),
    [
        ("5", "", "engine must be a table with a 'kind'; got 5"),
        ('{ kind = "nope" }', "", "engine.kind must be one of fade, laperm, expansion, "),
        ('{ kind = "fade" }', "", "engine.steps (T_fade, the step at which the shortcut weight reaches 0) is required"),
        ('{ kind = "fade", steps = 0 }', "", "engine.steps must be an integer in [1, 1000000000]; got 0"),
        ('{ kind = "fade", steps = 50 }', "", "fade.steps = 50 must be <= steps = 10"),
        ('{ kind = "fade", schedule = "quadratic", steps = 5 }', "",
         "engine.schedule must be one of linear, cosine, step, custom; got 'quadratic'"),
        ('{ kind = "fade", schedule = "custom", values = [1, 0.5, 0.7, 0] }', "", "fade.values must be monotone"),
        ('{ kind = "fade", steps = 5 }', 'model = "cnn"\n', "model must be 'resnet' for the fading shortcut"),
        ('{ kind = "laperm", K = -1 }', 'model = "cnn"\n', "engine.K must be an integer in [0, 1000000000]; got -1"),
        ('{ kind = "laperm", dist = "cauchy" }', 'model = "cnn"\n',
         "engine.dist must be one of gaussian, uniform; got 'cauchy'"),
        ('{ kind = "laperm", adam = [0.9, 1.5, 1e-8] }', 'model = "cnn"\n', "engine.adam must be three numbers"),
        ('{ kind = "laperm" }', 'model = "cnn"\ninit = { a = "ball" }\n', "leave init empty"),
        ('{ kind = "laperm" }', "", "model must be 'cnn' for LaPerm"),
        ('{ kind = "expansion", depth = 0 }', "", "engine.depth must be an integer in [1, 64]; got 0"),
        ('{ kind = "expansion", target = "b" }', "", "engine.target must be one of w, a, both; got 'b'"),
        ('{ kind = "expansion", scale = -1.0 }', "", "engine.scale must be a finite number > 0; got -1.0"),
        ('{ kind = "expansion", colour = 1 }', "",
         "unknown key 'colour' in cell 0 (method 'default'): engine (kind 'expansion'); valid keys: depth, init, "
         "kind, pretrain_batch, pretrain_eta, pretrain_steps, rate, scale, step_rule, target"),
        ('{ kind = "expansion", step_rule = "matched" }', 'schedule = { kind = "prescribed-warmup", eta_w_rel = 0.5, '
         'eta_a_rel = 0.9 }\n', "engine.step_rule = 'matched' needs a schedule without the prescribed warmup"),
        ('{ kind = "frozen-filter", K = 1 }', "",
         "unknown key 'K' in cell 0 (method 'default'): engine (kind 'frozen-filter', an engine without options)"),
    ],
)
def test_bad_engines_name_the_field_and_range(engine, extra, needle):
    base = BASE.replace('schedule = { kind = "constant", eta_w = 0.1, eta_a = 0.1 }\n', "") if "schedule" in extra \
        else BASE
    with pytest.raises(sweep.SweepError) as err:
        spec_of(base.replace("steps = 10\n", f"steps = 10\n{extra}engine = {engine}\n"))
    assert needle in str(err.value) and "cell 0 (method 'default')" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        ('"k,p" = [[4]]', "grid.k,p must list [k, p] points of 2 values each; got [4]"),
        ('"k,p" = [[4, 4]]\nk = [2]', "grid: field k is varied by more than one grid key"),
        ('"k,colour" = [[4, 4]]', "unknown key 'colour' in a field name"),
        ('"k,p" = []', "grid.k,p must be a non-empty list"),
    ],
)
def test_bad_zipped_grids(grid, needle):
    with pytest.raises(sweep.SweepError) as err:
        spec_of(BASE + "[grid]\n" + grid + "\n")
    assert needle in str(err.value)


def test_zipped_grid_axes_vary_fields_together_and_cross_the_others():
    spec = spec_of(BASE + '[grid]\n"k,p" = [[2, 3], [4, 5]]\nsteps = [4, 6]\n')
    assert [(c.params["k"], c.params["p"], c.params["steps"]) for c in spec.cells] == [(2, 3, 4), (2, 3, 6),
                                                                                       (4, 5, 4), (4, 5, 6)]
    assert spec.grid_keys == ("k", "p", "steps")
    assert list(sweep.cell_columns(spec)) == ["model", "k", "p", "cell.steps"]


def test_engine_options_map_onto_the_option_objects_and_grid_overrides_reach_them():
    spec = spec_of(BASE.replace("k = 2\np = 2", 'k = 4\np = 4\nmodel = "cnn"')
                   + '[grid]\n"engine.K" = [0, 5]\n[methods.lp]\nengine = { kind = "laperm", dist = "uniform" }\n',
                   steps=20)
    engines = [sweep.simulation_kwargs_fast(c.params)["engine"] for c in spec.cells]
    assert engines[:2] == [sims.LaPerm(sync_every=None, dist="uniform"), sims.LaPerm(sync_every=5, dist="uniform")]
    # The laperm keys reach an expansion cell through the grid, which refuses them by name.
    with pytest.raises(sweep.SweepError, match=r"unknown key 'K' in cell 0 \(method 'ex'\): engine \(kind "):
        spec_of(BASE + '[grid]\n"engine.K" = [0]\n[methods.ex]\nengine = { kind = "expansion" }\n')
    spec = spec_of(BASE + '[methods.ex]\nengine = { kind = "expansion", target = "a", depth = 3, rate = 2 }\n',
                   **{"engine.rate": 1})
    assert sweep.simulation_kwargs_fast(spec.cells[0].params)["engine"] == sims.Expansion(target="a", depth=3, rate=1)
    fade = spec_of(BASE.replace("steps = 10", 'steps = 10\nengine = { kind = "fade", schedule = "cosine", steps = 7 }'))
    assert sweep.simulation_kwargs_fast(fade.cells[0].params)["engine"] == sims.Fade("cosine", 7)
    # A cell with an engine persists loss_ref and the engine's per-run extras (the fade's loss when lambda hits 0).
    assert fade.cells[0].columns[-3:] == ("loss_ref", "fade_end_loss", "fade_end_phi")
    assert spec.cells[0].columns[:len(sims.runs.simulate.FRAME_COLUMNS)] == sims.runs.simulate.FRAME_COLUMNS


@pytest.mark.parametrize("target", ["w", "a", "both"])
def test_the_matched_step_rule_divides_the_last_step_by_the_gain_and_keeps_the_warmup_ratio(target):
    k, N = 8, 3
    ew, ea = 0.5 * 2.0 / k, 0.9 * optimal_eta_a(k)
    sched = Schedule.two_stage(200, 0.01 * ew, ea, ew, ea)
    out = sweep.matched_schedule(sched, sims.Expansion(target=target, depth=N), k)
    gw = N if target != "a" else 1
    ga = N * k ** (1 - 1 / N) if target != "w" else 1
    assert out.segments[1].eta_w == pytest.approx(ew / gw, rel=1e-15)
    assert out.segments[1].eta_a == pytest.approx(ea / ga, rel=1e-15)
    assert out.segments[0].eta_w == pytest.approx(0.01 * ew / gw, rel=1e-15)
    assert out.segments[0].eta_a == pytest.approx(ea / ga, rel=1e-15)
    assert out.segments[0].steps == 200 and out.name == "two-stage"
    assert sweep.matched_schedule(sched, sims.Expansion(target=target, depth=1), k) == sched
    assert math.isclose(out.max_eta_a(k), ea / ga, rel_tol=1e-15)


FROZEN = """
[sweep]
name = "frozen"
trials = 10
seed = 3
chunk = 4

[base]
model = "cnn"
k = 6
p = 5
steps = 400
n_record = 8
schedule = { kind = "constant", eta_w = 0.0, eta_a = 1.0 }
tolerances = { grad_tol = 1e-10 }

[methods.frozen]
engine = { kind = "frozen-filter" }

[methods.plain]
"""


def test_an_engine_registered_in_a_test_file_runs_through_a_sweep_config(tmp_path):
    """The test engine of test_engines.py (GD on ``a`` at a frozen filter) selected by name in a sweep file: in
    chunks of 4 runs it gives exactly the runs of one ``sims.simulate(engine="frozen-filter")`` call, persists
    ``loss_ref``, resumes a deleted chunk, and shares the plain cell's teachers and inits run by run."""
    spec = spec_of(FROZEN)
    first = sweep.run_sweep(spec, tmp_path, quiet=True)
    assert first.computed_chunks == 6
    frozen = first.runs[first.runs["method"] == "frozen"].reset_index(drop=True)
    ref = sims.simulate(engine="frozen-filter", model="cnn", k=6, p=5, runs=10, steps=400, seed=3, n_record=8,
                        schedule=Schedule.constant(0.0, 1.0), tolerances=sims.Tolerances(grad_tol=1e-10),
                        teacher=sims.Teacher(), init=sims.Init(w="sphere"))
    expect = ref.to_frame().assign(loss_ref=ref.loss_ref)
    pd.testing.assert_frame_equal(frozen[list(expect.columns)], expect)
    assert (frozen["stop_reason"] == "grad_tol").all()  # GD on a alone stops at a(phi), the frozen angle's optimum
    plain = first.runs[first.runs["method"] == "plain"].reset_index(drop=True)
    assert plain["loss_ref"].isna().all()  # not a column of the plain cell's chunks
    (tmp_path / "chunks" / "cell0000-chunk00001.parquet").unlink()
    again = sweep.run_sweep(spec, tmp_path, quiet=True)
    assert again.computed_chunks == 1 and again.resumed_chunks == 5
    pd.testing.assert_frame_equal(first.runs, again.runs)
    # Paired run by run: the same teacher and init in both cells, and with eta_w = 0 the plain CNN's filter stays
    # where the frozen one is, so both end at the same angle to w* (to rounding: each kernel computes it itself).
    np.testing.assert_allclose(frozen["final_phi"], plain["final_phi"], rtol=0, atol=1e-12)
