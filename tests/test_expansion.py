"""Deep linear expansions: layout, contraction, initializations, bad input, the depth-1 identity with the plain
engine, the chain rule of one factor step, stuck saddles and determinism."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

import sims
import theory
from sims.engines import expansion_kernels as ek
from sims.engines.rng import stream_states
from sims.methods import expansion as ex

K, P = 5, 4
TEACHER = sims.Teacher(require_spurious=True)
SCHED = sims.Schedule.constant(0.2, 0.5)
# Array fields of SimulationResult compared for bit-identity (settings and extras are compared separately).
ARRAY_FIELDS = [f.name for f in fields(sims.SimulationResult) if f.name not in ("settings", "extras")]


def _equal_results(r1, r2, *, extras: bool = True) -> None:
    for name in ARRAY_FIELDS:
        x, y = getattr(r1, name), getattr(r2, name)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    if extras:
        assert r1.extras.keys() == r2.extras.keys()
        for key in r1.extras:
            assert np.array_equal(r1.extras[key], r2.extras[key], equal_nan=True), key


def _random_factors(layout: ex.Layout, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(layout.size) * 0.7


# ---- layout and contraction --------------------------------------------------------------------------------------


def test_factor_dims_follow_the_expandnets_rule():
    # m inputs, one output: first hidden width r m, the others r n = r
    assert ex.factor_dims(5, 1, 3) == (5, 1)
    assert ex.factor_dims(5, 2, 3) == (5, 15, 1)
    assert ex.factor_dims(5, 4, 2) == (5, 10, 2, 2, 1)
    layout = ex.Layout(p=P, k=K, target="both", depth=3, rate=2)
    table = layout.table
    # (group, j, rows, cols, offset): w factors first, contiguous, then a
    assert table[:, :4].tolist() == [[0, 1, 2 * P, P, ], [0, 2, 2, 2 * P], [0, 3, 1, 2],
                                     [1, 1, 2 * K, K], [1, 2, 2, 2 * K], [1, 3, 1, 2]]
    sizes = table[:, 2] * table[:, 3]
    assert np.array_equal(table[:, 4], np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    assert layout.size == sizes.sum()
    assert ex.Layout(p=P, k=K, target="a", depth=2, rate=1).table[:, 0].tolist() == [1, 1]


def test_flatten_unflatten_roundtrip_and_contract_forms_agree():
    rng = np.random.default_rng(0)
    layout = ex.Layout(p=P, k=K, target="both", depth=3, rate=2)
    buf = _random_factors(layout, rng)
    groups = layout.unflatten(buf)
    assert np.array_equal(layout.flatten(groups), buf)
    w_d, a_d = sims.contract(groups)
    w_f, a_f = sims.contract(buf, layout)
    # the same products in the same order: identical up to the summation order of numba (1e-14)
    np.testing.assert_allclose(w_f, w_d, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a_f, a_d, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(w_d, (groups["w"][2] @ groups["w"][1] @ groups["w"][0])[0], rtol=1e-14)
    batch = np.stack([buf, 2 * buf])
    w_b, _ = sims.contract(batch, layout)
    np.testing.assert_allclose(w_b[1], 2**3 * w_f, rtol=1e-13)  # each of the 3 factors doubled
    # a plain layer passes through
    lay_w = ex.Layout(p=P, k=K, target="w", depth=2, rate=1)
    w1, a1 = sims.contract(_random_factors(lay_w, rng), lay_w, a=np.arange(K))
    assert w1.shape == (P,) and np.array_equal(a1, np.arange(K))


@pytest.mark.parametrize("model", ["resnet", "cnn", "cnn-unnormalized"])
@pytest.mark.parametrize("target", ["w", "a", "both"])
def test_expanded_network_computes_the_contracted_function(model, target):
    """Applying the factors in sequence to each patch gives the contracted network's outputs (1e-12) and hence the
    same empirical loss on any sample."""
    rng = np.random.default_rng(1)
    layout = ex.Layout(p=P, k=K, target=target, depth=3, rate=2)
    groups = layout.unflatten(_random_factors(layout, rng))
    w_plain, a_plain = rng.standard_normal(P), rng.standard_normal(K)
    w, a = sims.contract(groups, w=w_plain, a=a_plain)
    Z = rng.standard_normal((400, K, P))
    f_exp = ex.forward(Z, w_factors=groups.get("w"), a_factors=groups.get("a"), w=w_plain, a=a_plain, model=model)
    f_con = ex.forward(Z, w=w, a=a, model=model)
    # direct formula of the contracted network, independent of ex.forward
    v = np.ones(P) / math.sqrt(P) if model == "resnet" else np.zeros(P)
    wt = w + v
    pre = Z @ (wt / np.linalg.norm(wt) if model != "cnn-unnormalized" else wt)
    f_ref = np.maximum(pre, 0.0) @ a
    scale = np.max(np.abs(f_ref))
    # rounding of products of O(1) matrices with <= 16 terms: 1e-12 relative to the output scale
    assert np.max(np.abs(f_exp - f_ref)) <= 1e-12 * scale
    assert np.max(np.abs(f_con - f_ref)) <= 1e-12 * scale
    ws = rng.standard_normal(P)
    ws /= np.linalg.norm(ws)
    ast = rng.standard_normal(K)
    f_star = np.maximum(Z @ ws, 0.0) @ ast
    loss_exp = 0.5 * np.mean((f_exp - f_star) ** 2)
    loss_con = 0.5 * np.mean((f_ref - f_star) ** 2)
    assert loss_exp == pytest.approx(loss_con, rel=1e-12)


@pytest.mark.parametrize("model", ["resnet", "cnn", "cnn-unnormalized"])
def test_kernel_population_loss_is_the_contracted_networks(model):
    """The expanded run's loss at step 0 (computed by the kernel from its own chain contraction) equals the theory's
    population loss of ``contract(factors0)`` (1e-12), and ``w0, a0`` are that contraction."""
    expansion = sims.Expansion(target="both", depth=3, rate=2, init="gaussian", scale=1.2)
    init = sims.Init(w="gaussian") if model != "resnet" else None
    res = sims.simulate(model=model, k=K, p=P, runs=6, steps=0, schedule=SCHED, teacher=TEACHER, init=init, seed=3,
                        expansion=expansion)
    layout = ex.Layout.of(expansion, p=P, k=K)
    w0, a0 = sims.contract(res.extras["factors0"], layout)
    np.testing.assert_allclose(res.w0, w0, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(res.a0, a0, rtol=1e-13, atol=1e-15)
    for r in range(len(res)):
        L = theory.population_loss(w0[r], a0[r], w_star=res.w_star[r], a_star=res.a_star[r], model=model)
        assert res.final_loss[r] == pytest.approx(L, rel=1e-12)


def test_expanded_forward_matches_the_population_loss_by_monte_carlo():
    """Independent check of forward() and the normalization: Monte Carlo loss of the expanded network within 5
    standard errors of the closed-form population loss of the contraction."""
    rng = np.random.default_rng(2)
    layout = ex.Layout(p=P, k=K, target="both", depth=2, rate=3)
    groups = layout.unflatten(_random_factors(layout, rng))
    ws = rng.standard_normal(P)
    ws /= np.linalg.norm(ws)
    ast = rng.standard_normal(K)
    w, a = sims.contract(groups)
    Z = rng.standard_normal((100_000, K, P))
    sq = 0.5 * (ex.forward(Z, w_factors=groups["w"], a_factors=groups["a"]) - np.maximum(Z @ ws, 0.0) @ ast) ** 2
    L = theory.population_loss(w, a, w_star=ws, a_star=ast, model="resnet")
    assert abs(sq.mean() - L) <= 5 * sq.std() / math.sqrt(sq.size)


# ---- initializations ---------------------------------------------------------------------------------------------


def test_balanced_init_realizes_the_engine_init_and_is_balanced():
    init = sims.Init(w="gaussian", w_scale=0.7)
    plain = sims.simulate(model="resnet", k=K, p=P, runs=8, steps=0, schedule=SCHED, teacher=TEACHER, init=init,
                          seed=5)
    expansion = sims.Expansion(target="both", depth=4, rate=2, init="balanced")
    res = sims.simulate(model="resnet", k=K, p=P, runs=8, steps=0, schedule=SCHED, teacher=TEACHER, init=init, seed=5,
                        expansion=expansion)
    # contraction of s q_N ... q_0^T: N-fold products of numbers ~1, so 1e-14 relative
    np.testing.assert_allclose(res.w0, plain.w0, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(res.a0, plain.a0, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(res.w_star, plain.w_star)
    layout = ex.Layout.of(expansion, p=P, k=K)
    for r in range(8):
        for name, mats in layout.unflatten(res.extras["factors0"][r]).items():
            scale = max(np.linalg.norm(m) for m in mats) ** 2
            assert ex.balance_gap(mats) <= 1e-14 * scale, name
            assert all(np.linalg.matrix_rank(m, tol=1e-10 * np.linalg.norm(m)) == 1 for m in mats)
            # equal singular values across the chain: ||W_j|| = ||w0||^(1/N)
            target = plain.w0[r] if name == "w" else plain.a0[r]
            norms = [np.linalg.norm(m) for m in mats]
            np.testing.assert_allclose(norms, np.linalg.norm(target) ** (1 / 4), rtol=1e-13)


def test_balanced_factors_numpy_construction():
    e = np.array([3.0, -4.0, 0.0])
    mats = ex.balanced_factors(e, 3, 2, seed=1)
    assert [m.shape for m in mats] == [(6, 3), (2, 6), (1, 2)]
    np.testing.assert_allclose(sims.contract({"w": mats})[0], e, rtol=1e-14, atol=1e-14)
    assert ex.balance_gap(mats) < 1e-13
    assert np.array_equal(ex.balanced_factors(e, 1)[0], e[None, :])  # depth 1: the row itself, exactly
    assert all(not m.any() for m in ex.balanced_factors(np.zeros(3), 2))


def test_auto_init_uses_a_zero_last_factor_for_the_resnet_zero_branch():
    """The ResNet's w0 = 0 balanced is the all-zero saddle; "auto" realizes it by a zero last factor instead."""
    res = sims.simulate(model="resnet", k=K, p=P, runs=6, steps=300, schedule=SCHED, teacher=TEACHER, seed=6,
                        expansion=sims.Expansion(target="w", depth=3, rate=2))
    layout = ex.Layout(p=P, k=K, target="w", depth=3, rate=2)
    mats = layout.unflatten(res.extras["factors0"])["w"]
    assert not mats[2].any() and mats[0].any() and mats[1].any()
    assert not res.w0.any()  # the product is exactly zero
    assert np.all(np.linalg.norm(res.w, axis=1) > 0)  # ... and it trains
    assert not np.any(res.stop_reason == "stuck")


def test_gaussian_init_has_the_documented_scale():
    """Entries N(0, scale^2 / fan_in): E||W_N ... W_1||^2 = scale^(2N) exactly (products of independent
    Gaussians); 4000 runs put the sample mean within 5 standard errors."""
    scale, depth = 0.8, 3
    res = sims.simulate(model="resnet", k=K, p=P, runs=4000, steps=0, schedule=SCHED, teacher=TEACHER, seed=7,
                        expansion=sims.Expansion(target="w", depth=depth, rate=2, init="gaussian", scale=scale))
    sq = np.einsum("ij,ij->i", res.w0, res.w0)
    assert abs(sq.mean() - scale ** (2 * depth)) <= 5 * sq.std() / math.sqrt(sq.size)


# ---- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"depth": 0}, "expansion.depth"),
    ({"depth": 1.5}, "expansion.depth"),
    ({"rate": 0}, "expansion.rate"),
    ({"rate": 2.5}, "expansion.rate"),
    ({"target": "b"}, "expansion.target"),
    ({"init": "orthogonal"}, "expansion.init"),
    ({"scale": -1.0}, "expansion.scale"),
    ({"scale": math.nan}, "expansion.scale"),
    ({"engine": "fast"}, "expansion.engine"),
    ({"pretrain_eta": (0.1,)}, "expansion.pretrain_eta"),
    ({"w0": [1.0, math.inf]}, "expansion.w0"),
    ({"a0": [[1.0, 2.0], [3.0, 4.0]]}, "expansion.a0"),
])
def test_bad_expansion_fields_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        sims.Expansion(**kwargs)


def test_balanced_init_of_an_unrealizable_end_to_end_matrix_raises():
    with pytest.raises(ValueError, match=r"expansion\.w0 must have length 4"):
        sims.simulate(model="resnet", k=K, p=P, runs=2, steps=1, schedule=SCHED, teacher=TEACHER,
                      expansion=sims.Expansion(init="balanced", w0=(1.0, 2.0, 3.0)))
    with pytest.raises(ValueError, match=r"expansion\.a0 must have length 5"):
        sims.simulate(model="resnet", k=K, p=P, runs=2, steps=1, schedule=SCHED, teacher=TEACHER,
                      expansion=sims.Expansion(target="a", init="balanced", a0=(1.0,)))
    with pytest.raises(ValueError, match="must be finite"):
        ex.balanced_factors([1.0, math.nan], 2)
    with pytest.raises(ValueError, match=r"row \(1 x m\)"):
        ex.balanced_factors(np.ones((2, 3)), 2)


def test_other_bad_uses_raise():
    with pytest.raises(ValueError, match="sims.Expansion"):
        sims.simulate(model="resnet", k=K, p=P, runs=2, steps=1, schedule=SCHED, expansion={"depth": 2})
    with pytest.raises(ValueError, match="zero filter"):
        sims.simulate(model="cnn", k=K, p=P, runs=2, steps=1, schedule=SCHED, teacher=TEACHER,
                      expansion=sims.Expansion(target="w", depth=2, init="zero-last"))
    with pytest.raises(ValueError, match="algorithm"):
        sims.simulate(model="resnet", k=K, p=P, runs=2, steps=1, schedule=SCHED, teacher=TEACHER,
                      algorithm="gd-fixed", batch_size=4, expansion=sims.Expansion(depth=2))
    layout = ex.Layout(p=P, k=K, target="w", depth=2, rate=1)
    with pytest.raises(ValueError, match="entries per run"):
        sims.contract(np.zeros(layout.size + 1), layout)
    with pytest.raises(ValueError, match="layout"):
        sims.contract(np.zeros(layout.size))


# ---- depth 1 is the plain network ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["resnet", "cnn"])
@pytest.mark.parametrize("algorithm", ["gd", "sgd"])
def test_depth_one_dispatches_to_the_plain_engine_bit_identically(model, algorithm):
    kw = dict(model=model, k=K, p=P, runs=20, steps=400, schedule=SCHED, teacher=TEACHER, seed=11,
              algorithm=algorithm, batch_size=8 if algorithm == "sgd" else None)
    plain = sims.simulate(**kw)
    for target in ("w", "a", "both"):
        for rate in (1, 3):
            res = sims.simulate(**kw, expansion=sims.Expansion(target=target, depth=1, rate=rate))
            _equal_results(res, plain)
            assert res.settings["expansion"]["depth"] == 1


SCHEDULES = {
    "constant": SCHED,
    "two-stage": sims.Schedule.two_stage(40, 0.002, 0.5, 0.2, 0.5),
    "perturbed": sims.Schedule.perturbed(0.1, 0.3, noise=0.01, half_life=50),
    "prescribed": sims.Schedule.prescribed_warmup(0.2, 0.5),
}


@pytest.mark.parametrize("model", ["resnet", "cnn", "cnn-unnormalized"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_genuinely_factored_depth_one_agrees_with_the_plain_engine(model, schedule):
    """engine="factored" runs depth 1 through the factor kernel (chain of one factor, same noise draws): same
    stops and outcomes, weights within 1e-12 relative (the kernels round differently: w~ vs w, alpha/beta form)."""
    init = sims.Init(w="gaussian", w_scale=0.8) if model != "resnet" else None
    kw = dict(model=model, k=K, p=P, runs=24, steps=1500, schedule=SCHEDULES[schedule], teacher=TEACHER, seed=12,
              init=init)
    if model == "cnn-unnormalized" and schedule == "prescribed":
        # the prescribed warmup needs a weight-normalized model: both paths refuse it the same way
        for expansion in (None, sims.Expansion(target="w", depth=1, engine="factored")):
            with pytest.raises(ValueError, match="prescribed warmup needs a weight-normalized model"):
                sims.simulate(**kw, expansion=expansion)
        return
    plain = sims.simulate(**kw)
    for target in ("w", "both"):
        res = sims.simulate(**kw, expansion=sims.Expansion(target=target, depth=1, engine="factored"))
        assert np.array_equal(res.stop_reason, plain.stop_reason)
        assert np.array_equal(res.steps, plain.steps)
        assert np.array_equal(res.outcome, plain.outcome)
        for name in ("w", "a", "w0", "a0"):
            x, y = getattr(res, name), getattr(plain, name)
            scale = np.maximum(np.abs(y).max(axis=1, keepdims=True), 1.0)
            assert np.max(np.abs(x - y) / scale) <= 1e-12, name
        # the loss cancels O(1) terms down to ~1e-10 L_ref, and phi near 0 comes from its cosine (sqrt(eps) ~ 1e-8
        # radians from rounding alone): compare the loss on the L_ref scale and the cosine of the angle
        assert np.max(np.abs(res.final_loss - plain.final_loss) / plain.loss_ref) <= 1e-12
        assert np.max(np.abs(np.cos(res.final_phi) - np.cos(plain.final_phi))) <= 1e-12


def test_balanced_dynamics_do_not_depend_on_the_rate():
    """A balanced rank-one chain stays rank one with fixed hidden directions, so the width (rate) drops out of the
    dynamics: rates 1 and 4 give the same runs up to rounding (3e-15 observed; 1e-12 allowed) at stable steps."""
    kw = dict(model="resnet", k=K, p=P, runs=20, steps=2000, schedule=sims.Schedule.constant(0.05, 0.1),
              teacher=TEACHER, init=sims.Init(w="gaussian", w_scale=0.5), seed=13)
    r1 = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=3, rate=1, init="balanced"))
    r4 = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=3, rate=4, init="balanced"))
    assert np.array_equal(r1.outcome, r4.outcome) and np.array_equal(r1.steps, r4.steps)
    np.testing.assert_allclose(r1.w, r4.w, atol=1e-12)
    np.testing.assert_allclose(r1.a, r4.a, atol=1e-12)
    # ... while an unbalanced (Gaussian) start does depend on the width
    g1 = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=3, rate=1, init="gaussian", scale=1.0))
    g4 = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=3, rate=4, init="gaussian", scale=1.0))
    assert np.max(np.abs(g1.w0 - g4.w0)) > 1e-3


# ---- one step: the exact chain rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["resnet", "cnn", "cnn-unnormalized"])
def test_one_factor_step_is_the_chain_rule_of_the_closed_form_gradient(model):
    """With eta = 1 one step moves every factor by exactly ``-dL/dW_j = -(W_N..W_{j+1})^T grad L^T
    (W_{j-1}..W_1)^T`` (NumPy, from theory.population_gradient); also checked against central finite differences
    of the population loss of the contraction."""
    expansion = sims.Expansion(target="both", depth=3, rate=2, init="gaussian", scale=1.1)
    init = sims.Init(w="gaussian") if model != "resnet" else None
    res = sims.simulate(model=model, k=K, p=P, runs=3, steps=1, schedule=sims.Schedule.constant(1.0, 1.0),
                        teacher=TEACHER, init=init, seed=14, expansion=expansion, allow_unstable=True,
                        tolerances=sims.Tolerances(loss_tol=0.0, grad_tol=0.0, stop_trapped=False))
    layout = ex.Layout.of(expansion, p=P, k=K)
    for r in range(3):
        groups = layout.unflatten(res.extras["factors0"][r])
        w, a = sims.contract(groups)
        gw, ga = theory.population_gradient(w, a, w_star=res.w_star[r], a_star=res.a_star[r], model=model)
        expected = {}
        for name, g in (("w", gw), ("a", ga)):
            mats = groups[name]
            grads = []
            for j in range(len(mats)):
                above = np.eye(1)  # W_N ... W_{j+1}
                for m in reversed(mats[j + 1 :]):
                    above = above @ m
                below = np.eye(mats[0].shape[1])  # W_{j-1} ... W_1
                for m in mats[:j]:
                    below = m @ below
                grads.append(above.T @ g[None, :] @ below.T)
            expected[name] = grads
        step = layout.unflatten(res.extras["factors0"][r] - res.extras["factors"][r])
        for name in ("w", "a"):
            for j, (got, want) in enumerate(zip(step[name], expected[name], strict=True)):
                # one subtraction of O(1) numbers: 1e-12 relative to the gradient's scale
                assert np.max(np.abs(got - want)) <= 1e-12 * max(np.max(np.abs(want)), 1e-3), (name, j)
        # finite differences of L(contract(F)) along a random direction
        F0 = res.extras["factors0"][r]
        d = np.random.default_rng(r).standard_normal(F0.size)
        h = 1e-6

        def loss_at(F, r=r):
            w_, a_ = sims.contract(layout.unflatten(F))
            return theory.population_loss(w_, a_, w_star=res.w_star[r], a_star=res.a_star[r], model=model)

        fd = (loss_at(F0 + h * d) - loss_at(F0 - h * d)) / (2 * h)
        full = res.extras["factors0"][r] - res.extras["factors"][r]
        # central differences: O(h^2) truncation and 1e-16/h rounding, so 1e-7 relative
        assert fd == pytest.approx(float(full @ d), rel=1e-7, abs=1e-9)


# ---- saddles: the all-zero factorization ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3])
def test_all_zero_factors_are_a_saddle_reported_stuck(depth):
    kw = dict(model="resnet", k=K, p=P, runs=12, steps=2000, schedule=SCHED, teacher=TEACHER, seed=15)
    both = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=depth, init="zero"))
    # every factor gradient vanishes at once: stuck at step 0, never "global"
    assert np.all(both.stop_reason == "stuck") and np.all(both.steps == 0)
    assert np.all(both.outcome == "saddle")
    assert np.all(both.extras["factor_grad_norm"] == 0.0) and np.all(both.final_grad_norm > 0)
    # only the residual branch zero: a trains, the branch never leaves 0, and the run ends stuck, not converged
    w_only = sims.simulate(**kw, expansion=sims.Expansion(target="w", depth=depth, init="zero"))
    assert not w_only.w.any()
    assert np.all(w_only.stop_reason == "stuck") and np.all(w_only.outcome == "saddle")
    assert np.all(w_only.steps > 0)
    assert not np.any(w_only.outcome == "global")
    # depth 1 from the same zero init is plain GD from w0 = 0: not a saddle
    one = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=1, init="zero"))
    assert not np.any(one.stop_reason == "stuck") and np.mean(one.outcome == "global") > 0.5


# ---- determinism ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "init"), [("gd", "auto"), ("gd", "gaussian"), ("sgd", "zero-last"),
                                                 ("gd", "plus-init")])
def test_bit_identical_for_any_thread_count_and_split(algorithm, init):
    import numba

    expansion = sims.Expansion(target="both", depth=3, rate=2, init=init, pretrain_steps=20, pretrain_batch=4)
    kw = dict(model="resnet", k=K, p=P, steps=300, schedule=SCHEDULES["perturbed"] if algorithm == "gd" else SCHED,
              teacher=TEACHER, seed=16, algorithm=algorithm, batch_size=4 if algorithm == "sgd" else None,
              expansion=expansion)
    full = sims.simulate(**kw, runs=10, threads=1)
    if numba.config.NUMBA_NUM_THREADS > 1:
        _equal_results(sims.simulate(**kw, runs=10, threads=2), full)
    parts = [sims.simulate(**kw, runs=n, run_offset=o) for o, n in ((0, 3), (3, 1), (4, 6))]
    _equal_results(sims.SimulationResult.concat(parts), full)


def test_plus_init_pretrains_and_transfers():
    kw = dict(model="resnet", k=K, p=P, runs=6, steps=0, schedule=SCHED, teacher=TEACHER, seed=17)
    start = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=2, init="plus-init", pretrain_steps=0))
    trained = sims.simulate(**kw, expansion=sims.Expansion(target="both", depth=2, init="plus-init",
                                                           pretrain_steps=25, pretrain_batch=4))
    assert np.all(start.extras["pretrain_steps"] == 0) and np.all(trained.extras["pretrain_steps"] == 25)
    # the pretraining starts from the same draws (ResNet branch with a zero last factor) and moves every factor
    layout = ex.Layout(p=P, k=K, target="both", depth=2, rate=1)
    assert not layout.unflatten(start.extras["factors0"][0])["w"][1].any()
    moved = layout.unflatten(trained.extras["factors0"][0] - start.extras["factors0"][0])
    assert all(np.abs(m).max() > 0 for mats in moved.values() for m in mats)
    np.testing.assert_array_equal(trained.w_star, start.w_star)


def _nonlinear_loss(params, layout, Z, v, ws, ast, normalized, w_plain, a_plain):
    """Independent NumPy loss of the nonlinear counterpart on the batch ``Z`` (B, k, p): ReLU between factors, RMS
    normalization over the batch, mean squared error / 2."""
    groups = layout.unflatten(params[: layout.size])
    wpl = params[layout.size : layout.size + Z.shape[2]] if w_plain else None
    apl = params[layout.size + Z.shape[2] :] if a_plain else None
    if "w" in groups:
        h = Z
        for j, m in enumerate(groups["w"]):
            h = h @ m.T
            if j < len(groups["w"]) - 1:
                h = np.maximum(h, 0.0)
        s = h[..., 0] + Z @ v
    else:
        s = Z @ (v + wpl)
    y = s / np.sqrt(np.mean(s**2)) if normalized else s
    x = np.maximum(y, 0.0)
    if "a" in groups:
        h = x
        for j, m in enumerate(groups["a"]):
            h = h @ m.T
            if j < len(groups["a"]) - 1:
                h = np.maximum(h, 0.0)
        out = h[..., 0]
    else:
        out = x @ apl
    fs = np.maximum(Z @ ws, 0.0) @ ast
    return 0.5 * np.mean((out - fs) ** 2)


@pytest.mark.parametrize(("model", "target"), [("resnet", "both"), ("cnn", "w"), ("cnn-unnormalized", "a")])
def test_plus_init_step_is_the_gradient_of_the_nonlinear_counterpart(model, target):
    """One pretraining step with eta = 1 moves the parameters by minus the gradient of the nonlinear counterpart's
    minibatch loss: compared with central finite differences of an independent NumPy loss on the same minibatch
    (regenerated from a copy of the run's stream)."""
    from sims.engines.rng import fill_normal_zig

    rng = np.random.default_rng(18)
    layout = ex.Layout(p=P, k=K, target=target, depth=3, rate=2)
    F = rng.standard_normal((1, layout.size)) * 0.6
    W = rng.standard_normal((1, P)) * 0.5
    A = rng.standard_normal((1, K))
    v = np.ones(P) / math.sqrt(P) if model == "resnet" else np.zeros(P)
    ws = rng.standard_normal((1, P))
    ws /= np.linalg.norm(ws)
    ast = rng.standard_normal((1, K))
    states = stream_states(3, 0, 1)
    batch = 6
    Z = np.empty(batch * K * P)
    fill_normal_zig(states[0].copy(), Z)
    Z = Z.reshape(batch, K, P)
    normalized = model != "cnn-unnormalized"
    w_plain, a_plain = target == "a", target == "w"
    params0 = np.concatenate([F[0], W[0], A[0]])
    F1, W1, A1 = F.copy(), W.copy(), A.copy()
    done = np.zeros(1, dtype=np.int64)
    ek.pretrain_nonlinear(F1, layout.w_group, layout.a_group, W1, A1, v, ws, ast, normalized, (1, batch, 1.0, 1.0),
                          states, done)
    assert done[0] == 1
    step = params0 - np.concatenate([F1[0], W1[0], A1[0]])
    h = 1e-6
    for i in range(params0.size):
        is_plain_w = layout.size <= i < layout.size + P
        is_plain_a = i >= layout.size + P
        if (is_plain_w and not w_plain) or (is_plain_a and not a_plain):
            assert step[i] == 0.0  # a layer that is expanded keeps no plain copy
            continue
        e = np.zeros_like(params0)
        e[i] = h
        fd = (_nonlinear_loss(params0 + e, layout, Z, v, ws[0], ast[0], normalized, w_plain, a_plain)
              - _nonlinear_loss(params0 - e, layout, Z, v, ws[0], ast[0], normalized, w_plain, a_plain)) / (2 * h)
        # central differences of a piecewise-smooth loss away from kinks: 1e-6 relative / 1e-8 absolute
        assert step[i] == pytest.approx(fd, rel=1e-6, abs=1e-8), i
