"""`mva framework check`: the expected findings on every shared framework, and each kind of problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mva_dagster.cli.main import main
from mva_dagster.extraction.check import check_framework

REPO = Path(__file__).resolve().parents[2]
CFF_INDICES = ["descriptive_cohesion_index", "motivational_cohesion_index", "full_cohesion_index"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["framework", "check", *args])
    return result.exit_code, result.output


def write(tmp_path: Path, config: dict[str, Any], extra: str = "") -> Path:
    path = tmp_path / "framework.md"
    path.write_text(f"# F\n{extra}\n```json\n{json.dumps(config, indent=1)}\n```\n", encoding="utf-8")
    return path


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "f", "version": "v1",
        "analysis_variants": {"default": {"analysis_prompt": "Calm (0.0-1.0). Alarm (0.0-1.0)."}},
        "calculation_spec": {"margin": "calm_rating - alarm_rating"},
        "output_contract": {"schema": {"ratings": "object", "label": "string"}, "instructions": "JSON."},
    }
    base.update(overrides)
    return base


# ---------------------------------------------------------------- the shared frameworks


@pytest.mark.shared
def test_cff_v41_reports_the_copy_pasted_index(shared: Path) -> None:
    code, out = run(str(shared / "data/frameworks/cff/cff_v4.1.md"))
    assert code == 0
    assert ("WARNING calculation_spec.full_cohesion_index: identical to motivational_cohesion_index "
            "after normalisation") in out
    check = check_framework(shared / "data/frameworks/cff/cff_v4.1.md")
    assert [f.where for f in check.of("warning")] == ["calculation_spec.full_cohesion_index"]
    assert check.metric_ranges == dict.fromkeys(CFF_INDICES, (-1.0, 1.0))


@pytest.mark.shared
def test_cff_v42_nested_variables_resolve_and_the_bug_is_fixed(shared: Path) -> None:
    check = check_framework(shared / "data/frameworks/cff/cff_v4.2.md")
    assert check.ok and check.of("warning") == []
    assert check.variables["hope_score"] == "hope_score" and len(check.variables) == 10
    assert check.metric_ranges == dict.fromkeys(CFF_INDICES, (-1.0, 1.0))
    assert any("10 formula variables read nested values (hope_score <- scores.hope" in f.message
               or "<- scores." in f.message for f in check.of("info"))


@pytest.mark.shared
def test_cff_v43_prose_formulas_are_warned_and_its_indices_derived(shared: Path) -> None:
    code, out = run(str(shared / "data/frameworks/cff/cff_v4.3.md"), "--verbose")
    check = check_framework(shared / "data/frameworks/cff/cff_v4.3.md")
    assert code == 0 and check.metric_ranges == {}
    assert sorted(f.where for f in check.of("warning")) == sorted(
        f"calculation_spec.{m}" for m in [*CFF_INDICES, "salience_weighting_explanation",
                                          "salience_normalization_note"])
    assert "output_contract.schema.indices: 3 properties (numbers)" in out
    assert "output_contract.schema.salience_ranking: items: objects with dimension, salience_score, rank" in out


@pytest.mark.shared
def test_ecf_ranges_of_metrics_built_on_metrics(shared: Path) -> None:
    check = check_framework(shared / "data/ecf/ecf_v1.0.md")
    assert check.ok and check.of("warning") == []
    assert check.metric_ranges["overall_emotional_intensity"] == (0.0, 1.0)
    assert check.metric_ranges["emotional_balance_score"] == (-1.0, 1.0)


@pytest.mark.shared
def test_nano_v10_is_clean(shared: Path) -> None:
    code, out = run(str(shared / "data/nano_sentiment/framework.md"), "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["framework"]["spec_version"] == "10"
    assert [f for f in data["findings"] if f["level"] != "info"] == []
    assert data["flat_fields"][0] == "positive_sentiment_raw_score"


def test_project_framework_is_clean() -> None:
    check = check_framework(REPO / "projects/MVA/experiments/sotu_demo/framework.md")
    assert check.ok and check.of("warning") == []
    assert check.metric_ranges == dict.fromkeys(CFF_INDICES, (-1.0, 1.0))


# ---------------------------------------------------------------- each kind of finding


def test_two_json_blocks_are_an_error(tmp_path: Path) -> None:
    code, out = run(str(write(tmp_path, config(), extra='```json\n{"example": 1}\n```\n')))
    assert code == 1 and "ERROR   json_appendix: found 2 ```json blocks" in out


def test_unknown_variable_in_a_nested_contract(tmp_path: Path) -> None:
    check = check_framework(write(tmp_path, config(calculation_spec={"m": "calm_rating - alarm_ratng"})))
    assert not check.ok
    (error,) = check.of("error")
    assert error.where == "calculation_spec.m" and "'alarm_ratng' is not a value of the answer" in error.message
    assert "did you mean 'alarm_rating'" in error.message


def test_variable_that_reads_text(tmp_path: Path) -> None:
    check = check_framework(write(tmp_path, config(calculation_spec={"m": "label * 2"})))
    assert [e.message for e in check.of("error")] == ["variable 'label' reads 'label', which is not a number"]


def test_cycle_is_an_error(tmp_path: Path) -> None:
    check = check_framework(write(tmp_path, config(calculation_spec={"a": "b + 1", "b": "a * 2"})))
    assert "formulas form a cycle: a -> b -> a" in check.of("error")[0].message


def test_unbounded_metric_names_its_open_inputs(tmp_path: Path) -> None:
    cfg = config(analysis_variants={"default": {"analysis_prompt": "Rate calm and alarm."}},
                 calculation_spec={"margin": "calm_rating - alarm_rating", "ratio": "calm_rating / alarm_rating"})
    check = check_framework(write(tmp_path, cfg))
    warnings = {f.where: f.message for f in check.of("warning")}
    assert "inputs without a stated range: alarm_rating, calm_rating" in warnings["calculation_spec.margin"]
    assert check.metric_ranges["margin"] == (float("-inf"), float("inf"))


def test_division_by_a_range_containing_zero(tmp_path: Path) -> None:
    check = check_framework(write(tmp_path, config(calculation_spec={"ratio": "calm_rating / alarm_rating"})))
    assert "a divisor's range contains 0" in check.of("warning")[0].message


def test_v5_delimiters_and_groups(tmp_path: Path) -> None:
    fixture = REPO / "tests/fixtures/frameworks/tide_v5.md"
    check = check_framework(fixture)
    csv_warnings = [f for f in check.of("warning") if "embedded_csv_requirements" in f.where]
    assert len(csv_warnings) == 2 and "'<<<SCORES_CSV>>>' appears neither in the prompt" in csv_warnings[0].message
    cfg = config(dimension_groups={"axis": ["calm", "serenity"]},
                 reliability_rubric={"alpha": {"good": [0.9, 0.7], "ok": "high"}})
    check = check_framework(write(tmp_path, cfg))
    messages = {f.where: f.message for f in check.of("warning")}
    assert messages["dimension_groups.axis"] == "names subjects the answer does not contain: serenity"
    assert messages["reliability_rubric.alpha.good"] == "range [0.9, 0.7] is reversed"
    assert "expected [low, high]" in messages["reliability_rubric.alpha.ok"]


def test_unknown_variant(tmp_path: Path) -> None:
    code, out = run(str(write(tmp_path, config())), "--variant", "short")
    assert code == 1 and "no variant 'short'" in out


def test_strict_fails_on_warnings(tmp_path: Path) -> None:
    path = REPO / "tests/fixtures/frameworks/tide_v5.md"
    assert run(str(path))[0] == 0 and run(str(path), "--strict")[0] == 1
