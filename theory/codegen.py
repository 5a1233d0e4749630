"""Generate :mod:`theory.closed_forms`, the numba-compatible scalar kernels, from :mod:`theory.derivation`.

Run ``python -m theory.codegen`` to regenerate (``--check`` only compares).  The output is plain Python
using :mod:`math` only, so numba can compile it (``sims`` does) and plain NumPy code can call it (``theory``
does).  The generator is pinned to one sympy version because printing details differ between releases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from theory import derivation, expansion, gaussian

#: The sympy release the committed module was generated with (pinned in pyproject.toml too).
SYMPY_VERSION = "1.14.0"
REGENERATE = "python -m theory.codegen"
TARGET = Path(__file__).with_name("closed_forms.py")

_ARGS = ", ".join(str(a) for a in derivation.ARGUMENTS)


def _print(expr: sp.Expr) -> str:
    if expr == 0:
        return "0.0"
    return PythonCodePrinter({"fully_qualified_modules": True, "standard": "python3"}).doprint(
        sp.nsimplify(expr) if expr.is_number else expr
    )


def _function(name: str, doc: str, exprs: tuple[sp.Expr, ...] | sp.Expr, args: str = _ARGS) -> str:
    body = (
        _print(exprs)
        if isinstance(exprs, sp.Expr)
        else "(\n" + "".join(f"        {_print(e)},\n" for e in exprs) + "    )"
    )
    if isinstance(exprs, sp.Expr) and exprs.is_number:
        body = f"float({body})"
    return f'def {name}({args}):\n    """{doc}"""\n    return {body}\n'


def source() -> str:
    """The full text of the generated module."""
    names = [str(v) for v in derivation.VARIABLES]
    pairs = ", ".join(f"{names[i]}{names[j]}" for i, j in derivation.PAIRS)
    header = (
        f'"""Closed-form population loss and its partials in the invariants. GENERATED, do not edit.\n\n'
        f"Regenerate with ``{REGENERATE}`` (sympy {SYMPY_VERSION}); a test fails if this file differs.\n"
        f"Arguments: {_ARGS}; ``c, s`` are cos and sin of ``phi`` computed robustly by the caller.\n"
        f"``rho`` is 1 for weight-normalized models and ``||w||`` for the unnormalized CNN.\n"
        '"""\n\nimport math\n\n\n'
    )
    g = gaussian.arc_cosine_kernel().subs({sp.cos(gaussian.phi): derivation.c, sp.sin(gaussian.phi): derivation.s})
    functions = [
        _function("arc_cosine", "g(phi) = 2 pi E[sigma(u.z) sigma(u*.z)] (arc-cosine kernel).", g, "phi, c, s"),
        _function("loss", "Population loss L.", derivation.loss()),
        _function("gradient", f"First partials (L_{', L_'.join(names)}).", derivation.gradient()),
        _function(
            "hessian",
            f"Second partials, pairs ({pairs}); the cc entry is L_cc * s**2 (finite at phi in {{0, pi}}).",
            derivation.hessian(),
        ),
        _function(
            "end_to_end",
            "(c_perp, c_par): a balanced depth-N factorization of a row w (norm = ||w||) moves it by "
            "dw/dt = -(c_perp g_perp + c_par g_par), g = grad L split orthogonal to / along w (theory.expansion).",
            expansion.end_to_end_coefficients(),
            ", ".join(str(a) for a in expansion.ARGUMENTS),
        ),
    ]
    return header + "\n\n".join(functions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m theory.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed file")
    args = parser.parse_args(argv)
    if sp.__version__ != SYMPY_VERSION:
        print(f"theory.codegen needs sympy=={SYMPY_VERSION}, found {sp.__version__}", file=sys.stderr)
        return 2
    text = source()
    if args.check:
        same = TARGET.read_text() == text
        print("closed_forms.py is up to date" if same else "closed_forms.py differs: regenerate it")
        return 0 if same else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
