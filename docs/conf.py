"""Sphinx configuration of the shallowres documentation.

Build: ``pip install -e ".[docs]" && sphinx-build -W --keep-going docs docs/_build/html`` (``tests/test_docs.py``
builds it the same way).  The notebooks under ``notebooks/`` (symbolic links to the repository's ``notebooks/``)
are executed at build time at their small size (``SHALLOWRES_NOTEBOOK_SMALL=1``), each in a temporary directory, so
the files they write never reach the source tree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout being documented, before any installed copy
# The notebook kernels are child processes: they inherit the environment, so the size and the checkout are set here.
os.environ["SHALLOWRES_NOTEBOOK_SMALL"] = "1"
os.environ["MPLBACKEND"] = "Agg"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))

project = "shallowres"
author = "the shallowres authors"
copyright = "2026, the shallowres authors"  # noqa: A001 (Sphinx's name)
release = "0.1.0"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinxarg.ext",
]

exclude_patterns = ["_build", "figures/*.pdf", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# Options such as --trials stay two hyphens (no en dashes in the CLI reference).
smartquotes = False

html_theme = "furo"
html_title = "shallowres"

# MyST: $...$ and $$...$$ math (rendered by MathJax), heading anchors for links within and across pages.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# myst-nb: execute every notebook on every build (the stored notebooks have no outputs), one at a time per Sphinx
# process, in a temporary directory; a cell error fails the build.
nb_execution_mode = "force"
nb_execution_in_temp = True
nb_execution_timeout = 120  # seconds per cell; the slowest takes about 10 s
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True


def _poke_kernel_sockets() -> None:
    """Read ``zmq.EVENTS`` of nbclient's shell and IOPub sockets once a second while a notebook executes.

    On a loaded machine nbclient's asyncio client can miss the edge-triggered readiness of a kernel's
    ``execute_reply`` (seen after ``widgets.interact`` cells): the kernel is idle and the client waits until the cell
    times out.  Reading ``EVENTS`` wakes the waiting poll (``tests/test_notebooks.py`` has the measurements)."""
    import asyncio

    import nbclient
    import zmq

    start = nbclient.NotebookClient.async_start_new_kernel_client
    if getattr(start, "_pokes", False):
        return

    async def poke(client) -> None:
        while client.kc is not None:
            for channel in (client.kc.shell_channel, client.kc.iopub_channel):
                socket = getattr(channel, "socket", None)
                if socket is not None and not socket.closed:
                    socket.get(zmq.EVENTS)
            await asyncio.sleep(1.0)

    async def start_with_pokes(self, **kwargs):
        out = await start(self, **kwargs)
        self._poke_task = asyncio.ensure_future(poke(self))
        return out

    start_with_pokes._pokes = True
    nbclient.NotebookClient.async_start_new_kernel_client = start_with_pokes


_poke_kernel_sockets()

# API reference: autodoc over the packages' __all__, numpydoc sections.
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # the signatures carry the hints; numpydoc's Parameters say the types in words
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_class_members_toctree = False


def _write_config_reference(app) -> None:
    """Generate ``reference/config.md`` from the declared sweep schema (:func:`sims.studies.config.reference_markdown`)
    before the sources are read, so the configuration reference is the schema's, never a hand-kept copy.  The file is
    written only when its text changes (Sphinx then rebuilds only what changed) and is not committed."""
    from sims.studies import config

    text = "# Configuration reference\n\n" + config.reference_markdown()
    path = Path(app.srcdir) / "reference" / "config.md"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def setup(app) -> dict:
    app.connect("builder-inited", _write_config_reference)
    return {"parallel_read_safe": True}
