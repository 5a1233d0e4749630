"""Input checks shared by the public functions: every bad input is a ValueError naming the field and range."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

MODELS: tuple[str, ...] = ("resnet", "cnn", "cnn-unnormalized")
#: Relative tolerance on ``||w_star|| = 1`` (the closed forms assume a unit teacher filter).
UNIT_NORM_RTOL = 1e-8


def as_vector(x: Any, name: str, *, length: int | None = None, length_of: str = "") -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array, or raise ValueError naming ``name``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be a 1-D array of real numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size < 1:
        raise ValueError(f"{name} must have length >= 1 (p >= 1 and k >= 1), got length 0")
    if length is not None and arr.size != length:
        raise ValueError(f"{name} has length {arr.size} but {length_of} has length {length}; they must match")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return arr


def norm(x: np.ndarray) -> float:
    """Euclidean norm that neither overflows nor underflows for entries near the float64 limits."""
    m = float(np.max(np.abs(x)))
    if m == 0.0:
        return 0.0
    return m * float(np.sqrt(np.dot(x / m, x / m)))


def check_model(model: Any) -> str:
    """The model's name: one of :data:`MODELS`, given as that string or as a :class:`theory.Model`."""
    from theory.model import Model  # theory.model builds on this module

    if isinstance(model, Model):
        return model.name
    # isinstance first: `in` would compare arrays elementwise (ambiguous truth value, or a 1-element array passing).
    if not isinstance(model, str) or model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(repr(m) for m in MODELS)}; got {model!r}")
    return model


def unit_teacher(w_star: Any, *, normalize: bool = False) -> np.ndarray:
    """Validate ``w_star``; it must have unit norm unless ``normalize=True`` rescales it."""
    w_star = as_vector(w_star, "w_star")
    nrm = norm(w_star)
    if nrm == 0.0:
        raise ValueError("w_star must be a nonzero unit vector (||w_star|| = 1); got the zero vector")
    if normalize:
        return w_star / nrm
    if abs(nrm - 1.0) > UNIT_NORM_RTOL:
        raise ValueError(
            f"w_star must have unit norm (||w_star|| = 1 within {UNIT_NORM_RTOL:g}); got {nrm:.17g}. "
            "Pass normalize=True to rescale it."
        )
    return w_star


def shortcut_vector(shortcut: Any, p: int) -> np.ndarray:
    """The unit shortcut direction ``v`` (default ``1_p / sqrt(p)``); must be nonzero, is normalized."""
    if shortcut is None:
        return np.full(p, 1.0 / math.sqrt(p))
    v = as_vector(shortcut, "shortcut", length=p, length_of="w_star")
    nrm = norm(v)
    if nrm == 0.0:
        raise ValueError("shortcut must be a nonzero vector (the shortcut direction v, ||v|| > 0)")
    return v / nrm


def overflow_error(what: str) -> ValueError:
    return ValueError(
        f"{what} overflows float64: the inputs (w, a, a_star) are too large in magnitude "
        "(keep entries below about 1e150)"
    )


def finite_result(value: Any, what: str) -> Any:
    """Refuse to return a non-finite number: it can only come from inputs too large for float64."""
    if not np.all(np.isfinite(value)):
        raise overflow_error(what)
    return value


@contextmanager
def float_guard(what: str) -> Iterator[None]:
    """Silence float64 over/underflow warnings and turn Python's OverflowError into the same ValueError.

    Results computed inside are checked by :func:`finite_result`, so nothing non-finite escapes silently.
    """
    with np.errstate(all="ignore"):
        try:
            yield
        except OverflowError:
            raise overflow_error(what) from None
