"""The papers' tables: ``liu2019``, ``du2018`` and ``two-phase`` (sweep configs in ``sims/studies/configs/``).

Each table is a sweep plus a rendering (Markdown, LaTeX or CSV) and figures.  The papers' own numbers are not
available to us; the tables report ours with Wilson 95% intervals and the settings in full.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sims import plots
from sims.runs.simulate import simulate
from sims.studies import sweep

TABLES: tuple[str, ...] = ("liu2019", "du2018", "two-phase")
#: Tables computed in one shot by a comparison function (no chunked sweep, so no resume), see :func:`run_direct`.
DIRECT_TABLES: tuple[str, ...] = ("distill", "laperm", "expand")
FORMATS: tuple[str, ...] = ("markdown", "latex", "csv")
RESTARTS: tuple[int, ...] = (1, 2, 4, 8)


def config(name: str) -> dict[str, Any]:
    """The packaged sweep file of a table."""
    if name not in TABLES:
        raise sweep.SweepError(f"table must be one of {', '.join(TABLES)}; got {name!r}")
    text = resources.files("sims.studies").joinpath("configs", f"{name}.toml").read_text()
    import tomllib

    return tomllib.loads(text)


def spec(name: str, **overrides: Any) -> sweep.SweepSpec:
    """The table's sweep with ``overrides`` (trials, seed, chunk, or dotted base fields)."""
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
    methods = list(dict.fromkeys(summary["method"]))
    rows = []
    for (k, p), g in summary.groupby(["k", "p"], sort=True):
        row: dict[str, Any] = {"k": int(k), "p": int(p)}
        for m in methods:
            r = g[g["method"] == m]
            row[m] = _pct(*r[["p_global", "p_global_lo", "p_global_hi"]].iloc[0]) if len(r) else "-"
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
            lo, hi = sweep.wilson(groups.sum(), n)
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
    """Render a finished table sweep and write its figures into the sweep directory."""
    summary, runs, out = outcome.summary, outcome.runs, outcome.out
    if name == "liu2019":
        frame = liu2019_frame(summary)
        caption = ("P(global minimum) in % [Wilson 95%], GD on the population loss; teachers with v.w* >= 0 and a "
                   f"spurious point; {int(summary['trials'].iloc[0])} trials per cell")
        figs = plots.success_rates(summary, out / "success_rates",
                                   title="Liu et al. 2019: ResNet (w0 = 0) vs CNN (random w0)")
    elif name == "du2018":
        rr = restart_rows(runs)
        rr.to_csv(out / "restarts.csv", index=False)
        frame = du2018_frame(summary, rr)
        caption = ("CNN from random init, one fixed teacher per cell: q = P(global) [Wilson 95%], and success within "
                   "m restarts, observed on disjoint groups of m runs, against 1 - (1 - q)^m")
        figs = plots.success_rates(summary, out / "success_rates", title="Du et al. 2018: CNN from random init")
        figs += plots.restarts(rr, out / "restarts")
    else:
        frame = two_phase_frame(summary, runs)
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
        res = simulate(runs=runs, seed=spec_.seed, **kw)
        for r in range(runs):
            tr = res.trajectory_of(r)
            curves.append((cell.method, tr["step"], np.maximum(tr["loss"] / res.loss_ref[r], 1e-16)))
    return plots.loss_curves(curves, out / "loss_curves", title=f"two phases of GD, k = {k}, p = {p}")


# ---------------------------------------------------------------------------------------------------------------
# One-shot tables (comparison functions of sims.methods.distill, sims.methods.laperm)

DIRECT_DEFAULTS: dict[str, dict[str, Any]] = {
    "distill": {"trials": 300, "seed": 0, "steps": 5000},
    "laperm": {"trials": 300, "seed": 0, "steps": 5000},
    "expand": {"trials": 200, "seed": 0, "steps": 20000, "step_rule": "matched"},
}


def run_direct(name: str, out: Path, *, trials: int | None = None, seed: int | None = None,
               steps: int | None = None, step_rule: str | None = None, fmt: str = "markdown"
               ) -> tuple[str, list[Path], pd.DataFrame]:
    """Run a one-shot table, write ``summary.csv/.parquet``, ``table.csv``, ``metadata.json`` and the figure into
    ``out`` (refusing a directory that holds another configuration), and return the rendered table."""
    import json

    if name not in DIRECT_TABLES:
        raise sweep.SweepError(f"table must be one of {', '.join(TABLES + DIRECT_TABLES)}; got {name!r}")
    settings = dict(DIRECT_DEFAULTS[name])
    if step_rule is not None and name != "expand":
        raise sweep.SweepError(f"step_rule applies to table expand only, not {name}")
    for key, val in (("trials", trials), ("seed", seed), ("steps", steps), ("step_rule", step_rule)):
        if val is not None:
            settings[key] = val
    payload = json.dumps({"table": name, **settings}, sort_keys=True).encode()
    fingerprint = sweep.hashlib.sha256(payload).hexdigest()[:16]
    _check_direct_dir(out, fingerprint)
    if name == "distill":
        from sims.methods import distill

        summary = distill.compare(trials=settings["trials"], seed=settings["seed"], steps=settings["steps"])
        cols = ["method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious",
                "p_same_outcome_as_resnet", "steps_to_tol_median", "fade_end_loss_rel_median"]
        caption = ("Fading shortcut (train with a shortcut whose weight decays to 0, deploy a plain CNN) against the "
                   "ResNet and the CNN: P(global) in % [Wilson 95%], same teachers and inits run by run")
        title = "Residual distillation: fading shortcut"
    elif name == "expand":
        from sims.methods import expansion

        summary = expansion.compare(k=8, p=8, trials=settings["trials"], seed=settings["seed"],
                                    steps=settings["steps"], step_rule=settings["step_rule"], timing_runs=16,
                                    timing_steps=2000, timing_repeats=2)
        cols = ["method", "target", "depth", "rate", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi",
                "p_spurious", "p_diverged", "steps_to_tol_median", "seconds_per_step"]
        caption = ("Deep linear expansions (product of N factors, ExpandNets rate r) of w, a or both, GD on the "
                   f"factors, k = p = 8, step rule {settings['step_rule']!r}: P(global) in % [Wilson 95%]; "
                   "depth 1 is the unexpanded network")
        title = "Deep linear expansions: P(global) by method, target, depth and rate"
    else:
        from sims.methods import laperm

        summary = laperm.compare(trials=settings["trials"], seed=settings["seed"], steps=settings["steps"])
        cols = ["method", "k", "p", "trials", "p_global", "p_global_lo", "p_global_hi", "p_spurious",
                "p_perm_optimal", "final_loss_rel_median", "oracle_loss_rel_median"]
        caption = ("LaPerm (train by permuting the initial values, sync every K steps) against plain GD: P(global) "
                   "in % [Wilson 95%], P(best permutation), final and best-permutation loss / L_ref")
        title = "Train-by-reconnect (LaPerm) against GD"
    frame = summary[[c for c in cols if c in summary.columns]].copy()
    frame.insert(4, "P(global) %", [_pct(r.p_global, r.p_global_lo, r.p_global_hi) for r in summary.itertuples()])
    frame = frame.drop(columns=["p_global", "p_global_lo", "p_global_hi"])
    for c in frame.columns:
        if frame[c].dtype.kind == "f":
            fmt_c = ".2e" if c == "seconds_per_step" else (".0f" if "steps" in c else ".3f")
            frame[c] = frame[c].map(lambda x, f=fmt_c: _num(x, f))
    out.mkdir(parents=True, exist_ok=True)
    sweep._atomic_write(out / "config.json", json.dumps({"fingerprint": fingerprint, "table": name, **settings},
                                                        indent=1).encode())
    sweep._atomic_write(out / "summary.parquet", sweep._to_parquet(summary))
    sweep._atomic_write(out / "summary.csv", summary.to_csv(index=False).encode())
    sweep._atomic_write(out / "table.csv", frame.to_csv(index=False).encode())
    meta = {"table": name, **settings, "fingerprint": fingerprint, "git_commit": sweep._git_commit()}
    sweep._atomic_write(out / "metadata.json", json.dumps(meta, indent=1, default=str).encode())
    if name == "expand":
        figs = plots.expansions(summary, out / "expansions")
    else:
        figs = plots.success_rates(summary, out / "success_rates", title=title)
    return render(frame, fmt, caption=caption), figs, summary


def _check_direct_dir(out: Path, fingerprint: str) -> None:
    import json

    cfg = out / "config.json"
    if cfg.exists():
        try:
            old = json.loads(cfg.read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != fingerprint:
            raise sweep.SweepError(f"output directory {str(out)!r} holds a different configuration; use another --out")
        sweep._check_writable(out, out)
        return
    if out.exists() and not out.is_dir():
        raise sweep.SweepError(f"output path {str(out)!r} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        raise sweep.SweepError(f"output directory {str(out)!r} is not empty and holds no table; use another --out")
    sweep._check_writable(out if out.exists() else sweep._existing_parent(out), out)
