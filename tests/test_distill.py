"""Residual distillation (sims.methods.distill, theory.fading): folding the shortcut into a plain CNN, the
fading-shortcut
kernel against a step-by-step reference built on the theory's gradients, determinism, bad input, and the
comparison table."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sims
import theory
from sims import Fade, Init, Schedule, Teacher
from sims.methods import distill
from theory import fading

K, P = 4, 5


def _teacher(seed=0, k=K, p=P):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(p)
    a = rng.standard_normal(k)
    return w / np.linalg.norm(w), a


# ---- folding ---------------------------------------------------------------------------------------------------
def test_folded_cnn_computes_the_resnet_function_and_loss():
    rng = np.random.default_rng(1)
    w_star, a_star = _teacher(1)
    w, a = rng.standard_normal(P), rng.standard_normal(K)
    shortcut = 3.0 * rng.standard_normal(P)  # not unit: the ResNet uses its direction v = shortcut / ||shortcut||
    w_cnn, a_cnn = sims.fold_shortcut(w, a, shortcut=shortcut)
    Z = rng.standard_normal((2000, K, P))
    f_res = distill.network_output(Z, w, a, model="resnet", shortcut=shortcut)
    f_cnn = distill.network_output(Z, w_cnn, a_cnn, model="cnn")
    # Both compute sum_j a_j relu(u.Z_j) with the same u up to rounding of the normalization (|f| ~ 10).
    np.testing.assert_allclose(f_cnn, f_res, rtol=0, atol=1e-12)
    # Negative control: deploying the ResNet's w without folding is a different function.
    assert np.max(np.abs(distill.network_output(Z, w, a, model="cnn") - f_res)) > 1e-2
    L_res = theory.population_loss(w, a, w_star=w_star, a_star=a_star, model="resnet", shortcut=shortcut)
    L_cnn = theory.population_loss(w_cnn, a_cnn, w_star=w_star, a_star=a_star, model="cnn")
    assert L_cnn == pytest.approx(L_res, rel=1e-12, abs=1e-14)
    # The default shortcut is 1_p / sqrt(p).
    w_def, _ = sims.fold_shortcut(w, a)
    np.testing.assert_allclose(w_def, w + 1.0 / math.sqrt(P), rtol=0, atol=1e-15)


def test_folding_a_trained_resnet_batch_keeps_its_final_loss():
    res = sims.simulate(model="resnet", k=K, p=P, runs=6, steps=400, schedule=Schedule.constant(0.25, 0.5), seed=3)
    W, A = sims.fold_shortcut(res.w, res.a)
    assert W.shape == res.w.shape and A.shape == res.a.shape
    for r in range(len(res)):
        L = theory.population_loss(W[r], A[r], w_star=res.w_star[r], a_star=res.a_star[r], model="cnn")
        # The kernel evaluates the same closed form from accumulated invariants: agreement to rounding (1e-12 L_ref).
        assert abs(L - res.final_loss[r]) <= 1e-12 * res.loss_ref[r]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(w=np.zeros((2, 3, 4)), a=np.ones(2)), r"^w must be a 1-D filter"),
        (dict(w=np.ones((2, 3)), a=np.ones((3, 2))), r"^w and a must hold the same number of runs"),
        (dict(w=[np.nan, 1.0], a=[1.0]), r"^w and a must be finite"),
        (dict(w=-np.ones(4) / 2.0, a=[1.0]), r"folded CNN filter has no direction"),
        (dict(w=np.ones(3), a=[1.0], shortcut=np.zeros(3)), r"^shortcut must be a nonzero vector"),
    ],
)
def test_fold_shortcut_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sims.fold_shortcut(kwargs.pop("w"), kwargs.pop("a"), **kwargs)


# ---- theory.fading ---------------------------------------------------------------------------------------------
def test_fading_gradient_and_dloss_dlam_match_finite_differences():
    rng = np.random.default_rng(5)
    w_star, a_star = _teacher(5)
    w, a, lam = rng.standard_normal(P), rng.standard_normal(K), 0.37
    kw = dict(w_star=w_star, a_star=a_star)
    gw, ga = fading.fading_gradient(w, a, lam, **kw)
    h = 1e-6  # central differences: error ~ h^2 |L'''| ~ 1e-12, rounding ~ 1e-16 / h = 1e-10
    fd_w = [(fading.fading_loss(w + h * e, a, lam, **kw) - fading.fading_loss(w - h * e, a, lam, **kw)) / (2 * h)
            for e in np.eye(P)]
    fd_a = [(fading.fading_loss(w, a + h * e, lam, **kw) - fading.fading_loss(w, a - h * e, lam, **kw)) / (2 * h)
            for e in np.eye(K)]
    np.testing.assert_allclose(gw, fd_w, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ga, fd_a, rtol=0, atol=1e-8)
    fd_lam = (fading.fading_loss(w, a, lam + h, **kw) - fading.fading_loss(w, a, lam - h, **kw)) / (2 * h)
    assert fading.fading_dloss_dlam(w, a, lam, **kw) == pytest.approx(fd_lam, abs=1e-8)
    # lam = 1 is the ResNet, lam = 0 the CNN.
    assert fading.fading_loss(w, a, 1.0, **kw) == theory.population_loss(w, a, model="resnet", **kw)
    assert fading.fading_loss(w, a, 0.0, **kw) == theory.population_loss(w, a, model="cnn", **kw)


# ---- fade schedules --------------------------------------------------------------------------------------------
def test_fade_lambdas():
    lin = Fade("linear", steps=4).lambdas()
    np.testing.assert_array_equal(lin, [1.0, 0.75, 0.5, 0.25, 0.0])
    cos = Fade("cosine", steps=4).lambdas()
    np.testing.assert_allclose(cos, [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4),
                                     0.0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(Fade("step", steps=3).lambdas(), [1.0, 1.0, 1.0, 0.0])
    custom = Fade.custom([1.0, 0.9, 0.9, 0.2, 0.0])
    assert custom.steps == 4 and custom.label == "fade-custom-T4"
    np.testing.assert_array_equal(custom.lambdas(), [1.0, 0.9, 0.9, 0.2, 0.0])
    assert Fade("linear", 500).label == "fade-linear-T500"


FADE_CASES = [
    (lambda: Fade.custom([1.0, 0.5, 0.1]), r"^fade\.values must end at 0"),
    (lambda: Fade.custom([1.0, 0.0, 0.3, 0.0]), r"^fade\.values must be monotone non-increasing"),
    (lambda: Fade.custom([1.0, 0.4, 0.6, 0.0]), r"^fade\.values must be monotone non-increasing.*values\[1\]"),
    (lambda: Fade.custom([0.5, 0.0]), r"^fade\.values must start at 1"),
    (lambda: Fade.custom([1.0]), r"^fade\.values must be a 1-D sequence"),
    (lambda: Fade.custom([1.0, math.nan, 0.0]), r"^fade\.values must be finite"),
    (lambda: Fade("custom"), r"^fade\.values is required"),
    (lambda: Fade("custom", steps=5, values=(1.0, 0.0)), r"^fade\.steps must equal len\(fade\.values\) - 1"),
    (lambda: Fade("exponential", steps=10), r"^fade\.kind must be one of"),
    (lambda: Fade("linear"), r"^fade\.steps must be an integer >= 1"),
    (lambda: Fade("cosine", steps=0), r"^fade\.steps must be an integer >= 1"),
    (lambda: Fade("step", steps=2.5), r"^fade\.steps must be an integer >= 1"),
    (lambda: Fade("linear", steps=10, values=(1.0, 0.0)), r"^fade\.values is only for"),
]


@pytest.mark.parametrize(("make", "match"), FADE_CASES)
def test_bad_fade_raises_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _fading_kw(**over):
    kw = dict(k=K, p=P, runs=3, steps=50, schedule=Schedule.constant(0.2, 0.5), fade=Fade("linear", 20), seed=0)
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"fade": Fade("linear", 51)}, r"^fade\.steps = 51 must be <= steps = 50"),
        ({"fade": "linear"}, r"^fade must be a sims\.Fade"),
        ({"init": Init(w="sphere", a="oops")}, r"^init\.a must be one of"),
        ({"runs": 0}, r"^runs must be an integer >= 1"),
        ({"n_record": 1}, r"^n_record must be an integer \[2, 100000\]"),
        ({"schedule": Schedule.constant(0.1, 5.0)}, r"^eta_a = 5 exceeds the stability limit"),
        ({"schedule": "constant"}, r"^schedule must be a sims\.Schedule"),
        ({"threads": 0}, r"^threads must be an integer"),
        ({"teacher": (np.ones(P) / math.sqrt(P), np.ones(K + 1))}, r"^teacher \(w_star, a_star\) must have lengths"),
    ],
)
def test_simulate_fading_bad_input(over, match):
    with pytest.raises(ValueError, match=match):
        sims.simulate_fading(**_fading_kw(**over))


# ---- the kernel against a reference loop on theory.fading's gradients ----------------------------------------
def _reference(w0, a0, w_star, a_star, lam, steps, eta):
    """Plain GD on w with the loss L_cnn(w + lam_t v, a), gradients from theory.fading (no fused algebra)."""
    w, a = w0.copy(), a0.copy()
    v = np.full(w.size, 1.0 / math.sqrt(w.size))
    out = []
    for t in range(steps + 1):
        lt = lam[t] if t < lam.size else 0.0
        out.append((fading.fading_loss(w, a, lt, w_star=w_star, a_star=a_star),
                    theory.angle(w + lt * v, w_star=w_star, model="cnn")))
        if t == steps:
            break
        ew, ea = eta(t)
        gw, ga = fading.fading_gradient(w, a, lt, w_star=w_star, a_star=a_star, shortcut=v)
        w, a = w - ew * gw, a - ea * ga
    return w, a, np.array(out)


@pytest.mark.parametrize("fade", [Fade("linear", 60), Fade("cosine", 90), Fade("step", 40),
                                  Fade.custom(np.r_[np.ones(10), np.linspace(1.0, 0.0, 31)])])
def test_kernel_matches_the_reference_loop(fade):
    steps, T1 = 120, 25
    schedule = Schedule.two_stage(T1, 0.02, 0.3, 0.1, 0.3)  # slow enough that no run reaches loss 0 in 120 steps
    no_stop = sims.Tolerances(loss_tol=0.0, grad_tol=0.0, stop_trapped=False)
    res = sims.simulate_fading(k=K, p=P, runs=4, steps=steps, schedule=schedule, fade=fade, seed=11,
                               tolerances=no_stop, n_record=40)
    assert np.all(res.steps == steps) and np.all(res.stop_reason == "max_steps")
    rec = res.trajectory_steps
    lam = fade.lambdas()
    for r in range(len(res)):
        w, a, traj = _reference(res.w0[r], res.a0[r], res.w_star[r], res.a_star[r], lam, steps,
                                lambda t: (0.02, 0.3) if t < T1 else (0.1, 0.3))
        # Same arithmetic up to the kernel's fused invariants: rounding differences of 1e-16 grow mildly over 120
        # contracting steps; 1e-10 leaves four orders of magnitude of margin and catches any missing jump
        # (a jump is of size |lambda_{t+1} - lambda_t| >= 1/90).
        np.testing.assert_allclose(res.w[r], w, rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.a[r], a, rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.trajectory[r, :, 0], traj[rec, 0], rtol=1e-9, atol=1e-12)
        # The engine takes sin(phi) from ||w*||^2 ||w~||^2 - (w~.w*)^2 (sims.engines.gd), which near phi = 0 is
        # exact only to sqrt(2^-52) ~ 1.5e-8 in absolute terms; away from 0 the agreement is ~1e-12.
        np.testing.assert_allclose(res.trajectory[r, :, 1], traj[rec, 1], rtol=0, atol=5e-8)
        assert res.final_loss[r] == pytest.approx(traj[-1, 0], rel=1e-9, abs=1e-12)
        t0 = fade.steps
        assert res.extras["fade_end_loss"][r] == pytest.approx(traj[t0, 0], rel=1e-9, abs=1e-12)


def test_step_fade_is_the_resnet_until_the_shortcut_is_removed():
    T = 60
    no_stop = sims.Tolerances(loss_tol=0.0, grad_tol=0.0, stop_trapped=False)
    kw = dict(k=K, p=P, runs=5, schedule=Schedule.constant(0.3, 0.6), seed=4, tolerances=no_stop)
    fade = sims.simulate_fading(steps=T, fade=Fade("step", T), n_record=16, **kw)
    resnet = sims.simulate(model="resnet", steps=T, n_record=16, **kw)
    np.testing.assert_array_equal(fade.trajectory_steps, resnet.trajectory_steps)
    # Paired draws: same teachers and initializations run by run.
    for name in ("w0", "a0", "w_star", "a_star"):
        np.testing.assert_array_equal(getattr(fade, name), getattr(resnet, name))
    # Identical updates (the jump is 0 while lambda = 1); both kernels round alike up to fused multiply-adds.
    # (Columns: loss, phi, a.a*, ||a - a*||; phi near 0 is resolved only to ~1.5e-8, see the reference-loop test.)
    cols = [0, 2, 3]
    np.testing.assert_allclose(fade.trajectory[:, :-1, cols], resnet.trajectory[:, :-1, cols], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fade.trajectory[:, :-1, 1], resnet.trajectory[:, :-1, 1], rtol=1e-12, atol=5e-8)
    # At T the filter jumps from w + v to w: the loss changes.
    assert fade.trajectory_steps[-1] == T
    assert np.all(np.abs(fade.trajectory[:, -1, 0] - resnet.trajectory[:, -1, 0]) > 1e-6)


def test_deployed_cnn_is_what_the_result_reports():
    res = sims.simulate_fading(k=K, p=P, runs=20, steps=3000, schedule=distill.liu_two_stage(K),
                               fade=Fade("cosine", 300), teacher=Teacher(require_spurious=True), seed=2)
    assert set(res.stop_reason) <= {"loss_tol", "grad_tol", "trapped", "max_steps"}
    assert np.all(res.steps >= 300)  # never stops while the shortcut is still there
    for r in range(len(res)):
        L = theory.population_loss(res.w[r], res.a[r], w_star=res.w_star[r], a_star=res.a_star[r], model="cnn")
        assert abs(L - res.final_loss[r]) <= 1e-12 * res.loss_ref[r]
        phi = theory.angle(res.w[r], w_star=res.w_star[r], model="cnn")
        assert phi == pytest.approx(res.final_phi[r], abs=1e-7)
    reached = res.steps_to_tol[res.steps_to_tol >= 0]
    assert np.all(reached >= 300)  # steps_to_tol counts the deployable network only


def test_no_spurious_teacher_always_converges():
    # a* = 1_k has no spurious point (SCIENCE.md 3): the plain CNN at the end of the fade must reach the minimum.
    res = sims.simulate_fading(k=K, p=P, runs=40, steps=3000, schedule=Schedule.constant(0.25, 0.9),
                               fade=Fade("linear", 200), teacher=Teacher(a="ones"), seed=9)
    assert res.counts()["global"] == 40


# ---- determinism -----------------------------------------------------------------------------------------------
def _assert_same(r1, r2):
    for name in ("outcome", "stop_reason", "steps", "final_loss", "final_phi", "steps_to_tol", "slow_phase_end",
                 "w", "a", "w0", "a0", "w_star", "a_star"):
        np.testing.assert_array_equal(getattr(r1, name), getattr(r2, name), err_msg=name)
    np.testing.assert_array_equal(r1.trajectory, r2.trajectory)
    for key in r1.extras:
        np.testing.assert_array_equal(r1.extras[key], r2.extras[key], err_msg=key)


def test_threads_and_run_splits_are_bit_identical():
    sched = Schedule.perturbed(0.2, 0.5, noise=0.01, half_life=50.0)  # noise exercises the per-run streams
    kw = dict(k=K, p=P, steps=300, schedule=sched, fade=Fade("cosine", 100), seed=7, n_record=16)
    full1 = sims.simulate_fading(runs=10, threads=1, **kw)
    full2 = sims.simulate_fading(runs=10, threads=2, **kw)
    _assert_same(full1, full2)
    parts = [sims.simulate_fading(runs=4, run_offset=0, **kw), sims.simulate_fading(runs=6, run_offset=4, **kw)]
    _assert_same(full1, sims.SimulationResult.concat(parts))


# ---- comparison ------------------------------------------------------------------------------------------------
def test_compare_table():
    df = distill.compare(cells=[(4, 4)], fades=[Fade("linear", 100), Fade("step", 100)], trials=40, steps=1500, seed=1)
    assert list(df["method"]) == ["resnet", "cnn", "fade-linear-T100", "fade-step-T100"]
    for col in ("k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious", "steps_to_tol_median"):
        assert col in df.columns
    assert (df["trials"] == 40).all() and (df["k"] == 4).all() and (df["p"] == 4).all()
    assert ((df["p_global_lo"] <= df["p_global"]) & (df["p_global"] <= df["p_global_hi"])).all()
    lo, hi = sims.runs.classify.wilson(int(round(df["p_global"].iloc[1] * 40)), 40)
    assert df["p_global_lo"].iloc[1] == pytest.approx(lo) and df["p_global_hi"].iloc[1] == pytest.approx(hi)
    assert df["p_same_outcome_as_resnet"].iloc[0] == 1.0
    with pytest.raises(ValueError, match=r"^fades must hold sims\.Fade"):
        distill.compare(cells=[(4, 4)], fades=["linear"], trials=2, steps=10)


@pytest.mark.slow
def test_fading_keeps_the_resnet_success_rate():
    # 400 paired trials at k = p = 16 with teachers that have a spurious point: the fade must do as well as the
    # ResNet (measured: the same outcome in >= 99% of runs) and clearly better than the CNN (about 60%).
    df = distill.compare(cells=[(16, 16)], fades=[Fade("linear", 500), Fade("step", 500)], trials=400, steps=4000,
                         seed=5)
    rows = df.set_index("method")
    for label in ("fade-linear-T500", "fade-step-T500"):
        assert rows.loc[label, "p_same_outcome_as_resnet"] >= 0.97
        assert rows.loc[label, "p_global_lo"] > rows.loc["cnn", "p_global_hi"]
