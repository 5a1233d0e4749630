"""What a run returns (SimulationResult): shapes, the log-spaced trajectory, the event steps (slow_phase_end,
steps_to_tol), stop reasons, and final values that agree with the theory's closed forms at the returned (w, a).

Event steps are checked against a trajectory with every step recorded (``n_record`` large enough that
``record_steps(steps, n_record) == 0..steps``), so "first step with ..." can be recomputed exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sims
import theory
from sims import Init, Schedule, Teacher, record_steps
from sims.engines import driver

FULL = 100_000
MODELS = ["resnet", "cnn", "cnn-unnormalized"]


def _sim(model="resnet", *, k=4, p=5, runs=60, steps=400, n_record=64, seed=6, **kw):
    kw.setdefault("schedule", Schedule.constant(0.8, 0.5 * theory.max_stable_eta_a(k)))
    return sims.simulate(model=model, k=k, p=p, runs=runs, steps=steps, n_record=n_record, seed=seed, **kw)


def test_one_recorded_step_cannot_hold_the_first_and_the_last():
    with pytest.raises(ValueError, match="n_record must be >= 2"):
        record_steps(100, 1)


@pytest.mark.parametrize("steps", [0, 1, 2, 5, 63, 64, 100, 1000, 12345, 10**6, 10**9])
@pytest.mark.parametrize("n_record", [2, 3, 10, 64, 1000])
def test_record_steps_are_log_spaced_from_zero_to_steps(steps, n_record):
    rec = record_steps(steps, n_record)
    assert rec.dtype == np.int64
    assert rec[0] == 0
    assert len(rec) <= n_record  # memory is bounded by n_record whatever the step budget
    assert np.all(np.diff(rec) > 0)
    assert rec[-1] == steps
    assert len(rec) >= min(steps + 1, 2)
    if n_record >= 10 and steps >= 10**6:
        # Log-spaced: beyond the integer-crowded start, consecutive ratios are about (steps + 1)^(1/(n - 2)).
        ratio = (steps + 1) ** (1.0 / (n_record - 2))
        big = rec[rec >= 1000]
        r = big[1:] / big[:-1]
        assert np.all(r < 1.5 * ratio) and np.all(r > ratio ** 0.5)
    if n_record > 10 * (steps + 1):
        np.testing.assert_array_equal(rec, np.arange(steps + 1))


@pytest.mark.parametrize("model", MODELS)
def test_shapes_and_trajectory_prefix(model):
    k, p, runs, steps, n_record = 3, 7, 40, 3000, 50
    res = _sim(model, k=k, p=p, runs=runs, steps=steps, n_record=n_record)
    assert len(res) == runs
    for name in ("w", "w0", "w_star"):
        assert getattr(res, name).shape == (runs, p), name
    for name in ("a", "a0", "a_star"):
        assert getattr(res, name).shape == (runs, k), name
    for name in ("outcome", "stop_reason", "steps", "final_loss", "final_phi", "final_alignment", "final_grad_norm",
                 "steps_to_tol", "slow_phase_end", "fitted_rate", "theory_rate", "linear_regime", "loss_ref",
                 "warmup_steps", "warmup_eta_w", "run_index"):
        assert getattr(res, name).shape == (runs,), name
    np.testing.assert_array_equal(res.trajectory_steps, record_steps(steps, n_record))
    assert res.trajectory.shape == (runs, len(res.trajectory_steps), len(driver.TRAJ_FIELDS))
    assert res.trajectory.shape[1] <= n_record
    assert sum(res.counts().values()) == runs
    assert set(res.outcome) <= set(sims.OUTCOMES)
    assert set(res.stop_reason) <= set(driver.STOP_NAMES)
    frame = res.to_frame()
    assert len(frame) == runs and list(frame["run"]) == list(range(runs))
    for r in range(runs):
        tr = res.trajectory_of(r)
        expect = res.trajectory_steps[res.trajectory_steps <= res.steps[r]]
        np.testing.assert_array_equal(tr["step"], expect)  # exactly the record steps up to the stop
        assert set(tr) == {"step", *driver.TRAJ_FIELDS}
        for name in driver.TRAJ_FIELDS:
            assert tr[name].shape == expect.shape and np.all(np.isfinite(tr[name]))
        assert np.all(np.isnan(res.trajectory[r, len(expect):]))  # after the stop: NaN
        if tr["step"][-1] == res.steps[r]:  # the stop step itself was recorded: same state as the final values
            assert tr["loss"][-1] == res.final_loss[r]
            assert tr["phi"][-1] == res.final_phi[r]
            assert tr["alignment"][-1] == res.final_alignment[r]


@pytest.mark.parametrize("model", MODELS)
def test_final_values_agree_with_the_theory_at_the_returned_state(model):
    for steps in (0, 3, 40, 5000):
        res = _sim(model, k=6, p=5, runs=80, steps=steps, seed=4, schedule=Schedule.constant(0.5, 0.5))
        for r in range(len(res)):
            kw = {"w_star": res.w_star[r], "a_star": res.a_star[r], "model": model}
            L = theory.population_loss(res.w[r], res.a[r], **kw)
            # The closed form sums O(L_ref) terms; both sides round at ~1e-16 L_ref (measured <= 1.7e-15 L_ref),
            # so near the minimum the agreement is absolute in L_ref, elsewhere relative.  1e-12 leaves 500x.
            assert abs(res.final_loss[r] - L) <= 1e-12 * max(abs(L), res.loss_ref[r])
            # The kernel's angle is atan2(sqrt(1 - c^2), c): accurate to sqrt(eps) = 1.5e-8 near 0 and pi.
            assert res.final_phi[r] == pytest.approx(theory.angle(res.w[r], w_star=res.w_star[r], model=model),
                                                      abs=1e-7)
            assert res.final_alignment[r] == pytest.approx(res.a[r] @ res.a_star[r], rel=1e-12, abs=1e-14)
        # The initial state is what the samplers drew: trajectory row 0 is the loss at (w0, a0).
        L0 = [theory.population_loss(res.w0[r], res.a0[r], w_star=res.w_star[r], a_star=res.a_star[r], model=model)
              for r in range(len(res))]
        np.testing.assert_allclose(res.trajectory[:, 0, 0], L0, rtol=1e-12)
        np.testing.assert_allclose(res.trajectory[:, 0, 3], np.linalg.norm(res.a0 - res.a_star, axis=1), rtol=1e-12)
        loss_ref = np.array([theory.population_loss(np.ones(5), np.zeros(6), w_star=res.w_star[r],
                                                    a_star=res.a_star[r], model="cnn") for r in range(len(res))])
        np.testing.assert_allclose(res.loss_ref, loss_ref, rtol=1e-12)  # the zero network's loss E[f*^2] / 2
        if model == "resnet":
            np.testing.assert_array_equal(res.w0, 0.0)


def test_final_grad_norm_agrees_with_the_theory_away_from_stationary_points():
    res = _sim("cnn", k=5, p=4, runs=50, steps=3, seed=2)
    for r in range(len(res)):
        gw, ga = theory.population_gradient(res.w[r], res.a[r], w_star=res.w_star[r], a_star=res.a_star[r],
                                            model="cnn")
        g = math.sqrt(gw @ gw + ga @ ga)
        # ||grad||^2 is assembled from the invariants; an O(1) gradient keeps ~1e-15 relative accuracy.
        assert res.final_grad_norm[r] == pytest.approx(g, rel=1e-9)


def test_final_grad_norm_near_a_stationary_point():
    # Start at phi = pi (w* = -v) with a* = 1: a converges to the saddle (pi, a(pi)) geometrically, so after 400
    # steps the true gradient is ~1e-16.  The kernel's norm comes from a sum of O(1) terms that cancel, leaving a
    # floor ~sqrt(eps) ~ 1e-8 that is 100x grad_tol (1e-10 sqrt(L_ref)): grad_tol stops then happen only when the
    # rounding falls below 0 (then the norm reads exactly 0), and final_grad_norm is off by 8 orders.
    p, k = 5, 3
    v = np.full(p, 1 / math.sqrt(p))
    res = sims.simulate(model="resnet", k=k, p=p, runs=5, steps=400, schedule=Schedule.constant(1.0, 0.5),
                        teacher=(-v, np.ones(k)), seed=1)
    for r in range(5):
        gw, ga = theory.population_gradient(res.w[r], res.a[r], w_star=res.w_star[r], a_star=res.a_star[r])
        assert abs(res.final_grad_norm[r] - math.sqrt(gw @ gw + ga @ ga)) <= 1e-12
    assert set(res.stop_reason) == {"grad_tol"}


@pytest.mark.parametrize("model", ["resnet", "cnn"])
def test_slow_phase_end_and_steps_to_tol_are_first_crossings(model):
    steps = 1500
    res = _sim(model, k=6, p=6, runs=80, steps=steps, n_record=FULL, seed=7, teacher=Teacher(require_spurious=True))
    assert np.array_equal(res.trajectory_steps, np.arange(steps + 1))
    eps = sims.Tolerances().eps
    seen = {"slow": set(), "tol": set()}
    for r in range(len(res)):
        tr = res.trajectory_of(r)
        pos = np.flatnonzero(tr["alignment"] > 0)
        expect = int(pos[0]) if pos.size else -1  # the first step with a.a* > 0, -1 if never
        assert res.slow_phase_end[r] == expect
        seen["slow"].add("zero" if expect == 0 else ("never" if expect < 0 else "later"))
        below = np.flatnonzero(tr["loss"] <= eps * res.loss_ref[r])
        expect = int(below[0]) if below.size else -1
        assert res.steps_to_tol[r] == expect
        seen["tol"].add("never" if expect < 0 else "reached")
    # The sample covers every case: a0.a* > 0 from the start, a later sign change, never (spurious runs).
    assert seen["slow"] == {"zero", "later", "never"}
    assert seen["tol"] == {"reached", "never"}


def test_slow_phase_end_on_a_log_spaced_trajectory():
    res = _sim("resnet", k=8, p=8, runs=200, steps=20000, n_record=64, seed=8,
               schedule=Schedule.prescribed_warmup(1.0, 0.5 * theory.max_stable_eta_a(8)),
               teacher=Teacher(require_spurious=True))
    for r in range(len(res)):
        t_end = res.slow_phase_end[r]
        steps, align = res.trajectory_steps, res.trajectory[r, :, 2]
        assert t_end >= 0  # every warmed-up run turns a.a* positive
        assert np.all(align[steps < t_end] <= 0)
        if t_end in steps:
            assert align[steps == t_end][0] > 0


def test_slow_phase_end_from_a_zero_second_layer():
    # a0 = 0 gives a0.a* = 0 (not > 0).  At phi_0 = 0 one a-step moves a toward a(0) = a*: a_1.a* > 0 at step 1.
    # At phi_0 = pi the a-target a_sp has a_sp.a* < 0 and phi never moves: never.
    p, k = 4, 3
    v = np.full(p, 0.5)
    a_star = np.array([1.0, -1.0, 0.5])
    kw = dict(model="resnet", k=k, p=p, runs=5, steps=200, schedule=Schedule.constant(1.0, 0.5), seed=1,
              init=Init(a_radius=0.0))
    good = sims.simulate(teacher=(v, a_star), **kw)
    np.testing.assert_array_equal(good.a0, 0.0)
    np.testing.assert_array_equal(good.slow_phase_end, 1)
    bad = sims.simulate(teacher=(-v, a_star), **kw)
    np.testing.assert_array_equal(bad.slow_phase_end, -1)
    assert set(bad.outcome) == {"spurious"}


def test_stop_reasons_are_consistent_with_the_final_state():
    tol = sims.Tolerances()
    k = 5
    runs = [
        _sim("cnn", k=k, p=6, runs=200, steps=4000, seed=9),  # loss_tol and trapped
        _sim("cnn", k=k, p=6, runs=50, steps=4, seed=9),  # max_steps
        _sim("resnet", k=k, p=6, runs=20, steps=4000, seed=9, allow_unstable=True,
             schedule=Schedule.constant(0.5, 2.0 * theory.max_stable_eta_a(k))),  # diverged
    ]
    seen = set()
    for res in runs:
        budget = res.settings["steps"]
        for r in range(len(res)):
            why = res.stop_reason[r]
            seen.add(why)
            if why == "loss_tol":
                assert res.final_loss[r] <= tol.loss_tol * res.loss_ref[r] and res.steps[r] <= budget
            elif why == "max_steps":
                assert res.steps[r] == budget
            elif why == "diverged":
                assert res.final_loss[r] > tol.divergence * res.loss_ref[r] and res.steps[r] < budget
            elif why == "trapped":
                assert res.steps[r] < budget and res.final_alignment[r] < 0 and res.outcome[r] == "spurious"
            elif why == "grad_tol":
                assert res.final_grad_norm[r] <= tol.grad_tol * math.sqrt(res.loss_ref[r])
            if why != "max_steps":
                assert res.steps[r] <= budget
    assert seen >= {"loss_tol", "trapped", "max_steps", "diverged"}


def test_settings_record_the_configuration():
    sched = Schedule.two_stage(10, 0.01, 0.2, 0.9, 0.3)
    res = _sim("cnn", k=3, p=4, runs=7, steps=50, schedule=sched, seed=5, run_offset=11)
    s = res.settings
    assert (s["model"], s["k"], s["p"], s["runs"], s["steps"], s["seed"], s["run_offset"]) == \
        ("cnn", 3, 4, 7, 50, 5, 11)
    assert s["schedule"]["type"] == "Schedule" and s["schedule"]["name"] == "two-stage"
    assert s["teacher"]["type"] == "Teacher" and s["init"]["w"] == "sphere"
    np.testing.assert_allclose(s["shortcut"], np.full(4, 0.5))
    np.testing.assert_array_equal(res.run_index, np.arange(11, 18))
    np.testing.assert_array_equal(res.warmup_steps, 10)
    np.testing.assert_array_equal(res.warmup_eta_w, 0.01)
