"""The extraction step: archived answer -> validated flat record, one JSON file per call.

Invalid answers are kept as invalid records with their reasons, never dropped; a call with no
archived answer becomes a failed record naming its error class, so tables always have one row per
document x model x replicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mva_dagster.extraction.parse import extract
from mva_dagster.fsutil import atomic_write_json
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.records import ExtractedRecord
from mva_dagster.steps.analysis import last_failures
from mva_dagster.steps.context import SessionContext


@dataclass
class ExtractionSummary:
    records: list[ExtractedRecord] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return sum(1 for r in self.records if r.valid)

    @property
    def invalid(self) -> list[ExtractedRecord]:
        return [r for r in self.records if not r.valid]


def run_extraction(ctx: SessionContext, document_ids: list[str]) -> ExtractionSummary:
    archive = SessionArchive(ctx.layout)
    failures = last_failures(ctx)
    summary = ExtractionSummary()
    for document_id, model, replicate in ctx.calls(document_ids):
        request = ctx.analysis_request(document_id, model, replicate)
        answer = archive.lookup(request)
        base: dict[str, Any] = {"session_id": ctx.manifest.session_id, "document_id": document_id, "model": model,
                "replicate": replicate, "request_key": request.key()}
        if answer is None or answer.raw_text is None:
            failure = failures.get((document_id, model, replicate))
            reason = (f"no answer: {failure['error_class']} error: {failure['error']}" if failure
                      else "no answer in the archive (the call has not been made yet)")
            record = ExtractedRecord(**base, valid=False, errors=[reason], extraction_path="no_answer")
        else:
            result = extract(answer.raw_text, ctx.json_schema)
            errors = list(result.errors)
            if answer.finish_reason == "length":
                errors.append("the answer was cut off at max_tokens (finish_reason=length)")
            record = ExtractedRecord(**base, valid=result.valid and not errors, fields=result.fields,
                                     errors=errors, flags=list(result.flags), extraction_path=result.path)
        atomic_write_json(ctx.layout.extracted_path(document_id, model, replicate),
                          record.model_dump(mode="json"))
        summary.records.append(record)
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
                errors=["not extracted yet"], extraction_path="missing"))
    return records
