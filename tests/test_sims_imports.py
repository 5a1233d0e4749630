"""The package's structure: data flows one way (no import cycle among the modules of ``sims``; each module imports
only its own layer or lower ones, ``engines -> runs -> methods -> plots -> studies -> cli``; no ``importlib`` or
``inspect`` in the pipeline and the methods), and functions stay small (at most 120 lines of code, at most 12
positional parameters; keyword-only options of the public API and the docstring do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIMS = ROOT / "sims"



def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The ``sims`` modules ``path`` imports when it is imported (module-level statements, not function bodies)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names
                       if f"{node.module}.{alias.name}" in modules)
    return out


def test_no_import_cycle_among_the_sims_modules():
    files = {_module(f): f for f in SIMS.rglob("*.py")}
    graph = {name: _module_level_imports(path, set(files)) for name, path in files.items()}
    assert "sims.runs.registry" in graph["sims.runs.simulate"]  # the graph is read
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    for name in graph:  # the pipeline never imports the methods nor the studies; the methods not the studies
        if name.startswith("sims.runs."):
            assert not {m for m in graph[name] if m.startswith(("sims.methods", "sims.studies"))}, name
        if name.startswith("sims.methods."):
            assert not {m for m in graph[name] if m.startswith("sims.studies")}, name


@pytest.mark.parametrize("layer", ["runs", "methods"])
def test_the_pipeline_and_the_methods_use_no_importlib_or_inspect(layer):
    for path in (SIMS / layer).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {n.split(".")[0] for n in names if n} & {"importlib", "inspect"}, path


def test_functions_are_at_most_120_lines_and_12_positional_parameters():
    too_long = []
    for path in sorted(SIMS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if ast.get_docstring(node) is not None:  # the numpydoc docstring is documentation, not code
                    lines -= node.body[0].end_lineno - node.body[0].lineno + 1
                positional = len(node.args.posonlyargs) + len(node.args.args)
                key = f"{path.relative_to(ROOT)}:{node.name}"
                if (lines > 120 or positional > 12):
                    too_long.append(f"{key} ({lines} lines, {positional} positional)")
    assert not too_long


#: Layer of each part of sims/: a module may import sims modules of its own layer or of lower layers only (at module
#: level or inside a function alike).  ``sims/__init__.py``, the public API, sits on top of every layer.
LAYERS = {"engines": 0, "runs": 1, "methods": 2, "plots": 3, "studies": 4, "cli": 5}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if parts[0] == "sims" and len(parts) > 1 else None


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in SIMS.rglob("*.py")), ids=str)
def test_modules_import_only_their_own_or_lower_layers(path):
    own = _layer(_module(ROOT / path))
    if own is None:
        return
    bad = []
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"sims.{a.name}" for a in node.names if node.module == "sims"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        bad += [f"line {node.lineno}: {n}" for n in names if (_layer(n) or 0) > own]
    assert not bad, f"{path} (layer {own}) imports a higher layer: {bad}"


#: The modules of sims/studies in the order they build on each other: the names the command line needs before it
#: runs anything, the sweep file's schema, the chunks on disk, the per-run table of one result, the cells of a sweep
#: file, the results of a sweep, running a sweep, the papers' tables.  Each imports only modules before it
#: (type-checking imports included).
STUDIES = ("names", "config", "store", "per_run", "spec", "summary", "sweep", "tables")


def test_the_studies_modules_import_only_the_ones_before_them():
    assert {p.stem for p in (SIMS / "studies").glob("*.py")} - {"__init__"} == set(STUDIES)  # a new one has a place
    for i, name in enumerate(STUDIES):
        used = set()
        for node in ast.walk(ast.parse((SIMS / "studies" / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "sims.studies":
                used.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sims.studies."):
                used.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                used.update(a.name.split(".")[2] for a in node.names if a.name.startswith("sims.studies."))
        later = used & set(STUDIES[i:])
        assert not later, f"sims/studies/{name}.py imports {sorted(later)}, which come after it"
