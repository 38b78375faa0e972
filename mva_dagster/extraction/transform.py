"""The LLM-to-LLM transformation: one prompt, for every framework, that turns an answer into the record.

When the deterministic links cannot produce a valid record (prose with no JSON, Markdown the
readers could not map, an answer cut off at ``max_tokens``), a cheap model is given the raw answer
and the flat record's JSON Schema and asked to copy the values across. The prompt names no
framework and no field: the schema carries them. The request is an ordinary
:class:`~mva_dagster.records.LLMRequest` (``purpose="extraction"``), so it goes through the gateway
and the proxy and is archived before it is used, like every call.

The transformation is trusted only for what the deterministic links could not read: values they
did read are kept as the analysis model wrote them. Values the transformation supplies that cannot
be found in the raw answer are flagged (``not_in_answer``), because a model asked to fill a schema
may fill it from nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from mva_dagster.extraction.schema import nullable
from mva_dagster.extraction.shape import RecordShape
from mva_dagster.records import LLMRequest

__all__ = ["TRANSFORM_PROMPT", "not_in_answer", "transform_request"]

TRANSFORM_PROMPT = """\
You convert an analysis written by another model into one JSON object that matches the JSON \
Schema you are given. You are a copyist, not an analyst:

- Copy every value from the analysis exactly as it is given: numbers, labels and quotations \
verbatim. Do not re-read or re-judge the original text, and do not correct the analysis.
- The analysis may use other names or nesting than the schema (headings, tables, nested objects, \
CSV blocks, prose). Map its values onto the schema's fields by meaning.
- If the analysis does not give a value for a field (for example because it was cut off), use \
null for that field. Never invent a value.
- Answer with the JSON object only."""

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def transform_request(
    *,
    session_id: str,
    document_id: str,
    replicate: int,
    model: str,
    raw_text: str,
    shape: RecordShape,
    max_tokens: int,
    attempt: int = 1,
    structured_output: bool = True,
) -> LLMRequest:
    """The transformation call for one answer. ``attempt`` >= 2 is a re-ask (a distinct, archived call)."""
    target = shape.flat_schema()
    user = (
        "JSON Schema of the object to return:\n"
        f"```json\n{json.dumps(nullable(target), indent=1, ensure_ascii=False)}\n```\n\n"
        "The analysis to convert, between the BEGIN and END lines:\n"
        f"----- BEGIN ANALYSIS -----\n{raw_text}\n----- END ANALYSIS -----"
    )
    response_format = (
        {"type": "json_schema", "json_schema": {"name": "flat_record", "schema": nullable(target)}}
        if structured_output
        else {"type": "json_object"}
    )
    return LLMRequest(
        session_id=session_id,
        document_id=document_id,
        model=model,
        replicate=replicate,
        purpose="extraction",
        messages=[{"role": "system", "content": TRANSFORM_PROMPT}, {"role": "user", "content": user}],
        params={"temperature": 0.0, "max_tokens": max_tokens, "seed": attempt},
        response_format=response_format,
    )


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[\"'\u201c\u201d\u2018\u2019`*_]", "", text).casefold().split())


def _found(value: Any, raw: str, numbers: list[float]) -> bool:
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int | float):
        return any(math.isclose(value, n, rel_tol=1e-9, abs_tol=1e-12) for n in numbers)
    if isinstance(value, str):
        return not value.strip() or _norm(value) in raw
    if isinstance(value, list):
        return all(_found(v, raw, numbers) for v in value)
    if isinstance(value, Mapping):
        return all(_found(v, raw, numbers) for v in value.values())
    return True


def not_in_answer(fields: Mapping[str, Any], raw_text: str) -> list[str]:
    """Names of fields whose value (a number, a string, every item of a list) the raw answer lacks."""
    numbers = [float(m.group(0)) for m in _NUMBER.finditer(raw_text)]
    raw = _norm(raw_text)
    return [name for name, value in fields.items() if not _found(value, raw, numbers)]
