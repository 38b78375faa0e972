"""The analysis step: one LLM call per document x model x replicate, concurrently, archive first.

Concurrency is bounded per model by the registry (a local model takes one request at a time, a
cloud model many). A call that fails after its retries does not stop the batch: it is logged to
``logs/failures.jsonl`` with its error class and shows up as a failed record downstream, and
``mva resume`` (or a re-materialization of the partition) sends only what has no answer yet.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mva_dagster.errors import LLMError, SpecError
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.gateway import LLMGateway
from mva_dagster.records import LLMAnswer
from mva_dagster.sessions.chronolog import Chronolog, utc_now
from mva_dagster.steps.context import SessionContext

Report = Callable[[str], None]


@dataclass
class CallOutcome:
    document_id: str
    model: str
    replicate: int
    answer: LLMAnswer | None = None
    from_archive: bool = False
    error_class: str | None = None
    error: str | None = None


@dataclass
class AnalysisSummary:
    outcomes: list[CallOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(1 for o in self.outcomes if o.answer is not None and not o.from_archive)

    @property
    def from_archive(self) -> int:
        return sum(1 for o in self.outcomes if o.from_archive)

    @property
    def failed(self) -> list[CallOutcome]:
        return [o for o in self.outcomes if o.answer is None]

    @property
    def cost_usd(self) -> float:
        return sum(o.answer.cost_usd or 0.0 for o in self.outcomes if o.answer and not o.from_archive)

    def by_document(self) -> dict[str, list[CallOutcome]]:
        grouped: dict[str, list[CallOutcome]] = defaultdict(list)
        for outcome in self.outcomes:
            grouped[outcome.document_id].append(outcome)
        return grouped


def model_concurrency(model: str) -> int:
    """Parallel calls for one model alias: ``$MVA_MAX_CONCURRENCY`` or the registry's limit."""
    if os.environ.get("MVA_MAX_CONCURRENCY"):
        return max(1, int(os.environ["MVA_MAX_CONCURRENCY"]))
    from mva_dagster.llm.registry import load_registry

    try:
        entry = load_registry().resolve(model)
    except SpecError:
        return 4
    return max(1, int(getattr(entry, "max_concurrency", 4) or 4))


def run_analysis(ctx: SessionContext, gateway: LLMGateway, document_ids: list[str],
                 report: Report) -> AnalysisSummary:
    return asyncio.run(_run(ctx, gateway, document_ids, report))


async def _run(ctx: SessionContext, gateway: LLMGateway, document_ids: list[str],
               report: Report) -> AnalysisSummary:
    calls = ctx.calls(document_ids)
    summary = AnalysisSummary()
    archive = SessionArchive(ctx.layout)
    chronolog = Chronolog(ctx.layout.chronolog, project=ctx.manifest.project,
                          session_id=ctx.manifest.session_id)
    limits = {model: asyncio.Semaphore(model_concurrency(model)) for model in ctx.manifest.models}
    total = len(calls)
    done = 0
    started = time.monotonic()
    chronolog.append("ANALYSIS_STARTED", {"calls": total, "documents": len(document_ids)})

    async def on_wait(document_id: str, seconds: float, reason: str) -> None:
        report(f"  waiting {seconds:.1f}s before retrying {document_id} ({reason})")

    async def one(client: Any, document_id: str, model: str, replicate: int) -> CallOutcome:
        nonlocal done
        outcome = CallOutcome(document_id, model, replicate)
        request = ctx.analysis_request(document_id, model, replicate)
        async with limits[model]:
            try:
                outcome.answer, outcome.from_archive = await gateway.complete(
                    client, request, archive, on_wait=on_wait)
            except LLMError as exc:
                outcome.error_class, outcome.error = exc.error_class, str(exc)
                _log_failure(ctx, request.key(), outcome, getattr(exc, "attempts", None))
        done += 1
        elapsed = time.monotonic() - started
        if outcome.answer is not None:
            source = "archive" if outcome.from_archive else f"{outcome.answer.latency_s or 0:.1f}s"
            cost = "" if outcome.from_archive or outcome.answer.cost_usd is None \
                else f", ${outcome.answer.cost_usd:.5f}"
            report(f"[analysis {done}/{total}] {document_id} {model} run {replicate}: answered "
                   f"({source}{cost}) - {elapsed:.0f}s elapsed")
            if not outcome.from_archive:
                chronolog.append("LLM_CALL_COMPLETED", {
                    "document_id": document_id, "model": model, "replicate": replicate,
                    "request_key": request.key(), "cost_usd": outcome.answer.cost_usd,
                    "latency_s": outcome.answer.latency_s, "provider_model": outcome.answer.provider_model})
        else:
            report(f"[analysis {done}/{total}] {document_id} {model} run {replicate}: FAILED "
                   f"({outcome.error_class}) {(outcome.error or '').splitlines()[0][:160]}")
            chronolog.append("LLM_CALL_FAILED", {
                "document_id": document_id, "model": model, "replicate": replicate,
                "error_class": outcome.error_class, "error": (outcome.error or "")[:500]})
        return outcome

    max_conn = sum(model_concurrency(m) for m in ctx.manifest.models) + 4
    async with gateway.make_client(max_connections=max_conn) as client:
        summary.outcomes = list(await asyncio.gather(*(one(client, *call) for call in calls)))
    summary.seconds = time.monotonic() - started
    chronolog.append("ANALYSIS_COMPLETED", {
        "calls": total, "sent": summary.sent, "from_archive": summary.from_archive,
        "failed": len(summary.failed), "cost_usd": round(summary.cost_usd, 6),
        "seconds": round(summary.seconds, 2)})
    return summary


def _log_failure(ctx: SessionContext, key: str, outcome: CallOutcome, attempts: int | None) -> None:
    line = json.dumps({"ts": utc_now(), "document_id": outcome.document_id, "model": outcome.model,
                       "replicate": outcome.replicate, "request_key": key, "attempts": attempts,
                       "error_class": outcome.error_class, "error": outcome.error}) + "\n"
    ctx.layout.logs.mkdir(parents=True, exist_ok=True)
    fd = os.open(ctx.layout.failures_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def last_failures(ctx: SessionContext) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The most recent failure of each (document, model, replicate), from logs/failures.jsonl."""
    failures: dict[tuple[str, str, int], dict[str, Any]] = {}
    if not ctx.layout.failures_log.exists():
        return failures
    for line in ctx.layout.failures_log.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a torn last line after a crash
        failures[(item["document_id"], item["model"], int(item["replicate"]))] = item
    return failures
