"""Step sizes (SCIENCE.md 2 and theory.step_sizes): stability limit of eta_a and local linear rates of GD."""

from __future__ import annotations

import math

import numpy as np
import pytest

import theory


def _unit(x):
    return x / np.linalg.norm(x)


def _setup(p: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    return _unit(rng.standard_normal(p)), rng.standard_normal(k), _unit(rng.standard_normal(p))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10, 64])
@pytest.mark.parametrize("model", ["resnet", "cnn"])
def test_max_stable_eta_a_is_two_over_top_eigenvalue(k, model):
    p = 3
    w_star, a_star, v = _setup(p, k, k)
    rng = np.random.default_rng(100 + k)
    eta = theory.max_stable_eta_a(k)
    assert eta == pytest.approx(4 * math.pi / (k + math.pi - 1), rel=1e-15)
    for _ in range(3):  # the a-block is rho^2 M / (2 pi): the same at every point of a normalized model
        w, a = rng.standard_normal(p), rng.standard_normal(k)
        H = theory.population_hessian(w, a, w_star=w_star, a_star=a_star, model=model, shortcut=v)
        lam_max = np.linalg.eigvalsh(H[p:, p:]).max()
        # eigvalsh of a small symmetric matrix is backward stable: ~1e-15 relative.
        assert eta == pytest.approx(2.0 / lam_max, rel=1e-12)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_max_stable_eta_a_unnormalized_scales_with_norm(k):
    p = 4
    w_star, a_star, _ = _setup(p, k, 7)
    rng = np.random.default_rng(k)
    for rho in (0.3, 1.0, 2.5):
        w = _unit(rng.standard_normal(p)) * rho
        H = theory.population_hessian(w, rng.standard_normal(k), w_star=w_star, a_star=a_star, model="cnn-unnormalized")
        lam_max = np.linalg.eigvalsh(H[p:, p:]).max()
        assert theory.max_stable_eta_a(k, rho=rho) == pytest.approx(2.0 / lam_max, rel=1e-12)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_gd_on_a_stable_just_below_limit_unstable_just_above(k):
    """The a-subproblem at fixed w is quadratic, so GD on a is a linear map: |1 - eta lambda_max| decides."""
    p = 3
    w_star, a_star, v = _setup(p, k, 3)
    w = np.array([0.3, -1.0, 0.5])
    eta_max = theory.max_stable_eta_a(k)
    kw = {"w_star": w_star, "a_star": a_star, "model": "cnn"}
    a_opt = theory.optimal_a(theory.angle(w, w_star=w_star, model="cnn"), a_star)
    for factor, converges in ((0.98, True), (1.02, False)):
        a = a_opt + 0.1 * np.ones(k)  # excite the top mode (along 1)
        for _ in range(400):
            a = a - factor * eta_max * theory.population_gradient(w, a, **kw)[1]
        err = np.linalg.norm(a - a_opt)
        # |1 - 2 * 0.98| ^ 400 = 3e-4 and |1 - 2 * 1.02| ^ 400 = 7e6 (times 0.1 sqrt(k)).
        assert (err < 1e-2) if converges else (err > 1e3)


@pytest.mark.parametrize("model", ["resnet", "cnn"])
@pytest.mark.parametrize(("p", "k"), [(1, 1), (1, 4), (3, 1), (4, 3), (9, 6)])
@pytest.mark.parametrize("norm", [0.4, 1.0, 3.0])
@pytest.mark.parametrize(("eta_w", "eta_a"), [(0.1, 0.1), (0.5, 1.0), (2.0, 2.3), (0.0, 1.5), (6.0, 0.05)])
def test_global_minimum_rate_equals_linearized_rate(model, p, k, norm, eta_w, eta_a):
    w_star, a_star, v = _setup(p, k, 31 * p + k)
    w = norm * w_star - (v if model == "resnet" else 0.0)  # effective filter norm * w*
    predicted = theory.global_minimum_rate(eta_w, eta_a, a_star=a_star, p=p, norm=norm)
    linear = theory.gd_linear_rate(
        w, a_star, eta_w=eta_w, eta_a=eta_a, w_star=w_star, a_star=a_star, model=model, shortcut=v
    )
    # Both are max |1 - eta lambda| from the same spectrum, one analytic, one via eigvals of a small matrix
    # (backward stable, ~1e-15); w = norm w* - v rounds at 1e-16.  1e-12 is ample.
    assert predicted == pytest.approx(linear, rel=1e-12, abs=1e-12)


def _run_gd(model, p, k, norm, eta_w, eta_a, rate, seed=0):
    w_star, a_star, v = _setup(p, k, seed)
    rng = np.random.default_rng(seed + 1)
    shift = v if model == "resnet" else 0.0
    w = norm * (w_star + 1e-3 * rng.standard_normal(p)) - shift
    a = a_star + 1e-3 * rng.standard_normal(k)
    kw = {"w_star": w_star, "a_star": a_star, "model": model, "shortcut": v}
    steps = math.ceil(math.log(1e-5) / math.log(rate)) + 10  # end near distance 1e-8: linear regime, no rounding
    dists, losses = [], []
    for _ in range(steps + 1):
        wt = w + shift
        perp = wt - (wt @ w_star) * w_star  # tangent displacement of the filter (the ray w~ = lambda w* is flat)
        dists.append(math.sqrt(perp @ perp + (a - a_star) @ (a - a_star)))
        losses.append(theory.population_loss(w, a, **kw))
        gw, ga = theory.population_gradient(w, a, **kw)
        w, a = w - eta_w * gw, a - eta_a * ga
    return np.array(dists), np.array(losses)


@pytest.mark.parametrize("model", ["resnet", "cnn"])
@pytest.mark.parametrize(
    ("p", "k", "norm", "eta_w", "eta_a", "dominant"),
    [
        (4, 3, 1.0, 0.5, 1.0, "a"),  # a's second mode dominates
        (4, 3, 2.0, 0.2, 2.0, "w"),  # the filter mode dominates, with ||w~|| = 2
        (6, 5, 0.7, 0.02, 1.0, "w"),  # the filter mode dominates, with ||w~|| = 0.7
        (3, 2, 1.0, 3.0, 2.9, "a-top"),  # the top a mode dominates and oscillates (1 - eta lambda < 0)
    ],
)
def test_gd_contracts_at_predicted_rate(model, p, k, norm, eta_w, eta_a, dominant):
    _, a_star, _ = _setup(p, k, 0)
    rate = theory.global_minimum_rate(eta_w, eta_a, a_star=a_star, p=p, norm=norm)
    modes = {
        "a-top": abs(1 - eta_a * (k + math.pi - 1) / (2 * math.pi)),
        "a": abs(1 - eta_a * (math.pi - 1) / (2 * math.pi)),
        "w": abs(1 - eta_w * (a_star @ a_star) / (2 * norm**2)),
    }
    assert max(modes, key=modes.get) == dominant and 0.5 < rate < 0.99  # the intended, non-degenerate regime
    dists, losses = _run_gd(model, p, k, norm, eta_w, eta_a, rate)
    # Asymptotic per-step ratio, geometric mean over the last 10 steps (the faster modes have died out by then;
    # nonlinear corrections are O(distance) ~ 1e-8 relative, and ||w~|| drifts only at second order).
    measured = (dists[-1] / dists[-11]) ** 0.1
    assert measured == pytest.approx(rate, rel=1e-2)
    assert dists[-1] > 1e-10  # still far above rounding, so the ratio is meaningful
    # Convergence toward the minimum overall (the loss itself is only resolved down to ~1e-15 by cancellation
    # of O(1) terms, so its late-time ratios are not tested).
    assert dists[-1] < 1e-4 * dists[0] and losses[-1] < losses[0]


def test_bad_step_size_arguments():
    with pytest.raises(ValueError, match="k must be"):
        theory.max_stable_eta_a(0)
    with pytest.raises(ValueError, match="k must be"):
        theory.max_stable_eta_a(2.5)
    with pytest.raises(ValueError, match="rho"):
        theory.max_stable_eta_a(3, rho=0.0)
    with pytest.raises(ValueError, match="eta_w"):
        theory.global_minimum_rate(-1.0, 0.1, a_star=[1.0], p=2)
    with pytest.raises(ValueError, match="eta_a"):
        theory.global_minimum_rate(0.1, float("nan"), a_star=[1.0], p=2)
