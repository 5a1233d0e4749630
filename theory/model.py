"""The model as a value: which student architecture a computation is about.

The family has two switches, and every formula branches on them only:

- ``normalized``: the convolution uses the weight-normalized filter ``w~ / ||w~||`` (output scale ``rho = 1``);
  otherwise the raw filter (``rho = ||w||``).
- ``shortcut``: an average-pooling shortcut is present, so the effective filter is ``w~ = w + v`` (``v`` the unit
  shortcut direction); otherwise ``w~ = w``.

Today's strings name the three combinations that exist: ``"resnet"`` (normalized, shortcut), ``"cnn"``
(normalized, no shortcut) and ``"cnn-unnormalized"``.  An unnormalized ResNet has no name and nothing simulates it,
so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from theory.validation import MODELS, check_model

_FLAGS: dict[str, tuple[bool, bool]] = {
    "resnet": (True, True),
    "cnn": (True, False),
    "cnn-unnormalized": (False, False),
}
_NAMES: dict[tuple[bool, bool], str] = {v: k for k, v in _FLAGS.items()}


@dataclass(frozen=True)
class Model:
    """A student architecture: ``normalized`` (filter ``w~ / ||w~||``) and ``shortcut`` (effective filter ``w + v``).

    Hashable and cheap; build one with :meth:`of` from a string or another Model.  The shortcut here is a fixed
    structural switch: a shortcut *weight* that changes over training (the fading shortcut of
    :mod:`sims.methods.distill`) is a schedule of that engine, not a field of the model.  The three models that
    exist are :data:`theory.RESNET`, :data:`theory.CNN` and :data:`theory.CNN_UNNORMALIZED`.

    Parameters
    ----------
    normalized : bool
        Whether the convolution uses the weight-normalized filter (output scale ``rho = 1``) or the raw one
        (``rho = ||w||``).
    shortcut : bool
        Whether an average-pooling shortcut is present (effective filter ``w + v``).

    Raises
    ------
    ValueError
        If a field is not a bool, or for the unnormalized ResNet, which is not part of the family.

    Examples
    --------
    >>> import theory
    >>> theory.Model(normalized=True, shortcut=False) == theory.CNN, theory.CNN.name
    (True, 'cnn')
    >>> theory.Model.of("resnet") is theory.RESNET
    True
    """

    normalized: bool
    shortcut: bool

    def __post_init__(self) -> None:
        for field in ("normalized", "shortcut"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"model.{field} must be True or False; got {getattr(self, field)!r}")
        if (self.normalized, self.shortcut) not in _NAMES:
            raise ValueError(
                "model: an unnormalized ResNet (normalized=False, shortcut=True) is not part of the family; "
                f"accepted: {', '.join(repr(m) for m in MODELS)}"
            )

    @property
    def name(self) -> str:
        """Today's string for this model: one of :data:`theory.MODELS`."""
        return _NAMES[(self.normalized, self.shortcut)]

    @classmethod
    def of(cls, model: Any) -> Model:
        """``model`` as a Model: a Model is returned as is, a string must be one of :data:`theory.MODELS`.

        Anything else raises ValueError ``model must be one of 'resnet', 'cnn', 'cnn-unnormalized'; got ...``.
        """
        if isinstance(model, Model):
            return model
        return _BY_NAME[check_model(model)]

    def __str__(self) -> str:
        return self.name


RESNET = Model(normalized=True, shortcut=True)
CNN = Model(normalized=True, shortcut=False)
CNN_UNNORMALIZED = Model(normalized=False, shortcut=False)
_BY_NAME: dict[str, Model] = {m.name: m for m in (RESNET, CNN, CNN_UNNORMALIZED)}
