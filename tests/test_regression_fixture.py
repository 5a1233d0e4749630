"""Refactors change no result: every engine, model and schedule kind against pinned outputs.

``fixture.npz`` pins today's outputs: on the CPU and numba the fixture was made with, every array must be
bit-identical (on another CPU LLVM may vectorize sums differently, so there the integer and string fields must be
identical and the floats agree to 1e-9 relative; the test says which comparison it made).

``fixture_v1.npz`` holds the outputs of the five hand-written loops that the one run driver
(:mod:`sims.engines.driver`) replaced.  Against it:

- population GD, SGD and fixed-sample GD are bit-identical in every field;
- the expansion, fading-shortcut and LaPerm engines give the same outcome for every run.  Their floats differ at
  rounding level, because the old loops were bodies of numba ``prange`` loops, which numba's parfor lowering
  compiles with different floating-point contractions: the same old loops compiled serially equal the new
  engines bit for bit (checked when the refactor was made).  The fading shortcut also takes its angle with
  the population GD engine's arctangent now (within 1 ulp of libm's).  LaPerm's ``sync_fixed`` stop tests exact
  equality of successive synchronizations, so with one layer training freely the rounding can move that stop to
  another synchronization (``stop_reason``, ``steps`` and ``extras.syncs`` of those runs change; the outcome not).
"""

from __future__ import annotations

import numpy as np
import pytest
from regression import cases as reg

FIXTURE = np.load(reg.FIXTURE)
FIXTURE_V1 = np.load(reg.FIXTURE_V1)
CASES = reg.cases()
SAME_HOST = str(FIXTURE["__host__"]) == reg.host()
UNCHANGED_BY_REFACTOR = ("gd/", "sgd/", "gd-fixed/")


def _stored(fixture, name: str) -> dict[str, np.ndarray]:
    return {key.split("::", 1)[1]: fixture[key] for key in fixture.files if key.startswith(name + "::")}


def test_the_fixture_covers_every_case_and_every_engine():
    for fixture in (FIXTURE, FIXTURE_V1):
        assert {key.split("::")[0] for key in fixture.files if key != "__host__"} == set(CASES)
    heads = {name.split("/")[0] for name in CASES}
    assert {"gd", "sgd", "gd-fixed"} <= heads
    for engine in ("expansion", "fading", "laperm"):
        assert any(h.startswith(engine) for h in heads), engine
    assert {name.split("/")[1] for name in CASES} == set(reg.MODELS)
    assert {name.split("/")[2] for name in CASES if name.startswith("gd/")} == set(reg.SCHEDULES)


#: Result fields added after the fixture was pinned: new information, not a change of the pinned results
#: (``basin``: where gradient flow goes from each run's end, issue 16; tested in tests/test_basin.py).
ADDED = {"basin"}


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, np.ndarray]]:
    return {name: reg.arrays(call()) for name, call in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_results_equal_the_pinned_outputs(name, results):
    got = results[name]
    stored = _stored(FIXTURE, name)
    assert set(got) - ADDED == set(stored), f"fields changed: {sorted((set(got) - ADDED) ^ set(stored))}"
    for field, want in stored.items():
        have = got[field]
        assert have.shape == want.shape and have.dtype.kind == want.dtype.kind, field
        if SAME_HOST or want.dtype.kind not in "fc":
            assert np.array_equal(have, want, equal_nan=want.dtype.kind in "fc"), f"{name}: {field} differs"
        else:
            np.testing.assert_allclose(have, want, rtol=1e-9, atol=1e-300, equal_nan=True, err_msg=field)


@pytest.mark.parametrize("name", list(CASES))
def test_the_engine_refactor_changed_no_outcome(name, results):
    got = results[name]
    old = _stored(FIXTURE_V1, name)
    assert set(got) - ADDED == set(old)
    np.testing.assert_array_equal(got["outcome"], old["outcome"])
    if not name.startswith("laperm"):
        np.testing.assert_array_equal(got["stop_reason"], old["stop_reason"])
    if name.startswith(UNCHANGED_BY_REFACTOR) and (SAME_HOST or str(FIXTURE_V1["__host__"]) == reg.host()):
        for field, want in old.items():
            assert np.array_equal(got[field], want, equal_nan=want.dtype.kind in "fc"), f"{name}: {field} differs"
