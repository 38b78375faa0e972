"""`mva estimate` and the confirmation `mva run` asks for: ranges, rate-limit time, no hanging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mva_dagster.cli.estimate import confirm_run
from mva_dagster.cli.main import main
from mva_dagster.errors import MvaError
from mva_dagster.launch import plan_session
from mva_dagster.llm.estimate import answer_text, estimate_plan, typical_answer
from tests.conftest import REPO

FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"
VERTEX = ("VERTEXAI_PROJECT", "VERTEXAI_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS")


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(("We will rebuild our nation together, with courage and hope.",
                              "Our enemies are everywhere and the people are afraid.",
                              "Every family deserves dignity, work and a fair chance.")):
        (corpus / f"speech{i}.txt").write_text(text * 20 + "\n")
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "experiment.md").write_text(
        f"---\nframework_file: {FRAMEWORK}\ncorpus: {corpus}\nmodels: [gemini-2.5-flash, gpt-4.1]\n"
        "runs_per_model: 2\nbudget: {session: 0.01, webhook: 'https://hooks.example.org/x'}\n"
        "fallbacks: {gpt-4.1: [gemini-2.5-flash]}\n---\n")
    return folder


def test_the_typical_answer_fills_the_contract() -> None:
    schema = {"type": "object", "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "evidence": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 1},
        "kind": {"enum": ["a", "b"]}, "n": {"type": "integer", "maximum": 10}}}
    answer = typical_answer(schema)
    assert set(answer) == {"score", "evidence", "kind", "n"} and len(answer["evidence"]) == 1
    assert len(answer["evidence"][0]) <= 30 and answer["kind"] == "a"
    assert len(answer_text(schema, "low")) < len(answer_text(schema, "high"))


def test_an_estimate_has_a_range_a_ceiling_and_a_time(experiment: Path) -> None:
    plan = plan_session(experiment, provider="simulated")
    estimate = estimate_plan(plan)
    assert estimate.analysis_calls == 3 * 2 * 2
    assert {g.purpose for g in estimate.groups} == {"analysis", "extraction", "synthesis"}
    analysis = [g for g in estimate.groups if g.purpose == "analysis"]
    assert {g.model for g in analysis} == {"gemini-2.5-flash", "gpt-4.1"}
    low, expected, high = (estimate.total(s) for s in ("low", "expected", "high"))
    assert 0 < low < expected < high < estimate.ceiling_usd
    gpt = next(g for g in analysis if g.model == "gpt-4.1")
    flash = next(g for g in analysis if g.model == "gemini-2.5-flash")
    assert gpt.cost_usd["expected"] > flash.cost_usd["expected"]  # list prices differ
    assert estimate.minutes["gpt-4.1"] > 0 and estimate.rate_limit_minutes == max(estimate.minutes.values())

    result = CliRunner().invoke(main, ["estimate", str(experiment), "--provider", "simulated", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["total_usd"]["expected"] == pytest.approx(expected, rel=1e-4)
    text = CliRunner().invoke(main, ["estimate", str(experiment), "--provider", "simulated"])
    assert "ceiling" in text.output and "rate limits" in text.output


def test_a_costly_real_run_is_never_left_waiting_for_an_answer(experiment: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VERTEX:
        monkeypatch.setenv(name, "set-for-the-check-only")
    monkeypatch.setenv("OPENAI_API_KEY", "set-for-the-check-only")
    plan = plan_session(experiment, provider="real")
    with pytest.raises(MvaError, match="no terminal to ask on") as refused:
        confirm_run(plan, yes=False, threshold=0.0, interactive=False)
    assert "--yes" in (refused.value.hint or "")
    confirm_run(plan, yes=True, threshold=0.0, interactive=False)  # --yes: go on
    confirm_run(plan, yes=False, threshold=1000.0, interactive=False)  # under the threshold: go on
    simulated = plan_session(experiment, provider="simulated")
    confirm_run(simulated, yes=False, threshold=0.0, interactive=False)  # nothing is paid: never asks


def test_the_session_policy_comes_from_the_experiment_and_the_cli(experiment: Path) -> None:
    from mva_dagster.launch import session_policy

    plan = plan_session(experiment, provider="simulated")
    policy = session_policy(plan)
    assert policy.session_usd == 0.01 and policy.alert_webhook == "https://hooks.example.org/x"
    assert policy.fallbacks == {"gpt-4.1": ["gemini-2.5-flash"]} and policy.budget_source == "experiment"
    plan.budget_override = 2.5
    assert session_policy(plan).session_usd == 2.5 and session_policy(plan).budget_source == "cli"
