"""Teachers, initializations and per-run random streams (sims.runs.samplers, sims.engines.rng).

Distribution checks are Kolmogorov-Smirnov tests with a fixed seed and the threshold p > 1e-3: with a fixed seed
the outcome is deterministic, and a correct sampler fails it for only 0.1% of seeds, while the errors these
tests target (wrong Beta parameters, a missing truncation, a wrong radius law) give p-values below 1e-10 at these
sample sizes.  Draws go through ``simulate(steps=0)``, which draws and classifies but takes no GD step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

import sims
import theory
from sims import Init, Schedule, Teacher
from sims.engines.rng import stream_states

KS_P = 1e-3
UNIT_TOL = 1e-12  # a normalized float64 vector has norm 1 within a few ulps (p <= 128 terms)


def _draw(*, k=3, p=5, runs=4000, model="resnet", teacher=None, init=None, seed=0, shortcut=None):
    return sims.simulate(model=model, k=k, p=p, runs=runs, steps=0, schedule=Schedule.constant(0.0, 0.0),
                         teacher=teacher, init=init, seed=seed, shortcut=shortcut)


def _v(p):
    return np.full(p, 1.0 / math.sqrt(p))


def _beta_half(p):
    """The law of (t + 1) / 2 for one coordinate t of a uniform unit vector in R^p (p >= 2)."""
    return stats.beta((p - 1) / 2.0, (p - 1) / 2.0)


@pytest.mark.parametrize("p", [2, 3, 16, 128])
@pytest.mark.parametrize("phi_max", [0.3, math.pi / 2, 2.5, math.pi])
def test_cap_teacher_support_and_truncated_beta_marginal(p, phi_max):
    res = _draw(p=p, teacher=Teacher(w="cap", phi_max=phi_max), seed=11)
    t = res.w_star @ _v(p)
    np.testing.assert_allclose(np.linalg.norm(res.w_star, axis=1), 1.0, rtol=0, atol=UNIT_TOL)
    # The cap v.w* >= cos(phi_max), up to the rounding of the final renormalization (a few ulps).
    assert np.all(t >= math.cos(phi_max) - 1e-12)
    # y = (1 - t) / 2 ~ Beta((p-1)/2, (p-1)/2) truncated to y <= sin(phi_max / 2)^2 (the same law as (t + 1) / 2 by
    # symmetry; the upper tail is used so that tiny caps in high dimension keep their precision).
    y = (1.0 - t) / 2.0
    beta = _beta_half(p)
    mass = beta.cdf(math.sin(phi_max / 2.0) ** 2)
    assert stats.kstest(y, lambda q: np.clip(beta.cdf(q) / mass, 0.0, 1.0)).pvalue > KS_P
    # The test has power: where the cap leaves out >= 10% of the sphere, the untruncated law is rejected.
    if mass < 0.9:
        assert stats.kstest(y, beta.cdf).pvalue < 1e-6


@pytest.mark.parametrize("p", [2, 7, 64])
def test_cap_teacher_direction_orthogonal_to_v_is_uniform(p):
    # w* = t v + sqrt(1 - t^2) e with e uniform on the unit sphere of v's complement (dimension p - 1).
    res = _draw(p=p, teacher=Teacher(w="cap"), seed=12)
    v = _v(p)
    t = res.w_star @ v
    e = (res.w_star - t[:, None] * v) / np.sqrt(1.0 - t**2)[:, None]
    np.testing.assert_allclose(e @ v, 0.0, atol=1e-12)
    # A coordinate of e along a fixed unit vector orthogonal to v: the sphere marginal in dimension p - 1.
    u = np.zeros(p)
    u[0], u[1] = 1.0, -1.0
    u /= np.linalg.norm(u)
    y = e @ u
    if p == 2:  # the complement is a line: e = +-u with equal probability
        np.testing.assert_allclose(np.abs(y), 1.0, atol=1e-12)
        assert stats.binomtest(int(np.sum(y > 0)), y.size).pvalue > KS_P
    else:
        assert stats.kstest((y + 1) / 2, _beta_half(p - 1).cdf).pvalue > KS_P


@pytest.mark.parametrize("p", [2, 5, 100])
@pytest.mark.parametrize("angle", [0.0, 0.4, math.pi / 2, 2.0, math.pi])
def test_angle_teacher_is_exactly_at_that_angle(p, angle):
    res = _draw(p=p, runs=200, teacher=Teacher(w="angle", angle=angle), seed=3)
    np.testing.assert_allclose(np.linalg.norm(res.w_star, axis=1), 1.0, rtol=0, atol=UNIT_TOL)
    # cos is computed once and the vector renormalized: v.w* = cos(angle) within rounding.
    np.testing.assert_allclose(res.w_star @ _v(p), math.cos(angle), rtol=0, atol=1e-12)
    # ResNet at w0 = 0: the network starts at the shortcut, so the initial angle is the teacher angle.  The
    # recorded phi_0 comes from the kernel's atan2 with sqrt(1 - c^2), which near 0 and pi is only accurate to
    # sqrt(eps) = 1.5e-8; 1e-7 absolute covers that.
    np.testing.assert_allclose(res.trajectory[:, 0, 1], angle, rtol=0, atol=1e-7)
    for r in range(3):
        assert theory.angle(res.w[r], w_star=res.w_star[r]) == pytest.approx(angle, abs=1e-7)


@pytest.mark.parametrize("p", [3, 30])
def test_sphere_teacher_is_uniform(p):
    res = _draw(p=p, teacher=Teacher(w="sphere"), seed=4)
    np.testing.assert_allclose(np.linalg.norm(res.w_star, axis=1), 1.0, rtol=0, atol=UNIT_TOL)
    t = res.w_star @ _v(p)
    assert stats.kstest((t + 1) / 2, _beta_half(p).cdf).pvalue > KS_P
    assert stats.kstest((res.w_star[:, 0] + 1) / 2, _beta_half(p).cdf).pvalue > KS_P


def test_p1_teachers():
    cap = _draw(p=1, runs=400, teacher=Teacher(w="cap", phi_max=2.0), seed=5)
    np.testing.assert_array_equal(cap.w_star, 1.0)  # the only unit vector with v.w* >= cos(2.0) is +v
    sphere = _draw(p=1, runs=400, teacher=Teacher(w="sphere"), seed=5)
    assert set(np.unique(sphere.w_star)) == {-1.0, 1.0}
    assert stats.binomtest(int(np.sum(sphere.w_star > 0)), 400).pvalue > KS_P
    # phi_max = pi: the cap is the whole sphere, so -v must be drawn as often as +v (was always +v; fixed).
    full = _draw(p=1, runs=400, teacher=Teacher(w="cap", phi_max=math.pi), seed=5)
    assert set(np.unique(full.w_star)) == {-1.0, 1.0}
    assert stats.binomtest(int(np.sum(full.w_star > 0)), 400).pvalue > KS_P
    anti = _draw(p=1, runs=10, teacher=Teacher(w="angle", angle=math.pi), seed=5)
    np.testing.assert_array_equal(anti.w_star, -1.0)


@pytest.mark.parametrize("k", [2, 3, 8, 40])
def test_require_spurious_gives_only_teachers_with_a_spurious_point(k):
    res = _draw(k=k, runs=1000, teacher=Teacher(require_spurious=True), seed=6)
    assert all(theory.spurious_exists(a) for a in res.a_star)
    assert all(theory.saddle_angle(a) is not None for a in res.a_star)
    plain = _draw(k=k, runs=1000, teacher=Teacher(), seed=6)
    exists = np.array([theory.spurious_exists(a) for a in plain.a_star])
    if k <= 3:  # the flag must matter: without it a Gaussian a* often has no spurious point at small k
        assert 0.1 < exists.mean() < 0.95
    # The accepted a* are Gaussian draws conditioned on existence: the same law as the plain draws that pass
    # the condition.  Compare the first coordinate's law (two-sample KS).
    assert stats.ks_2samp(res.a_star[:, 0], plain.a_star[exists, 0]).pvalue > KS_P


def test_teacher_second_layers():
    g = _draw(k=5, runs=2000, teacher=Teacher(a="gaussian"), seed=7)
    assert stats.kstest(g.a_star.ravel(), "norm").pvalue > KS_P
    ones = _draw(k=5, runs=10, teacher=Teacher(a="ones"), seed=7)
    np.testing.assert_array_equal(ones.a_star, 1.0)
    fixed = _draw(k=3, runs=10, teacher=Teacher(a="fixed", a_value=(0.5, -2.0, 1.0)), seed=7)
    np.testing.assert_array_equal(fixed.a_star, np.tile([0.5, -2.0, 1.0], (10, 1)))


@pytest.mark.parametrize("k", [1, 2, 5, 30])
def test_init_ball_is_uniform_in_the_ball_of_radius_norm_a_star(k):
    res = _draw(k=k, runs=3000, seed=8)
    r_star = np.linalg.norm(res.a_star, axis=1)
    ratio = np.linalg.norm(res.a0, axis=1) / r_star
    assert np.all(ratio <= 1.0 + 1e-12)
    # Uniform in the k-ball: ||a0|| / R = U^(1/k), so ratio^k ~ U(0, 1); direction uniform on the sphere.
    assert stats.kstest(ratio**k, "uniform").pvalue > KS_P
    if k >= 2:
        d = res.a0[:, 0] / np.linalg.norm(res.a0, axis=1)
        assert stats.kstest((d + 1) / 2, _beta_half(k).cdf).pvalue > KS_P
    else:
        assert stats.binomtest(int(np.sum(res.a0 > 0)), res.a0.size).pvalue > KS_P


def test_init_radius_and_gaussian_a():
    fixed = _draw(k=4, runs=2000, init=Init(a="ball", a_radius=0.25), seed=9)
    assert np.all(np.linalg.norm(fixed.a0, axis=1) <= 0.25 * (1 + 1e-12))
    assert stats.kstest((np.linalg.norm(fixed.a0, axis=1) / 0.25) ** 4, "uniform").pvalue > KS_P
    zero = _draw(k=4, runs=20, init=Init(a_radius=0.0), seed=9)
    np.testing.assert_array_equal(zero.a0, 0.0)
    gauss = _draw(k=6, runs=2000, init=Init(a="gaussian", a_radius=3.0), seed=9)
    # Per-entry std a_radius / sqrt(k).
    assert stats.kstest((gauss.a0 * math.sqrt(6) / 3.0).ravel(), "norm").pvalue > KS_P
    default_radius = _draw(k=6, runs=2000, init=Init(a="gaussian"), seed=9)
    z = default_radius.a0 * math.sqrt(6) / np.linalg.norm(default_radius.a_star, axis=1)[:, None]
    assert stats.kstest(z.ravel(), "norm").pvalue > KS_P


def test_resnet_default_init_starts_at_the_shortcut():
    res = _draw(k=3, p=7, runs=50, seed=10)
    np.testing.assert_array_equal(res.w0, 0.0)
    assert res.settings["init"]["w"] == "zero"


@pytest.mark.parametrize("model", ["cnn", "cnn-unnormalized"])
@pytest.mark.parametrize("p", [2, 9])
def test_cnn_default_init_is_uniform_on_the_unit_sphere(model, p):
    res = _draw(model=model, p=p, runs=3000, seed=13)
    np.testing.assert_allclose(np.linalg.norm(res.w0, axis=1), 1.0, rtol=0, atol=UNIT_TOL)
    for j in range(2):
        assert stats.kstest((res.w0[:, j] + 1) / 2, _beta_half(p).cdf).pvalue > KS_P
    # The initial angle to the teacher is then the sphere's angle law too (teacher independent of w0).
    cos0 = np.einsum("ij,ij->i", res.w0, res.w_star)
    assert stats.kstest((cos0 + 1) / 2, _beta_half(p).cdf).pvalue > KS_P


def test_gaussian_filter_init_scale():
    res = _draw(model="cnn", p=10, runs=2000, init=Init(w="gaussian", w_scale=0.3), seed=14)
    assert stats.kstest((res.w0 * math.sqrt(10) / 0.3).ravel(), "norm").pvalue > KS_P


def test_fixed_teacher_pair_is_used_for_every_run():
    w_star = np.array([0.6, 0.0, -0.8])
    a_star = np.array([1.0, -0.5])
    res = _draw(k=2, p=3, runs=20, teacher=(w_star, a_star), seed=15)
    np.testing.assert_array_equal(res.w_star, np.tile(w_star, (20, 1)))
    np.testing.assert_array_equal(res.a_star, np.tile(a_star, (20, 1)))
    assert np.all(np.linalg.norm(res.a0, axis=1) <= np.linalg.norm(a_star) * (1 + 1e-12))


# ---- per-run streams ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63])
def test_stream_states_are_the_spawned_children_of_the_seed(seed):
    children = np.random.SeedSequence(seed).spawn(12)
    st = stream_states(seed, 0, 12)
    assert st.dtype == np.uint64 and st.shape == (12, 4)
    for r in range(12):
        np.testing.assert_array_equal(st[r], children[r].generate_state(4, np.uint64))
    # A chunk [5, 12) holds the same rows: the stream of run r does not depend on the chunking.
    np.testing.assert_array_equal(stream_states(seed, 5, 12), st[5:])
    assert len({tuple(row) for row in st}) == 12


def test_stream_states_kept_for_the_next_cell_are_handed_out_as_copies():
    # The last few small ranges are memoized (a sweep's cells compute the same chunks one after another): a caller
    # may advance its states in place without changing what the next caller gets, and large ranges are not kept.
    from sims.engines import rng as rng_mod

    first = stream_states(11, 100, 1100)
    expected = first.copy()
    first[:] = 0
    again = stream_states(11, 100, 1100)
    np.testing.assert_array_equal(again, expected)
    assert again.flags.writeable and not np.shares_memory(again, stream_states(11, 100, 1100))
    big = stream_states(11, 0, rng_mod.MEMO_RUNS + 1)
    np.testing.assert_array_equal(big[100:1100], expected)
    assert rng_mod._memo_states.cache_info().currsize <= 4


def _seed_sequence_states(seed, runs):
    return np.array([np.random.SeedSequence(seed, spawn_key=(int(r),)).generate_state(4, np.uint64) for r in runs],
                    dtype=np.uint64).reshape(-1, 4)


def test_stream_states_match_seed_sequence_bit_for_bit_on_random_seeds_and_runs():
    # The vectorized hash mixing against numpy's SeedSequence itself: seeds of 0 to 200 bits (1 to 7 uint32 words,
    # so with and without the zero padding to the pool size) and run indices up to 2**40 (one or two words).
    rng = np.random.default_rng(20240611)
    for _ in range(400):
        seed = int(rng.integers(0, 2**62)) >> int(rng.integers(0, 62)) if rng.random() < 0.5 else \
            int.from_bytes(rng.bytes(25), "little") >> int(rng.integers(0, 200))
        runs = rng.integers(0, 2**40, size=3, endpoint=True) >> rng.integers(0, 40, size=3)
        got = np.concatenate([stream_states(seed, int(r), int(r) + 1) for r in runs])
        np.testing.assert_array_equal(got, _seed_sequence_states(seed, runs), err_msg=f"seed {seed}, runs {runs}")


@pytest.mark.parametrize("seed", [0, 2**32 - 1, 2**32, 2**63, 2**64, 2**128 + 7, 3**100])
@pytest.mark.parametrize("start", [0, 2**32 - 5, 2**40 - 5, 2**64 - 5])
def test_stream_states_match_seed_sequence_across_word_boundaries(seed, start):
    # Blocks that cross a run index's change from one to two words (2**32) and, at 2**64, to the SeedSequence path.
    np.testing.assert_array_equal(stream_states(seed, start, start + 10),
                                  _seed_sequence_states(seed, range(start, start + 10)))


def test_stream_states_reject_bad_seed():
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0"):
        stream_states(-1, 0, 3)
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0"):
        stream_states(1.5, 0, 3)


def test_stream_normals_and_uniforms():
    from sims.engines.rng import fill_normal, uniform

    st = stream_states(3, 0, 1)[0].copy()
    z = np.empty(20001)  # odd length exercises the unpaired last value
    fill_normal(st, z)
    assert stats.kstest(z, "norm").pvalue > KS_P
    u = np.array([uniform(st) for _ in range(5000)])
    assert np.all((u >= 0) & (u < 1))
    assert stats.kstest(u, "uniform").pvalue > KS_P


def test_different_runs_and_seeds_draw_different_teachers():
    a = _draw(runs=50, seed=1)
    b = _draw(runs=50, seed=2)
    assert len({tuple(x) for x in a.w_star}) == 50
    assert not np.any(np.all(a.w_star == b.w_star, axis=1))
    # The cap's inverse CDF uses betaincinv directly: check it against scipy's Beta ppf at a few points.
    half = 2.0
    q = np.array([1e-8, 0.3, 0.999999])
    np.testing.assert_allclose(special.betaincinv(half, half, q), stats.beta(half, half).ppf(q), rtol=1e-10)
