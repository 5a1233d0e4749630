"""theory.Model: the model as a value, interchangeable with today's strings at every boundary."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import theory
from theory import CNN, CNN_UNNORMALIZED, RESNET, Model


def test_constants_and_names():
    assert (RESNET.normalized, RESNET.shortcut) == (True, True)
    assert (CNN.normalized, CNN.shortcut) == (True, False)
    assert (CNN_UNNORMALIZED.normalized, CNN_UNNORMALIZED.shortcut) == (False, False)
    assert tuple(m.name for m in (RESNET, CNN, CNN_UNNORMALIZED)) == theory.MODELS
    assert str(CNN) == "cnn"


@pytest.mark.parametrize("name", theory.MODELS)
def test_of_strings_and_models(name):
    m = Model.of(name)
    assert m.name == name
    assert Model.of(m) is m
    assert Model.of(name) is m  # the constants: no allocation at the boundary
    assert Model(m.normalized, m.shortcut) == m
    assert hash(Model(m.normalized, m.shortcut)) == hash(m)
    assert pickle.loads(pickle.dumps(m)) == m
    assert len({m, Model.of(name)}) == 1


@pytest.mark.parametrize("bad", ["RESNET", "mlp", None, ["resnet"], np.array(["resnet", "cnn"]), 3])
def test_of_refuses(bad):
    with pytest.raises(ValueError, match=r"^model must be one of 'resnet', 'cnn', 'cnn-unnormalized'; got"):
        Model.of(bad)


def test_fields_are_checked():
    with pytest.raises(ValueError, match="unnormalized ResNet"):
        Model(normalized=False, shortcut=True)
    with pytest.raises(ValueError, match="^model.normalized must be True or False"):
        Model(normalized=1, shortcut=False)
    with pytest.raises(ValueError, match="^model.shortcut must be True or False"):
        Model(normalized=True, shortcut="yes")
    with pytest.raises(AttributeError):
        RESNET.shortcut = False  # frozen


@pytest.mark.parametrize("name", theory.MODELS)
def test_theory_functions_take_the_value_or_the_string(name):
    rng = np.random.default_rng(3)
    w, a, a_star = rng.standard_normal(3), rng.standard_normal(4), rng.standard_normal(4)
    kw = {"w_star": np.eye(3)[0], "a_star": a_star}
    m = Model.of(name)
    assert theory.population_loss(w, a, model=m, **kw) == theory.population_loss(w, a, model=name, **kw)
    np.testing.assert_array_equal(theory.population_hessian(w, a, model=m, **kw),
                                  theory.population_hessian(w, a, model=name, **kw))
    np.testing.assert_array_equal(theory.filter_at_angle(1.0, np.eye(3)[0], model=m),
                                  theory.filter_at_angle(1.0, np.eye(3)[0], model=name))
    assert theory.Landscape(np.eye(3)[0], a_star, model=m).model == name
    assert theory.validation.check_model(m) == name
