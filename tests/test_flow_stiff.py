"""Gradient flow at large k: the stiff head and the RODAS4 integrator (sims.engines.flow, method "rodas4"/"auto").

Tolerances: RODAS4 keeps its local error estimate below ``atol + rtol |y|`` per step like DP5; over the ~600-1,500
steps of a run at ``rtol = 1e-10`` the global error stays below ``1e-9`` of the coordinates (the bound asserted
against the exact solution, 100 times the error measured), and two integrators with the same tolerances place the
same stop within ``1e-6`` of its time (measured: ``8e-9`` relative on 20,000 runs at ``k = 16``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

import sims
from sims.engines import driver
from sims.engines import flow as engine_flow
from sims.runs import flow
from sims.runs.schedules import ResolvedSchedule

NO_STOPS = sims.Tolerances(loss_tol=0.0, grad_tol=0.0, stop_trapped=False)
LIU_TEACHER = sims.Teacher(w="cap", phi_max=math.pi / 2, require_spurious=True)


def _liu(model, k):
    init = sims.Init(w="zero" if model == "resnet" else "sphere", a="ball")
    return dict(k=k, p=16, model=model, teacher=LIU_TEACHER, init=init, vectors=False)


def _rates(k):
    """Liu et al.'s step sizes as rates: ``eta_w = 0.5 (2 / k)``, ``eta_a = 0.9 (4 pi / (k + 2 pi - 2))``."""
    return 0.5 * 2 / k, 0.9 * 4 * math.pi / (k + 2 * math.pi - 2)


def _two_stage(k):
    ew, ea = _rates(k)
    return sims.Schedule.two_stage(50, 0.01 * 2 / k, ea, ew, ea)


def _exact_head(x0, phi, gram, k, eta_a, t):
    """The head's coordinates ``(x, y, z)`` at time ``t`` of the flow at the frozen angle ``phi``, from the vector
    equation ``da/dt = -eta_a (M a - N(phi) a*) / (2 pi)`` (``M = (pi - 1) I + 1 1^T``, ``N = 1 1^T + (g(phi) - 1)
    I``) written in the basis ``(a0, 1, a*)`` (``a = x a0 + y 1 + (1 + z) a*``): an affine system, solved by the
    matrix exponential of its augmented 4 x 4 matrix."""
    Q0, S0, P0, Ss, Qs = gram
    g = ((math.pi - phi) * math.cos(phi) + math.sin(phi))
    # d(x, y, z)/dt = -eta_a / (2 pi) * (B (x, y, z) + b): M a = (pi - 1) a + (1.a) 1, 1.a = S0 x + k y + Ss (1 + z).
    B = np.array([[math.pi - 1, 0.0, 0.0], [S0, math.pi - 1 + k, Ss], [0.0, 0.0, math.pi - 1]])
    # The constant parts: on a*, (pi - 1) from M a* less (g - 1) from N a*; on 1, Ss from 1.a* less Ss from N a*.
    b = np.array([0.0, 0.0, math.pi - g])
    aug = np.zeros((4, 4))
    aug[:3, :3] = -eta_a / (2 * math.pi) * B
    aug[:3, 3] = -eta_a / (2 * math.pi) * b
    return (scipy.linalg.expm(aug * t) @ np.append(x0, 1.0))[:3]


def _integrate(start5, consts, k, eta_a, times, method):
    """The compiled integrator at ``eta_w = 0`` (frozen filter), no stops, records at ``times``."""
    R = start5.shape[0]
    start = np.zeros((R, 6))
    start[:, [0, 1, 3, 4, 5]] = start5
    eng = engine_flow.engine(start, consts, k, True, 1e-10, 1e-12, method=method)
    T = int(times[-1])
    sched = ResolvedSchedule(np.array([[T]]), np.array([[0.0]]), np.array([[eta_a]]), np.zeros(1), np.zeros(1), 1.0)
    none = np.empty((R, 0))
    prob = driver.make_problem(none, none, np.full(R, -1.0), sched, np.zeros((R, 4), np.uint64),
                               np.asarray(times, dtype=np.int64), (1e-4, 1e-6, 1e-9))
    out = engine_flow.make_outputs(R, len(times))
    driver.run_batch(engine_flow.run_range, engine_flow.workspace, eng, prob, driver.make_stops(NO_STOPS, T, False),
                     out, R, 1)
    return eng, out


def test_rodas4_head_flow_at_a_frozen_filter_is_exact_at_a_million():
    """At ``k = p = 10^6`` with Liu et al.'s ``eta_a`` (the head's modes decay at ``1.8`` and ``3.9e-6`` per unit
    of time: a stiffness ratio of ``4.7e5``), RODAS4 follows the exact solution over ``3 10^6`` units of time (12
    e-foldings of the slow mode) to ``1e-9`` at the end and at every recorded time (its dense output; measured
    errors up to ``1.1e-11`` at the end), in about 620 steps where DP5 would need about ``1.7 10^6``."""
    k = 10**6
    rng = np.random.default_rng(16)
    _, ea = _rates(k)
    a0, a_star = rng.uniform(-1, 1, size=k) / math.sqrt(k), rng.normal(size=k) / math.sqrt(k)
    gram = (a0 @ a0, a0.sum(), a0 @ a_star, a_star.sum(), a_star @ a_star)
    consts = np.zeros((3, 8))
    consts[:, :5] = gram
    phis = np.array([0.3, 1.2, 2.5])
    x0 = np.array([1.0, 0.0, -1.0])  # a = a0 at the start
    start = np.column_stack([np.cos(phis), np.sin(phis), np.tile(x0, (3, 1))])
    times = np.array([0, 1, 3, 10, 1000, 10**5, 10**6, 3 * 10**6])
    eng, out = _integrate(start, consts, k, ea, times, "rodas4")
    assert engine_flow.select_method("auto", k) == engine_flow.METHOD_RODAS4
    assert np.all(eng.nsteps < 2000)
    for r, phi in enumerate(phis):
        np.testing.assert_allclose(eng.out[r, :2], start[r, :2], rtol=0, atol=0)  # the filter does not move
        want = _exact_head(x0, phi, gram, k, ea, times[-1])
        np.testing.assert_allclose(eng.out[r, 3:], want, rtol=0, atol=1e-9)
        Q0, S0, P0, Ss, Qs = gram
        for q, t in enumerate(times):
            x, y, z = _exact_head(x0, phi, gram, k, ea, t)
            dist = math.sqrt(max(x * x * Q0 + y * y * k + z * z * Qs + 2 * (x * y * S0 + x * z * P0 + y * z * Ss), 0))
            assert abs(out.traj[r, q, 3] - dist) < 1e-9, (r, t)


def test_rodas4_and_dp5_give_the_same_outcomes_on_liu2019_teachers():
    """On the liu2019 teachers at ``k = 16`` (both basins populated) RODAS4 and DP5 reach the same outcome on every
    run of 2,000 (the bar is 99.9%; measured: 20,000 of 20,000 over four methods, and 4,000 of 4,000 at ``k =
    1000``), and a run that reaches ``loss_tol`` does so at the same time to ``1e-6`` (measured: ``8e-9``)."""
    k = 16
    ew, ea = _rates(k)
    for model, schedule in (("resnet", sims.Schedule.constant(ew, ea)), ("cnn", _two_stage(k))):
        kw = dict(_liu(model, k), runs=1000, steps=20000, schedule=schedule, seed=2019)
        dp5 = sims.simulate(algorithm="flow", engine=sims.Flow(method="dp5"), **kw)
        ros = sims.simulate(algorithm="flow", engine=sims.Flow(method="rodas4"), **kw)
        assert dp5.settings["flow"]["method"] == "dp5" and ros.settings["flow"]["method"] == "rodas4"
        assert np.mean(dp5.outcome == ros.outcome) >= 0.999
        assert 0.05 < np.mean(dp5.outcome == "spurious") < 0.9  # both basins populated (measured 0.12, 0.37)
        conv = (dp5.stop_reason == "loss_tol") & (ros.stop_reason == "loss_tol")
        assert conv.sum() > 500
        np.testing.assert_allclose(ros.steps[conv], dp5.steps[conv], rtol=1e-6)


def test_auto_picks_rodas4_where_the_head_is_stiff_and_its_steps_do_not_grow_with_k():
    """``method="auto"``: DP5 up to ``k = 961``, RODAS4 from 962 (stiffness ratio 450), recorded in the settings;
    RODAS4's accepted steps per run stay flat from ``k = 10^3`` to ``10^6`` (measured means 1,500-1,630 for the
    ResNet), DP5's grow like ``k`` (1,590 at ``10^3``, 12,900 at ``10^4``)."""
    assert engine_flow.select_method("auto", 961) == engine_flow.METHOD_DP5
    assert engine_flow.select_method("auto", 962) == engine_flow.METHOD_RODAS4
    steps = {}
    for k in (1000, 10**6):
        ew, ea = _rates(k)
        res = sims.simulate(algorithm="flow", runs=30, steps=10**8, schedule=sims.Schedule.constant(ew, ea), seed=5,
                            **_liu("resnet", k))
        assert res.settings["flow"]["method"] == "rodas4"
        assert np.all(np.isin(res.stop_reason, ("loss_tol", "trapped")))
        steps[k] = res.extras["flow_steps"].mean()
    assert steps[10**6] < 1.5 * steps[1000] and steps[10**6] < 3000


def test_rodas4_results_do_not_depend_on_threads_or_splits():
    k = 5000
    ew, ea = _rates(k)
    kw = dict(_liu("cnn", k), runs=40, steps=10**8, schedule=sims.Schedule.constant(ew, ea), seed=3)
    one = sims.simulate(algorithm="flow", threads=1, **kw)
    two = sims.simulate(algorithm="flow", threads=2, **kw)
    parts = sims.SimulationResult.concat([sims.simulate(algorithm="flow", **dict(kw, runs=15)),
                                          sims.simulate(algorithm="flow", **dict(kw, runs=25, run_offset=15))])
    for other in (two, parts):
        for name in ("steps", "final_loss", "final_phi", "steps_to_tol", "slow_phase_end", "trajectory"):
            np.testing.assert_array_equal(getattr(one, name), getattr(other, name))
        np.testing.assert_array_equal(one.outcome, other.outcome)


@pytest.mark.parametrize("method", ("rk45", "", None, 4))
def test_bad_method_names_the_field(method):
    with pytest.raises(ValueError, match="flow.method"):
        flow.Flow(method=method)
