"""Bad input -> ValueError whose message names the field; fuzzing with hypothesis never gets anything else."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import theory

W_STAR = np.array([0.6, 0.8])
A_STAR = np.array([1.0, -0.5, 0.25])
W = np.array([0.3, -0.2])
A = np.array([0.1, 0.2, 0.3])

FUNCS = {
    "loss": theory.population_loss,
    "gradient": theory.population_gradient,
    "hessian": theory.population_hessian,
}


def _call(fn, **over):
    args = {"w": W, "a": A, "w_star": W_STAR, "a_star": A_STAR, "model": "resnet", "shortcut": None}
    args.update(over)
    return fn(args.pop("w"), args.pop("a"), **args)


# (overrides, regex the message must match: it starts with / names the offending field)
BAD = [
    ({"w": [], "w_star": []}, r"^w_star must have length >= 1"),  # p = 0
    ({"a": [], "a_star": []}, r"^a_star must have length >= 1"),  # k = 0
    ({"w": []}, r"^w must have length >= 1"),
    ({"a": []}, r"^a must have length >= 1"),
    ({"w": [np.nan, 0.0]}, r"^w must be finite"),
    ({"w": [np.inf, 0.0]}, r"^w must be finite"),
    ({"a": [0.0, -np.inf, 1.0]}, r"^a must be finite"),
    ({"a_star": [0.0, np.nan, 1.0]}, r"^a_star must be finite"),
    ({"w_star": [np.nan, 1.0]}, r"^w_star must be finite"),
    ({"shortcut": [1.0, np.inf]}, r"^shortcut must be finite"),
    ({"w_star": [1.0, 1.0]}, r"^w_star must have unit norm"),
    ({"w_star": [0.6, 0.8 + 1e-6]}, r"^w_star must have unit norm"),
    ({"w_star": [0.0, 0.0]}, r"^w_star must be a nonzero unit vector"),
    ({"a": [1.0, 2.0]}, r"^a has length 2 but a_star has length 3"),
    ({"a": [1.0, 2.0, 3.0, 4.0]}, r"^a has length 4 but a_star has length 3"),
    ({"w": [1.0, 2.0, 3.0]}, r"^w has length 3 but w_star has length 2"),
    ({"w": [0.0, 0.0], "model": "cnn"}, r"^w must be nonzero"),
    ({"w": [0.0, 0.0], "model": "cnn-unnormalized"}, r"^w must be nonzero"),
    ({"w": -np.full(2, 1 / math.sqrt(2)), "model": "resnet"}, r"^w \+ shortcut .* must be nonzero"),
    ({"w": [-0.6, -0.8], "shortcut": [3.0, 4.0]}, r"^w \+ shortcut .* must be nonzero"),
    ({"shortcut": [0.0, 0.0]}, r"^shortcut must be a nonzero vector"),
    ({"shortcut": [1.0, 0.0, 0.0]}, r"^shortcut has length 3 but w_star has length 2"),
    ({"model": "RESNET"}, r"^model must be one of"),
    ({"model": "mlp"}, r"^model must be one of"),
    ({"model": None}, r"^model must be one of"),
    ({"model": ["resnet"]}, r"^model must be one of"),
    ({"model": np.array(["resnet", "cnn"])}, r"^model must be one of"),
    ({"w": [[0.3, -0.2]]}, r"^w must be a 1-D array"),
    ({"a": np.ones((3, 1))}, r"^a must be a 1-D array"),
    ({"a_star": np.ones((1, 3))}, r"^a_star must be a 1-D array"),
    ({"w_star": [[0.6], [0.8]]}, r"^w_star must be a 1-D array"),
    ({"w": "0.3, -0.2"}, r"^w must be a 1-D array"),
    ({"a": "abc"}, r"^a must be a 1-D array of real numbers"),
    ({"a_star": ["1", "x", "2"]}, r"^a_star must be a 1-D array of real numbers"),
    ({"w": 0.5}, r"^w must be a 1-D array"),
    ({"w": None}, r"^w must be a 1-D array"),
    ({"w": [1j, 0.0]}, r"^w must be a 1-D array of real numbers"),
    ({"w": [10**400, 0]}, r"^w must be a 1-D array of real numbers"),
    ({"a": [1.0, [2.0], 3.0]}, r"^a must be a 1-D array of real numbers"),
    ({"a": [1.0, None, 3.0]}, r"^a must be finite"),
    ({"a": {"x": 1}}, r"^a must be a 1-D array"),
]


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize(("over", "pattern"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_raises_value_error_naming_field(name, over, pattern):
    with pytest.raises(ValueError, match=pattern):
        _call(FUNCS[name], **over)


@pytest.mark.parametrize("name", list(FUNCS))
def test_overflow_is_a_clean_value_error(name):
    with pytest.raises(ValueError, match="overflows float64"):  # S = 1.a exceeds the float64 range
        _call(FUNCS[name], a=[1e308, 1e308, 1e308])
    with pytest.raises(ValueError, match="overflows float64"):  # was a bare OverflowError (Python float power)
        _call(FUNCS[name], w=[1e200, 1e200], model="cnn-unnormalized")


def test_normalize_true_accepts_non_unit_teacher():
    w_star = np.array([3.0, 4.0])
    for name, fn in FUNCS.items():
        with pytest.raises(ValueError, match="w_star must have unit norm"):
            _call(fn, w_star=w_star)
        got = _call(fn, w_star=w_star, normalize=True)
        ref = _call(fn, w_star=w_star / 5.0)
        if name == "gradient":
            for x, y in zip(got, ref, strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-15, atol=1e-16)
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-15, atol=1e-16)
    assert theory.angle(W, w_star=w_star, normalize=True) == theory.angle(W, w_star=w_star / 5.0)
    # A zero teacher cannot be normalized.
    with pytest.raises(ValueError, match="w_star must be a nonzero"):
        _call(FUNCS["loss"], w_star=[0.0, 0.0], normalize=True)


def test_unit_norm_tolerance():
    """||w*|| = 1 is checked to 1e-8: rounding-level deviations pass, 1e-6 does not (covered above)."""
    w_star = W_STAR * (1 + 1e-12)
    assert np.isfinite(_call(FUNCS["loss"], w_star=w_star))


def test_fixed_point_functions_validate():
    for fn in (theory.spurious_point, theory.saddle_angle, theory.spurious_exists):
        with pytest.raises(ValueError, match="^a_star must have length >= 1"):
            fn([])
        with pytest.raises(ValueError, match="^a_star must be finite"):
            fn([1.0, np.nan])
        if fn is not theory.spurious_exists:  # it takes a batch (R, k) too
            with pytest.raises(ValueError, match="^a_star must be a 1-D array"):
                fn([[1.0, -1.0]])
    np.testing.assert_array_equal(theory.spurious_exists([[1.0, -1.0], [1.0, 1.0]]), [True, False])
    with pytest.raises(ValueError, match="^phi must lie in"):
        theory.optimal_a(4.0, [1.0, -1.0])
    with pytest.raises(ValueError, match="^phi must be 0 or pi when p = 1"):
        theory.filter_at_angle(1.0, [1.0], model="cnn")
    with pytest.raises(ValueError, match="^model must be one of"):
        theory.global_minimum([1.0, 0.0], [1.0], model="cnn2")


# --------------------------------------------------------------------------- hypothesis fuzzing

FIELD = re.compile(r"\b(w|a|w_star|a_star|model|shortcut|phi)\b")

scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e300, max_value=1e300),
    st.sampled_from([0.0, -0.0, 1e300, -1e300, 1e-300, 5e-324, 1e154, 1e200, np.nan, np.inf, -np.inf]),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.complex_numbers(max_magnitude=10),
)


def garbage(size: int):
    """Anything: lists of mixed types, wrong lengths, 2-D, scalars, strings, arrays with NaN/inf/huge values."""
    return st.one_of(
        st.lists(scalars, max_size=6),
        st.lists(st.floats(), min_size=size, max_size=size),  # right length, any float
        st.lists(st.lists(st.floats(-5, 5), min_size=1, max_size=3), max_size=3),  # nested / ragged
        scalars,
        st.builds(lambda n: np.zeros((n, 2)), st.integers(0, 3)),
        st.just({"x": 1.0}),
    )


def good(size: int, magnitude: float = 1e6):
    return st.lists(st.floats(-magnitude, magnitude), min_size=size, max_size=size).map(np.array)


SCALES = [1.0, 1.0, 1e-300, 1e-150, 1e100, 1e160, 1e200, 1e300]


def good_or_huge(size: int):
    """Finite vectors of the right length at magnitudes from 1e-300 to 1e300 (an explicit scale draw, because
    bounded float strategies rarely produce extreme magnitudes on their own)."""
    base = st.lists(st.floats(-10, 10), min_size=size, max_size=size).map(np.array)
    return st.tuples(base, st.sampled_from(SCALES)).map(lambda t: t[0] * t[1])


@st.composite
def unit(draw, size: int):
    x = draw(st.lists(st.floats(-10, 10), min_size=size, max_size=size))
    x = np.array(x)
    n = np.linalg.norm(x)
    return x / n if n > 1e-3 else np.eye(size)[0]


@st.composite
def arguments(draw):
    p = draw(st.integers(1, 5))
    k = draw(st.integers(1, 5))

    # Mostly plausible values (so that the numerical paths run, with huge and tiny magnitudes), some garbage.
    # The selector is an explicit draw: st.one_of with repeated strategies does not weight them.
    def pick(good_strategy, size):
        plausible = draw(st.sampled_from([True, True, True, True, True, False]))
        return draw(good_strategy if plausible else garbage(size))

    return {
        "w": pick(good_or_huge(p), p),
        "a": pick(good_or_huge(k), k),
        "w_star": pick(unit(p), p),
        "a_star": pick(good_or_huge(k), k),
        "model": draw(st.sampled_from([*theory.MODELS, *theory.MODELS, "", "CNN", None, 3, ("cnn",)])),
        "shortcut": draw(
            st.sampled_from([None, "unit", "garbage"]).flatmap(
                lambda kind: st.none() if kind is None else (unit(p) if kind == "unit" else garbage(p))
            )
        ),
    }


FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# Overflowing inputs must end in a clean ValueError without RuntimeWarnings on the way.
NO_WARNINGS = pytest.mark.filterwarnings("error::RuntimeWarning")


def _check_value_error(exc: ValueError) -> None:
    msg = str(exc)
    assert msg and FIELD.search(msg), f"ValueError without a field name: {msg!r}"


@NO_WARNINGS
@pytest.mark.parametrize("name", list(FUNCS))
@FUZZ
@given(args=arguments())
def test_fuzz_population_functions(name, args):
    args = dict(args)
    try:
        out = FUNCS[name](args.pop("w"), args.pop("a"), **args)
    except ValueError as exc:
        _check_value_error(exc)
        return
    p = np.asarray(args["w_star"]).size
    k = np.asarray(args["a_star"]).size
    if name == "loss":
        assert type(out) is float and math.isfinite(out) and out >= -1e-12 * max(1.0, abs(out))
    elif name == "gradient":
        gw, ga = out
        assert gw.dtype == np.float64 and ga.dtype == np.float64
        assert gw.shape == (p,) and ga.shape == (k,)
        assert np.all(np.isfinite(gw)) and np.all(np.isfinite(ga))
    else:
        assert out.dtype == np.float64 and out.shape == (p + k, p + k) and np.all(np.isfinite(out))


@NO_WARNINGS
@FUZZ
@given(a_star=st.one_of(good_or_huge(1), good_or_huge(4), garbage(3), st.lists(st.floats(), max_size=8)))
def test_fuzz_spurious_point(a_star):
    try:
        out = theory.spurious_point(a_star)
    except ValueError as exc:
        _check_value_error(exc)
        return
    k = np.asarray(a_star).size
    assert out is None or (out.dtype == np.float64 and out.shape == (k,) and np.all(np.isfinite(out)))
    if k == 1:
        assert out is None


@NO_WARNINGS
@FUZZ
@given(a_star=st.one_of(good_or_huge(2), good_or_huge(5), garbage(3), st.lists(st.floats(), max_size=8)))
def test_fuzz_saddle_angle(a_star):
    try:
        out = theory.saddle_angle(a_star)
    except ValueError as exc:
        _check_value_error(exc)
        return
    assert out is None or (type(out) is float and math.pi / 2 - 1e-12 <= out < math.pi)
    assert (out is None) == (theory.spurious_point(a_star) is None)
