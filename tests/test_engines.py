"""The one run driver: one divergence rule for every engine, and an engine written in one file (this one)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
from numba import njit

import sims
import theory
from sims import Schedule
from sims.engines import driver

KW = dict(k=6, p=5, runs=24, steps=400, seed=5, n_record=16)
BLOWUP = Schedule.constant(0.5, 12.0)  # eta_a far above the stability limit 4 pi / (k + pi - 1) ~ 1.5


def _engines(tol):
    """Every engine, on runs that diverge (``tol``: the divergence level)."""
    t = sims.Tolerances(divergence=tol)
    out = {}
    for model in ("resnet", "cnn", "cnn-unnormalized"):
        out[f"gd-{model}"] = sims.simulate(model=model, schedule=BLOWUP, allow_unstable=True, tolerances=t, **KW)
    for alg in ("sgd", "gd-fixed"):
        out[alg] = sims.simulate(model="cnn", algorithm=alg, batch_size=16, schedule=BLOWUP, allow_unstable=True,
                                 tolerances=t, **KW)
    for alg in ("gd", "sgd"):
        out[f"expansion-{alg}"] = sims.simulate(model="resnet", algorithm=alg, batch_size=16, schedule=BLOWUP,
                                                allow_unstable=True, tolerances=t,
                                                expansion=sims.Expansion(target="both", depth=2), **KW)
    out["fading"] = sims.simulate_fading(schedule=BLOWUP, fade=sims.Fade("linear", 50), allow_unstable=True,
                                         tolerances=t, **KW)
    out["laperm-gd"] = sims.simulate_laperm(schedule=BLOWUP, sync_every=None, allow_unstable=True, tolerances=t,
                                            **KW)
    return out


@pytest.mark.parametrize("divergence", [1e8, 1e300])
def test_every_engine_reports_divergence_alike(divergence):
    """One rule (sims.engines.driver): a diverged run stops at its last finite state, with a finite or infinite
    loss and never NaN; with the level at 1e300 the runs reach the overflow itself, where a step would leave the
    state non-finite (refused, or undone)."""
    for name, res in _engines(divergence).items():
        div = res.stop_reason == "diverged"
        assert div.sum() >= 3, f"{name}: the schedule did not make runs diverge"
        assert np.all(res.outcome[div] == "diverged"), name
        assert not np.isnan(res.final_loss).any() and not np.isnan(res.final_grad_norm).any(), name
        assert np.all(np.isfinite(res.w[div])) and np.all(np.isfinite(res.a[div])), f"{name}: a non-finite state"
        assert np.all(np.isfinite(res.final_phi)) and np.all(np.isfinite(res.final_alignment)), name
        if divergence == 1e8:  # stopped on the level: the loss is finite and above it
            assert np.all(np.isfinite(res.final_loss[div])), name
            assert np.all(res.final_loss[div] > 1e8 * res.loss_ref[div]), name
        for r in np.flatnonzero(div):  # the trajectory holds no NaN up to the stop
            assert not np.isnan(res.trajectory_of(r)["loss"]).any(), name


# ---------------------------------------------------------------------------------------------------------------
# A new engine in one file and one registration: GD on ``a`` alone, the filter frozen (a linear map with a
# closed-form solution): its compiled record and hooks, its Python spec, and register_engine.

class FrozenFilter(NamedTuple):
    WT: np.ndarray  # (R, p) the frozen effective filters
    A: np.ndarray  # (R, k) second layers, trained in place


@njit(inline="always")
def _begin(eng, wsp, prob, r, tr, tv):
    w, a, ast = eng.WT[r], eng.A[r], prob.AS[tr]
    n, c = math.sqrt(np.dot(w, w)), np.dot(w, prob.WS[tr]) / math.sqrt(tv[0])
    return a, ast, n, c / n


@njit(inline="always")
def _observe(eng, wsp, carry, tv):
    a, ast, n, cos = carry
    phi, s = math.acos(min(max(cos, -1.0), 1.0)), math.sqrt(max(1.0 - cos * cos, 0.0))
    S, Q, P = a.sum(), np.dot(a, a), np.dot(a, ast)
    L = sims.engines.closed_forms.loss(1.0, phi, cos, s, S, Q, P, tv[1], tv[2])
    _, _, L_S, L_Q, L_P = sims.engines.closed_forms.gradient(1.0, phi, cos, s, S, Q, P, tv[1], tv[2])
    g = L_S + 2.0 * L_Q * a + L_P * ast
    return L, phi, cos, s, P, np.dot(g, g), np.dot(g, g), (L_S, L_Q, L_P)


@njit(inline="always")
def _step(eng, wsp, carry, aux, tv, ew, ea, sw, sa, t):
    a, ast = carry[0], carry[1]
    a -= ea * (aux[0] + 2.0 * aux[1] * a + aux[2] * ast)
    return carry, True


@njit(inline="always")
def _traj_point(eng, wsp, carry, L, phi, P):
    return L, phi, P, math.sqrt(np.dot(carry[0] - carry[1], carry[0] - carry[1]))


@njit(inline="always")
def _finish(eng, wsp, prob, r, rec, carry):
    return None


frozen_run_range = driver.register(FrozenFilter, begin=_begin, observe=_observe, step=_step, traj_point=_traj_point,
                                   finish=_finish)


class FrozenSpec(sims.EngineSpec):  # the Python side: every other hook is the plain network's
    def build(self, opts, call, setup):  # trains the pipeline's working copies; the trapped bound is not its own
        return sims.Built(frozen_run_range, lambda eng, p, k: (), FrozenFilter(setup.WT, setup.A), False)


sims.register_engine("frozen-filter", FrozenSpec())


def test_an_engine_written_in_this_file_runs_on_the_driver_and_matches_the_closed_form():
    """The ``a``-dynamics at a frozen filter is linear: ``a <- a - eta (M a - N(phi) a*) / (2 pi)`` with
    ``M = (pi - 1) I + 1 1^T``, ``N = (g(phi) - 1) I + 1 1^T``; the engine above must follow it."""
    rng = np.random.default_rng(0)
    R, p, k, steps, eta = 5, 4, 6, 60, 0.3
    WS = np.tile(np.eye(p)[0], (R, 1))
    AS, WT, A = rng.standard_normal((R, k)), rng.standard_normal((R, p)), rng.standard_normal((R, k))
    A0 = A.copy()
    sched = Schedule.constant(0.0, eta).resolve(steps, runs=R)
    rec = sims.record_steps(steps, 8)
    prob = driver.make_problem(WS, AS, np.full(R, -1.0), sched, np.zeros((R, 4), np.uint64), rec, (1e-4, 1e-6, 1e-9))
    out = driver.make_outputs(R, rec.size)
    stops = driver.Stops(steps, 0.0, 0.0, 1e-6, 1e300, False)
    driver.run_batch(frozen_run_range, lambda eng, p, k: (), FrozenFilter(WT, A), prob, stops, out, R)
    assert np.all(out.stop_reason == driver.STOP_MAX_STEPS) and np.all(out.stop_step == steps)
    for r in range(R):
        phi = math.acos(WT[r, 0] / np.linalg.norm(WT[r]))
        g = math.sin(phi) + (math.pi - phi) * math.cos(phi)  # the arc-cosine kernel (SCIENCE.md)
        M = (math.pi - 1.0) * np.eye(k) + np.ones((k, k))
        N = (g - 1.0) * np.eye(k) + np.ones((k, k))
        a = A0[r].copy()
        for _ in range(steps):
            a = a - eta * (M @ a - N @ AS[r]) / (2.0 * math.pi)
        np.testing.assert_allclose(A[r], a, rtol=1e-11, atol=1e-12)
        assert out.final[r, 0] == pytest.approx(sims.engines.closed_forms.loss(1.0, phi, math.cos(phi), math.sin(phi),
                                                                       a.sum(), a @ a, a @ AS[r], AS[r].sum(),
                                                                       AS[r] @ AS[r]), rel=1e-10)


def test_the_engine_registered_in_this_file_runs_through_simulate_to_the_theory_optimum():
    """Through ``sims.simulate(engine="frozen-filter")``: the filter never moves, and GD on ``a`` stops at the
    minimizer ``a(phi) = M^-1 N(phi) a*`` of the loss at that angle (``theory.optimal_a``).  It stops on the
    gradient, ``||g|| <= grad_tol sqrt(L_ref)``; the Hessian in ``a`` is ``M / (2 pi)``, whose smallest eigenvalue
    is ``(pi - 1) / (2 pi) > 0.34``, so ``||a - a(phi)|| <= 3 grad_tol sqrt(L_ref)``.  The recorded loss is the
    closed form at the final state (``theory.population_loss``, to rounding)."""
    k, p, eta = 6, 5, 1.0  # eta below the stability limit 4 pi / (k + pi - 1) = 1.54
    tol = sims.Tolerances(grad_tol=1e-10)
    res = sims.simulate(engine="frozen-filter", model="cnn", k=k, p=p, runs=8, steps=400, seed=3,
                        schedule=Schedule.constant(0.0, eta), tolerances=tol)
    assert res.settings["engine"] == "frozen-filter"
    assert np.all(res.stop_reason == "grad_tol") and np.all(res.steps < 400)
    np.testing.assert_array_equal(res.w, res.w0)
    for r in range(len(res)):
        w, a, ws, ast = res.w[r], res.a[r], res.w_star[r], res.a_star[r]
        phi = math.acos(np.clip(w @ ws / np.linalg.norm(w), -1.0, 1.0))
        assert res.final_phi[r] == pytest.approx(phi, abs=1e-12)
        a_opt = theory.optimal_a(phi, ast)
        assert np.linalg.norm(a - a_opt) <= 3 * tol.grad_tol * math.sqrt(res.loss_ref[r])
        L = theory.population_loss(w, a, w_star=ws, a_star=ast, model="cnn")
        assert abs(L - res.final_loss[r]) <= 1e-12 * res.loss_ref[r]


def test_engines_are_selected_by_name_or_options_and_the_aliases_are_the_pipeline():
    kw = dict(k=4, p=4, runs=4, steps=60, schedule=Schedule.constant(0.3, 0.9), seed=2, n_record=8)
    fade = sims.Fade("linear", 30)
    by_opts, alias = sims.simulate(engine=fade, model="resnet", **kw), sims.simulate_fading(fade=fade, **kw)
    lp = sims.LaPerm(sync_every=5, dist="uniform")
    by_lp = sims.simulate(engine=lp, model="cnn", **kw)
    lp_alias = sims.simulate_laperm(sync_every=5, init="uniform", **kw)
    ex = sims.Expansion(depth=2)
    by_ex, ex_alias = sims.simulate(engine=ex, **kw), sims.simulate(expansion=ex, **kw)
    for a, b in ((by_opts, alias), (by_lp, lp_alias), (by_ex, ex_alias)):
        assert a.settings == b.settings
        for name in ("w", "a", "final_loss", "steps", "trajectory"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert by_lp.settings["init"] == "uniform" and by_opts.settings["model"] == "cnn"
    assert {"gd", "sgd", "gd-fixed", "expansion", "fade", "laperm", "frozen-filter"} <= set(sims.engine_names())
    with pytest.raises(ValueError, match=r"^engine must be one of .* got 'nope'"):
        sims.simulate(engine="nope", **kw)
    with pytest.raises(ValueError, match=r"^engine 'fade' needs its options: pass engine=sims\.Fade"):
        sims.simulate(engine="fade", **kw)
    with pytest.raises(ValueError, match=r"^model must be 'cnn' for LaPerm"):
        sims.simulate(engine=lp, **kw)
    with pytest.raises(ValueError, match=r"^init: LaPerm draws its initial values itself"):
        sims.simulate(engine=lp, model="cnn", init=sims.Init(w="sphere"), **kw)
    with pytest.raises(ValueError, match=r"^pass the engine once"):
        sims.simulate(engine=fade, expansion=ex, **kw)
    with pytest.raises(ValueError, match=r"already registered"):
        sims.register_engine("laperm", FrozenSpec())


def test_a_process_that_cannot_import_this_file_still_loads_the_cached_engines(tmp_path):
    """Each engine has its own cache index: the frozen-filter engine of this file (compiled above, into the same
    cache) must not make the built-in engines' cache unreadable for a process that cannot import this file (seen:
    every notebook failed with ``No module named 'test_engines'`` when all engines shared one index)."""
    import os
    import subprocess
    import sys

    kw = dict(model="cnn", k=3, p=3, runs=2, steps=5, schedule=Schedule.constant(0.1, 0.3))
    sims.simulate(engine="frozen-filter", **kw)
    sims.simulate(**kw)
    code = ("import sims; from sims import Schedule; "
            "r = sims.simulate(model='cnn', k=3, p=3, runs=2, steps=5, schedule=Schedule.constant(0.1, 0.3)); "
            "print(sorted(set(r.stop_reason)))")
    here = os.path.dirname(os.path.abspath(__file__))  # not importable in the child, like in a notebook
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.abspath(p) != here))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max_steps" in proc.stdout
