"""The figures of :mod:`sims.plots` as matplotlib objects: each function draws on the Axes (or Figure) it is given
and returns it; the tests read the labels, titles, legends and the plotted data back from the returned objects and
compare them with the input.  Nothing is written to disk unless :func:`sims.plots.save_figure` is called, which
writes exactly ``<stem>.png`` and ``<stem>.pdf`` (and nothing at all when rendering fails)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

import theory  # noqa: E402
from sims import cli, plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """A temporary, empty working directory; the test checks that it stays empty."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _legend_texts(ax):
    legend = ax.get_legend()
    assert legend is not None, "no legend"
    return [t.get_text() for t in legend.get_texts()]


def _errorbar_y(container: ErrorbarContainer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The data points of an errorbar and the lower and upper ends of its vertical bars."""
    data_line, _, (bars,) = container.lines
    segments = np.array(bars.get_segments())
    return np.asarray(data_line.get_ydata(), float), segments[:, 0, 1], segments[:, 1, 1]


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data (exact values to read back)


def _summary() -> pd.DataFrame:
    """Two methods over three cells; method ``cnn`` lacks the cell ``(8, 4)``."""
    rows = [("resnet", 4, 4, 0.9, 0.8, 0.95), ("resnet", 4, 8, 0.7, 0.6, 0.8), ("resnet", 8, 4, 0.5, 0.4, 0.6),
            ("cnn", 4, 4, 0.3, 0.2, 0.4), ("cnn", 4, 8, 0.25, 0.15, 0.35)]
    return pd.DataFrame(rows, columns=["method", "k", "p", "p_global", "p_global_lo", "p_global_hi"])


def _restart_rows() -> pd.DataFrame:
    rows = []
    for p in (4, 8):
        for k in (2, 3):
            q = 0.1 * k + 0.01 * p
            for m in (1, 2, 4, 8):
                obs = min(1.0, 1 - (1 - q) ** m + 0.01)
                rows.append({"k": k, "p": p, "m": m, "observed": obs, "observed_lo": obs - 0.05,
                             "observed_hi": min(1.0, obs + 0.05), "predicted": 1 - (1 - q) ** m})
    return pd.DataFrame(rows)


def _expansion_rows() -> pd.DataFrame:
    rows = []
    for method in ("resnet", "cnn"):
        for target, rate in (("w", 1), ("a", 2)):
            for depth in (1, 2, 3):
                pg = 0.2 * depth / 3 + (0.5 if method == "resnet" else 0.0) + (0.1 if target == "a" else 0.0)
                rows.append({"method": method, "target": target, "rate": rate, "depth": depth, "p_global": pg,
                             "p_global_lo": pg - 0.05, "p_global_hi": pg + 0.04})
    return pd.DataFrame(rows)


def _deviations() -> pd.DataFrame:
    steps = np.arange(0, 50, 10)
    rows = []
    for init, scale in (("balanced", np.nan), ("gaussian", 0.3)):
        for run in range(2):
            for s in steps:
                rows.append({"init": init, "scale": scale, "depth": 2, "run": run, "step": s,
                             "deviation": (1e-3 if init == "balanced" else 0.5) * (1 + s) * (run + 1)})
    return pd.DataFrame(rows)


def _basins_data() -> plots.BasinsData:
    phi, t = np.linspace(0.1, 3.0, 4), np.linspace(-1.0, 1.0, 3)
    outcome = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [0, 0, 0, 3]])
    paths = ((np.array([3.0, 2.0, 1.0]), np.array([1.0, 0.5, 0.2])), (np.array([0.1, 0.05]), np.array([-1.0, 0.3])))
    return plots.BasinsData(model="cnn", k=4, p=4, steps=100, eta_w=0.25, eta_a=1.0, a_star=np.array([0.5, -0.5]),
                            phi=phi, t=t, outcome=outcome, outcomes=("global", "spurious", "saddle", "not_converged",
                                                                      "diverged"), paths=paths, saddle=1.9)


def _trajectories_data() -> plots.TrajectoriesData:
    panels = []
    for label, outcomes in (("resnet, no warmup", ("global", "spurious")), ("cnn, no warmup", ("spurious",))):
        phi = tuple(np.linspace(1.0 + i, 0.1, 5) for i in range(len(outcomes)))
        align = tuple(np.linspace(-0.5, 1.0, 5) * (i + 1) for i in range(len(outcomes)))
        panels.append(plots.TrajectoryPanel(label=label, phi=phi, alignment=align, outcome=outcomes))
    return plots.TrajectoriesData(k=8, p=6, panels=tuple(panels))


# ---------------------------------------------------------------------------------------------------------------
# Each function on a given Axes / Figure


def test_success_rates_draws_one_errorbar_per_method_with_the_summary_values():
    summary = _summary()
    fig, ax = plt.subplots()
    assert plots.success_rates(summary, ax=ax, title="T") is ax
    assert fig.axes == [ax]
    assert ax.get_xlabel() == "grid cell (patches k, patch dimension p)"
    assert ax.get_ylabel() == "P(global minimum)  [fraction of runs]"
    assert ax.get_title() == "T"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["k=4\np=4", "k=4\np=8", "k=8\np=4"]
    assert _legend_texts(ax) == ["resnet", "cnn"]  # the summary's order
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    for container, method in zip(containers, ["resnet", "cnn"], strict=True):
        sub = summary[summary["method"] == method].sort_values(["k", "p"])
        y, lo, hi = _errorbar_y(container)
        np.testing.assert_array_equal(y, sub["p_global"])
        np.testing.assert_allclose(lo, sub["p_global_lo"], rtol=0, atol=1e-15)  # y - (y - lo)
        np.testing.assert_allclose(hi, sub["p_global_hi"], rtol=0, atol=1e-15)
    # the two methods side by side within each cell: resnet left of cnn, cnn absent from the third cell
    x_resnet, x_cnn = (np.asarray(c.lines[0].get_xdata(), float) for c in containers)
    np.testing.assert_allclose(x_resnet, [-0.2, 0.8, 1.8], atol=1e-12)
    np.testing.assert_allclose(x_cnn, [0.2, 1.2], atol=1e-12)
    assert ax.get_ylim() == (-0.02, 1.05)


def test_restarts_draws_one_panel_per_p_with_observed_and_predicted():
    rows = _restart_rows()
    fig = plt.figure()
    assert plots.restarts(rows, fig=fig) is fig
    assert [ax.get_title() for ax in fig.axes] == ["p = 4", "p = 8"]
    assert fig.get_suptitle() == "markers: observed (Wilson 95%); lines: 1 - (1 - q)^m"
    assert fig.axes[0].get_ylabel() == "P(success within m restarts)"
    assert _legend_texts(fig.axes[1]) == ["k=2", "k=3"]
    for ax, p in zip(fig.axes, (4, 8), strict=True):
        assert ax.get_xlabel() == "restarts m" and ax.get_xscale() == "log"
        containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        bars = {id(c.lines[0]) for c in containers} | {id(cap) for c in containers for cap in c.lines[1]}
        predicted = [line for line in ax.get_lines() if id(line) not in bars]
        assert len(containers) == len(predicted) == 2
        for container, line, k in zip(containers, predicted, (2, 3), strict=True):
            s = rows[(rows["p"] == p) & (rows["k"] == k)].sort_values("m")
            np.testing.assert_array_equal(_errorbar_y(container)[0], s["observed"])
            np.testing.assert_array_equal(line.get_xdata(), s["m"])
            np.testing.assert_array_equal(line.get_ydata(), s["predicted"])


def test_loss_curves_one_line_per_curve_one_colour_and_legend_entry_per_label():
    steps = np.array([0, 1, 9, 99])
    curves = [("resnet", steps, np.array([1.0, 0.5, 0.1, 1e-6])), ("cnn", steps[:3], np.array([1.0, 0.9, 0.8])),
              ("resnet", steps, np.array([1.0, 0.6, 0.2, 1e-5]))]
    fig, ax = plt.subplots()
    assert plots.loss_curves(curves, ax=ax, title="two phases") is ax
    lines = ax.get_lines()
    assert len(lines) == 3
    for line, (_, s, loss) in zip(lines, curves, strict=True):
        np.testing.assert_array_equal(line.get_xdata(), s + 1)
        np.testing.assert_array_equal(line.get_ydata(), loss)
    assert lines[0].get_color() == lines[2].get_color() != lines[1].get_color()
    assert _legend_texts(ax) == ["resnet", "cnn"]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == \
        ("step + 1", "loss / L_ref  (L_ref = E[f*^2]/2)", "two phases")


def test_expansions_one_panel_per_method_one_series_per_target_and_rate():
    rows = _expansion_rows()
    fig = plt.figure()
    assert plots.expansions(rows, fig=fig) is fig
    assert [ax.get_title() for ax in fig.axes] == ["resnet", "cnn"]
    assert fig.axes[0].get_ylabel() == "P(global minimum)"
    assert _legend_texts(fig.axes[1]) == ["a, r=2", "w, r=1"]  # series sorted by (target, rate)
    for ax, method in zip(fig.axes, ("resnet", "cnn"), strict=True):
        assert ax.get_xlabel() == "depth N (number of factors)"
        assert list(ax.get_xticks()) == [1, 2, 3]
        containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(containers) == 2
        for container, target in zip(containers, ("a", "w"), strict=True):
            s = rows[(rows["method"] == method) & (rows["target"] == target)].sort_values("depth")
            y, lo, hi = _errorbar_y(container)
            np.testing.assert_array_equal(y, s["p_global"])
            np.testing.assert_allclose(hi, s["p_global_hi"], rtol=0, atol=1e-15)


def test_end_to_end_draws_one_line_per_run_without_step_zero():
    df = _deviations()
    fig, ax = plt.subplots()
    assert plots.end_to_end(df, ax=ax) is ax
    lines = ax.get_lines()
    assert len(lines) == 4  # (init, run) pairs
    first = df[(df["init"] == "balanced") & (df["run"] == 0) & (df["step"] > 0)]
    np.testing.assert_array_equal(lines[0].get_xdata(), first["step"])  # log axes: step 0 left out
    np.testing.assert_array_equal(lines[0].get_ydata(), first["deviation"])
    assert ax.get_title().startswith("factor GD vs the end-to-end formula")
    assert ax.get_ylabel() == "||x_factors - x_end_to_end|| / ||x_end_to_end||"
    assert len(_legend_texts(ax)) == 2


def test_teacher_with_ratio_is_a_unit_teacher_at_the_asked_fraction_of_the_threshold():
    for k in (2, 4, 9):
        threshold = math.sqrt((k + math.pi - 1) / math.pi)
        for ratio in (0.0, 0.5, 0.99, 1.01):
            a = plots.teacher_with_ratio(k, ratio)
            assert abs(np.linalg.norm(a) - 1.0) < 1e-14
            assert abs(a.sum() - ratio * threshold) < 1e-12
            assert (theory.spurious_point(a) is not None) == (ratio < 1)  # the existence condition


def test_landscape_plots_the_reduced_loss_with_its_fixed_points():
    fig = plt.figure()
    k, ratios = 4, (0.0, 1.2)
    assert plots.landscape(k=k, ratios=ratios, n=91, fig=fig) is fig
    ax, ax2 = fig.axes
    assert ax.get_xlabel() == "angle phi between w~ and w*  [rad]" and ax.get_ylabel() == "min over a of L(phi, a)"
    assert ax2.get_ylabel() == "a(phi).a*  (sign decides the basin)"
    assert _legend_texts(ax) == ["1.a* = 0.0 x threshold", "1.a* = 1.2 x threshold"]
    lines = ax.get_lines()
    # ratio 0: curve, global o, saddle x, spurious square; ratio 1.2 (no spurious point): curve, global o
    assert [line.get_marker() for line in lines] == ["None", "o", "x", "s", "None", "o"]
    a0 = plots.teacher_with_ratio(k, 0.0)
    phis = np.linspace(0.0, np.pi, 91)
    np.testing.assert_array_equal(lines[0].get_xdata(), phis)
    np.testing.assert_array_equal(lines[0].get_ydata(), [theory.reduced_loss(float(x), a0) for x in phis])
    assert abs(lines[0].get_ydata()[0]) < 1e-12  # the global minimum: loss 0 at phi = 0
    phi_s = theory.saddle_angle(a0)
    assert lines[2].get_xdata()[0] == phi_s
    # the saddle is the maximum of the reduced landscape along phi (one-dimensional: a saddle in (w, a))
    assert max(lines[0].get_ydata()) <= lines[2].get_ydata()[0] + 1e-12
    assert lines[3].get_xdata()[0] == np.pi
    # right panel: the two alignment curves, the saddle's dotted line, the zero line
    right = ax2.get_lines()
    assert len(right) == 4
    np.testing.assert_array_equal(right[0].get_ydata(), [theory.alignment_at(float(x), a0) for x in phis])
    assert right[1].get_xdata()[0] == phi_s and right[1].get_linestyle() == ":"


def test_draw_basins_shows_the_outcome_grid_paths_and_saddle():
    data = _basins_data()
    fig, ax = plt.subplots()
    assert plots.draw_basins(data, ax=ax) is ax
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).ravel(), data.outcome.ravel())
    lines = ax.get_lines()
    assert len(lines) == 2 * len(data.paths) + 1
    for i, (phi, align) in enumerate(data.paths):
        np.testing.assert_array_equal(lines[2 * i].get_xdata(), phi)
        np.testing.assert_array_equal(lines[2 * i].get_ydata(), align)
        assert (lines[2 * i + 1].get_xdata()[0], lines[2 * i + 1].get_ydata()[0]) == (phi[0], align[0])
    assert list(lines[-1].get_xdata()) == [data.saddle, data.saddle]
    assert _legend_texts(ax) == list(data.outcomes)
    assert ax.get_xlim() == (0, np.pi)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("angle phi  [rad]", "a.a* / ||a*||^2")
    assert ax.get_title().startswith("cnn: basins of GD (k = 4, p = 4")


def test_basins_data_runs_from_its_grid():
    n = 5
    data = plots.basins_data(k=4, p=4, n=n, steps=300)
    assert data.outcome.shape == (n, n)
    assert set(np.unique(data.outcome)) <= set(range(len(data.outcomes)))
    np.testing.assert_allclose(data.phi, np.linspace(0.02, np.pi - 0.02, n), rtol=0, atol=0)
    # each kept path starts at its grid point: run i is (t[i // n], phi[i % n]) and a_0 = t a*
    for i, (phi, align) in zip(np.linspace(0, n * n - 1, 9).astype(int), data.paths, strict=True):
        assert abs(phi[0] - data.phi[i % n]) < 1e-9
        assert abs(align[0] - data.t[i // n]) < 1e-12
    # next to the global minimum (phi_0 = 0.02, far below the saddle angle) every start reaches it
    assert data.saddle > 1.5
    assert (data.outcome[:, 0] == data.outcomes.index("global")).all()
    # the one-call form draws the same data
    fig, ax = plt.subplots()
    assert plots.basins(k=4, p=4, n=n, steps=300, ax=ax) is ax
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).ravel(), data.outcome.ravel())


def test_draw_trajectories_one_panel_per_setup_coloured_by_outcome():
    data = _trajectories_data()
    fig = plt.figure()
    assert plots.draw_trajectories(data, fig=fig) is fig
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "resnet, no warmup\n50% of 2 runs global"
    assert fig.axes[1].get_title() == "cnn, no warmup\n0% of 1 runs global"
    assert "k = 8, p = 6" in fig.get_suptitle()
    assert fig.axes[0].get_ylabel() == "a.a* / ||a*||^2"
    for ax, panel in zip(fig.axes, data.panels, strict=True):
        lines = ax.get_lines()
        assert len(lines) == 2 * len(panel.outcome)
        for i, outcome in enumerate(panel.outcome):
            np.testing.assert_array_equal(lines[2 * i].get_xdata(), panel.phi[i])
            np.testing.assert_array_equal(lines[2 * i].get_ydata(), panel.alignment[i])
            colour = plots.PALETTE[0] if outcome == "global" else plots.PALETTE[3]
            assert to_rgba(lines[2 * i].get_color()) == to_rgba(colour)


def test_trajectories_data_starts_the_resnet_at_its_shortcut():
    data = plots.trajectories_data(k=4, p=4, runs=3, steps=200)
    assert [p.label for p in data.panels] == ["resnet, prescribed warmup", "resnet, no warmup", "cnn, no warmup"]
    warm, cold, _ = data.panels
    for panel in data.panels:
        assert len(panel.phi) == len(panel.alignment) == len(panel.outcome) == 3
        assert all(len(x) == len(y) >= 1 for x, y in zip(panel.phi, panel.alignment, strict=True))
    # w0 = 0: the effective filter is the shortcut v, and the teachers have v.w* >= 0, so phi_0 <= pi/2; the same
    # seed gives both ResNet setups the same teachers and starts
    for a, b in zip(warm.phi, cold.phi, strict=True):
        assert a[0] == b[0] <= np.pi / 2
    fig = plots.trajectories(k=4, p=4, runs=3, steps=200)
    assert len(fig.axes) == 3


def test_a_subfigure_takes_a_multi_panel_plot_and_save_figure_saves_the_whole_figure(tmp_path):
    fig = plt.figure(figsize=(8, 3))
    left, right = fig.subfigures(1, 2)
    assert plots.restarts(_restart_rows(), fig=left) is left
    plots.success_rates(_summary(), ax=right.subplots())
    assert len(fig.axes) == 3
    paths = plots.save_figure(right, tmp_path / "both")
    assert [p.name for p in paths] == ["both.png", "both.pdf"]
    assert paths[0].read_bytes() == plots.save_figure(fig, tmp_path / "root")[0].read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Nothing on disk unless asked; save_figure


def test_drawing_writes_no_file(empty_cwd):
    plots.success_rates(_summary())
    plots.restarts(_restart_rows())
    plots.loss_curves([("a", np.arange(3), np.ones(3))])
    plots.expansions(_expansion_rows())
    plots.end_to_end(_deviations())
    plots.landscape(n=11)
    plots.draw_basins(_basins_data())
    plots.draw_trajectories(_trajectories_data())
    plots.basins(k=4, p=4, n=3, steps=50)
    assert len(plt.get_fignums()) == 9  # each made its own figure
    assert list(empty_cwd.iterdir()) == []


def test_without_ax_a_figure_in_the_package_style_is_made():
    ax = plots.success_rates(_summary())
    assert ax.figure.get_size_inches()[0] == pytest.approx(max(4.5, 0.62 * 3 + 1.5))
    assert ax.figure.dpi == plots.STYLE["figure.dpi"]
    assert not ax.spines["top"].get_visible() and ax.xaxis._major_tick_kw["gridOn"]
    fig = plots.landscape(n=11)
    assert tuple(fig.get_size_inches()) == (7.6, 3.0)


def test_save_figure_writes_png_and_pdf_only(empty_cwd):
    fig = plots.landscape(n=11)
    paths = plots.save_figure(fig, "out/landscape")
    assert paths == [Path("out/landscape.png"), Path("out/landscape.pdf")]
    assert sorted(p.name for p in (empty_cwd / "out").iterdir()) == ["landscape.pdf", "landscape.png"]
    assert paths[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert paths[1].read_bytes().startswith(b"%PDF-")
    assert plt.fignum_exists(fig.number)  # a notebook may still show it
    plots.save_figure(fig, "out/landscape", close=True)  # overwrites in place
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in (empty_cwd / "out").iterdir()) == ["landscape.pdf", "landscape.png"]


def test_save_figure_leaves_nothing_when_rendering_fails(empty_cwd):
    fig, ax = plt.subplots()
    ax.set_title(r"$\frac{$")  # invalid mathtext: fails only when drawn
    with pytest.raises(ValueError):
        plots.save_figure(fig, "sub/broken")
    assert list(empty_cwd.iterdir()) == []


@pytest.mark.parametrize("call, needle", [
    (lambda: plots.save_figure(plt.figure(), "x.png"), "stem"),
    (lambda: plots.save_figure("not a figure", "x"), "fig must be a matplotlib Figure"),
    (lambda: plots.success_rates(_summary().drop(columns="p_global_hi")), "p_global_hi"),
    (lambda: plots.success_rates(_summary().iloc[:0]), "summary has no rows"),
    (lambda: plots.success_rates(_summary(), ax="left"), "ax must be a matplotlib Axes"),
    (lambda: plots.restarts(_restart_rows(), fig=plt.subplots()[0]), "fig must be empty"),
    (lambda: plots.loss_curves([("a", np.arange(3), np.ones(2))]), "curves[0]"),
    (lambda: plots.loss_curves([]), "curves must hold"),
    (lambda: plots.landscape(k=1), "k must be an integer >= 2"),
    (lambda: plots.landscape(ratios=(0.0, math.nan)), "ratios"),
    (lambda: plots.basins_data(n=1), "n must be an integer >= 2"),
    (lambda: plots.draw_basins({"phi": []}), "data must be a BasinsData"),
    (lambda: plots.draw_trajectories(plots.TrajectoriesData(k=4, p=4, panels=())), "at least one panel"),
])
def test_bad_input_is_a_value_error_naming_the_field(call, needle):
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value)


def test_cli_plot_writes_the_same_files_through_save_figure(tmp_path, capsys):
    assert cli.main(["plot", "landscape", "--out", str(tmp_path / "figs")]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "figs" / "landscape.png"), str(tmp_path / "figs" / "landscape.pdf")]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["landscape.pdf", "landscape.png"]
    assert plt.get_fignums() == []  # closed after saving
