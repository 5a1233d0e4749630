"""Generate :mod:`theory.closed_forms`, the numba-compatible scalar kernels, from :mod:`theory.derivation`.

Run ``python -m theory.codegen`` to regenerate (``--check`` only compares).  The output is plain Python
using :mod:`math` only, so numba can compile it (``sims`` does) and plain NumPy code can call it (``theory``
does).  The generator is pinned to one sympy version because printing details differ between releases.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from theory import derivation, expansion, gaussian, order_parameters

#: The sympy release the committed module was generated with (pinned in pyproject.toml too).
SYMPY_VERSION = "1.14.0"
REGENERATE = "python -m theory.codegen"
TARGET = Path(__file__).with_name("closed_forms.py")

_ARGS = ", ".join(str(a) for a in derivation.ARGUMENTS)

#: The docstring of the generated ``optimal_alignment``, exported as :func:`theory.optimal_alignment` (numpydoc, with
#: a doctested example; the other generated functions are internal and keep one line).
OPTIMAL_ALIGNMENT_DOC = """The alignment ``a(phi).a*`` of the loss-optimal second layer, from ``g = g(phi)``.

``a(phi) = M^{-1} N(phi) a*`` minimizes the loss at fixed angle (:func:`theory.optimal_a`); its alignment
with the teacher is ``S*^2 / (k + pi - 1) + (g - 1) (Q* - S*^2 / (k + pi - 1)) / (pi - 1)``, so it needs only
the sums ``S* = 1.a*`` and ``Q* = ||a*||^2``.  Its sign decides the basin (positive: GD shrinks ``phi``), and it
vanishes at the saddle angle.  Generated scalar code, numba-callable (the engines compile it); plain
arithmetic, so NumPy arrays broadcast.

Parameters
----------
g : float or numpy.ndarray
    The arc-cosine kernel ``g(phi) = sin(phi) + (pi - phi) cos(phi)`` (:func:`theory.arc_cosine`).
k : int
    Number of patches.
Ss, Qs : float or numpy.ndarray
    The teacher's ``1.a*`` and ``||a*||^2``.

Returns
-------
float or numpy.ndarray
    ``a(phi).a*``.

Examples
--------
>>> import numpy as np, theory
>>> a_star = np.array([1.0, -1.0, 0.5, 0.2])
>>> S, Q = a_star.sum(), a_star @ a_star
>>> g = np.array([theory.arc_cosine(0.0), theory.arc_cosine(np.pi)])
>>> np.round(theory.optimal_alignment(g, 4, S, Q), 6)      # ||a*||^2 at phi = 0, negative at pi
array([ 2.29    , -0.952259])
"""


def _print(expr: sp.Expr) -> str:
    if expr == 0:
        return "0.0"
    return PythonCodePrinter({"fully_qualified_modules": True, "standard": "python3"}).doprint(
        sp.nsimplify(expr) if expr.is_number else expr
    )


def _print_arranged(expr: sp.Expr) -> str:
    """Print an unevaluated expression in its own operation order (see :func:`theory.derivation.arranged`)."""
    text = PythonCodePrinter({"fully_qualified_modules": True, "standard": "python3", "order": "none"}).doprint(expr)
    return re.sub(r"/\(\(([^()]*)\)\)", r"/(\1)", text)  # a denominator product comes out doubly parenthesized


def _function(
    name: str, doc: str, exprs: tuple[sp.Expr, ...] | sp.Expr, args: str = _ARGS, printer=_print
) -> str:
    body = (
        printer(exprs)
        if isinstance(exprs, sp.Expr)
        else "(\n" + "".join(f"        {printer(e)},\n" for e in exprs) + "    )"
    )
    if isinstance(exprs, sp.Expr) and exprs.is_number:
        body = f"float({body})"
    if "\n" in doc:  # a numpydoc docstring: its lines indented into the function, the quotes on their own line
        doc = "\n".join(f"    {line}" if line else "" for line in doc.strip().split("\n")).lstrip() + "\n    "
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
        "The second-layer functions (``m_eigenvalues`` on) are printed in the operation order of\n"
        "``theory.derivation.arranged``, proven equal to their derivation there.\n"
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
    arranged = derivation.arranged()
    second_layer = [
        ("m_eigenvalues", "k", "(k + pi - 1, pi - 1): eigenvalues of M = 1 1^T + (pi - 1) I along 1 and orthogonal."),
        ("a_hessian_eigenvalues", "k", "(lambda_1, lambda_perp) = eigenvalues of the a-Hessian M / (2 pi) (rho = 1)."),
        ("loss_ref", "Ss, Qs", "L_ref = E[f*^2] / 2, the loss of the zero network, from 1.a* and ||a*||^2."),
        ("optimal_alignment", "g, k, Ss, Qs", OPTIMAL_ALIGNMENT_DOC),
        ("saddle_kernel_value", "k, Ss, Qs", "g(phi_s): the kernel value where a(phi).a* = 0 (the saddle angle's)."),
        ("spurious_margin", "k, Ss, Qs", "(k + pi - 1) Qs - pi Ss^2: > 0 iff the spurious point exists (unscaled)."),
    ]
    functions += [_function(name, doc, arranged[name], args, _print_arranged) for name, args, doc in second_layer]
    dev_args = ", ".join(str(a) for a in order_parameters.DEVIATION_ARGUMENTS)
    functions += [
        _function("deviation_loss", "Population loss L in the deviations of b = rho a from a* "
                  "(theory.order_parameters); omc = 1 - cos(phi).", order_parameters.deviation_loss(), dev_args),
        _function("deviation_gradient", "(L_rho, L_c, L_S, L_Q, L_Pa = 2 L_Q + L_P) in the deviations "
                  "(theory.order_parameters).", order_parameters.deviation_gradient(), dev_args),
        _function("gram_deviations", "(Ds, Dp, Dq) = (1.d, d.a*, ||d||^2) of d = x a0 + y 1 + z a*, from the Gram "
                  "matrix of (a0, 1, a*) (theory.order_parameters).", order_parameters.gram_deviations(),
                  ", ".join(str(a) for a in order_parameters.GRAM_ARGUMENTS)),
        _function("scaled_deviations", "(Ds, Dp, Dq) of b = rho a from those of a (theory.order_parameters).",
                  order_parameters.scaled_deviations(),
                  ", ".join(str(a) for a in order_parameters.SCALE_ARGUMENTS)),
        _function("flow_field", "d(u, r1, r2, x, y, z)/dt of gradient flow with per-layer rates (eta_w, eta_a) and a "
                  "shortcut weight moving at rate dlam, inv_n = 1/||w~||; L_rho = 0 for the weight-normalized models "
                  "(theory.order_parameters).", order_parameters.flow_field(),
                  ", ".join(str(a) for a in order_parameters.FLOW_ARGUMENTS)),
    ]
    phi_g, g_max = derivation.g_max()
    constants = (
        "#: max over phi in [0, pi] of (pi - phi) sin(phi), attained at PHI_G_MAX (tan(phi) = pi - phi).\n"
        f"G_MAX = {float(g_max)!r}\n"
        f"PHI_G_MAX = {float(phi_g)!r}\n"
    )
    return header.removesuffix("\n") + constants + "\n\n" + "\n\n".join(functions)


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
