"""Session checks (Dagster asset checks wrap them): coverage, ranges, evidence, budget, alerts."""

from __future__ import annotations

from mva_dagster.observe.session_checks import (
    alerts,
    cost_within_budget,
    coverage,
    evidence_present,
    score_ranges,
)
from mva_dagster.steps.context import SessionContext
from mva_dagster.steps.extraction import run_extraction
from tests.observe.conftest import Land


def test_checks_on_a_partly_answered_session(civic_session: SessionContext, land: Land) -> None:
    ctx = civic_session
    docs = [d.id for d in ctx.manifest.documents]
    good = {"register": "formal", "warmth_score": 0.2, "warmth_confidence": 0.9, "warmth_evidence": ["qqq zzz"],
            "hostility_score": 0.0, "hostility_confidence": 0.9, "hostility_evidence": [],
            "overall_confidence": 0.8, "summary": "fine"}
    land(docs[0], 1, fields=good)
    land(docs[0], 2, fields={**good, "warmth_score": 1.7, "warmth_evidence": []})  # out of range, no quote
    land(docs[1], 1, fields={**good, "warmth_score": 0.9}, cost=0.002)
    run_extraction(ctx, docs)

    result = coverage(ctx)
    expected = len(docs) * 2
    assert not result.passed and result.metadata == {"expected": expected, "valid": 3,
                                                     "missing_or_invalid": expected - 3}
    assert any(f"{docs[2]} · gemini-2.5-flash · run 1" in d for d in result.details)

    ranges = score_ranges(ctx)
    assert not ranges.passed and ranges.details == [
        f"{docs[0]} · gemini-2.5-flash · run 2: warmth_score = 1.7 (allowed 0.0 to 1.0)"]

    evidence = evidence_present(ctx)
    assert not evidence.passed and evidence.severity == "WARN"
    assert evidence.details == [f"{docs[0]} · gemini-2.5-flash · run 2: warmth scored 1.7 with no quotation"]
    assert evidence.metadata["verbatim"] == 0  # "qqq zzz" is not a passage of any document

    budget = cost_within_budget(ctx)  # the experiment's budget is $0.001
    assert not budget.passed and budget.metadata["budget_usd"] == 0.001
    assert abs(budget.metadata["cost_usd"] - 0.0028) < 1e-12

    fired = alerts(ctx)  # warmth_score > 0.5
    assert not fired.passed and len(fired.details) == 2
    assert fired.markdown().startswith("2 alert(s) from 1 rule(s)")
