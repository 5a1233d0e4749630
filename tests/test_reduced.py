"""The order-parameter engine (``engine="reduced"``, :mod:`sims.engines.reduced`) against the full-coordinate
engine (``engine="vector"``) and the theory.

- one step of the map equals one step of the vector engine to rounding, for all three models;
- over 10^4 steps the trajectories agree to 1e-9 on a random sample of configurations of all three models (the
  loss relative to ``L_ref``, the angle in radians, ``a.a*`` relative to ``||a*||^2``, ``||a - a*||`` relative to
  ``||a*||``: relative to each quantity's natural scale, because near the minimum the vector engine's own loss
  and angle carry absolute rounding errors of about 1e-16 L_ref and 1e-16 / phi -- the reduced engine resolves
  them, the vector engine does not);
- on the default ``liu2019`` cells every run ends in the same outcome (slow; the whole table is compared in the
  closing note of the issue);
- near the minimum the reduced engine resolves losses down to 1e-20 ``L_ref`` and its fitted rate matches the
  Hessian's;
- forcing it where it does not apply is a ``ValueError`` naming the field.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sims
import theory
from sims.studies import sweep, tables

MODELS = ("resnet", "cnn", "cnn-unnormalized")


def _schedule(model: str, k: int) -> sims.Schedule:
    eta_a = 0.5 * theory.max_stable_eta_a(k)
    if model == "cnn-unnormalized":  # steps small against ||w||, so the filter never jumps through the origin
        return sims.Schedule.constant(0.02 / k, eta_a)
    return sims.Schedule.two_stage(100, 0.001 / k, eta_a, 0.5 / k, eta_a)


def _pair(**kw):
    return sims.simulate(engine="vector", **kw), sims.simulate(engine="reduced", **kw)


@pytest.mark.parametrize("model", MODELS)
def test_one_step_of_the_map_is_one_step_of_the_vector_engine(model):
    """After one step the rebuilt vectors equal the vector engine's to rounding (1e-14 of their scale)."""
    sched = sims.Schedule.constant(0.3 / 7, 0.5 * theory.max_stable_eta_a(7))
    v, r = _pair(model=model, k=7, p=5, runs=50, steps=1, schedule=sched, seed=3)
    assert np.abs(v.w - r.w).max() <= 1e-14 * max(1.0, np.abs(v.w).max())
    assert np.abs(v.a - r.a).max() <= 1e-14 * max(1.0, np.abs(v.a).max())
    np.testing.assert_allclose(r.final_loss, v.final_loss, rtol=1e-13)


def test_noisy_schedules_run_on_the_vector_engine_by_default():
    """``simulate(algorithm="gd")`` runs the reduced engine for noise-free schedules and the vector engine for
    noisy ones: a perturbed schedule gives exactly the vector engine's result."""
    kw = dict(model="cnn", k=4, p=4, runs=20, steps=200, seed=5,
              schedule=sims.Schedule.perturbed(0.05, 0.2, noise=0.01))
    auto = sims.simulate(**kw)
    vec = sims.simulate(engine="vector", **kw)
    np.testing.assert_array_equal(auto.final_loss, vec.final_loss)
    np.testing.assert_array_equal(auto.w, vec.w)


@pytest.mark.parametrize("model", MODELS)
def test_trajectories_agree_over_ten_thousand_steps(model):
    rng = np.random.default_rng({"resnet": 1, "cnn": 2, "cnn-unnormalized": 3}[model])
    for _ in range(3):
        k, p = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        kw = dict(model=model, k=k, p=p, runs=40, steps=10_000, schedule=_schedule(model, k),
                  seed=int(rng.integers(1000)), n_record=128)
        if model != "resnet":
            kw["init"] = sims.Init(w="sphere")
        v, r = _pair(**kw)
        np.testing.assert_array_equal(v.outcome, r.outcome)
        lref = v.loss_ref[:, None]
        qs = np.linalg.norm(v.a_star, axis=1)[:, None]
        both = np.isfinite(v.trajectory[..., 0]) & np.isfinite(r.trajectory[..., 0])
        d = np.abs(v.trajectory - r.trajectory)
        for f, scale in enumerate((lref, 1.0, qs**2, qs)):
            err = np.where(both, d[..., f] / scale, 0.0)
            if f == 1:  # the vector engine's angle is sqrt(||w*||^2 ||w~||^2 - (w~.w*)^2)-based: error ~ eps / phi
                err = np.where(v.trajectory[..., 1] > 1e-4, err, 0.0)
                small = both & (v.trajectory[..., 1] <= 1e-4)
                assert np.all(r.trajectory[..., 1][small] <= 2e-4)
            assert err.max() <= 1e-9, (model, k, p, f, err.max())


@pytest.mark.slow
def test_liu2019_cells_end_in_the_same_outcome_on_both_engines():
    """Every run of the default ``liu2019`` table (45 cells of 1,000 runs): identical outcomes and stop reasons."""
    spec = tables.spec("liu2019")
    for cell in spec.cells:
        kw = sweep.simulation_kwargs_fast(cell.params)
        kw.pop("engine")
        v, r = _pair(**kw, runs=spec.trials, seed=spec.seed)
        np.testing.assert_array_equal(v.outcome, r.outcome, err_msg=f"{cell.method} {cell.params['k']}")
        np.testing.assert_array_equal(v.stop_reason, r.stop_reason)


def test_losses_far_below_the_vector_engines_rounding_are_resolved():
    """Run the ResNet to 1e-20 L_ref: the loss keeps falling geometrically (the vector engine's loss, a difference
    of O(1) terms, is resolved only to about 1e-16 L_ref), and the rate fitted between 1e-12 and 1e-18 L_ref is
    the Hessian's within 1%."""
    tol = sims.Tolerances(loss_tol=1e-20, grad_tol=0.0, eps=1e-20, rate_window=(1e-12, 1e-15, 1e-18))
    kw = dict(model="resnet", k=6, p=6, runs=40, steps=40_000, schedule=_schedule("resnet", 6), seed=4,
              tolerances=tol)
    r = sims.simulate(engine="reduced", **kw)
    ok = r.outcome == "global"
    assert ok.sum() >= 35
    assert np.all(r.stop_reason[ok] == "loss_tol")
    assert np.all(r.final_loss[ok] <= 1e-20 * r.loss_ref[ok])
    # between 1e-12 and 1e-18 L_ref every run is deep in the asymptotic regime: its rate is the Hessian's
    np.testing.assert_allclose(r.fitted_rate[ok], r.theory_rate[ok], rtol=0.01)


@pytest.mark.parametrize("bad, field", [
    (dict(algorithm="sgd", batch_size=8), "algorithm"),
    (dict(schedule=sims.Schedule.perturbed(0.05, 0.2, noise=0.01)), "schedule"),
])
def test_forcing_the_reduced_engine_where_it_does_not_apply_names_the_field(bad, field):
    kw = dict(model="resnet", k=4, p=4, runs=2, steps=10, schedule=_schedule("resnet", 4), engine="reduced")
    kw.update(bad)
    with pytest.raises(ValueError, match=field):
        sims.simulate(**kw)


def test_the_map_is_the_generated_closed_form_at_the_teacher():
    """At ``a = a*``, ``phi = 0`` the deviation forms vanish exactly; at a random point they equal the raw ones."""
    from theory import closed_forms as cf

    assert cf.deviation_loss(1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.3, 2.9) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        rho, phi = rng.uniform(0.5, 2), rng.uniform(0, math.pi)
        S, Q, P, Ss = rng.normal(size=4)
        Q, Qs = abs(Q) + P * P, abs(rng.normal()) + Ss * Ss
        c, s = math.cos(phi), math.sin(phi)
        dev = (rho * S - Ss, rho * P - Qs, rho * rho * Q - 2 * rho * P + Qs)
        got = cf.deviation_loss(rho, phi, c, s, 1 - c, *dev, Ss, Qs)
        assert got == pytest.approx(cf.loss(rho, phi, c, s, S, Q, P, Ss, Qs), rel=1e-12, abs=1e-12)
    from theory import order_parameters

    assert all(order_parameters.proofs().values())


@pytest.mark.parametrize("kind", ["linear", "cosine", "step"])
def test_the_fading_shortcut_on_the_order_parameters_is_the_vector_engines(kind):
    """The fading shortcut in span{w~0, v, w*}: the same outcomes, stops and fade-end losses as the vector engine
    (gentle steps, so that the dynamics does not amplify rounding: 1e-9 of L_ref)."""
    kw = dict(k=8, p=8, runs=100, steps=3000, schedule=sims.Schedule.two_stage(100, 1e-4, 0.3, 0.005, 0.3), seed=3,
              n_record=64)
    v = sims.simulate_fading(fade=sims.Fade(kind, steps=500, engine="vector"), **kw)
    r = sims.simulate_fading(fade=sims.Fade(kind, steps=500), **kw)
    np.testing.assert_array_equal(v.outcome, r.outcome)
    np.testing.assert_array_equal(v.stop_reason, r.stop_reason)
    err = np.abs(v.extras["fade_end_loss"] - r.extras["fade_end_loss"]) / v.loss_ref
    assert np.nanmax(err) <= 1e-9
    np.testing.assert_allclose(r.w, v.w, atol=1e-9)


def test_runs_are_independent_of_their_lane():
    """Each run's result is the same whatever lane of the lockstep block it ran in and whoever ran beside it:
    one call of 300 runs against single runs at their offsets, and against 2 threads."""
    kw = dict(model="cnn", k=5, p=9, steps=4000, schedule=_schedule("cnn", 5), seed=8, init=sims.Init(w="sphere"))
    whole = sims.simulate(runs=300, threads=1, **kw)
    two = sims.simulate(runs=300, threads=2, **kw)
    for f in ("final_loss", "final_phi", "steps", "w", "a", "trajectory"):
        np.testing.assert_array_equal(getattr(whole, f), getattr(two, f))
    for r in (0, 63, 64, 65, 199, 299):
        one = sims.simulate(runs=1, run_offset=r, threads=1, **kw)
        np.testing.assert_array_equal(one.trajectory[0], whole.trajectory[r])
        np.testing.assert_array_equal(one.w[0], whole.w[r])


def test_the_lockstep_kernels_carry_their_llvm_attributes_and_these_change_no_bit():
    """The lockstep entry points compile with :data:`sims.engines.attributes.WidePipeline` (512-bit vectors where
    the CPU has them) and the scalar step and lane start with :data:`~sims.engines.attributes.WideInlinePipeline`
    (inlined by LLVM), and the attributes change no bit: the reduced engine's angle (square roots, a division, the
    branch-free arctangent) over 4,096 lanes, compiled with and without them, is the same array."""
    from numba import njit

    from sims.engines import attributes, reduced

    assert attributes.WidePipeline is not None and attributes.WideInlinePipeline is not None
    for entry in (reduced.run_range, reduced.run_range_unnormalized, reduced.run_range_fading):
        assert entry._compiler.pipeline_class is attributes.WidePipeline
        helpers = entry.py_func.__globals__
        for name in ("_scalar_step", "_start_lane"):
            assert helpers[name]._compiler.pipeline_class is attributes.WideInlinePipeline
        assert helpers["_vector_pass"]._compiler.pipeline_class is attributes.WidePipeline

    def lanes(u, r1, out):
        for i in range(u.size):
            inv_n, phi, c, s, omc = reduced._angle(u[i], r1[i], 0.0, True)
            out[0, i], out[1, i], out[2, i], out[3, i], out[4, i] = inv_n, phi, c, s, omc

    rng = np.random.default_rng(5)
    u = rng.standard_normal(4096) * np.exp(rng.uniform(-30, 30, 4096))
    r1 = np.abs(rng.standard_normal(4096)) * np.exp(rng.uniform(-30, 30, 4096))
    plain = np.empty((5, 4096))
    njit(fastmath={"arcp"})(lanes)(u, r1, plain)
    for inline, attrs in ((False, (attributes.WIDE,)), (True, (attributes.WIDE, "alwaysinline"))):
        kernel = njit(fastmath={"arcp"}, **attributes.options(inline=inline))(lanes)
        out = np.empty((5, 4096))
        kernel(u, r1, out)
        assert np.array_equal(out, plain)
        ir = next(iter(kernel.inspect_llvm().values()))
        assert all(a in ir for a in attrs)
