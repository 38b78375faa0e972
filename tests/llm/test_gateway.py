"""The gateway's treatment of each error class, against a real OpenAI-compatible server.

The simulated provider stands in for the proxy here (it speaks the same API and fails on demand), so
retry, wait, re-ask and budget behaviour is checked in seconds; tests/integration/ repeats the
important cases through the real LiteLLM proxy.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mva_dagster.errors import (
    BudgetExceeded,
    CooldownLLMError,
    PermanentLLMError,
    ProxyUnreachableError,
    RateLimitedLLMError,
    TransientLLMError,
)
from mva_dagster.llm import cost as ledger
from mva_dagster.llm.archive import SessionArchive, read_entry
from mva_dagster.llm.budget import SessionPolicy, write_policy
from mva_dagster.llm.gateway import LLMGateway, classify_http_error, default_check
from mva_dagster.llm.limits import ModelLimiter
from mva_dagster.providers.simulated import SimulatedConfig, SimulatedServer, serve_in_thread
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.services import free_port
from mva_dagster.sessions.layout import SessionLayout

MODEL = "gemini-2.5-flash"


@pytest.fixture
def sim() -> Iterator[SimulatedServer]:
    server = serve_in_thread(SimulatedConfig())
    yield server
    server.stop()


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SessionLayout:
    monkeypatch.setenv("MVA_PROXY_API_KEY", "sk-test")  # the simulated provider ignores keys
    monkeypatch.setenv("MVA_LLM_BACKOFF_BASE_S", "0.01")
    layout = SessionLayout(tmp_path / "projects" / "P" / "experiments" / "E" / "sessions" / "session_20260101_000000")
    layout.create_dirs()
    (layout.root / "session.json").write_text("{}")
    return layout


def faults(server: SimulatedServer, *rules: dict[str, Any]) -> None:
    httpx.post(server.api_base.removesuffix("/v1") + "/admin/config", json={"faults": list(rules)}).raise_for_status()


def stats(server: SimulatedServer) -> dict[str, Any]:
    return dict(httpx.get(server.api_base.removesuffix("/v1") + "/admin/stats").json())


def req(layout: SessionLayout, n: int = 1, **params: Any) -> LLMRequest:
    return LLMRequest(session_id=layout.session_id, document_id=f"doc{n}", model=MODEL, replicate=1,
                      messages=[{"role": "user", "content": f"Rate speech number {n} for hope."}],
                      params={"max_tokens": 200, **params})


def complete(gateway: LLMGateway, layout: SessionLayout, request: LLMRequest, **kwargs: Any) -> tuple[LLMAnswer, bool]:
    async def go() -> tuple[LLMAnswer, bool]:
        async with gateway.make_client() as client:
            return await gateway.complete(client, request, SessionArchive(layout), **kwargs)

    return asyncio.run(go())


def test_classification_follows_the_taxonomy() -> None:
    h = httpx.Headers
    quota = classify_http_error(429, "Rate limit reached", h({"retry-after": "7"}))
    assert isinstance(quota, RateLimitedLLMError) and quota.retry_after == 7 and quota.error_class == "transient"
    cooldown = classify_http_error(429, "No deployments available ... in cooldown", h({"retry-after": "15"}))
    assert isinstance(cooldown, CooldownLLMError) and cooldown.retry_after == 15
    upstream = classify_http_error(429, "x", h({"llm_provider-retry-after": "2", "llm_provider-retry-after-ms": "1500"}))
    assert upstream.retry_after == 1.5  # milliseconds beat the rounded-up seconds
    fence = classify_http_error(429, "litellm.RateLimitError: No deployments available for selected model. "
                                     "Deployments={'d': {'current_rpm': 19, 'rpm_limit': 20}}",
                                h({"llm_provider-retry-after": "60"}))
    assert isinstance(fence, RateLimitedLLMError) and fence.retry_after is not None
    assert 0.5 <= fence.retry_after <= 60.5  # the proxy counts per UTC minute: wait for the next one
    assert type(classify_http_error(503, "overloaded", h())) is TransientLLMError
    for status, body in ((400, "context_length_exceeded"), (401, "bad key"), (404, "no model"), (400, "bad")):
        error = classify_http_error(status, body, h())
        assert isinstance(error, PermanentLLMError) and error.hint, (status, body)


def test_a_rate_limit_waits_and_tells_the_models_limiter(sim: SimulatedServer, layout: SessionLayout) -> None:
    faults(sim, {"kind": "429", "first_n": 3, "retry_after": 0.05})
    limiter = ModelLimiter(MODEL, concurrency=4, rpm=1000, tpm=10**9)
    answer, from_archive = complete(LLMGateway(proxy_url=sim.api_base.removesuffix("/v1"), max_attempts=1),
                                    layout, req(layout), limiter=limiter)
    # max_attempts=1: rate-limit waits are not failed attempts, so three 429s did not end the call.
    assert answer.ok and not from_archive and answer.attempts == 4
    assert limiter.stats.rate_limited == 3 and limiter.limit < 4
    totals = ledger.session_totals(layout)
    assert totals.calls == 1 and totals.open_usd == 0


def test_server_errors_are_retried_then_fail_with_their_class(sim: SimulatedServer, layout: SessionLayout) -> None:
    faults(sim, {"kind": "500"})
    gateway = LLMGateway(proxy_url=sim.api_base.removesuffix("/v1"), max_attempts=3)
    with pytest.raises(TransientLLMError) as failed:
        complete(gateway, layout, req(layout))
    assert failed.value.attempts == 3 and "gave up after 3 failed attempts" in failed.value.message  # type: ignore[attr-defined]
    assert stats(sim)["total"]["failed"] == 3
    lines = [json.loads(x) for x in (layout.logs / "conversations.jsonl").read_text().splitlines()]
    assert lines[-1]["status"] == "failed" and lines[-1]["error_class"] == "transient"
    totals = ledger.session_totals(layout)
    assert totals.failed_calls == 1 and totals.spent_usd == 0 and totals.open_usd == 0


def test_a_permanent_error_is_not_retried(sim: SimulatedServer, layout: SessionLayout) -> None:
    faults(sim, {"kind": "context_length"})
    with pytest.raises(PermanentLLMError) as failed:
        complete(LLMGateway(proxy_url=sim.api_base.removesuffix("/v1")), layout, req(layout))
    assert "context window" in failed.value.message and "larger context window" in (failed.value.hint or "")
    assert stats(sim)["total"]["requests"] == 1


def test_an_unusable_answer_is_re_asked_once_and_both_are_archived(sim: SimulatedServer,
                                                                  layout: SessionLayout) -> None:
    faults(sim, {"kind": "malformed", "first_n": 1})

    def check(answer: LLMAnswer) -> str | None:
        try:
            json.loads(answer.raw_text or "")
        except ValueError:
            return "malformed JSON"
        return None

    request = req(layout)
    answer, _ = complete(LLMGateway(proxy_url=sim.api_base.removesuffix("/v1")), layout, request, check=check)
    assert check(answer) is None and answer.reask_reason == "malformed JSON"
    assert len(answer.superseded) == 1 and check(answer.superseded[0]) == "malformed JSON"
    entry = read_entry(SessionArchive(layout).path_for(request))  # one file, the key stays unique
    assert entry.answer.superseded[0].raw_text == answer.superseded[0].raw_text
    assert stats(sim)["total"]["served"] == 2
    assert ledger.session_totals(layout).calls == 2  # both answers were paid for


def test_a_truncated_answer_is_re_asked_once_only(sim: SimulatedServer, layout: SessionLayout) -> None:
    faults(sim, {"kind": "truncated"})  # every answer is cut off
    answer, _ = complete(LLMGateway(proxy_url=sim.api_base.removesuffix("/v1")), layout, req(layout),
                         check=default_check)
    assert answer.finish_reason == "length" and answer.reask_reason and "cut off" in answer.reask_reason
    assert len(answer.superseded) == 1 and stats(sim)["total"]["served"] == 2


def test_a_call_that_could_cross_the_budget_is_never_sent(sim: SimulatedServer, layout: SessionLayout) -> None:
    write_policy(layout, SessionPolicy(session_usd=0.0001))
    with pytest.raises(BudgetExceeded) as refused:
        complete(LLMGateway(proxy_url=sim.api_base.removesuffix("/v1")), layout, req(layout, 7))
    assert refused.value.level == "session" and (refused.value.needed_usd or 0) > 0.0001
    assert stats(sim)["total"]["requests"] == 0
    assert ledger.session_totals(layout).paused is not None


def test_the_gateway_waits_for_a_proxy_that_is_restarting(layout: SessionLayout) -> None:
    port = free_port()
    started: list[SimulatedServer] = []

    def start_later() -> None:
        time.sleep(1.0)
        started.append(serve_in_thread(SimulatedConfig(), port=port))

    waits: list[str] = []
    threading.Thread(target=start_later, daemon=True).start()
    try:
        answer, _ = complete(LLMGateway(proxy_url=f"http://127.0.0.1:{port}"), layout, req(layout),
                             on_wait=lambda doc, s, reason: waits.append(reason))
        assert answer.ok and answer.attempts >= 2
        assert waits and all("unreachable" in w for w in waits)
    finally:
        for server in started:
            server.stop()


def test_an_unreachable_proxy_fails_after_its_wait(layout: SessionLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVA_LLM_PROXY_DOWN_MAX_WAIT_S", "0.3")
    with pytest.raises(ProxyUnreachableError) as failed:
        complete(LLMGateway(proxy_url=f"http://127.0.0.1:{free_port()}"), layout, req(layout))
    assert "stayed unreachable" in failed.value.message and "mva proxy status" in (failed.value.hint or "")
