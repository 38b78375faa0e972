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

from mva_dagster.errors import SpecError
from mva_dagster.extraction.chain import ChainResult, run_chain
from mva_dagster.extraction.transform import transform_request
from mva_dagster.fsutil import atomic_write_json
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.gateway import LLMGateway
from mva_dagster.records import ExtractedRecord, LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import Chronolog
from mva_dagster.steps import tables
from mva_dagster.steps.analysis import last_failures, model_concurrency
from mva_dagster.steps.context import SessionContext, structured_output

Report = Callable[[str], None]


@dataclass
class ExtractionSummary:
    """Counts, not records: a 10,000-document session never holds its records in memory."""

    records: int = 0
    valid: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    error_classes: Counter[str] = field(default_factory=Counter)
    invalid_examples: list[str] = field(default_factory=list)  # the first few, for progress output
    transforms_sent: int = 0
    transforms_from_archive: int = 0
    transform_cost_usd: float = 0.0

    @property
    def invalid(self) -> int:
        return self.records - self.valid

    def by_path(self) -> dict[str, int]:
        return dict(self.paths)

    def add(self, record: ExtractedRecord) -> None:
        self.records += 1
        self.valid += int(record.valid)
        self.paths[record.extraction_path] += 1
        if record.error_class:
            self.error_classes[record.error_class] += 1
        if not record.valid and len(self.invalid_examples) < 20:
            self.invalid_examples.append(
                f"{record.document_id} {record.model} run {record.replicate}: {'; '.join(record.errors)[:160]}")


def _transform_max_tokens(ctx: SessionContext, model: str) -> int:
    """Room for the whole flat record: at least the analysis allowance, within the model's limit."""
    from mva_dagster.llm.registry import load_registry

    wanted = max(8192, int(ctx.manifest.generation.get("max_tokens") or 0))
    try:
        return min(wanted, load_registry().resolve(model).max_output_tokens)
    except SpecError:
        return wanted


class Extractor:
    """Turns answers into records one at a time, as they land (the pipelined session) or from the
    archive (re-extraction). Each record is written to ``extracted/`` and appended to the
    progressive score table (tables.ProgressiveScores) at once; the transformation link (an LLM
    call) runs only for answers the deterministic links cannot read. ``llm=None`` skips that link.
    """

    def __init__(self, ctx: SessionContext, llm: LLMGateway | None, document_ids: list[str],
                 report: Report | None = None) -> None:
        self.ctx = ctx
        self.llm = llm
        self.report = report
        self.document_ids = document_ids
        self.archive = SessionArchive(ctx.layout)
        self.model = ctx.extraction_model if llm is not None else None
        self.summary = ExtractionSummary()
        self._failures: dict[tuple[str, str, int], dict[str, Any]] | None = None
        self._limit = asyncio.Semaphore(model_concurrency(self.model) if self.model else 1)
        self._client: httpx.AsyncClient | None = None
        self._client_lock = asyncio.Lock()
        redo = set(ctx.calls(document_ids))
        self.progressive = tables.ProgressiveScores(ctx, keep=lambda call: call not in redo)

    def _failure(self, call: tuple[str, str, int]) -> dict[str, Any] | None:
        if self._failures is None:  # read once, and only when some call has no answer
            self._failures = last_failures(self.ctx)
        return self._failures.get(call)

    async def _transform(self, request: LLMRequest) -> LLMAnswer:
        assert self.llm is not None
        async with self._limit:
            archived = self.archive.lookup(request)
            if archived is not None and archived.request_key == request.key():
                self.summary.transforms_from_archive += 1
                return archived
            async with self._client_lock:
                if self._client is None:
                    self._client = self.llm.make_client(max_connections=model_concurrency(request.model) + 2)
            answer, from_archive = await self.llm.complete(self._client, request, self.archive)
            if from_archive:
                self.summary.transforms_from_archive += 1
            else:
                self.summary.transforms_sent += 1
                self.summary.transform_cost_usd += answer.cost_usd or 0.0
            return answer

    async def extract(self, document_id: str, call_model: str, replicate: int,
                      answer: LLMAnswer | None = None, *, from_archive: bool = True,
                      request_key: str | None = None, failure: dict[str, Any] | None = None) -> ExtractedRecord:
        """The record of one call, written; ``answer`` None with ``from_archive`` reads the archive.
        ``failure`` (error_class, error) explains a call that has no answer."""
        ctx = self.ctx
        if request_key is None or (answer is None and from_archive):
            request = ctx.analysis_request(document_id, call_model, replicate)
            request_key = request.key()
            if answer is None and from_archive:
                answer = self.archive.lookup(request)
        base: dict[str, Any] = {"session_id": ctx.manifest.session_id, "document_id": document_id,
                                "model": call_model, "replicate": replicate, "request_key": request_key}
        if answer is None or answer.raw_text is None:
            failure = failure or self._failure((document_id, call_model, replicate))
            reason = (f"no answer: {failure['error_class']} error: {failure['error']}" if failure
                      else "no answer in the archive (the call has not been made yet)"
                      if answer is None else "the provider returned no text")
            record = ExtractedRecord(**base, valid=False, errors=[reason], extraction_path="no_answer",
                                     error_class="no_answer", extraction_trace=[reason])
            return self._write(record)
        raw = answer.raw_text
        model = self.model

        def make_request(attempt: int) -> LLMRequest:
            assert model is not None
            return transform_request(
                session_id=ctx.manifest.session_id, document_id=document_id, replicate=replicate,
                model=model, raw_text=raw, shape=ctx.record_shape,
                max_tokens=_transform_max_tokens(ctx, model), attempt=attempt,
                structured_output=structured_output(model))

        result: ChainResult = await run_chain(
            raw, ctx.record_shape, finish_reason=answer.finish_reason,
            make_request=make_request if self.llm is not None else None,
            transform=self._transform if self.llm is not None else None)
        return self._write(ExtractedRecord(
            **base, valid=result.valid, fields=result.fields, errors=result.errors, flags=result.flags,
            extraction_path=result.path, error_class=result.error_class, extraction_trace=result.trace,
            extraction_model=result.transform_model, transform_request_keys=result.transform_keys,
            raw_answer=None if result.valid else raw))

    def _write(self, record: ExtractedRecord) -> ExtractedRecord:
        atomic_write_json(self.ctx.layout.extracted_path(record.document_id, record.model, record.replicate),
                          record.model_dump(mode="json"))
        self.progressive.add(record)
        self.summary.add(record)
        return record

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def completed(self) -> ExtractionSummary:
        """Record the batch in the chronolog (and say what the transformation cost)."""
        summary, model = self.summary, self.model
        Chronolog(self.ctx.layout.chronolog, project=self.ctx.manifest.project,
                  session_id=self.ctx.manifest.session_id).append(
            "EXTRACTION_COMPLETED", {
                "documents": len(self.document_ids), "records": summary.records, "valid": summary.valid,
                "by_path": summary.by_path(), "error_classes": dict(summary.error_classes),
                "extraction_model": model, "transforms_sent": summary.transforms_sent,
                "transforms_from_archive": summary.transforms_from_archive,
                "transform_cost_usd": round(summary.transform_cost_usd, 6)})
        if self.report is not None and (summary.transforms_sent or summary.transforms_from_archive):
            self.report(f"[extraction] {summary.transforms_sent} answers transformed by {model} "
                        f"(${summary.transform_cost_usd:.5f}), {summary.transforms_from_archive} from the archive")
        return summary


DocumentRecords = Callable[[str, list[ExtractedRecord]], None]


def run_extraction(ctx: SessionContext, document_ids: list[str], llm: LLMGateway | None = None,
                   report: Report | None = None, on_document: DocumentRecords | None = None) -> ExtractionSummary:
    """Extract every call of ``document_ids`` from the archive; without ``llm`` the transformation
    link is skipped. ``on_document`` gets each document's records once they are all written."""
    return asyncio.run(_run(ctx, document_ids, llm, report, on_document))


BATCH = 256  # calls extracted concurrently: bounded, so memory does not grow with the corpus


async def _run(ctx: SessionContext, document_ids: list[str], llm: LLMGateway | None,
               report: Report | None, on_document: DocumentRecords | None) -> ExtractionSummary:
    extractor = Extractor(ctx, llm, document_ids, report)
    try:
        per_document = len(ctx.manifest.models) * ctx.manifest.runs_per_model
        step = max(1, BATCH // max(1, per_document))
        for start in range(0, len(document_ids), step):
            chunk = document_ids[start:start + step]
            records = await asyncio.gather(*(extractor.extract(*call) for call in ctx.calls(chunk)))
            if on_document is not None:
                by_doc: dict[str, list[ExtractedRecord]] = {}
                for record in records:
                    by_doc.setdefault(record.document_id, []).append(record)
                for document_id, items in by_doc.items():
                    on_document(document_id, items)
    finally:
        await extractor.aclose()
    return extractor.completed()


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
