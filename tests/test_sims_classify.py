"""Outcome classification against the theory's fixed points (SCIENCE.md 3; sims.runs.classify).

Two halves: ``sims.runs.classify.classify`` on final states constructed at (and near) ``theory.global_minimum``,
``theory.spurious_minimum`` and ``theory.saddle_point``, just inside and just outside each tolerance; and end-to-end
runs whose outcome the theory fixes (a start at the spurious point stays there, ``a* = 1`` has no spurious point,
a step size above the stability limit diverges, too few steps do not converge).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sims
import theory
from sims import Schedule, Teacher
from sims.engines import closed_forms as _cf
from sims.engines import driver
from sims.runs import classify as clf

TOL = clf.Neighborhoods()
LOSS_TOL = sims.Tolerances().loss_tol

# Teachers with a spurious point (one with 1.a* = 0, so phi_s = pi/2 exactly) and without (a* = 1, a large mean).
SPURIOUS_TEACHERS = [np.array([1.0, -1.0]), np.array([1.0, -1.0, 0.5]), np.array([0.3, -1.2, 0.8, 0.1, -0.4])]
NO_SPURIOUS_TEACHERS = [np.ones(3), np.array([2.0, 1.0, 1.5, 0.5]), np.array([-0.7])]


def _w_star(p, seed=0):
    x = np.random.default_rng(seed).standard_normal(p)
    return x / np.linalg.norm(x)


def _loss_ref(a_star):
    return (a_star.sum() ** 2 + (math.pi - 1.0) * a_star @ a_star) / (4.0 * math.pi)


def _classify(w, a, w_star, a_star, *, model="resnet", stop=driver.STOP_MAX_STEPS, loss=None):
    """The outcome name ``classify`` gives the final state ``(w, a)`` (loss and angle from the theory)."""
    kw = {"w_star": w_star, "a_star": a_star, "model": model}
    L = theory.population_loss(w, a, **kw) if loss is None else loss
    phi = theory.angle(w, w_star=w_star, model=model)
    scale = np.linalg.norm(w) if model == "cnn-unnormalized" else 1.0
    code = clf.classify(final_loss=np.array([L]), final_phi=np.array([phi]), a=np.asarray(a, float)[None, :],
                      a_star=a_star[None, :], scale=np.array([scale]), stop_reason=np.array([stop]),
                      loss_ref=np.array([_loss_ref(a_star)]), loss_tol=LOSS_TOL)
    return clf.OUTCOMES[code[0]]


def _at_angle(phi, w_star, model, scale=1.0):
    return theory.filter_at_angle(phi, w_star, model=model, scale=scale)


MODELS = ["resnet", "cnn", "cnn-unnormalized"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("a_star", SPURIOUS_TEACHERS + NO_SPURIOUS_TEACHERS, ids=lambda a: f"k{a.size}")
def test_global_minimum_and_its_neighbourhood(model, a_star):
    w_star = _w_star(5)
    w, a = theory.global_minimum(w_star, a_star, model=model)
    assert _classify(w, a, w_star, a_star, model=model) == "global"
    if model != "cnn-unnormalized":  # normalized: the whole ray w~ = lambda w* is a global minimum
        assert _classify(_at_angle(0.0, w_star, model, scale=3.7), a, w_star, a_star, model=model) == "global"
    else:  # unnormalized: (c w*, a* / c) computes the same function
        assert _classify(2.5 * w_star, a_star / 2.5, w_star, a_star, model=model) == "global"
    nst = np.linalg.norm(a_star)
    e = np.random.default_rng(1).standard_normal(a_star.size)
    e /= np.linalg.norm(e)
    # Within angle_tol and a_rtol ||a*||: global by proximity although the loss is far above loss_tol L_ref.
    w_in = _at_angle(0.5 * TOL.angle_tol, w_star, model)
    assert theory.population_loss(w_in, a, w_star=w_star, a_star=a_star, model=model) > 1e3 * LOSS_TOL * \
        _loss_ref(a_star)
    assert _classify(w_in, a + 0.5 * TOL.a_rtol * nst * e, w_star, a_star, model=model) == "global"
    # Twice the tolerance in either the angle or a: no longer global (nor near any other fixed point).
    assert _classify(_at_angle(2 * TOL.angle_tol, w_star, model), a, w_star, a_star, model=model) == "not_converged"
    assert _classify(w, a + 2 * TOL.a_rtol * nst * e, w_star, a_star, model=model) == "not_converged"
    # A loss at or below loss_tol L_ref is global whatever the distance says (the loss is 0 only at the minima).
    far = _at_angle(1.0, w_star, model)
    assert _classify(far, a, w_star, a_star, model=model, loss=LOSS_TOL * _loss_ref(a_star)) == "global"
    assert _classify(far, a, w_star, a_star, model=model, loss=2 * LOSS_TOL * _loss_ref(a_star)) == "not_converged"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("a_star", SPURIOUS_TEACHERS, ids=lambda a: f"k{a.size}")
def test_spurious_minimum_and_its_neighbourhood(model, a_star):
    w_star = _w_star(4, seed=2)
    w, a = theory.spurious_minimum(w_star, a_star, model=model)
    # The theory agrees that this is a minimum (tangent Hessian, with the cubic probe along the flat direction).
    assert theory.classify_stationary_point(w, a, w_star=w_star, a_star=a_star, model=model).kind == "minimum"
    assert _classify(w, a, w_star, a_star, model=model) == "spurious"
    a_sp = theory.spurious_point(a_star)
    nst = np.linalg.norm(a_star)
    e = np.random.default_rng(3).standard_normal(a_star.size)
    e /= np.linalg.norm(e)
    phi_s = theory.saddle_angle(a_star)
    inside = math.pi - 0.5 * TOL.spurious_angle_tol
    outside = math.pi - 2 * TOL.spurious_angle_tol
    assert outside - phi_s > 10 * TOL.angle_tol  # the "outside" point is not near the saddle either
    assert _classify(_at_angle(inside, w_star, model), a_sp + 0.5 * TOL.spurious_a_rtol * nst * e, w_star, a_star,
                     model=model) == "spurious"
    assert _classify(_at_angle(outside, w_star, model), a_sp, w_star, a_star, model=model) == "not_converged"
    assert _classify(w, a_sp + 2 * TOL.spurious_a_rtol * nst * e, w_star, a_star, model=model) == "not_converged"
    # The kernel's "trapped" stop means the run provably entered the basin: spurious wherever it stopped.
    mid = _at_angle(0.5 * (phi_s + math.pi), w_star, model)
    assert _classify(mid, a_sp, w_star, a_star, model=model, stop=driver.STOP_TRAPPED) == "spurious"
    assert _classify(mid, a_sp, w_star, a_star, model=model) == "not_converged"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("a_star", NO_SPURIOUS_TEACHERS, ids=lambda a: f"k{a.size}")
def test_phi_pi_without_spurious_minimum_is_a_saddle(model, a_star):
    w_star = _w_star(3, seed=4)
    assert theory.spurious_minimum(w_star, a_star, model=model) is None
    w = _at_angle(math.pi, w_star, model)
    a_pi = theory.optimal_a(math.pi, a_star)
    kind = theory.classify_stationary_point(w, a_pi, w_star=w_star, a_star=a_star, model=model).kind
    # Cross-check with the theory's Hessian classifier, except at k = 1: there a(pi) = 0 and the point is the
    # existence boundary itself (a_sp.a* = 0); the loss falls only at sixth order along a ~ delta^3 (delta = pi -
    # phi), a mixed direction the classifier's eigenvector probes miss, so it reports "minimum" (reported).
    if a_star.size > 1:
        assert kind == "saddle"
    assert _classify(w, a_pi, w_star, a_star, model=model) == "saddle"
    # Never "spurious", even after a (hypothetical) trapped stop: there is no spurious basin.
    assert _classify(w, a_pi, w_star, a_star, model=model, stop=driver.STOP_TRAPPED) == "saddle"
    near = _at_angle(math.pi - 0.5 * TOL.angle_tol, w_star, model)
    assert _classify(near, a_pi, w_star, a_star, model=model) == "saddle"
    away = _at_angle(math.pi - 2 * TOL.angle_tol, w_star, model)
    assert _classify(away, a_pi, w_star, a_star, model=model) == "not_converged"


@pytest.mark.parametrize("model", ["resnet", "cnn"])
@pytest.mark.parametrize("a_star", SPURIOUS_TEACHERS, ids=lambda a: f"k{a.size}")
def test_interior_saddle_and_its_neighbourhood(model, a_star):
    w_star = _w_star(6, seed=5)
    w, a = theory.saddle_point(w_star, a_star, model=model)
    assert theory.classify_stationary_point(w, a, w_star=w_star, a_star=a_star, model=model).kind == "saddle"
    assert _classify(w, a, w_star, a_star, model=model) == "saddle"
    phi_s = theory.saddle_angle(a_star)
    nst = np.linalg.norm(a_star)
    e = np.random.default_rng(6).standard_normal(a_star.size)
    e /= np.linalg.norm(e)
    for d in (-0.5, 0.5):
        w_d = _at_angle(phi_s + d * TOL.angle_tol, w_star, model)
        assert _classify(w_d, a + 0.5 * TOL.a_rtol * nst * e, w_star, a_star, model=model) == "saddle"
    for d in (-2.0, 2.0):
        w_d = _at_angle(phi_s + d * TOL.angle_tol, w_star, model)
        assert _classify(w_d, a, w_star, a_star, model=model) == "not_converged"
    assert _classify(w, a + 2 * TOL.a_rtol * nst * e, w_star, a_star, model=model) == "not_converged"


def test_diverged_overrides_every_location():
    a_star = SPURIOUS_TEACHERS[1]
    w_star = _w_star(4, seed=7)
    for w, a in (theory.global_minimum(w_star, a_star), theory.spurious_minimum(w_star, a_star),
                 theory.saddle_point(w_star, a_star)):
        assert _classify(w, a, w_star, a_star, stop=driver.STOP_DIVERGED) == "diverged"
    # A NaN loss from a diverged run must not be read as anything else.
    w, a = theory.global_minimum(w_star, a_star)
    assert _classify(w, a, w_star, a_star, stop=driver.STOP_DIVERGED, loss=math.nan) == "diverged"


def _classify_gram_numpy(final_loss, final_phi, head, gram, k, scale, stop_reason, loss_ref, loss_tol, phi_s):
    """:func:`clf.classify_gram` as NumPy expressions over whole arrays (the reference of its compiled pass)."""
    tol = clf.Neighborhoods()
    (x, y, z), (Q0, S0, P0, Ss, Qs) = head, gram

    def dist(c):
        dq = theory.closed_forms.gram_deviations(*c, Q0, S0, P0, k, Ss, Qs)[2]
        return np.sqrt(np.maximum(dq, 0.0))

    bx, by, bz = scale * x, scale * y, scale * (1.0 + z)
    d = [dist((bx, by, bz - 1.0))]
    for phi in (np.full(len(x), math.pi), np.where(phi_s >= 0, phi_s, 0.0)):
        alpha, beta = theory.algebra.optimal_a_coefficients(clf._g(phi), k, Ss)
        d.append(dist((bx, by - alpha, bz - beta)))
    return clf._decide(final_loss, final_phi, tuple(d), np.sqrt(Qs), stop_reason, loss_ref, loss_tol, tol, phi_s)


@pytest.mark.parametrize("k", [1, 2, 16])
def test_compiled_gram_classification_equals_the_numpy_expressions(k):
    # Heads near a*, a(pi) and a(phi_s) at distances around the neighbourhoods' radii, angles around their
    # tolerances, losses around loss_tol, with NaN, inf and every stop reason mixed in: the same code for every run.
    rng = np.random.default_rng(k)
    R = 40_000
    Ss = rng.normal(size=R) * math.sqrt(k)
    Qs = Ss**2 / k + rng.gamma(2.0, size=R)
    Q0, S0, P0 = rng.gamma(2.0, size=R), rng.normal(size=R), rng.normal(size=R)
    phi_s = np.where(rng.random(R) < 0.5, -1.0, rng.uniform(1.6, 3.1, R))
    target = rng.integers(0, 3, R)  # near a*, a(pi) or a(phi_s)
    g = clf._g(np.where(target == 1, math.pi, np.where(phi_s >= 0, phi_s, 0.0)))
    alpha, beta = theory.algebra.optimal_a_coefficients(g, k, Ss)
    off = rng.normal(size=(3, R)) * 10.0 ** rng.uniform(-6, -1, R) * np.sqrt(Qs)
    x = off[0]
    y = np.where(target == 0, 0.0, alpha) + off[1]
    z = np.where(target == 0, 0.0, beta - 1.0) + off[2]
    phi = np.select([target == 0, target == 1], [0.0, math.pi], phi_s) + rng.normal(size=R) * 10.0 ** rng.uniform(
        -5, -1, R)
    loss = rng.gamma(1.0, size=R) * 10.0 ** rng.uniform(-14, 0, R)
    for arr in (x, y, z, phi, loss):
        arr[rng.random(R) < 0.005] = rng.choice([np.inf, -np.inf, np.nan])
    scale = np.where(rng.random(R) < 0.5, 1.0, rng.uniform(0.5, 2.0, R))
    kw = dict(final_loss=loss, final_phi=phi, head=(x, y, z), gram=(Q0, S0, P0, Ss, Qs), k=k, scale=scale,
              stop_reason=rng.integers(0, len(driver.STOP_NAMES), R).astype(np.int8),
              loss_ref=rng.gamma(1.0, size=R), loss_tol=1e-10, phi_s=phi_s)
    with np.errstate(all="ignore"):
        want = _classify_gram_numpy(**kw)
    got = clf.classify_gram(**kw)
    np.testing.assert_array_equal(got, want)
    assert min(np.bincount(got, minlength=5)) > 100  # every outcome is exercised


def test_batch_helpers_match_the_theory():
    rng = np.random.default_rng(8)
    for k in (1, 2, 3, 7, 40):
        A = rng.standard_normal((300, k))
        exists = np.array([theory.spurious_exists(a) for a in A])
        np.testing.assert_array_equal(clf.spurious_exists_batch(A), exists)
        phi_s = np.array([theory.saddle_angle(a) if e else -1.0 for a, e in zip(A, exists, strict=True)])
        # Bisection to float64 resolution against brentq: both solve g(phi_s) = g_s; measured agreement 3e-13
        # (the bisection evaluates g near pi with cancellation, 1e-12 absolute leaves margin for that).
        np.testing.assert_allclose(clf.saddle_angles_batch(A), phi_s, rtol=0, atol=1e-10)
        phi = rng.uniform(0, math.pi, 300)
        np.testing.assert_allclose(clf.optimal_a_batch(phi, A), [theory.optimal_a(f, a) for f, a in zip(phi, A,
                                   strict=True)], rtol=1e-12, atol=1e-12)


# ---- end to end: runs whose outcome the theory fixes -----------------------------------------------------------
K, P = 3, 5
V = np.full(P, 1.0 / math.sqrt(P))
ETA_A = 0.5 * theory.max_stable_eta_a(K)


def _run(teacher, schedule, *, steps=3000, runs=40, model="resnet", **kw):
    return sims.simulate(model=model, k=K, p=P, runs=runs, steps=steps, schedule=schedule, teacher=teacher, seed=3,
                         **kw)


def test_start_at_phi_zero_converges_to_the_global_minimum():
    # w* = v: the ResNet starts at phi = 0; only a has to converge (linearly), so every run is global by loss.
    res = _run((V, SPURIOUS_TEACHERS[1]), Schedule.constant(1.0, ETA_A))
    assert res.counts()["global"] == len(res)
    assert set(res.stop_reason) == {"loss_tol"}
    assert np.all(res.final_loss <= LOSS_TOL * res.loss_ref)


@pytest.mark.parametrize("stop_trapped", [True, False])
def test_start_at_the_spurious_angle_stays_spurious(stop_trapped):
    # w* = -v: phi_0 = pi exactly; grad_w vanishes there, so phi stays pi and a converges to a_sp.
    a_star = SPURIOUS_TEACHERS[1]
    res = _run((-V, a_star), Schedule.constant(1.0, ETA_A), tolerances=sims.Tolerances(stop_trapped=stop_trapped))
    assert res.counts()["spurious"] == len(res)
    if stop_trapped:
        assert set(res.stop_reason) == {"trapped"}
        assert np.all(res.steps < 50)  # the bound proves the basin within a few steps
    else:
        # Full convergence: the kernel's phi is atan2(sqrt(1 - c^2), c), accurate to sqrt(eps) = 1.5e-8 near pi;
        # a contracts geometrically (rate < 0.6 per step), so after 3000 steps only rounding remains: 1e-9.
        np.testing.assert_allclose(res.final_phi, math.pi, rtol=0, atol=1e-7)
        np.testing.assert_allclose(res.a, np.tile(theory.spurious_point(a_star), (len(res), 1)), rtol=0, atol=1e-9)


def test_start_at_pi_without_spurious_point_ends_at_the_saddle():
    # a* = 1 has no spurious minimum: (pi, a(pi)) is a saddle, and GD from w~ = -w* cannot leave phi = pi.
    a_star = np.ones(K)
    res = _run((-V, a_star), Schedule.constant(1.0, ETA_A))
    assert res.counts()["saddle"] == len(res)
    np.testing.assert_allclose(res.a, np.tile(theory.optimal_a(math.pi, a_star), (len(res), 1)), atol=1e-9)


@pytest.mark.parametrize("eta_w", [0.0, 1e-12])
def test_start_at_the_saddle_angle_with_zero_or_tiny_filter_step_ends_at_the_saddle(eta_w):
    a_star = SPURIOUS_TEACHERS[1]
    phi_s = theory.saddle_angle(a_star)
    teacher = Teacher(w="angle", angle=phi_s, a="fixed", a_value=tuple(a_star))
    res = _run(teacher, Schedule.constant(eta_w, ETA_A))
    assert res.counts()["saddle"] == len(res)
    # phi moves by at most eta_w |grad| per step (1e-12 * 3000 * O(1)) plus the kernel's rounding of phi.
    np.testing.assert_allclose(res.final_phi, phi_s, rtol=0, atol=1e-8)


@pytest.mark.parametrize("model", ["resnet", "cnn"])
def test_teacher_without_spurious_point_always_reaches_the_global_minimum(model):
    # a* = 1: no spurious minimum, so from every start (any v.w*, any a0 in the ball) GD ends global.  The only
    # other stationary set, phi = pi, has measure zero.
    res = sims.simulate(model=model, k=6, p=8, runs=300, steps=20000, schedule=Schedule.constant(1.0, 0.5),
                        teacher=Teacher(w="sphere", a="ones"), seed=4)
    assert res.counts()["global"] == len(res)
    assert np.any(res.w_star @ np.full(8, 8**-0.5) < 0)  # hard starts are included (v.w* < 0)


def test_cnn_spurious_runs_end_at_the_spurious_point():
    kw = dict(model="cnn", k=4, p=8, runs=300, schedule=Schedule.constant(1.0, 0.5 * theory.max_stable_eta_a(4)),
              teacher=Teacher(require_spurious=True), seed=2)
    free = sims.simulate(steps=20000, tolerances=sims.Tolerances(stop_trapped=False), **kw)
    sp = np.flatnonzero(free.outcome == "spurious")
    assert 0.1 * len(free) < sp.size < 0.9 * len(free)  # both basins are visited (measured 142 / 300 spurious)
    assert free.counts()["global"] + sp.size == len(free)
    # phi -> pi only like 1/t (the Hessian vanishes there): after 20000 steps pi - phi < 0.0022 (measured);
    # the classifier's spurious_angle_tol is 0.05.  a tracks a(phi), |a(phi) - a_sp| = O((pi - phi)^3).
    assert np.all(math.pi - free.final_phi[sp] < TOL.spurious_angle_tol)
    for r in sp:
        a_sp = theory.spurious_point(free.a_star[r])
        assert np.linalg.norm(free.a[r] - a_sp) <= 1e-6 * np.linalg.norm(free.a_star[r])
    # The trapped stop is a proof of the basin: the default run (which stops as soon as it is trapped) classifies
    # every run exactly as the run to convergence does.
    trapped = sims.simulate(steps=20000, **kw)
    np.testing.assert_array_equal(trapped.outcome, free.outcome)
    assert set(trapped.stop_reason[sp]) == {"trapped"}


@pytest.mark.parametrize("factor", [1.05, 3.0, 100.0])
def test_step_above_the_stability_limit_diverges_and_stops_finite(factor):
    k, p = 4, 6
    res = sims.simulate(model="resnet", k=k, p=p, runs=50, steps=5000,
                        schedule=Schedule.constant(0.5, factor * theory.max_stable_eta_a(k)), allow_unstable=True,
                        seed=3)
    assert res.counts()["diverged"] == len(res)
    assert set(res.stop_reason) == {"diverged"}
    assert np.all(res.steps < 5000)
    # The kernel stops at the first loss above divergence * L_ref, before anything overflows at these steps:
    # every reported quantity is finite, the rates are NaN (no global minimum was reached).
    for name in ("final_loss", "final_phi", "final_alignment", "final_grad_norm", "w", "a"):
        assert np.all(np.isfinite(getattr(res, name))), name
    assert np.all(res.final_loss > sims.Tolerances().divergence * res.loss_ref)
    assert np.all(np.isnan(res.fitted_rate)) and np.all(np.isnan(res.theory_rate))
    assert not res.linear_regime.any()
    for r in range(len(res)):
        tr = res.trajectory_of(r)
        assert np.all(np.isfinite(tr["loss"]))
        assert tr["step"][-1] <= res.steps[r]


def test_step_just_below_the_stability_limit_does_not_diverge():
    # The other side of the limit: 0.95 x (top mode contracts by |1 - 1.9| = 0.9 per step).
    k = 4
    res = sims.simulate(model="resnet", k=k, p=6, runs=50, steps=5000,
                        schedule=Schedule.constant(0.5, 0.95 * theory.max_stable_eta_a(k)), seed=3)
    assert res.counts()["diverged"] == 0


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_overflowing_run_reports_no_nan_loss():
    # eta_a = 1e300 x the limit: a overflows in one step; classify's docstring promises no NaN is passed on.
    res = sims.simulate(model="resnet", k=4, p=6, runs=5, steps=100,
                        schedule=Schedule.constant(0.5, 1e300 * theory.max_stable_eta_a(4)), allow_unstable=True,
                        seed=3)
    assert res.counts()["diverged"] == len(res)
    assert not np.any(np.isnan(res.final_loss))


@pytest.mark.parametrize("model", ["resnet", "cnn"])
def test_too_few_steps_is_not_converged(model):
    res = sims.simulate(model=model, k=5, p=7, runs=100, steps=3, schedule=Schedule.constant(0.5, 0.5), seed=5,
                        tolerances=sims.Tolerances(stop_trapped=False))
    assert res.counts()["not_converged"] == len(res)
    assert set(res.stop_reason) == {"max_steps"}
    np.testing.assert_array_equal(res.steps, 3)


# ---- end to end from explicit starts at the theory's fixed points (init=(w0, a0)) -----------------------------
W_STAR = _w_star(P, seed=9)
A_SP = SPURIOUS_TEACHERS[1]  # k = 3, phi_s = 1.60


def _from(model, start, schedule, *, steps=2000, stop_trapped=True, a_star=A_SP):
    return sims.simulate(model=model, k=a_star.size, p=P, runs=3, steps=steps, schedule=schedule,
                         teacher=(W_STAR, a_star), init=start, seed=1,
                         tolerances=sims.Tolerances(stop_trapped=stop_trapped))


@pytest.mark.parametrize("model", MODELS)
def test_run_started_at_the_global_minimum_stops_at_once(model):
    start = theory.global_minimum(W_STAR, A_SP, model=model)
    res = _from(model, start, Schedule.constant(0.5, ETA_A))
    assert set(res.outcome) == {"global"} and set(res.stop_reason) == {"loss_tol"}
    np.testing.assert_array_equal(res.steps, 0)
    # Nearby (angle 0.05, a off by 5%): inside the basin, GD converges.
    w = _at_angle(0.05, W_STAR, model)
    res = _from(model, (w, 1.05 * A_SP), Schedule.constant(0.5, ETA_A), steps=50_000)
    assert set(res.outcome) == {"global"}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("eta", "stop_trapped"), [(0.0, True), (0.0, False), (1e-8, False), (0.5, False)])
def test_run_started_at_the_spurious_minimum_stays_there(model, eta, stop_trapped):
    start = theory.spurious_minimum(W_STAR, A_SP, model=model)
    res = _from(model, start, Schedule.constant(eta, eta), stop_trapped=stop_trapped)
    assert set(res.outcome) == {"spurious"}
    # The kernel's phi near pi is accurate to sqrt(eps) = 1.5e-8 (see test_sims_result).
    np.testing.assert_allclose(res.final_phi, math.pi, rtol=0, atol=1e-7)
    if stop_trapped and model != "cnn-unnormalized":  # the trapped proof is for the normalized models
        # Exactly at the stationary point the (exact) gradient norm is ~0, and grad_tol is checked first.
        assert set(res.stop_reason) <= {"trapped", "grad_tol"}
        np.testing.assert_array_equal(res.steps, 0)


@pytest.mark.parametrize("model", ["resnet", "cnn"])
@pytest.mark.parametrize(("eta", "stop_trapped"), [(0.0, True), (0.0, False), (1e-10, True)])
def test_run_started_at_the_saddle_stays_there_with_zero_or_tiny_steps(model, eta, stop_trapped):
    start = theory.saddle_point(W_STAR, A_SP, model=model)
    res = _from(model, start, Schedule.constant(eta, eta), stop_trapped=stop_trapped)
    assert set(res.outcome) == {"saddle"}
    # Drift <= eta * steps * |grad| ~ 1e-7 at most, plus rounding.
    np.testing.assert_allclose(res.final_phi, theory.saddle_angle(A_SP), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", ["resnet", "cnn"])
@pytest.mark.parametrize("eta_w", [0.05, 0.5])
def test_the_saddle_angle_separates_the_basins(model, eta_w):
    # Start on the slow manifold a = a(phi) just either side of phi_s: a(phi).a* > 0 below it (phi shrinks, global),
    # < 0 above it (phi grows to pi, spurious).  Run the second case to the end without the trapped shortcut.
    phi_s = theory.saddle_angle(A_SP)
    schedule = Schedule.constant(eta_w, ETA_A)
    for d, expect in ((-0.05, "global"), (0.05, "spurious")):
        start = (_at_angle(phi_s + d, W_STAR, model), theory.optimal_a(phi_s + d, A_SP))
        res = _from(model, start, schedule, steps=100_000, stop_trapped=False)
        assert set(res.outcome) == {expect}, (d, res.outcome)
        trapped = _from(model, start, schedule, steps=100_000)
        np.testing.assert_array_equal(trapped.outcome, res.outcome)


def test_compiled_saddle_angles_are_theory_saddle_angle_bit_for_bit():
    # sims.engines.closed_forms.saddle_angles_brent runs scipy's brentq iteration compiled; the prescribed warmup
    # depends on its last bits.  Random teachers, teachers on the edge of the spurious point's existence (root near
    # pi, series branch), 1.a* = 0, no saddle (a* parallel to 1, k = 1, zero).
    from sims.engines.closed_forms import saddle_angles_brent

    rng = np.random.default_rng(5)
    for k in (1, 2, 3, 5, 16, 128):
        A = rng.standard_normal((400, k)) * 10.0 ** rng.uniform(-5, 5, (400, 1))
        if k > 1:
            B = A[:100] - A[:100].mean(axis=1, keepdims=True)
            kk = k + math.pi - 1
            c = np.sqrt(kk * np.sum(B * B, axis=1) / (math.pi * k * k - kk * k))
            c *= 1 - 10.0 ** rng.uniform(-15, -1, 100)
            A[:100] = B + c[:, None]
            A[100] -= A[100].mean()
            A[101] = 1.0
        A[102] = 0.0
        want = np.array([-1.0 if (phi := theory.saddle_angle(a)) is None else phi for a in A])
        np.testing.assert_array_equal(saddle_angles_brent(A, missing=-1.0), want)


@pytest.mark.parametrize("k", [1, 2, 4, 16, 64])
def test_compiled_saddle_bisection_is_the_theory_bisection_to_the_bit(k):
    """The pipeline's saddle angles (compiled, parallel) are theory.saddle_angles' bisection to the bit, on teachers
    of every kind: Gaussian, near the existence boundary, nearly parallel to 1 (phi_s near pi), and 1.a* = 0."""
    rng = np.random.default_rng(k)
    A = rng.normal(size=(20_000, k))
    A[:2000] += 3.0 * rng.normal(size=(2000, 1))  # large 1.a*: many without a spurious point, some at the edge
    A[2000:3000] = 1.0 + 1e-3 * rng.normal(size=(1000, k))  # nearly parallel to 1: phi_s near pi if it exists
    if k > 1:
        A[3000:4000] -= A[3000:4000].mean(axis=1, keepdims=True)  # 1.a* = 0: phi_s = pi/2
    expected = theory.saddle_angles(A, missing=-1.0)
    np.testing.assert_array_equal(clf.saddle_angles_batch(A), expected)
    np.testing.assert_array_equal(clf.saddle_angles_gram(k, A.sum(axis=1), np.einsum("ij,ij->i", A, A)),
                                  theory.algebra.saddle_angles_of_sums(k, A.sum(axis=1),
                                                                       np.einsum("ij,ij->i", A, A), missing=-1.0))
    assert (expected >= 0).any() == (k > 1)


def test_fast_saddle_bisection_lands_on_the_reference_doubles():
    """bisect_saddle skips the midpoints its proved window puts on a known side; every angle must still be the
    reference bisection's (every midpoint evaluated) to the bit: on a million uniform targets, targets near 1
    (phi_s near pi/2), tiny ones down to 1e-300 (phi_s near pi, where g is flat and the window wide), the ends
    and non-finite values, with some rows flagged as having no saddle."""
    rng = np.random.default_rng(15)
    g_s = np.concatenate([rng.uniform(0.0, 1.0, 1_000_000), rng.uniform(1.0 - 1e-6, 1.0, 50_000),
                          10.0 ** rng.uniform(-300, 0, 50_000),
                          [1.0, np.nextafter(1.0, 0.0), 0.0, 5e-324, np.nan, np.inf, -1.0, 1.5, np.pi, 3.5]])
    exists = rng.random(len(g_s)) < 0.9
    exists[-10:] = True
    fast = _cf.bisect_saddle(g_s, exists, -1.0)
    ref = _cf.bisect_saddle(g_s, exists, -1.0, reference=True)
    np.testing.assert_array_equal(fast.view(np.int64), ref.view(np.int64))
    assert np.all(fast[~exists] == -1.0) and np.all(fast[:1_000_000][exists[:1_000_000]] >= math.pi / 2)
