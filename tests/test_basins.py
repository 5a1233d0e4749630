"""Basins of gradient flow in the plane of starts ``(phi_0, a_0 = t a*)`` and their boundary (:mod:`sims.runs.basins`,
``plots.basins_data(algorithm="flow")``, ``draw_basins(boundary=...)``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import sims  # noqa: E402
import theory  # noqa: E402
from sims import plots  # noqa: E402
from sims.cli import main  # noqa: E402
from sims.runs import basins  # noqa: E402

GLOBAL = sims.OUTCOMES.index("global")


@pytest.fixture(scope="module")
def curve() -> basins.Boundary:
    """The default boundary (61 lines of fixed t, tol 1e-6)."""
    return basins.boundary()


def _curve_phi(b: basins.Boundary, t: np.ndarray) -> np.ndarray:
    """The boundary's angle at ``t``, linear between the lines (one crossing per line of fixed t)."""
    return np.interp(t, b.t, b.phi)


def test_the_plane_is_the_plots_plane_and_holds_the_saddle():
    """The teacher is the figure's; the saddle (phi_s, a(phi_s).a*) lies in the plane: with 1.a* = 0 the optimal
    head at phi_s has 1.a = 0 (the plane's other coordinate), here a(phi_s) = 0 at phi_s = pi / 2."""
    np.testing.assert_allclose(basins.plane_teacher(4), plots.teacher_with_ratio(4, 0.0), rtol=0, atol=1e-15)
    a_star = basins.plane_teacher(4)
    phi_s, t_s = basins.saddle(4)
    assert phi_s == pytest.approx(np.pi / 2, abs=1e-12) and t_s == pytest.approx(0.0, abs=1e-12)
    a_s = theory.optimal_a(phi_s, a_star)
    assert abs(a_s.sum()) < 1e-12  # no component along 1: in the plane


def test_flow_map_agrees_with_individual_flow_runs_on_vectors():
    """The map (order parameters, loose solver, provable stops) against sims.simulate(algorithm="flow") on the
    starts as vectors with the engine's default tolerances and stops, at every point of a 9 x 9 grid."""
    n = 9
    data = plots.basins_data(n=n, algorithm="flow", n_paths=0)
    grid_phi, grid_t = np.meshgrid(data.phi, data.t)
    w_star = np.eye(4)[0]
    w0 = np.array([theory.filter_at_angle(float(x), w_star, model="cnn") for x in grid_phi.ravel()])
    a0 = grid_t.ravel()[:, None] * data.a_star[None, :]
    res = sims.simulate(model="cnn", k=4, p=4, runs=n * n, steps=4000, algorithm="flow",
                        schedule=sims.Schedule.constant(data.eta_w, data.eta_a), teacher=(w_star, data.a_star),
                        init=(w0, a0))
    ref = np.array([sims.OUTCOMES.index(o) for o in res.outcome]).reshape(n, n)
    np.testing.assert_array_equal(data.outcome, ref)
    assert {0, 1} <= set(np.unique(ref))  # both basins on the grid


def test_boundary_points_are_within_tol_of_a_change_of_outcome(curve):
    """Every point: the flow from x - tol and from x + tol (on its line) ends at different minima, the one from
    below at the side the bracket says."""
    assert curve.crossings.tolist() == [1] * 61 and curve.global_at_lo.all()
    assert np.all(curve.hi - curve.lo <= 2 * curve.tol) and np.all((curve.lo <= curve.phi) & (curve.phi <= curve.hi))
    sel = np.arange(0, 61, 6)
    x, t = curve.phi[sel], curve.t[sel]
    kw = dict(flow=sims.Flow(), tolerances=basins.BOUNDARY_TOLERANCES)
    below = basins.plane_runs(x - curve.tol, t, **kw).outcome
    above = basins.plane_runs(x + curve.tol, t, **kw).outcome
    assert (below == "global").all() and (above == "spurious").all()


def test_boundary_passes_through_the_saddle(curve):
    """The stable manifold contains the saddle: the line t = t_s crosses the boundary within tol of phi_s."""
    phi_s, t_s = basins.saddle(4)
    mid = int(np.argmin(np.abs(curve.t - t_s)))
    assert curve.t[mid] == t_s  # the default lines include t = 0
    assert abs(curve.phi[mid] - phi_s) <= curve.tol
    b = basins.boundary(lines=[t_s], tol=1e-9)
    assert abs(b.phi[0] - phi_s) <= 1e-9


def test_halving_tol_moves_the_points_by_at_most_tol(curve):
    half = basins.boundary(tol=curve.tol / 2)
    np.testing.assert_array_equal(half.line, curve.line)
    assert np.max(np.abs(half.phi - curve.phi)) <= curve.tol


def test_lines_of_fixed_phi_cross_the_same_curve(curve):
    """Bisection across (lines of fixed phi_0, t varies) finds points of the same curve; lines far from it have
    no crossing (steep boundary: 5 of 41 lines cross)."""
    across = basins.boundary(along="t", lines=41)
    assert across.along == "t" and across.crossings.sum() >= 3
    assert set(np.unique(across.crossings)) <= {0, 1}
    assert across.crossings[0] == 0 and across.crossings[-1] == 0  # phi_0 = 0.02 and pi - 0.02: one basin each
    # the curve of fixed-t lines, linear between lines 0.05 apart in t, against the points (curvature: 1e-4)
    assert np.max(np.abs(_curve_phi(curve, across.t) - across.phi)) < 2e-4


def test_boundary_separates_the_maps(curve):
    """Cells of the flow map on the global side of the curve are global and the others spurious, except within
    the tolerance; GD's map (finite steps) differs from the curve in a thin band only."""
    flow = plots.basins_data(n=41, algorithm="flow", n_paths=0)
    gd = plots.basins_data(n=41, algorithm="gd", n_paths=0)
    grid_phi, grid_t = np.meshgrid(flow.phi, flow.t)
    edge = _curve_phi(curve, grid_t)
    left = grid_phi < edge
    far = np.abs(grid_phi - edge) > 1e-3  # beyond the interpolation error of the curve
    np.testing.assert_array_equal((flow.outcome == GLOBAL)[far], left[far])
    wrong = np.mean((gd.outcome == GLOBAL) != left)
    assert wrong < 0.01  # measured 0.0006 (1 of 1681 cells): GD (eta_w = 0.25) has nearly the same boundary
    # the one start that is neither global nor spurious is the saddle itself, a grid point (pi / 2, 0) for n = 41
    other = np.argwhere((flow.outcome != GLOBAL) & (flow.outcome != sims.OUTCOMES.index("spurious")))
    assert [(flow.phi[j], flow.t[i]) for i, j in other] == [pytest.approx(basins.saddle(4), abs=1e-12)]
    assert flow.outcome[tuple(other[0])] == sims.OUTCOMES.index("saddle")


def test_draw_basins_overlays_the_boundary_and_names_the_algorithm(curve):
    data = plots.basins_data(n=5, algorithm="flow", steps=400)
    fig, ax = plt.subplots()
    assert plots.draw_basins(data, boundary=curve, ax=ax) is ax
    lines = ax.get_lines()
    assert len(lines) == 2 * len(data.paths) + 3
    np.testing.assert_array_equal(lines[-2].get_xdata(), curve.phi)
    np.testing.assert_array_equal(lines[-2].get_ydata(), curve.t)
    assert (lines[-1].get_xdata()[0], lines[-1].get_ydata()[0]) == basins.saddle(4)
    assert ax.get_title().startswith("cnn: basins of gradient flow (k = 4, p = 4")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-2:] == ["boundary (+/- 1e-06)", "saddle"]
    ax2 = plots.basins(n=3, steps=200, ax=plt.subplots()[1])
    assert ax2.get_title().startswith("cnn: basins of GD")
    assert len(ax2.get_lines()) == 2 * 9 + 1  # without a boundary: the paths and the saddle angle
    plt.close("all")


def test_flow_paths_start_at_their_grid_points():
    n = 5
    data = plots.basins_data(n=n, algorithm="flow")
    for i, (phi, align) in zip(np.linspace(0, n * n - 1, 9).astype(int), data.paths, strict=True):
        assert abs(phi[0] - data.phi[i % n]) < 1e-12
        assert abs(align[0] - data.t[i // n]) < 1e-12


def test_the_cli_writes_the_flow_figure(tmp_path, capsys, monkeypatch):
    """``shallowres plot basins --algorithm flow`` asks :func:`plots.basins` for the 400 x 400 flow map with its
    boundary and writes it as PNG and PDF.  The map is drawn at 40 x 40 here (the CLI's call with ``n`` replaced):
    the grid's size changes nothing this test checks, and the 400 x 400 flows (5 s warm, up to 12 s beside the
    suite) are run by the order-parameters guide's block in tests/test_readme.py."""
    calls = []
    real = plots.basins

    def smaller(**kw):
        calls.append(kw)
        return real(**dict(kw, n=40))

    monkeypatch.setattr(plots, "basins", smaller)
    assert main(["plot", "basins", "--algorithm", "flow", "--out", str(tmp_path)]) == 0
    assert calls == [dict(n=400, algorithm="flow", boundary=True, n_paths=0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["basins_flow.pdf", "basins_flow.png"]
    assert capsys.readouterr().out.split() == [str(tmp_path / "basins_flow.png"), str(tmp_path / "basins_flow.pdf")]


@pytest.mark.parametrize("call, field", [
    (lambda: plots.basins_data(n=3, algorithm="sgd"), "algorithm"),
    (lambda: plots.basins(n=3, algorithm="sgd"), "algorithm"),
    (lambda: basins.boundary(tol=0.0), "tol"),
    (lambda: basins.boundary(tol=-1e-6), "tol"),
    (lambda: basins.boundary(tol=float("nan")), "tol"),
    (lambda: basins.boundary(along="x"), "along"),
    (lambda: basins.boundary(lines=0), "lines"),
    (lambda: basins.boundary(lines=[2.0]), "lines"),
    (lambda: basins.boundary(coarse=1), "coarse"),
    (lambda: basins.plane_runs([4.0], [0.0]), "phi0"),
    (lambda: basins.plane_runs([1.0], [np.inf]), "t"),
    (lambda: basins.plane_runs([1.0, 2.0], [0.0, 1.0, 2.0]), "phi0 and t"),
    (lambda: basins.plane_runs([1.0], [0.0], k=1), "k"),
    (lambda: basins.plane_runs([1.0], [0.0], flow=1e-6), "flow"),
    (lambda: plots.draw_basins(plots.basins_data(n=2, steps=10, n_paths=0), boundary=[1.0]), "boundary"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError, match=rf"^{field} must"):
        call()
