"""The tables: the papers' ``liu2019``, ``du2018`` and ``two-phase``, and the methods' ``distill`` (fading
shortcut), ``laperm`` (train-by-reconnect) and ``expand`` (deep linear expansions); one sweep config each in
``sims/studies/configs/``.

Each table is a sweep (chunked, resumable, on Dask if asked) plus a rendering (Markdown, LaTeX or CSV) and figures,
computed from the persisted per-run table only.  The papers' own numbers are not available to us; the tables
report ours with Wilson 95% intervals and the settings in full.

The summary is streamed from the chunks (:func:`sims.studies.summary.summarize_chunks`), so ``liu2019`` reads nothing
else and runs at any size (``shallowres table liu2019 --trials 1000000 --no-runs``: 45 million runs, well under a
gigabyte of memory); ``du2018``, ``two-phase`` and the methods' tables also read the per-run table
(:attr:`sims.studies.sweep.SweepOutcome.runs`, joined from the chunks if ``--no-runs`` skipped ``runs.parquet``).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import theory
from sims.runs import classify
from sims.runs.simulate import simulate
from sims.studies import store, sweep
from sims.studies.names import FORMATS, TABLES
from sims.studies.spec import dotted_value
from sims.studies.summary import to_parquet

#: Tables that are another table's sweep file with some base fields changed: ``liu2019-flow`` is ``liu2019`` by
#: gradient flow (the same teachers and starts, the continuous-time limit of each method's steps).
DERIVED: dict[str, tuple[str, dict[str, Any]]] = {"liu2019-flow": ("liu2019", {"algorithm": "flow"})}
RESTARTS: tuple[int, ...] = (1, 2, 4, 8)


def config(name: str) -> dict[str, Any]:
    """The packaged sweep file of a table."""
    if name not in TABLES:
        raise sweep.SweepError(f"table must be one of {', '.join(TABLES)}; got {name!r}")
    import tomllib

    source, fields = DERIVED.get(name, (name, {}))
    raw = tomllib.loads(resources.files("sims.studies").joinpath("configs", f"{source}.toml").read_text())
    if fields:
        raw["sweep"]["name"] = name
        raw.setdefault("base", {}).update(fields)
    return raw


def spec(name: str, **overrides: Any) -> sweep.SweepSpec:
    """The table's sweep with ``overrides`` (trials, seed, chunk, or dotted base fields).

    Every table is one packaged sweep file (``sims/studies/configs/<name>.toml``); this reads it, applies the
    overrides (a smaller ``trials`` for a quick look) and validates it, so that a bad override fails before any
    run starts.

    Parameters
    ----------
    name : str
        One of :data:`TABLES`.
    **overrides
        ``trials``, ``seed``, ``chunk`` or dotted fields of the sweep's cells (``None`` values are ignored).

    Returns
    -------
    sims.studies.sweep.SweepSpec
        The validated sweep (every cell checked by a one-run dry run).

    Raises
    ------
    sims.studies.sweep.SweepError
        For an unknown table or an override out of range (naming the field).

    Examples
    --------
    >>> from sims.studies import tables
    >>> spec = tables.spec("liu2019", trials=10)
    >>> spec.trials, len(spec.cells)
    (10, 45)
    """
    return sweep.build_spec(config(name), overrides={k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _pct(p: float, lo: float, hi: float) -> str:
    return f"{100 * p:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def render(frame: pd.DataFrame, fmt: str, *, caption: str = "") -> str:
    """A table of strings as Markdown, LaTeX (tabular) or CSV."""
    if fmt not in FORMATS:
        raise sweep.SweepError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "csv":
        return frame.to_csv(index=False)
    cols = [str(c) for c in frame.columns]
    rows = [[str(v) for v in row] for row in frame.itertuples(index=False)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return (f"{caption}\n\n" if caption else "") + "\n".join(lines)

    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%").replace("#", r"\#")

    out = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\hline", " & ".join(esc(c) for c in cols) + r" \\",
           r"\hline"]
    out += [" & ".join(esc(v) for v in r) + r" \\" for r in rows]
    out += [r"\hline", r"\end{tabular}"]
    return (f"% {caption}\n" if caption else "") + "\n".join(out)


def liu2019_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows ``(k, p)``, one column per method: success rate in % with its Wilson 95% interval."""
    return _success_frame(summary, [(m, {"method": m}) for m in dict.fromkeys(summary["method"])])


def scaling_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows ``(k, p)``, one column per method and algorithm (``method (gd)``, ``method (flow)``): P(global) in %
    with its Wilson 95% interval; ``-`` where the sweep has no such cell (the flow stops at a smaller ``k``)."""
    data = summary if "algorithm" in summary else summary.assign(algorithm="gd")
    return _success_frame(data, [(f"{m} ({a})", {"method": m, "algorithm": a})
                                 for m in dict.fromkeys(data["method"]) for a in dict.fromkeys(data["algorithm"])])


def _success_frame(summary: pd.DataFrame, columns: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Rows ``(k, p)``; per ``(label, values)`` of ``columns`` the success rate in % [Wilson 95%] of the summary row
    with those column values (``-`` where there is none)."""
    rows = []
    for (k, p), g in summary.groupby(["k", "p"], sort=True):
        row: dict[str, Any] = {"k": int(k), "p": int(p)}
        for label, values in columns:
            r = g[np.logical_and.reduce([g[c] == v for c, v in values.items()])]
            row[label] = _pct(*r[["p_global", "p_global_lo", "p_global_hi"]].iloc[0]) if len(r) else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def restart_rows(runs: pd.DataFrame, restarts: tuple[int, ...] = RESTARTS) -> pd.DataFrame:
    """Success within ``m`` restarts: disjoint groups of ``m`` consecutive runs of a cell (same teacher,
    independent inits) succeed if any run reached the global minimum; compared with ``1 - (1 - q)^m``."""
    rows = []
    for (k, p), g in runs.groupby(["k", "p"], sort=True):
        ok = (g.sort_values("run")["outcome"] == "global").to_numpy()
        q = ok.mean()
        for m in restarts:
            n = len(ok) // m
            groups = ok[: n * m].reshape(n, m).any(axis=1)
            lo, hi = classify.wilson(groups.sum(), n)
            rows.append({"k": int(k), "p": int(p), "m": m, "groups": n, "q": q, "observed": groups.mean(),
                         "observed_lo": float(lo), "observed_hi": float(hi), "predicted": 1 - (1 - q) ** m})
    return pd.DataFrame(rows)


def du2018_frame(summary: pd.DataFrame, restarts: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, s in summary.sort_values(["k", "p"]).iterrows():
        row: dict[str, Any] = {"k": int(s["k"]), "p": int(s["p"]),
                               "q = P(global) %": _pct(s["p_global"], s["p_global_lo"], s["p_global_hi"]),
                               "P(spurious) %": f"{100 * s['p_spurious']:.1f}"}
        for _, r in restarts[(restarts["k"] == s["k"]) & (restarts["p"] == s["p"]) & (restarts["m"] > 1)].iterrows():
            row[f"m={int(r['m'])}: observed % (1-(1-q)^m)"] = (
                f"{100 * r['observed']:.1f} [{100 * r['observed_lo']:.1f}, {100 * r['observed_hi']:.1f}] "
                f"({100 * r['predicted']:.1f})")
        rows.append(row)
    return pd.DataFrame(rows)


def two_phase_frame(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, s in summary.iterrows():
        g = runs[runs["cell"] == s["cell"]]
        slow = g["slow_phase_end"]
        rows.append({
            "method": s["method"], "k": int(s["k"]), "p": int(s["p"]),
            "P(global) %": _pct(s["p_global"], s["p_global_lo"], s["p_global_hi"]),
            "runs with a.a*<0 at start %": f"{100 * (slow > 0).mean():.1f}",
            "slow phase (median steps, those runs)": _num(slow[slow > 0].median()),
            "steps to 1e-6 (median)": _num(s["steps_to_tol_median"]),
            "fast rate (fitted)": _num(s["fitted_rate_median"], ".4f"),
            "fast rate (theory)": _num(s["theory_rate_median"], ".4f"),
        })
    return pd.DataFrame(rows)


def _num(x: float, fmt: str = ".0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


# ---------------------------------------------------------------------------------------------------------------
# Running


def make(name: str, spec_: sweep.SweepSpec, outcome: sweep.SweepOutcome, fmt: str = "markdown"
         ) -> tuple[str, list[Path]]:
    """Render a finished table sweep and write its figures into the sweep directory.

    ``distill``, ``laperm`` and ``expand`` also rewrite ``summary.csv``/``summary.parquet`` with their table's
    columns added (:data:`METHOD_TABLES`); every table writes ``table.csv``.  The rendering is computed from the
    persisted sweep only, so a resumed or remote sweep renders the same.

    Parameters
    ----------
    name : str
        One of :data:`TABLES`.
    spec_ : sims.studies.sweep.SweepSpec
        The table's sweep (:func:`spec`).
    outcome : sims.studies.sweep.SweepOutcome
        The finished sweep (:func:`sims.studies.sweep.run_sweep`).
    fmt : {"markdown", "latex", "csv"}, default "markdown"
        The rendering.

    Returns
    -------
    text : str
        The rendered table, with its caption (Markdown and LaTeX).
    figures : list of pathlib.Path
        The figures written (PNG and PDF).

    Examples
    --------
    >>> from sims.studies import sweep, tables
    >>> spec = tables.spec("distill", trials=4, steps=2000)
    >>> outcome = sweep.run_sweep(spec, "distill", quiet=True)     # writes the directory ./distill
    >>> text, figures = tables.make("distill", spec, outcome, "csv")
    >>> text.splitlines()[1]
    'resnet,4,4,4,"100.0 [51.0, 100.0]",0.000,1.000,210,-'
    >>> sorted(f.name for f in figures)
    ['success_rates.pdf', 'success_rates.png']
    """
    from sims import plots  # here, not at the top: matplotlib.pyplot takes 0.5 s (`shallowres sweep` draws nothing)

    summary, out = outcome.summary, outcome.out  # outcome.runs is read only by the tables that use it
    if name in METHOD_TABLES:
        rows = METHOD_TABLES[name](summary, outcome.runs, spec_)
        store.atomic_write(out / "summary.parquet", to_parquet(rows))
        store.atomic_write(out / "summary.csv", rows.to_csv(index=False).encode())
        frame = display_frame(rows, METHOD_COLUMNS[name])
        if name == "expand":
            rules = sorted({str(dotted_value(c.params, "engine.step_rule") or "same") for c in spec_.cells})
            caption = ("Deep linear expansions (product of N factors, ExpandNets rate r) of w, a or both, GD on the "
                       f"factors, k = p = 8, step rule {', '.join(rules)}: P(global) in % [Wilson 95%]; depth 1 is "
                       "the unexpanded network")
            figs = plots.save_figure(plots.expansions(rows), out / "expansions", close=True)
        else:
            caption = CAPTIONS[name]
            figs = plots.save_figure(plots.success_rates(rows, title=TITLES[name]).figure, out / "success_rates",
                                     close=True)
    elif name in ("liu2019", "liu2019-flow"):
        frame = liu2019_frame(summary)
        how = "gradient flow" if name == "liu2019-flow" else "GD"
        caption = (f"P(global minimum) in % [Wilson 95%], {how} on the population loss; teachers with v.w* >= 0 and "
                   f"a spurious point; {int(summary['trials'].iloc[0])} trials per cell")
        ax = plots.success_rates(summary, title=f"Liu et al. 2019 by {how}: ResNet (w0 = 0) vs CNN (random w0)")
        figs = plots.save_figure(ax.figure, out / "success_rates", close=True)
    elif name == "scaling":
        frame = scaling_frame(summary)
        caption = ("P(global minimum) in % [Wilson 95%] as k and p grow, by GD (Liu et al.'s step sizes) and by "
                   "gradient flow; teachers with v.w* >= 0 and a spurious point; "
                   f"{int(summary['trials'].iloc[0])} trials per cell")
        figs = plots.save_figure(plots.scaling(summary), out / "scaling", close=True)
    elif name == "du2018":
        rr = restart_rows(outcome.runs)
        rr.to_csv(out / "restarts.csv", index=False)
        frame = du2018_frame(summary, rr)
        caption = ("CNN from random init, one fixed teacher per cell: q = P(global) [Wilson 95%], and success within "
                   "m restarts, observed on disjoint groups of m runs, against 1 - (1 - q)^m")
        ax = plots.success_rates(summary, title="Du et al. 2018: CNN from random init")
        figs = plots.save_figure(ax.figure, out / "success_rates", close=True)
        figs += plots.save_figure(plots.restarts(rr), out / "restarts", close=True)
    else:
        frame = two_phase_frame(summary, outcome.runs)
        caption = "Slow phase (steps until a.a* > 0) and fast phase (per-step loss contraction) of GD"
        figs = two_phase_figure(spec_, outcome.out)
    frame.to_csv(out / "table.csv", index=False)
    return render(frame, fmt, caption=caption), figs


def two_phase_figure(spec_: sweep.SweepSpec, out: Path, *, k: int = 16, p: int = 16, runs: int = 4) -> list[Path]:
    """Loss against step (log-log) for typical runs of each method at ``(k, p)``: the same teachers and inits as
    the sweep (same seed, first ``runs`` runs), re-simulated with a dense log-spaced trajectory."""
    cells = [c for c in spec_.cells if c.params["k"] == k and c.params["p"] == p] or list(spec_.cells)
    k, p = cells[0].params["k"], cells[0].params["p"]
    curves = []
    for cell in cells:
        if cell.params["k"] != k or cell.params["p"] != p:
            continue
        kw = sweep.simulation_kwargs_fast(dict(cell.params, n_record=256))
        res = simulate(runs=runs, seed=spec_.seed, vectors=spec_.vectors, **kw)
        for r in range(runs):
            tr = res.trajectory_of(r)
            curves.append((cell.method, tr["step"], np.maximum(tr["loss"] / res.loss_ref[r], 1e-16)))
    from sims import plots

    ax = plots.loss_curves(curves, title=f"two phases of GD, k = {k}, p = {p}")
    return plots.save_figure(ax.figure, out / "loss_curves", close=True)


# ---------------------------------------------------------------------------------------------------------------
# The methods' tables: distill, laperm, expand (summaries from the per-run table, extras included)


def _order(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows by grid cell ``(k, p)`` first, then in the config's method order (the comparison tables' layout)."""
    methods = {m: i for i, m in enumerate(dict.fromkeys(summary["method"]))}
    key = summary["method"].map(methods)
    return summary.assign(_m=key).sort_values(["k", "p", "_m", "cell"], kind="stable").drop(columns="_m") \
        .reset_index(drop=True)


def _column(g: pd.DataFrame, name: str) -> np.ndarray | None:
    """A per-run extras column of one cell, or None if the cell's engine does not produce it."""
    if name not in g or g[name].isna().all():
        return None
    return g[name].to_numpy()


def distill_rows(summary: pd.DataFrame, runs: pd.DataFrame, spec_: sweep.SweepSpec) -> pd.DataFrame:
    """The ``distill`` table's rows: the sweep summary plus the pairing and fade columns.

    ``p_same_outcome_as_resnet`` is the fraction of runs whose outcome equals that of the run with the same number
    in the ``resnet`` method's cell of the same ``(k, p)`` (the same teacher and init; NaN for cells of another
    model, e.g. the CNN), and ``fade_end_loss_rel_median`` the median loss / L_ref when the shortcut is gone, over
    the runs that got there (NaN without a fade).  The same numbers as :func:`sims.methods.distill.compare`.

    Parameters
    ----------
    summary : pandas.DataFrame
        The sweep's summary, one row per cell.
    runs : pandas.DataFrame
        The sweep's per-run table (extras included).
    spec_ : sims.studies.sweep.SweepSpec
        The sweep.

    Returns
    -------
    pandas.DataFrame
        One row per cell, by ``(k, p)`` and then in the config's method order.

    Examples
    --------
    >>> from sims.studies import sweep, tables
    >>> spec = tables.spec("distill", trials=4, steps=2000)
    >>> outcome = sweep.run_sweep(spec, "distill", quiet=True)     # writes the directory ./distill
    >>> rows = tables.distill_rows(outcome.summary, outcome.runs, spec)
    >>> rows["method"][:6].tolist()
    ['resnet', 'cnn', 'fade-linear-T500', 'fade-cosine-T500', 'fade-step-T500', 'fade-linear-T2000']
    >>> rows["p_same_outcome_as_resnet"][:6].tolist()
    [1.0, nan, 1.0, 1.0, 1.0, 0.75]
    """
    rows = []
    for _, s in summary.iterrows():
        row = s.to_dict()
        g = runs[runs["cell"] == s["cell"]].sort_values("run")
        ref = runs[(runs["method"] == "resnet") & (runs["k"] == s["k"]) & (runs["p"] == s["p"])].sort_values("run")
        paired = theory.Model.of(spec_.cells[int(s["cell"])].params["model"]).shortcut and len(ref) == len(g)
        row["p_same_outcome_as_resnet"] = float(np.mean(g["outcome"].to_numpy() == ref["outcome"].to_numpy())) \
            if paired else math.nan
        fade_end = _column(g, "fade_end_loss")
        row["fade_end_loss_rel_median"] = float(np.nanmedian(fade_end / g["loss_ref"].to_numpy())) \
            if fade_end is not None else math.nan
        rows.append(row)
    return _order(pd.DataFrame(rows))


def _laperm_options(spec_: sweep.SweepSpec, cell: int) -> dict[str, Any]:
    engine = spec_.cells[cell].params.get("engine") or {}
    return {"K": engine.get("K", 10), "init": engine.get("dist", "gaussian"), "inner": engine.get("inner", "gd"),
            "permute": engine.get("permute", "both")}


def laperm_rows(summary: pd.DataFrame, runs: pd.DataFrame, spec_: sweep.SweepSpec) -> pd.DataFrame:
    """The ``laperm`` table's rows: the sweep summary plus the LaPerm options and the permutation-level results.

    Added columns: ``sync_every``, ``init``, ``inner``, ``permute``, ``final_loss_median``,
    ``final_loss_rel_median`` (loss / L_ref), and for LaPerm cells (``K >= 1``) ``p_perm_optimal``/``p_perm_anti``
    with Wilson intervals, ``oracle_loss_rel_median`` (the best permutation), ``last_change_median`` and
    ``p_perm_optimal_if_plain_global``/``..._spurious``: the fraction reaching the best permutation among the runs
    whose plain-optimizer twin (the cell of the same ``(k, p)``, initial values and inner optimizer with ``K = 0``,
    same run number) ended at the global minimum / the spurious point.  The same numbers as
    :func:`sims.methods.laperm.compare`.

    Parameters
    ----------
    summary : pandas.DataFrame
        The sweep's summary, one row per cell.
    runs : pandas.DataFrame
        The sweep's per-run table (extras included).
    spec_ : sims.studies.sweep.SweepSpec
        The sweep.

    Returns
    -------
    pandas.DataFrame
        One row per cell, by ``(k, p)`` and then in the config's method order.

    Examples
    --------
    >>> from sims.studies import sweep, tables
    >>> spec = tables.spec("laperm", trials=4, steps=500)
    >>> outcome = sweep.run_sweep(spec, "laperm", quiet=True)      # writes the directory ./laperm
    >>> rows = tables.laperm_rows(outcome.summary, outcome.runs, spec)
    >>> rows["method"][:4].tolist(), rows["sync_every"][:4].tolist()
    (['gd-gaussian', 'laperm-K1-gaussian', 'laperm-K10-gaussian', 'laperm-K100-gaussian'], [0, 1, 10, 100])
    >>> rows["p_global"][:4].tolist(), rows["p_perm_optimal"][:4].tolist()
    ([0.75, 0.0, 0.0, 0.0], [nan, 0.0, 0.75, 0.75])
    """
    rows = []
    for _, s in summary.iterrows():
        row = s.to_dict()
        cell = int(s["cell"])
        opts = _laperm_options(spec_, cell)
        row.update(sync_every=opts["K"], init=opts["init"], inner=opts["inner"],
                   permute=opts["permute"] if opts["K"] else "")
        g = runs[runs["cell"] == cell].sort_values("run")
        rel = g["final_loss"].to_numpy() / g["loss_ref"].to_numpy()
        row["final_loss_median"] = float(np.median(g["final_loss"]))
        row["final_loss_rel_median"] = float(np.median(rel))
        optimal = _column(g, "perm_optimal")
        if opts["K"] and optimal is not None:
            optimal = optimal.astype(bool)
            sweep.rate_with_interval(row, "perm_optimal", optimal)
            sweep.rate_with_interval(row, "perm_anti", g["perm_anti"].to_numpy().astype(bool))
            row["oracle_loss_rel_median"] = float(np.median(g["oracle_loss"].to_numpy() / g["loss_ref"].to_numpy()))
            row["last_change_median"] = float(np.median(g["last_change_step"].to_numpy().astype(float)))
            base = [c.index for c in spec_.cells if (c.params["k"], c.params["p"]) == (s["k"], s["p"])
                    and {**_laperm_options(spec_, c.index), "permute": opts["permute"]} == dict(opts, K=0)]
            twin = runs[runs["cell"] == base[0]].sort_values("run")["outcome"].to_numpy() if base else None
            for name in ("global", "spurious"):
                sel = twin == name if twin is not None and len(twin) == len(g) else np.zeros(len(g), bool)
                row[f"p_perm_optimal_if_plain_{name}"] = float(np.mean(optimal[sel])) if sel.any() else math.nan
        else:
            for name in ("perm_optimal", "perm_anti"):
                row[f"p_{name}"] = row[f"p_{name}_lo"] = row[f"p_{name}_hi"] = math.nan
            row["oracle_loss_rel_median"] = row["last_change_median"] = math.nan
            row["p_perm_optimal_if_plain_global"] = row["p_perm_optimal_if_plain_spurious"] = math.nan
        rows.append(row)
    return _order(pd.DataFrame(rows))


def expand_rows(summary: pd.DataFrame, runs: pd.DataFrame, spec_: sweep.SweepSpec) -> pd.DataFrame:
    """The ``expand`` table's rows: the sweep summary with each cell's expansion settings, in the config's order.

    Added columns: ``model``, ``warmup``, the expansion's ``target``, ``depth``, ``rate``, ``init``,
    ``step_rule`` and the final step sizes ``eta_w``/``eta_a`` (after the step rule), so that the table and its
    figure need not parse the cells' parameters.

    Parameters
    ----------
    summary : pandas.DataFrame
        The sweep's summary, one row per cell.
    runs : pandas.DataFrame
        The sweep's per-run table (unused: the summary has every number shown).
    spec_ : sims.studies.sweep.SweepSpec
        The sweep.

    Returns
    -------
    pandas.DataFrame
        One row per cell, in cell order.

    Examples
    --------
    The packaged sweep cut down to one method and two depths:

    >>> from sims.studies import sweep, tables
    >>> raw = tables.config("expand")
    >>> raw["grid"] = {"engine.depth": [1, 2]}
    >>> raw["methods"] = {"resnet-no-warmup": raw["methods"]["resnet-no-warmup"]}
    >>> spec = sweep.build_spec(raw, overrides={"trials": 4, "steps": 500})
    >>> outcome = sweep.run_sweep(spec, "expand", quiet=True)      # writes the directory ./expand
    >>> rows = tables.expand_rows(outcome.summary, outcome.runs, spec)
    >>> rows[["target", "depth", "step_rule", "eta_w", "p_global"]].to_dict("list")
    {'target': ['w', 'w'], 'depth': [1, 2], 'step_rule': ['matched', 'matched'],
     'eta_w': [0.125, 0.0625], 'p_global': [1.0, 1.0]}
    """
    rows = []
    for _, s in summary.iterrows():
        row = s.to_dict()
        cell = spec_.cells[int(s["cell"])]
        engine = cell.params.get("engine") or {}
        kw = sweep.simulation_kwargs_fast(cell.params)
        last = kw["schedule"].segments[-1]
        row.update(model=cell.params["model"], warmup=len(kw["schedule"].segments) > 1,
                   target=engine.get("target", "w"), depth=engine.get("depth", 2),
                   rate=engine.get("rate", 1), init=engine.get("init", "auto"),
                   step_rule=engine.get("step_rule", "same"), eta_w=last.eta_w, eta_a=last.eta_a)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("cell", kind="stable").reset_index(drop=True)


#: Row builders of the methods' tables (summary, runs, spec -> rows).
METHOD_TABLES = {"distill": distill_rows, "laperm": laperm_rows, "expand": expand_rows}
#: The columns each shows (``P(global) %`` replaces ``p_global`` and its interval).
METHOD_COLUMNS: dict[str, tuple[str, ...]] = {
    "distill": ("method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious",
                "p_same_outcome_as_resnet", "steps_to_tol_median", "fade_end_loss_rel_median"),
    "laperm": ("method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious",
               "p_perm_optimal", "final_loss_rel_median", "oracle_loss_rel_median"),
    "expand": ("method", "target", "depth", "rate", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious",
               "p_diverged", "steps_to_tol_median"),
}
CAPTIONS = {
    "distill": ("Fading shortcut (train with a shortcut whose weight decays to 0, deploy a plain CNN) against the "
                "ResNet and the CNN: P(global) in % [Wilson 95%], same teachers and inits run by run"),
    "laperm": ("LaPerm (train by permuting the initial values, sync every K steps) against plain GD: P(global) "
               "in % [Wilson 95%], P(best permutation), final and best-permutation loss / L_ref"),
}
TITLES = {"distill": "Residual distillation: fading shortcut", "laperm": "Train-by-reconnect (LaPerm) against GD"}


def display_frame(rows: pd.DataFrame, cols: tuple[str, ...]) -> pd.DataFrame:
    """The shown table: ``cols`` of ``rows`` with ``P(global) %`` [Wilson 95%] after the fourth column, numbers
    formatted (steps to 0 decimals, rates and losses to 3)."""
    frame = rows[[c for c in cols if c in rows.columns]].copy()
    frame.insert(4, "P(global) %", [_pct(r.p_global, r.p_global_lo, r.p_global_hi) for r in rows.itertuples()])
    frame = frame.drop(columns=["p_global", "p_global_lo", "p_global_hi"])
    for c in frame.columns:
        if frame[c].dtype.kind == "f":
            frame[c] = frame[c].map(lambda x, f=(".0f" if "steps" in c else ".3f"): _num(x, f))
    return frame
