"""Answers shaped like real Claude, GPT and Gemini answers end as the right records.

The fixtures in answers/ imitate what those models write when a prompt's format instructions are
loose or ignored: Gemini's Markdown headings with bold labels and nested bullets, or a table; Claude's
prose around a fenced JSON block, or JSON followed by v5 CSV blocks; GPT's nested ``{"scores": ...}``
for a flat contract. Each must give exactly the values written in it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.extraction_styles import REPO, SHARED, Setup, SimulatedModel
from mva_dagster.extraction.chain import run_chain
from mva_dagster.extraction.parse import extract
from mva_dagster.extraction.transform import transform_request

ANSWERS = Path(__file__).parent / "answers"
CFF41 = SHARED / "data/frameworks/cff/cff_v4.1.md"
CFF42 = SHARED / "data/frameworks/cff/cff_v4.2.md"
ECF = SHARED / "data/ecf/ecf_v1.0.md"
NANO = SHARED / "data/nano_sentiment/framework.md"
DEMO = REPO / "projects/MVA/experiments/sotu_demo/framework.md"


def setup(path: Path) -> Setup:
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared holds the real Discernus frameworks)")
    return Setup.load(path.stem, path)


def test_gemini_markdown_headings(shared: Path) -> None:
    s = setup(CFF41)
    result = extract((ANSWERS / "gemini_markdown_cff41.md").read_text(), s.shape)
    assert result.valid and result.path == "markdown", result.errors
    f = result.fields
    assert f["worldview"] == "Conservative"
    assert (f["tribal_dominance_score"], f["tribal_dominance_confidence"]) == (0.2, 0.7)
    assert f["tribal_dominance_evidence"] == ["those who would take what our families have built", "this is our country"]
    assert f["fear_score"] == 0.55  # written "0.55/1.0"
    assert (f["fragmentative_goal_score"], f["cohesive_goal_evidence"]) == (0.25, ["we will build it together"])
    assert f["overall_analysis_confidence"] == 0.78
    assert f["competitive_patterns_observed"].startswith("High fear alongside high hope")
    values = s.framework.calculation_plan().evaluate(s.shape.formula_row(f))
    assert values["descriptive_cohesion_index"] == pytest.approx(0.33 * 0.15 + 0.27 * 0.2 + 0.40 * 0.1)


def test_claude_prose_around_a_fenced_block(shared: Path) -> None:
    s = setup(ECF)
    result = extract((ANSWERS / "claude_fenced_after_prose_ecf.md").read_text(), s.shape)
    assert result.valid and result.path == "fenced_json", result.errors
    assert (result.fields["hope_score"], result.fields["hope_confidence"]) == (0.8, 0.9)
    assert result.fields["hope_evidence"] == ["a future we can build", "progress within reach"]
    assert result.fields["salience_ranking"][0] == {"dimension": "hope", "salience_score": 0.9, "rank": 1}
    plan = s.framework.calculation_plan()
    assert plan.evaluate(s.shape.formula_row(result.fields))["affective_climate_index"] == pytest.approx(0.35)


def test_gpt_nested_scores_for_a_flat_contract(shared: Path) -> None:
    s = setup(CFF41)
    result = extract((ANSWERS / "gpt_nested_scores_cff41.json").read_text(), s.shape)
    assert result.valid and result.path == "bare_json+field_match", result.errors
    f = result.fields
    assert (f["individual_dignity_score"], f["individual_dignity_confidence"]) == (0.8, 0.9)
    assert f["cohesive_goal_evidence"] == ["let us work together"] and f["envy_evidence"] == []
    assert f["worldview"] == "Libertarian"


def test_gemini_table(shared: Path) -> None:
    s = setup(NANO)
    result = extract((ANSWERS / "gemini_table_nano.md").read_text(), s.shape)
    assert result.valid and result.path == "markdown", result.errors
    assert result.fields["positive_sentiment_raw_score"] == 0.9
    assert result.fields["negative_sentiment_evidence"] == "nothing went wrong"


def test_json_followed_by_v5_csv_blocks(shared: Path) -> None:
    s = setup(CFF42)
    result = extract((ANSWERS / "claude_json_and_v5_csv_cff42.md").read_text(), s.shape)
    assert result.valid and result.path == "embedded_json", result.errors
    assert (result.fields["fear_score"], result.fields["fear_confidence"], result.fields["fear_reasoning"]) == (
        0.6, 0.8, "much")
    values = s.framework.calculation_plan().evaluate(s.shape.formula_row(result.fields))
    assert all(v is not None for v in values.values())


def test_markdown_missing_a_field_is_completed_by_the_transformation() -> None:
    """Only the missing worldview comes from the transformation model; every score stays as written."""
    s = setup(DEMO)
    raw = (ANSWERS / "gpt_markdown_demo_no_worldview.md").read_text()
    deterministic = extract(raw, s.shape)
    assert not deterministic.valid and deterministic.errors == ["worldview: missing required field"]

    async def go() -> object:
        model = SimulatedModel("bare")
        try:
            return await run_chain(raw, s.shape, make_request=lambda attempt: transform_request(
                session_id="s", document_id="d", replicate=1, model="gemini-2.5-flash", raw_text=raw,
                shape=s.shape, max_tokens=4096, attempt=attempt), transform=model)
        finally:
            await model.aclose()

    result = asyncio.run(go())
    assert result.valid and result.path == "llm_transform"  # type: ignore[attr-defined]
    fields = result.fields  # type: ignore[attr-defined]
    assert {k: v for k, v in fields.items() if k != "worldview"} == deterministic.fields
    assert fields["worldview"] in ("Progressive", "Conservative", "Libertarian", "Other")
    assert "transform_filled:1_of_22" in result.flags  # type: ignore[attr-defined]
