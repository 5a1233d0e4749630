"""theory/closed_forms.py is exactly what theory.codegen generates from the sympy derivation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from theory import closed_forms, codegen

ROOT = Path(__file__).resolve().parents[1]
PINNED = sp.__version__ == codegen.SYMPY_VERSION


@pytest.fixture(scope="module")
def generated() -> str:
    return codegen.source()


def _namespace(text: str) -> dict:
    ns: dict = {}
    exec(compile(text, "<generated closed_forms>", "exec"), ns)
    return ns


def _random_args(rng: np.random.Generator):
    phi = float(rng.uniform(0, math.pi))
    return (
        float(rng.uniform(0.1, 3.0)),  # rho
        phi,
        math.cos(phi),
        math.sin(phi),
        *(float(x) for x in rng.standard_normal(5) * 2),  # S, Q, P, Ss, Qs (values need not be consistent)
    )


@pytest.mark.skipif(not PINNED, reason=f"text comparison needs sympy=={codegen.SYMPY_VERSION}")
def test_committed_module_is_exactly_the_generated_text(generated):
    assert codegen.TARGET == ROOT / "theory" / "closed_forms.py"
    assert codegen.TARGET.read_text() == generated


def test_generated_functions_agree_numerically(generated):
    """Valid under any sympy release: the regenerated functions compute the same numbers."""
    ns = _namespace(generated)
    rng = np.random.default_rng(0)
    for _ in range(200):
        args = _random_args(rng)
        # Same expressions, possibly printed in another order by another sympy release: rounding of O(10)
        # terms, so 1e-12 relative (with a 1e-12 absolute floor for results that cancel to ~0).
        assert ns["loss"](*args) == pytest.approx(closed_forms.loss(*args), rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(ns["gradient"](*args), closed_forms.gradient(*args), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ns["hessian"](*args), closed_forms.hessian(*args), rtol=1e-12, atol=1e-12)
        phi, c, s = args[1:4]
        assert ns["arc_cosine"](phi, c, s) == pytest.approx(closed_forms.arc_cosine(phi, c, s), rel=1e-13, abs=1e-15)


def test_generated_module_uses_math_only():
    """numba compiles it (sims): only `import math`, scalar code, no numpy/sympy."""
    text = codegen.TARGET.read_text()
    imports = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("import ", "from "))]
    assert imports == ["import math"]
    assert "GENERATED" in text.splitlines()[0]


def test_check_cli_exit_code():
    proc = subprocess.run(
        [sys.executable, "-m", "theory.codegen", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if PINNED:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "up to date" in proc.stdout
    else:  # documented refusal to compare under another sympy release
        assert proc.returncode == 2
        assert codegen.SYMPY_VERSION in proc.stderr


@pytest.mark.skipif(not PINNED, reason=f"codegen.main needs sympy=={codegen.SYMPY_VERSION}")
def test_check_detects_a_stale_file(tmp_path, monkeypatch, generated):
    """--check must fail (exit 1) when the file differs, and regeneration must restore it."""
    stale = tmp_path / "closed_forms.py"
    stale.write_text(generated.replace("(1/4)", "(1/5)", 1))
    monkeypatch.setattr(codegen, "TARGET", stale)
    assert codegen.main(["--check"]) == 1
    assert codegen.main([]) == 0
    assert stale.read_text() == generated
    assert codegen.main(["--check"]) == 0
