"""Reproducibility: a run's result depends only on (seed, run index, configuration), bit for bit.

Every per-run array is compared with ``np.array_equal`` (NaN == NaN for the trajectory's tail and the rates of
runs that did not converge): any thread-dependent reduction, shared random state or chunk-dependent draw shows up
as a difference in the last bit.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numba
import numpy as np
import pytest
from ir_scan import CASES as CACHE_CASES

import sims
import theory
from sims import Schedule, SimulationResult, Teacher

K, P = 6, 5
ETA_A = 0.5 * theory.max_stable_eta_a(K)

CONFIGS = {
    "resnet-warmup": dict(model="resnet", schedule=Schedule.prescribed_warmup(1.0, ETA_A),
                          teacher=Teacher(require_spurious=True)),
    "cnn-constant": dict(model="cnn", schedule=Schedule.constant(0.8, ETA_A)),
    "cnn-unnormalized": dict(model="cnn-unnormalized", schedule=Schedule.two_stage(20, 0.05, 0.3, 0.4, 0.3)),
    "resnet-perturbed": dict(model="resnet", schedule=Schedule.perturbed(1.0, ETA_A, noise=0.1, half_life=200),
                             teacher=Teacher(require_spurious=True)),
    "cnn-perturbed-fixed-teacher": dict(
        model="cnn", schedule=Schedule.perturbed(0.5, ETA_A, noise=0.05, half_life=math.inf),
        teacher=(np.array([0.6, 0.0, 0.0, -0.8, 0.0]), np.array([1.0, -1.0, 0.5, 0.3, -0.2, 0.1]))),
}


def _run(name, *, runs=10, run_offset=0, threads=None, seed=21, steps=1500):
    return sims.simulate(k=K, p=P, runs=runs, steps=steps, seed=seed, run_offset=run_offset, threads=threads,
                         n_record=40, **CONFIGS[name])


def _assert_identical(r1: SimulationResult, r2: SimulationResult) -> None:
    for f in fields(SimulationResult):
        x, y = getattr(r1, f.name), getattr(r2, f.name)
        if f.name == "settings":
            assert x == y
        elif f.name == "extras":
            assert x.keys() == y.keys()
            for key in x:
                assert np.array_equal(x[key], y[key], equal_nan=x[key].dtype.kind == "f"), key
        else:
            assert x.shape == y.shape, f.name
            # String arrays (outcome, stop_reason) are sized to their longest entry: compare the kind only.
            assert x.dtype == y.dtype or x.dtype.kind == y.dtype.kind == "U", f.name
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f.name


@pytest.mark.parametrize("name", list(CONFIGS))
def test_thread_count_does_not_change_any_bit(name):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 numba threads")
    before = numba.get_num_threads()
    one = _run(name, threads=1)
    two = _run(name, threads=2)
    assert numba.get_num_threads() == before  # simulate restores the caller's thread count
    _assert_identical(one, two)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_split_into_chunks_and_concat_is_the_single_call(name):
    whole = _run(name, runs=10)
    parts = [_run(name, runs=4, run_offset=0), _run(name, runs=6, run_offset=4)]
    joined = SimulationResult.concat(parts)
    _assert_identical(whole, joined)
    np.testing.assert_array_equal(joined.run_index, np.arange(10))
    # A chunk in the middle is the same rows again (run r's stream is SeedSequence(seed, spawn_key=(r,))).
    _assert_identical(SimulationResult.concat([_run(name, runs=3, run_offset=2)]),
                      SimulationResult.concat([_slice(whole, 2, 5)]))


def _slice(res, lo, hi):
    out = {}
    for f in fields(SimulationResult):
        x = getattr(res, f.name)
        if f.name in ("settings", "trajectory_steps"):
            out[f.name] = x
        elif f.name == "extras":
            out[f.name] = {key: val[lo:hi] for key, val in x.items()}
        else:
            out[f.name] = x[lo:hi]
    out["settings"] = dict(out["settings"], runs=hi - lo, run_offset=lo)
    return SimulationResult(**out)


def test_same_seed_same_result_other_seed_other_result():
    a, b = _run("resnet-perturbed"), _run("resnet-perturbed")
    _assert_identical(a, b)
    c = _run("resnet-perturbed", seed=22)
    assert not np.array_equal(a.a_star, c.a_star)
    assert not np.array_equal(a.final_loss, c.final_loss)


def test_noise_streams_are_per_run():
    # Runs 4..9 of a noisy batch do not depend on whether runs 0..3 were simulated in the same call, even though
    # the noise draws interleave with the GD steps: each run owns its own xoshiro state.
    full = _run("resnet-perturbed", runs=10)
    tail = _run("resnet-perturbed", runs=6, run_offset=4)
    np.testing.assert_array_equal(full.trajectory[4:], tail.trajectory)


def test_concat_needs_parts():
    with pytest.raises(ValueError, match="parts must hold at least one"):
        SimulationResult.concat([])


# ---- heap layout ------------------------------------------------------------------------------------------------
# With fastmath, LLVM vectorizes a sum in a loop that also stores behind a runtime alias check and falls back to an
# in-order sum when the buffers lie close together: the rounding then depends on where the heap put them.  The
# kernels keep such loops on one workspace block or split stores from sums (sims.kernels.run_workspace); these
# tests pin that down, behaviorally and on the compiled code.


def _placements(total, n_fixed, n_moving, gaps):
    """Views ``(fixed, moving)`` of one buffer, ``moving`` starting ``gap`` doubles after ``fixed`` for each gap."""
    big = np.zeros(total)
    base = total // 2
    for gap in gaps:
        yield big[base : base + n_fixed], big[base + gap : base + gap + n_moving]


@pytest.mark.parametrize("k, p, nb", [(5, 4, 8), (16, 16, 32)])
def test_sgd_backward_pass_is_the_same_wherever_its_buffers_lie(k, p, nb):
    from sims.engines.finite_sample import _block_backward

    rng = np.random.default_rng(0)
    nrow = nb * k
    Z, a = rng.standard_normal((p, nrow)), rng.standard_normal(k)
    res0, h0 = rng.standard_normal(nb), rng.standard_normal(nrow)
    # Before the fix, res 8-23 doubles before cv took the in-order path and changed the last bits.
    gaps = list(range(-nb - 80, -nb + 1)) + list(range(nrow, nrow + 80))
    outs = set()
    for cv, res in _placements(20 * nrow + 1000, nrow, nb, gaps):
        res[:] = res0
        gu, ga = np.zeros(p), np.zeros(k)
        lsum = _block_backward(Z, nb, a, h0.copy(), res, cv, gu, ga)
        outs.add((lsum, ga.tobytes(), gu.tobytes()))
    assert len(outs) == 1


def test_ir_scan_flags_a_layout_dependent_reduction_and_passes_a_split_one():
    # The scanner must be able to fail: a store-and-sum loop over two arrays is flagged, the split form is not.
    from ir_scan import guarded_reductions

    @numba.njit(fastmath={"reassoc", "nsz", "arcp", "contract"})
    def fused(x, y):
        s = 0.0
        for i in range(x.shape[0]):
            x[i] = 2.0 * y[i]
            s += x[i] * y[i]
        return s

    @numba.njit(fastmath={"reassoc", "nsz", "arcp", "contract"})
    def split(x, y):
        for i in range(x.shape[0]):
            x[i] = 2.0 * y[i]
        s = 0.0
        for i in range(x.shape[0]):
            s += x[i] * y[i]
        return s

    x, y = np.zeros(64), np.ones(64)
    assert fused(x, y) == split(x, y) == 128.0
    (ir_fused,) = fused.inspect_llvm().values()
    (ir_split,) = split.inspect_llvm().values()
    assert guarded_reductions(ir_fused), "the scanner missed a guarded reduction"
    assert not guarded_reductions(ir_split)


@pytest.mark.slow
def test_no_kernel_has_a_layout_dependent_reduction(numba_cache_probe):
    # The probe's first child compiled every kernel afresh and scanned its optimized IR; any line names an offender.
    assert numba_cache_probe.scan.strip() == "", numba_cache_probe.scan
    assert '"scanned"' in numba_cache_probe.summary
    for engine in ("run_range_sims_engines_gd_PopulationGD", "lockstep_sims_engines_reduced_ReducedGD",
                   "lockstep_sims_engines_reduced_UnnormalizedReducedGD",
                   "lockstep_sims_engines_reduced_FadingReducedGD"):
        assert engine in numba_cache_probe.summary, engine


@pytest.mark.slow
@pytest.mark.parametrize("case", CACHE_CASES)
def test_a_cold_and_a_warm_numba_cache_give_the_same_bits(case, numba_cache_probe):
    """The code numba compiles in the process and the code it loads from its cache must compute alike: every
    engine's results (``tests/ir_scan.py``, :func:`engine_results`) from the child that compiled every kernel on a
    fresh cache and from the child that loaded them all from it are bit-identical.  (They were not for the
    lockstep engines with fused multiply-adds allowed, for the ``+Init`` pretraining and the minibatch-gradient
    helpers as ``prange`` loops, and for the projected sampler's helper calling its gradient out of line.)"""
    cold, warm = np.load(numba_cache_probe.cold), np.load(numba_cache_probe.warm)
    assert set(cold.files) == set(warm.files) == set(CACHE_CASES)
    assert cold[case].size > 0 and np.isfinite(cold[case]).any()
    np.testing.assert_array_equal(cold[case], warm[case], err_msg=case)
