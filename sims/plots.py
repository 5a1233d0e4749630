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
