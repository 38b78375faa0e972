"""The extraction step: archived answer -> validated flat record, one JSON file per call.

Each answer goes through the chain of :mod:`mva_dagster.extraction.chain`; when the deterministic
links fail, the LLM-to-LLM transformation is sent through the gateway (archive first, so a
re-materialization pays for nothing twice) with the experiment's ``extraction_model``. Invalid
answers are kept as invalid records with their raw answer and a classified reason, never dropped; a
call with no archived answer becomes a failed record naming its error class, so tables always have
one row per document x model x replicate.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from mva_dagster.errors import MvaError, SpecError
from mva_dagster.extraction.chain import ChainResult, run_chain
from mva_dagster.extraction.transform import transform_request
from mva_dagster.fsutil import atomic_write_json
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.gateway import LLMGateway
from mva_dagster.records import ExtractedRecord, LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import Chronolog
from mva_dagster.steps.analysis import last_failures, model_concurrency
from mva_dagster.steps.context import SessionContext, structured_output

Report = Callable[[str], None]


@dataclass
class ExtractionSummary:
    records: list[ExtractedRecord] = field(default_factory=list)
    transforms_sent: int = 0
    transforms_from_archive: int = 0
    transform_cost_usd: float = 0.0

    @property
    def valid(self) -> int:
        return sum(1 for r in self.records if r.valid)

    @property
    def invalid(self) -> list[ExtractedRecord]:
        return [r for r in self.records if not r.valid]

    def by_path(self) -> dict[str, int]:
        return dict(Counter(r.extraction_path for r in self.records))


def _transform_max_tokens(ctx: SessionContext, model: str) -> int:
    """Room for the whole flat record: at least the analysis allowance, within the model's limit."""
    from mva_dagster.llm.registry import load_registry

    wanted = max(8192, int(ctx.manifest.generation.get("max_tokens") or 0))
    try:
        return min(wanted, load_registry().resolve(model).max_output_tokens)
    except SpecError:
        return wanted


def run_extraction(ctx: SessionContext, document_ids: list[str], llm: LLMGateway | None = None,
                   report: Report | None = None) -> ExtractionSummary:
    """Extract every call of ``document_ids``; without ``llm`` the transformation link is skipped."""
    return asyncio.run(_run(ctx, document_ids, llm, report))


async def _run(ctx: SessionContext, document_ids: list[str], llm: LLMGateway | None,
               report: Report | None) -> ExtractionSummary:
    archive = SessionArchive(ctx.layout)
    failures = last_failures(ctx)
    shape = ctx.record_shape
    summary = ExtractionSummary()
    model = ctx.extraction_model if llm is not None else None
    limit = asyncio.Semaphore(model_concurrency(model) if model else 1)
    client: httpx.AsyncClient | None = None
    client_lock = asyncio.Lock()

    async def transform(request: LLMRequest) -> LLMAnswer:
        nonlocal client
        assert llm is not None
        async with limit:
            archived = archive.lookup(request)
            if archived is not None and archived.request_key == request.key():
                summary.transforms_from_archive += 1
                return archived
            async with client_lock:
                if client is None:
                    client = llm.make_client(max_connections=model_concurrency(request.model) + 2)
            answer, from_archive = await llm.complete(client, request, archive)
            if from_archive:
                summary.transforms_from_archive += 1
            else:
                summary.transforms_sent += 1
                summary.transform_cost_usd += answer.cost_usd or 0.0
            return answer

    async def one(document_id: str, call_model: str, replicate: int) -> ExtractedRecord:
        request = ctx.analysis_request(document_id, call_model, replicate)
        answer = archive.lookup(request)
        base: dict[str, Any] = {"session_id": ctx.manifest.session_id, "document_id": document_id,
                                "model": call_model, "replicate": replicate, "request_key": request.key()}
        if answer is None or answer.raw_text is None:
            failure = failures.get((document_id, call_model, replicate))
            reason = (f"no answer: {failure['error_class']} error: {failure['error']}" if failure
                      else "no answer in the archive (the call has not been made yet)"
                      if answer is None else "the provider returned no text")
            return ExtractedRecord(**base, valid=False, errors=[reason], extraction_path="no_answer",
                                   error_class="no_answer", extraction_trace=[reason])
        raw = answer.raw_text

        def make_request(attempt: int) -> LLMRequest:
            assert model is not None
            return transform_request(
                session_id=ctx.manifest.session_id, document_id=document_id, replicate=replicate,
                model=model, raw_text=raw, shape=shape, max_tokens=_transform_max_tokens(ctx, model),
                attempt=attempt, structured_output=structured_output(model))

        result: ChainResult = await run_chain(
            raw, shape, finish_reason=answer.finish_reason,
            make_request=make_request if llm is not None else None,
            transform=transform if llm is not None else None)
        return ExtractedRecord(
            **base, valid=result.valid, fields=result.fields, errors=result.errors, flags=result.flags,
            extraction_path=result.path, error_class=result.error_class, extraction_trace=result.trace,
            extraction_model=result.transform_model, transform_request_keys=result.transform_keys,
            raw_answer=None if result.valid else raw)

    try:
        summary.records = list(await asyncio.gather(*(one(*call) for call in ctx.calls(document_ids))))
    except MvaError:
        raise
    finally:
        if client is not None:
            await client.aclose()
    for record in summary.records:
        atomic_write_json(ctx.layout.extracted_path(record.document_id, record.model, record.replicate),
                          record.model_dump(mode="json"))
    classes = Counter(r.error_class for r in summary.records if r.error_class)
    Chronolog(ctx.layout.chronolog, project=ctx.manifest.project, session_id=ctx.manifest.session_id).append(
        "EXTRACTION_COMPLETED", {
            "documents": len(document_ids), "records": len(summary.records), "valid": summary.valid,
            "by_path": summary.by_path(), "error_classes": dict(classes), "extraction_model": model,
            "transforms_sent": summary.transforms_sent,
            "transforms_from_archive": summary.transforms_from_archive,
            "transform_cost_usd": round(summary.transform_cost_usd, 6)})
    if report is not None and (summary.transforms_sent or summary.transforms_from_archive):
        report(f"[extraction] {summary.transforms_sent} answers transformed by {model} "
               f"(${summary.transform_cost_usd:.5f}), {summary.transforms_from_archive} from the archive")
    return summary


def load_records(ctx: SessionContext) -> list[ExtractedRecord]:
    """Every record of the session, in (document, model, replicate) order; missing ones as failed."""
    records = []
    for document_id, model, replicate in ctx.calls():
        path = ctx.layout.extracted_path(document_id, model, replicate)
        if path.exists():
            records.append(ExtractedRecord.model_validate_json(path.read_text(encoding="utf-8")))
        else:
            records.append(ExtractedRecord(
                session_id=ctx.manifest.session_id, document_id=document_id, model=model,
                replicate=replicate, request_key="", valid=False,
                errors=["not extracted yet"], extraction_path="missing", error_class="no_answer"))
    return records
