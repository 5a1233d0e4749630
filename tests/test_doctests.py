"""The Examples sections of the docstrings run as doctests, and the docstrings of every public name follow numpydoc
(Parameters, Returns, Raises, Examples), checked with ``numpydoc.validate``.

Doctests are collected from every module of ``theory`` and ``sims`` (the objects defined there), so an example
added anywhere runs here; their outputs are rounded in the examples themselves, not compared loosely.  The
docstrings checked are those of every function and class in ``theory.__all__`` and ``sims.__all__`` and of every
entry point ``docs/reference/api.rst`` documents with ``autofunction`` (read from the page, so that a name added
there is checked too)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import pydoc
import re
from pathlib import Path

import pytest
from numpydoc.validate import validate

import sims
import theory
from sims.runs import registry

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

#: The public functions and classes: everything ``theory`` and ``sims`` export that has a docstring of its own
#: (the constants of ``__all__`` are documented on the API page).
PUBLIC = sorted(f"{pkg.__name__}.{name}" for pkg in (theory, sims) for name in pkg.__all__
                if inspect.isfunction(getattr(pkg, name)) or inspect.isclass(getattr(pkg, name)))
API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "api.rst"
#: The submodules' entry points the API page documents (``.. autofunction:: name``).
DOCUMENTED = re.findall(r"^\.\. autofunction:: (\S+)$", API_PAGE.read_text(), flags=re.M)
CHECKED = PUBLIC + [name for name in DOCUMENTED if name not in PUBLIC]

#: numpydoc's checks applied to every checked name, chosen to enforce what the developer guide asks of a docstring
#: (a summary, the "what and why", every parameter, what comes back, a runnable example):
#:
#: - GL08: a docstring exists; GL06, GL07: only numpydoc's sections, in numpydoc's order (so Sphinx renders them).
#: - SS01-SS04, SS06: a one-line summary (capitalized, ending in a period, no leading blanks), then ES01: an
#:   extended summary, the "what and why".
#: - PR01, PR02: every parameter of the signature documented and none that is not there; PR04, PR05, PR06: each
#:   with a type in numpydoc's spelling; PR07, PR08: and a description starting with a capital.
#: - RT01, RT03: a Returns section with a description for functions (YD01: Yields for generators).
#: - EX01: an Examples section; the doctest collection above runs it.
#:
#: Left out on purpose: SS05 (a heuristic: a first word ending in "s" flags noun-phrase summaries such as
#: "Factors -> (w, a) ..." that this project uses), PR03 (related parameters share one entry, e.g. ``k, p : int``,
#: so their order is free), PR09, RT04, RT05 (descriptions often end in a formula or a code span), RT02 (it
#: misreads named returns ``w, a : numpy.ndarray``) and SA01 (See Also is optional).
CHECKS = {"GL06", "GL07", "GL08", "SS01", "SS02", "SS03", "SS04", "SS06", "ES01", "PR01", "PR02", "PR04", "PR05",
          "PR06", "PR07", "PR08", "RT01", "RT03", "YD01", "EX01"}
#: The checked names without a Raises section, each because it raises nothing of its own: plain records that
#: validate nothing (a Segment is checked by its Schedule), formulas without input checks, a function without
#: arguments, and the table builders that read a finished sweep.  Every other checked name must say what it raises.
NO_RAISES = {
    "theory.StationaryPoint", "theory.arc_cosine", "theory.matrix_N", "theory.optimal_alignment", "sims.Built",
    "sims.Call", "sims.Draws", "sims.EngineSpec", "sims.Finished", "sims.Segment", "sims.Setup",
    "sims.SimulationResult", "sims.Start", "sims.engine_names", "sims.studies.tables.make",
    "sims.studies.tables.distill_rows", "sims.studies.tables.laperm_rows", "sims.studies.tables.expand_rows",
    "sims.runs.classify.wilson",
}


def test_there_are_doctests():
    """Guards the collection: an empty parametrization would test nothing."""
    names = {t.name for t in DOCTESTS}
    assert len(DOCTESTS) >= 70
    assert "theory.landscape.population_loss" in names and "sims.runs.simulate.simulate" in names


def test_every_public_name_is_checked():
    """Guards the list of checked names: every exported function and class, and the API page's entry points."""
    assert len(PUBLIC) >= 59 and len(DOCUMENTED) >= 14
    assert {"theory.optimal_alignment", "sims.register_engine", "sims.SimulationResult"} <= set(CHECKED)
    assert {"sims.studies.spec.build_spec", "sims.studies.sweep.run_sweep", "sims.studies.summary.load_summary"} \
        <= set(CHECKED)
    assert set(NO_RAISES) <= set(CHECKED)


@pytest.fixture
def registry_restored(monkeypatch):
    """The examples of :mod:`sims.runs.registry` register engines; they leave the registry as they found it."""
    monkeypatch.setattr(registry, "_BY_NAME", dict(registry._BY_NAME))
    monkeypatch.setattr(registry, "_BY_OPTIONS", dict(registry._BY_OPTIONS))


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples_run(test, monkeypatch, tmp_path, registry_restored):
    monkeypatch.chdir(tmp_path)  # examples that run a sweep write its directory here
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    out: list[str] = []
    result = runner.run(test, out=out.append)
    assert result.failed == 0, "".join(out)


@pytest.mark.parametrize("name", CHECKED)
def test_docstrings_follow_numpydoc(name):
    report = validate(name)
    errors = [f"{code}: {msg}" for code, msg in report["errors"] if code in CHECKS]
    assert not errors, errors
    doc = report["docstring"]
    assert "Examples\n---" in doc and ">>> " in doc, f"{name}: no Examples section with an example"
    if inspect.signature(pydoc.locate(name)).parameters:
        assert "Parameters\n---" in doc, f"{name}: no Parameters section"
    assert ("Raises\n---" in doc) != (name in NO_RAISES), \
        f"{name}: a Raises section is required unless the name is listed in NO_RAISES (and then it must not have one)"
