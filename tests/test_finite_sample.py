"""Finite-sample training (sims.engines.finite_sample): the Ziggurat normals, the minibatch gradient against the
closed-form
population gradient, SGD and GD-on-a-fixed-sample runs against population GD, overfitting, determinism, bad input.

Statistical tolerance: 4 standard errors of the mean, the SE computed from the per-draw values (fixed seeds, so
every test is deterministic).  Under the CLT a correct implementation exceeds 4 SE with probability 6e-5 per
component, i.e. about 0.01 expected exceedances over the ~150 components compared here; a wrong sign, a missing
projection or a factor 2 shows up as tens to hundreds of SE.  Components that are identically zero (the filter
gradient of a normalized model at p = 1) have SE 0, so an absolute slack of 1e-12 is added.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numba
import numpy as np
import pytest
from scipy import special, stats

import sims
import theory
from sims import Schedule, SimulationResult
from sims.engines import driver
from sims.engines import finite_sample as fs
from sims.engines import rng as srng
from sims.engines.rng import stream_states

N_SE = 4.0
ABS_SLACK = 1e-12
MODELS = ("resnet", "cnn", "cnn-unnormalized")
#: max |diff| / SE seen per check (printed with -s by test_report_agreement).
AGREEMENT: dict[str, float] = {}


def _unit(x):
    return x / np.linalg.norm(x)


def _problem(k: int, p: int, model: str, seed: int):
    """A point (w~, a), a teacher (w*, a*) and the shortcut v; w~ = w + v for the ResNet."""
    rng = np.random.default_rng(seed)
    w_star = _unit(rng.standard_normal(p))
    a_star = rng.standard_normal(k)
    a = rng.standard_normal(k)
    w = rng.standard_normal(p) * rng.uniform(0.5, 1.5) / math.sqrt(p)
    v = _unit(rng.standard_normal(p))
    wt = w + v if model == "resnet" else w
    return w, wt, a, w_star, a_star, v


def _draws(wt, a, w_star, a_star, *, model, batch_size, n, seed, sampler="full"):
    """``n`` independent minibatch gradients and losses: 2048 streams, each advanced n / 2048 times."""
    st = stream_states(seed, 0, 2048)
    parts = [fs.minibatch_gradient(wt, a, w_star, a_star, normalized=model != "cnn-unnormalized",
                                   batch_size=batch_size, states=st, sampler=sampler) for _ in range(n // 2048)]
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


def _within(name: str, mean, se, target) -> None:
    mean, se, target = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (mean, se, target))
    z = np.abs(mean - target) / np.maximum(se, 1e-300)
    z[np.abs(mean - target) <= ABS_SLACK] = 0.0
    AGREEMENT[name] = float(z.max())
    assert np.all(np.abs(mean - target) <= N_SE * se + ABS_SLACK), (name, mean, target, se, z)


# ---- the Ziggurat sampler -------------------------------------------------------------------------------------


def test_ziggurat_tables_are_consistent():
    """Every layer has the area v of the base strip: the top layer closes (x_1 (1 - f(x_1)) = v), and each layer
    i spans f(x_i) .. f(x_{i-1}) with width x_i."""
    x = srng.ZIG_WI * 2.0**52
    f = np.exp(-0.5 * x**2)
    v = srng.ZIG_V
    assert x[-1] == srng.ZIG_R
    assert x[0] * f[-1] == pytest.approx(v, rel=1e-15)  # base rectangle width v / f(r)
    areas = x[2:] * (f[1:-1] - f[2:])  # layers 2..255: width x_i, height f(x_{i-1}) - f(x_i)
    np.testing.assert_allclose(areas, v, rtol=1e-11)
    assert x[1] * (1.0 - f[1]) == pytest.approx(v, rel=1e-11)
    tail = math.sqrt(math.pi / 2) * math.erfc(srng.ZIG_R / math.sqrt(2))
    assert srng.ZIG_R * f[-1] + tail == pytest.approx(v, rel=1e-15)


def test_ziggurat_is_standard_normal():
    """2^22 draws: moments, a 256-bin chi-square against N(0, 1), and the tail beyond r (sampled separately)."""
    n = 2**22
    st = stream_states(3, 0, 1)[0].copy()
    z = np.empty(n)
    srng.fill_normal_zig(st, z)
    assert np.all(np.isfinite(z))
    _within("zig mean", z.mean(), 1.0 / math.sqrt(n), 0.0)
    _within("zig var", z.var(), math.sqrt(2.0 / n), 1.0)
    _within("zig 4th", (z**4).mean(), math.sqrt(96.0 / n), 3.0)
    _within("zig 3rd", (z**3).mean(), math.sqrt(15.0 / n), 0.0)
    edges = stats.norm.ppf(np.linspace(0.0, 1.0, 257))
    counts = np.histogram(z, bins=edges)[0]
    chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
    assert stats.chi2.sf(chi2, 255) > 1e-4, chi2
    p_tail = special.erfc(srng.ZIG_R / math.sqrt(2))
    k_tail = np.count_nonzero(np.abs(z) > srng.ZIG_R)
    _within("zig tail", k_tail / n, math.sqrt(p_tail * (1 - p_tail) / n), p_tail)
    # beyond r the values come from the exact tail sampler: P(|z| > x | |z| > r) = erfc(x / sqrt 2) / erfc(r / sqrt 2)
    t = np.abs(z[np.abs(z) > srng.ZIG_R])
    assert stats.kstest(t, lambda x: 1.0 - special.erfc(x / math.sqrt(2)) / p_tail).pvalue > 1e-4
    assert np.count_nonzero(z > srng.ZIG_R) > 0.4 * k_tail and np.count_nonzero(z < -srng.ZIG_R) > 0.4 * k_tail


def test_ziggurat_scalar_and_fill_agree():
    """The scalar-state generator and the array fill draw the same stream."""
    st = stream_states(5, 0, 1)[0].copy()
    a = np.empty(1000)
    srng.fill_normal_zig(st.copy(), a)

    @numba.njit
    def scalar(s, out):
        s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
        for i in range(out.shape[0]):
            out[i], s0, s1, s2, s3 = srng.zig_normal(s0, s1, s2, s3)

    b = np.empty(1000)
    scalar(st, b)
    assert np.array_equal(a, b)


# ---- the minibatch gradient and loss ----------------------------------------------------------------------------

GRAD_CASES = [(1, 4), (3, 1), (4, 3), (2, 6)]  # (k, p)


@pytest.mark.parametrize("sampler", ["full", "projected"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("k,p", GRAD_CASES)
def test_expected_minibatch_gradient_is_population_gradient(k, p, model, sampler):
    """Mean of 2^15 independent minibatch gradients (batch 8) = theory.population_gradient, per component."""
    w, wt, a, w_star, a_star, v = _problem(k, p, model, seed=10 * k + p)
    R = 2**15
    GW, GA, _ = _draws(wt, a, w_star, a_star, model=model, batch_size=8, n=R, seed=11 + k * p, sampler=sampler)
    gw, ga = theory.population_gradient(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=v)
    G = np.column_stack([GW, GA])
    _within(f"grad {model} {sampler} k={k} p={p}", G.mean(0), G.std(0, ddof=1) / math.sqrt(R), np.concatenate([gw, ga]))
    if model != "cnn-unnormalized":  # the filter gradient of a normalized model is orthogonal to w~
        assert np.allclose(GW @ wt, 0.0, atol=1e-12 * (1 + np.abs(GW).max()))


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["full", "projected"])
@pytest.mark.parametrize("model", MODELS)
def test_expected_minibatch_gradient_large_patches(model, sampler):
    """The benchmark size (k, p) = (16, 16), batch 64: 2^15 minibatches (2^21 inputs) per model and sampler."""
    k = p = 16
    w, wt, a, w_star, a_star, v = _problem(k, p, model, seed=1616)
    R = 2**15
    GW, GA, LE = _draws(wt, a, w_star, a_star, model=model, batch_size=64, n=R, seed=99, sampler=sampler)
    gw, ga = theory.population_gradient(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=v)
    L = theory.population_loss(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=v)
    G = np.column_stack([GW, GA, LE])
    _within(f"grad+loss {model} {sampler} k=16 p=16", G.mean(0), G.std(0, ddof=1) / math.sqrt(R),
            np.concatenate([gw, ga, [L]]))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("k,p", [(1, 1), (5, 4)])
def test_minibatch_loss_is_unbiased_for_population_loss(k, p, model):
    """The loss of a large minibatch (4096 inputs), averaged over 256 minibatches, = theory.population_loss."""
    w, wt, a, w_star, a_star, v = _problem(k, p, model, seed=100 + k)
    R = 256
    _, _, LE = fs.minibatch_gradient(wt, a, w_star, a_star, normalized=model != "cnn-unnormalized", batch_size=4096,
                                     states=stream_states(17, 0, R))
    L = theory.population_loss(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=v)
    _within(f"loss {model} k={k} p={p}", LE.mean(), LE.std(ddof=1) / math.sqrt(R), L)
    assert np.all(LE > 0)


@pytest.mark.parametrize("model", ["resnet", "cnn-unnormalized"])
def test_projected_sampler_has_the_law_of_the_full_one(model):
    """Not only the mean: every second moment E[g_i g_j] of the minibatch gradient g = (grad_w, grad_a) agrees
    between the full and the projected sampler (two-sample test, 4 SE of the difference)."""
    k, p = 3, 5
    w, wt, a, w_star, a_star, v = _problem(k, p, model, seed=7)
    R = 2**15
    out = {}
    for i, sampler in enumerate(("full", "projected")):
        GW, GA, _ = _draws(wt, a, w_star, a_star, model=model, batch_size=4, n=R, seed=40 + i, sampler=sampler)
        G = np.column_stack([GW, GA])
        iu = np.triu_indices(G.shape[1])
        M = (G[:, :, None] * G[:, None, :])[:, iu[0], iu[1]]
        out[sampler] = (M.mean(0), M.std(0, ddof=1) / math.sqrt(R))
    (m1, s1), (m2, s2) = out["full"], out["projected"]
    _within(f"second moments {model}", m1 - m2, np.hypot(s1, s2), 0.0)


def test_minibatch_gradient_at_the_global_minimum_vanishes():
    """The teacher is realizable: at (w*, a*) every residual is 0, so every minibatch gradient is exactly 0
    (which is why SGD converges linearly here, to the tolerance, without decaying the step)."""
    w_star = _unit(np.arange(1.0, 5.0))
    a_star = np.array([1.0, -0.5, 2.0])
    for sampler in ("full", "projected"):
        GW, GA, LE = fs.minibatch_gradient(2.5 * w_star, a_star, w_star, a_star, normalized=True, batch_size=16,
                                           states=stream_states(0, 0, 8), sampler=sampler)
        assert np.abs(GW).max() < 1e-14 and np.abs(GA).max() < 1e-14 and LE.max() < 1e-28


# ---- runs against population GD ---------------------------------------------------------------------------------

K, P = 4, 5
W_STAR = _unit(np.array([0.3, -1.2, 0.5, 0.9, 0.2]))
A_STAR = np.ones(K)  # 1^T a* > 0 with no spurious minimum: every GD run converges
SCHED = Schedule.constant(0.2, 0.2)


def _sim(algorithm, batch_size=None, *, runs=8, steps=600, seed=2, model="resnet", **kw):
    return sims.simulate(model=model, k=K, p=P, runs=runs, steps=steps, schedule=kw.pop("schedule", SCHED),
                         teacher=(W_STAR, A_STAR), algorithm=algorithm, batch_size=batch_size, seed=seed,
                         n_record=40, **kw)


def _log_loss_gap(res, ref):
    """rms and max over recorded steps (both runs still going) of |log L_res - log L_ref|, and max |phi gap|."""
    ok = ~np.isnan(res.trajectory[:, :, 0]) & ~np.isnan(ref.trajectory[:, :, 0])
    d = np.abs(np.log(res.trajectory[:, :, 0]) - np.log(ref.trajectory[:, :, 0]))[ok]
    dphi = np.abs(res.trajectory[:, :, 1] - ref.trajectory[:, :, 1])[ok]
    return float(np.sqrt(np.mean(d**2))), float(d.max()), float(dphi.max())


@pytest.mark.parametrize("model", MODELS)
def test_sgd_small_step_converges_to_the_global_minimum(model):
    """Online SGD, batch 4, small steps: every run reaches the loss tolerance (1e-10 L_ref), i.e. the population
    loss falls by ~10 orders of magnitude; the end state is classified global."""
    sched = Schedule.constant(0.1, 0.1)
    res = _sim("sgd", 4, model=model, schedule=sched, steps=5000)
    L0 = res.trajectory[:, 0, 0]
    assert np.all(res.stop_reason == "loss_tol"), res.stop_reason
    assert np.all(res.outcome == "global")
    assert np.all(res.final_loss <= 1e-10 * res.loss_ref)
    assert np.all(L0 / res.final_loss > 1e8)
    assert np.all(np.isfinite(res.w)) and np.all(np.isfinite(res.a))
    # slow_phase_end and steps_to_tol are recorded as for population GD
    assert np.all(res.steps_to_tol > 0) and np.all(res.steps_to_tol < res.steps)


def test_large_batch_sgd_tracks_population_gd():
    """Same seed, hence same init: SGD's population-loss trajectory follows population GD's, with a gap that shrinks
    like 1/sqrt(batch) (the minibatch gradient is the population gradient plus noise of std ~ 1/sqrt(B)).

    Measured (8 runs, ~150 steps to 1e-10): rms |log L_sgd - log L_gd| = 0.16 at B = 256 and 0.05 at B = 4096
    (ratio ~3-4 for sqrt(16) = 4).  Tolerances: 3x the measured gap at B = 4096, and the ratio in [2, 8]."""
    gd = _sim("gd")
    assert np.all(gd.stop_reason == "loss_tol")
    small = _sim("sgd", 256)
    large = _sim("sgd", 4096)
    rms_s, _, _ = _log_loss_gap(small, gd)
    rms_l, max_l, phi_l = _log_loss_gap(large, gd)
    assert np.array_equal(large.a0, gd.a0) and np.array_equal(large.w0, gd.w0)
    assert rms_l < 0.15 and max_l < 0.75 and phi_l < 0.25, (rms_l, max_l, phi_l)
    assert 2.0 < rms_s / rms_l < 8.0, (rms_s, rms_l)
    assert np.all(large.stop_reason == "loss_tol")
    assert np.all(np.abs(large.steps / gd.steps - 1.0) < 0.03), (large.steps, gd.steps)
    np.testing.assert_allclose(large.final_alignment, gd.final_alignment, rtol=1e-3)


def test_gd_on_a_huge_training_set_tracks_population_gd():
    """GD on one fixed sample of 32768 inputs: the empirical loss has the same global minimum (the teacher is
    realizable) and a gradient within ~1/sqrt(n) of the population one, so the trajectory follows population GD.
    Measured rms log-loss gap 0.08 (0.28 at n = 4096: the gap of a fixed sample is systematic, it does not average
    out over steps as SGD's does); tolerance 3x."""
    gd = _sim("gd")
    fixed = _sim("gd-fixed", 32768)
    rms, mx, dphi = _log_loss_gap(fixed, gd)
    assert rms < 0.25 and mx < 1.2 and dphi < 0.15, (rms, mx, dphi)
    assert np.all(fixed.stop_reason == "loss_tol")
    assert np.all(np.abs(fixed.steps / gd.steps - 1.0) < 0.06), (fixed.steps, gd.steps)


def _kernel(algorithm, batch_size, WT, A, steps, eta, states, *, sampler="full", normalized=True,
            divergence=1e8, rec=None):
    """Call finite_sample.run directly (the states are ours, so the training set can be regenerated)."""
    R = WT.shape[0]
    rec = sims.record_steps(steps, 32) if rec is None else rec
    out = driver.make_outputs(R, rec.size)
    prob = driver.Problem(W_STAR[None], A_STAR[None], np.array([-1.0]), np.array([[steps]]), np.array([[eta]]),
                          np.array([[eta]]), np.zeros(1), np.zeros(1), 1.0, states, rec, np.array([1e-4, 1e-6, 1e-9]))
    stops = driver.Stops(steps, 1e-10, 1e-10, 1e-6, divergence, False)
    fs.run(algorithm, batch_size, WT, A, prob, stops, out, normalized=normalized, sampler=sampler)
    return out


def test_gd_on_a_tiny_training_set_overfits():
    """Two training inputs, 9 parameters: GD drives the training loss to ~0 while the population loss stays at the
    level of the zero network's.  (A few runs stall at a training loss of ~0.4 L_ref, where the ReLU pattern of
    the two inputs leaves no descent direction; at least half interpolate.)"""
    R, n = 8, 2
    L_ref = (A_STAR.sum() ** 2 + (math.pi - 1) * A_STAR @ A_STAR) / (4 * math.pi)
    v = np.ones(P) / math.sqrt(P)
    WT = np.repeat(v[None], R, axis=0)
    A = np.random.default_rng(3).standard_normal((R, K)) * 0.5
    st0 = stream_states(7, 0, R)
    st = st0.copy()
    train0 = fs.training_loss(WT, A, W_STAR, A_STAR, normalized=True, batch_size=n, states=st0)
    out = _kernel("gd-fixed", n, WT, A, 20000, 0.2, st)
    train = fs.training_loss(WT, A, W_STAR, A_STAR, normalized=True, batch_size=n, states=st0)
    pop = out.final[:, 0]
    fit = train < 1e-12 * L_ref
    assert fit.sum() >= R // 2, train / L_ref
    assert np.all(train <= train0 + 1e-12)
    assert np.all(pop[fit] > 0.3 * L_ref), pop / L_ref  # far from the global minimum (loss 0)
    assert np.all(out.stop_reason == driver.STOP_MAX_STEPS)


def test_gd_fixed_training_loss_helper_matches_the_kernel_sample():
    """The helper regenerates the kernel's training set: at a point where the kernel stopped at once (steps = 0)
    the training loss of a large set estimates the population loss; and the helper does not advance the streams."""
    R, n = 4, 20000
    WT = np.repeat(_unit(np.ones(P))[None], R, axis=0)
    A = np.full((R, K), 0.3)
    st0 = stream_states(9, 0, R)
    before = st0.copy()
    tr = fs.training_loss(WT, A, W_STAR, A_STAR, normalized=True, batch_size=n, states=st0)
    assert np.array_equal(st0, before)
    L = theory.population_loss(WT[0], A[0], w_star=W_STAR, a_star=A_STAR, model="cnn")
    assert np.all(np.abs(tr / L - 1) < 0.05)
    st = st0.copy()
    _kernel("gd-fixed", n, WT.copy(), A.copy(), 0, 0.1, st)
    assert not np.array_equal(st, st0)  # the kernel drew its training set from the streams


def test_projected_sgd_run_converges_like_full_sgd():
    R = 6
    v = np.ones(P) / math.sqrt(P)
    res = {}
    for sampler in ("full", "projected"):
        WT = np.repeat(v[None], R, axis=0)
        A = np.zeros((R, K))
        res[sampler] = _kernel("sgd", 2048, WT, A, 1000, 0.2, stream_states(1, 0, R), sampler=sampler)
    assert np.all(res["projected"].stop_reason == driver.STOP_LOSS)
    s_full, s_proj = res["full"].stop_step, res["projected"].stop_step
    assert abs(s_proj.mean() / s_full.mean() - 1) < 0.03, (s_full, s_proj)


# ---- stops, divergence, no NaN ------------------------------------------------------------------------------------


def test_divergence_stops_without_nan():
    """eta_a far above the stability limit: the loss grows geometrically and the run stops "diverged" with finite
    outputs, both at the threshold (1e8 L_ref) and when the threshold is out of reach (the step that overflows is
    rolled back: the run reports its last finite state)."""
    for divergence in (1e8, 1e300):
        R = 3
        WT = np.repeat(_unit(np.ones(P))[None], R, axis=0)
        A = np.ones((R, K))
        out = _kernel("sgd", 8, WT, A, 100000, 5.0, stream_states(0, 0, R), divergence=divergence)
        assert np.all(out.stop_reason == driver.STOP_DIVERGED)
        assert np.all(np.isfinite(out.final)) and np.all(np.isfinite(WT)) and np.all(np.isfinite(A))
        assert np.all(np.isfinite(out.rate_pts))
        for r in range(R):
            rec = sims.record_steps(100000, 32)
            done = rec <= out.stop_step[r]
            assert np.all(np.isfinite(out.traj[r, done])) and np.all(np.isnan(out.traj[r, ~done]))
        if divergence > 1e200:
            assert np.all(out.final[:, 0] > 1e100)


def test_sgd_never_stops_trapped_and_grad_tol_is_population():
    """A teacher with a spurious minimum, random CNN starts (some in the spurious basin): SGD never stops "trapped"
    (its stop reasons are only loss_tol, grad_tol, diverged, max_steps), and final_grad_norm is the closed-form
    population gradient norm at the final state."""
    a_star = np.array([1.0, -1.0, 0.5, -0.5])
    assert theory.spurious_exists(a_star)
    res = sims.simulate(model="cnn", k=K, p=P, runs=6, steps=300, schedule=Schedule.constant(0.5, 0.5),
                        teacher=(W_STAR, a_star), algorithm="sgd", batch_size=16, seed=4, n_record=10)
    assert set(res.stop_reason) <= {"loss_tol", "grad_tol", "diverged", "max_steps"}
    assert np.all(np.isfinite(res.final_grad_norm))
    for r in range(6):
        gw, ga = theory.population_gradient(res.w[r], res.a[r], w_star=W_STAR, a_star=a_star, model="cnn")
        g = math.hypot(np.linalg.norm(gw), np.linalg.norm(ga))
        assert res.final_grad_norm[r] == pytest.approx(g, rel=1e-6, abs=1e-9)


# ---- determinism ----------------------------------------------------------------------------------------------


def _assert_same(x: SimulationResult, y: SimulationResult) -> None:
    for f in fields(SimulationResult):
        if f.name in ("settings", "extras"):
            continue
        a, b = getattr(x, f.name), getattr(y, f.name)
        nan_ok = np.issubdtype(np.asarray(a).dtype, np.floating)
        assert np.array_equal(a, b, equal_nan=nan_ok), f.name


DET_CASES = {
    "sgd-resnet": dict(algorithm="sgd", batch_size=16, model="resnet"),
    "sgd-cnn-perturbed": dict(algorithm="sgd", batch_size=5, model="cnn",
                              schedule=Schedule.perturbed(0.3, 0.3, noise=0.01, half_life=50)),
    "gd-fixed-unnormalized": dict(algorithm="gd-fixed", batch_size=33, model="cnn-unnormalized",
                                  schedule=Schedule.constant(0.05, 0.2)),
}


@pytest.mark.parametrize("case", list(DET_CASES))
def test_deterministic_across_threads_and_run_splits(case):
    kw = dict(DET_CASES[case])
    algorithm, batch_size = kw.pop("algorithm"), kw.pop("batch_size")
    common = dict(k=K, p=P, steps=400, schedule=kw.pop("schedule", SCHED), teacher=sims.Teacher(), seed=13,
                  n_record=30, algorithm=algorithm, batch_size=batch_size, **kw)
    whole = sims.simulate(runs=6, **common)
    parts = SimulationResult.concat([sims.simulate(runs=3, run_offset=0, **common),
                                     sims.simulate(runs=3, run_offset=3, **common)])
    _assert_same(whole, parts)
    if numba.config.NUMBA_NUM_THREADS >= 2:
        one = sims.simulate(runs=6, threads=1, **common)
        two = sims.simulate(runs=6, threads=2, **common)
        _assert_same(one, two)
        _assert_same(one, whole)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("sampler", ["full", "projected"])
def test_kernel_deterministic_across_threads(sampler):
    """Direct kernel calls (this also covers the projected sampler, which simulate does not expose)."""
    R = 5
    outs = []
    for threads in (1, 2):
        WT = np.repeat(_unit(np.ones(P))[None], R, axis=0)
        A = np.full((R, K), 0.2)
        st = stream_states(8, 0, R)
        old = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            out = _kernel("sgd", 7, WT, A, 300, 0.2, st, sampler=sampler)
        finally:
            numba.set_num_threads(old)
        outs.append((WT, A, st, out))
    (W1, A1, s1, o1), (W2, A2, s2, o2) = outs
    assert np.array_equal(W1, W2) and np.array_equal(A1, A2) and np.array_equal(s1, s2)
    for key, x1 in o1._asdict().items():
        assert np.array_equal(x1, getattr(o2, key), equal_nan=True), key


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sgd", "gd-fixed"])
@pytest.mark.parametrize("batch_size", [None, 0, -3, 2.5, True])
def test_bad_batch_size(algorithm, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        sims.simulate(model="resnet", k=2, p=3, runs=1, steps=5, schedule=SCHED, algorithm=algorithm,
                      batch_size=batch_size)


def test_bad_direct_input():
    R = 2
    WT = np.ones((R, P))
    A = np.ones((R, K))
    with pytest.raises(ValueError, match="batch_size"):
        _kernel("sgd", 0, WT, A, 5, 0.1, stream_states(0, 0, R))
    with pytest.raises(ValueError, match="sampler"):
        _kernel("gd-fixed", 4, WT, A, 5, 0.1, stream_states(0, 0, R), sampler="projected")
    with pytest.raises(ValueError, match="sampler"):
        _kernel("sgd", 4, WT, A, 5, 0.1, stream_states(0, 0, R), sampler="sobol")
    with pytest.raises(ValueError, match="WT"):
        _kernel("sgd", 4, np.zeros((R, P)), A, 5, 0.1, stream_states(0, 0, R))
    bad = A.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="A must be finite"):
        _kernel("sgd", 4, WT, bad, 5, 0.1, stream_states(0, 0, R))
    with pytest.raises(ValueError, match="batch_size"):
        _kernel("gd-fixed", 10**9, WT, A, 5, 0.1, stream_states(0, 0, R))


def test_report_agreement(capsys):
    """Print the worst agreement (in SE) of the statistical checks that ran (visible with -s)."""
    with capsys.disabled():
        if AGREEMENT:
            worst = max(AGREEMENT.items(), key=lambda kv: kv[1])
            print(f"\nfinite-sample statistical checks: {len(AGREEMENT)}, worst |diff|/SE = {worst[1]:.2f} "
                  f"({worst[0]})")
