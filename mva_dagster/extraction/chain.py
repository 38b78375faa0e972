"""The whole extraction chain for one answer: deterministic links, then the LLM transformation.

(a) the deterministic links of :mod:`.parse` (JSON in its wrappings, lenient and partial JSON,
field-name matching, v5 CSV blocks, Markdown); (b) validation; (c) if the record is invalid, the
LLM-to-LLM transformation of :mod:`.transform` (re-asked once if its own answer is unusable or the
call fails transiently); (d) validation again; (e) otherwise the item fails, keeping the raw answer
and a classified reason. Nothing here sends a request: the caller passes ``transform``, a coroutine
that answers an :class:`LLMRequest` (in sessions, the gateway through the proxy, archive first).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mva_dagster.errors import BudgetExceeded, LLMError, MvaError
from mva_dagster.extraction.parse import Extraction, extract, validate
from mva_dagster.extraction.shape import RecordShape
from mva_dagster.extraction.transform import not_in_answer
from mva_dagster.records import LLMAnswer, LLMRequest

__all__ = ["ChainResult", "MakeRequest", "Transform", "run_chain"]

Transform = Callable[[LLMRequest], Awaitable[LLMAnswer]]
MakeRequest = Callable[[int], LLMRequest]
_PARSE_FLAGS = ("duplicate_key:", "repaired:", "answer_cut_off:")
_RETRYABLE = ("truncated", "malformed", "not_found", "empty_answer")


@dataclass
class ChainResult:
    """The record one answer became, how, and (when it failed) why."""

    fields: dict[str, Any]
    valid: bool
    errors: list[str]
    flags: list[str]
    path: str
    error_class: str | None
    trace: list[str]
    transform_model: str | None = None
    transform_keys: list[str] = field(default_factory=list)
    transform_cost_usd: float = 0.0

    @classmethod
    def from_extraction(cls, ex: Extraction) -> ChainResult:
        return cls(dict(ex.fields), ex.valid, list(ex.errors), list(ex.flags), ex.path, ex.error_class,
                   list(ex.trace))


def _trusted(ex: Extraction, shape: RecordShape) -> dict[str, Any]:
    """Values the deterministic links read that are valid on their own: the transformation may not
    replace them (they are what the analysis model wrote)."""
    kept = {}
    for name, value in ex.fields.items():
        f = shape.by_name.get(name)
        if f is not None and value is not None and not validate(value, f.schema)[0]:
            kept[name] = value
    return kept


async def run_chain(
    raw_text: str | None,
    shape: RecordShape,
    *,
    finish_reason: str | None = None,
    make_request: MakeRequest | None = None,
    transform: Transform | None = None,
    max_attempts: int = 2,
) -> ChainResult:
    """Run every link on one answer; the transformation only when the deterministic record is invalid."""
    det = extract(raw_text, shape, finish_reason=finish_reason)
    result = ChainResult.from_extraction(det)
    if det.valid or det.error_class == "empty_answer" or make_request is None or transform is None:
        return result

    trusted = _trusted(det, shape)
    flat = RecordShape(shape.flat_schema())
    parse_flags = [f for f in det.flags if f.startswith(_PARSE_FLAGS)]
    errors = list(det.errors)
    error_class = det.error_class
    for attempt in range(1, max_attempts + 1):
        request = make_request(attempt)
        result.transform_model = request.model
        result.transform_keys.append(request.key())
        try:
            answer = await transform(request)
        except BudgetExceeded:
            raise  # the session pauses, as for any call; the item is extracted on resume
        except MvaError as exc:
            kind = exc.error_class if isinstance(exc, LLMError) else type(exc).__name__
            result.trace.append(f"llm_transform ({request.model}, attempt {attempt}): call failed, {kind}")
            errors = [*det.errors, f"llm_transform: the call failed ({kind}): {exc.message}"]
            error_class = "transform_failed"
            if isinstance(exc, LLMError) and exc.error_class == "permanent":
                break
            continue
        result.transform_cost_usd += answer.cost_usd or 0.0
        got = extract(answer.raw_text, flat, finish_reason=answer.finish_reason)
        nulls = sorted(k for k, v in got.fields.items() if v is None)
        filled = {k: v for k, v in got.fields.items() if v is not None and k not in trusted}
        merged = {**filled, **trusted}
        verrors, vflags = validate(merged, shape.flat_schema())
        result.trace.append(
            f"llm_transform ({request.model}, attempt {attempt}): {len(filled)} fields filled, "
            f"{len(trusted)} kept from the answer" + (f", null: {', '.join(nulls)}" if nulls else "")
            + ("" if got.error_class is None else f", its answer: {got.error_class}")
        )
        if not verrors:
            flags = parse_flags + vflags + [f"transform_filled:{len(filled)}_of_{len(shape.fields)}"]
            missing = not_in_answer(filled, raw_text or "")
            if missing:
                flags.append("not_in_answer:" + ",".join(missing))
            if finish_reason == "length":
                flags.append("source_cut_off:finish_reason=length")
            result.fields, result.valid, result.errors, result.flags = merged, True, [], flags
            result.path, result.error_class = "llm_transform", None
            return result
        detail = [f"llm_transform: {e}" for e in verrors]
        if nulls:
            detail.insert(0, f"llm_transform: the answer gives no value for {', '.join(nulls)}")
        errors = [*det.errors, *detail]
        error_class = det.error_class
        result.fields = merged
        if got.error_class not in _RETRYABLE:
            break  # a well-formed transformation that lacks values will not find them on a re-ask
    result.errors, result.error_class, result.valid, result.path = errors, error_class, False, "failed"
    return result
