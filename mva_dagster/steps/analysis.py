"""The analysis step: one LLM call per document x model x replicate, concurrently, archive first.

Admission is per model (:class:`~mva_dagster.llm.limits.ModelLimiter`): concurrency, rpm and tpm
from the registry, halved together on 429 and announced while waiting. Every call is reserved
against the session's budgets first (:mod:`mva_dagster.llm.budget`); when the next call could
cross one, nothing more is sent and the step ends with :class:`BudgetExceeded` (the session is
*paused by budget*; everything answered is archived). An unusable answer (truncated, unparseable)
is re-asked once. A call that fails after its retries does not stop the batch: it is logged to
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
from typing import TYPE_CHECKING, Any

from mva_dagster.errors import BudgetExceeded, LLMError, SpecError
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.budget import describe_policy, session_guard
from mva_dagster.llm.gateway import LLMGateway, default_check
from mva_dagster.llm.limits import ModelLimiter
from mva_dagster.llm.registry import load_registry
from mva_dagster.observe.live import LiveObserver
from mva_dagster.records import ExtractedRecord, LLMAnswer
from mva_dagster.sessions.appendlog import PlainLog, append_line
from mva_dagster.sessions.chronolog import Chronolog, utc_now
from mva_dagster.steps.context import SessionContext

if TYPE_CHECKING:
    from mva_dagster.steps.extraction import Extractor

Report = Callable[[str], None]


@dataclass
class CallOutcome:
    """How one call ended. ``answer`` and ``record`` are set while the call is being handled and
    dropped once its document is done, so a long session does not keep the archive in memory."""

    document_id: str
    model: str
    replicate: int
    answer: LLMAnswer | None = None
    from_archive: bool = False
    error_class: str | None = None
    error: str | None = None
    error_type: str | None = None
    not_sent: bool = False  # refused by a budget before sending: not a failure, the session paused
    answered: bool = False
    paid_usd: float = 0.0  # what this run paid for it, re-asked answers included; 0 from the archive
    record: ExtractedRecord | None = None  # the extracted record, in a pipelined run

    def land(self, answer: LLMAnswer, from_archive: bool) -> None:
        self.answer, self.from_archive, self.answered = answer, from_archive, True
        if not from_archive:
            self.paid_usd = (answer.cost_usd or 0.0) + sum(s.cost_usd or 0.0 for s in answer.superseded)

    def release(self) -> None:
        self.answer = None
        self.record = None


# Called when a document's last call has landed: (document id, its outcomes, its scores as Markdown).
DocumentDone = Callable[[str, list[CallOutcome], str], None]


@dataclass
class AnalysisSummary:
    outcomes: list[CallOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(1 for o in self.outcomes if o.answered and not o.from_archive)

    @property
    def from_archive(self) -> int:
        return sum(1 for o in self.outcomes if o.from_archive)

    @property
    def failed(self) -> list[CallOutcome]:
        return [o for o in self.outcomes if not o.answered and not o.not_sent]

    @property
    def not_sent(self) -> list[CallOutcome]:
        return [o for o in self.outcomes if o.not_sent]

    @property
    def cost_usd(self) -> float:
        """What this run paid, re-asked answers included (they were paid for too)."""
        return sum(o.paid_usd for o in self.outcomes)

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
                 report: Report, on_document: DocumentDone | None = None,
                 extractor: Extractor | None = None) -> AnalysisSummary:
    """Send every call of ``document_ids`` (archive first). With an ``extractor`` the session is
    pipelined: each answer is extracted (and its row added to results/scores.csv) as it lands."""
    session_log = PlainLog.for_path(ctx.layout.run_log)  # progress also goes to logs/session.log

    def report_and_log(line: str) -> None:
        report(line)
        session_log.write(line.strip())

    return asyncio.run(_run(ctx, gateway, document_ids, report_and_log, on_document, extractor))


async def _run(ctx: SessionContext, gateway: LLMGateway, document_ids: list[str],
               report: Report, on_document: DocumentDone | None = None,
               extractor: Extractor | None = None) -> AnalysisSummary:
    calls = ctx.calls(document_ids)
    summary = AnalysisSummary()
    archive = SessionArchive(ctx.layout)
    chronolog = Chronolog(ctx.layout.chronolog, project=ctx.manifest.project,
                          session_id=ctx.manifest.session_id)
    registry = load_registry()
    cap = int(os.environ["MVA_MAX_CONCURRENCY"]) if os.environ.get("MVA_MAX_CONCURRENCY") else None
    limiters = {model: ModelLimiter.for_entry(registry.resolve(model), concurrency=cap, report=report)
                for model in ctx.manifest.models}
    # Calls between their budget reservation and its settlement; the limiter paces the requests.
    limits = {model: asyncio.Semaphore(limiters[model].max_concurrency) for model in ctx.manifest.models}
    guard = session_guard(ctx.layout)
    guard.resume()
    report_before, guard.report = guard.report, report
    fallbacks = guard.policy.fallbacks
    check = _answer_check(ctx)
    total = len(calls)
    done = 0
    started = time.monotonic()
    live = LiveObserver(ctx, report, document_ids)  # scores, alerts and waits as they happen
    by_document: dict[str, list[CallOutcome]] = defaultdict(list)
    last_landed = [time.monotonic()]  # when the last call landed (the heartbeat reads it)
    chronolog.append("ANALYSIS_STARTED", {"calls": total, "documents": len(document_ids)})
    if guard.active or fallbacks:
        report(f"  {describe_policy(guard.policy)}")

    async def on_wait(document_id: str, seconds: float, reason: str) -> None:
        report(f"  waiting {seconds:.1f}s before retrying {document_id} ({reason})")
        live.waiting(document_id, seconds, reason)

    async def one(client: Any, document_id: str, model: str, replicate: int) -> CallOutcome:
        nonlocal done
        outcome = CallOutcome(document_id, model, replicate)
        request = ctx.analysis_request(document_id, model, replicate)
        async with limits[model]:
            try:
                outcome.land(*await gateway.complete(
                    client, request, archive, on_wait=on_wait, limiter=limiters[model], budget=guard,
                    check=check, fallbacks=fallbacks.get(model), registry=registry))
            except BudgetExceeded:
                outcome.not_sent = True
            except LLMError as exc:
                outcome.error_class, outcome.error = exc.error_class, str(exc)
                outcome.error_type = type(exc).__name__
                _log_failure(ctx, request.key(), outcome, getattr(exc, "attempts", None))
        last_landed[0] = time.monotonic()
        if outcome.not_sent:
            return outcome
        if extractor is not None:  # outside the call slot: a transformation never holds one
            outcome.record = await extractor.extract(
                document_id, model, replicate, outcome.answer, from_archive=False, request_key=request.key(),
                failure=None if outcome.answered else {"error_class": outcome.error_class,
                                                       "error": outcome.error})
        done += 1
        elapsed = time.monotonic() - started
        if outcome.answer is not None:
            source = "archive" if outcome.from_archive else f"{outcome.answer.latency_s or 0:.1f}s"
            cost = "" if outcome.from_archive or outcome.answer.cost_usd is None \
                else f", ${outcome.answer.cost_usd:.5f}"
            extra = "".join([
                f", answered by {outcome.answer.model_used} (configured fallback)"
                if outcome.answer.fallback_used else "",
                f", re-asked: {outcome.answer.reask_reason}" if outcome.answer.reask_reason
                and not outcome.from_archive else "",
                f", waited {outcome.answer.waited_s:.0f}s" if outcome.answer.waited_s >= 1
                and not outcome.from_archive else ""])
            report(f"[analysis {done}/{total}] {document_id} {model} run {replicate}: answered "
                   f"({source}{cost}{extra}) - {elapsed:.0f}s elapsed")
            if not outcome.from_archive:
                chronolog.append("LLM_CALL_COMPLETED", {
                    "document_id": document_id, "model": model, "replicate": replicate,
                    "request_key": request.key(), "cost_usd": outcome.answer.cost_usd,
                    "latency_s": outcome.answer.latency_s, "provider_model": outcome.answer.provider_model,
                    "model_used": outcome.answer.model_used, "fallback_used": outcome.answer.fallback_used,
                    "reask_reason": outcome.answer.reask_reason, "waited_s": outcome.answer.waited_s})
        else:
            report(f"[analysis {done}/{total}] {document_id} {model} run {replicate}: FAILED "
                   f"({outcome.error_class}) {(outcome.error or '').splitlines()[0][:160]}")
            chronolog.append("LLM_CALL_FAILED", {
                "document_id": document_id, "model": model, "replicate": replicate,
                "error_class": outcome.error_class, "error_type": outcome.error_type,
                "error": (outcome.error or "")[:500]})
        scores_md = live.call_landed(request, outcome.answer, from_archive=outcome.from_archive,
                                     error_class=outcome.error_class, error=outcome.error)
        by_document[document_id].append(outcome)
        if scores_md is not None:
            if on_document is not None:
                on_document(document_id, by_document[document_id], scores_md)
            for landed in by_document.pop(document_id):
                landed.release()
        return outcome

    heartbeat = asyncio.create_task(_heartbeat(limiters, last_landed, report))
    max_conn = sum(limiter.max_concurrency for limiter in limiters.values()) + 4
    try:
        async with gateway.make_client(max_connections=max_conn) as client:
            summary.outcomes = list(await asyncio.gather(*(one(client, *call) for call in calls)))
    finally:
        heartbeat.cancel()
        if extractor is not None:
            await extractor.aclose()
        guard.report = report_before
        guard.wait_for_alerts()
    summary.seconds = time.monotonic() - started
    live.finish()
    chronolog.append("ANALYSIS_COMPLETED", {
        "calls": total, "sent": summary.sent, "from_archive": summary.from_archive,
        "failed": len(summary.failed), "not_sent": len(summary.not_sent),
        "cost_usd": round(summary.cost_usd, 6), "seconds": round(summary.seconds, 2),
        "rate_limited": {m: lim.stats.rate_limited for m, lim in limiters.items()},
        "cooldowns": {m: lim.stats.cooldowns for m, lim in limiters.items()}})
    _report_failures(summary, total, report, chronolog)
    if guard.paused is not None:
        paused = guard.paused
        report(f"Paused by budget: {len(summary.not_sent)} of {total} calls not sent, "
               f"{total - len(summary.not_sent) - len(summary.failed)} answered and archived.")
        raise BudgetExceeded(paused.message, hint=paused.hint, level=paused.level,
                             budget_usd=paused.budget_usd, committed_usd=paused.committed_usd,
                             needed_usd=paused.needed_usd)
    return summary


HEARTBEAT_S = 15.0


async def _heartbeat(limiters: dict[str, ModelLimiter], last_landed: list[float], report: Report) -> None:
    """While nothing lands for a while, say what the run is waiting on: a wait is not a hang."""
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        quiet = time.monotonic() - last_landed[0]
        if quiet >= HEARTBEAT_S:
            busy = [lim.describe() for lim in limiters.values() if lim.in_flight or lim.queued]
            if busy:
                report(f"  still working ({quiet:.0f}s since the last answer): " + "; ".join(busy))


def _answer_check(ctx: SessionContext) -> Callable[[LLMAnswer], str | None]:
    """An answer is worth one re-ask when the parse chain cannot read it at all (truncated,
    malformed, no JSON, empty); an answer that parses but breaks the schema goes to extraction."""
    from mva_dagster.extraction.parse import extract

    def check(answer: LLMAnswer) -> str | None:
        problem = default_check(answer)
        if problem is not None and answer.finish_reason != "length":
            return problem
        result = extract(answer.raw_text, ctx.record_shape, finish_reason=answer.finish_reason)
        if not result.valid and result.error_class in ("truncated", "malformed", "not_found", "empty_answer"):
            return f"{result.error_class}: {(result.errors or ['unreadable'])[0][:120]}"
        return None

    return check


def _report_failures(summary: AnalysisSummary, total: int, report: Report, chronolog: Chronolog) -> None:
    """The end-of-run summary of failed items: by class, and whether statistics will be partial."""
    failed = summary.failed
    if not failed:
        return
    by_class: dict[str, int] = defaultdict(int)
    for outcome in failed:
        by_class[f"{outcome.error_class} ({outcome.error_type})"] += 1
    report(f"{len(failed)} of {total} calls FAILED - statistics will be partial "
           f"({total - len(failed)} of {total} records): "
           + ", ".join(f"{n} {cls}" for cls, n in sorted(by_class.items())))
    for outcome in failed[:20]:
        first = (outcome.error or "").splitlines()
        hint = next((line.strip() for line in first if line.strip().startswith("hint:")), "")
        report(f"  - {outcome.document_id} {outcome.model} run {outcome.replicate}: {outcome.error_class}: "
               f"{(first[0] if first else '')[:140]}" + (f" ({hint})" if hint else ""))
    if len(failed) > 20:
        report(f"  ... and {len(failed) - 20} more in logs/failures.jsonl")
    transient = sum(1 for o in failed if o.error_class == "transient")
    if transient:
        report(f"  {transient} failed transiently: resume the session later; only these calls are sent again")
    chronolog.append("ANALYSIS_FAILURES", {"failed": len(failed), "of": total, "by_class": dict(by_class),
                                           "statistics_partial": True})


def _log_failure(ctx: SessionContext, key: str, outcome: CallOutcome, attempts: int | None) -> None:
    line = json.dumps({"ts": utc_now(), "document_id": outcome.document_id, "model": outcome.model,
                       "replicate": outcome.replicate, "request_key": key, "attempts": attempts,
                       "error_class": outcome.error_class, "error_type": outcome.error_type,
                       "error": outcome.error}) + "\n"
    append_line(ctx.layout.failures_log, line.encode(), fsync=True)  # a torn line is set aside


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
