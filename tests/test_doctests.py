"""The Examples sections of the docstrings run as doctests, and the public entry points' docstrings follow
numpydoc (Parameters, Returns, Raises, Examples), checked with ``numpydoc.validate``.

Doctests are collected from every module of ``theory`` and ``sims`` (the objects defined there), so an example
added anywhere runs here; their outputs are rounded in the examples themselves, not compared loosely."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
from numpydoc.validate import validate

import sims
import theory

OPTIONS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _modules() -> list[str]:
    names = []
    for pkg in (theory, sims):
        names.append(pkg.__name__)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    return sorted(names)


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _modules():
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module, name, globs={}) if t.examples]
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()

#: The entry points whose docstrings must carry every numpydoc section (the ones a user starts from).
ENTRY_POINTS = [
    "theory.population_loss", "theory.population_gradient", "theory.population_hessian", "theory.tangent_hessian",
    "theory.tangent_basis", "theory.angle", "theory.optimal_a", "theory.spurious_point", "theory.saddle_angle",
    "theory.reduced_loss", "theory.global_minimum", "theory.spurious_minimum", "theory.saddle_point",
    "theory.classify_stationary_point", "theory.max_stable_eta_a", "theory.global_minimum_rate",
    "theory.gd_linear_rate", "sims.simulate", "sims.simulate_fading", "sims.simulate_laperm", "sims.fold_shortcut",
    "sims.contract", "sims.studies.tables.spec",
]
#: numpydoc's checks that matter here: a section missing (Parameters, Returns, Examples), a parameter missing from
#: or unknown to the Parameters section (their order is free: related parameters share an entry), a parameter
#: without a type or a description.
CHECKS = {"PR01", "PR02", "PR07", "PR08", "RT01", "EX01", "SS01", "GL08"}


def test_there_are_doctests():
    """Guards the collection: an empty parametrization would test nothing."""
    names = {t.name for t in DOCTESTS}
    assert len(DOCTESTS) >= 20
    assert "theory.landscape.population_loss" in names and "sims.runs.simulate.simulate" in names


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples_run(test, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    out: list[str] = []
    result = runner.run(test, out=out.append)
    assert result.failed == 0, "".join(out)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_docstrings_follow_numpydoc(name):
    report = validate(name)
    errors = [f"{code}: {msg}" for code, msg in report["errors"] if code in CHECKS]
    assert not errors, errors
    doc = report["docstring"]
    for section in ("Parameters", "Returns", "Examples"):
        assert f"{section}\n---" in doc, f"{name}: no {section} section"
    assert "Raises\n---" in doc, f"{name}: no Raises section"
