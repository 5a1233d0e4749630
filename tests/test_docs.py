"""The documentation site builds with warnings as errors, as the README's command builds it, and holds what it
promises: every public name of ``theory`` and ``sims`` in the API reference, every subcommand in the CLI reference,
the notebooks executed (at their small size) with their figures, the formulas of the science page as math.

The site is built once per test session, in one ``sphinx-build`` process (the notebooks' kernels are its
children), into a temporary directory, in the background while the rest of the suite runs (:class:`SiteBuild`);
the source tree is left untouched."""

from __future__ import annotations

import html as html_lib
import os
import re
import signal
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
from background import BackgroundJob

import sims
import theory
from sims import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Every page of the site (source path without suffix, relative to docs/).
PAGES = ["index", "getting-started", "science", "benchmarks", "citing",
         "guide/index", "guide/landscape", "guide/simulating", "guide/order-parameters", "guide/tables",
         "guide/sweeps", "guide/expansions", "guide/distillation", "guide/laperm", "guide/architecture",
         "guide/development", "reference/index", "reference/api", "reference/cli", "reference/config",
         "notebooks/index"]
#: Seconds after which a build counts as hung, is killed and is run once more.  It takes about 45 s alone on
#: 2 cores with a warm numba cache and up to about 135 s beside the rest of the suite; the test does not time it
#: (tests never time things: the speed of the site build is not a claim of the package), this only bounds a hang.
HANG_LIMIT = 400


class _Collector(HTMLParser):
    """Element ids and image sources of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if d.get("id"):
            self.ids.add(d["id"])
        if tag == "img" and d.get("src"):
            self.images.append(d["src"])


def _text(path: Path) -> str:
    """A page's text without its tags."""
    return html_lib.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    return c


def _build(out: Path, env: dict) -> subprocess.CompletedProcess | None:
    """One ``sphinx-build`` in its own process group (the notebook kernels are its children); ``None`` if it did
    not finish within ``HANG_LIMIT`` (the group is killed)."""
    proc = subprocess.Popen([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                             str(out / "html"), "-d", str(out / "doctrees")], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=HANG_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


class SiteBuild(BackgroundJob):
    """The site, built once, in a background thread: ``tests/conftest.py`` starts it when tests that need it are
    collected, so its ~45 s (the notebooks' kernels, mostly) overlap the rest of the suite on the second core;
    the :func:`site` fixture waits for it.  Should nbclient still miss the end of a cell (the hang described in
    tests/test_notebooks.py, which ``docs/conf.py`` works around as that test's runner does), a build that has not
    finished in ``HANG_LIMIT`` is killed and run once more."""

    prefix = "shallowres-site-"

    def __init__(self) -> None:
        super().__init__()
        self._out: tuple[Path, subprocess.CompletedProcess] | None = None
        self._hangs = 0

    def run(self) -> None:
        env = dict(os.environ, MPLBACKEND="Agg",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for attempt in range(2):
            out = Path(self.dir) / f"attempt{attempt}"
            proc = _build(out, env)
            if proc is not None:
                self._out = out / "html", proc
                return
            self._hangs += 1

    def result(self) -> tuple[Path, subprocess.CompletedProcess]:
        self.start()
        self.join()
        for attempt in range(self._hangs):
            warnings.warn(f"the docs build hung (attempt {attempt + 1}); killed", stacklevel=1)
        if self._out is None:
            pytest.fail("the docs build hung twice")
        return self._out


#: The session's build (started by ``tests/conftest.py``).
SITE_BUILD = SiteBuild()


@pytest.fixture(scope="module")
def site() -> tuple[Path, subprocess.CompletedProcess]:
    """The built site: its HTML directory and the build's process result."""
    return SITE_BUILD.result()


def test_the_site_builds_without_warnings(site):
    html, proc = site
    # -W: a warning fails the build (exit code 1); the notebook kernels' own log lines are not Sphinx's.
    found = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert proc.returncode == 0 and not found, "\n".join(found) or proc.stderr[-3000:]
    for page in PAGES:
        assert (html / f"{page}.html").is_file(), page


def test_the_readme_names_the_build_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[docs]" && sphinx-build -W --keep-going docs docs/_build/html' in readme
    assert "docs/_build/" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_public_name_is_in_the_api_reference(site):
    html, _ = site
    ids = _parse(html / "reference" / "api.html").ids
    names = [f"theory.{n}" for n in theory.__all__] + [f"sims.{n}" for n in sims.__all__]
    missing = [n for n in names if n not in ids]
    assert not missing, missing
    for name in ("sims.studies.sweep.run_sweep", "sims.studies.tables.make", "sims.runs.classify.wilson"):
        assert name in ids


def test_every_command_is_in_the_cli_reference(site):
    html, _ = site
    text = _text(html / "reference" / "cli.html")
    assert "--trials" in text and "Default: True" not in text  # no en dashes; no store_false default
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    for command in sub.choices:
        assert f"shallowres {command}" in text, command


def test_the_configuration_reference_is_generated_from_the_schema(site):
    """The configuration page is the schema's reference: every field of every table of the sweep file, and every
    schedule kind, as sims.studies.config declares them."""
    from sims.studies import config

    html, _ = site
    text = _text(html / "reference" / "config.html")
    schema = config.json_schema()
    fields = {name for model in schema.get("$defs", {}).values() for name in model.get("properties", {})}
    fields |= set(schema["properties"])
    missing = sorted(f for f in fields if f not in text)
    assert len(fields) > 40 and not missing, missing
    for kind in ("constant", "two-stage", "layerwise", "perturbed", "prescribed-warmup", "piecewise"):
        assert kind in text


def test_the_notebook_pages_carry_their_figures(site):
    """Every notebook is in the site (docs/notebooks holds a link to each) and its page shows at least one
    figure drawn when the site was built, embedded or as a file next to the page."""
    linked = sorted(p.name for p in (DOCS / "notebooks").glob("*.ipynb"))
    assert linked == [p.name for p in NOTEBOOKS], "docs/notebooks/ must link every notebook of notebooks/"
    html, _ = site
    for nb in NOTEBOOKS:
        page = html / "notebooks" / f"{nb.stem}.html"
        images = _parse(page).images
        drawn = [src for src in images if src.startswith("data:image/")
                 or ((page.parent / src).is_file() and (page.parent / src).stat().st_size > 1000)]
        assert drawn, f"{page.name}: no figure ({images})"


def test_the_science_page_renders_its_formulas_as_math(site):
    html, _ = site
    text = (html / "science.html").read_text(encoding="utf-8")
    assert "mathjax" in text.lower()
    assert text.count('class="math') >= 40
    for formula in (r"\frac{1}{4\pi}", r"g(\phi) = \sin\phi + (\pi - \phi)\cos\phi", r"M^{-1} N(\phi)"):
        assert formula in text, formula
