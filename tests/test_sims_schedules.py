"""Step-size schedules (SCIENCE.md 4; sims.runs.schedules): what each constructor resolves to, that the kernel applies
each segment on exactly its steps, the perturbed (noisy) schedule, and the theory-prescribed warmup's bound.

Segment boundaries are checked with every step recorded (``n_record`` large enough that ``record_steps`` is
``0, 1, ..., steps``), so an off-by-one in where a stage ends cannot hide between recorded points.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sims
import theory
from sims import Schedule, Segment, Teacher
from sims.runs.schedules import G_BOUND, _steps_to_contract, optimal_eta_a, prescribed_warmup_steps

K, P = 5, 6
ETA_A = 0.5 * theory.max_stable_eta_a(K)
FULL = 100_000  # n_record: record every step of runs up to a few thousand steps


def _sim(schedule, *, steps, runs=30, model="cnn", seed=1, n_record=FULL, k=K, p=P, **kw):
    return sims.simulate(model=model, k=k, p=p, runs=runs, steps=steps, schedule=schedule, seed=seed,
                         n_record=n_record, tolerances=sims.Tolerances(stop_trapped=False), **kw)


def _per_run_arrays(res):
    return {name: getattr(res, name) for name in ("outcome", "stop_reason", "steps", "final_loss", "final_phi",
                                                  "final_alignment", "w", "a", "trajectory", "slow_phase_end",
                                                  "steps_to_tol")}


def _assert_same_runs(r1, r2):
    for name, x in _per_run_arrays(r1).items():
        y = getattr(r2, name)
        eq = np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
        assert eq, name


def test_resolved_arrays_of_each_constructor():
    c = Schedule.constant(0.3, 0.7).resolve(100, runs=4)
    np.testing.assert_array_equal(c.seg_end, [[100]])
    np.testing.assert_array_equal(c.eta_w, [[0.3]])
    np.testing.assert_array_equal(c.eta_a, [[0.7]])
    two = Schedule.two_stage(40, 0.01, 0.5, 1.0, 0.6).resolve(100, runs=4)
    np.testing.assert_array_equal(two.seg_end, [[40, 100]])
    np.testing.assert_array_equal(two.eta_w, [[0.01, 1.0]])
    np.testing.assert_array_equal(two.eta_a, [[0.5, 0.6]])
    lw = Schedule.layerwise(40, 0.5, 1.0, 0.6)
    assert lw.name == "layerwise" and lw.segments[0].eta_w == 0.0
    pw = Schedule.piecewise([(10, 0.1, 0.2), (20, 0.0, 0.3), Segment(None, 0.5, 0.4)]).resolve(100, runs=2)
    np.testing.assert_array_equal(pw.seg_end, [[10, 30, 100]])
    np.testing.assert_array_equal(pw.eta_w, [[0.1, 0.0, 0.5]])
    pert = Schedule.perturbed(0.5, 0.4, noise=0.2, half_life=100)
    assert pert.noise_decay ** 100 == pytest.approx(0.5, rel=1e-12)  # the noise std halves every half_life steps
    np.testing.assert_array_equal(pert.resolve(10, runs=1).noise_w, [0.2])
    np.testing.assert_array_equal(pert.resolve(10, runs=1).noise_a, [0.2])
    assert Schedule.perturbed(0.5, 0.4, noise=0.2).noise_decay == 1.0  # half_life = inf: no annealing
    assert Schedule.perturbed(0.5, 0.4, noise=0.2, noise_a=0.0).segments[0].noise_a == 0.0
    assert Schedule.constant(0.1, 0.1).stage_one_steps == 0
    assert Schedule.two_stage(40, 0.1, 0.1, 0.1, 0.1).stage_one_steps == 40


def test_two_stage_with_equal_stages_is_the_constant_schedule():
    const = _sim(Schedule.constant(0.8, ETA_A), steps=600)
    for T1 in (0, 1, 37, 600):
        _assert_same_runs(const, _sim(Schedule.two_stage(T1, 0.8, ETA_A, 0.8, ETA_A), steps=600))
    _assert_same_runs(const, _sim(Schedule.piecewise([(100, 0.8, ETA_A), (50, 0.8, ETA_A), (None, 0.8, ETA_A)]),
                                  steps=600))


def test_two_stage_uses_stage_one_for_exactly_t1_steps():
    T1 = 25
    two = _sim(Schedule.two_stage(T1, 0.05, 0.3, 1.0, ETA_A), steps=400)
    stage1 = _sim(Schedule.constant(0.05, 0.3), steps=400)
    stage2 = _sim(Schedule.constant(1.0, ETA_A), steps=400)
    assert np.array_equal(two.trajectory_steps, np.arange(401))
    # Steps 0..T1 are reached with stage-I step sizes only: identical to the constant stage-I run there.
    np.testing.assert_array_equal(two.trajectory[:, : T1 + 1], stage1.trajectory[:, : T1 + 1])
    # Step T1 + 1 is the first one taken with the stage-II sizes.
    assert np.all(two.trajectory[:, T1 + 1, 0] != stage1.trajectory[:, T1 + 1, 0])
    assert not np.array_equal(two.trajectory[:, 1], stage2.trajectory[:, 1])
    np.testing.assert_array_equal(two.warmup_steps, T1)
    np.testing.assert_array_equal(two.warmup_eta_w, 0.05)


@pytest.mark.parametrize("model", ["resnet", "cnn"])
def test_layerwise_freezes_the_filter_during_stage_one(model):
    T1 = 60
    res = _sim(Schedule.layerwise(T1, ETA_A, 1.0, ETA_A), steps=300, model=model,
               teacher=Teacher(require_spurious=True))
    phi = res.trajectory[:, :, 1]
    # eta_w = 0 makes the filter update the identity (w~ <- 1 * w~ + 0 * w*): phi is bit-identical for t <= T1 ...
    np.testing.assert_array_equal(phi[:, : T1 + 1], np.repeat(phi[:, :1], T1 + 1, axis=1))
    # ... while a trains (alignment and distance to a* change) ...
    assert np.all(res.trajectory[:, T1, 3] != res.trajectory[:, 0, 3])
    # ... and the filter moves from the first stage-II step on (phi_0 = 0 only for w* = v, not drawn here).
    alive = res.steps > T1
    assert alive.sum() >= 0.9 * len(res)
    assert np.all(phi[alive, T1 + 1] != phi[alive, T1])


def test_piecewise_frozen_middle_segment_freezes_everything():
    res = _sim(Schedule.piecewise([(30, 0.5, ETA_A), (40, 0.0, 0.0), (None, 0.5, ETA_A)]), steps=300)
    tr = res.trajectory
    alive = res.steps > 70
    assert alive.sum() >= 0.9 * len(res)
    # Steps 31..70 use (0, 0): the state is that of step 30 throughout, so every recorded column repeats.
    np.testing.assert_array_equal(tr[alive, 30:71], np.repeat(tr[alive, 30:31], 41, axis=1))
    assert np.all(tr[alive, 29, 0] != tr[alive, 30, 0])  # moving before ...
    assert np.all(tr[alive, 71, 0] != tr[alive, 70, 0])  # ... and after


def test_perturbed_noise_changes_the_run_and_is_reproducible():
    sched = Schedule.perturbed(1.0, ETA_A, noise=0.05, half_life=100)
    a = _sim(sched, steps=1500, seed=9)
    b = _sim(sched, steps=1500, seed=9)
    _assert_same_runs(a, b)  # same seed: bit-identical, noise included
    c = _sim(sched, steps=1500, seed=10)
    assert not np.array_equal(a.a0, c.a0)
    clean = _sim(Schedule.constant(1.0, ETA_A), steps=1500, seed=9, engine="vector")  # the noisy run's engine
    np.testing.assert_array_equal(a.trajectory[:, 0], clean.trajectory[:, 0])  # same teachers and starts
    assert np.all(a.trajectory[:, 1, 0] != clean.trajectory[:, 1, 0])  # the noise acts from the first step
    assert not np.array_equal(a.final_loss, clean.final_loss)
    assert "trapped" not in set(a.stop_reason)  # the trapped proof assumes noise-free GD: disabled with noise
    # Annealing: with half-life 100 the noise is 0.05 * 2^-15 by step 1500, so runs still converge to loss_tol.
    assert a.counts()["global"] >= 0.5 * len(a)
    assert set(a.stop_reason[a.outcome == "global"]) <= {"loss_tol", "max_steps"}


def test_perturbed_noise_escapes_the_spurious_start():
    # w* = -v: the ResNet starts exactly at phi = pi, where noise-free GD can never move the filter (grad_w = 0).
    # Annealed noise kicks it off: a sizeable fraction reaches the global minimum (measured 91 / 200).
    k, p = 4, 8
    v = np.full(p, 1.0 / math.sqrt(p))
    a_star = np.array([1.0, -1.0, 0.5, 0.2])
    eta_a = 0.5 * theory.max_stable_eta_a(k)
    kw = dict(model="resnet", k=k, p=p, runs=200, steps=30000, teacher=(-v, a_star), seed=2)
    clean = sims.simulate(schedule=Schedule.constant(1.0, eta_a), **kw)
    noisy = sims.simulate(schedule=Schedule.perturbed(1.0, eta_a, noise=0.3, half_life=500), **kw)
    assert clean.counts()["spurious"] == 200
    # Binomial(200, 0.45) is below 60 with probability < 1e-5; the seed is fixed anyway.
    assert noisy.counts()["global"] >= 60


# ---- the theory-prescribed warmup --------------------------------------------------------------------------
WARM_CASES = [(2, 2), (8, 8), (16, 16), (3, 50), (32, 128), (128, 32)]


@pytest.mark.parametrize(("k", "p"), WARM_CASES)
def test_prescribed_warmup_resolves_positive_finite_stage_one(k, p):
    eta_a = 0.5 * theory.max_stable_eta_a(k)
    res = sims.simulate(model="resnet", k=k, p=p, runs=200, steps=10**6, n_record=2,
                        schedule=Schedule.prescribed_warmup(1.0, eta_a), teacher=Teacher(require_spurious=True),
                        seed=3)
    assert np.all(res.warmup_steps > 0) and np.all(res.warmup_steps < 10**6)
    assert np.all(np.isfinite(res.warmup_eta_w)) and np.all(res.warmup_eta_w > 0)
    # Same numbers from the public helper (what simulate() passes it: phi_0, ||w~_0||, a0, a*).
    v = np.full(p, 1.0 / math.sqrt(p))
    phi0 = np.arccos(np.clip(res.w_star @ v, -1, 1))
    T1, ew, ok = prescribed_warmup_steps(phi0=phi0, norm0=np.ones(200), a0=res.a0, a_star=res.a_star)
    assert ok.all()
    np.testing.assert_array_equal(T1, res.warmup_steps)
    np.testing.assert_allclose(ew, res.warmup_eta_w, rtol=1e-9)  # phi_0 via arccos vs the kernel's atan2


def _per_run_warmup(*, phi0, norm0, a0, a_star, eta_a_warmup=None):
    """The prescribed warmup run by run with the theory's scalar functions (scipy's brentq for the saddle angle):
    the definition the vectorized :func:`prescribed_warmup_steps` must reproduce bit for bit."""
    R, k = a0.shape
    pm1 = theory.m_eigenvalues(k)[1]
    eta_a = optimal_eta_a(k) if eta_a_warmup is None else eta_a_warmup
    r_a = max(abs(1.0 - eta_a * lam) for lam in theory.a_hessian_eigenvalues(k)[: 1 if k == 1 else 2])
    T1, ew, ok = np.zeros(R, dtype=np.int64), np.zeros(R), np.zeros(R, dtype=bool)
    for r in range(R):
        ast = a_star[r if a_star.shape[0] > 1 else 0]
        nst = float(np.linalg.norm(ast))
        phi_s = theory.saddle_angle(ast)
        phi_s = math.pi if phi_s is None else phi_s
        if nst == 0.0:
            T1[r], ew[r], ok[r] = 0, 0.0, True
            continue
        e0 = float(np.linalg.norm(a0[r] - theory.optimal_a(float(phi0[r]), ast)))
        if phi0[r] >= phi_s:
            T1[r], ew[r], ok[r] = 2 * _steps_to_contract(2.0 * e0 * nst, 1.0, r_a) + 10, 0.0, False
            continue
        phi_max = 0.5 * (float(phi0[r]) + phi_s)
        p_min = theory.alignment_at(phi_max, ast)
        delta_cap = p_min / 4.0 / nst * pm1 * (1.0 - r_a) / (G_BOUND * nst)
        A = abs(ast.sum()) * math.sqrt(k) / pm1 + nst + e0 + p_min / (4.0 * nst)
        t_plus = _steps_to_contract(2.0 * e0 * nst, p_min, r_a)
        if t_plus > 0:
            delta_cap = min(delta_cap, (phi_max - float(phi0[r])) / t_plus)
        ew[r] = delta_cap * 2.0 * math.pi * norm0[r] ** 2 / (G_BOUND * nst * A)
        T1[r], ok[r] = 2 * t_plus + 10, True
    return T1, ew, ok


@pytest.mark.parametrize("k", [1, 2, 3, 4, 16, 64, 128])
def test_vectorized_prescribed_warmup_is_the_per_run_definition_bit_for_bit(k):
    # Random teachers (most with a saddle), teachers on the edge of the spurious point's existence (saddle angle
    # near pi: the series branch of the root), 1.a* = 0 (phi_s = pi/2), a zero teacher; starts on both sides of
    # the saddle angle, norms over orders of magnitude; per-run and shared teachers; default and given eta_a.
    rng = np.random.default_rng(100 + k)
    R = 600
    A = rng.standard_normal((R, k)) * 10.0 ** rng.uniform(-3, 3, (R, 1))
    if k > 1:
        B = A[: R // 4] - A[: R // 4].mean(axis=1, keepdims=True)
        kk = k + math.pi - 1
        c = np.sqrt(kk * np.sum(B * B, axis=1) / (math.pi * k * k - kk * k))
        c *= 1 - 10.0 ** rng.uniform(-14, -1, R // 4)
        A[: R // 4] = B + c[:, None]
        A[R // 4] -= A[R // 4].mean()
    A[R // 4 + 1] = 0.0
    phi0 = rng.uniform(0.0, math.pi, R)
    norm0 = 10.0 ** rng.uniform(-2, 2, R)
    a0 = rng.standard_normal((R, k)) * np.linalg.norm(A, axis=1, keepdims=True) / math.sqrt(k)
    for a_star in (A, A[R // 2 : R // 2 + 1]):
        for warm in (None, 0.5 * theory.max_stable_eta_a(k)):
            kw = dict(phi0=phi0, norm0=norm0, a0=a0, a_star=a_star, eta_a_warmup=warm)
            got, want = prescribed_warmup_steps(**kw), _per_run_warmup(**kw)
            for g, w in zip(got, want, strict=True):
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w)
            if k > 1 and a_star is A:  # both sides of the saddle angle were exercised (k = 1 has no saddle)
                assert (~got[2]).any() and got[2].any()


@pytest.mark.parametrize(("k", "p"), WARM_CASES)
def test_prescribed_warmup_keeps_its_bound_during_stage_one(k, p):
    """The module docstring's claims, step by step over Stage I: phi stays below phi_max = (phi_0 + phi_s) / 2, and
    a.a* >= P_min / 4 > 0 from t_+ = (T1 - 10) / 2 on (so the slow phase ends by t_+)."""
    eta_a = 0.5 * theory.max_stable_eta_a(k)
    kw = dict(model="resnet", k=k, p=p, runs=100, schedule=Schedule.prescribed_warmup(1.0, eta_a),
              teacher=Teacher(require_spurious=True), seed=4)
    T1 = sims.simulate(steps=10**6, n_record=2, **kw).warmup_steps
    # Run exactly Stage I (T1 = min(T1, steps) leaves every run's T1 unchanged) with every step recorded.
    res = sims.simulate(steps=int(T1.max()), n_record=FULL, **kw)
    np.testing.assert_array_equal(res.warmup_steps, T1)
    assert np.array_equal(res.trajectory_steps, np.arange(T1.max() + 1))
    for r in range(len(res)):
        tr = res.trajectory[r, : T1[r] + 1]
        phi0 = tr[0, 1]
        phi_s = theory.saddle_angle(res.a_star[r])
        phi_max = 0.5 * (phi0 + phi_s)
        assert np.all(tr[:, 1] < phi_max)
        t_plus = (T1[r] - 10) // 2
        p_min = theory.alignment_at(phi_max, res.a_star[r])
        assert np.all(tr[t_plus:, 2] >= p_min / 4.0)
        assert 0 <= res.slow_phase_end[r] <= t_plus


def test_prescribed_warmup_stage_two_and_safety():
    kw = dict(model="resnet", k=6, p=6, runs=50, steps=5000, teacher=Teacher(require_spurious=True), seed=5)
    full = sims.simulate(schedule=Schedule.prescribed_warmup(0.9, 0.4), **kw)
    half = sims.simulate(schedule=Schedule.prescribed_warmup(0.9, 0.4, safety=0.5), **kw)
    np.testing.assert_array_equal(half.warmup_steps, full.warmup_steps)
    np.testing.assert_allclose(half.warmup_eta_w, 0.5 * full.warmup_eta_w, rtol=1e-15)
    # Stage I's eta_a defaults to the fastest-contracting step 4 pi / (k + 2 pi - 2), Stage II is the caller's.
    sched = Schedule.prescribed_warmup(0.9, 0.4)
    phi0 = np.full(3, 1.0)
    a_star = np.tile([1.0, -1.0, 0.5, 0.3, -0.2, 0.1], (3, 1))
    rs = sched.resolve(1000, runs=3, phi0=phi0, norm0=np.ones(3), a0=np.zeros((3, 6)), a_star=a_star)
    np.testing.assert_array_equal(rs.eta_a[:, 0], optimal_eta_a(6))
    np.testing.assert_array_equal(rs.eta_a[:, 1], 0.4)
    np.testing.assert_array_equal(rs.eta_w[:, 1], 0.9)
    np.testing.assert_array_equal(rs.seg_end[:, 1], 1000)
    assert rs.guaranteed.all()
    assert optimal_eta_a(6) == pytest.approx(4 * math.pi / (6 + 2 * math.pi - 2), rel=1e-15)
    assert optimal_eta_a(1) == 2.0


def test_prescribed_warmup_without_guarantee_freezes_the_filter():
    # A start beyond the saddle angle (possible for the CNN): no warmup can help; eta_w^I = 0, guaranteed False.
    a_star = np.array([[1.0, -1.0, 0.5]])
    phi_s = theory.saddle_angle(a_star[0])
    phi0 = np.array([phi_s - 0.1, phi_s + 0.1])
    rs = Schedule.prescribed_warmup(1.0, 0.5).resolve(10**6, runs=2, phi0=phi0, norm0=np.ones(2),
                                                      a0=np.zeros((2, 3)), a_star=a_star)
    np.testing.assert_array_equal(rs.guaranteed, [True, False])
    assert rs.warmup_eta_w[0] > 0 and rs.warmup_eta_w[1] == 0.0
    assert np.all(rs.warmup_steps >= 10)
    # The step budget caps T1.
    capped = Schedule.prescribed_warmup(1.0, 0.5).resolve(3, runs=2, phi0=phi0, norm0=np.ones(2),
                                                          a0=np.zeros((2, 3)), a_star=a_star)
    np.testing.assert_array_equal(capped.warmup_steps, np.minimum(rs.warmup_steps, 3))


def test_the_bounds_constants_come_from_the_theory():
    """The warmup bound's G is an upper bound of max (pi - phi) sin(phi) within 3e-8 (kept at its historical value
    for bit-identical results); the a-contraction uses the a-Hessian's eigenvalues."""
    from sims.runs import schedules

    assert theory.G_MAX <= schedules.G_BOUND <= theory.G_MAX * (1 + 3e-8)
    for k in (1, 2, 7):
        lam1, lam_perp = theory.a_hessian_eigenvalues(k)
        eta = optimal_eta_a(k)
        expected = abs(1 - eta * lam1) if k == 1 else max(abs(1 - eta * lam1), abs(1 - eta * lam_perp))
        assert schedules._a_contraction(eta, k) == expected
        if k > 1:  # the optimal step equalizes the two modes' contraction
            assert abs(1 - eta * lam1) == pytest.approx(abs(1 - eta * lam_perp), rel=1e-14)
