"""The examples of the README and of the documentation's pages (``docs/**/*.md``: the user guide, getting started)
run as written: every ```python block (each in a fresh namespace, in a temporary working directory, with the imports
it shows), the ```toml sweep file, and every `shallowres ...` command of the ```bash blocks (in-process through
``sims.cli.main``, each distinct command once).  Where a line of Python states its result in a comment (a Python
literal, or ``name = number``), the value is checked too; where a command's section shows its table, the printed
table must contain it."""

from __future__ import annotations

import ast
import io
import re
import shlex
import tokenize
import tomllib
from pathlib import Path

import numpy as np
import pytest

import theory
from sims import cli
from sims.studies import sweep

ROOT = Path(__file__).resolve().parents[1]
#: The README and the documentation's Markdown pages (the built site under docs/_build is not a source).
DOCUMENTS = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
TEXTS = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in DOCUMENTS}
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
HEADING = re.compile(r"^(#{1,3}) (.+)$", re.M)


def _section_of(text: str, pos: int) -> str:
    title = "top"
    for m in HEADING.finditer(text):
        if m.start() > pos:
            break
        title = m.group(2).strip()
    return title


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    """``(document: section title, line number in the document, code)`` of every fenced block of one language."""
    out = []
    for name, text in TEXTS.items():
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                out.append((f"{name}: {_section_of(text, m.start())}", text.count("\n", 0, m.start(2)) + 1,
                            m.group(2)))
    return out


PY_BLOCKS = _blocks("python")
BASH_BLOCKS = _blocks("bash")
TOML_BLOCKS = _blocks("toml")


def _slug(section: str, line: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-") + f"-L{line}"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A temporary working directory and a non-interactive matplotlib backend."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# Python blocks


def _comments(code: str) -> dict[int, tuple[str, bool]]:
    """Line -> (comment text without '#', whether the line holds nothing but the comment)."""
    out = {}
    lines = code.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            out[row] = (tok.string.lstrip("#").strip(), lines[row - 1].strip().startswith("#"))
    return out


def _claim(comment: str):
    """The result a comment states: ``("literal", value)`` for a Python literal (up to ' -- '), ``("number",
    name, value, decimals)`` for ``name = 1.2345 ...``; None when the comment only explains."""
    head = comment.split(" -- ")[0].strip()
    try:
        return ("literal", ast.literal_eval(head))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    m = re.match(r"^(\w+) = (-?\d+(?:\.(\d+))?)\b", head)
    if m:
        return ("number", m.group(1), float(m.group(2)), len(m.group(3) or ""))
    return None


def _claims(code: str) -> dict[int, tuple]:
    """Statement start line -> the claim of the comment on its last line (or on the comment line right after)."""
    comments = _comments(code)
    out = {}
    for stmt in ast.parse(code).body:
        if not isinstance(stmt, ast.Expr):
            continue
        end = stmt.end_lineno
        found = comments.get(end)
        if found is None and comments.get(end + 1, ("", False))[1]:
            found = comments[end + 1]
        claim = _claim(found[0]) if found else None
        if claim is not None:
            out[stmt.lineno] = claim
    return out


def run_python_block(code: str, filename: str) -> tuple[dict, int]:
    """Execute ``code`` statement by statement in a fresh namespace (as ``exec`` of the whole block would) and
    check the results that comments state; returns the namespace and the number of claims checked."""
    tree = ast.parse(code, filename)
    claims = _claims(code)
    ns: dict = {"__name__": "__readme__"}
    checked = 0
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr):
            value = eval(compile(ast.Expression(stmt.value), filename, "eval"), ns)
            claim = claims.get(stmt.lineno)
            if claim is None:
                continue
            src = ast.get_source_segment(code, stmt)
            if claim[0] == "literal":
                assert value == claim[1], f"{filename}: {src} gives {value!r}; the document says {claim[1]!r}"
            else:
                _, name, number, decimals = claim
                assert abs(float(value) - number) <= 0.5 * 10.0**-decimals, (
                    f"{filename}: {src} gives {value!r}; the document says {name} = {number}")
            checked += 1
        else:
            exec(compile(ast.Module([stmt], type_ignores=[]), filename, "exec"), ns)
    return ns, checked


def test_readme_has_the_examples_we_expect():
    """Guards the extraction itself: an empty parametrization would test nothing; the user guide's pages are read."""
    assert "docs/guide/landscape.md" in TEXTS and "docs/guide/sweeps.md" in TEXTS
    assert len(PY_BLOCKS) >= 4
    assert len(BASH_BLOCKS) >= 1
    assert len(TOML_BLOCKS) >= 1
    claims = [c for _, _, code in PY_BLOCKS for c in _claims(code).values()]
    assert len(claims) >= 3, claims  # saddle angle, the classification and the counts at least
    assert ("literal", "minimum") in claims


@pytest.mark.parametrize(("section", "line", "code"), PY_BLOCKS, ids=[_slug(s, n) for s, n, _ in PY_BLOCKS])
def test_python_block_runs_as_written(sandbox, section, line, code):
    ns, _ = run_python_block(code, f"{section.split(':')[0]}:{line}")
    assert any(not k.startswith("__") for k in ns)  # it did something


def test_a_failing_block_fails_the_test():
    with pytest.raises(ZeroDivisionError):
        run_python_block("x = 1\n1 / 0\n", "bad")
    with pytest.raises(AssertionError, match="the document says 3"):
        run_python_block("1 + 1  # 3\n", "bad")
    with pytest.raises(AssertionError, match="the document says phi = 1.5"):
        run_python_block("import math\nmath.pi / 2  # phi = 1.5 rad\n", "bad")
    _, checked = run_python_block("import math\nmath.pi / 2  # phi = 1.5708 rad\n'a'\n# 'a' -- explained\n", "ok")
    assert checked == 2


# ---------------------------------------------------------------------------------------------------------------
# The sweep file format


@pytest.mark.parametrize(("section", "line", "code"), TOML_BLOCKS, ids=[_slug(s, n) for s, n, _ in TOML_BLOCKS])
def test_toml_block_is_a_valid_sweep_file(section, line, code):
    raw = tomllib.loads(code)
    spec = sweep.build_spec(raw)  # validates every cell (one-run dry run each)
    grid_cells = int(np.prod([len(v) for v in raw.get("grid", {}).values()]))
    assert len(spec.cells) == max(len(raw.get("methods", {})), 1) * grid_cells
    assert spec.trials == raw["sweep"]["trials"]


# ---------------------------------------------------------------------------------------------------------------
# Shell commands

NOT_RUN_HERE = ("pip", "pytest", "sphinx-build")  # installing, the test suite, the site (tests/test_docs.py)


def _shell_commands() -> list[list[str]]:
    cmds = []
    for _, _, code in BASH_BLOCKS:
        for line in code.splitlines():
            cur: list[str] = []
            for tok in shlex.split(line, comments=True) + ["&&"]:
                if tok in ("&&", ";", "||"):
                    if cur:
                        cmds.append(cur)
                    cur = []
                else:
                    cur.append(tok)
    return cmds


COMMANDS = _shell_commands()
#: Each distinct command once (the README and the getting-started page show the same main job).
SHALLOWRES = list({shlex.join(c): c for c in COMMANDS if c[0] == "shallowres"}.values())


def test_every_shell_command_is_run_or_known():
    """Only the install steps and the test suite itself are left out; every `shallowres` command runs below."""
    assert len(COMMANDS) >= 4, COMMANDS
    others = [c for c in COMMANDS if c[0] != "shallowres"]
    assert all(c[0] in NOT_RUN_HERE for c in others), others
    assert len(SHALLOWRES) >= 1
    assert all(c[0] == "shallowres" for c in COMMANDS if c not in others)


def _section_table(heading: str) -> list[str]:
    """The first markdown table under a heading (in whichever document has it), as lines."""
    found = [(text, m) for text in TEXTS.values() for m in [re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.M)]
             if m is not None]
    if not found:
        return []
    text, m = found[0]
    rest = text[m.end():]
    nxt = HEADING.search(rest)
    body = rest[: nxt.start()] if nxt else rest
    lines, started = [], False
    for line in body.splitlines():
        if line.startswith("|"):
            lines.append(line.strip())
            started = True
        elif started:
            break
    return lines


@pytest.mark.parametrize("argv", SHALLOWRES, ids=[" ".join(c) for c in SHALLOWRES])
def test_shallowres_command_runs(sandbox, capsys, argv):
    rc = cli.main(argv[1:])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip()
    table = _section_table(f"`{shlex.join(argv)}`")
    if table:  # the page shows this command's table: the command prints exactly those lines
        printed = {line.strip() for line in out.splitlines()}
        missing = [line for line in table if line not in printed]
        assert not missing, f"rows of the page not printed by {shlex.join(argv)}: {missing[:3]}"
    if argv[1] == "table":  # the sweep directory was written where the document says (default runs/NAME)
        assert (sandbox / "runs" / argv[2] / "summary.csv").exists()


LANDSCAPE = [c for text in TEXTS.values() for c in re.findall(r"`(shallowres landscape [^`]*)`", text)]


def test_landscape_command_in_the_text_prints_the_same_facts(capsys):
    """`shallowres landscape --k 4 --p 8 --a-star ...` 'prints the same facts' as the first Python block."""
    assert LANDSCAPE
    for command in LANDSCAPE:
        argv = shlex.split(command)
        assert cli.main(argv[1:]) == 0
        out = capsys.readouterr().out
        a_star = np.array([float(x) for x in argv[argv.index("--a-star") + 1].split(",")])
        assert f"phi_s = {theory.saddle_angle(a_star):.6f} rad" in out
        assert f"largest stable eta_a = 4 pi / (k + pi - 1) = {theory.max_stable_eta_a(a_star.size):.6g}" in out


LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", [d for d in TEXTS if d == "README.md" or d.startswith("docs/")])
def test_every_relative_link_and_image_exists(doc):
    """The README is read on GitHub, outside the Sphinx build that checks the docs' links: a moved page or figure
    would leave a dead link there unnoticed."""
    base = (ROOT / doc).parent
    targets = [t for t in LINK.findall(TEXTS[doc]) if not re.match(r"[a-z]+:", t)]
    missing = [t for t in targets if not (base / t).exists()]
    assert not missing, f"{doc}: dead links {missing}"
    if doc == "README.md":
        assert {"docs/guide/order-parameters.md", "docs/guide/architecture.md", "docs/figures/basins_flow.png"} <= set(
            targets)
