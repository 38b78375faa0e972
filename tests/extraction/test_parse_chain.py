"""extract(): each deterministic link of the chain, the error classes, and the validation policy."""

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


def test_truncated_json_keeps_only_complete_members() -> None:
    result = extract(GOOD_JSON[:-15], SCHEMA, finish_reason="length")
    assert (result.path, result.valid, result.error_class) == ("failed", False, "truncated")
    assert result.fields == {"label": "calm", "level": 0.4, "count": 3, "quotes": ["a {brace} quote"]}
    assert "truncated JSON" in result.errors[0] and "max_tokens" in result.errors[0]
    assert "note: missing required field" in result.errors
    assert result.trace[0].startswith("partial_json: 4 of 5 fields")


def test_a_number_or_list_cut_by_the_end_is_dropped_not_shortened() -> None:
    cut = '{"label": "calm", "quotes": ["one", "tw'
    assert extract(cut, SCHEMA).fields == {"label": "calm"}
    cut = '{"label": "calm", "level": 0.4'
    assert extract(cut, SCHEMA).fields == {"label": "calm"}  # 0.4 may be the start of 0.45


@pytest.mark.parametrize(
    ("text", "repair"),
    [
        ('{"label": "calm", "level": 0.4, "count": 3, "quotes": ["a",], "note": "ok",}', "trailing_comma"),
        ("{'label': 'calm', 'level': 0.4, 'count': 3, 'quotes': ['it\\'s'], 'note': 'ok'}", "single_quotes"),
        ('{"label": "calm", "level": 0.4, "count": 3, "quotes": [], "note": None}', "python_literals"),
        ('{"label": "calm" "level": 0.4, "count": 3, "quotes": [], "note": "x"}', "missing_comma"),
    ],
)
def test_sloppy_json_is_read_exactly_and_the_repair_recorded(text: str, repair: str) -> None:
    result = extract(text, SCHEMA)
    assert f"repaired:{repair}" in result.flags
    assert result.fields["label"] == "calm" and result.fields["level"] == 0.4
    if repair != "python_literals":
        assert result.valid and result.path == "lenient_json"
    else:
        assert result.errors == ["note: expected string, got null null"]


def test_malformed_json_that_nothing_can_read() -> None:
    result = extract('{"label": "calm", "level": 0.4 ] oops', SCHEMA)
    assert (result.path, result.error_class) == ("failed", "malformed")
    assert result.errors[0].startswith("malformed JSON:")


@pytest.mark.parametrize("text", [None, "", "   \n"])
def test_empty_answer(text: str | None) -> None:
    result = extract(text, SCHEMA)
    assert (result.path, result.errors, result.error_class) == ("failed", ["empty answer"], "empty_answer")


def test_no_json_at_all() -> None:
    result = extract("I cannot analyse this text.", SCHEMA)
    assert result.errors == ["no JSON object found in the answer"] and result.error_class == "not_found"


def test_top_level_array_is_not_an_answer() -> None:
    result = extract(f"[{GOOD_JSON}]", SCHEMA)
    assert result.path == "embedded_json"  # the object inside is found by the next link


def test_nan_is_not_json() -> None:
    result = extract(GOOD_JSON.replace("0.4", "NaN"), SCHEMA)
    assert result.path == "failed" and "NaN" in result.errors[0]


def test_numbers_written_as_strings_in_json_stay_type_errors() -> None:
    """JSON values are never coerced: "0.4" where a number is due is reported (the LLM link may fix it)."""
    result = extract(answer(level="0.4"), SCHEMA)
    assert not result.valid and result.error_class == "schema_mismatch"


def test_a_complete_record_before_a_cut_is_valid_but_flagged() -> None:
    result = extract(GOOD_JSON + "\n<<<SCORES_CSV>>>\nlevel\n0.", SCHEMA, finish_reason="length")
    assert result.valid and any(f.startswith("answer_cut_off") for f in result.flags)


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


def test_nested_values_are_flattened_and_named_by_their_flat_name() -> None:
    schema = contract_json_schema(
        {"dims": {"type": "object", "properties": {"one": {"type": "object", "properties": {
            "raw": {"type": "number", "minimum": 0, "maximum": 1}, "why": "string"}}}}}
    )  # fmt: skip
    result = extract('{"dims": {"one": {"raw": 2}}}', schema)
    assert result.fields == {"one_raw": 2}
    assert result.errors == ["one_why: missing required field"]
    assert result.flags == ["out_of_range:one_raw=2"]


def test_truncated_nested_answer_does_not_return_an_inner_fragment() -> None:
    text = '{"outer": {"one": {"raw": 0.5, "why": "x"}, "two": {"raw": 0.'
    result = extract(text, SCHEMA)
    assert result.path == "failed" and "truncated JSON" in result.errors[0]


def test_malformed_object_does_not_return_an_inner_fragment() -> None:
    result = extract('{"a": 1, "b": {"c": 2},}', SCHEMA)
    assert result.path == "failed" and result.fields == {}
    assert result.trace[0].startswith("lenient_json: 0 of 5 fields")


# ---------------------------------------------------------------- field matching, CSV, Markdown


def test_wrapped_answer_is_mapped_by_field_names() -> None:
    wrapped = {"analysis": {"scores": {"level": 0.4, "count": 3}, "details": {k: GOOD[k] for k in ("label", "quotes", "note")}}}
    result = extract(json.dumps(wrapped), SCHEMA)
    assert result.valid and result.path == "bare_json+field_match" and result.fields == GOOD


def test_keys_in_other_spellings_are_matched_by_words() -> None:
    text = json.dumps({"Label": "calm", "LEVEL": 0.4, "Count": 3, "Quotes": ["q"], "Note": "n"})
    result = extract(text, SCHEMA)
    assert result.valid and result.path == "bare_json+field_match"


def test_two_different_values_for_one_field_are_not_guessed() -> None:
    text = json.dumps({"a": {"level": 0.4}, "b": {"level": 0.9}, **{k: GOOD[k] for k in ("label", "count", "quotes", "note")}})
    result = extract(text, SCHEMA)
    assert not result.valid and "level: ambiguous" in result.errors[0]


def test_csv_blocks_wide_and_long() -> None:
    text = (
        "Analysis done.\n<<<SCORES_CSV>>>\nlevel,count\n0.4,3\n<<<END_SCORES_CSV>>>\n"
        "<<<QUOTES_CSV>>>\nfield,text\nquotes,\"first, with a comma\"\nquotes,second\nlabel,calm\nnote,fine\n"
        "<<<END_QUOTES_CSV>>>"
    )
    result = extract(text, SCHEMA)
    assert result.valid and result.path == "csv_v5"
    assert result.fields == {"level": 0.4, "count": 3, "quotes": ["first, with a comma", "second"], "label": "calm",
                             "note": "fine"}


def test_markdown_labels_lists_and_tables() -> None:
    text = """## Result

**Label:** calm
- Level: 0.4 (moderate)
- **Count**: 3
**Quotes:**
- "first quote"
- "second quote"

| Item | Note |
|---|---|
| the | ignored |

Note: all fine
"""
    result = extract(text, SCHEMA)
    assert result.valid and result.path == "markdown", result.errors
    assert result.fields == {"label": "calm", "level": 0.4, "count": 3, "quotes": ["first quote", "second quote"],
                             "note": "all fine"}


def test_a_free_form_schema_returns_the_object_itself() -> None:
    result = extract('Here: {"anything": {"goes": 1}}', {"type": "object"})
    assert result.valid and result.path == "embedded_json" and result.fields == {"anything": {"goes": 1}}
