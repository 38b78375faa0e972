"""Score tables for people: every contract shape arranged by dimension, nothing cut."""

from __future__ import annotations

from mva_dagster.extraction.schema import contract_json_schema
from mva_dagster.observe import display
from mva_dagster.observe.fields import numeric_values, schema_bounds, schema_numeric_names, score_table
from mva_dagster.specs.framework import load_framework
from tests.conftest import REPO

CIVIC = REPO / "tests" / "fixtures" / "civic_tone" / "framework.md"


def test_flat_contract_rows_follow_the_contract() -> None:
    framework = load_framework(CIVIC)
    names = list(framework.output_contract.schema_)
    fields = {name: (0.4 if "score" in name or "confidence" in name else
                     ["a quotation"] if "evidence" in name else "formal") for name in names}
    table = score_table(fields)
    dimensions = {n.rsplit("_", 1)[0] for n in names if n.endswith(("_score", "_confidence", "_evidence"))}
    assert set(table.rows) == dimensions  # every dimension of the contract, and only those
    assert table.roles == ["score", "confidence", "evidence"]
    assert {name for name, _ in table.other} == set(names) - {n for n in names if n.rsplit("_", 1)[0] in dimensions
                                                             and n.endswith(("_score", "_confidence", "_evidence"))}


def test_role_objects_and_dimension_objects() -> None:
    nested = score_table({"scores": {"alpha": 0.1, "beta": 0.2}, "confidence": {"alpha": 0.9},
                          "evidence": {"alpha": ["q1", "q2"]}, "reasoning": {"alpha": "because"}})
    assert nested.rows == {"alpha": {"score": 0.1, "confidence": 0.9, "evidence": ["q1", "q2"]},
                           "beta": {"score": 0.2}}
    assert nested.other == [("reasoning.alpha", "because")]
    by_dim = score_table({"dimensional_scores": {"gamma": {"raw_score": 0.3, "salience": 0.5, "evidence": "q"}}})
    assert by_dim.rows == {"gamma": {"score": 0.3, "salience": 0.5, "evidence": "q"}}
    assert by_dim.roles == ["score", "salience", "evidence"]


def test_text_and_markdown_never_truncate() -> None:
    long_quote = "word " * 120 + "| the end"
    table = score_table({"alpha_score": 0.123456789, "alpha_evidence": [long_quote, "second quote"],
                         "summary": "x" * 700})
    text = "\n".join(display.text_lines(table))
    assert long_quote in text and "second quote" in text and "x" * 700 in text
    assert "0.123456789" in text  # the model's number, unrounded
    md = display.markdown(table)
    assert long_quote.replace("|", "\\|") in md and "x" * 700 in md
    assert md.splitlines()[0] == "| dimension | score | evidence |"


def test_schema_helpers_name_nested_leaves() -> None:
    schema = contract_json_schema({"scores": {"type": "object", "properties": {
        "alpha": {"type": "number", "minimum": 0, "maximum": 1}}}, "top_score": {"type": "number", "minimum": -1,
                                                                                  "maximum": 1}})
    assert schema_numeric_names(schema) == {"scores_alpha", "top_score"}
    assert schema_bounds(schema) == {("scores", "alpha"): (0.0, 1.0), ("top_score",): (-1.0, 1.0)}
    assert numeric_values({"scores": {"alpha": 0.5}, "top_score": 1, "flag": True}) == {
        "scores_alpha": 0.5, "top_score": 1.0}
