"""Bad input to the simulation engine: every one is a ValueError whose message names the offending field.

The checks run before any simulation, so each case costs microseconds (no numba work is done)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sims
import theory
from sims import Init, Schedule, Segment, Teacher

K, P = 4, 3
LIMIT = theory.max_stable_eta_a(K)  # 4 pi / (k + pi - 1) = 2.046 for k = 4


def _base(**overrides):
    kw = dict(model="resnet", k=K, p=P, runs=3, steps=20, schedule=Schedule.constant(0.1, 0.1), seed=0)
    kw.update(overrides)
    return kw


# ---- schedules: negative or non-finite step sizes and noise levels ----------------------------------------------
SCHEDULE_CASES = [
    (lambda: Schedule.constant(-1.0, 0.1), r"^eta_w must be a finite number >= 0"),
    (lambda: Schedule.constant(0.1, -1e-9), r"^eta_a must be a finite number >= 0"),
    (lambda: Schedule.constant(math.nan, 0.1), r"^eta_w must be a finite number >= 0"),
    (lambda: Schedule.constant(0.1, math.inf), r"^eta_a must be a finite number >= 0"),
    (lambda: Schedule.constant("fast", 0.1), r"^eta_w must be a finite number"),
    (lambda: Schedule.two_stage(10, -0.1, 0.1, 0.1, 0.1), r"^eta_w1 must"),
    (lambda: Schedule.two_stage(10, 0.1, math.nan, 0.1, 0.1), r"^eta_a1 must"),
    (lambda: Schedule.two_stage(10, 0.1, 0.1, math.inf, 0.1), r"^eta_w2 must"),
    (lambda: Schedule.two_stage(10, 0.1, 0.1, 0.1, -2.0), r"^eta_a2 must"),
    (lambda: Schedule.two_stage(-1, 0.1, 0.1, 0.1, 0.1), r"segments\[0\]\.steps must be an integer >= 0"),
    (lambda: Schedule.two_stage(2.5, 0.1, 0.1, 0.1, 0.1), r"segments\[0\]\.steps must be an integer >= 0"),
    (lambda: Schedule.layerwise(10, -0.1, 0.1, 0.1), r"^eta_a1 must"),
    (lambda: Schedule.layerwise(10, 0.1, math.inf, 0.1), r"^eta_w2 must"),
    (lambda: Schedule.piecewise([(10, 0.1, 0.1), (None, -0.1, 0.1)]), r"segments\[1\]\.eta_w must"),
    (lambda: Schedule.piecewise([(10, 0.1, math.nan), (None, 0.1, 0.1)]), r"segments\[0\]\.eta_a must"),
    (lambda: Schedule.piecewise([(None, 0.1, 0.1), (None, 0.1, 0.1)]), r"segments\[0\]\.steps.*only the last"),
    (lambda: Schedule.piecewise([]), r"schedule\.segments must hold at least one segment"),
    (lambda: Schedule.piecewise([Segment(None, 0.1, 0.1, noise_w=-1.0)]), r"segments\[0\]\.noise_w must"),
    (lambda: Schedule.piecewise([Segment(None, 0.1, 0.1, noise_a=math.inf)]), r"segments\[0\]\.noise_a must"),
    (lambda: Schedule.perturbed(0.1, 0.1, noise=-0.1), r"^noise must be a finite number >= 0"),
    (lambda: Schedule.perturbed(0.1, 0.1, noise=math.nan), r"^noise must be a finite number >= 0"),
    (lambda: Schedule.perturbed(0.1, 0.1, noise=0.1, noise_a=-1.0), r"^noise_a must"),
    (lambda: Schedule.perturbed(-0.1, 0.1, noise=0.1), r"segments\[0\]\.eta_w must"),
    (lambda: Schedule.perturbed(0.1, 0.1, noise=0.1, half_life=0.0), r"^half_life must be > 0"),
    (lambda: Schedule.perturbed(0.1, 0.1, noise=0.1, half_life=math.nan), r"^half_life must be > 0"),
    (lambda: Schedule((Segment(None, 0.1, 0.1),), noise_decay=0.0), r"schedule\.noise_decay must lie in \(0, 1\]"),
    (lambda: Schedule((Segment(None, 0.1, 0.1),), noise_decay=1.5), r"schedule\.noise_decay must lie in \(0, 1\]"),
    (lambda: Schedule.prescribed_warmup(-1.0, 0.1), r"^eta_w must"),
    (lambda: Schedule.prescribed_warmup(1.0, math.inf), r"^eta_a must"),
    (lambda: Schedule.prescribed_warmup(1.0, 0.1, eta_a_warmup=-0.5), r"^eta_a_warmup must"),
    (lambda: Schedule.prescribed_warmup(1.0, 0.1, safety=0.0), r"schedule\.safety must lie in \(0, 1\]"),
    (lambda: Schedule.prescribed_warmup(1.0, 0.1, safety=2.0), r"schedule\.safety must lie in \(0, 1\]"),
]


@pytest.mark.parametrize(("make", "match"), SCHEDULE_CASES)
def test_bad_schedule_raises_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---- simulate(): one bad field at a time -----------------------------------------------------------------------
SIMULATE_CASES = [
    ({"runs": 0}, r"^runs must be an integer >= 1"),
    ({"runs": -3}, r"^runs must be an integer >= 1"),
    ({"runs": 2.0}, r"^runs must be an integer >= 1"),
    ({"runs": True}, r"^runs must be an integer >= 1"),
    ({"steps": -1}, r"^steps must be an integer >= 0"),
    ({"k": 0}, r"^k must be an integer >= 1"),
    ({"p": 0}, r"^p must be an integer >= 1"),
    ({"seed": -1}, r"^seed must be an integer >= 0"),
    ({"run_offset": -1}, r"^run_offset must be an integer >= 0"),
    ({"n_record": 0}, r"^n_record must be an integer"),
    ({"threads": 0}, r"^threads must be an integer"),
    ({"model": "mlp"}, r"^model must be one of 'resnet', 'cnn', 'cnn-unnormalized'"),
    ({"model": None}, r"^model must be one of"),
    ({"algorithm": "adam"}, r"^algorithm must be one of \('gd', 'sgd', 'gd-fixed', 'flow'\)"),
    ({"algorithm": "sgd", "batch_size": 0}, r"^batch_size must be an integer >= 1"),
    ({"algorithm": "sgd", "batch_size": -5}, r"^batch_size must be an integer >= 1"),
    ({"algorithm": "sgd"}, r"^batch_size must be an integer >= 1"),  # batch_size is required for sgd
    ({"algorithm": "gd-fixed", "batch_size": 0}, r"^batch_size must be an integer >= 1"),
    ({"schedule": (0.1, 0.1)}, r"^schedule must be a sims\.Schedule"),
    ({"schedule": Schedule.constant(0.1, 1.01 * LIMIT)}, r"^eta_a = .* exceeds the stability limit"),
    ({"schedule": Schedule.two_stage(5, 0.1, 1.5 * LIMIT, 0.1, 0.1)}, r"^eta_a = .* exceeds the stability limit"),
    ({"schedule": Schedule.prescribed_warmup(0.1, 0.1, eta_a_warmup=1.2 * LIMIT)}, r"^eta_a = .* stability limit"),
    ({"schedule": Schedule.two_stage(21, 0.1, 0.1, 0.1, 0.1)}, r"T1 must be <= steps"),
    ({"schedule": Schedule.piecewise([(15, 0.1, 0.1), (6, 0.1, 0.1), (None, 0.1, 0.1)])}, r"more than steps = 20"),
    ({"model": "cnn", "init": Init(w="zero")}, r"^init\.w = 'zero' is not allowed for model 'cnn'"),
    ({"model": "cnn-unnormalized", "init": Init(w="zero")}, r"^init\.w = 'zero' is not allowed"),
    ({"init": Init(w="uniform")}, r"^init\.w must be one of"),
    ({"init": Init(a="sphere")}, r"^init\.a must be one of"),
    ({"init": Init(w="gaussian", w_scale=0.0)}, r"^init\.w_scale must be finite and > 0"),
    ({"init": Init(a_radius=-1.0)}, r"^init\.a_radius must be finite and >= 0"),
    ({"init": Init(a_radius=math.nan)}, r"^init\.a_radius must be finite and >= 0"),
    ({"init": (np.zeros(P + 1), np.zeros(K))}, r"^init w0 must have shape \(3,\) or \(3, 3\)"),
    ({"init": (np.zeros(P), np.zeros((2, K)))}, r"^init a0 must have shape \(4,\) or \(3, 4\)"),
    ({"init": (np.zeros(P), [0.0, math.nan, 0.0, 0.0])}, r"^init a0 must be finite"),
    ({"model": "cnn", "init": (np.zeros(P), np.zeros(K))}, r"^init w0 = 0 is not allowed for model 'cnn'"),
    ({"init": "zero"}, r"^init must be a sims\.Init or a pair of arrays"),
    ({"init": (-np.ones(P) / math.sqrt(P), np.zeros(K))}, r"zero effective filter"),  # ResNet w0 = -v
    ({"teacher": Teacher(w="ball")}, r"^teacher\.w must be one of \('sphere', 'cap', 'angle'\)"),
    ({"teacher": Teacher(a="uniform")}, r"^teacher\.a must be one of"),
    ({"teacher": Teacher(phi_max=0.0)}, r"^teacher\.phi_max must lie in \(0, pi\]"),
    ({"teacher": Teacher(phi_max=math.nan)}, r"^teacher\.phi_max must lie in \(0, pi\]"),
    ({"teacher": Teacher(w="angle", angle=-0.1)}, r"^teacher\.angle must lie in \[0, pi\]"),
    ({"teacher": Teacher(a="fixed")}, r"^teacher\.a_value must be 4 finite numbers"),
    ({"teacher": Teacher(a="fixed", a_value=(1.0, 2.0))}, r"^teacher\.a_value must be 4 finite numbers"),
    ({"teacher": Teacher(a="fixed", a_value=(1.0, 2.0, math.nan, 0.0))}, r"^teacher\.a_value must be 4 finite"),
    ({"teacher": Teacher(a="ones", require_spurious=True)}, r"^teacher\.require_spurious needs teacher\.a"),
    ({"k": 1, "teacher": Teacher(require_spurious=True)}, r"^teacher\.require_spurious needs k >= 2"),
    ({"p": 1, "teacher": Teacher(w="angle", angle=1.0)}, r"^teacher\.angle must be 0 or pi when p = 1"),
    ({"teacher": (np.ones(P) / math.sqrt(P), np.ones(K + 1))}, r"^teacher \(w_star, a_star\) must have lengths"),
    ({"teacher": (np.ones(P), np.ones(K))}, r"^w_star must have unit norm"),
    ({"teacher": (np.ones(P) / math.sqrt(P), [1.0, math.inf, 0.0, 0.0])}, r"^a_star must be finite"),
    ({"teacher": "cap"}, r"^teacher must be a sims\.Teacher or a pair"),
    ({"shortcut": np.zeros(P)}, r"^shortcut must be a nonzero vector"),
    ({"shortcut": np.ones(P + 1)}, r"^shortcut has length"),
    ({"model": "cnn-unnormalized", "schedule": Schedule.prescribed_warmup(0.1, 0.1)},
     r"^schedule: the prescribed warmup needs a weight-normalized model"),
    ({"tolerances": sims.Tolerances(loss_tol=0.0, rate_window=(1e-4, 1e-6, 1e-9))}, None),  # valid: no error
]


@pytest.mark.parametrize(("overrides", "match"), SIMULATE_CASES)
def test_bad_simulate_input_raises_naming_the_field(overrides, match):
    if match is None:
        sims.simulate(**_base(**overrides))
        return
    with pytest.raises(ValueError, match=match):
        sims.simulate(**_base(**overrides))


def test_unstable_eta_a_accepted_with_allow_unstable():
    res = sims.simulate(**_base(schedule=Schedule.constant(0.1, 1.5 * LIMIT), allow_unstable=True))
    assert len(res) == 3
    assert res.settings["allow_unstable"] is True


def test_eta_a_at_the_limit_is_refused_only_above_it():
    # The check is "> limit": the limit itself is accepted (marginally stable), anything above is refused.
    sims.simulate(**_base(schedule=Schedule.constant(0.1, LIMIT)))
    with pytest.raises(ValueError, match="stability limit"):
        sims.simulate(**_base(schedule=Schedule.constant(0.1, math.nextafter(LIMIT, math.inf))))


def test_t1_equal_to_steps_is_accepted():
    res = sims.simulate(**_base(schedule=Schedule.two_stage(20, 0.1, 0.1, 0.1, 0.1)))
    assert np.all(res.steps <= 20)


def test_prescribed_warmup_eta_a_warmup_must_contract_even_when_unstable_is_allowed():
    # allow_unstable lifts the stability check, but the warmup bound needs a contracting Stage I.
    with pytest.raises(ValueError, match=r"^eta_a_warmup = .* does not contract a"):
        sims.simulate(**_base(schedule=Schedule.prescribed_warmup(0.1, 0.1, eta_a_warmup=1.2 * LIMIT),
                              allow_unstable=True))


TOLERANCE_CASES = [
    ({"loss_tol": -1e-10}, r"^tolerances\.loss_tol must be a finite number >= 0"),
    ({"grad_tol": math.nan}, r"^tolerances\.grad_tol must be a finite number >= 0"),
    ({"eps": math.inf}, r"^tolerances\.eps must be a finite number >= 0"),
    ({"linear_rtol": -0.1}, r"^tolerances\.linear_rtol must be a finite number >= 0"),
    ({"divergence": 0.0}, r"^tolerances\.divergence must be > 0"),
    ({"divergence": math.nan}, r"^tolerances\.divergence must be > 0"),
    ({"rate_window": (1e-9, 1e-6, 1e-4)}, r"^tolerances\.rate_window must be three loss levels hi > mid > lo > 0"),
    ({"rate_window": (1e-4, 1e-6)}, r"^tolerances\.rate_window must be three loss levels"),
    ({"rate_window": (1e-4, 1e-6, 0.0)}, r"^tolerances\.rate_window must be three loss levels"),
]


@pytest.mark.parametrize(("kw", "match"), TOLERANCE_CASES)
def test_bad_tolerances_raise_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        sims.Tolerances(**kw)
