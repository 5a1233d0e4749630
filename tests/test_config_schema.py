"""The sweep file's declared schema (``sims.studies.config``): ``shallowres schema`` prints a JSON Schema that every
shipped sweep file satisfies and that refuses what the models refuse, the schedule kinds are a union tagged by
``kind``, the configuration reference lists every field of every table, and the messages of the new error paths
(a wrong kind, a key of another kind, values out of range) name the cell, the field and the accepted range."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest

from sims import cli
from sims.studies import config, sweep

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "sims" / "studies" / "configs").glob("*.toml"))
MODELS = [config.SweepFile, config.SweepTable, config.Cell, config.SampledTeacher, config.FixedTeacher,
          config.InitTable, config.TolerancesTable, config.Constant, config.TwoStage, config.Layerwise,
          config.Perturbed, config.PrescribedWarmup, config.Piecewise, config.Segment, config.FadeEngine,
          config.LaPermEngine, config.ExpansionEngine, config.RegisteredEngine]

BASE = """
[sweep]
trials = 1

[base]
k = 2
p = 2
steps = 3
schedule = { kind = "constant", eta_w = 0.1, eta_a = 0.1 }
"""
WHERE = "cell 0 (method 'default')"


@pytest.fixture(scope="module")
def schema() -> dict:
    return config.json_schema()


def test_the_cli_prints_the_json_schema_and_writes_it_to_a_file(capsys, tmp_path, schema):
    assert cli.main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == schema
    jsonschema.Draft202012Validator.check_schema(printed)  # a valid JSON Schema itself
    out = tmp_path / "sweep.schema.json"
    assert cli.main(["schema", "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == schema
    assert capsys.readouterr().out.strip() == str(out)
    assert cli.main(["schema", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.strip() == config.reference_markdown().strip()


def test_schema_output_errors_are_one_line_and_leave_nothing(capsys, tmp_path):
    assert cli.main(["schema", "--output", str(tmp_path)]) == 2  # a directory
    assert cli.main(["schema", "--output", str(tmp_path / "missing" / "x.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("shallowres: error: --output") for line in err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates_against_the_json_schema(path, schema):
    raw = tomllib.loads(path.read_text())
    jsonschema.validate(raw, schema, cls=jsonschema.Draft202012Validator)
    config.SweepFile.model_validate(raw)  # and against the models as written


def test_the_schedule_kinds_are_a_union_tagged_by_kind(schema):
    node = schema["$defs"]["Cell"]["properties"]["schedule"]
    assert node["discriminator"]["propertyName"] == "kind"
    assert sorted(node["discriminator"]["mapping"]) == sorted(config.SCHEDULE_KINDS)
    assert len(node["oneOf"]) == len(config.SCHEDULE_KINDS)
    for kind, ref in node["discriminator"]["mapping"].items():
        assert schema["$defs"][ref.rsplit("/", 1)[-1]]["properties"]["kind"]["const"] == kind


@pytest.mark.parametrize(("edit", "where"), [
    (lambda d: d["base"].update(k=0), "k"),  # out of range
    (lambda d: d["base"].update(model="vgg"), "model"),
    (lambda d: d["base"]["schedule"].update(kind="cosine"), "kind"),
    (lambda d: d["base"]["schedule"].update(T1=3), "T1"),  # a key of another kind
    (lambda d: d["base"]["schedule"].update(eta_w=-1.0), "eta_w"),
    (lambda d: d["base"].update(engine={"kind": "expansion", "depth": 0}), "depth"),
    (lambda d: d["base"].update(engine={"kind": "laperm", "K": 1, "colour": 2}), "colour"),
    (lambda d: d["sweep"].update(trials=True), "trials"),
])
def test_the_json_schema_refuses_what_the_models_refuse(edit, where, schema):
    raw = tomllib.loads(BASE)
    jsonschema.validate(raw, schema)
    edit(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, schema, cls=jsonschema.Draft202012Validator)
    with pytest.raises(sweep.SweepError, match=where):
        sweep.build_spec(raw)


def test_the_reference_lists_every_field_of_every_table():
    text = config.reference_markdown()
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    assert len(sections) == len(MODELS)
    for model, section in zip(MODELS, sections, strict=True):
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        assert [re.match(r"\| `([^`]+)`", r).group(1) for r in rows] == list(model.model_fields), model.__name__
        for line in section.splitlines():
            if line.startswith("|"):  # every row of a table has its five cells (a '|' in a cell is escaped)
                assert len(re.findall(r"(?<!\\)\|", line)) == 6, line
    assert "an integer in [1, 1000000]" in text and "one of constant" not in text  # ranges, tags as consts
    assert "| `safety` | number | `1.0` | lie in (0, 1] |" in text


@pytest.mark.parametrize(("set_", "needle"), [
    # a wrong kind, and a table where a kind is needed
    ('schedule={kind="cosine", eta_w=0.1}', f"{WHERE}: schedule.kind must be one of constant, two-stage, layerwise, "
                                            "piecewise, perturbed, prescribed-warmup; got 'cosine'"),
    ("schedule=[1]", f"{WHERE}: schedule must be a table with a 'kind'; got [1]"),
    ('schedule={eta_w=0.1}', f"{WHERE}: schedule.kind must be one of constant,"),
    # keys of another kind
    ("schedule.T1=5", f"unknown key 'T1' in {WHERE}: schedule (kind 'constant'); valid keys: eta_a, eta_a_rel, eta_w, "
                      "eta_w_rel, kind"),
    ('engine={kind="fade", steps=2, depth=3, K=1}', f"unknown keys 'K', 'depth' in {WHERE}: engine (kind 'fade'); "
                                                    "valid keys: kind, schedule, steps, values"),
    ('teacher={fixed_seed=1, w="cap"}', f"unknown key 'w' in {WHERE}: teacher (with fixed_seed); valid keys: "
                                        "fixed_seed, require_spurious"),
    ('schedule={kind="piecewise", segments=[{steps=1, eta_w=0.1, eta_a=0.1, T1=2}, {eta_w=0.1, eta_a=0.1}]}',
     f"unknown key 'T1' in {WHERE}: schedule.segments[0]; valid keys: eta_a, eta_a_rel, eta_w"),
    # values out of range: the field, the range, the value
    ("schedule.eta_a=-0.5", f"{WHERE}: schedule.eta_a must be a finite number >= 0; got -0.5"),
    ("schedule.eta_w=nan", f"{WHERE}: schedule.eta_w must be a finite number >= 0; got nan"),
    ("n_record=1", f"{WHERE}: n_record must be an integer in [2, 100000]; got 1"),
    ("batch_size=0", f"{WHERE}: batch_size must be an integer in [1, 1000000]; got 0"),
    ("steps=2.0", f"{WHERE}: steps must be an integer in [0, 1000000000]; got 2.0"),  # no float for an integer
    ('k="2"', f"{WHERE}: k must be an integer in [1, 1000000]; got '2'"),  # no string for a number
    ("teacher.angle=4", f"{WHERE}: teacher.angle must be a number in [0, pi]; got 4"),
    ("init.a_radius=-1", f"{WHERE}: init.a_radius must be a finite number >= 0; got -1"),
    ("tolerances.rate_window=[1e-4, 1e-3, 1e-9]", f"{WHERE}: tolerances.rate_window must be a list of three loss "
                                                  "levels hi > mid > lo > 0"),
    ("tolerances.divergence=0", f"{WHERE}: tolerances.divergence must be a number > 0; got 0"),
    ('schedule={kind="perturbed", eta_w=0.1, eta_a=0.1, half_life=0}',
     f"{WHERE}: schedule.half_life must be a number >= 0.001; got 0"),
    ('schedule={kind="piecewise", segments=[{steps=1, eta_w=0.1, eta_a=0.1}, {eta_w=0.1, eta_a_rel=-2}]}',
     f"{WHERE}: schedule.segments[1].eta_a_rel must be a finite number >= 0; got -2"),
    ('schedule={kind="piecewise", segments=[]}', f"{WHERE}: schedule.segments must be a non-empty list of tables"),
    ('engine={kind="expansion", rate=2000}', f"{WHERE}: engine.rate must be an integer in [1, 1024]; got 2000"),
    ('engine={kind="expansion", pretrain_eta=[0.1]}', f"{WHERE}: engine.pretrain_eta must be two finite numbers"),
    ('engine={kind="laperm", inner="sgd"}', f"{WHERE}: engine.inner must be one of gd, adam; got 'sgd'"),
    ("algorithm=1", f"{WHERE}: algorithm must be one of gd, sgd, gd-fixed, flow; got 1"),
    # the rules between fields
    ('schedule={kind="constant", eta_w=0.1, eta_w_rel=0.5, eta_a=0.1}',
     f"{WHERE}: give either schedule.eta_w or schedule.eta_w_rel, not both"),
    ('schedule={kind="two-stage", T1=1, eta_w1=0.1, eta_a1=0.1, eta_a2=0.1}',
     f"{WHERE}: schedule.eta_w2 (or schedule.eta_w2_rel) is required"),
    ('engine={kind="fade", schedule="custom", values=[1, 0], steps=1}',
     f"{WHERE}: engine.steps is len(engine.values) - 1 for a custom fade; leave it out"),
    ('teacher={fixed_seed=1, require_spurious=true}" --set "k=1',
     f"{WHERE}: teacher.require_spurious needs k >= 2"),
])
def test_new_error_paths_name_the_cell_the_field_and_the_range(tmp_path, capsys, set_, needle):
    cfg = tmp_path / "s.toml"
    cfg.write_text(BASE)
    sets = [s for part in set_.split('" --set "') for s in ("--set", part)]
    out = tmp_path / "out"
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet", *sets]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("shallowres: error: "), err
    assert needle in err, err
    assert not out.exists()


def test_sweep_table_errors_name_the_field():
    for text, needle in [
        ("[sweep]\ntrials = 2.5\n", "sweep.trials must be an integer in [1, 1000000000]; got 2.5"),
        ("[sweep]\nseed = -1\n", "sweep.seed must be an integer in [0, 9223372036854775807]; got -1"),
        ("[sweep]\nname = ''\n", "sweep.name must be 1 to 100 printable characters"),
        ("[sweep]\nnmae = 1\nmane = 2\n", "unknown keys 'mane', 'nmae' in [sweep]; valid keys: chunk, description"),
    ]:
        with pytest.raises(sweep.SweepError) as err:
            sweep.build_spec(tomllib.loads(text))
        assert needle in str(err.value)


def test_accepted_ranges_come_from_the_declared_constraints():
    fields = config.Cell.model_fields
    assert config.accepts(fields["k"]) == "an integer in [1, 1000000]"
    assert config.accepts(fields["allow_unstable"]) == "true or false"
    assert config.accepts(config.Constant.model_fields["eta_w"]) == "a finite number >= 0"
    assert config.accepts(config.TolerancesTable.model_fields["divergence"]) == "a number > 0"
    assert config.accepts(config.SampledTeacher.model_fields["phi_max"]) == "a number in (0, pi]"
    assert config.accepts(config.Perturbed.model_fields["half_life"]) == "a number >= 0.001"
    # and the same numbers are in the JSON Schema
    k = config.json_schema()["$defs"]["Cell"]["properties"]["k"]
    assert (k["minimum"], k["maximum"], k["type"]) == (1, 10**6, "integer")


def test_an_unknown_key_with_a_dot_or_a_line_separator_is_named_on_one_line():
    """The table is named from its own path, not by splitting the key's text (found by the fuzz test: a key
    '\\u2028.' in [sweep] was printed raw, on two lines)."""
    from sims.studies import spec

    for table, key, where in (("sweep", "\u2028.", "in [sweep];"), ("sweep", "a.b", "in [sweep];")):
        with pytest.raises(spec.SweepError) as info:
            spec.build_spec({table: {"name": "x", key: ""}, "base": {"k": 1, "p": 1, "steps": 3}})
        text = str(info.value)
        assert text.isprintable() and "\n" not in text and where in text and repr(key) in text
