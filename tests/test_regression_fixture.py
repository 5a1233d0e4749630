"""Refactors change no result: every engine, model and schedule kind against the outputs pinned in
``tests/regression/fixture.npz`` (made by ``python tests/regression/cases.py`` before the engine refactor).

On the CPU and numba the fixture was made with, every array must be bit-identical.  On another CPU, LLVM may
vectorize sums differently, so there the integer and string fields (outcome, stop reason, steps, ...) must still be
identical and the floats agree to 1e-9 relative; the test says which comparison it made.
"""

from __future__ import annotations

import numpy as np
import pytest
from regression import cases as reg

FIXTURE = np.load(reg.FIXTURE)
CASES = reg.cases()
SAME_HOST = str(FIXTURE["__host__"]) == reg.host()


def test_the_fixture_covers_every_case_and_every_engine():
    stored = {key.split("::")[0] for key in FIXTURE.files if key != "__host__"}
    assert stored == set(CASES)
    heads = {name.split("/")[0] for name in CASES}
    assert {"gd", "sgd", "gd-fixed"} <= heads
    for engine in ("expansion", "fading", "laperm"):
        assert any(h.startswith(engine) for h in heads), engine
    assert {name.split("/")[1] for name in CASES} == set(reg.MODELS)
    assert {name.split("/")[2] for name in CASES if name.startswith("gd/")} == set(reg.SCHEDULES)


@pytest.mark.parametrize("name", list(CASES))
def test_results_equal_the_pinned_outputs(name):
    got = reg.arrays(CASES[name]())
    stored = {key.split("::", 1)[1]: FIXTURE[key] for key in FIXTURE.files if key.startswith(name + "::")}
    assert set(got) == set(stored), f"fields changed: {sorted(set(got) ^ set(stored))}"
    for field, want in stored.items():
        have = got[field]
        assert have.shape == want.shape and have.dtype.kind == want.dtype.kind, field
        if SAME_HOST or want.dtype.kind not in "fc":
            assert np.array_equal(have, want, equal_nan=want.dtype.kind in "fc"), f"{name}: {field} differs"
        else:
            np.testing.assert_allclose(have, want, rtol=1e-9, atol=1e-300, equal_nan=True, err_msg=field)
