"""extract(): each link of the parse chain, and the validation policy (errors vs flags)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mva_dagster.extraction.parse import extract
from mva_dagster.extraction.schema import contract_json_schema

SCHEMA = contract_json_schema(
    {
        "label": {"type": "string", "enum": ["calm", "tense"]},
        "level": {"type": "number", "minimum": 0, "maximum": 1},
        "count": "integer",
        "quotes": "array",
        "note": "string",
    },
    max_string_length=40,
    max_evidence_items=2,
)
GOOD: dict[str, Any] = {
    "label": "calm",
    "level": 0.4,
    "count": 3,
    "quotes": ["a {brace} quote"],
    "note": "ok",
}
GOOD_JSON = json.dumps(GOOD)


# ---------------------------------------------------------------- the chain


def test_bare_json() -> None:
    result = extract(f"  {GOOD_JSON}\n", SCHEMA)
    assert (result.path, result.valid, result.errors, result.flags) == ("bare_json", True, [], [])
    assert result.fields == GOOD


@pytest.mark.parametrize("fence", ["```json", "```JSON", "```"])
def test_fenced_json(fence: str) -> None:
    text = f"Here is the analysis.\n\n{fence}\n{json.dumps(GOOD, indent=2)}\n```\nHope this helps!"
    result = extract(text, SCHEMA)
    assert result.path == "fenced_json" and result.valid and result.fields == GOOD


def test_fenced_json_skips_non_json_fences() -> None:
    text = f"```text\nnot json\n```\nthen\n```json\n{GOOD_JSON}\n```"
    assert extract(text, SCHEMA).path == "fenced_json"


def test_embedded_json_after_prose_with_braces() -> None:
    text = f"I use {{curly}} notes. Result: {GOOD_JSON} -- end."
    result = extract(text, SCHEMA)
    assert result.path == "embedded_json" and result.valid and result.fields == GOOD


def test_embedded_json_followed_by_csv_block() -> None:
    text = f"{GOOD_JSON}\n<<<SCORES_CSV>>>\nlevel\n0.4\n<<<END_SCORES_CSV>>>"
    result = extract(text, SCHEMA)
    assert result.path == "embedded_json" and result.fields["level"] == 0.4


def test_truncated_json() -> None:
    result = extract(GOOD_JSON[:-15], SCHEMA)
    assert (result.path, result.valid, result.fields) == ("failed", False, {})
    assert "truncated JSON" in result.errors[0] and "max_tokens" in result.errors[0]


def test_malformed_json() -> None:
    result = extract('{"label": "calm", "level": 0.4,}', SCHEMA)
    assert result.path == "failed" and not result.valid
    assert result.errors[0].startswith("malformed JSON:")


@pytest.mark.parametrize("text", [None, "", "   \n"])
def test_empty_answer(text: str | None) -> None:
    result = extract(text, SCHEMA)
    assert result.path == "failed" and result.errors == ["empty answer"]


def test_no_json_at_all() -> None:
    result = extract("I cannot analyse this text.", SCHEMA)
    assert result.errors == ["no JSON object found in the answer"]


def test_top_level_array_is_not_an_answer() -> None:
    result = extract(f"[{GOOD_JSON}]", SCHEMA)
    assert result.path == "embedded_json"  # the object inside is found by the next link


def test_nan_is_not_json() -> None:
    result = extract(GOOD_JSON.replace("0.4", "NaN"), SCHEMA)
    assert result.path == "failed" and "NaN" in result.errors[0]


# ---------------------------------------------------------------- validation policy


def answer(**changes: Any) -> str:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def test_out_of_range_is_flagged_and_kept_unclamped() -> None:
    result = extract(answer(level=1.7), SCHEMA)
    assert result.valid and result.flags == ["out_of_range:level=1.7"]
    assert result.fields["level"] == 1.7


def test_missing_field_makes_the_record_invalid_but_kept() -> None:
    result = extract(answer(count=...), SCHEMA)
    assert not result.valid and result.errors == ["count: missing required field"]
    assert result.fields["label"] == "calm"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"level": "0.4"}, 'level: expected number, got string "0.4"'),
        ({"level": True}, "level: expected number, got boolean true"),
        ({"count": 2.5}, "count: expected integer, got number 2.5"),
        ({"quotes": "one quote"}, 'quotes: expected array, got string "one quote"'),
        ({"quotes": ["ok", 3]}, "quotes[1]: expected string, got number 3"),
        ({"label": "furious"}, 'label: "furious" is not one of ["calm", "tense"]'),
    ],
)
def test_wrong_values_are_errors(changes: dict[str, Any], error: str) -> None:
    result = extract(answer(**changes), SCHEMA)
    assert not result.valid and result.errors == [error]


def test_soft_problems_are_flags() -> None:
    text = answer(count=3.0, quotes=["a", "b", "c"], note="x" * 41, extra_key=1)
    result = extract(text, SCHEMA)
    assert result.valid and result.errors == []
    assert result.flags == ["too_many_items:quotes=3", "too_long:note=41", "extra_field:extra_key"]


def test_duplicate_keys_are_flagged() -> None:
    result = extract(GOOD_JSON[:-1] + ', "level": 0.9}', SCHEMA)
    assert result.valid and result.flags[0] == "duplicate_key:level" and result.fields["level"] == 0.9


def test_nested_paths_are_named() -> None:
    schema = contract_json_schema(
        {"dims": {"type": "object", "properties": {"one": {"type": "object", "properties": {
            "raw": {"type": "number", "minimum": 0, "maximum": 1}, "why": "string"}}}}}
    )  # fmt: skip
    result = extract('{"dims": {"one": {"raw": 2}}}', schema)
    assert result.errors == ["dims.one.why: missing required field"]
    assert result.flags == ["out_of_range:dims.one.raw=2"]


def test_truncated_nested_answer_does_not_return_an_inner_fragment() -> None:
    text = '{"outer": {"one": {"raw": 0.5, "why": "x"}, "two": {"raw": 0.'
    result = extract(text, SCHEMA)
    assert result.path == "failed" and "truncated JSON" in result.errors[0]


def test_malformed_object_does_not_return_an_inner_fragment() -> None:
    result = extract('{"a": 1, "b": {"c": 2},}', SCHEMA)
    assert result.path == "failed" and result.errors[0].startswith("malformed JSON")
