"""``SimulationResult.basin``: the attractor of population gradient flow from each run's final state
(:mod:`sims.runs.attractor`)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

import sims
import theory
from sims.runs import attractor

K = P = 16
ETA_W, ETA_A = 0.5 * 2 / K, 0.9 * 4 * math.pi / (K + 2 * math.pi - 2)  # liu2019's relative steps at k = 16
LIU = dict(k=K, p=P, steps=20000, seed=7, teacher=sims.Teacher(w="cap", a="gaussian", require_spurious=True))
CELLS = {
    "resnet-two-stage": dict(model="resnet", schedule=sims.Schedule.two_stage(200, 0.01 * 2 / K, ETA_A, ETA_W, ETA_A)),
    "resnet-no-warmup": dict(model="resnet", schedule=sims.Schedule.constant(ETA_W, ETA_A)),
    "cnn-no-warmup": dict(model="cnn", schedule=sims.Schedule.constant(ETA_W, ETA_A),
                          init=sims.Init(w="sphere", a="ball")),
}


@pytest.mark.parametrize("vectors", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
def test_population_gd_basin_by_flow_equals_outcome(cell, vectors):
    """Population GD on liu2019-like cells: every run ends global or spurious (by loss_tol or trapped), and the flow
    from its end, computed for every run, lands where the outcome says; ``basin="auto"`` (no flow for these
    runs) gives the same array."""
    res = sims.simulate(runs=100, vectors=vectors, **LIU, **CELLS[cell])
    decided = np.isin(res.outcome, ("global", "spurious"))
    assert decided.all(), res.counts()  # liu2019's cells: every run reaches a minimum within the budget
    assert Counter(res.outcome)["spurious"] > 0 or cell == "resnet-two-stage"
    flowed = res.basin_by_flow()
    np.testing.assert_array_equal(flowed, res.outcome)
    np.testing.assert_array_equal(res.basin, flowed)


def test_gd_out_of_steps_gets_the_basin_its_run_reaches_later():
    """Runs stopped early (``max_steps``) are ``not_converged``; their basins are the outcomes of the same runs
    given the full budget (the flow's orbit is the limit of GD's, and these runs are far from the boundary)."""
    kw = dict(runs=200, **dict(LIU, steps=5), **CELLS["cnn-no-warmup"])
    short, full = sims.simulate(**kw), sims.simulate(**dict(kw, steps=20000))
    stopped = short.outcome == "not_converged"
    assert stopped.sum() > 150
    assert set(full.outcome[stopped]) == {"global", "spurious"}
    agree = np.mean(short.basin[stopped] == full.outcome[stopped])
    # Measured: 199 of 199 agree (129 global, 70 spurious).  GD's finite steps may cross a boundary the flow does
    # not, so allow a few.
    assert agree >= 0.98, agree


def _near_spurious(k, p, runs, rng):
    while True:
        a_star = rng.normal(size=k)
        if theory.spurious_exists(a_star):
            break
    w_star = np.zeros(p)
    w_star[0] = 1.0
    a_pi = theory.optimal_a(math.pi, a_star)
    w0 = -w_star[None, :] + 0.05 * rng.normal(size=(runs, p))
    a0 = a_pi[None, :] + 0.05 * rng.normal(size=(runs, k))
    return (w_star, a_star), (w0, a0)


def test_sgd_hovering_near_the_spurious_point_has_basin_spurious():
    """SGD started near the spurious point keeps moving (minibatch noise): its runs end ``not_converged``, and the
    flow from where they are goes to the spurious minimum."""
    k = p = 8
    teacher, init = _near_spurious(k, p, 60, np.random.default_rng(5))
    res = sims.simulate(model="cnn", k=k, p=p, runs=60, steps=2000, teacher=teacher, init=init, algorithm="sgd",
                        batch_size=32, seed=1, schedule=sims.Schedule.constant(1 / k, 0.9 * 4 * math.pi / (k + 4.28)))
    hovering = res.outcome == "not_converged"
    assert hovering.sum() >= 30
    assert np.all(res.basin[hovering] == "spurious")


def test_perturbed_gd_not_converged_runs_get_basins():
    """Perturbed GD on the CNN at noise 0.2 (k = p = 8, half-life 3000, 40,000 steps): the noise is still
    ``2e-5`` per step at the end, so runs near a minimum are ``not_converged``; each gets a basin, global or
    spurious (the docs report the fractions over 1,000 runs)."""
    k = 8
    sched = sims.Schedule.perturbed(0.5 * 2 / k, 0.9 * 4 * math.pi / (k + 2 * math.pi - 2), noise=0.2,
                                    half_life=3000)
    res = sims.simulate(model="cnn", k=k, p=k, runs=200, steps=40000, schedule=sched, seed=0,
                        init=sims.Init(w="sphere", a="ball"),
                        teacher=sims.Teacher(w="cap", a="gaussian", require_spurious=True))
    moving = res.outcome == "not_converged"
    basins = Counter(res.basin[moving].tolist())
    print(f"perturbed GD, 200 runs: {moving.sum()} not_converged, basins {dict(basins)}")
    assert moving.sum() >= 20
    assert set(basins) <= {"global", "spurious"} and basins["global"] > 0 and basins["spurious"] > 0
    assert np.all(res.basin[res.outcome == "global"] == "global")
    np.testing.assert_array_equal(res.basin_by_flow(), res.basin)  # auto: the same as flowing every run


def test_unnormalized_cnn_spurious_runs_are_decided_without_the_time_budget():
    """The unnormalized CNN has no ``trapped`` stop: its spurious runs end ``max_steps`` near ``phi = pi``; the flow
    decides them below the decisive level (it does not integrate to the time budget: a budget of 10 suffices)."""
    kw = dict(LIU, model="cnn-unnormalized", init=sims.Init(w="sphere", a="ball"), k=8, p=8, steps=20000,
              schedule=sims.Schedule.constant(1 / 8, 0.9 * 4 * math.pi / (8 + 2 * math.pi - 2)))
    res = sims.simulate(runs=150, **kw)
    spur = res.outcome == "spurious"
    assert spur.sum() > 10 and set(res.stop_reason[spur]) == {"max_steps"}
    np.testing.assert_array_equal(attractor.basins(res, time=10)[spur], "spurious")
    decided = res.outcome != "not_converged"
    np.testing.assert_array_equal(res.basin_by_flow()[decided], res.outcome[decided])


def test_decisive_level_lies_between_the_spurious_and_the_saddle_loss():
    rng = np.random.default_rng(0)
    for k in (1, 2, 4, 16, 64):
        A = rng.normal(size=(20, k))
        level, phi_s = attractor.decisive_level(k, A.sum(axis=1), (A * A).sum(axis=1))
        for a_star, lv, ps in zip(A, level, phi_s, strict=True):
            ref = theory.loss_ref(a_star)
            at_pi = theory.reduced_loss(math.pi, a_star) / ref
            if ps >= 0:  # R(pi) < level < R(phi_s), to the reference's accuracy
                assert at_pi < lv < theory.reduced_loss(ps, a_star) / ref
                np.testing.assert_allclose(attractor.reduced_loss(np.array([ps]), k, a_star.sum(), a_star @ a_star),
                                           theory.reduced_loss(ps, a_star), rtol=1e-12)
            else:
                assert lv < at_pi and lv == pytest.approx(at_pi, rel=1e-5)


def test_diverged_runs_have_basin_diverged_and_none_mode():
    kw = dict(model="cnn", k=4, p=4, runs=5, steps=200, schedule=sims.Schedule.constant(50.0, 50.0),
              allow_unstable=True, init=sims.Init(w="sphere"))
    res = sims.simulate(**kw)
    assert np.all(res.outcome == "diverged")
    assert np.all(res.basin == "diverged") and np.all(res.basin_by_flow() == "diverged")
    none = sims.simulate(basin="none", **kw)
    assert none.basin is None
    with pytest.raises(ValueError, match=r"no basins.*basin_by_flow"):
        none.basin_counts()


def test_basin_is_deterministic_across_threads_and_splits():
    kw = dict(runs=40, **dict(LIU, steps=5), **CELLS["cnn-no-warmup"])  # most runs are still moving: flowed
    one, two = sims.simulate(threads=1, **kw), sims.simulate(threads=2, **kw)
    np.testing.assert_array_equal(one.basin, two.basin)
    parts = [sims.simulate(**dict(kw, runs=15)), sims.simulate(**dict(kw, runs=25, run_offset=15))]
    np.testing.assert_array_equal(sims.SimulationResult.concat(parts).basin, one.basin)
    assert set(one.basin) <= set(attractor.BASINS) and sum(one.basin_counts().values()) == 40


def test_bad_input():
    kw = dict(k=4, p=4, runs=2, steps=10, schedule=sims.Schedule.constant(0.5, 1.0))
    with pytest.raises(ValueError, match=r"basin must be one of \('auto', 'flow', 'none'\); got 'all'"):
        sims.simulate(basin="all", **kw)
    res = sims.simulate(**kw)
    with pytest.raises(ValueError, match="mode must be 'flow' or 'auto'"):
        attractor.basins(res, "none")
    with pytest.raises(ValueError, match="time must be a finite number > 0; got -1"):
        res.basin_by_flow(time=-1)
    with pytest.raises(ValueError, match="rates"):
        attractor.flow_outcomes(np.zeros((1, 6)), np.ones((1, 8)), k=4, normalized=True, rates=(math.nan, 1.0),
                                tolerances=sims.Tolerances())


ENGINES = {
    "fade": dict(engine=sims.Fade("cosine", steps=100), model="resnet"),
    "expansion": dict(engine=sims.Expansion(target="w", depth=2), model="resnet"),
    "laperm": dict(engine=sims.LaPerm(sync_every=10), model="cnn"),
}


@pytest.mark.parametrize("name", list(ENGINES))
def test_engines_whose_end_is_a_plain_network_get_basins(name):
    """The fading shortcut's deployed CNN, an expansion's contracted network and LaPerm's CNN get basins; for the
    runs that ended at a minimum the flow agrees with the outcome (LaPerm's runs stop ``sync_fixed``, away from
    every fixed point: their basins are the flow's)."""
    res = sims.simulate(k=4, p=4, runs=20, steps=300, schedule=sims.Schedule.constant(0.5, 1.0), seed=3,
                        **ENGINES[name])
    assert set(res.basin) <= {"global", "spurious", "saddle"}, res.basin_counts()
    ended = np.isin(res.outcome, ("global", "spurious"))
    np.testing.assert_array_equal(res.basin_by_flow()[ended], res.outcome[ended])
    np.testing.assert_array_equal(res.basin_by_flow(), res.basin)


def test_a_flow_that_crawls_stops_undecided():
    """The unnormalized CNN's flow from some inits passes near ``w = 0``, where the field is singular and the
    solver's steps shrink to ``1e-11`` (it would not reach flow time 1 in hours): the step cap stops it there,
    ``undecided``, within a fraction of a second."""
    res = sims.simulate(model="cnn-unnormalized", k=6, p=5, runs=80, steps=0, seed=4, basin="none",
                        schedule=sims.Schedule.constant(0.5, 0.5))
    start, consts = attractor.final_coordinates(res)
    one = slice(1, 2)  # run 1 crawls (measured: steps of 2e-11 from t = 0.49 on)
    code = attractor.flow_outcomes(start[one], consts[one], k=6, normalized=False, rates=(0.5, 0.5),
                                   tolerances=sims.Tolerances(), time=1)
    assert attractor.BASINS[code[0]] == "undecided"
    counts = Counter(res.basin_by_flow().tolist())
    assert 0 < counts["undecided"] < 20 and counts["global"] + counts["spurious"] + counts["undecided"] == 80


def _flow_first_observation(start, consts, k, normalized):
    """The flow engine's observation at its initial states: every run stops there (a decisive level of 1e300),
    and its final ``(L, phi, P, ||grad||)`` is what the engine computed at ``t = 0``."""
    from sims.engines import driver
    from sims.engines import flow as flow_engine
    from sims.runs.schedules import ResolvedSchedule

    R = len(start)
    eng = flow_engine.engine(start, consts, k, normalized, 1e-10, 1e-12, np.full(R, 1e300), 100)
    out = flow_engine.make_outputs(R, 1)
    sched = ResolvedSchedule(np.full((R, 1), 10, dtype=np.int64), np.full((R, 1), 0.1), np.full((R, 1), 0.1),
                             np.zeros(1), np.zeros(1), 1.0)
    none = np.empty((R, 0))
    prob = driver.make_problem(none, none, -np.ones(R), sched, np.zeros((R, 4), dtype=np.uint64),
                               np.zeros(1, dtype=np.int64), sims.Tolerances().rate_window)
    driver.run_batch(flow_engine.run_range, flow_engine.workspace, eng, prob,
                     driver.make_stops(sims.Tolerances(divergence=1e300), 10, True), out, R, 1)
    assert np.all(out.stop_reason == driver.STOP_LOSS)
    return out.final


OPEN_CELLS = {  # liu2019-like runs stopped early: most end below the decisive level, a few above it
    "cnn": dict(model="cnn", init=sims.Init(w="sphere", a="ball"), steps=40),
    "cnn-unnormalized": dict(model="cnn-unnormalized", init=sims.Init(w="sphere", a="ball"), steps=100),
}


@pytest.mark.parametrize("cell", list(OPEN_CELLS))
def test_start_observation_is_the_flow_engines(cell):
    """:func:`attractor.start_observation` (NumPy) computes what the flow engine observes at its start: the same
    closed forms in the same order.  Measured: ``L`` and ``P`` agree to 9e-16 relative (mostly bit for bit), the
    angle to an ulp or two (NumPy's ``arctan2`` is not the compiled one); far inside ``LEVEL_MARGIN = 1e-9``."""
    spec = OPEN_CELLS[cell]
    res = sims.simulate(runs=300, basin="none", schedule=sims.Schedule.constant(ETA_W, ETA_A),
                        **dict(LIU, **spec))
    start, consts = attractor.final_coordinates(res)
    normalized = cell != "cnn-unnormalized"
    final = _flow_first_observation(start, consts, K, normalized)
    L, phi, P, g2 = attractor.start_observation(start, consts, K, normalized)
    np.testing.assert_allclose(L, final[:, 0], rtol=1e-14, atol=0)
    np.testing.assert_allclose(phi, final[:, 1], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(P, final[:, 2], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(np.sqrt(g2), final[:, 3], rtol=1e-12, atol=0)
    assert attractor.LEVEL_MARGIN >= 1e5 * 1e-14


@pytest.mark.parametrize("cell", list(OPEN_CELLS))
def test_auto_decides_runs_below_the_level_without_the_flow_as_the_flow_does(cell):
    """``mode="auto"`` settles the open runs (``max_steps``) whose end lies below the decisive level in NumPy and
    flows the rest: the labels are those of flowing every run.  Measured: cnn 245 of 249 open runs settled (all
    global or spurious), 4 flowed; unnormalized CNN 195 of 201 settled, both basins among them."""
    spec = OPEN_CELLS[cell]
    res = sims.simulate(runs=400, basin="none", schedule=sims.Schedule.constant(ETA_W, ETA_A),
                        **dict(LIU, **spec))
    opened = ~np.isin(res.stop_reason, ("loss_tol", "trapped")) & (res.outcome != "diverged")
    start, consts = attractor.final_coordinates(res)
    code = attractor.decided_at_start(start, consts, k=K, normalized=cell != "cnn-unnormalized",
                                      tolerances=sims.Tolerances())
    settled = opened & (code >= 0)
    assert settled.sum() >= 150 and (opened & (code < 0)).sum() >= 2  # both paths are taken
    if cell == "cnn-unnormalized":
        assert set(code[settled]) == {0, 1}  # global and spurious both settled
    flowed = attractor.basins(res, "flow")
    np.testing.assert_array_equal(attractor.basins(res, "auto"), flowed)
    np.testing.assert_array_equal(np.asarray(attractor.BASINS)[code[settled]], flowed[settled])


def test_auto_runs_no_flow_when_every_open_run_lies_below_the_level(monkeypatch):
    """Where every open run ends below the decisive level the flow engine is not called at all (so never compiled):
    ``flow_outcomes`` replaced by a function that fails leaves ``mode="auto"`` unaffected."""
    res = sims.simulate(runs=400, schedule=sims.Schedule.constant(ETA_W, ETA_A), basin="none",
                        **dict(LIU, **dict(OPEN_CELLS["cnn"], steps=120)))
    assert 0 < np.sum(res.stop_reason == "max_steps")
    flowed = attractor.basins(res, "flow")

    def fail(*args, **kwargs):
        raise AssertionError("flow_outcomes called")

    monkeypatch.setattr(attractor, "flow_outcomes", fail)
    np.testing.assert_array_equal(attractor.basins(res, "auto"), flowed)
    with pytest.raises(AssertionError, match="flow_outcomes called"):
        attractor.basins(res, "flow")


def test_one_flowed_run_uses_the_engine_signature_of_many():
    """The flow of a single run passes writeable rate arrays, as for several runs: no read-only array type in the
    flow engine's signatures (one flowed run in a sweep compiled a second copy of the engine, ~17 s)."""
    from sims.engines import flow as flow_engine

    res = sims.simulate(runs=3, basin="none", schedule=sims.Schedule.constant(ETA_W, ETA_A),
                        **dict(LIU, **dict(OPEN_CELLS["cnn"], steps=5)))
    start, consts = attractor.final_coordinates(res)
    for rows in (slice(0, 1), slice(0, 3)):
        attractor.flow_outcomes(start[rows], consts[rows], k=K, normalized=True, rates=(ETA_W, ETA_A),
                                tolerances=sims.Tolerances(), time=10)
    assert flow_engine.run_range.signatures
    assert not [sig for sig in flow_engine.run_range.signatures if "readonly" in str(sig)]
