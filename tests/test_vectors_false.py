"""``sims.simulate(..., vectors=False)``: runs on the order parameters alone, without any array of size runs x (k + p).

- the law: P(global) with ``vectors=False`` (order parameters drawn directly) agrees with ``vectors=True`` (vectors
  drawn, then reduced) for the ResNet with and without the prescribed warmup and the CNN with a two-stage schedule;
- the same computation: on the order parameters of vector draws (:func:`sims.runs.order_runs.from_vectors`), the
  order-parameter pipeline gives the vector pipeline's result (engine outputs bit for bit, outcome codes equal,
  rates to 1e-12), and the schedule, the classification and the unnormalized CNN's Hessian rate in their
  order-parameter form equal the vector forms on vector draws;
- bit-identical for any thread count and split of runs; bad input refused naming ``vectors``;
- ``k = p = 10**6`` with 10 000 runs runs quickly in little memory (and is refused with vectors).
"""

from __future__ import annotations

import math
import time
import tracemalloc

import numba
import numpy as np
import pytest

import sims
import theory
from sims import Init, Schedule, SimulationResult, Teacher
from sims.engines import driver
from sims.engines.rng import stream_states
from sims.runs import classify as cl
from sims.runs import order_runs, samplers
from sims.runs import simulate as sm
from sims.runs.classify import wilson
from sims.runs.schedules import optimal_eta_a, prescribed_warmup_steps, prescribed_warmup_steps_gram

K = P = 8
ETA_A = 0.9 * optimal_eta_a(K)
LIU = Teacher(w="cap", require_spurious=True)
CONFIGS = {
    "resnet-prescribed": dict(model="resnet", schedule=Schedule.prescribed_warmup(1.0 / K, ETA_A)),
    "resnet-constant": dict(model="resnet", schedule=Schedule.constant(1.0 / K, ETA_A)),
    "cnn-two-stage": dict(model="cnn", schedule=Schedule.two_stage(200, 0.02, ETA_A, 1.0 / K, ETA_A)),
}
Z999 = 3.2905267314918945  # two-sided 99.9%
VECTOR_FIELDS = ("w", "a", "w0", "a0", "w_star", "a_star")


def _kw(name, **extra):
    return dict(k=K, p=P, steps=2000, teacher=LIU, **CONFIGS[name], **extra)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_p_global_agrees_with_the_vector_draws(name):
    runs = 4000
    got = sims.simulate(**_kw(name), runs=runs, seed=5, vectors=False)
    ref = sims.simulate(**_kw(name), runs=runs, seed=6)
    assert got.order is not None and ref.order is None
    intervals = []
    for res in (got, ref):
        s = int(np.sum(res.outcome == "global"))
        intervals.append(wilson(s, runs, z=Z999))
    (lo1, hi1), (lo2, hi2) = intervals
    assert lo1 <= hi2 and lo2 <= hi1, (name, intervals)  # the 99.9% intervals overlap
    if name != "resnet-prescribed":  # the warmup makes (almost) every run global; elsewhere both outcomes occur
        assert 0.0 < float(lo1) and float(hi1) < 1.0


def _call(name_or_kw, runs, seed, **extra):
    kw = dict(_kw(name_or_kw), **extra) if isinstance(name_or_kw, str) else dict(name_or_kw, **extra)
    name, spec, opts = sm._select(None, None, "gd")
    call = sm._validate_common(spec, opts, runs=runs, seed=seed, run_offset=0, tolerances=None, n_record=64,
                               allow_unstable=False, threads=None, init=None, algorithm="gd", batch_size=None,
                               shortcut=None, **kw)
    return spec.validate(opts, call)


def _order_of(res: SimulationResult, model: str) -> order_runs.OrderParameters:
    v = theory.validation.shortcut_vector(None, res.w0.shape[1])
    WT0 = res.w0 + v if theory.Model.of(model).shortcut else res.w0
    return order_runs.from_vectors(WT0, res.w_star, res.a0, res.a_star, v)


UNNORMALIZED = dict(model="cnn-unnormalized", k=K, p=P, steps=3000, teacher=LIU, schedule=Schedule.constant(0.05, 0.5))


@pytest.mark.parametrize("name", ["resnet-constant", "cnn-two-stage", "unnormalized"])
def test_on_vector_draws_the_order_pipeline_is_the_vector_pipeline(name):
    """Same start, same engine: the driver's outputs are bit-identical; classification from Gram forms gives the
    same codes, the rates (the unnormalized CNN's from its Hessian on the small subspace) agree to 1e-12."""
    kw = UNNORMALIZED if name == "unnormalized" else _kw(name)
    runs, seed = 400, 11
    ref = sims.simulate(**kw, runs=runs, seed=seed)
    got = sm.run_without_vectors(_call(kw, runs, seed), _order_of(ref, kw["model"]))
    for f in ("stop_reason", "steps", "final_loss", "final_phi", "final_alignment", "final_grad_norm",
              "steps_to_tol", "slow_phase_end", "trajectory", "loss_ref", "warmup_steps", "warmup_eta_w"):
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
    np.testing.assert_array_equal(got.outcome, ref.outcome)
    assert len(set(ref.outcome)) >= 2  # global and spurious both occur
    np.testing.assert_array_equal(got.linear_regime, ref.linear_regime)
    for f in ("fitted_rate", "theory_rate"):
        np.testing.assert_allclose(getattr(got, f), getattr(ref, f), rtol=1e-12, atol=0, err_msg=f)
    assert np.isfinite(ref.theory_rate).sum() > 100
    # The final coordinates rebuild the final vectors.
    o = got.order
    A = o["x"][:, None] * ref.a0 + o["y"][:, None] + (1.0 + o["z"])[:, None] * ref.a_star
    np.testing.assert_allclose(A, ref.a, rtol=0, atol=1e-12)


def test_on_vector_draws_the_prescribed_warmup_resolves_the_same():
    ref = sims.simulate(**_kw("resnet-prescribed"), runs=400, seed=3)
    got = sm.run_without_vectors(_call("resnet-prescribed", 400, 3), _order_of(ref, "resnet"))
    np.testing.assert_array_equal(got.warmup_steps, ref.warmup_steps)
    np.testing.assert_allclose(got.warmup_eta_w, ref.warmup_eta_w, rtol=1e-12, atol=0)
    assert np.all(ref.warmup_eta_w > 0)
    np.testing.assert_array_equal(got.outcome, ref.outcome)


@pytest.mark.parametrize("k", [1, 2, 3, 8, 40])
def test_the_warmup_bound_in_gram_form_equals_the_vector_form(k):
    """``prescribed_warmup_steps_gram`` on the Gram entries of vector draws: T1 and guaranteed equal, eta_w^I to
    1e-12 (runs below and above the saddle angle both occur for k > 1)."""
    R, p = 3000, 5
    states = stream_states(7, 0, R)
    v = theory.validation.shortcut_vector(None, p)
    WS, AS, W0, A0 = samplers.draw(states, p=p, k=k, teacher=Teacher(w="sphere"), init=Init(w="sphere"), shortcut=v)
    phi0 = sm.angles(W0, WS)
    norm0 = np.linalg.norm(W0, axis=1)
    T1, ew, ok = prescribed_warmup_steps(phi0=phi0, norm0=norm0, a0=A0, a_star=AS)
    op = order_runs.from_vectors(W0, WS, A0, AS, v)
    T1g, ewg, okg = prescribed_warmup_steps_gram(phi0=phi0, norm0=norm0, k=k, gram=order_runs.gram(op))
    np.testing.assert_array_equal(T1g, T1)
    np.testing.assert_array_equal(okg, ok)
    np.testing.assert_allclose(ewg, ew, rtol=1e-12, atol=0)
    if k > 1:
        assert ok.any() and (~ok).any()


def test_the_classification_in_gram_form_equals_the_vector_form_near_every_fixed_point():
    """End states placed at (and just off) the global minimum, the spurious point and the saddle: every code of
    :func:`classify` is reproduced by :func:`classify_gram` from the coordinates, for both scalings."""
    rng = np.random.default_rng(0)
    R, k = 6000, 6
    AS = rng.normal(size=(R, k))
    A0 = rng.normal(size=(R, k))
    Ss, Qs = AS.sum(axis=1), np.einsum("ij,ij->i", AS, AS)
    gram = (np.einsum("ij,ij->i", A0, A0), A0.sum(axis=1), np.einsum("ij,ij->i", A0, AS), Ss, Qs)
    phi_s = cl.saddle_angles_batch(AS)
    np.testing.assert_array_equal(cl.saddle_angles_gram(k, Ss, Qs), phi_s)
    target = rng.integers(0, 3, R)  # 0: global, 1: pi, 2: saddle
    phi = np.select([target == 0, target == 1], [0.0, math.pi], np.where(phi_s >= 0, phi_s, 2.0))
    phi = phi + rng.normal(scale=2e-3, size=R) * (rng.random(R) < 0.5)
    phi = np.clip(phi, 0.0, math.pi)
    alpha, beta = theory.algebra.optimal_a_coefficients(cl._g(np.clip(phi, 0, math.pi)), k, Ss)
    alpha = np.where(target == 0, 0.0, alpha)
    beta = np.where(target == 0, 1.0, beta)
    jitter = rng.normal(scale=1e-3, size=(R, 3)) * (rng.random((R, 1)) < 0.5) * rng.choice([0.3, 30], (R, 1))
    x, y, z = jitter[:, 0], alpha + jitter[:, 1], beta - 1.0 + jitter[:, 2]
    A = x[:, None] * A0 + y[:, None] + (1.0 + z)[:, None] * AS
    stop = np.where(rng.random(R) < 0.1, driver.STOP_TRAPPED, driver.STOP_MAX_STEPS)
    lref = theory.loss_ref(AS, safe=True)
    loss = np.where(rng.random(R) < 0.2, 0.0, 1.0)
    for scale in (np.ones(R), np.exp(rng.normal(scale=1e-4, size=R))):
        want = cl.classify(final_loss=loss, final_phi=phi, a=A / scale[:, None], a_star=AS, scale=scale,
                           stop_reason=stop, loss_ref=lref, loss_tol=1e-10)
        got = cl.classify_gram(final_loss=loss, final_phi=phi, head=(x / scale, y / scale, (1.0 + z) / scale - 1.0),
                               gram=gram, k=k, scale=scale, stop_reason=stop, loss_ref=lref, loss_tol=1e-10)
        np.testing.assert_array_equal(got, want)
        assert set(np.unique(want)) == {cl.GLOBAL, cl.SPURIOUS, cl.SADDLE, cl.NOT_CONVERGED}


def _assert_same(r1: SimulationResult, r2: SimulationResult) -> None:
    for name in ("run_index", "outcome", "stop_reason", "steps", "final_loss", "final_phi", "fitted_rate",
                 "theory_rate", "linear_regime", "trajectory", "warmup_steps", "warmup_eta_w", "loss_ref"):
        x, y = getattr(r1, name), getattr(r2, name)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert r1.extras.keys() == r2.extras.keys()
    for key in r1.extras:
        assert np.array_equal(r1.extras[key], r2.extras[key], equal_nan=True), key
    for name in VECTOR_FIELDS:
        assert getattr(r1, name) is None and getattr(r2, name) is None


def test_bit_identical_for_any_thread_count_and_split():
    kw = dict(_kw("resnet-prescribed"), steps=1500, vectors=False, seed=9)
    whole = sims.simulate(**kw, runs=30, threads=1)
    if numba.config.NUMBA_NUM_THREADS >= 2:
        _assert_same(whole, sims.simulate(**kw, runs=30, threads=2))
    parts = [sims.simulate(**kw, runs=12, run_offset=0), sims.simulate(**kw, runs=18, run_offset=12)]
    joined = SimulationResult.concat(parts)
    _assert_same(whole, joined)
    assert joined.settings["runs"] == 30 and joined.settings["vectors"] is False
    middle = sims.simulate(**kw, runs=5, run_offset=7)
    np.testing.assert_array_equal(middle.order["c0"], whole.order["c0"][7:12])
    np.testing.assert_array_equal(middle.final_loss, whole.final_loss[7:12])


def test_the_result_without_vectors():
    res = sims.simulate(**_kw("cnn-two-stage"), runs=20, seed=2, vectors=False)
    assert not res.has_vectors and all(getattr(res, f) is None for f in VECTOR_FIELDS)
    o = res.order
    assert set(o) == set(order_runs.INITIAL_FIELDS) | set(order_runs.FINAL_FIELDS)
    assert all(val.shape == (20,) and val.dtype == np.float64 for val in o.values())
    np.testing.assert_allclose(o["c0"] ** 2 + o["r0"] ** 2, 1.0, rtol=1e-12)  # the CNN's unit w0
    frame = res.to_frame()
    assert list(frame.columns) == list(sm.FRAME_COLUMNS) and len(frame) == 20
    assert sum(res.counts().values()) == 20
    tr = res.trajectory_of(0)
    assert tr["step"][0] == 0 and np.isfinite(tr["loss"]).all()
    # the trajectory's alignment at step 0 is a0.a* = P0
    assert tr["alignment"][0] == pytest.approx(o["P0"][0], rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="vectors=False"):
        res.require_vectors("plotting a*")
    with_vectors = sims.simulate(**_kw("cnn-two-stage"), runs=5, seed=2)
    assert with_vectors.has_vectors and with_vectors.order is None
    with_vectors.require_vectors("anything")
    with pytest.raises(ValueError, match="vectors"):
        SimulationResult.concat([res, with_vectors])


@pytest.mark.parametrize("bad, why", [
    (dict(algorithm="sgd", batch_size=4), "algorithm 'sgd'"),
    (dict(engine="vector"), "engine 'vector'"),
    (dict(schedule=Schedule.perturbed(0.1, ETA_A, noise=0.01)), "noise"),
    (dict(teacher=(np.eye(P)[0], np.ones(K))), "teacher is given as vectors"),
    (dict(init=(np.eye(P)[1], np.ones(K))), "init is given as arrays"),
    (dict(vectors="no"), "vectors must be True, False or 'auto'"),
])
def test_bad_input_is_refused_naming_vectors(bad, why):
    kw = dict(dict(model="resnet", k=K, p=P, runs=3, steps=10, schedule=Schedule.constant(0.1, ETA_A),
                   vectors=False), **bad)
    with pytest.raises(ValueError, match="vectors") as info:
        sims.simulate(**kw)
    assert why in str(info.value)


def test_a_million_wide_model_runs_without_vectors():
    big = dict(model="resnet", k=10**6, p=10**6, runs=10_000, steps=1000,
               schedule=Schedule.constant(0.5, 0.9 * optimal_eta_a(10**6)), seed=1)
    with pytest.raises(ValueError, match="memory"):  # with vectors: 10^4 x 2 x 10^6 x 8 x 7 bytes, refused
        sims.simulate(**big)
    sims.simulate(**dict(big, runs=2, steps=2), vectors=False)  # compiled and warm
    tracemalloc.start()
    t0 = time.perf_counter()
    res = sims.simulate(**big, vectors=False)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(res) == 10_000 and res.a_star is None
    assert np.isfinite(res.final_loss).all() and np.all(res.final_loss < res.trajectory[:, 0, 0])  # GD descended
    assert peak < 200e6, peak  # the trajectory (20 MB) and per-run columns; one vector would be 8 MB per run
    assert elapsed < 60.0, elapsed
    assert sm.memory.simulate_bytes(k=10**6, p=10**6, runs=10_000, steps=1000, n_record=64, vectors=False) < 1e8
