"""Fuzzed sweep configurations through the command line, in-process (``sims.cli.main``): TOML files and
``--set FIELD=VALUE`` overrides with wrong types, deep nesting, unknown keys, huge, negative, NaN and inf numbers,
unicode, empty grids and duplicate keys.

Every example either runs (exit 0; the generators keep valid sweeps tiny: a few runs of a few steps at small
``k, p``) or fails as a user error: exit code 2, exactly one line on stderr, no output left behind -- never a
traceback.  Three generators, 820 examples in all (about 45 ms each: a fifth to a third of them run a tiny sweep,
about 0.1 s of bookkeeping each).  They ran 1300 before; fewer keep the suite within its time limit: what they
found is pinned below, and CI's clean checkout has no example database, so every run draws new examples and the
search goes on from run to run:

* ``test_one_field_mutated`` (400): a valid tiny sweep with one field set (in the file, by ``--set``, in the grid,
  in a method or by a flag) to a value known to be valid or known to be invalid; an invalid one must fail naming
  the field, a valid one must run and show up in the resolved configuration.
* ``test_arbitrary_specs`` (300): a valid tiny sweep with one or two random edits anywhere (any key, any value,
  tables replaced by anything), random ``--set`` items and flags.
* ``test_raw_text_mutations`` (120): text-level damage to a valid file (duplicate keys and tables, bad bytes,
  odd number literals, splices); duplicates must be reported as invalid TOML with their line.

What the fuzzer found is pinned by ``@example`` s, ``test_found_by_fuzzing``, ``test_valid_found_by_fuzzing`` and
the tests after them; ``test_grid_execution_defects`` (xfail) records defects outside the validation code.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import re
import tempfile
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from sims import cli
from sims.runs.schedules import Schedule
from sims.studies import sweep

try:
    from sims.studies.store import HOUSEKEEPING
except ImportError:  # pragma: no cover - before the directory lock existed
    HOUSEKEEPING = frozenset()

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])

# ---------------------------------------------------------------------------------------------------------------
# Writing TOML (tomllib only reads)


class Raw(str):
    """TOML text written as is (numbers too long for Python, nesting too deep for the parser, dates)."""


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if _BARE.fullmatch(key) else toml_str(key)


def toml_value(v: Any) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(doc: dict[str, Any]) -> str:
    """Top-level tables as ``[name]`` (methods as ``[methods.LABEL]``), nested tables inline, non-tables first."""
    head, body = [], []
    for key, val in doc.items():
        if not isinstance(val, dict):
            head.append(f"{toml_key(key)} = {toml_value(val)}")
            continue
        body.append(f"[{toml_key(key)}]")
        subtables = []
        for k2, v2 in val.items():
            if key == "methods" and isinstance(v2, dict):
                subtables.append((k2, v2))
            else:
                body.append(f"{toml_key(k2)} = {toml_value(v2)}")
        for k2, v2 in subtables:
            body.append(f"[{toml_key(key)}.{toml_key(k2)}]")
            body.extend(f"{toml_key(k3)} = {toml_value(v3)}" for k3, v3 in v2.items())
    return "\n".join(head + body) + "\n"


def has_raw(v: Any) -> bool:
    if isinstance(v, Raw):
        return True
    if isinstance(v, dict):
        return any(has_raw(x) for x in v.values())
    if isinstance(v, list):
        return any(has_raw(x) for x in v)
    return False


def same(a: Any, b: Any) -> bool:
    """Equal as JSON (NaN equals NaN, tuples equal lists)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------------------
# Running the command line in-process


@dataclass
class Result:
    code: int
    out: str
    err: str
    line: str  # the error line (exit 2)
    metadata: dict | None = None  # metadata.json of a valid run
    argv: list[str] = field(default_factory=list)


def event(name: str) -> None:
    """Counted in ``--hypothesis-show-statistics`` (no-op outside a Hypothesis test)."""
    if currently_in_test_context():
        hypothesis.event(name)


def run_cli(text: str | bytes, sets: list[str] = (), flags: list[str] = ()) -> Result:
    """``shallowres sweep FILE --out DIR --quiet [flags] --set=...`` in a fresh temporary directory; checks the
    contract (exit 0 with results, or exit 2 with one line on stderr and nothing written) and returns what
    happened.  Any exception other than argparse's SystemExit propagates and fails the test."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        cfg, outdir = Path(tmp) / "spec.toml", Path(tmp) / "out"
        if isinstance(text, bytes):
            cfg.write_bytes(text)
        else:
            cfg.write_text(text, encoding="utf-8")
        argv = ["sweep", str(cfg), "--out", str(outdir), "--quiet", *flags, *(f"--set={s}" for s in sets)]
        out, err = io.StringIO(), io.StringIO()
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
        res = Result(code, out.getvalue(), err.getvalue(), "", argv=argv)
        event(f"exit {code}")
        if code == 0:
            assert (outdir / "summary.csv").is_file(), res
            assert res.out.strip(), res
            res.metadata = json.loads((outdir / "metadata.json").read_text())
            return res
        assert code == 2, res
        lines = res.err.splitlines()
        assert len(lines) == 1 and res.err.endswith("\n"), res.err[:2000]
        assert lines[0].startswith(("shallowres: error: ", "shallowres sweep: error: ")), lines[0][:500]
        assert "Traceback" not in res.err
        assert not [w for w in caught if not issubclass(w.category, DeprecationWarning)], \
            [str(w.message) for w in caught]  # a warning would be a second line on a terminal
        left = [p.name for p in outdir.iterdir() if p.name not in HOUSEKEEPING] if outdir.exists() else []
        assert not left, left
        res.line = lines[0]
        event("error: " + re.sub(r"'.*|\d+.*|got .*", "", lines[0].split("error: ", 1)[1])[:40])
        return res


# ---------------------------------------------------------------------------------------------------------------
# Values

MODELS = ("resnet", "cnn", "cnn-unnormalized")
ALGORITHMS = ("gd", "sgd", "gd-fixed")
KINDS = sweep.SCHEDULE_KINDS
PI = math.pi
ETA_A_ABS_MAX = 1.9  # below the stability limit 4 pi / (k + pi - 1) for every k <= 4
ETA_A_REL_MAX = 0.95  # relative to 4 pi / (k + 2 pi - 2): always below the limit

# Every character UTF-8 can encode (all but the surrogates): the same intervals as ``codec="utf-8"``, which costs
# hypothesis 1.3 s per process to compute from the codec (measured), once a fresh checkout has no cache of it.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
ODD_CHARS = list("\n\r\t\x00\x1b\x7f\x85\u2028\u2029\ufeff\"'\\.=[]{}#/ ") + ["é", "ß", "日", "🙂", "\u0301"]
ODD_TEXT = st.text(st.sampled_from(ODD_CHARS), min_size=1, max_size=6)
ANY_TEXT = TEXT | ODD_TEXT
HUGE_INT = Raw("9" * 5000)  # more digits than Python converts to int by default
DATES = st.sampled_from([Raw("1979-05-27T07:32:00Z"), Raw("1979-05-27"), Raw("07:32:00"),
                         Raw("1979-05-27T00:32:00.999999-07:00")])
DEEP = st.integers(2, 700).map(lambda n: Raw("[" * n + "]" * n))  # beyond ~300: deeper than the parser goes
DEEP_TABLE = st.integers(2, 700).map(lambda n: Raw("{a = " * n + "1" + " }" * n))
SCALARS = st.one_of(ANY_TEXT, st.booleans(), st.integers(), st.floats())
#: never a number (nor a bool, a string or anything else a scalar field takes)
CONTAINERS = st.one_of(st.lists(SCALARS, max_size=3), st.dictionaries(ANY_TEXT, SCALARS, max_size=2), DEEP,
                       DEEP_TABLE)
NON_NUMBER = st.one_of(ANY_TEXT, st.booleans(), DATES, CONTAINERS)
SPECIAL_NUMBERS = [math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, 10**400, -(10**400), 2**63, 2**64,
                   HUGE_INT]
JUNK = st.one_of(SCALARS, DATES, CONTAINERS, st.sampled_from(SPECIAL_NUMBERS))


def fits_float(x: Any) -> bool:
    try:
        float(x)
    except OverflowError:
        return False
    return True


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not isinstance(x, Raw)


def bad_int(lo: int, hi: int) -> st.SearchStrategy:
    return st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1), st.sampled_from(
        [lo - 1, hi + 1, 10**400, -(10**400), HUGE_INT]), st.floats(), NON_NUMBER)


def bad_float(invalid) -> st.SearchStrategy:
    """Numbers (ints too) that are ``invalid``, never-numbers, and ints too large for a float."""
    candidates = st.one_of(st.floats(), st.integers(), st.sampled_from(SPECIAL_NUMBERS))
    return st.one_of(candidates.filter(lambda x: isinstance(x, Raw) or not fits_float(x) or invalid(float(x))),
                     NON_NUMBER)


def bad_bool() -> st.SearchStrategy:
    return st.one_of(st.integers(), st.floats(), ANY_TEXT, st.sampled_from(["true", "false", "yes", "no"]),
                     DATES, CONTAINERS)


def bad_choice(choices) -> st.SearchStrategy:
    return st.one_of(ANY_TEXT.filter(lambda s: s not in choices), st.integers(), st.floats(), st.booleans(),
                     st.lists(st.sampled_from(choices), min_size=1, max_size=2), DATES, CONTAINERS)


# ---------------------------------------------------------------------------------------------------------------
# A valid tiny sweep


def _eta(draw, name: str, rel: bool) -> tuple[str, float]:
    a = name.startswith("eta_a")
    if rel:
        return f"{name}_rel", draw(st.floats(0, ETA_A_REL_MAX if a else 1.0))
    return name, draw(st.floats(0, ETA_A_ABS_MAX if a else 1.0))


@st.composite
def schedules(draw, kind: str, steps: int) -> dict:
    rel = draw(st.booleans())
    s: dict[str, Any] = {"kind": kind}

    def put(name):
        key, val = _eta(draw, name, rel)
        s[key] = val

    if kind in ("constant", "perturbed", "prescribed-warmup"):
        put("eta_w")
        put("eta_a")
    if kind in ("two-stage", "layerwise"):
        s["T1"] = draw(st.integers(0, min(3, steps)))
        for name in (("eta_w1",) if kind == "two-stage" else ()) + ("eta_a1", "eta_w2", "eta_a2"):
            put(name)
    if kind == "perturbed":
        s["noise"] = draw(st.floats(0, 0.05))
        if draw(st.booleans()):
            s["half_life"] = draw(st.floats(0.01, 1e6) | st.just(math.inf) | st.integers(1, 10**6))
        if draw(st.booleans()):
            s["noise_a"] = draw(st.floats(0, 0.05))
    if kind == "prescribed-warmup":
        if draw(st.booleans()):
            key, val = ("eta_a_warmup_rel", draw(st.floats(0.05, ETA_A_REL_MAX))) if draw(st.booleans()) else \
                ("eta_a_warmup", draw(st.floats(0.05, ETA_A_ABS_MAX)))
            s[key] = val
        if draw(st.booleans()):
            s["safety"] = draw(st.floats(0, 1, exclude_min=True))
    if kind == "piecewise":
        n = draw(st.integers(1, 3))
        budget = steps
        segs = []
        for i in range(n):
            seg: dict[str, Any] = {}
            if i < n - 1:
                seg["steps"] = draw(st.integers(0, budget))
                budget -= seg["steps"]
            for name in ("eta_w", "eta_a"):
                key, val = _eta(draw, name, draw(st.booleans()))
                seg[key] = val
            if draw(st.booleans()):
                seg["noise_w"] = draw(st.floats(0, 0.05))
            segs.append(seg)
        s["segments"] = segs
    return s


@st.composite
def teachers(draw, k: int, p: int) -> dict:
    if draw(st.integers(0, 4)) == 4:
        t: dict[str, Any] = {"fixed_seed": draw(st.integers(0, 2**63 - 1))}
        if k >= 2 and draw(st.booleans()):
            t["require_spurious"] = draw(st.booleans())
        return t
    w = draw(st.sampled_from(("sphere", "cap", "angle")))
    t = {"w": w}
    if w == "cap" or draw(st.booleans()):
        t["phi_max"] = draw(st.floats(0, PI, exclude_min=True))
    if w == "angle" or draw(st.booleans()):
        t["angle"] = draw(st.sampled_from([0.0, PI]) if p == 1 else st.floats(0, PI))
    a = draw(st.sampled_from(("gaussian", "ones", "fixed")))
    t["a"] = a
    if a == "fixed":
        t["a_value"] = draw(st.lists(st.floats(-3, 3), min_size=k, max_size=k))
    if a == "gaussian" and k >= 2 and draw(st.booleans()):
        t["require_spurious"] = draw(st.booleans())
    return t


@st.composite
def inits(draw, model: str, p: int) -> dict:
    init: dict[str, Any] = {}
    if draw(st.booleans()):
        unit = ("sphere",) if model != "resnet" or p > 1 else ()  # the ResNet's w0 = -v at p = 1
        init["w"] = draw(st.sampled_from(unit + ("gaussian",) + (("zero",) if model == "resnet" else ())))
    if draw(st.booleans()):
        init["w_scale"] = draw(st.floats(1e-3, 10))
    if draw(st.booleans()):
        init["a"] = draw(st.sampled_from(("ball", "gaussian")))
    if draw(st.booleans()):
        init["a_radius"] = draw(st.floats(0, 5))
    return init


def rate_windows() -> st.SearchStrategy:
    """Three loss levels hi > mid > lo > 0."""
    factor = st.floats(1e-3, 0.9)
    return st.tuples(st.floats(1e-6, 0.5), factor, factor).map(lambda t: [t[0], t[0] * t[1], t[0] * t[1] * t[2]])


NAME_CHARS = st.characters(categories=("L", "N", "Pd", "Zs"), exclude_characters="/\\")  # all UTF-8 (no Cs)
GOOD_NAMES = st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda s: s.isprintable() and s not in (".", ".."))


@st.composite
def tiny_spec(draw) -> dict:
    """A valid sweep of at most a few cells, 1-3 runs each, of at most 15 steps at k, p <= 4."""
    k, p, steps = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(3, 15))
    model = draw(st.sampled_from(MODELS))
    kinds = [x for x in KINDS if not (x == "prescribed-warmup" and model == "cnn-unnormalized")]
    base = {"model": model, "k": k, "p": p, "steps": steps, "algorithm": draw(st.sampled_from(ALGORITHMS)),
            "batch_size": draw(st.integers(1, 4)), "n_record": draw(st.integers(2, 8)),
            "teacher": draw(teachers(k, p)), "init": draw(inits(model, p)),
            "schedule": draw(schedules(draw(st.sampled_from(kinds)), steps))}
    if draw(st.booleans()):
        base["tolerances"] = {"loss_tol": draw(st.floats(0, 1e-6)), "rate_window": draw(rate_windows())}
    head = {"name": draw(GOOD_NAMES), "trials": draw(st.integers(1, 3)), "seed": draw(st.integers(0, 2**63 - 1))}
    if draw(st.booleans()):
        head["chunk"] = draw(st.integers(1, 3))
    doc: dict[str, Any] = {"sweep": head, "base": base}
    if draw(st.booleans()):
        doc["grid"] = {"n_record": [2, 5]}
    n_methods = draw(st.integers(0, 2))
    if n_methods:
        labels = draw(st.lists(TEXT, min_size=n_methods, max_size=n_methods, unique=True))
        doc["methods"] = {label: ({} if i == 0 else {"algorithm": "gd", "n_record": 3}) for i, label in
                          enumerate(labels)}
    return doc


def stage_steps(sched: dict) -> int:
    if "T1" in sched:
        return sched["T1"]
    return sum(s.get("steps", 0) for s in sched.get("segments", [])[:-1])


# ---------------------------------------------------------------------------------------------------------------
# One field at a time: what is valid, what is not, and what the error must name


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]  # ("sweep", "trials") or ("base", "schedule", "eta_w")
    needle: str  # regex the error line must match
    good: Any  # spec -> strategy of valid values, or None
    bad: Any  # spec -> strategy of invalid values

    @property
    def dotted(self) -> str:
        return ".".join(self.path[1:])


def _k_ok(spec):
    t = spec["base"]["teacher"]
    if "a_value" in t and t.get("a") == "fixed":
        return st.just(len(t["a_value"]))
    return st.integers(2 if t.get("require_spurious") else 1, 4)


def _resnet_sphere(spec, *, model=None, p=None, init_w=None) -> bool:
    """The ResNet from a unit w0 at p = 1: w0 = -v in half the runs (refused)."""
    base = spec["base"]
    w = init_w or base["init"].get("w", "zero" if (model or base["model"]) == "resnet" else "sphere")
    return (model or base["model"]) == "resnet" and (p or base["p"]) == 1 and w == "sphere"


def _p_ok(spec):
    t = spec["base"]["teacher"]
    odd_angle = t.get("w") == "angle" and t.get("angle", PI / 4) not in (0.0, PI)
    return st.integers(2 if odd_angle or _resnet_sphere(spec, p=1) else 1, 4)


def _models_ok(spec):
    base = spec["base"]
    ok = [m for m in MODELS if not (base["init"].get("w") == "zero" and m != "resnet")
          and not (base["schedule"]["kind"] == "prescribed-warmup" and m == "cnn-unnormalized")
          and not _resnet_sphere(spec, model=m)]
    return st.sampled_from(ok)


def _init_w_ok(spec):
    return st.sampled_from([w for w in ("sphere", "gaussian") if not _resnet_sphere(spec, init_w=w)])


def _number_field(path, invalid, good, needle=None):
    return Field(path, needle or re.escape(path[-1]), lambda spec: good, lambda spec: bad_float(invalid))


def _outside(lo, hi, *, lo_open=False):
    """Invalid unless ``lo <= x <= hi`` (``lo < x`` with ``lo_open``); NaN is outside."""
    return lambda x: not ((lo < x if lo_open else lo <= x) and x <= hi)


def _not_rate(x):
    return not (math.isfinite(x) and x >= 0)


SWEEP_FIELDS = [
    Field(("sweep", "trials"), "trials", lambda s: st.integers(1, 3), lambda s: bad_int(1, 10**9)),
    Field(("sweep", "seed"), "seed", lambda s: st.integers(0, 2**63 - 1), lambda s: bad_int(0, 2**63 - 1)),
    Field(("sweep", "chunk"), "chunk", lambda s: st.integers(1, 4), lambda s: bad_int(1, 10**7)),
    Field(("sweep", "name"), "name", lambda s: GOOD_NAMES,
          lambda s: st.one_of(st.integers(), st.floats(), st.booleans(), CONTAINERS, DATES,
                              st.sampled_from(["", ".", "..", "a/b", "\\", "a\nb", "x" * 101]))),
    Field(("sweep", "description"), "description", lambda s: TEXT,
          lambda s: st.one_of(st.integers(), st.floats(), st.booleans(), CONTAINERS, DATES)),
]

BASE_FIELDS = [
    Field(("base", "k"), r"\bk\b", _k_ok, lambda s: bad_int(1, 10**6)),
    Field(("base", "p"), r"\bp\b", _p_ok, lambda s: bad_int(1, 10**6)),
    Field(("base", "steps"), r"\bsteps\b|\bT1\b", lambda s: st.integers(stage_steps(s["base"]["schedule"]), 15),
          lambda s: bad_int(0, 10**9)),
    Field(("base", "n_record"), "n_record", lambda s: st.integers(2, 64), lambda s: bad_int(2, 100_000)),
    Field(("base", "batch_size"), "batch_size", lambda s: st.integers(1, 4), lambda s: bad_int(1, 10**6)),
    Field(("base", "model"), "model", _models_ok, lambda s: bad_choice(MODELS)),
    Field(("base", "algorithm"), "algorithm", lambda s: st.sampled_from(ALGORITHMS), lambda s: bad_choice(ALGORITHMS)),
    Field(("base", "allow_unstable"), "allow_unstable", lambda s: st.booleans(), lambda s: bad_bool()),
    Field(("base", "init", "w"), r"init\.w\b", _init_w_ok, lambda s: bad_choice(("zero", "sphere", "gaussian"))),
    Field(("base", "init", "a"), r"init\.a\b", lambda s: st.sampled_from(("ball", "gaussian")),
          lambda s: bad_choice(("ball", "gaussian"))),
    _number_field(("base", "init", "w_scale"), lambda x: not (math.isfinite(x) and x >= 1e-100), st.floats(1e-3, 10)),
    _number_field(("base", "init", "a_radius"), _not_rate, st.floats(0, 5)),
    _number_field(("base", "tolerances", "loss_tol"), _not_rate, st.floats(0, 1e-3)),
    _number_field(("base", "tolerances", "grad_tol"), _not_rate, st.floats(0, 1e-3)),
    _number_field(("base", "tolerances", "eps"), _not_rate, st.floats(0, 1e-3)),
    _number_field(("base", "tolerances", "linear_rtol"), _not_rate, st.floats(0, 1)),
    _number_field(("base", "tolerances", "divergence"), lambda x: not x > 0,
                  st.floats(1e-3, 1e300) | st.just(math.inf)),
    Field(("base", "tolerances", "stop_trapped"), "stop_trapped", lambda s: st.booleans(), lambda s: bad_bool()),
    Field(("base", "tolerances", "rate_window"), "rate_window", lambda s: rate_windows(),
          lambda s: st.one_of(st.lists(st.floats(1e-9, 1), max_size=5).filter(
              lambda xs: len(xs) != 3 or not xs[0] > xs[1] > xs[2]),
              st.lists(st.sampled_from([math.nan, math.inf, -1.0, 0.0, True, "x", 10**400]), min_size=3,
                       max_size=3),
              SCALARS, DATES, st.dictionaries(TEXT, SCALARS, max_size=2))),
]

SAMPLER_TEACHER_FIELDS = [
    Field(("base", "teacher", "w"), r"teacher\.w\b", lambda s: st.sampled_from(("sphere", "cap")),
          lambda s: bad_choice(("sphere", "cap", "angle"))),
    Field(("base", "teacher", "a"), r"teacher\.a\b", lambda s: st.just("gaussian"),
          lambda s: bad_choice(("gaussian", "ones", "fixed"))),
    _number_field(("base", "teacher", "phi_max"), _outside(0, PI, lo_open=True), st.floats(0, PI, exclude_min=True)),
    Field(("base", "teacher", "angle"), "angle",
          lambda s: st.sampled_from([0.0, PI]) if s["base"]["p"] == 1 else st.floats(0, PI),
          lambda s: bad_float(_outside(0, PI))),
]
FIXED_TEACHER_FIELDS = [
    Field(("base", "teacher", "fixed_seed"), "fixed_seed", lambda s: st.integers(0, 2**63 - 1),
          lambda s: bad_int(0, 2**63 - 1)),
]


def _require_spurious_field(spec):
    t = spec["base"]["teacher"]
    ok_true = spec["base"]["k"] >= 2 and ("fixed_seed" in t or t.get("a", "gaussian") == "gaussian")
    return Field(("base", "teacher", "require_spurious"), "require_spurious",
                 lambda s: st.booleans() if ok_true else st.just(False), lambda s: bad_bool())


def _a_value_field(spec):
    k = spec["base"]["k"]
    return Field(("base", "teacher", "a_value"), "a_value",
                 lambda s: st.lists(st.floats(-3, 3), min_size=k, max_size=k),
                 lambda s: st.one_of(
                     st.lists(st.floats(-3, 3), max_size=6).filter(lambda xs: len(xs) != k),
                     st.lists(st.sampled_from([math.nan, math.inf, -math.inf, "x", True, 10**400, [1.0]]),
                              min_size=k, max_size=k),
                     SCALARS, DATES, st.dictionaries(TEXT, SCALARS, max_size=2)))


def _schedule_fields(spec) -> list[Field]:
    sched = spec["base"]["schedule"]
    steps = spec["base"]["steps"]
    out = [Field(("base", "schedule", "kind"), r"schedule\.kind", None, lambda s: bad_choice(KINDS))]
    for key in sched:
        path = ("base", "schedule", key)
        stem = key.removesuffix("_rel")
        rel = key.endswith("_rel")
        limit = 1.7 if rel else 4.01  # an eta_a beyond the stability limit for every k
        if key.startswith("eta_a_warmup"):  # 0 does not contract a
            good = st.floats(0.05, ETA_A_REL_MAX if rel else ETA_A_ABS_MAX)
            out.append(Field(path, "eta_a", lambda s, g=good: g,
                             lambda s, lim=limit: bad_float(lambda x, lim=lim: not 0 < x < lim)))
        elif key.startswith("eta_a"):
            good = st.floats(0, ETA_A_REL_MAX if rel else ETA_A_ABS_MAX)
            out.append(Field(path, "eta_a", lambda s, g=good: g,  # the stability limit speaks of eta_a
                             lambda s, lim=limit: bad_float(lambda x, lim=lim: not 0 <= x < lim)))
        elif key.startswith("eta_w"):
            out.append(Field(path, re.escape(stem), lambda s: st.floats(0, 1), lambda s: bad_float(_not_rate)))
        elif key == "T1":
            out.append(Field(path, r"\bT1\b", lambda s: st.integers(0, steps),
                             lambda s: st.one_of(st.integers(max_value=-1), st.integers(steps + 1, 10**30),
                                                 st.floats(), NON_NUMBER)))
        elif key in ("noise", "noise_a"):
            out.append(_number_field(path, _not_rate, st.floats(0, 0.05)))
        elif key == "half_life":
            out.append(_number_field(path, lambda x: not x >= 1e-3, st.floats(0.01, 1e6) | st.just(math.inf)))
        elif key == "safety":
            out.append(_number_field(path, _outside(0, 1, lo_open=True), st.floats(0, 1, exclude_min=True)))
    for key in sched:  # both the absolute and the relative form of one step size
        if key.startswith("eta"):
            other = key.removesuffix("_rel") if key.endswith("_rel") else key + "_rel"
            out.append(Field(("base", "schedule", other), re.escape(key.removesuffix("_rel")), None,
                             lambda s: st.floats(0, 0.5)))
    if sched["kind"] == "piecewise":

        def bad_segments(s):
            seg = {"eta_w": 0.1, "eta_a": 0.1}
            return st.one_of(
                st.just([]), SCALARS, DATES, st.lists(SCALARS, min_size=1, max_size=2),
                st.builds(lambda v: [dict(seg, steps=v), seg], st.integers(max_value=-1) | st.integers(
                    steps + 1, 10**30) | st.floats() | NON_NUMBER),
                st.just([seg, seg]),  # only the last segment may leave out its steps
                st.builds(lambda key, v: [dict(seg, steps=0, **{key: v}), seg],
                          st.sampled_from(["eta_w", "eta_a", "noise_w", "noise_a"]), bad_float(_not_rate)),
            )

        out.append(Field(("base", "schedule", "segments"), r"segments|stage lengths|eta_a|schedule nests", None,
                         bad_segments))
    return out


def _fields(spec) -> list[Field]:
    t = spec["base"]["teacher"]
    out = SWEEP_FIELDS + BASE_FIELDS + _schedule_fields(spec)
    if "fixed_seed" in t:
        out += FIXED_TEACHER_FIELDS
    else:
        out += SAMPLER_TEACHER_FIELDS
        if t.get("a") == "fixed":
            out.append(_a_value_field(spec))
    out.append(_require_spurious_field(spec))
    if spec["base"]["model"] != "resnet":  # a CNN filter cannot start at zero
        out.append(Field(("base", "init", "w"), r"init\.w\b", None, lambda s: st.just("zero")))
    elif spec["base"]["p"] == 1:  # nor the ResNet's at w0 = -v
        out.append(Field(("base", "init", "w"), r"init\.w\b", None, lambda s: st.just("sphere")))
    return out


def _set_path(d: dict, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[path[-1]] = value


def _get_path(d: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        d = d.get(part, MISSING) if isinstance(d, dict) else MISSING
    return d


MISSING = object()


def _drop(d: dict, path: tuple[str, ...]) -> None:
    for part in path[:-1]:
        d = d.get(part)
        if not isinstance(d, dict):
            return
    d.pop(path[-1], None)


def _cli_text(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else toml_value(value)


def place(spec: dict, fld: Field, value: Any, where: str) -> tuple[dict, list[str], list[str]]:
    """The sweep file, ``--set`` items and flags that give ``fld`` the value ``value`` in every cell (``file``,
    ``set``, ``flag``) or in some cells (``grid``, ``method``)."""
    doc = copy.deepcopy(spec)
    sets: list[str] = []
    flags: list[str] = []
    section, rest = fld.path[0], fld.path[1:]
    if section == "base" and where in ("file", "method"):  # nothing else may set this field
        doc.get("grid", {}).pop(fld.dotted, None)
        for over in doc.get("methods", {}).values():
            _drop(over, rest)
    if where == "file":
        _set_path(doc[section], rest, value)
    elif where == "set":
        sets.append(f"{fld.dotted}={toml_value(value)}")
    elif where == "flag":
        flags.append(f"--{rest[0]}={_cli_text(value)}")
    elif where == "grid":
        doc.setdefault("grid", {})[fld.dotted] = [value]
    elif where == "method":
        methods = doc.setdefault("methods", {})
        label = next(iter(methods), "m")
        over = methods.setdefault(label, {})
        if rest[0] == "schedule":  # a method's schedule replaces the base schedule as a whole
            over["schedule"] = copy.deepcopy(doc["base"]["schedule"])
        _set_path(over, rest, value)
    return doc, sets, flags


def _places(fld: Field) -> list[str]:
    if fld.path[0] == "sweep":
        return ["file", "set"] + (["flag"] if fld.path[1] in ("trials", "seed", "chunk") else [])
    return ["file", "set", "grid", "method"]


PARSE_LEVEL = r"not valid TOML|nest"  # values the TOML parser itself refuses (a line is named) or nesting


@st.composite
def one_field_cases(draw):
    spec = draw(tiny_spec())
    rnd = random.Random(draw(st.integers(0, 2**64 - 1)))  # uniform choices (sampled_from favours the first)
    fld = rnd.choice(_fields(spec))
    valid = fld.good is not None and rnd.random() < 0.3
    value = draw(fld.good(spec) if valid else fld.bad(spec))
    where = rnd.choice(_places(fld))
    return spec, fld, value, where, valid


def check_one_field(spec, fld, value, where, valid) -> Result:
    doc, sets, flags = place(spec, fld, value, where)
    text = toml_document(doc)
    if not has_raw(doc):  # the file says what the generator meant
        assert same(tomllib.loads(text), doc)
    res = run_cli(text, sets, flags)
    if not valid:
        assert res.code == 2, (fld.path, value, where, res.err[:300])
        needle = fld.needle
        if isinstance(value, Raw) or (isinstance(value, int) and not fits_float(value)):
            needle = f"(?:{needle})|{PARSE_LEVEL}"
        assert re.search(needle, res.line), (needle, res.line[:500])
        if isinstance(value, str) and not isinstance(value, Raw) and not value.isprintable():
            assert value not in res.line  # shown escaped (repr), so the error stays one line
        return res
    assert res.code == 0, (fld.path, value, where, res.err[:500])
    md = res.metadata
    if fld.path[0] == "sweep":
        if fld.path[1] != "description":
            assert same(md[fld.path[1]], value)
    else:
        got = [_get_path(c["params"], fld.path[1:]) for c in md["cells"]]
        assert any(same(g, value) for g in got), (got, value)
        if where in ("file", "set"):
            assert all(same(g, value) for g in got), (got, value)
    return res


# 400: a tiny spec offers 31 to 41 fields, 139 (field, place) pairs on average (measured over 50 specs), so each
# pair is still drawn about 3 times per run, a valid value about once.
@settings(FUZZ, max_examples=400)
@given(one_field_cases())
@example(({"sweep": {"trials": 1}, "base": {"k": 2, "p": 2, "steps": 3, "teacher": {}, "init": {}, "schedule": {
    "kind": "constant", "eta_w": 0.1, "eta_a": 0.1}}}, BASE_FIELDS[0], HUGE_INT, "set", False))
def test_one_field_mutated(case):
    check_one_field(*case)


# ---------------------------------------------------------------------------------------------------------------
# Anything goes

SIZE_KEYS = {"trials": (1, 3, 1, 10**9), "chunk": (1, 3, 1, 10**7), "steps": (0, 12, 0, 10**9),
             "k": (1, 4, 1, 10**6), "p": (1, 4, 1, 10**6), "batch_size": (1, 4, 1, 10**6)}
TABLE_KEYS = {
    "teacher": ("w", "phi_max", "angle", "a", "a_value", "require_spurious", "fixed_seed"),
    "init": ("w", "w_scale", "a", "a_radius"),
    "schedule": ("kind", "eta_w", "eta_a", "eta_w_rel", "eta_a_rel", "T1", "eta_w1", "eta_a1", "eta_w2", "eta_a2",
                 "eta_a1_rel", "noise", "half_life", "noise_a", "eta_a_warmup", "safety", "segments"),
    "tolerances": ("loss_tol", "grad_tol", "eps", "divergence", "rate_window", "linear_rtol", "stop_trapped"),
}
HINTS = {
    "model": st.sampled_from(MODELS), "algorithm": st.sampled_from(ALGORITHMS), "allow_unstable": st.booleans(),
    "n_record": st.integers(2, 10), "seed": st.integers(0, 2**63 - 1), "name": GOOD_NAMES,
    "kind": st.sampled_from(KINDS), "T1": st.integers(0, 5), "noise": st.floats(0, 0.1),
    "half_life": st.floats(0.5, 100), "safety": st.floats(0, 1), "eta_a_warmup": st.floats(0, 2),
    "w": st.sampled_from(("sphere", "cap", "angle", "zero", "gaussian")),
    "a": st.sampled_from(("gaussian", "ones", "fixed", "ball")), "phi_max": st.floats(0, 3.2),
    "angle": st.floats(0, 3.2), "a_value": st.lists(st.floats(-2, 2), min_size=1, max_size=4),
    "require_spurious": st.booleans(), "fixed_seed": st.integers(0, 100), "w_scale": st.floats(0, 3),
    "a_radius": st.floats(0, 3), "rate_window": rate_windows(), "stop_trapped": st.booleans(),
    "segments": st.lists(st.fixed_dictionaries({"eta_w": st.floats(0, 1), "eta_a": st.floats(0, 1)},
                                               optional={"steps": st.integers(-1, 6)}), max_size=3),
}
for _key in ("eta_w", "eta_a", "eta_w_rel", "eta_a_rel", "eta_w1", "eta_a1", "eta_w2", "eta_a2", "eta_a1_rel",
             "loss_tol", "grad_tol", "eps", "divergence", "linear_rtol", "noise_a"):
    HINTS[_key] = st.floats(0, 1)
DOTTED = list(sweep.BASE_KEYS) + [f"{t}.{k}" for t, keys in TABLE_KEYS.items() for k in keys]
GRID_KEYS = list(DOTTED)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, n: int = 4) -> st.SearchStrategy:
    """``good`` n times out of n + 1, else ``bad`` (so that most examples get past the first check)."""
    return st.integers(0, n).flatmap(lambda i: bad if i == n else good)  # the simplest draw (0) is good


def value_for(key: str) -> st.SearchStrategy:
    """Anything, except that a size (trials, steps, k, p, ...) is small or invalid: valid runs stay tiny."""
    leaf = key.split(".")[-1]
    if leaf in SIZE_KEYS:
        small_lo, small_hi, lo, hi = SIZE_KEYS[leaf]
        return mostly(st.integers(small_lo, small_hi), bad_int(lo, hi))
    if leaf in TABLE_KEYS:
        return mostly(tables(leaf), JUNK)
    hint = HINTS.get(leaf)
    return JUNK if hint is None else mostly(hint, JUNK)


KNOWN_KEYS = {("sweep",): tuple(sweep.SWEEP_KEYS), ("base",): sweep.BASE_KEYS, ("grid",): tuple(GRID_KEYS),
              **{("base", t): keys for t, keys in TABLE_KEYS.items()}}


def some_key(parent: tuple[str, ...]) -> st.SearchStrategy:
    """A key for the table at ``parent``: mostly a known one."""
    if parent[:1] == ("methods",):
        parent = ("base",) + parent[2:]
    known = KNOWN_KEYS.get(parent)
    return mostly(st.sampled_from(known), ANY_TEXT, 6) if known else ANY_TEXT


@st.composite
def tables(draw, name: str) -> dict:
    keys = draw(st.lists(some_key(("base", name)), max_size=5, unique=True))
    if name == "schedule" and draw(st.integers(0, 3)) < 3:
        keys = ["kind"] + [k for k in keys if k != "kind"]
    return {key: draw(value_for(key)) for key in keys}


def _paths(d: dict, prefix: tuple = ()) -> list[tuple[str, ...]]:
    out = []
    for key, val in d.items():
        out.append(prefix + (key,))
        if isinstance(val, dict):
            out += _paths(val, prefix + (key,))
    return out


@st.composite
def chaos_doc(draw) -> dict:
    """A valid tiny sweep with one to four random edits: a field set to anything, a key added (mostly a known
    one), a key removed, a grid of any values, a table replaced by anything."""
    doc = draw(tiny_spec())
    for _ in range(draw(st.integers(1, 2))):
        what = draw(st.sampled_from(["set"] * 10 + ["add"] * 4 + ["remove"] * 2 + ["grid"] * 2 + ["table"]))
        paths = _paths(doc)
        if what == "set" and paths:
            path = draw(st.sampled_from(paths))
            _set_path(doc, path, draw(value_for(".".join(path[1:]) if path[0] == "grid" else path[-1])))
        elif what == "add":
            parents = [()] + [q for q in paths if isinstance(_get_path(doc, q), dict)]
            parent = draw(st.sampled_from(parents))
            key = draw(some_key(parent))
            _set_path(doc, parent + (key,), draw(value_for(key)))
        elif what == "remove" and paths:
            path = draw(st.sampled_from(paths))
            if path not in (("sweep", "trials"), ("base", "steps")):  # the defaults are 1000 runs x 20000 steps
                _drop(doc, path)
        elif what == "grid" and isinstance(doc.get("grid", {}), dict):
            key = draw(some_key(("grid",)))
            doc.setdefault("grid", {})[key] = draw(mostly(st.lists(value_for(key), max_size=2), JUNK))
        elif what == "table":
            doc[draw(st.sampled_from(["sweep", "base", "grid", "methods"]))] = draw(JUNK)
    return doc


@st.composite
def chaos(draw) -> tuple[dict, list[str], list[str]]:
    doc = draw(chaos_doc())
    sets = []
    for _ in range(draw(st.integers(0, 2))):
        key = draw(mostly(st.sampled_from(DOTTED + list(sweep.SWEEP_KEYS)), ANY_TEXT, 3))
        choice = draw(st.integers(0, 9))
        if choice == 9:
            sets.append(key.replace("=", ""))  # no '='
        elif choice == 8:
            sets.append(f"{key}={draw(ANY_TEXT)}")  # mostly not TOML: taken as a string
        else:
            sets.append(f"{key}={toml_value(draw(value_for(key)))}")
    flags = []
    for flag in ("trials", "seed", "chunk"):
        if draw(st.integers(0, 19)) == 19:
            flags.append(f"--{flag}={_cli_text(draw(mostly(value_for(flag), ANY_TEXT)))}")
    return doc, sets, flags


@settings(FUZZ, max_examples=300)
@given(chaos())
@example(({"sweep": [], "base": {"steps": 3}}, [], []))
@example(({"sweep": {"trials": 1}, "base": {"steps": 3, "k": 2, "p": 2}, "grid": 5}, [], []))
@example(({"sweep": {"trials": 1}, "base": {"steps": 3, "k": 2, "p": 2}, "methods": {"a\nb": 3}}, [], []))
@example(({"sweep": {"trials": 1}, "base": {"steps": 3, "k": 2, "p": 2}, "grid": {"schedule.\n": []}}, [], []))
@example(({"sweep": {"trials": 1}, "base": {"steps": 3, "k": 2, "p": 2, "init": [1]}}, [], []))
@example(({"sweep": {"trials": 1}, "base": {"steps": 3, "k": 2, "p": 2}}, ["steps=" + "[" * 600 + "]" * 600], []))
def test_arbitrary_specs(case):
    doc, sets, flags = case
    run_cli(toml_document(doc), sets, flags)


# ---------------------------------------------------------------------------------------------------------------
# Damaged text


def _dup_line(text: str, i: int) -> str | None:
    lines = text.splitlines()
    keyed = [j for j, line in enumerate(lines) if " = " in line and not line.startswith("[")]
    if not keyed:
        return None
    j = keyed[i % len(keyed)]
    return "\n".join(lines[: j + 1] + [lines[j]] + lines[j + 1:]) + "\n"


def _dup_table(text: str, i: int) -> str | None:
    headers = [line for line in text.splitlines() if line.startswith("[")]
    return text + "\n" + headers[i % len(headers)] + "\n" if headers else None


def _dup_inline(text: str, i: int) -> str | None:
    m = re.search(r"^schedule = \{", text, re.M)
    return text[: m.end()] + 'kind = "constant", ' + text[m.end():] if m else None


def _dotted_into_inline(text: str, i: int) -> str | None:
    m = re.search(r"^\[base\]\n", text, re.M)
    return text[: m.end()] + 'schedule.kind = "constant"\n' + text[m.end():] if m else None


DUPLICATES = {"key": _dup_line, "table": _dup_table, "inline": _dup_inline, "dotted": _dotted_into_inline}
NUMBER_LITERALS = ["nan", "inf", "-inf", "+inf", "1e400", "-0", "0x7fffffffffffffff", "0o7", "0b101", "1_0",  # small
                   "9" * 5000, "1979-05-27", "[" * 600 + "]" * 600, "{}", "[]", '""', "true", "1.5", "-1"]


@st.composite
def damaged(draw) -> tuple[str | bytes, str]:
    text = toml_document(draw(tiny_spec()))
    kind = draw(st.sampled_from(["duplicate", "duplicate", "number", "insert", "splice", "truncate", "bytes",
                                 "bom", "crlf"]))
    i = draw(st.integers(0, 10**6))
    if kind == "duplicate":
        how = draw(st.sampled_from(sorted(DUPLICATES)))
        out = DUPLICATES[how](text, i)
        return (out, "duplicate") if out is not None else (text, "valid")
    if kind == "number":
        spots = list(re.finditer(r"(?<== )-?[0-9][0-9.e+-]*", text))
        if not spots:
            return text, "valid"
        m = spots[i % len(spots)]
        return text[: m.start()] + draw(st.sampled_from(NUMBER_LITERALS)) + text[m.end():], "any"
    if kind == "insert":
        lines = text.splitlines()
        j = i % (len(lines) + 1)
        return "\n".join(lines[:j] + [draw(ANY_TEXT)] + lines[j:]) + "\n", "any"
    if kind == "splice":
        a = i % len(text)
        b = min(len(text), a + draw(st.integers(0, 20)))
        return text[:a] + draw(ANY_TEXT) + text[b:], "any"
    if kind == "truncate":
        return text[: i % len(text)], "any"
    if kind == "bytes":
        raw = text.encode()
        j = i % len(raw)
        return raw[:j] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + raw[j:], "bytes"
    if kind == "bom":
        return "\ufeff" + text, "any"
    return text.replace("\n", "\r\n"), "valid"


@settings(FUZZ, max_examples=120)
@given(damaged())
@example(("[sweep]\ntrials = 1\n[base]\nk = 2\nk = 2\n", "duplicate"))
@example((b"[sweep]\ntrials = 1\xff\n", "bytes"))
@example(("[sweep]\ntrials = " + "9" * 5000 + "\n", "any"))
@example(("[base]\nsteps = " + "[" * 600 + "]" * 600 + "\n", "any"))
def test_raw_text_mutations(case):
    text, expect = case
    res = run_cli(text)
    if expect == "duplicate":
        assert res.code == 2 and "is not valid TOML" in res.line and re.search(r"line \d+", res.line), res.line
    elif expect == "bytes":
        assert res.code == 2 and "UTF-8" in res.line, res.line
    elif expect == "valid":
        assert res.code == 0, res.err[:500]


# ---------------------------------------------------------------------------------------------------------------
# What the fuzzer found (each was a traceback or a silently accepted wrong value before the fix)

BASE = """
[sweep]
trials = 1

[base]
k = 2
p = 2
steps = 3
schedule = { kind = "constant", eta_w = 0.1, eta_a = 0.1 }
"""
HUGE = "9" * 5000


FOUND = [
        # tables of the wrong type: AttributeError / TypeError before
        ("sweep = []\n[base]\nsteps = 3\n", [], "[sweep] must be a table"),
        ("grid = 5\n" + BASE, [], "[grid] must be a table"),
        ("methods = 5\n" + BASE, [], "[methods] must be a table"),
        ("base = []\n", [], "[base] must be a table"),
        (BASE, ["init=[1]"], "init must be a table"),
        (BASE, ["tolerances=0"], "tolerances must be a table"),
        # values of the wrong type inside tables: TypeError before
        (BASE, ['teacher.phi_max="x"'], "teacher.phi_max must be a number in (0, pi]"),
        (BASE, ["teacher.a_value=5"], "teacher.a_value must be a list of"),
        (BASE, ["tolerances.rate_window=5"], "tolerances.rate_window must be"),
        (BASE, ['init.w_scale="x"'], "init.w_scale must be a number >= 1e-100"),
        # integers too large for a float: OverflowError before
        (BASE, ["init.w_scale=1" + "0" * 400], "init.w_scale must be a number >= 1e-100"),
        (BASE, ["tolerances.eps=1" + "0" * 400], "tolerances.eps must be"),
        (BASE, ["schedule.eta_w=1" + "0" * 400], "schedule.eta_w must be a finite number >= 0"),
        (BASE, ['schedule={kind="constant", eta_w_rel=1' + "0" * 400 + ", eta_a=0.1}"],
         "schedule.eta_w_rel must be a finite number >= 0"),
        (BASE, ['schedule={kind="perturbed", eta_w=0.1, eta_a=0.1, noise=1' + "0" * 400 + "}"],
         "noise must be a finite number >= 0"),
        (BASE, ['schedule={kind="perturbed", eta_w=0.1, eta_a=0.1, noise=0.1, half_life=1' + "0" * 400 + "}"],
         "half_life must be"),
        # numbers with more digits than Python converts, nesting deeper than the parser goes: ValueError /
        # RecursionError before
        (BASE.replace("steps = 3", "steps = " + HUGE), [], "not valid TOML"),
        (BASE, ["steps=" + HUGE], "--set steps"),
        (BASE.replace("steps = 3", "steps = " + "[" * 600 + "]" * 600), [], "not valid TOML"),
        (BASE, ["steps=" + "[" * 600 + "]" * 600], "--set steps"),
        (BASE, ["steps=" + "[" * 40 + "]" * 40], "steps nests"),
        # messages that named the wrong thing or none
        (BASE, ['schedule={kind="perturbed", eta_w=0.1, eta_a=0.1, noise=0.1, half_life=1e-300}'],
         "half_life must be"),
        (BASE, ['schedule={kind="prescribed-warmup", eta_w=0.1, eta_a=0.1, safety="x"}'],
         "schedule.safety must lie in (0, 1]"),
        (BASE, ['schedule={kind="piecewise", segments=[{steps=1, eta_w=-1, eta_a=0.1}, {eta_w=0.1, eta_a=0.1}]}'],
         "schedule.segments[0].eta_w must be"),
        # user text that broke the one-line rule
        (BASE + '[methods."a\\nb"]\nstpes = 1\n', [], r"[methods.'a\nb']"),
        (BASE + '[grid]\n"schedule.\\n" = []\n', [], r"grid.'schedule.\n' must be a non-empty list"),
        # wrong types that were accepted silently
        (BASE, ['allow_unstable="no"'], "allow_unstable must be true or false"),
        (BASE, ['teacher={fixed_seed=1, require_spurious="no"}'], "require_spurious must be true or false"),
        (BASE, ['teacher={w="cap", phi_max=true}'], "teacher.phi_max must be a number in (0, pi]"),
        (BASE, ["tolerances.stop_trapped=1"], "stop_trapped must be true or false"),
        (BASE, ["tolerances.eps=true"], "tolerances.eps must be"),
        (BASE, ['schedule={kind="piecewise", segments=[{steps=true, eta_w=0.1, eta_a=0.1}, {eta_w=0.1, eta_a=0.1}]}'],
         "segments[0].steps must be an integer >= 0"),
        (BASE, ["name=[1]"], "sweep.name must be"),
        (BASE, ["description=1"], "sweep.description must be a string"),
        (BASE + "[grid]\n\"teacher.fixed_seed\" = [18446744073709551616]\n", [],
         "teacher.fixed_seed must be an integer in [0, 9223372036854775807]"),  # overflowed the Parquet column
        (BASE, ['schedule={kind="piecewise", segments=[{steps=1, eta_w=0.1, eta_a=0.1, noise_w=true}, {eta_w=0.1, '
                'eta_a=0.1}]}'], "schedule.segments[0].noise_w must be a finite number >= 0"),
        # a valid-looking cell that failed in some runs only (the dry run draws run 0): a traceback mid-sweep
        (BASE.replace("trials = 1", "trials = 8"), ["p=1", 'init.w="sphere"'],
         "init.w = 'sphere' cannot start the ResNet at p = 1"),
        (BASE.replace("trials = 1", "trials = 3000"), ['model="cnn"', 'init={w="gaussian", w_scale=1e-160}', "p=1"],
         "init.w_scale must be finite and > 0 (at least 1e-100)"),  # ||w0||^2 underflowed in some runs
        (BASE, ['name="../x"'], "sweep.name must be"),
]


@pytest.mark.parametrize(("text", "sets", "needle"), FOUND, ids=[re.sub(r"\W+", "-", n)[:48] for _, _, n in FOUND])
def test_found_by_fuzzing(text, sets, needle):
    res = run_cli(text, sets)
    assert res.code == 2
    assert needle in res.line, res.line[:500]


VALID_FOUND = [
    # piecewise stages after an empty first one were checked against a 1-step dry run: a valid sweep refused
    '[base]\nk = 2\np = 2\nsteps = 3\nschedule = {kind = "piecewise", segments = [{steps = 0, eta_w = 0.1, '
    'eta_a = 0.1}, {steps = 2, eta_w = 0.0, eta_a = 0.1}, {eta_w = 0.1, eta_a = 0.1}]}\n',
]


@pytest.mark.parametrize("text", VALID_FOUND, ids=["piecewise-stages-after-an-empty-first"])
def test_valid_found_by_fuzzing(text):
    res = run_cli("[sweep]\ntrials = 2\n" + text)
    assert res.code == 0, res.err


@pytest.mark.parametrize(("grid", "column", "values"), [
    ("steps = [2, 3]", "cell.steps", [2, 3]),
    ('"tolerances.rate_window" = [[0.5, 0.25, 0.125]]', "tolerances.rate_window", ["[0.5, 0.25, 0.125]"]),
    ('"schedule.half_life" = [100000000000000000000]', "schedule.half_life", ["100000000000000000000"]),
])
def test_grid_values_of_any_kind_become_one_column_of_the_run_table(grid, column, values, tmp_path):
    """Found by fuzzing (a traceback after all runs were done): a grid over ``steps`` collided with the per-run
    ``steps`` column, a list value was spread over the rows, an integer beyond 64 bits overflowed Parquet.  Now a
    colliding key is ``cell.KEY`` and values Parquet cannot hold exactly are stored as JSON text."""
    perturbed = BASE.replace('kind = "constant"', 'kind = "perturbed", noise = 0.0')
    cfg = tmp_path / "spec.toml"
    cfg.write_text(perturbed + "[grid]\n" + grid + "\n")
    out = tmp_path / "out"
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet", "--format", "csv"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert list(dict.fromkeys(runs[column])) == values
    assert "steps" in runs.columns and (runs["steps"] >= 0).all()  # the per-run column is untouched
    assert len(pd.read_csv(out / "summary.csv")) == len(values)


def test_prescribed_warmup_takes_its_stage_one_step_relative_too():
    """``eta_a_warmup_rel`` was a valid key that was silently ignored."""
    raw = {"sweep": {"trials": 1}, "base": {"k": 4, "p": 4, "steps": 5, "schedule": {
        "kind": "prescribed-warmup", "eta_w_rel": 0.5, "eta_a_rel": 0.9, "eta_a_warmup_rel": 0.5}}}
    kw = sweep.simulation_kwargs(sweep.build_spec(raw).cells[0].params)
    from sims.runs.schedules import optimal_eta_a

    assert kw["schedule"].extra["eta_a_warmup"] == pytest.approx(0.5 * optimal_eta_a(4))
    raw["base"]["schedule"]["eta_a_warmup_rel"] = 2.0
    with pytest.raises(sweep.SweepError, match="exceeds the stability limit"):
        sweep.build_spec(raw)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: Schedule.perturbed(0.1, 0.1, noise=0.1, half_life=10**400), "half_life must be > 0"),
        (lambda: Schedule.perturbed(0.1, 0.1, noise=0.1, half_life=1e-300), "half_life must be > 0"),
        (lambda: Schedule.perturbed(0.1, 0.1, noise=10**400), "noise must be a finite number >= 0"),
        (lambda: Schedule.constant(True, 0.1), "eta_w must be a finite number >= 0"),
        (lambda: Schedule.prescribed_warmup(0.1, 0.1, safety="x"), r"schedule\.safety must lie in \(0, 1\]"),
        (lambda: Schedule.piecewise([(True, 0.1, 0.1), (None, 0.1, 0.1)]), r"segments\[0\]\.steps must be"),
    ],
)
def test_schedule_constructors_reject_what_the_fuzzer_found(make, needle):
    """The same checks without the sweep layer (before: OverflowError, TypeError, or accepted)."""
    with pytest.raises(ValueError, match=needle):
        make()


def test_config_path_through_a_file(tmp_path, capsys):
    """A config path that cannot be read (here: below a regular file) was a NotADirectoryError traceback."""
    (tmp_path / "f").write_text("")
    assert cli.main(["sweep", str(tmp_path / "f" / "spec.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot be read" in err
    assert not (tmp_path / "out").exists()


def test_bad_bytes_and_valid_unicode():
    assert "UTF-8" in run_cli(b"[sweep]\nname = \"\xff\"\n").line
    res = run_cli(BASE.replace("trials = 1", 'trials = 1\nname = "Ünïcødé 日本 🙂"'))
    assert res.code == 0 and res.metadata["name"] == "Ünïcødé 日本 🙂"
