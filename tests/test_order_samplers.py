"""Direct order-parameter samplers (sims.runs.order_samplers) and the gamma variates they use (sims.engines.rng).

The law check draws N runs with the vector sampler (``samplers.draw``, then the dot products) and N runs with the
direct sampler from another seed, and compares each of the 8 order parameters with a two-sample KS test.  There are
14 law combinations x 8 parameters = 112 tests (plus 5 gamma KS tests).  Threshold: p > 1e-4 per test, so a
correct sampler fails somewhere with probability at most ~1.2% by Bonferroni; the seeds are fixed, so the outcome
is deterministic (and passed).  At N = 4000 per sample the test rejects a CDF difference of about 0.05 (critical
KS distance sqrt(-ln(5e-5) / N)); :func:`test_the_ks_check_has_power` shows that a 15% error in a scale is caught.
Parameters that are deterministic under a law (``Ss`` for ``a* = 1``, ``r0`` for the ResNet at ``w0 = 0`` under
the angle teacher, ...) are compared with ``allclose`` instead: a KS test on a constant says nothing, and one
rounding difference would make it fail.
"""

from __future__ import annotations

import math
import tracemalloc

import numba
import numpy as np
import pytest
from scipy import stats

from sims.engines import closed_forms as cf
from sims.engines.rng import chi_square, gamma, stream_states
from sims.runs import samplers
from sims.runs.classify import wilson
from sims.runs.order_samplers import OrderParameters, draw_order_parameters
from sims.runs.samplers import Init, Teacher
from theory import Model

N = 4000
KS_P = 1e-4  # Bonferroni over ~120 KS tests: family-wise false alarm <= 1.2% for a correct sampler
FIELDS = OrderParameters._fields

CASES = [  # (model, p, k, teacher, init)
    ("resnet", 8, 8, Teacher(), Init()),  # the defaults: cap pi/2, Gaussian a*, w0 = 0, a0 in the ball
    ("resnet", 3, 2, Teacher(w="sphere", require_spurious=True), Init(a="gaussian")),
    ("resnet", 7, 50, Teacher(w="angle", angle=1.0, a="ones"), Init(w="gaussian", w_scale=0.7)),
    ("resnet", 8, 8, Teacher(w="cap", phi_max=2.5, a="fixed", a_value=(0.3, -1.2, 2.0, 0.0, 0.5, 0.5, -0.1, 1.1)),
     Init(w="sphere", a_radius=1.5)),
    ("resnet", 50, 7, Teacher(w="cap", phi_max=math.pi, require_spurious=True), Init(w="gaussian", w_scale=1.3)),
    ("resnet", 3, 2, Teacher(w="cap", phi_max=0.6, a="ones"), Init(w="sphere", a="gaussian", a_radius=0.5)),
    ("resnet", 2, 2, Teacher(w="sphere", a="fixed", a_value=(1.0, -0.5)), Init(w="gaussian", a="gaussian")),
    ("resnet", 1, 1, Teacher(w="cap", phi_max=1.0, a="fixed", a_value=(-0.7,)), Init(w="gaussian", a="gaussian")),
    ("resnet", 1, 1, Teacher(w="angle", angle=math.pi, a="ones"), Init(w="sphere")),
    ("cnn", 3, 2, Teacher(w="sphere"), Init(w="sphere")),
    ("cnn", 7, 50, Teacher(w="cap", phi_max=0.4, require_spurious=True),
     Init(w="gaussian", w_scale=2.0, a="gaussian")),
    ("cnn", 1, 1, Teacher(w="sphere"), Init(w="sphere")),
    ("cnn", 2, 1, Teacher(w="cap", phi_max=0.8, a="ones"), Init(w="gaussian", a="gaussian")),
    # a* parallel to 1: the frame (1, a*) is degenerate
    ("cnn-unnormalized", 8, 8, Teacher(w="angle", angle=0.3, a="fixed", a_value=(2.0,) * 8), Init(w="gaussian")),
]


def _vector(states, *, p, k, teacher, init, model) -> OrderParameters:
    """The order parameters computed from the vector sampler's draws."""
    v = np.full(p, 1.0 / math.sqrt(p))
    WS, AS, W0, A0 = samplers.draw(states, p=p, k=k, teacher=teacher, init=init, shortcut=v)
    WT = W0 + v if Model.of(model).shortcut else W0
    c0 = np.einsum("ij,ij->i", WT, WS)
    r0 = np.linalg.norm(WT - c0[:, None] * WS, axis=1)
    return OrderParameters(c0, r0, A0.sum(1), (A0 * A0).sum(1), (A0 * AS).sum(1), AS.sum(1), (AS * AS).sum(1), WS @ v)


def _same_law(x: np.ndarray, y: np.ndarray, name: str) -> None:
    scale = max(np.abs(x).max(), np.abs(y).max(), 1e-300)
    if np.ptp(x) <= 1e-12 * scale and np.ptp(y) <= 1e-12 * scale:  # a constant under this law
        np.testing.assert_allclose(y, x[0], rtol=1e-12, atol=1e-12 * scale, err_msg=name)
        return
    # 12 significant digits: atoms of discrete laws compare equal whatever the rounding of each sampler (for p = 1
    # the vector sampler's w0 = g / sqrt(g^2) is +-1 only within an ulp; without the rounding KS sees two atoms)
    digits = 12 - int(math.floor(math.log10(scale)))
    pvalue = stats.ks_2samp(np.round(x, digits), np.round(y, digits), method="asymp").pvalue
    assert pvalue > KS_P, f"{name}: KS p-value {pvalue:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_direct_law_is_the_vector_samplers(case):
    model, p, k, teacher, init = CASES[case]
    kw = dict(p=p, k=k, teacher=teacher, init=init, model=model)
    vec = _vector(stream_states(100 + case, 0, N), **kw)
    direct = draw_order_parameters(stream_states(200 + case, 0, N), **kw)
    for name in FIELDS:
        x, y = getattr(vec, name), getattr(direct, name)
        assert y.shape == (N,) and y.dtype == np.float64
        _same_law(x, y, f"case {case} ({model}, p={p}, k={k}) {name}")
    assert np.all(direct.r0 >= 0.0)


def test_the_ks_check_has_power():
    """A 15% error in the filter's scale is caught at N runs (and so is a wrong radius exponent)."""
    kw = dict(p=8, k=8, teacher=Teacher(), model="cnn")
    vec = _vector(stream_states(1, 0, N), init=Init(w="gaussian", w_scale=1.0), **kw)
    wrong = draw_order_parameters(stream_states(2, 0, N), init=Init(w="gaussian", w_scale=1.15), **kw)
    assert stats.ks_2samp(vec.r0, wrong.r0).pvalue < KS_P
    ball = draw_order_parameters(stream_states(3, 0, N), init=Init(w="sphere", a_radius=1.0), **kw)
    assert stats.ks_2samp(ball.Q0, stats.uniform.rvs(size=N, random_state=4) ** (2 / 6)).pvalue < KS_P


def test_resnet_at_the_shortcut_and_deterministic_teachers_are_exact():
    o = draw_order_parameters(stream_states(5, 0, 500), p=9, k=4, teacher=Teacher(w="cap", phi_max=2.0),
                              init=Init(), model="resnet")
    np.testing.assert_array_equal(o.c0, o.vw)
    np.testing.assert_allclose(o.r0, np.sqrt(1.0 - o.vw**2), rtol=1e-12, atol=1e-15)
    assert np.all(o.vw >= math.cos(2.0) - 1e-15)
    np.testing.assert_allclose(o.Q0 / o.Qs, o.Q0 / o.Qs.clip(1e-300))  # finite
    assert np.all(o.Q0 <= o.Qs * (1 + 1e-12))  # the ball of radius ||a*||
    a = (0.3, -1.0, 2.5)
    o = draw_order_parameters(stream_states(5, 0, 50), p=4, k=3, teacher=Teacher(w="angle", angle=0.5, a="fixed",
                              a_value=a), init=Init(w="sphere"), model="cnn")
    np.testing.assert_allclose(o.Ss, sum(a), rtol=1e-14)
    np.testing.assert_allclose(o.Qs, np.dot(a, a), rtol=1e-14)
    np.testing.assert_allclose(o.vw, math.cos(0.5), rtol=1e-15)
    np.testing.assert_allclose(o.c0**2 + o.r0**2, 1.0, rtol=1e-12)  # the CNN's sphere init is a unit w0
    o = draw_order_parameters(stream_states(5, 0, 50), p=4, k=10**6, teacher=Teacher(a="ones"), init=Init(),
                              model="resnet")
    assert np.all(o.Ss == 10**6) and np.all(o.Qs == 10**6)


def test_require_spurious_gives_only_teachers_with_a_spurious_point():
    o = draw_order_parameters(stream_states(6, 0, 2000), p=5, k=2, teacher=Teacher(require_spurious=True),
                              init=Init(), model="resnet")
    assert all(cf.spurious_margin(2, s, q) > 0.0 for s, q in zip(o.Ss, o.Qs, strict=True))


def test_require_spurious_gives_up_with_the_vector_samplers_error(monkeypatch):
    """With no redraw allowed some run fails; the kernel runs as Python so the patched limit is seen."""
    from sims.runs import order_samplers

    monkeypatch.setattr(samplers, "_MAX_REDRAWS", 0)
    monkeypatch.setattr(order_samplers, "_teacher_a", order_samplers._teacher_a.py_func)
    monkeypatch.setattr(order_samplers, "_draw_teacher", order_samplers._draw_teacher.py_func)
    order_samplers._TEACHERS.clear()  # a memoized draw would not run the patched kernel
    with pytest.raises(ValueError, match="teacher.require_spurious: no Gaussian a"):
        draw_order_parameters(stream_states(14, 0, 50), p=3, k=2, teacher=Teacher(require_spurious=True),
                              init=Init(), model="resnet")


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 3, 8])
def test_probability_of_a_spurious_point_agrees_between_the_samplers(k):
    """P(spurious_margin > 0) for a Gaussian a*, both ways: 99.999% Wilson intervals (z = 4.42) overlap."""
    n = 20_000
    kw = dict(p=3, k=k, teacher=Teacher(), init=Init(), model="resnet")
    vec = _vector(stream_states(7, 0, n), **kw)
    direct = draw_order_parameters(stream_states(8, 0, n), **kw)
    counts = [sum(cf.spurious_margin(k, s, q) > 0.0 for s, q in zip(o.Ss, o.Qs, strict=True)) for o in (vec, direct)]
    (lo1, hi1), (lo2, hi2) = (wilson(c, n, z=4.42) for c in counts)
    assert 0 < counts[0] < n and lo1 <= hi2 and lo2 <= hi1, counts


def test_same_seed_same_numbers_any_threads_any_split():
    kw = dict(p=6, k=5, teacher=Teacher(w="sphere", require_spurious=True), init=Init(w="gaussian", a="gaussian"),
              model="resnet")
    ref = draw_order_parameters(stream_states(9, 0, 1000), **kw)
    again = draw_order_parameters(stream_states(9, 0, 1000), **kw)
    split = [draw_order_parameters(stream_states(9, a, b), **kw) for a, b in ((0, 313), (313, 1000))]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = draw_order_parameters(stream_states(9, 0, 1000), **kw)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = draw_order_parameters(stream_states(9, 0, 1000), **kw)
    finally:
        numba.set_num_threads(before)
    for name in FIELDS:
        x = getattr(ref, name)
        for other in (again, one, two):
            np.testing.assert_array_equal(getattr(other, name), x, err_msg=name)
        np.testing.assert_array_equal(np.concatenate([getattr(s, name) for s in split]), x, err_msg=name)


def test_the_streams_are_advanced_in_place():
    states = stream_states(10, 0, 20)
    start = states.copy()
    first = draw_order_parameters(states, p=3, k=3, teacher=Teacher(), init=Init(), model="resnet")
    assert np.all(np.any(states != start, axis=1))
    second = draw_order_parameters(states, p=3, k=3, teacher=Teacher(), init=Init(), model="resnet")
    assert not np.any(first.Qs == second.Qs)


def test_a_million_wide_model_is_drawn_in_o1_memory_per_run():
    kw = dict(p=10**6, k=10**6, teacher=Teacher(require_spurious=True), init=Init(w="gaussian", a="gaussian"),
              model="resnet")
    draw_order_parameters(stream_states(11, 0, 2), **kw)  # compile and warm up
    states = stream_states(11, 0, 1000)
    tracemalloc.start()
    try:
        o = draw_order_parameters(states, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # one vector of length 1e6 alone would be 8 MB
    for name in FIELDS:
        assert np.all(np.isfinite(getattr(o, name))), name
    assert abs(o.Qs.mean() / 10**6 - 1.0) < 1e-3  # chi2_{k-1} + 1 normal^2, relative sd sqrt(2 / k) / sqrt(1000)
    assert abs((o.r0**2).mean() - 2.0) < 1e-2  # |w0_perp|^2 ~ 1 plus the shortcut's 1 - t^2 ~ 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(p=0), "p"),
        (dict(k=2.5), "k"),
        (dict(states=np.zeros((3, 4))), "states"),
        (dict(states=np.zeros((3, 3), dtype=np.uint64)), "states"),
        (dict(teacher="cap"), "teacher"),
        (dict(init=None), "init"),
        (dict(model="mlp"), "model"),
        (dict(teacher=Teacher(w="ball")), "teacher.w"),
        (dict(teacher=Teacher(a="fixed", a_value=(1.0,))), "teacher.a_value"),
        (dict(init=Init(w="bogus")), "init.w"),
        (dict(init=Init(a_radius=-1.0)), "init.a_radius"),
        (dict(init=Init(w="zero"), model="cnn"), "init.w"),
        (dict(p=1, teacher=Teacher(w="angle", angle=1.0)), "teacher.angle"),
        (dict(k=1, teacher=Teacher(require_spurious=True)), "teacher.require_spurious"),
    ],
)
def test_bad_input_raises_naming_the_field(kwargs, field):
    call = dict(states=stream_states(0, 0, 3), p=4, k=3, teacher=Teacher(), init=Init(w="sphere"), model="resnet")
    call.update(kwargs)
    states = call.pop("states")
    with pytest.raises(ValueError, match=field):
        draw_order_parameters(states, **call)


@numba.njit
def _gammas(states, alpha, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = gamma(states[0], alpha)
    return out


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.5, 40.0])
def test_gamma_variates(alpha):
    x = _gammas(stream_states(12, 0, 1), alpha, 20_000)
    assert stats.kstest(x, stats.gamma(alpha).cdf).pvalue > KS_P


def test_chi_square_of_no_degree_of_freedom_is_zero():
    st = stream_states(13, 0, 1)
    start = st.copy()
    assert chi_square(st[0], 0) == 0.0 and chi_square(st[0], -1) == 0.0
    np.testing.assert_array_equal(st, start)  # and draws nothing
