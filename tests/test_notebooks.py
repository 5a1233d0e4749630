"""Every notebook runs top to bottom headless (nbclient) as a user runs it: at its full default size, with its widgets
(the small size, ``SHALLOWRES_NOTEBOOK_SMALL=1``, runs the same code with fewer runs and steps; running it too
doubled the kernel launches, the slowest part of the suite). After the notebook's own cells, cells appended to the
copy run :mod:`notebook_widget_checks` in the kernel: they find the callback the notebook wired to
``widgets.interact``, check its controls, move each control to a non-default value and check that every redraw drew
a figure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from background import BackgroundJob

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted((HERE.parent / "notebooks").glob("*.ipynb"))
KERNEL_CHECKS = (HERE / "notebook_widget_checks.py").read_text()

#: Per notebook: the callback wired to ``widgets.interact``, its controls (class name and attributes), and the
#: non-default values the test moves them to, in order (each move redraws once).
WIDGETS: dict[str, tuple[str, dict[str, dict], dict[str, object]]] = {
    "01_landscape": (
        "show",
        {"k": {"type": "IntSlider", "min": 2, "max": 64},
         "ratio": {"type": "FloatSlider", "min": 0.0, "max": 1.5, "step": 0.05}},
        {"k": 9, "ratio": 1.2},  # ratio > 1: no spurious minimum, no saddle line
    ),
    "02_two_stage_dynamics": (
        "run",
        {"eta_w1": {"type": "FloatLogSlider", "base": 10, "min": -4, "max": 0},
         "T1": {"type": "IntSlider", "min": 0, "max": 1000},
         "model": {"type": "Dropdown", "options": ["resnet", "cnn"]},
         "shortcut": {"type": "Checkbox"},
         "k": {"type": "fixed"}, "p": {"type": "fixed"}},
        {"eta_w1": 0.1, "T1": 300, "model": "cnn", "shortcut": False},
    ),
    "03_convergence_tables": (
        "show_heatmaps",
        {"table": {"type": "Dropdown", "options": ["liu2019", "du2018"]},
         "quantity": {"type": "Dropdown",
                      "options": ["p_global", "p_spurious", "p_not_converged", "steps_to_tol_median"]}},
        {"table": "du2018", "quantity": "steps_to_tol_median"},
    ),
    "04_deep_linear_expansions": (
        "show_deviation",
        {"depth": {"type": "IntSlider", "min": 2, "max": 6},
         "eta": {"type": "FloatLogSlider", "base": 10, "min": -3, "max": -1.5},
         "scale": {"type": "FloatLogSlider", "base": 10, "min": -1.5, "max": 0},
         "target": {"type": "Dropdown", "options": ["w", "a", "both"]}},
        {"depth": 4, "eta": 0.003, "scale": 1.0, "target": "w"},
    ),
    "05_sgd_vs_gd": (
        "compare_batch",
        {"batch_size": {"type": "SelectionSlider", "options": [4, 8, 16, 32, 64, 128, 256, 512, 1024]},
         "algorithm": {"type": "Dropdown", "options": ["sgd", "gd-fixed"]},
         "eta_w_k": {"type": "FloatSlider", "min": 0.05, "max": 1.0, "step": 0.05},
         "warmup": {"type": "Checkbox"}},
        {"batch_size": 256, "algorithm": "gd-fixed", "eta_w_k": 0.25, "warmup": True},
    ),
}


def test_notebooks_exist_with_stripped_outputs():
    names = [p.stem for p in NOTEBOOKS]
    for expected in ("01_landscape", "02_two_stage_dynamics", "03_convergence_tables", "04_deep_linear_expansions",
                     "05_sgd_vs_gd"):
        assert expected in names
    assert sorted(WIDGETS) == names, "every notebook needs its widget checks in WIDGETS"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and "What this shows" in nb.cells[0].source
        assert "widgets" not in nb.metadata, f"{path.name}: saved widget state not stripped"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs not stripped"


def check_cells(stem: str, small: bool) -> list[nbformat.NotebookNode]:
    """The cells appended to the notebook's copy: the kernel-side checks, then one cell per control move and one
    per check of its redraw (the redraw's outputs reach the kernel only after the cell that caused it)."""
    name, controls, values = WIDGETS[stem]
    sources = [KERNEL_CHECKS,
               f"assert SMALL is {small}, 'the kernel did not get the size from the environment'\n"
               f"check_controls(globals(), {name!r}, {controls!r})\n"
               f"check_drawn(globals(), {name!r})"]
    for param, value in values.items():
        sources += [f"move(globals(), {name!r}, {param!r}, {value!r})", f"check_drawn(globals(), {name!r})"]
    return [nbformat.v4.new_code_cell(s) for s in sources]


#: Runs a notebook with nbclient in its own process: a kernel client shares no event loop or thread with what the
#: test process ran before it (Dask clusters, subprocesses), and a hung kernel cannot hang the suite.
#:
#: ``poke`` reads ``zmq.EVENTS`` of the client's shell and IOPub sockets once a second.  ZeroMQ signals a socket's
#: readiness on an edge-triggered descriptor, and nbclient's asyncio client can miss an edge: the kernel has sent
#: the ``execute_reply`` (its ``idle`` status arrived) and the client waits for it forever.  Reading ``EVENTS``
#: makes ZeroMQ process its pending commands and re-signal, and the waiting ``poll`` wakes.  Measured with a CPU
#: burner on one core, ``04_deep_linear_expansions`` run by nbclient alone: hung after its ``widgets.interact`` cell
#: in 2 of 3 runs without the poke, 4 of 4 with pyzmq 26.4, and in 0 of 4 runs with it.
_EXECUTE = """
import asyncio, sys, nbformat, zmq
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}})

async def poke():
    while True:
        await asyncio.sleep(1.0)
        kc = client.kc
        for channel in ((kc.shell_channel, kc.iopub_channel) if kc is not None else ()):
            socket = getattr(channel, "socket", None)
            if socket is not None and not socket.closed:
                socket.get(zmq.EVENTS)

async def main():
    task = asyncio.ensure_future(poke())
    try:
        await client.async_execute()
    finally:
        task.cancel()

try:
    asyncio.run(main())
finally:
    nbformat.write(nb, sys.argv[1])
"""

#: A run is hung when its kernel (the child's descendants) uses less than :data:`IDLE_CPU` seconds of CPU in
#: :data:`IDLE_WINDOW` seconds: every cell of the notebooks computes (or compiles), so a run that makes progress
#: keeps a core busy, however loaded the machine is; in the hang described in the test the kernel sleeps while
#: the client polls (about 0.3 s of CPU per 10 s: the client's own CPU does not count).
IDLE_WINDOW, IDLE_CPU = 30.0, 0.5
#: Seconds a whole notebook run may take in any case (the slowest full-size run takes about 25 s with a warm numba
#: cache, about 2 minutes when it compiles the engines, more on a loaded machine).
RUN_LIMIT = 900
#: Runs of one notebook (a run that hangs is killed and run again).
ATTEMPTS = 3


def _tree(root: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by ``root`` and each of its live descendants, by pid (Linux
    ``/proc``; the kernel that nbclient starts is a child of the child, in a session of its own)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # the fields after the command: state, ppid, ..., utime (index 11), stime (index 12)
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    out = {}
    for pid in cpu:
        q = pid
        while q > 1 and q != root:
            q = parent.get(q, 0)
        if q == root:
            out[pid] = cpu[pid]
    return out


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _execute(copy: Path, env: dict, idle_window: float = IDLE_WINDOW) -> subprocess.CompletedProcess | None:
    """Run the notebook ``copy`` in a child process; ``None`` if the run hung (:data:`IDLE_WINDOW`) or exceeded
    :data:`RUN_LIMIT` (the child, its kernel and their descendants are killed)."""
    proc = subprocess.Popen([sys.executable, "-c", _EXECUTE, str(copy), str(copy.parent)], env=env, cwd=copy.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    start = time.monotonic()
    mark, mark_cpu = start, 0.0
    while True:
        try:
            out, err = proc.communicate(timeout=1.0)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            pass
        tree = _tree(proc.pid)
        now, cpu = time.monotonic(), sum(t for pid, t in tree.items() if pid != proc.pid)
        if cpu - mark_cpu >= IDLE_CPU:
            mark, mark_cpu = now, cpu
        if now - mark > idle_window or now - start > RUN_LIMIT:
            _kill(tree)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None


def run_notebook(path: Path, size: str, workdir: Path) -> tuple[subprocess.CompletedProcess | None, Path, int, int]:
    """Run notebook ``path`` at ``size`` with its check cells appended, in a copy in ``workdir``: ``(the child's
    result or None if it hung every time, the executed copy, the notebook's own cell count, hung attempts)``.  A run
    whose kernel sleeps for :data:`IDLE_WINDOW` seconds is killed and run again, up to :data:`ATTEMPTS` runs."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("SHALLOWRES_NOTEBOOK_SMALL", None)
    if size == "small":
        env["SHALLOWRES_NOTEBOOK_SMALL"] = "1"
    nb = nbformat.read(path, as_version=4)
    own = len(nb.cells)
    nb.cells += check_cells(path.stem, small=size == "small")
    copy = workdir / path.name
    for attempt in range(ATTEMPTS):
        nbformat.write(nb, copy)
        proc = _execute(copy, env)
        if proc is not None:
            return proc, copy, own, attempt
    return None, copy, own, ATTEMPTS


class NotebookRuns(BackgroundJob):
    """The selected notebook runs, one after another in a background thread that ``tests/conftest.py`` starts when
    they are collected, so their minute or two (kernel launches and the notebooks' own work) overlap the rest of
    the suite on the second core; each test waits for its run (:meth:`result`).  Each run is the same child process
    and check as a run in the test itself."""

    prefix = "shallowres-notebooks-"

    def __init__(self) -> None:
        super().__init__()
        self._todo: list[tuple[Path, str]] = []
        self._done: dict[tuple[Path, str], tuple] = {}
        self._cond = threading.Condition()

    def start(self, runs: list[tuple[Path, str]], after: Callable[[], None] | None = None) -> None:
        """Run ``runs`` in the background, once ``after()`` (another background job's join) has returned."""
        if not self.started:
            self._todo = list(dict.fromkeys(runs))
            super().start(after)

    def run(self, after: Callable[[], None] | None) -> None:
        if after is not None:
            after()
        for i, (path, size) in enumerate(self._todo):
            workdir = Path(self.dir) / str(i)
            workdir.mkdir()
            try:
                out: tuple = run_notebook(path, size, workdir)
            except BaseException as exc:  # reported by the test that asks for this run
                out = (exc,)
            with self._cond:
                self._done[path, size] = out
                self._cond.notify_all()

    def result(self, path: Path, size: str, workdir: Path) -> tuple:
        """The run of ``(path, size)``: the background one, or run now in ``workdir`` if it was not started."""
        if not self.started or (path, size) not in self._todo:
            return run_notebook(path, size, workdir)
        with self._cond:
            self._cond.wait_for(lambda: (path, size) in self._done)
            out = self._done[path, size]
        if isinstance(out[0], BaseException):
            raise out[0]
        return out


#: The session's notebook runs (started by ``tests/conftest.py``).
NOTEBOOK_RUNS = NotebookRuns()


@pytest.fixture(scope="session")
def notebook_runs() -> NotebookRuns:
    """The background notebook runs (:class:`NotebookRuns`)."""
    return NOTEBOOK_RUNS


@pytest.mark.parametrize("size", ["full"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless_with_widgets(path, size, tmp_path, notebook_runs):
    """Each run is a fresh process: the kernel client shares no event loop with what the test process ran before.

    On a loaded machine nbclient used to miss the end of a cell the kernel had finished (after a
    ``widgets.interact`` cell, as in jupyter/nbclient#312): the kernel slept and the client waited forever, and
    nbclient's own timeout did not fire.  :data:`_EXECUTE` prevents it (its ``poke``).  Should a run still hang, its
    kernel sleeps: a run whose kernel sleeps for :data:`IDLE_WINDOW` seconds is killed and run again, up to
    :data:`ATTEMPTS` runs; a notebook that hangs every time fails the test, and so does any error, at once."""
    proc, copy, own, hangs = notebook_runs.result(path, size, tmp_path)
    for attempt in range(hangs):
        warnings.warn(f"{path.name} ({size}): hung (attempt {attempt + 1}); killed", stacklevel=1)
    if proc is None:
        pytest.fail(f"{path.name} ({size}) hung {ATTEMPTS} times")
    # A failed cell (including a failed check in an appended cell) is a CellExecutionError in the child.
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = nbformat.read(copy, as_version=4)
    images = sum("image/png" in out.get("data", {}) for cell in executed.cells[:own] if cell.cell_type == "code"
                 for out in cell.outputs)
    assert images >= 1, f"{path.name} drew no figure outside its widgets"


def test_a_sleeping_run_counts_as_hung_and_a_busy_one_does_not(tmp_path):
    """The hang detector of :func:`_execute`: a cell that sleeps past the idle window is killed (``None``), a cell
    that computes for longer than the window is not."""
    env = dict(os.environ, MPLBACKEND="Agg")
    for source, hung in (("import time\ntime.sleep(120)", True),
                         ("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 6: pass", False)):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        copy = tmp_path / "probe.ipynb"
        nbformat.write(nb, copy)
        t0 = time.monotonic()
        proc = _execute(copy, env, idle_window=4.0)
        assert (proc is None) == hung, source
        assert time.monotonic() - t0 < 60
        if not hung:
            assert proc.returncode == 0, proc.stderr[-2000:]
