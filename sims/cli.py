"""The ``shallowres`` command line."""

# The parser (build_parser) needs only sims.studies.names; each command imports the modules it runs (numba's
# engines are loaded with sims itself, but pandas, pydantic, matplotlib and scipy only once a command runs), so
# --help and an argument error take 0.7 s, not 2.3 s (measured: `shallowres table liu2019 --trials 0`).

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sims.studies import names

if TYPE_CHECKING:
    from sims.studies.spec import SweepSpec


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _positive_int(name: str, lo: int = 1, hi: int = 1_000_000):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in [{lo}, {hi}]; got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in [{lo}, {hi}]; got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--wait takes a number of seconds >= 0; got {text!r}")
    return value


def cmd_landscape(args: argparse.Namespace) -> int:
    """Print the fixed points of the landscape for a teacher ``a*`` (given, or drawn with ``1.a* = 0``)."""
    import numpy as np

    import theory

    k, p = args.k, args.p
    if args.a_star:
        try:
            a_star = np.array([float(x) for x in args.a_star.split(",")])
        except ValueError:
            raise CLIError(f"--a-star must be {k} comma-separated numbers; got {args.a_star!r}") from None
    else:
        rng = np.random.default_rng(args.seed)
        a_star = rng.normal(size=k)
        a_star -= a_star.mean() if k > 1 else 0.0
    if a_star.size != k:
        raise CLIError(f"--a-star must have k = {k} entries; got {a_star.size}")
    try:
        theory.max_stable_eta_a(k)
        spurious = theory.spurious_point(a_star)
        phi_s = theory.saddle_angle(a_star)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    w_star = np.zeros(p)
    w_star[0] = 1.0
    out = [
        f"teacher: k = {k}, p = {p}, 1.a* = {a_star.sum():.6g}, ||a*||^2 = {a_star @ a_star:.6g}",
        f"spurious point exists iff (1.a*)^2 < (k + pi - 1)/pi ||a*||^2: "
        f"{a_star.sum() ** 2:.6g} < {theory.m_eigenvalues(k)[0] / math.pi * (a_star @ a_star):.6g} "
        f"-> {spurious is not None}",
        "global minimum: phi = 0, a = a*, loss 0",
    ]
    if spurious is not None:
        loss_sp = theory.reduced_loss(math.pi, a_star)
        out.append(f"spurious minimum: phi = pi, loss {loss_sp:.6g}, a_sp = {np.array2string(spurious, precision=4)}")
        out.append(f"saddle: phi_s = {phi_s:.6f} rad ({math.degrees(phi_s):.3f} deg), loss "
                   f"{theory.reduced_loss(phi_s, a_star):.6g}")
    out.append(f"largest stable eta_a = 4 pi / (k + pi - 1) = {theory.max_stable_eta_a(k):.6g}")
    print("\n".join(out))
    return 0


def _sweep_options(sp: argparse.ArgumentParser, *, default_trials: str) -> None:
    sp.add_argument("--trials", type=_positive_int("--trials", 1, 10**9), default=None,
                    help=f"runs per grid cell (default: {default_trials})")
    sp.add_argument("--seed", type=_positive_int("--seed", 0, 2**63 - 1), default=None, help="base seed")
    sp.add_argument("--out", default=None, help="output directory (default: runs/NAME)")
    sp.add_argument("--chunk", type=_positive_int("--chunk", 1, 10**7), default=None,
                    help="runs per unit of work and per chunk file (default: the file's; from "
                         f"{names.LARGE_TRIALS:,} trials on a tenth of them, {names.LARGE_CHUNK:,} to "
                         f"{names.MAX_AUTO_CHUNK:,})")
    sp.add_argument("--no-runs", dest="runs", action="store_false",
                    help="do not write runs.parquet, the joined per-run table (about 50 bytes per run on disk): for "
                         "large sweeps, e.g. --trials 1000000.  The summary and the table are the same (streamed "
                         "from the chunks, which keep every run's row, verified and resumable); a later run "
                         "without --no-runs resumes all chunks and writes runs.parquet")
    sp.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="override one base field, e.g. --set steps=5000 --set schedule.eta_w_rel=0.25")
    sp.add_argument("--format", choices=names.FORMATS, default="markdown", help="table format on stdout")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--wait", type=_seconds, nargs="?", const=math.inf, default=0.0, metavar="SECONDS",
                    help="if another sweep is writing the output directory, wait for it (for SECONDS, or as long as "
                         "it takes) instead of exiting")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int("--workers", 1, 1024), default=None,
                       help="run on a local Dask cluster with N worker processes")
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT", help="run on this Dask cluster")


def _overrides(args: argparse.Namespace) -> dict:
    from sims.studies import config, sweep

    out = {}
    for item in args.sets:
        if "=" not in item:
            raise CLIError(f"--set takes FIELD=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = sweep.parse_value(value.strip(), name=f"--set {config.show(key.strip())}")
    for key in ("trials", "seed", "chunk"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def _run(name: str, spec: SweepSpec, args: argparse.Namespace, table: str | None) -> int:
    from sims.studies import sweep, tables

    out = Path(args.out) if args.out else Path("runs") / spec.name
    outcome = sweep.run_sweep(spec, out, workers=args.workers, scheduler=args.scheduler, quiet=args.quiet,
                              wait=args.wait, runs=args.runs)
    if table is not None:
        text, figs = tables.make(table, spec, outcome, args.format)
    else:
        text, figs = tables.render(outcome.summary.round(6), args.format), []
    print(text)
    files = ["summary.csv", "summary.parquet"] + (["runs.parquet"] if outcome.wrote_runs else []) \
        + ["metadata.json"] + (["table.csv"] if table else []) + [f.name for f in figs]
    print(f"{name}: {len(spec.cells)} cells x {spec.trials} runs in {outcome.seconds:.1f} s "
          f"({outcome.resumed_chunks} chunks resumed); wrote {out}/: {', '.join(files)}", file=sys.stderr)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """Run one of the tables (a packaged sweep), print it and write its directory and figures.  A child process
    compiles the table's engines meanwhile (:mod:`sims.runs.warmup`: on a cold numba cache, beside this process's
    compiles; it changes no result)."""
    from sims.runs import warmup
    from sims.studies import tables

    warmup.start_for_table(args.name, args.trials or tables.config(args.name)["sweep"]["trials"])
    try:
        spec = tables.spec(args.name, **_overrides(args))
        return _run(args.name, spec, args, args.name)
    finally:
        warmup.stop()


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run any sweep file."""
    from sims.studies import sweep

    spec = sweep.build_spec(sweep.load_toml(args.config), overrides=_overrides(args))
    return _run(spec.name, spec, args, None)


def cmd_summarize(args: argparse.Namespace) -> int:
    """Print the summary of a finished sweep directory again."""
    from sims.studies import sweep, tables

    summary = sweep.load_summary(args.dir)
    print(tables.render(summary.round(6), args.format))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print (or write to ``--output``) the JSON Schema of a sweep file, or the configuration reference in MyST
    Markdown (``--format markdown``), both generated from :mod:`sims.studies.config`."""
    from sims.studies import config, store

    if args.format == "markdown":
        text = config.reference_markdown()
    else:
        text = json.dumps(config.json_schema(), indent=2)
    if args.output is None:
        print(text)
        return 0
    out = Path(args.output)
    if out.is_dir():
        raise CLIError(f"--output {str(out)!r} is a directory; give a file name")
    try:
        store.atomic_write(out, (text + "\n").encode())  # all or nothing: no partial file on error
    except store.StoreError as exc:
        raise CLIError(f"--output: {exc}") from None
    print(out)  # as plot does: the file written
    return 0


PLOTS = ("landscape", "basins", "trajectories", "success-rates", "two-phase", "expansions", "all")


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw figures with :mod:`sims.plots` and write each as PNG and PDF (:func:`sims.plots.save_figure`) into
    ``--out`` (default ``figures/``); print the paths written."""
    import tempfile

    from sims import plots
    from sims.methods import expansion
    from sims.studies import sweep, tables

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out {str(out)!r} cannot be created: {exc.strerror}") from None
    names = PLOTS[:-1] if args.name == "all" else (args.name,)
    written = []
    for name in names:
        if name == "landscape":
            written += plots.save_figure(plots.landscape(), out / "landscape", close=True)
        elif name == "basins" and args.algorithm == "flow":  # 400 x 400 starts and the boundary: seconds
            ax = plots.basins(n=400, algorithm="flow", boundary=True, n_paths=0)
            written += plots.save_figure(ax.figure, out / "basins_flow", close=True)
        elif name == "basins":
            written += plots.save_figure(plots.basins().figure, out / "basins", close=True)
        elif name == "trajectories":
            written += plots.save_figure(plots.trajectories(), out / "trajectories", close=True)
        elif name == "expansions":
            with tempfile.TemporaryDirectory() as tmp:
                spec = tables.spec("expand", trials=min(args.trials, 100))
                outcome = sweep.run_sweep(spec, Path(tmp) / "expand", quiet=True)
                rows = tables.expand_rows(outcome.summary, outcome.runs, spec)
            written += plots.save_figure(plots.expansions(rows), out / "expansions", close=True)
            written += plots.save_figure(plots.end_to_end(expansion.deviation_study()).figure, out / "end_to_end",
                                         close=True)
        else:
            table = "liu2019" if name == "success-rates" else "two-phase"
            sweep_dir = Path(args.sweep) if args.sweep else None
            with tempfile.TemporaryDirectory() as tmp:
                spec = tables.spec(table, trials=args.trials)
                if sweep_dir is None or not (sweep_dir / "summary.csv").exists():
                    sweep_dir = Path(tmp) / table
                    outcome = sweep.run_sweep(spec, sweep_dir, quiet=True)
                else:
                    import pandas as pd

                    # the per-run table is not read here (and a --no-runs sweep has no runs.parquet)
                    outcome = sweep.SweepOutcome(sweep_dir, None, pd.read_csv(sweep_dir / "summary.csv"), 0, 0, 0.0)
                if name == "success-rates":
                    ax = plots.success_rates(outcome.summary,
                                             title="Liu et al. 2019: ResNet (w0 = 0) vs CNN (random w0)")
                    written += plots.save_figure(ax.figure, out / "success_rates", close=True)
                else:
                    written += tables.two_phase_figure(spec, out)
    print("\n".join(str(w) for w in written))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shallowres", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    tb = sub.add_parser("table", help="reproduce a table: " + ", ".join(names.TABLES))
    tb.add_argument("name", choices=names.TABLES)
    _sweep_options(tb, default_trials="the table's")
    tb.set_defaults(func=cmd_table)
    sw = sub.add_parser("sweep", help="run a sweep file (TOML)")
    sw.add_argument("config", help="path of the sweep file")
    _sweep_options(sw, default_trials="the file's")
    sw.set_defaults(func=cmd_sweep)
    sm = sub.add_parser("summarize", help="print a finished sweep's summary again")
    sm.add_argument("dir")
    sm.add_argument("--format", choices=names.FORMATS, default="markdown")
    sm.set_defaults(func=cmd_summarize)
    pl = sub.add_parser("plot", help="write a figure (PNG + PDF): " + ", ".join(PLOTS))
    pl.add_argument("name", choices=PLOTS)
    pl.add_argument("--out", default="figures", help="directory for the files (default figures/)")
    pl.add_argument("--sweep", default=None, help="finished table sweep to plot (default: run one at --trials)")
    pl.add_argument("--trials", type=_positive_int("--trials", 1, 10**9), default=200,
                    help="trials per cell when a table has to be run for the figure (default 200)")
    pl.add_argument("--algorithm", choices=("gd", "flow"), default="gd",
                    help="basins: of GD (basins.png), or of gradient flow from 400 x 400 starts with the boundary "
                    "(basins_flow.png); default gd")
    pl.set_defaults(func=cmd_plot)
    sc = sub.add_parser("schema", help="print the JSON Schema of a sweep file (for editors), or its reference")
    sc.add_argument("--format", choices=("json", "markdown"), default="json",
                    help="json: the JSON Schema (default); markdown: the configuration reference (MyST Markdown)")
    sc.add_argument("--output", default=None, metavar="FILE", help="write to FILE instead of standard output")
    sc.set_defaults(func=cmd_schema)
    ls = sub.add_parser("landscape", help="fixed points of the population landscape for one teacher")
    ls.add_argument("--k", type=_positive_int("--k"), default=4, help="number of patches (default 4)")
    ls.add_argument("--p", type=_positive_int("--p"), default=8, help="patch dimension (default 8)")
    ls.add_argument("--a-star", default="", help="teacher second layer, comma-separated (default: random, 1.a* = 0)")
    ls.add_argument("--seed", type=_positive_int("--seed", 0, 2**63 - 1), default=0)
    ls.set_defaults(func=cmd_landscape)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argument errors exit here, before the import below
    import matplotlib

    # The command line only writes figures to files: Agg, whatever backend the environment would pick.
    matplotlib.use("Agg")
    try:
        return args.func(args)
    except (CLIError, names.SweepError) as exc:
        print(f"shallowres: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shallowres: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
