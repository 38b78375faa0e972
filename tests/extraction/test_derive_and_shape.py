"""derive_contract + RecordShape: the contract completed from prose, and the flat record formulas read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mva_dagster.calc.formula import build_plan
from mva_dagster.extraction.derive import derive_contract, range_statements
from mva_dagster.extraction.parse import extract
from mva_dagster.extraction.schema import describe_schema, framework_json_schema
from mva_dagster.extraction.shape import Node, RecordShape
from mva_dagster.specs.framework import Framework, load_framework


def framework(tmp_path: Path, *, prompt: str, schema: dict[str, Any], formulas: dict[str, str] | None = None,
              instructions: str = "Answer with one JSON object.") -> Framework:
    config = {
        "name": "tmp", "version": "v1",
        "analysis_variants": {"default": {"analysis_prompt": prompt}},
        "calculation_spec": formulas or {},
        "output_contract": {"schema": schema, "instructions": instructions},
    }
    path = tmp_path / "framework.md"
    path.write_text(f"# Tmp\n\n```json\n{json.dumps(config, indent=1)}\n```\n", encoding="utf-8")
    return load_framework(path)


def shape_of(fw: Framework) -> RecordShape:
    derived = derive_contract(fw)
    plan = build_plan(fw.calculation_spec, known_inputs=None)
    return RecordShape(derived.schema, subjects=derived.subjects, variables=sorted(plan.inputs))


# ---------------------------------------------------------------- reading prose


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Calm (0.0-1.0): quiet words", [(0.0, 1.0, {"calm"})]),
        ("Rate the alarm from 0.0 to 1.0.", [(0.0, 1.0, {"rate", "alarm"})]),
        ("Tilt (-1 to +1): toward or away", [(-1.0, 1.0, {"tilt"})]),
        ("Tilt (\u22121..+1)", [(-1.0, 1.0, {"tilt"})]),
        ("Score between 0 and 2 for warmth.", [(0.0, 2.0, {"score"})]),
        ("each with 'weight_level' (0.0-2.0)", [(0.0, 2.0, {"weight", "level"})]),
        ("From 1990-2000 the city grew; see items 3-5.", [(3.0, 5.0, {"see", "item"})]),
        ("- 0.7-0.8: strong presence", [(0.7, 0.8, set())]),
    ],
)
def test_range_statements(text: str, expected: list[tuple[float, float, set[str]]]) -> None:
    assert [(s.low, s.high, set(s.context)) for s in range_statements(text)] == expected


def test_ranges_attach_to_the_field_they_talk_about(tmp_path: Path) -> None:
    fw = framework(tmp_path, prompt=(
        "Calm (0.0-2.0): quiet words. Alarm (0.0-2.0): loud words. Rate each from 0.0 to 2.0. "
        "Give a certainty from 0 to 1 for each."),
        schema={"calm_rate": "number", "calm_certainty": "number", "alarm_rate": "number",
                "alarm_certainty": "number", "overall_certainty": "number", "count_words": "integer"})
    props = derive_contract(fw).schema["properties"]
    assert (props["calm_rate"]["minimum"], props["calm_rate"]["maximum"]) == (0.0, 2.0)
    assert (props["alarm_certainty"]["minimum"], props["alarm_certainty"]["maximum"]) == (0.0, 1.0)
    assert props["overall_certainty"]["maximum"] == 1.0
    assert "minimum" not in props["count_words"]  # nothing says how many words


def test_explicit_constraints_win_over_prose(tmp_path: Path) -> None:
    fw = framework(tmp_path, prompt="Rate calm from 0 to 10.",
                   schema={"calm_rate": {"type": "number", "minimum": -1, "maximum": 1}})
    assert derive_contract(fw).schema["properties"]["calm_rate"] == {"type": "number", "minimum": -1, "maximum": 1}


def test_options_listed_in_the_prompt_become_an_enum(tmp_path: Path) -> None:
    fw = framework(tmp_path, prompt='Classify the register of the text. The valid options are "formal", '
                                    '"informal", or "mixed". Summarise it.',
                   schema={"register": "string", "summary": "string"})
    props = derive_contract(fw).schema["properties"]
    assert props["register"] == {"type": "string", "enum": ["formal", "informal", "mixed"]}
    assert "enum" not in props["summary"]


def test_open_objects_get_one_property_per_subject(tmp_path: Path) -> None:
    fw = framework(
        tmp_path,
        prompt="Calm (0.0-1.0): quiet. Alarm (0.0-1.0): loud. Give a certainty from 0.0 to 1.0 and quotations.",
        schema={"label": "string", "ratings": "object", "certainty": "object", "notes": "object"},
        formulas={"calm_margin": "calm_rating - alarm_rating"})
    derived = derive_contract(fw)
    props = derived.schema["properties"]
    assert list(props["ratings"]["properties"]) == ["calm", "alarm"]  # in the prompt's order
    assert props["ratings"]["properties"]["calm"] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
    assert props["certainty"]["properties"]["alarm"]["maximum"] == 1.0  # numbers: a range talks about it
    assert props["notes"]["properties"]["calm"]["type"] == ["string", "array"]  # text or quotations
    assert props["ratings"]["additionalProperties"] is False and props["ratings"]["required"] == ["calm", "alarm"]
    assert derived.subjects == ["calm", "alarm"]
    assert any(d.where == "ratings" and "calm_rating" in d.source for d in derived.derivations)


def test_arrays_of_objects_described_in_the_instructions(tmp_path: Path) -> None:
    fw = framework(tmp_path, prompt="Read it.", schema={"ranking": "array", "quotes": "array"},
                   instructions="The ranking should be an array of objects, each containing 'item' (string), "
                                "'weight' (0.0-1.0), and 'place' (integer).")
    props = derive_contract(fw).schema["properties"]
    assert props["ranking"]["items"]["properties"] == {
        "item": {"type": "string"}, "weight": {"type": "number", "minimum": 0.0, "maximum": 1.0},
        "place": {"type": "integer"}}
    assert "maxItems" not in props["ranking"]
    assert props["quotes"]["items"] == {"type": "string", "maxLength": 300}  # the quotation default


def test_describe_schema_spells_out_the_fields(tmp_path: Path) -> None:
    fw = framework(tmp_path, prompt="Calm (0.0-1.0).", schema={"ratings": "object", "quotes": "array"},
                   formulas={"m": "calm_rating * 2"})
    text = describe_schema(framework_json_schema(fw))
    assert "- ratings: object with calm; each number, from 0.0 to 1.0" in text
    assert "- quotes: list of at most 3 short verbatim quotations (strings)" in text


# ---------------------------------------------------------------- the flat record


def test_flat_names_and_formula_aliases(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {
        "ratings": {"type": "object", "properties": {"calm": {"type": "number"}, "alarm": {"type": "number"}}},
        "per_item": {"type": "object", "properties": {"calm": {"type": "object", "properties": {
            "level": {"type": "number"}, "why": {"type": "string"}}}}},
        "vertices": {"type": "object", "properties": {"wide_vertex": {"type": "number"}}},
        "label": {"type": "string"}}}
    shape = RecordShape(schema, subjects=["calm", "alarm"], variables=["rating_alarm", "calm"])
    assert shape.names == ["calm_rating", "rating_alarm", "calm_level", "calm_why", "wide_vertex", "label"]
    assert shape.resolve("calm") == "calm_rating"  # a subject's first number, in contract order
    assert shape.resolve("nope") is None
    assert shape.formula_row({"calm_rating": 0.2})["calm"] == 0.2


def test_clashing_flat_names_fall_back_to_the_full_path() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "number"}}},
        "b": {"type": "object", "properties": {"x": {"type": "number"}}},
        "x_a": {"type": "number"}}}
    assert RecordShape(schema).names == ["a_x", "x_b", "x_a"]  # only the clashing pair is renamed


def test_match_rules_in_order() -> None:
    shape = RecordShape({"type": "object", "properties": {
        "ratings": {"type": "object", "properties": {"calm": {"type": "number"}, "alarm": {"type": "number"}}},
        "certainty": {"type": "object", "properties": {"calm": {"type": "number"}}}}},
        subjects=["calm", "alarm"])
    nodes = [
        Node(("ratings", "calm"), 0.1),                 # 1: exact path
        Node(("wrap", "certainty", "calm"), 0.9),       # 2: ends with the path
        Node(("Alarm",), "0.3", textual=True),          # 5: the bare subject -> its first number
        Node(("stray",), 1),
    ]
    match = shape.match(nodes)
    assert match.fields == {"calm_rating": 0.1, "calm_certainty": 0.9, "alarm_rating": 0.3}
    assert not match.exact and match.unused == [("stray",)]


def test_nested_contract_answers_evaluate_formulas(tmp_path: Path) -> None:
    fw = framework(tmp_path, prompt="Calm (0.0-1.0). Alarm (0.0-1.0).",
                   schema={"ratings": "object", "label": "string"},
                   formulas={"calm_margin": "calm_rating - alarm_rating"})
    shape = shape_of(fw)
    result = extract(json.dumps({"ratings": {"calm": 0.75, "alarm": 0.25}, "label": "x"}), shape)
    assert result.valid and result.path == "bare_json"
    plan = fw.calculation_plan()
    assert plan.evaluate(shape.formula_row(result.fields))["calm_margin"] == pytest.approx(0.5)


# ---------------------------------------------------------------- the shared frameworks


CFF_DIMS = ["tribal_dominance", "individual_dignity", "fear", "hope", "envy", "compersion", "enmity", "amity",
            "fragmentative_goal", "cohesive_goal"]


@pytest.mark.shared
def test_cff_v41_worldview_enum_and_score_ranges(shared: Path) -> None:
    schema = framework_json_schema(load_framework(shared / "data/frameworks/cff/cff_v4.1.md"))
    props = schema["properties"]
    assert props["worldview"]["enum"] == ["Progressive", "Conservative", "Libertarian", "Other"]
    assert all((props[f"{d}_score"]["minimum"], props[f"{d}_score"]["maximum"]) == (0, 1) for d in CFF_DIMS)
    assert "maximum" not in props["fear_confidence"]  # v4.1's prompt states no confidence range
    assert props["fear_evidence"]["items"]["type"] == "string"


@pytest.mark.shared
@pytest.mark.parametrize("name", ["cff_v4.2.md", "cff_v4.3.md"])
def test_cff_nested_contracts_are_completed(shared: Path, name: str) -> None:
    fw = load_framework(shared / "data/frameworks/cff" / name)
    shape = shape_of(fw)
    props = framework_json_schema(fw)["properties"]
    assert list(props["scores"]["properties"]) == CFF_DIMS
    assert props["confidence"]["properties"]["hope"] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
    assert {f"{d}_score" for d in CFF_DIMS} <= set(shape.names)
    if name == "cff_v4.3.md":
        items = props["salience_ranking"]["items"]["properties"]
        assert set(items) == {"dimension", "salience_score", "rank"}
        assert list(props["indices"]["properties"]) == [
            "descriptive_cohesion_index", "motivational_cohesion_index", "full_cohesion_index"]
        assert props["indices"]["properties"]["full_cohesion_index"]["minimum"] == -1.0
    else:
        assert all(shape.resolve(v) == v for v in fw.calculation_plan().inputs)


@pytest.mark.shared
def test_nano_v10_record(shared: Path) -> None:
    shape = shape_of(load_framework(shared / "data/nano_sentiment/framework.md"))
    assert shape.names == [f"{s}_sentiment_{k}" for s in ("positive", "negative")
                           for k in ("raw_score", "salience", "confidence", "evidence")]
    assert shape.resolve("positive_sentiment") == "positive_sentiment_raw_score"
