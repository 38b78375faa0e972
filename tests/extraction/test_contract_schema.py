"""contract_json_schema: output contract -> strict JSON Schema, framework-agnostic."""

from __future__ import annotations

from pathlib import Path

import pytest

from mva_dagster.errors import SpecError
from mva_dagster.extraction.schema import contract_json_schema
from mva_dagster.specs.framework import load_framework


def test_type_strings() -> None:
    contract = {"a": "string", "b": "number", "c": "integer", "d": "boolean", "e": "array", "f": "object"}
    schema = contract_json_schema(contract, max_string_length=50, max_evidence_items=2)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == list(contract)
    assert schema["properties"] == {
        "a": {"type": "string", "maxLength": 50},
        "b": {"type": "number"},
        "c": {"type": "integer"},
        "d": {"type": "boolean"},
        "e": {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 2},
        "f": {"type": "object"},
    }


def test_json_schema_fields_keep_ranges_enums_and_overrides() -> None:
    contract = {
        "level": {"type": "number", "minimum": 0, "maximum": 1, "description": "0-1"},
        "kind": {"type": "string", "enum": ["x", "y"]},
        "note": {"type": ["string", "null"], "maxLength": 20},
        "ranked": {"type": "array", "items": {"type": "object"}, "maxItems": 10},
        "tags": {"type": "array", "maxItems": 5},
    }
    props = contract_json_schema(contract)["properties"]
    assert props["level"] == {"type": "number", "description": "0-1", "minimum": 0, "maximum": 1}
    assert props["kind"] == {"type": "string", "enum": ["x", "y"]}
    assert props["note"] == {"type": ["string", "null"], "maxLength": 20}
    assert props["ranked"] == {"type": "array", "items": {"type": "object"}, "maxItems": 10}
    assert props["tags"]["maxItems"] == 5 and props["tags"]["items"] == {"type": "string", "maxLength": 300}


def test_nested_objects_become_strict_too() -> None:
    contract = {
        "outer": {"type": "object", "properties": {"x": "number", "y": {"type": "string"}}, "required": ["x"]}
    }
    outer = contract_json_schema(contract)["properties"]["outer"]
    assert outer == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "string", "maxLength": 300}},
        "required": ["x"],
        "additionalProperties": False,
    }


def test_accepts_the_contract_model_and_its_mapping(fixtures: Path) -> None:
    fw = load_framework(fixtures / "civic_tone" / "framework.md")
    from_model = contract_json_schema(fw.output_contract)
    from_mapping = contract_json_schema(fw.output_contract.model_dump(by_alias=True))
    assert from_model == from_mapping
    assert from_model["properties"]["register"] == {"type": "string", "enum": ["formal", "informal", "mixed"]}


@pytest.mark.parametrize("bad", ["text", {"minimum": 0}, 5])
def test_unknown_types_are_refused(bad: object) -> None:
    with pytest.raises(SpecError) as err:
        contract_json_schema({"field_z": bad})
    assert err.value.field == "output_contract.schema.field_z"
