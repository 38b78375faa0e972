"""A real session tree (from the civic_tone fixture) and a way to land answers in it without a proxy.

Answers are valid instances of the session's own JSON Schema (the simulated provider's generator)
and go through the same code the analysis step uses: the conversation log writer and the
:class:`~mva_dagster.observe.live.LiveObserver`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from mva_dagster.llm import conversations
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.observe.live import LiveObserver
from mva_dagster.providers._schema_fill import fill_schema
from mva_dagster.records import LLMAnswer
from mva_dagster.sessions.chronolog import utc_now
from mva_dagster.steps.context import SessionContext
from tests.conftest import REPO

CIVIC = REPO / "tests" / "fixtures" / "civic_tone"
Land = Callable[..., str | None]


def write_experiment(folder: Path, *, alerts: list[str], runs: int = 2, budget: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.md"
    path.write_text(
        "---\n"
        f"name: {folder.name}\nframework_file: {CIVIC / 'framework.md'}\ncorpus: {CIVIC / 'corpus'}\n"
        f"models: [gemini-2.5-flash]\nruns_per_model: {runs}\nalerts: {json.dumps(alerts)}\n"
        + (f"budget: {budget}\n" if budget is not None else "") + "---\n")
    return path


@pytest.fixture
def civic_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SessionContext:
    from mva_dagster.launch import create_planned_session, plan_session

    monkeypatch.setenv("MVA_HOME", str(tmp_path / "mva_home"))
    experiment = write_experiment(tmp_path / "src" / "civic", alerts=["warmth_score > 0.5"], budget=0.001)
    plan = plan_session(experiment, provider="simulated", project_dir=tmp_path / "projects" / "P")
    return SessionContext.load(create_planned_session(plan))


@pytest.fixture
def land(civic_session: SessionContext) -> Land:
    """land(document, replicate, fields=None, failed=False, observer=None) -> the document's Markdown or None."""
    ctx = civic_session
    observers: list[LiveObserver] = []

    def _land(document_id: str, replicate: int, *, fields: dict[str, object] | None = None, failed: bool = False,
              cost: float = 0.0004, observer: LiveObserver | None = None) -> str | None:
        if observer is None:
            if not observers:
                observers.append(LiveObserver(ctx, lambda line: None, [d.id for d in ctx.manifest.documents]))
            observer = observers[0]
        request = ctx.analysis_request(document_id, "gemini-2.5-flash", replicate)
        if failed:
            from mva_dagster.errors import TransientLLMError

            error = TransientLLMError("rate limited (HTTP 429): slow down", status=429)
            error.attempts = 6  # type: ignore[attr-defined]
            conversations.record_failure(ctx.layout, request, error)
            return observer.call_landed(request, None, error_class="transient", error=str(error))
        instance = fields if fields is not None else fill_schema(
            ctx.json_schema, random.Random(f"{document_id}{replicate}"), request.messages[-1]["content"])
        now = utc_now()
        answer = LLMAnswer(request_key=request.key(), raw_text=json.dumps(instance), model_alias=request.model,
                           provider_model=request.model, call_id=f"call-{document_id}-{replicate}",
                           prompt_tokens=700, completion_tokens=300, cost_usd=cost, latency_s=1.25,
                           started_at=now, finished_at=now, finish_reason="stop",
                           response_headers={"x-litellm-version": "1.108.7", "x-litellm-model-id":
                                             "simulated-gemini-2.5-flash"})
        SessionArchive(ctx.layout).store(request, answer)
        conversations.record_answer(ctx.layout, request, answer, from_archive=False)
        return observer.call_landed(request, answer)

    return _land
