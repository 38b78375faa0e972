"""load_framework: our fixtures (v4, v5, v10 styles) and every malformed-input error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from mva_dagster.errors import FormulaError, SpecError
from mva_dagster.specs.framework import Framework, load_framework

CONTRACT = {
    "schema": {"label": "string", "calm_score": "number", "alarm_score": "number", "quotes": "array"},
    "instructions": "Reply with one JSON object.",
}


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "tmp_fw",
        "version": "v1",
        "analysis_variants": {"default": {"description": "d", "analysis_prompt": "Score calm and alarm."}},
        "calculation_spec": {"calm_margin": "calm_score - alarm_score"},
        "output_contract": CONTRACT,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def write(tmp_path: Path, body: str | bytes, name: str = "framework.md") -> Path:
    path = tmp_path / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body, encoding="utf-8")
    return path


def framework_text(cfg: dict[str, Any] | str) -> str:
    block = cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2)
    return (
        "# Tmp framework\n\nProse.\n\n<details><summary>Machine-Readable Configuration</summary>\n\n"
        f"```json\n{block}\n```\n\n</details>\n"
    )


def load_cfg(tmp_path: Path, **overrides: Any) -> Framework:
    return load_framework(write(tmp_path, framework_text(config(**overrides))))


def assert_names(exc: SpecError, path: Path, field: str) -> None:
    assert exc.file == str(path)
    assert exc.field == field
    assert str(path) in str(exc) and field in str(exc)


# ---------------------------------------------------------------- good files


def test_civic_tone_fixture_loads(fixtures: Path) -> None:
    path = fixtures / "civic_tone" / "framework.md"
    fw = load_framework(path)
    assert (fw.name, fw.version, fw.display_name, fw.spec_version) == (
        "civic_tone",
        "v1.0",
        "Civic Tone Framework v1.0",
        "4",
    )
    assert fw.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fw.text == path.read_text(encoding="utf-8")
    assert set(fw.analysis_variants) == {"default", "scores_only"}
    assert fw.variant("scores_only").analysis_prompt.startswith("Score the warmth")
    assert fw.output_contract.schema_["warmth_score"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert fw.output_contract.model_dump(by_alias=True)["schema"]["summary"] == "string"
    assert fw.output_contract.numeric_fields() >= {"warmth_score", "overall_confidence"}
    assert fw.warnings == []
    plan = fw.calculation_plan()
    assert plan.order.index("tone_balance") < plan.order.index("confident_balance")


def test_unknown_variant_lists_available(fixtures: Path) -> None:
    fw = load_framework(fixtures / "civic_tone" / "framework.md")
    with pytest.raises(SpecError) as err:
        fw.variant("score_only")
    assert err.value.field == "analysis_variant"
    assert "default, scores_only" in str(err.value) and "did you mean 'scores_only'" in str(err.value)


def test_v5_fixture_maps_groups_rubric_csv_and_notes(fixtures: Path) -> None:
    fw = load_framework(fixtures / "frameworks" / "tide_v5.md")
    assert fw.spec_version == "5"
    assert fw.dimension_groups == {"time_axis": ["optimism", "nostalgia"]}
    assert "cronbachs_alpha" in fw.reliability_rubric
    assert set(fw.output_contract.embedded_csv_requirements) == {"scores_csv"}
    assert fw.calculation_spec == {"time_orientation": "optimism_score - nostalgia_score"}
    assert list(fw.calculation_notes) == ["weighting_note"]
    assert len(fw.warnings) == 1 and "weighting_note" in fw.warnings[0]


def test_v10_fixture_maps_onto_the_same_model(fixtures: Path) -> None:
    fw = load_framework(fixtures / "v10_style" / "framework.md")
    assert (fw.spec_version, fw.name, fw.version) == ("10", "brevity_v1", "1.0")
    assert [d["name"] for d in fw.dimensions] == ["terseness", "verbosity"]
    assert fw.calculation_spec == {"brevity_margin": "terseness - verbosity"}
    scores = fw.output_contract.schema_["dimensional_scores"]
    assert scores["properties"]["terseness"]["properties"]["raw_score"]["maximum"] == 1.0  # $ref inlined
    assert fw.output_contract.instructions  # a default is supplied
    assert fw.known_inputs() is None
    assert any("cannot be checked" in w for w in fw.warnings)


# ---------------------------------------------------------------- unusable files


def test_missing_json_block(tmp_path: Path) -> None:
    path = write(tmp_path, "# A framework\n\nOnly prose, no configuration.\n")
    with pytest.raises(SpecError) as err:
        load_framework(path)
    assert_names(err.value, path, "json_appendix")
    assert "no ```json" in str(err.value) and "Machine-Readable Configuration" in str(err.value)


def test_unlabelled_json_block_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, framework_text(config()).replace("```json", "```"))
    with pytest.raises(SpecError, match="open it with ```json"):
        load_framework(path)


def test_two_json_blocks(tmp_path: Path) -> None:
    text = '# F\n\n```json\n{"example": true}\n```\n\n' + framework_text(config())
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_framework(path)
    assert_names(err.value, path, "json_appendix")
    assert "found 2 ```json blocks (lines 3, " in str(err.value)


def test_invalid_json_reports_the_file_line(tmp_path: Path) -> None:
    text = framework_text(config()).replace('"version": "v1",', '"version": "v1"')
    path = write(tmp_path, text)
    json_line = next(
        i for i, ln in enumerate(text.splitlines(), 1) if ln.strip().startswith('"analysis_variants"')
    )
    with pytest.raises(SpecError) as err:
        load_framework(path)
    assert_names(err.value, path, "json_appendix")
    assert f"invalid JSON at line {json_line}, column 3" in str(err.value)


def test_duplicate_json_key(tmp_path: Path) -> None:
    text = framework_text(config()).replace('"version": "v1",', '"version": "v1", "version": "v2",')
    with pytest.raises(SpecError, match="duplicate key 'version'"):
        load_framework(write(tmp_path, text))


@pytest.mark.parametrize("key", ["name", "version", "analysis_variants", "output_contract"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    cfg = config()
    del cfg[key]
    path = write(tmp_path, framework_text(cfg))
    with pytest.raises(SpecError) as err:
        load_framework(path)
    assert_names(err.value, path, key)
    assert f"missing required key '{key}'" in str(err.value)


def test_missing_default_variant(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_cfg(tmp_path, analysis_variants={"short": {"analysis_prompt": "x"}})
    assert err.value.field == "analysis_variants.default" and "found: short" in str(err.value)


def test_empty_analysis_prompt(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_cfg(tmp_path, analysis_variants={"default": {"analysis_prompt": "   "}})
    assert_names(err.value, tmp_path / "framework.md", "analysis_variants.default.analysis_prompt")
    assert "is empty" in str(err.value)


def test_missing_contract_instructions(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_cfg(tmp_path, output_contract={"schema": {"x": "number"}})
    assert err.value.field == "output_contract.instructions"


def test_unknown_contract_type_suggests(tmp_path: Path) -> None:
    contract = {"schema": {"calm_score": "numbr"}, "instructions": "JSON"}
    with pytest.raises(SpecError) as err:
        load_cfg(tmp_path, output_contract=contract, calculation_spec=None)
    assert err.value.field == "output_contract.schema.calm_score"
    assert "did you mean 'number'" in str(err.value)


def test_bad_json_schema_range(tmp_path: Path) -> None:
    contract = {"schema": {"calm_score": {"type": "number", "minimum": 1, "maximum": 0}}, "instructions": "J"}
    with pytest.raises(SpecError, match="minimum 1 is greater than maximum 0"):
        load_cfg(tmp_path, output_contract=contract, calculation_spec=None)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "is empty"),
        (b"  \n\t\n", "contains only whitespace"),
        (b"# F\x00\x01binary", "looks binary (NUL byte at offset 3)"),
        ("# Caf\u00e9\n".encode("latin-1"), "not valid UTF-8 (byte 0xe9 at offset 5)"),
    ],
)
def test_unreadable_files(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as err:
        load_framework(path)
    assert err.value.file == str(path) and fragment in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="framework file not found"):
        load_framework(tmp_path / "nope.md")


# ---------------------------------------------------------------- calculation_spec at load


def test_malformed_formula_is_an_error_not_prose(tmp_path: Path) -> None:
    with pytest.raises(FormulaError) as err:
        load_cfg(tmp_path, calculation_spec={"calm_margin": "calm_score + * alarm_score"})
    assert_names(err.value, tmp_path / "framework.md", "calculation_spec.calm_margin")
    assert "does not parse" in str(err.value)


def test_unsafe_formula(tmp_path: Path) -> None:
    with pytest.raises(FormulaError) as err:
        load_cfg(tmp_path, calculation_spec={"pwn": "__import__('os')"})
    assert err.value.field == "calculation_spec.pwn" and "__import__" in str(err.value)


def test_unicode_times_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(FormulaError, match=r"use \* for multiplication"):
        load_cfg(tmp_path, calculation_spec={"m": "calm_score \u00d7 alarm_score"})


def test_unknown_variable_with_suggestion(tmp_path: Path) -> None:
    with pytest.raises(FormulaError) as err:
        load_cfg(tmp_path, calculation_spec={"calm_margin": "calm_scor - alarm_score"})
    assert_names(err.value, tmp_path / "framework.md", "calculation_spec.calm_margin")
    assert "unknown variable 'calm_scor'" in str(err.value) and "did you mean 'calm_score'" in str(err.value)


def test_non_numeric_contract_field_in_formula(tmp_path: Path) -> None:
    with pytest.raises(FormulaError, match="'label' is a string field"):
        load_cfg(tmp_path, calculation_spec={"m": "label + 1"})


def test_formula_cycle(tmp_path: Path) -> None:
    spec = {"a": "b + calm_score", "b": "c * 2", "c": "a - alarm_score"}
    with pytest.raises(FormulaError) as err:
        load_cfg(tmp_path, calculation_spec=spec)
    assert "cycle: a -> b -> c -> a" in str(err.value) and err.value.field == "calculation_spec.a"


def test_prose_entries_become_notes_with_a_warning_each(tmp_path: Path) -> None:
    spec = {
        "weighting_explanation": "CRITICAL: weights come from salience, not from the researcher.",
        "calm_index": "WEIGHTED SUM: calm_score \u00d7 weight divided by all weights",
        "method_note": "The margin is computed after the scores are normalised.",
        "calm_margin": "calm_score - alarm_score",
    }
    fw = load_cfg(tmp_path, calculation_spec=spec)
    assert fw.calculation_spec == {"calm_margin": "calm_score - alarm_score"}
    assert list(fw.calculation_notes) == ["weighting_explanation", "calm_index", "method_note"]
    assert len(fw.warnings) == 3 and all("prose" in w for w in fw.warnings)


def test_short_non_formula_is_not_prose(tmp_path: Path) -> None:
    with pytest.raises(FormulaError):
        load_cfg(tmp_path, calculation_spec={"m": "calm plus alarm"})


def test_duplicate_formulas_are_warned(tmp_path: Path) -> None:
    spec = {"m1": "calm_score - alarm_score", "m2": "(-alarm_score) + calm_score"}
    fw = load_cfg(tmp_path, calculation_spec=spec)
    assert any("m2: same formula as m1" in w for w in fw.warnings)


def test_nested_contract_records_a_warning(tmp_path: Path) -> None:
    contract = {"schema": {"scores": "object", "label": "string"}, "instructions": "J"}
    fw = load_cfg(tmp_path, output_contract=contract, calculation_spec={"m": "anything_goes * 2"})
    assert fw.known_inputs() is None
    assert any("cannot be checked at load" in w and "scores" in w for w in fw.warnings)


# ---------------------------------------------------------------- Framework Spec v5 and the v10 style


def test_v5_csv_requirement_needs_both_delimiters(tmp_path: Path) -> None:
    contract = {**CONTRACT, "embedded_csv_requirements": {"scores_csv": {"delimiter_start": "<<<S>>>"}}}
    with pytest.raises(SpecError) as err:
        load_cfg(tmp_path, output_contract=contract)
    assert err.value.field == "output_contract.embedded_csv_requirements.scores_csv.delimiter_end"
    assert "DISCERNUS_SCORES_CSV_v1" in str(err.value)  # the hint shows the standard delimiters


def test_v5_spec_example_loads(tmp_path: Path) -> None:
    """The JSON appendix example of FRAMEWORK_SPECIFICATION_V5.md, with a prompt filled in."""
    cfg = config(
        version="v5.0",
        dimension_groups={"identity_axis": ["calm", "alarm"]},
        reliability_rubric={"cronbachs_alpha": {"excellent": [0.8, 1.0], "poor": [0.0, 0.59]}},
        output_contract={**CONTRACT, "embedded_csv_requirements": {
            "scores_csv": {"delimiter_start": "<<<DISCERNUS_SCORES_CSV_v1>>>",
                           "delimiter_end": "<<<END_DISCERNUS_SCORES_CSV_v1>>>", "description": "scores"},
            "evidence_csv": {"delimiter_start": "<<<DISCERNUS_EVIDENCE_CSV_v1>>>",
                             "delimiter_end": "<<<END_DISCERNUS_EVIDENCE_CSV_v1>>>"}}})
    fw = load_cfg(tmp_path, **cfg)
    assert fw.spec_version == "5" and fw.dimension_groups["identity_axis"] == ["calm", "alarm"]
    assert set(fw.output_contract.embedded_csv_requirements) == {"scores_csv", "evidence_csv"}


V10 = """# V10

```yaml
metadata: {framework_name: two_axes, framework_version: "2.0", spec_version: "10.0"}
analysis_variants:
  default: {description: d, analysis_prompt: "Rate both axes from 0.0 to 1.0."}
dimensions:
  - {name: calm}
  - {name: alarm}
derived_metrics: {margin: "calm - alarm"}
output_schema:
  type: object
  properties:
    axes:
      type: object
      properties:
        calm: {$ref: "#/$defs/axis"}
        alarm: {$ref: "#/$defs/axis"}
    comment: {type: string}
  required: [axes]
  $defs:
    axis: {type: object, properties: {raw_score: {type: number}}, required: [raw_score]}
```
"""


def test_v10_required_and_defs_are_honoured(tmp_path: Path) -> None:
    from mva_dagster.extraction.schema import framework_json_schema

    fw = load_framework(write(tmp_path, V10))
    assert fw.output_contract.required == ["axes"] and fw.calculation_spec == {"margin": "calm - alarm"}
    schema = framework_json_schema(fw)
    assert schema["required"] == ["axes"]  # an answer without a comment is still valid
    assert schema["properties"]["axes"]["properties"]["calm"]["properties"]["raw_score"]["maximum"] == 1.0


def test_v10_dimension_without_a_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_framework(write(tmp_path, V10.replace("- {name: alarm}", "- {label: alarm}")))
    assert err.value.field == "dimensions[1]"


def test_v10_required_must_name_schema_fields(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="names fields the schema does not have: axis"):
        load_framework(write(tmp_path, V10.replace("required: [axes]", "required: [axis]")))
