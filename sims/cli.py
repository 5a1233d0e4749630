"""The ``shallowres`` command line."""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

import theory


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


def cmd_landscape(args: argparse.Namespace) -> int:
    """Print the fixed points of the landscape for a teacher ``a*`` (given, or drawn with ``1.a* = 0``)."""
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
        f"{a_star.sum() ** 2:.6g} < {(k + math.pi - 1) / math.pi * (a_star @ a_star):.6g} -> {spurious is not None}",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shallowres", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("landscape", help="fixed points of the population landscape for one teacher")
    ls.add_argument("--k", type=_positive_int("--k"), default=4, help="number of patches (default 4)")
    ls.add_argument("--p", type=_positive_int("--p"), default=8, help="patch dimension (default 8)")
    ls.add_argument("--a-star", default="", help="teacher second layer, comma-separated (default: random, 1.a* = 0)")
    ls.add_argument("--seed", type=_positive_int("--seed", 0, 2**63 - 1), default=0)
    ls.set_defaults(func=cmd_landscape)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"shallowres: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
