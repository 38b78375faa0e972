"""Alert rules: the safe evaluator over a record's fields and metrics; typos fail before any call."""

from __future__ import annotations

from pathlib import Path

import pytest

from mva_dagster.errors import SpecError
from mva_dagster.extraction.schema import contract_json_schema
from mva_dagster.observe.alerts import compile_rules
from mva_dagster.specs.experiment import load_experiment
from mva_dagster.specs.framework import load_framework
from tests.conftest import REPO

DEMO = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"


def _rules(rules: list[str]):  # type: ignore[no-untyped-def]
    framework = load_framework(DEMO)
    return compile_rules(rules, json_schema=contract_json_schema(framework.output_contract),
                         calculation_spec=framework.calculation_spec)


def _record(**overrides: float) -> dict[str, object]:
    framework = load_framework(DEMO)
    fields: dict[str, object] = {}
    for name, spec in framework.output_contract.schema_.items():
        kind = spec.get("type") if isinstance(spec, dict) else spec
        fields[name] = 0.5 if kind == "number" else ["q"] if kind == "array" else "Other"
    fields.update(overrides)
    return fields


def test_rules_fire_on_fields_and_metrics() -> None:
    rules = _rules(["fear_score > 0.8", "overall_confidence < 0.5", "descriptive_cohesion_index < -0.2"])
    assert rules.evaluate(_record()) == []
    hits = rules.evaluate(_record(fear_score=0.9, overall_confidence=0.2, hope_score=0.0, amity_score=0.0))
    assert [h.rule for h in hits] == ["fear_score > 0.8", "overall_confidence < 0.5",
                                      "descriptive_cohesion_index < -0.2"]
    assert hits[0].values == {"fear_score": 0.9}
    assert "fear_score = 0.9" in hits[0].describe()


def test_missing_inputs_never_fire() -> None:
    rules = _rules(["fear_score > 0.8"])
    assert rules.evaluate({"hope_score": 1.0}) == []


def test_unknown_name_is_a_spec_error_with_a_suggestion() -> None:
    with pytest.raises(SpecError) as caught:
        _rules(["fear_scor > 0.8"])
    assert "alerts[0]" in str(caught.value) and "fear_score" in str(caught.value)


def test_experiment_alerts_are_parsed_and_checked_at_load(tmp_path: Path) -> None:
    good = tmp_path / "good.md"
    good.write_text(f"---\nframework_file: {DEMO}\nmodels: [gemini-2.5-flash]\n"
                    "alerts: ['fear_score > 0.8', 'overall_confidence < 0.5']\n---\n")
    assert load_experiment(good).alerts == ["fear_score > 0.8", "overall_confidence < 0.5"]
    bad = tmp_path / "bad.md"
    bad.write_text(f"---\nframework_file: {DEMO}\nmodels: [gemini-2.5-flash]\nalerts: ['fear_score >']\n---\n")
    with pytest.raises(SpecError) as caught:
        load_experiment(bad)
    assert "alerts[0]" in str(caught.value) and "fear_score >" in str(caught.value)
