"""Figures (matplotlib, Agg): one consistent style, labeled axes, a colorblind-safe palette (Okabe-Ito).

Every function writes ``<stem>.png`` and ``<stem>.pdf`` and returns the two paths.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import theory  # noqa: E402

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


def save(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Write PNG and PDF next to each other and close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return paths


def success_rates(summary: pd.DataFrame, stem: str | Path, *, title: str = "") -> list[Path]:
    """``p_global`` with Wilson 95% intervals per ``(k, p)`` cell, one series per method."""
    with plt.rc_context(STYLE):
        cells = summary[["k", "p"]].drop_duplicates().sort_values(["k", "p"]).to_records(index=False)
        labels = [f"k={k}\np={p}" for k, p in cells]
        methods = list(dict.fromkeys(summary["method"]))
        fig, ax = plt.subplots(figsize=(max(4.5, 0.62 * len(cells) + 1.5), 3.2))
        width = 0.8 / max(1, len(methods))
        for j, method in enumerate(methods):
            sub = summary[summary["method"] == method].set_index(["k", "p"])
            x, y, lo, hi = [], [], [], []
            for i, (k, p) in enumerate(cells):
                if (k, p) in sub.index:
                    row = sub.loc[(k, p)]
                    x.append(i - 0.4 + width * (j + 0.5))
                    y.append(row["p_global"])
                    lo.append(row["p_global"] - row["p_global_lo"])
                    hi.append(row["p_global_hi"] - row["p_global"])
            ax.errorbar(x, y, yerr=np.maximum(0.0, [lo, hi]), fmt=MARKERS[j % len(MARKERS)],
                        color=PALETTE[j % len(PALETTE)], ms=4, capsize=2, lw=1, label=method)
        ax.set_xticks(range(len(cells)), labels)
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel("P(global minimum)  [fraction of runs]")
        ax.set_xlabel("grid cell (patches k, patch dimension p)")
        if title:
            ax.set_title(title)
        ax.legend(loc="lower left", ncol=2, frameon=False)
        return save(fig, stem)


def restarts(rows: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Observed success after ``m`` restarts (with intervals) against ``1 - (1 - q)^m``, one panel per ``p``."""
    with plt.rc_context(STYLE):
        ps = sorted(rows["p"].unique())
        fig, axes = plt.subplots(1, len(ps), figsize=(3.0 * len(ps), 2.8), sharey=True, squeeze=False)
        for ax, p in zip(axes[0], ps, strict=True):
            sub = rows[rows["p"] == p]
            for j, k in enumerate(sorted(sub["k"].unique())):
                s = sub[sub["k"] == k].sort_values("m")
                c = PALETTE[j % len(PALETTE)]
                yerr = np.maximum(0.0, [s["observed"] - s["observed_lo"], s["observed_hi"] - s["observed"]])
                ax.errorbar(s["m"], s["observed"], yerr=yerr, fmt=MARKERS[j % len(MARKERS)], color=c, ms=4,
                            capsize=2, lw=0, elinewidth=1, label=f"k={k}")
                ax.plot(s["m"], s["predicted"], color=c, lw=1, alpha=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("restarts m")
            ax.set_title(f"p = {p}")
        axes[0][0].set_ylabel("P(success within m restarts)")
        axes[0][-1].legend(frameon=False, fontsize=7)
        fig.suptitle("markers: observed (Wilson 95%); lines: 1 - (1 - q)^m", fontsize=8)
        return save(fig, stem)


def loss_curves(curves: list[tuple[str, np.ndarray, np.ndarray]], stem: str | Path, *, title: str = "") -> list[Path]:
    """Loss (relative to the zero network's) against step on a log scale; ``curves``: ``(label, steps, loss)``."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
        seen: dict[str, int] = {}
        for label, steps, loss in curves:
            j = seen.setdefault(label, len(seen))
            ax.plot(np.maximum(steps, 0) + 1, loss, color=PALETTE[j % len(PALETTE)], lw=1, alpha=0.8,
                    label=label if list(seen).index(label) == j and label not in ax.get_legend_handles_labels()[1]
                    else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step + 1")
        ax.set_ylabel("loss / L_ref  (L_ref = E[f*^2]/2)")
        if title:
            ax.set_title(title)
        ax.legend(frameon=False)
        return save(fig, stem)


# ---------------------------------------------------------------------------------------------------------------
# Figure recipes behind ``shallowres plot NAME``


def landscape(stem: str | Path, *, k: int = 4, ratios: tuple[float, ...] = (0.0, 0.4, 0.8, 1.2)) -> list[Path]:
    """Loss along the angle with ``a`` optimized, ``min_a L(phi, a)``, for teachers with ``||a*|| = 1`` and
    ``1.a* = ratio * sqrt((k + pi - 1)/pi)`` (the spurious point exists iff ``ratio < 1``); global, saddle and
    spurious points marked."""

    with plt.rc_context(STYLE):
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.6, 3.0))
        phis = np.linspace(0.0, np.pi, 361)
        for j, ratio in enumerate(ratios):
            a_star = teacher_with_ratio(k, ratio)
            c = PALETTE[j % len(PALETTE)]
            loss = np.array([theory.reduced_loss(float(x), a_star) for x in phis])
            align = np.array([theory.alignment_at(float(x), a_star) for x in phis])
            label = f"1.a* = {ratio:.1f} x threshold"
            ax.plot(phis, loss, color=c, lw=1.3, label=label)
            ax2.plot(phis, align, color=c, lw=1.3)
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
        return save(fig, stem)


def teacher_with_ratio(k: int, ratio: float) -> np.ndarray:
    """A unit-norm ``a*`` with ``1.a* = ratio * sqrt((k + pi - 1) / pi)`` (the existence threshold), ``k >= 2``."""
    ones = np.ones(k) / np.sqrt(k)
    perp = np.zeros(k)
    perp[0], perp[1] = 1.0, -1.0
    perp /= np.linalg.norm(perp)
    s = ratio * np.sqrt(theory.m_eigenvalues(k)[0] / np.pi)
    along = min(s / np.sqrt(k), 1.0)  # component along 1/sqrt(k)
    return along * ones + np.sqrt(max(0.0, 1.0 - along**2)) * perp


def basins(stem: str | Path, *, k: int = 4, p: int = 4, model: str = "cnn", steps: int = 4000, n: int = 41,
           eta_w: float = 0.25, eta_a: float | None = None) -> list[Path]:
    """Outcome of GD from a grid of starting points ``(phi_0, a_0 = t a*)`` in the ``(phi, a.a*)`` plane, with a
    few trajectories on top (teacher ``1.a* = 0``, ``||a*|| = 1``, so the spurious point exists)."""
    from sims.runs.schedules import Schedule, optimal_eta_a
    from sims.runs.simulate import simulate

    eta_a = 0.9 * optimal_eta_a(k) if eta_a is None else eta_a
    a_star = teacher_with_ratio(k, 0.0)
    w_star = np.zeros(p)
    w_star[0] = 1.0
    phis = np.linspace(0.02, np.pi - 0.02, n)
    ts = np.linspace(-1.5, 1.5, n)
    grid_phi, grid_t = np.meshgrid(phis, ts)
    w0 = np.array([theory.filter_at_angle(float(x), w_star, model=model) for x in grid_phi.ravel()])
    a0 = grid_t.ravel()[:, None] * a_star[None, :]
    res = simulate(model=model, k=k, p=p, runs=w0.shape[0], steps=steps, schedule=Schedule.constant(eta_w, eta_a),
                   teacher=(w_star, a_star), init=(w0, a0), n_record=64)
    from sims.runs.classify import OUTCOMES

    code = np.array([OUTCOMES.index(o) for o in res.outcome]).reshape(grid_phi.shape)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        from matplotlib.colors import ListedColormap

        cmap = ListedColormap([PALETTE[0], PALETTE[3], PALETTE[4], "0.8", "0.3"])
        ax.pcolormesh(grid_phi, grid_t, code, cmap=cmap, vmin=-0.5, vmax=4.5, shading="nearest", alpha=0.55)
        for i in np.linspace(0, w0.shape[0] - 1, 9).astype(int):
            tr = res.trajectory_of(int(i))
            ax.plot(tr["phi"], tr["alignment"] / (a_star @ a_star), color="k", lw=0.8, alpha=0.8)
            ax.plot(tr["phi"][:1], tr["alignment"][:1] / (a_star @ a_star), "k.", ms=4)
        phi_s = theory.saddle_angle(a_star)
        ax.axvline(phi_s, color="k", ls=":", lw=0.8)
        ax.set_xlim(0, np.pi)
        ax.set_xlabel("angle phi  [rad]")
        ax.set_ylabel("a.a* / ||a*||^2")
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i), alpha=0.55) for i in range(5)]
        ax.legend(handles, OUTCOMES, loc="upper right", fontsize=7, frameon=True)
        ax.set_title(f"{model}: basins of GD (k = {k}, p = {p}, 1.a* = 0); dotted: saddle angle")
        return save(fig, stem)


def trajectories(stem: str | Path, *, k: int = 16, p: int = 16, runs: int = 12, steps: int = 3000) -> list[Path]:
    """``(phi, a.a*)`` paths of the ResNet from ``w0 = 0`` (prescribed warmup, and no warmup) and of the CNN from
    random ``w0``, same teachers (``v.w* >= 0``, spurious point present)."""
    from sims.runs.samplers import Init, Teacher
    from sims.runs.schedules import Schedule, optimal_eta_a
    from sims.runs.simulate import simulate

    eta_a, eta_w = 0.9 * optimal_eta_a(k), 1.0 / k
    setups = [("resnet, prescribed warmup", "resnet", Schedule.prescribed_warmup(eta_w, eta_a)),
              ("resnet, no warmup", "resnet", Schedule.constant(eta_w, eta_a)),
              ("cnn, no warmup", "cnn", Schedule.constant(eta_w, eta_a))]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.0), sharey=True)
        for ax, (label, model, sched) in zip(axes, setups, strict=True):
            res = simulate(model=model, k=k, p=p, runs=runs, steps=steps, schedule=sched, seed=4,
                           teacher=Teacher(require_spurious=True), n_record=200,
                           init=Init(w="zero" if theory.Model.of(model).shortcut else "sphere"))
            for r in range(runs):
                tr = res.trajectory_of(r)
                c = PALETTE[0] if res.outcome[r] == "global" else PALETTE[3]
                qs = res.a_star[r] @ res.a_star[r]
                ax.plot(tr["phi"], tr["alignment"] / qs, color=c, lw=0.9, alpha=0.8)
                ax.plot(tr["phi"][:1], tr["alignment"][:1] / qs, ".", color=c, ms=4)
            ax.set_title(f"{label}\n{np.mean(res.outcome == 'global'):.0%} of {runs} runs global", fontsize=8)
            ax.set_xlabel("angle phi  [rad]")
            ax.set_xlim(0, np.pi)
        axes[0].set_ylabel("a.a* / ||a*||^2")
        fig.suptitle(f"(phi, a.a*) trajectories, k = {k}, p = {p}; dots: starts; blue: global, vermillion: spurious",
                     fontsize=9, y=1.04)
        return save(fig, stem)


def expansions(rows: pd.DataFrame, stem: str | Path) -> list[Path]:
    """P(global) with Wilson intervals against depth, one panel per method (model x warmup), one series per
    target and rate (rows of :func:`sims.methods.expansion.compare`)."""
    with plt.rc_context(STYLE):
        methods = list(dict.fromkeys(rows["method"]))
        fig, axes = plt.subplots(1, len(methods), figsize=(2.9 * len(methods), 3.0), sharey=True, squeeze=False)
        series = rows[["target", "rate"]].drop_duplicates().sort_values(["target", "rate"]).to_records(index=False)
        for ax, method in zip(axes[0], methods, strict=True):
            sub = rows[rows["method"] == method]
            for j, (target, rate) in enumerate(series):
                s = sub[(sub["target"] == target) & (sub["rate"] == rate)].sort_values("depth")
                if s.empty:
                    continue
                x = s["depth"] + 0.06 * (j - len(series) / 2)
                yerr = np.maximum(0.0, [s["p_global"] - s["p_global_lo"], s["p_global_hi"] - s["p_global"]])
                ax.errorbar(x, s["p_global"], yerr=yerr, fmt=MARKERS[j % len(MARKERS)] + "-", ms=3, lw=0.8,
                            capsize=2, color=PALETTE[j % len(PALETTE)], label=f"{target}, r={rate}")
            ax.set_title(method, fontsize=8)
            ax.set_xlabel("depth N (number of factors)")
            ax.set_xticks(sorted(rows["depth"].unique()))
        axes[0][0].set_ylabel("P(global minimum)")
        axes[0][-1].legend(frameon=False, fontsize=6)
        return save(fig, stem)


def end_to_end(stem: str | Path) -> list[Path]:
    """Deviation of factor GD from the end-to-end formula, balanced against unbalanced inits
    (:func:`sims.methods.expansion.deviation_study`, drawn by :func:`sims.methods.expansion.plot_deviation`)."""
    from sims.methods import expansion

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        expansion.plot_deviation(expansion.deviation_study(), ax=ax)
        ax.set_title("factor GD vs the end-to-end formula (balanced: small; unbalanced: order one)", fontsize=8)
        return save(fig, stem)
