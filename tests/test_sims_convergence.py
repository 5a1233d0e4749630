"""The papers' claims (SCIENCE.md 4), end to end.

- ResNet, w0 = 0, a0 in the ball, the theory-prescribed warmup, teacher with v.w* >= 0 (``Teacher(w="cap")``,
  the default) and a spurious local minimum (``require_spurious=True``, the hard case): the global minimum in
  every trial, for k, p up to 128.
- The same ResNet without warmup (one step size) fails in some trials; the CNN from a random start succeeds
  with a probability strictly between 0 and 1; the no-warmup ResNet lies between the two.

Success counts are exact requirements ("every trial") or separated by Wilson 99.9% intervals, so a fixed seed
makes them deterministic and a change in the dynamics that moves a rate by a few percent fails them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sims
import theory
from sims import Schedule, Teacher

GRID = [1, 2, 8, 32, 128]


def _eta_a(k):
    return 0.5 * theory.max_stable_eta_a(k)


def _wilson(successes, n, z=3.29):
    """Wilson score interval at ~99.9% (z = 3.29)."""
    ph = successes / n
    den = 1 + z * z / n
    centre = (ph + z * z / (2 * n)) / den
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


@pytest.mark.parametrize("p", GRID)
@pytest.mark.parametrize("k", GRID)
def test_resnet_with_prescribed_warmup_reaches_the_global_minimum_in_every_trial(k, p):
    # k = 1 has no spurious point (the existence condition is S^2 < Q, never true), so require_spurious is
    # impossible there.  A Gaussian a* can also be tiny there (|a*| ~ 0.001 in 300 draws), which slows the filter
    # mode to a rate eta_w a*^2 / 2 ~ 1e-6 per step: such runs progress but need ~1e7 steps (measured: 2 of 600
    # runs unfinished after 3e6 steps, phi still decreasing).  That is the teacher's scale, not the warmup, so
    # k = 1 uses a fixed a* = -0.5 (half the starts a0 must change sign).
    teacher = Teacher(w="cap", require_spurious=True) if k > 1 else Teacher(w="cap", a="fixed", a_value=(-0.5,))
    res = sims.simulate(model="resnet", k=k, p=p, runs=300, steps=200_000, teacher=teacher, seed=1000 + 10 * k + p,
                        schedule=Schedule.prescribed_warmup(1.0, _eta_a(k)), n_record=8)
    # The setting is what the claim assumes.
    np.testing.assert_array_equal(res.w0, 0.0)
    assert np.all(np.linalg.norm(res.a0, axis=1) <= np.linalg.norm(res.a_star, axis=1) * (1 + 1e-12))
    assert np.all(res.w_star @ np.full(p, p**-0.5) >= -1e-12)
    if k > 1:
        assert all(theory.spurious_exists(a) for a in res.a_star)
    # The claim.
    assert res.counts()["global"] == len(res), res.counts()
    assert np.all(res.warmup_steps > 0) and np.all(np.isfinite(res.warmup_eta_w))
    if k > 1:
        assert np.all(res.warmup_eta_w > 0)


@pytest.mark.parametrize(("k", "p"), [(2, 2), (8, 8), (16, 16), (128, 32), (32, 128)])
def test_resnet_warmup_succeeds_for_teachers_at_the_edge_of_the_cap(k, p):
    # v.w* -> 0+: the start phi_0 -> pi/2, next to the saddle angle phi_s >= pi/2 (the hardest allowed starts).
    for angle in (1.5, math.pi / 2 - 1e-6):
        res = sims.simulate(model="resnet", k=k, p=p, runs=200, steps=200_000, seed=77,
                            teacher=Teacher(w="angle", angle=angle, require_spurious=True),
                            schedule=Schedule.prescribed_warmup(1.0, _eta_a(k)), n_record=8)
        assert res.counts()["global"] == len(res), (angle, res.counts())


@pytest.mark.parametrize("k", [4, 16])
def test_resnet_without_warmup_fails_in_some_trials(k):
    # The same teachers and starts (the schedule does not enter the draws) with and without the warmup.
    p = k
    kw = dict(model="resnet", k=k, p=p, runs=300, steps=50_000, teacher=Teacher(require_spurious=True), seed=5,
              n_record=8)
    warm = sims.simulate(schedule=Schedule.prescribed_warmup(1.0, _eta_a(k)), **kw)
    plain = sims.simulate(schedule=Schedule.constant(1.0, _eta_a(k)), **kw)
    np.testing.assert_array_equal(warm.a0, plain.a0)
    np.testing.assert_array_equal(warm.w_star, plain.w_star)
    assert warm.counts()["global"] == len(warm)
    lo, _ = _wilson(plain.counts()["spurious"], len(plain))
    assert lo > 0.05, plain.counts()  # measured 43 / 300 (k = 4) and 120 / 300 (k = 16) spurious
    assert plain.counts()["global"] + plain.counts()["spurious"] == len(plain)


def test_cnn_from_random_init_succeeds_with_probability_strictly_between_0_and_1():
    res = sims.simulate(model="cnn", k=8, p=8, runs=400, steps=50_000, schedule=Schedule.constant(1.0, _eta_a(8)),
                        teacher=Teacher(require_spurious=True), seed=6, n_record=8)
    c = res.counts()
    lo, hi = _wilson(c["global"], len(res))
    assert 0.1 < lo and hi < 0.9, c  # measured 261 / 400 global
    assert c["global"] + c["spurious"] == len(res)  # every failure is the spurious minimum
    # Restarts raise the success rate: with success probability q per start, one of 4 independent starts succeeds
    # with probability 1 - (1 - q)^4 (measured q = 0.55, 98 of 100 groups).  Groups of 4 runs share a teacher only
    # with a fixed teacher, so this uses one; the 0.1 margin is 5 standard deviations of a 100-group fraction.
    a_star = res.a_star[0]
    w_star = res.w_star[0]
    rs = sims.simulate(model="cnn", k=8, p=8, runs=400, steps=50_000, schedule=Schedule.constant(1.0, _eta_a(8)),
                       teacher=(w_star, a_star), seed=7, n_record=8)
    ok = (rs.outcome == "global").reshape(100, 4)
    single = ok.mean()
    restarted = ok.any(axis=1).mean()
    assert 0.05 < single < 0.95
    assert restarted >= min(1.0, 1 - (1 - single) ** 4 - 0.1)


def test_no_warmup_resnet_lies_strictly_between_cnn_and_warmup():
    k, p, n = 4, 8, 3000
    kw = dict(k=k, p=p, runs=n, steps=20_000, teacher=Teacher(require_spurious=True), seed=11, n_record=8)
    cnn = sims.simulate(model="cnn", schedule=Schedule.constant(1.0, _eta_a(k)), **kw).counts()["global"]
    plain = sims.simulate(model="resnet", schedule=Schedule.constant(1.0, _eta_a(k)), **kw).counts()["global"]
    warm = sims.simulate(model="resnet", schedule=Schedule.prescribed_warmup(1.0, _eta_a(k)), **kw).counts()["global"]
    # Measured 0.63 (CNN), 0.82 (ResNet, no warmup), 1.00 (ResNet, warmup); Wilson 99.9% intervals are +-0.03.
    assert _wilson(cnn, n)[1] < _wilson(plain, n)[0]
    assert _wilson(plain, n)[1] < _wilson(warm, n)[0]
    assert warm == n
