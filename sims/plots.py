"""Figures in matplotlib's idiom: one consistent style, labeled axes, a colorblind-safe palette (Okabe-Ito).

Every plotting function draws on the ``ax=`` it is given (``fig=`` for the multi-panel figures) and returns that
Axes or Figure; without one it makes a new figure of a suitable size in the package's style (:func:`style`).
Nothing is written to disk: :func:`save_figure` writes a figure as PNG and PDF (``shallowres plot`` and the tables
use it).  Where a figure needs simulations, computing the data and drawing it are separate functions
(:func:`basins_data` and :func:`draw_basins`, :func:`trajectories_data` and :func:`draw_trajectories`), so the data
can be kept, inspected and redrawn; :func:`basins` and :func:`trajectories` do both.

No backend is chosen here: a notebook shows the figures inline, the command line draws with Agg.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure, FigureBase
from matplotlib.font_manager import FontProperties

import theory

#: Okabe & Ito (2008) colorblind-safe palette.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
#: The suffixes :func:`save_figure` writes, in order.
FORMATS = ("png", "pdf")


# ---------------------------------------------------------------------------------------------------------------
# Style, new axes, saving


def style() -> contextlib.AbstractContextManager:
    """The package's rc settings (:data:`STYLE`) as a context manager.

    Axes made inside it look like the ones the plotting functions make themselves (no top/right spines, a light
    grid, small fonts), e.g. ``with plots.style(): fig, ax = plt.subplots()``.  The functions draw inside it too,
    so their labels and legends take its font sizes on any Axes.
    """
    return plt.rc_context(STYLE)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax`` itself, or the Axes of a new figure of ``figsize`` (inches) in the package's style."""
    if ax is None:
        with style():
            _, ax = plt.subplots(figsize=figsize)
            _pin_ticks(ax)
        return ax
    if not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes or None; got {type(ax).__name__}")
    return ax


def _panels(fig: FigureBase | None, n: int, figsize: tuple[float, float], *, sharey: bool) -> np.ndarray:
    """A row of ``n`` Axes on ``fig`` (which must be empty), or on a new figure of ``figsize`` inches."""
    if fig is None:
        with style():
            fig = plt.figure(figsize=figsize)
    elif not isinstance(fig, FigureBase):
        raise ValueError(f"fig must be a matplotlib Figure (or SubFigure) or None; got {type(fig).__name__}")
    elif fig.axes:
        raise ValueError(f"fig must be empty (the function lays out its own panels); it holds {len(fig.axes)} Axes")
    with style():
        axes = fig.subplots(1, n, sharey=sharey, squeeze=False)[0]
        for ax in axes:
            _pin_ticks(ax)
    return axes


def _pin_ticks(ax: Axes) -> None:
    """Fix the style's tick-label size and grid alpha on ``ax``: matplotlib makes ticks only when it draws, from
    the rc settings of that moment (outside :func:`style` in a notebook or in :func:`save_figure`)."""
    size = FontProperties(size=plt.rcParams["xtick.labelsize"]).get_size_in_points()
    ax.tick_params(axis="both", which="both", labelsize=size, grid_alpha=plt.rcParams["grid.alpha"])


def save_figure(fig: FigureBase, stem: str | Path, *, close: bool = False) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` (at 200 dpi, tight bounding box); return the two paths.

    Both files are rendered in memory first, so an error while drawing writes nothing (not even the directory);
    each is then written to a temporary file and renamed into place, so no file is ever left half-written.  The
    parent directory is created if needed; existing files of the same names are replaced.

    Parameters
    ----------
    fig
        The figure (a SubFigure saves its whole parent figure).
    stem
        The path without suffix, e.g. ``figures/basins``.
    close
        Also close the figure in pyplot (for scripts that make many figures; a notebook keeps it to show it).

    Returns
    -------
    ``[<stem>.png, <stem>.pdf]``.
    """
    if not isinstance(fig, FigureBase):
        raise ValueError(f"fig must be a matplotlib Figure; got {type(fig).__name__}")
    stem = Path(stem)
    if not stem.name or stem.suffix.lower() in {f".{f}" for f in FORMATS}:
        raise ValueError(f"stem must be a file path without the .png/.pdf suffix (both are added); got {str(stem)!r}")
    root = fig
    while not isinstance(root, Figure):  # a SubFigure: its parent, up to the figure that owns the canvas
        root = root.figure
    paths = [stem.parent / f"{stem.name}.{fmt}" for fmt in FORMATS]
    try:
        blobs = []
        for fmt in FORMATS:
            buf = io.BytesIO()
            root.savefig(buf, format=fmt, dpi=STYLE["savefig.dpi"], bbox_inches="tight")
            blobs.append(buf.getvalue())
    finally:
        if close:
            plt.close(root)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for path, blob in zip(paths, blobs, strict=True):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def _require(frame: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    """``ValueError`` unless ``frame`` is a non-empty DataFrame with ``columns``."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing} (it needs {list(columns)})")
    if frame.empty:
        raise ValueError(f"{name} has no rows")


def _int_at_least(name: str, value: int, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")


def _yerr(mid: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    """Asymmetric error bars from an interval (clipped at 0 against rounding)."""
    return np.maximum(0.0, np.array([mid - lo, hi - mid], dtype=float))


# ---------------------------------------------------------------------------------------------------------------
# Tables: success rates, restarts, loss curves, expansions


def success_rates(summary: pd.DataFrame, *, ax: Axes | None = None, title: str = "") -> Axes:
    """``p_global`` with Wilson 95% intervals per ``(k, p)`` cell, one series (errorbar) per method.

    Parameters
    ----------
    summary
        A sweep summary: columns ``method, k, p, p_global, p_global_lo, p_global_hi``, one row per cell.
    ax
        Where to draw; default a new figure whose width grows with the number of cells.
    title
        Axes title (none if empty).

    Returns
    -------
    The Axes, with one errorbar container per method (in the summary's order) and a legend.
    """
    _require(summary, "summary", ("method", "k", "p", "p_global", "p_global_lo", "p_global_hi"))
    cells = summary[["k", "p"]].drop_duplicates().sort_values(["k", "p"]).to_records(index=False)
    ax = _axes(ax, (max(4.5, 0.62 * len(cells) + 1.5), 3.2))
    methods = list(dict.fromkeys(summary["method"]))
    width = 0.8 / len(methods)
    with style():
        for j, method in enumerate(methods):
            sub = summary[summary["method"] == method].set_index(["k", "p"])
            x, y, lo, hi = [], [], [], []
            for i, (k, p) in enumerate(cells):
                if (k, p) in sub.index:
                    row = sub.loc[(k, p)]
                    x.append(i - 0.4 + width * (j + 0.5))
                    y.append(row["p_global"])
                    lo.append(row["p_global_lo"])
                    hi.append(row["p_global_hi"])
            y, lo, hi = (pd.Series(v, dtype=float) for v in (y, lo, hi))
            ax.errorbar(x, y, yerr=_yerr(y, lo, hi), fmt=MARKERS[j % len(MARKERS)], color=PALETTE[j % len(PALETTE)],
                        ms=4, capsize=2, lw=1, label=method)
        ax.set_xticks(range(len(cells)), [f"k={k}\np={p}" for k, p in cells])
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel("P(global minimum)  [fraction of runs]")
        ax.set_xlabel("grid cell (patches k, patch dimension p)")
        if title:
            ax.set_title(title)
        ax.legend(loc="lower left", ncol=2, frameon=False)
    return ax


def restarts(rows: pd.DataFrame, *, fig: FigureBase | None = None) -> FigureBase:
    """Observed success within ``m`` restarts (Wilson 95%) against ``1 - (1 - q)^m``: one panel per ``p``, one
    colour per ``k`` (markers: observed; lines: predicted).

    Parameters
    ----------
    rows
        :func:`sims.studies.tables.restart_rows`: columns ``k, p, m, observed, observed_lo, observed_hi,
        predicted``.
    fig
        An empty figure to lay the panels out on; default a new one.

    Returns
    -------
    The figure.
    """
    _require(rows, "rows", ("k", "p", "m", "observed", "observed_lo", "observed_hi", "predicted"))
    ps = sorted(rows["p"].unique())
    axes = _panels(fig, len(ps), (3.0 * len(ps), 2.8), sharey=True)
    with style():
        for ax, p in zip(axes, ps, strict=True):
            sub = rows[rows["p"] == p]
            for j, k in enumerate(sorted(sub["k"].unique())):
                s = sub[sub["k"] == k].sort_values("m")
                c = PALETTE[j % len(PALETTE)]
                ax.errorbar(s["m"], s["observed"], yerr=_yerr(s["observed"], s["observed_lo"], s["observed_hi"]),
                            fmt=MARKERS[j % len(MARKERS)], color=c, ms=4, capsize=2, lw=0, elinewidth=1,
                            label=f"k={k}")
                ax.plot(s["m"], s["predicted"], color=c, lw=1, alpha=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("restarts m")
            ax.set_title(f"p = {p}")
        axes[0].set_ylabel("P(success within m restarts)")
        axes[-1].legend(frameon=False, fontsize=7)
        fig = axes[0].figure
        fig.suptitle("markers: observed (Wilson 95%); lines: 1 - (1 - q)^m", fontsize=8)
    return fig


def scaling(summary: pd.DataFrame, *, fig: FigureBase | None = None) -> FigureBase:
    """P(global) against ``k`` (log scale) as the network grows: one panel per method, one colour per ``p``,
    solid lines and filled markers for gradient descent, dashed lines and open markers for gradient flow (Wilson
    95% bars).

    Parameters
    ----------
    summary : pandas.DataFrame
        A sweep summary with columns ``method, k, p, p_global, p_global_lo, p_global_hi`` and optionally
        ``algorithm`` (``gd`` or ``flow``; without it every row is GD): the ``scaling`` table's.
    fig : matplotlib.figure.Figure or SubFigure, optional
        An empty figure to lay the panels out on; default a new one.

    Returns
    -------
    matplotlib.figure.Figure or SubFigure
        The figure: per panel one errorbar container per ``(p, algorithm)`` present.

    Raises
    ------
    ValueError
        If a column is missing or the table is empty, or ``fig`` already has axes.

    Examples
    --------
    >>> import pandas as pd
    >>> from sims import plots
    >>> summary = pd.DataFrame({"method": ["cnn"] * 4, "k": [10, 100, 10, 100], "p": [10] * 4,
    ...                         "algorithm": ["gd", "gd", "flow", "flow"], "p_global": [0.6, 0.55, 0.6, 0.5],
    ...                         "p_global_lo": [0.5, 0.45, 0.5, 0.4], "p_global_hi": [0.7, 0.65, 0.7, 0.6]})
    >>> fig = plots.scaling(summary)
    >>> [ax.get_title() for ax in fig.axes], fig.axes[0].get_xscale()
    (['cnn'], 'log')
    """
    _require(summary, "summary", ("method", "k", "p", "p_global", "p_global_lo", "p_global_hi"))
    data = summary if "algorithm" in summary else summary.assign(algorithm="gd")
    methods = list(dict.fromkeys(data["method"]))
    ps = sorted(data["p"].unique())
    axes = _panels(fig, len(methods), (3.2 * len(methods), 2.9), sharey=True)
    with style():
        for ax, m in zip(axes, methods, strict=True):
            for j, p in enumerate(ps):
                for alg, line, face in (("gd", "-", None), ("flow", "--", "none")):
                    s = data[(data["method"] == m) & (data["p"] == p) & (data["algorithm"] == alg)].sort_values("k")
                    if s.empty:
                        continue
                    c = PALETTE[j % len(PALETTE)]
                    ax.errorbar(s["k"], s["p_global"], yerr=_yerr(s["p_global"], s["p_global_lo"], s["p_global_hi"]),
                                fmt=MARKERS[j % len(MARKERS)] + line, color=c, mfc=face or c, ms=4, capsize=2, lw=1,
                                label=f"p={p} ({alg})")
            ax.set_xscale("log")
            ax.set_xlabel("k (patches)")
            ax.set_title(m)
        axes[0].set_ylabel("P(global minimum)")
        axes[-1].legend(frameon=False, fontsize=6)
        fig = axes[0].figure
        fig.suptitle("solid: gradient descent; dashed: gradient flow (Wilson 95%)", fontsize=8)
    return fig


def loss_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], *, ax: Axes | None = None,
                title: str = "") -> Axes:
    """Loss (relative to the zero network's) against step, log-log; one colour per label, one legend entry each.

    Parameters
    ----------
    curves
        ``(label, steps, loss)`` triples; ``steps`` from 0 (drawn at ``step + 1``), ``loss`` positive.
    ax
        Where to draw; default a new figure.
    title
        Axes title (none if empty).

    Returns
    -------
    The Axes, one line per curve in the given order.
    """
    if len(curves) == 0:
        raise ValueError("curves must hold at least one (label, steps, loss) triple")
    for i, curve in enumerate(curves):
        if len(curve) != 3 or np.shape(curve[1]) != np.shape(curve[2]) or np.ndim(curve[1]) != 1:
            raise ValueError(f"curves[{i}] must be (label, steps, loss) with steps and loss 1-D of equal length")
    ax = _axes(ax, (5.0, 3.2))
    seen: dict[str, int] = {}
    with style():
        for label, steps, loss in curves:
            first = label not in seen
            j = seen.setdefault(label, len(seen))
            ax.plot(np.maximum(steps, 0) + 1, loss, color=PALETTE[j % len(PALETTE)], lw=1, alpha=0.8,
                    label=label if first else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step + 1")
        ax.set_ylabel("loss / L_ref  (L_ref = E[f*^2]/2)")
        if title:
            ax.set_title(title)
        ax.legend(frameon=False)
    return ax


def expansions(rows: pd.DataFrame, *, fig: FigureBase | None = None) -> FigureBase:
    """P(global) with Wilson intervals against depth: one panel per method (model x warmup), one series per target
    and rate.

    Parameters
    ----------
    rows
        Rows of :func:`sims.methods.expansion.compare` (or the ``expand`` table): columns ``method, target, rate,
        depth, p_global, p_global_lo, p_global_hi``.
    fig
        An empty figure to lay the panels out on; default a new one.

    Returns
    -------
    The figure.
    """
    _require(rows, "rows", ("method", "target", "rate", "depth", "p_global", "p_global_lo", "p_global_hi"))
    methods = list(dict.fromkeys(rows["method"]))
    axes = _panels(fig, len(methods), (2.9 * len(methods), 3.0), sharey=True)
    series = rows[["target", "rate"]].drop_duplicates().sort_values(["target", "rate"]).to_records(index=False)
    with style():
        for ax, method in zip(axes, methods, strict=True):
            sub = rows[rows["method"] == method]
            for j, (target, rate) in enumerate(series):
                s = sub[(sub["target"] == target) & (sub["rate"] == rate)].sort_values("depth")
                if s.empty:
                    continue
                ax.errorbar(s["depth"] + 0.06 * (j - len(series) / 2), s["p_global"],
                            yerr=_yerr(s["p_global"], s["p_global_lo"], s["p_global_hi"]),
                            fmt=MARKERS[j % len(MARKERS)] + "-", ms=3, lw=0.8, capsize=2,
                            color=PALETTE[j % len(PALETTE)], label=f"{target}, r={rate}")
            ax.set_title(method, fontsize=8)
            ax.set_xlabel("depth N (number of factors)")
            ax.set_xticks(sorted(rows["depth"].unique()))
        axes[0].set_ylabel("P(global minimum)")
        axes[-1].legend(frameon=False, fontsize=6)
    return axes[0].figure


def end_to_end(deviations: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Deviation of factor GD from the end-to-end formula, balanced against unbalanced inits.

    Parameters
    ----------
    deviations
        :func:`sims.methods.expansion.deviation_study` output (drawn by
        :func:`sims.methods.expansion.plot_deviation`: one line per run, one colour per case).
    ax
        Where to draw; default a new figure.

    Returns
    -------
    The Axes.
    """
    from sims.methods import expansion

    _require(deviations, "deviations", ("run", "step", "deviation"))
    ax = _axes(ax, (5.5, 3.5))
    with style():
        expansion.plot_deviation(deviations, ax=ax)
        ax.set_title("factor GD vs the end-to-end formula (balanced: small; unbalanced: order one)", fontsize=8)
    return ax


# ---------------------------------------------------------------------------------------------------------------
# The landscape


def teacher_with_ratio(k: int, ratio: float) -> np.ndarray:
    """A unit-norm ``a*`` with ``1.a* = ratio * sqrt((k + pi - 1) / pi)`` (the existence threshold), ``k >= 2``.

    The spurious point exists iff ``ratio < 1``; ``1.a*`` is capped at ``sqrt(k)`` (``a* = 1_k / sqrt(k)``).
    """
    _int_at_least("k", k, 2)
    ones = np.ones(k) / np.sqrt(k)
    perp = np.zeros(k)
    perp[0], perp[1] = 1.0, -1.0
    perp /= np.linalg.norm(perp)
    s = ratio * np.sqrt(theory.m_eigenvalues(k)[0] / np.pi)
    along = min(s / np.sqrt(k), 1.0)  # component along 1/sqrt(k)
    return along * ones + np.sqrt(max(0.0, 1.0 - along**2)) * perp


def landscape(*, k: int = 4, ratios: Sequence[float] = (0.0, 0.4, 0.8, 1.2), n: int = 361,
              fig: FigureBase | None = None) -> FigureBase:
    """The reduced landscape ``min_a L(phi, a)`` (left) and the optimal ``a``'s alignment ``a(phi).a*`` (right)
    for unit teachers with ``1.a* = ratio x`` the existence threshold (:func:`teacher_with_ratio`).

    Left: one line per ratio, then its markers: o the global minimum (``phi = 0``) and, where the spurious point
    exists (``ratio < 1``), x the saddle ``phi_s`` and a square the spurious minimum (``phi = pi``).  Right: one
    line per ratio, a dotted vertical line at each saddle angle.

    Parameters
    ----------
    k
        Number of patches, ``>= 2``.
    ratios
        ``1.a*`` in units of the threshold ``sqrt((k + pi - 1) / pi)``.
    n
        Angles from 0 to pi per curve.
    fig
        An empty figure to lay the two panels out on; default a new one.

    Returns
    -------
    The figure.
    """
    _int_at_least("k", k, 2)
    _int_at_least("n", n, 2)
    if len(ratios) == 0 or not np.all(np.isfinite(ratios)):
        raise ValueError(f"ratios must be a non-empty sequence of finite numbers; got {ratios!r}")
    ax, ax2 = _panels(fig, 2, (7.6, 3.0), sharey=False)
    phis = np.linspace(0.0, np.pi, n)
    with style():
        for j, ratio in enumerate(ratios):
            a_star = teacher_with_ratio(k, ratio)
            c = PALETTE[j % len(PALETTE)]
            ax.plot(phis, [theory.reduced_loss(float(x), a_star) for x in phis], color=c, lw=1.3,
                    label=f"1.a* = {ratio:.1f} x threshold")
            ax2.plot(phis, [theory.alignment_at(float(x), a_star) for x in phis], color=c, lw=1.3)
            ax.plot([0.0], [0.0], "o", color=c, ms=4)
            phi_s = theory.saddle_angle(a_star)
            if phi_s is not None:
                ax.plot([phi_s], [theory.reduced_loss(phi_s, a_star)], "x", color=c, ms=6, mew=1.5)
                ax.plot([np.pi], [theory.reduced_loss(np.pi, a_star)], "s", color=c, ms=4)
                ax2.axvline(phi_s, color=c, lw=0.6, ls=":")
        ax.set_xlabel("angle phi between w~ and w*  [rad]")
        ax.set_ylabel("min over a of L(phi, a)")
        ax.set_title(f"reduced landscape, k = {k}: o global, x saddle, [] spurious")
        ax.legend(frameon=False, fontsize=7)
        ax2.axhline(0.0, color="0.4", lw=0.8)
        ax2.set_xlabel("angle phi  [rad]")
        ax2.set_ylabel("a(phi).a*  (sign decides the basin)")
        ax2.set_title("alignment of the optimal a")
    return ax.figure


# ---------------------------------------------------------------------------------------------------------------
# Dynamics in the (phi, a.a*) plane: basins and trajectories


@dataclass(frozen=True)
class BasinsData:
    """Outcome of training from a grid of starts ``(phi_0, a_0 = t a*)``, and a few paths (:func:`basins_data`).

    Attributes
    ----------
    model, k, p, steps, eta_w, eta_a
        The setting (constant step sizes).
    a_star
        The teacher's second layer (unit norm, ``1.a* = 0``: the spurious point exists).
    phi, t
        The grid's axes: starting angles ``phi_0`` (shape ``(n,)``) and starting ``a.a* / ||a*||^2`` (``(n,)``).
    outcome
        Outcome code per start, an index into ``outcomes``; shape ``(len(t), len(phi))`` (row ``i``: ``t[i]``).
    outcomes
        The outcome names (:data:`sims.runs.classify.OUTCOMES`).
    paths
        ``(phi, a.a* / ||a*||^2)`` along a few runs, each a pair of 1-D arrays starting at its grid point.
    saddle
        The saddle angle ``phi_s`` of ``a_star``.
    algorithm
        ``"gd"`` (GD with the step sizes ``eta_w, eta_a``) or ``"flow"`` (gradient flow with those rates, ``steps``
        its time budget).
    """

    model: str
    k: int
    p: int
    steps: int
    eta_w: float
    eta_a: float
    a_star: np.ndarray
    phi: np.ndarray
    t: np.ndarray
    outcome: np.ndarray
    outcomes: tuple[str, ...]
    paths: tuple[tuple[np.ndarray, np.ndarray], ...]
    saddle: float
    algorithm: str = "gd"


#: The algorithms :func:`basins_data` runs, and their names in titles.
BASIN_ALGORITHMS = {"gd": "GD", "flow": "gradient flow"}


def basins_data(*, k: int = 4, p: int = 4, model: str = "cnn", steps: int = 4000, n: int = 41, eta_w: float = 0.25,
                eta_a: float | None = None, n_paths: int = 9, algorithm: str = "gd") -> BasinsData:
    """Run GD or gradient flow from an ``n x n`` grid of starts in the ``(phi, a.a*)`` plane and classify each
    run's end.

    The teacher has ``||a*|| = 1`` and ``1.a* = 0`` (so the spurious point exists) and ``w* = e_1``; the starts are
    ``phi_0`` in ``[0.02, pi - 0.02]`` (the filter at that angle, :func:`theory.filter_at_angle`) and
    ``a_0 = t a*`` with ``t`` in ``[-1.5, 1.5]``.  GD trains the vectors; the flow runs on the starts' order
    parameters (:func:`sims.runs.basins.plane_runs`, with the loose solver tolerances of an outcome map and the
    provable stops), so ``n = 400`` takes seconds.

    Parameters
    ----------
    k, p, model, steps
        The network and the step budget (for the flow: its time), validated by :func:`sims.simulate`.
    n
        Grid points per axis, ``>= 2``.
    eta_w, eta_a
        Constant step sizes (the flow's rates); ``eta_a`` defaults to ``0.9 x`` the optimal ``eta_a`` for ``k``.
    n_paths
        Runs whose paths are kept, spread evenly over the grid.
    algorithm
        ``"gd"`` or ``"flow"``.

    Returns
    -------
    :class:`BasinsData`.
    """
    from sims.runs import basins as plane
    from sims.runs.classify import OUTCOMES
    from sims.runs.schedules import Schedule, optimal_eta_a
    from sims.runs.simulate import simulate

    if algorithm not in BASIN_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {tuple(BASIN_ALGORITHMS)}; got {algorithm!r}")
    _int_at_least("n", n, 2)
    _int_at_least("n_paths", n_paths, 0)
    _int_at_least("p", p, 2)  # a start at an angle strictly between 0 and pi needs a second coordinate
    eta_a = 0.9 * optimal_eta_a(k) if eta_a is None else eta_a
    a_star = teacher_with_ratio(k, 0.0)
    phis = np.linspace(*plane.PHI_RANGE, n)
    ts = np.linspace(*plane.T_RANGE, n)
    grid_phi, grid_t = np.meshgrid(phis, ts)
    keep = np.unique(np.linspace(0, grid_phi.size - 1, n_paths).astype(int))
    if algorithm == "flow":
        kw = dict(model=model, k=k, p=p, steps=steps, eta_w=eta_w, eta_a=eta_a)
        outcome = plane.plane_runs(grid_phi, grid_t, **kw).outcome
        runs = range(keep.size)
        if keep.size:
            res = plane.plane_runs(grid_phi.ravel()[keep], grid_t.ravel()[keep], n_record=64, **kw)
    else:
        w_star = np.zeros(p)
        w_star[0] = 1.0
        w0 = np.array([theory.filter_at_angle(float(x), w_star, model=model) for x in grid_phi.ravel()])
        a0 = grid_t.ravel()[:, None] * a_star[None, :]
        res = simulate(model=model, k=k, p=p, runs=w0.shape[0], steps=steps,
                       schedule=Schedule.constant(eta_w, eta_a), teacher=(w_star, a_star), init=(w0, a0), n_record=64)
        outcome, runs = res.outcome, keep
    code = np.array([OUTCOMES.index(o) for o in outcome]).reshape(grid_phi.shape)
    qs = float(a_star @ a_star)
    paths = []
    for i in runs:
        tr = res.trajectory_of(int(i))
        paths.append((tr["phi"], tr["alignment"] / qs))
    return BasinsData(model=str(model), k=k, p=p, steps=steps, eta_w=float(eta_w), eta_a=float(eta_a), a_star=a_star,
                      phi=phis, t=ts, outcome=code, outcomes=tuple(OUTCOMES), paths=tuple(paths),
                      saddle=float(theory.saddle_angle(a_star)), algorithm=algorithm)


def draw_basins(data: BasinsData, *, boundary: object = None, ax: Axes | None = None) -> Axes:
    """Draw :class:`BasinsData`: the outcome map (one colour per outcome, a legend of all outcomes), the kept paths
    (black, a dot at each start), the saddle angle (dotted) and, if given, the basin boundary.

    Parameters
    ----------
    data
        The map (:func:`basins_data`).
    boundary
        A :class:`sims.runs.basins.Boundary` (:func:`sims.runs.basins.boundary`) drawn over the map: a line through
        its points (markers only where a line of the plane crosses it more than once), with the saddle point
        ``(phi_s, a(phi_s).a*)`` marked x; None draws none.
    ax
        Where to draw; default a new figure.

    Returns
    -------
    The Axes: one QuadMesh (the map, its array the outcome codes), per path a line and its start dot, the saddle
    angle's line, then (with a boundary) the boundary's line and the saddle's marker.
    """
    from sims.runs import basins as plane

    if not isinstance(data, BasinsData):
        raise ValueError(f"data must be a BasinsData (from basins_data); got {type(data).__name__}")
    if boundary is not None and not isinstance(boundary, plane.Boundary):
        raise ValueError(f"boundary must be a sims.runs.basins.Boundary or None; got {type(boundary).__name__}")
    ax = _axes(ax, (5.0, 3.6))
    n_out = len(data.outcomes)
    cmap = ListedColormap([PALETTE[0], PALETTE[3], PALETTE[4], "0.8", "0.3"][:n_out])
    with style():
        grid_phi, grid_t = np.meshgrid(data.phi, data.t)
        # rasterized: in the PDF the map is an image at the figure's dpi (as in the PNG), not one vector quad per
        # start: the CLI's 400 x 400 gradient-flow map took 16 s to write as a 2.8 MB PDF (measured on 2 shared
        # cores); lines, markers and text stay vector.
        ax.pcolormesh(grid_phi, grid_t, data.outcome, cmap=cmap, vmin=-0.5, vmax=n_out - 0.5, shading="nearest",
                      alpha=0.55, rasterized=True)
        for phi, align in data.paths:
            ax.plot(phi, align, color="k", lw=0.8, alpha=0.8)
            ax.plot(phi[:1], align[:1], "k.", ms=4)
        ax.axvline(data.saddle, color="k", ls=":", lw=0.8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i), alpha=0.55) for i in range(n_out)]
        labels = list(data.outcomes)
        what = f"{data.model}: basins of {BASIN_ALGORITHMS.get(data.algorithm, data.algorithm)}"
        title = f"{what} (k = {data.k}, p = {data.p}, 1.a* = 0); dotted: saddle angle"
        if boundary is not None:
            single = bool(np.all(boundary.crossings <= 1))
            (line,) = ax.plot(boundary.phi, boundary.t, color=PALETTE[7], lw=1.4 if single else 0,
                              marker=None if single else ".", ms=3)
            phi_s, t_s = plane.saddle(data.k)
            (mark,) = ax.plot([phi_s], [t_s], "x", color=PALETTE[7], ms=7, mew=1.5)
            handles += [line, mark]
            labels += [f"boundary (+/- {boundary.tol:.0e})", "saddle"]
            title = f"{what} (k = {data.k}, p = {data.p}, 1.a* = 0)\nline: stable manifold of the saddle (x)"
        ax.set_xlim(0, np.pi)
        ax.set_ylim(data.t[0], data.t[-1])
        ax.set_xlabel("angle phi  [rad]")
        ax.set_ylabel("a.a* / ||a*||^2")
        ax.legend(handles, labels, loc="upper right", fontsize=7, frameon=True)
        ax.set_title(title)
    return ax


def basins(*, k: int = 4, p: int = 4, model: str = "cnn", steps: int = 4000, n: int = 41, eta_w: float = 0.25,
           eta_a: float | None = None, algorithm: str = "gd", boundary: bool = False, tol: float = 1e-6,
           n_paths: int = 9, ax: Axes | None = None) -> Axes:
    """:func:`basins_data` drawn by :func:`draw_basins` (the parameters are theirs); with ``boundary=True`` also
    :func:`sims.runs.basins.boundary` (to ``tol``, lines of fixed ``t``) in the same setting, drawn over the map.
    Returns the Axes."""
    from sims.runs import basins as plane

    data = basins_data(k=k, p=p, model=model, steps=steps, n=n, eta_w=eta_w, eta_a=eta_a, n_paths=n_paths,
                       algorithm=algorithm)
    curve = None
    if boundary:
        curve = plane.boundary(model=model, k=k, p=p, steps=steps, eta_w=eta_w, eta_a=data.eta_a, tol=tol)
    return draw_basins(data, boundary=curve, ax=ax)


@dataclass(frozen=True)
class TrajectoryPanel:
    """The ``(phi, a.a* / ||a*||^2)`` paths of one setup's runs.

    Attributes
    ----------
    label
        The setup, e.g. ``"resnet, prescribed warmup"``.
    phi, alignment
        Per run, the path's angle and ``a.a* / ||a*||^2`` (1-D arrays of equal length, from the start on).
    outcome
        Per run, its outcome name (``"global"`` is drawn blue, anything else vermillion).
    """

    label: str
    phi: tuple[np.ndarray, ...]
    alignment: tuple[np.ndarray, ...]
    outcome: tuple[str, ...]


@dataclass(frozen=True)
class TrajectoriesData:
    """:func:`trajectories_data`: the size ``(k, p)`` and one :class:`TrajectoryPanel` per setup."""

    k: int
    p: int
    panels: tuple[TrajectoryPanel, ...]


def trajectories_data(*, k: int = 16, p: int = 16, runs: int = 12, steps: int = 3000, seed: int = 4
                      ) -> TrajectoriesData:
    """Paths of the ResNet from ``w0 = 0`` (prescribed warmup, and no warmup) and of the CNN from a random ``w0``
    (no warmup), same teachers (``v.w* >= 0``, spurious point present); ``eta_w = 1/k``, ``eta_a = 0.9 x`` optimal.

    Parameters
    ----------
    k, p, runs, steps, seed
        Passed to :func:`sims.simulate` (which validates them) for each of the three setups.

    Returns
    -------
    :class:`TrajectoriesData`, panels in the order above.
    """
    from sims.runs.samplers import Init, Teacher
    from sims.runs.schedules import Schedule, optimal_eta_a
    from sims.runs.simulate import simulate

    eta_a, eta_w = 0.9 * optimal_eta_a(k), 1.0 / k
    setups = [("resnet, prescribed warmup", "resnet", Schedule.prescribed_warmup(eta_w, eta_a)),
              ("resnet, no warmup", "resnet", Schedule.constant(eta_w, eta_a)),
              ("cnn, no warmup", "cnn", Schedule.constant(eta_w, eta_a))]
    panels = []
    for label, model, sched in setups:
        res = simulate(model=model, k=k, p=p, runs=runs, steps=steps, schedule=sched, seed=seed,
                       teacher=Teacher(require_spurious=True), n_record=200,
                       init=Init(w="zero" if theory.Model.of(model).shortcut else "sphere"))
        trs = [res.trajectory_of(r) for r in range(runs)]
        qs = [float(res.a_star[r] @ res.a_star[r]) for r in range(runs)]
        panels.append(TrajectoryPanel(label=label, phi=tuple(tr["phi"] for tr in trs),
                                      alignment=tuple(tr["alignment"] / q for tr, q in zip(trs, qs, strict=True)),
                                      outcome=tuple(str(o) for o in res.outcome)))
    return TrajectoriesData(k=k, p=p, panels=tuple(panels))


def draw_trajectories(data: TrajectoriesData, *, fig: FigureBase | None = None) -> FigureBase:
    """Draw :class:`TrajectoriesData`, one panel per setup (shared y axis): per run its path and a dot at its start,
    blue if it reached the global minimum, vermillion otherwise; each title gives the fraction global.

    Returns
    -------
    The figure.
    """
    if not isinstance(data, TrajectoriesData) or not data.panels:
        raise ValueError("data must be a TrajectoriesData with at least one panel (from trajectories_data)")
    axes = _panels(fig, len(data.panels), (3.0 * len(data.panels), 3.0), sharey=True)
    with style():
        for ax, panel in zip(axes, data.panels, strict=True):
            for phi, align, outcome in zip(panel.phi, panel.alignment, panel.outcome, strict=True):
                c = PALETTE[0] if outcome == "global" else PALETTE[3]
                ax.plot(phi, align, color=c, lw=0.9, alpha=0.8)
                ax.plot(phi[:1], align[:1], ".", color=c, ms=4)
            runs = len(panel.outcome)
            share = np.mean(np.array(panel.outcome) == "global") if runs else 0.0
            ax.set_title(f"{panel.label}\n{share:.0%} of {runs} runs global", fontsize=8)
            ax.set_xlabel("angle phi  [rad]")
            ax.set_xlim(0, np.pi)
        axes[0].set_ylabel("a.a* / ||a*||^2")
        fig = axes[0].figure
        fig.suptitle(f"(phi, a.a*) trajectories, k = {data.k}, p = {data.p}; dots: starts; blue: global, "
                     "vermillion: spurious", fontsize=9, y=1.04)
    return fig


def trajectories(*, k: int = 16, p: int = 16, runs: int = 12, steps: int = 3000, fig: FigureBase | None = None
                 ) -> FigureBase:
    """:func:`trajectories_data` drawn by :func:`draw_trajectories` (the parameters are theirs); returns the
    figure."""
    return draw_trajectories(trajectories_data(k=k, p=p, runs=runs, steps=steps), fig=fig)
