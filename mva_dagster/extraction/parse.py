"""The deterministic links of the extraction chain: raw answer -> flat record, validated.

Links, tried in order, each recorded in ``Extraction.trace``:

1. JSON: the whole answer (``bare_json``), the first fenced block holding an object
   (``fenced_json``), the first balanced ``{...}`` in prose (``embedded_json``), then a forgiving
   read (:mod:`.lenient`) of sloppy JSON (``lenient_json``) or of JSON cut off at ``max_tokens``
   (``partial_json``: only members that were completely written).
2. The found object is mapped onto the flat record by field names (:meth:`RecordShape.match`);
   when values sat anywhere but where the contract puts them, ``+field_match`` is added.
3. Fields still missing are looked for in Framework Spec v5 CSV blocks (``csv_v5``), then in
   Markdown labels, headings and tables (``markdown``).
4. The flat record is validated against the flat schema.

``path`` names the links that produced a valid record (``bare_json``, ``fenced_json+field_match``,
``csv_v5`` ...) or is ``failed``; ``error_class`` then says why: ``empty_answer``, ``not_found``,
``truncated``, ``malformed`` or ``schema_mismatch``. The LLM-to-LLM transformation, the next link,
lives in :mod:`.chain`.

Validation policy (an invalid record is kept, with its reasons):

* errors (``valid`` False): a missing required field, a wrong type, a value outside an ``enum``, a
  string not matching ``pattern``;
* flags (``valid`` unchanged): a number outside ``minimum``/``maximum`` (``out_of_range:<field>=<v>``,
  stored unclamped so the analysis can see what the model said), over-long strings, too many or too
  few items, values the contract does not know, keys given twice, syntax repaired by the lenient
  reader, an answer cut off after a complete record.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from mva_dagster.extraction.lenient import read_lenient
from mva_dagster.extraction.readers import csv_nodes, json_nodes, markdown_nodes
from mva_dagster.extraction.shape import Match, RecordShape
from mva_dagster.extraction.words import name_words, words_key

__all__ = ["ERROR_CLASSES", "EXTRACTION_LINKS", "Extraction", "as_shape", "extract", "validate"]

EXTRACTION_LINKS = (
    "bare_json", "fenced_json", "embedded_json", "lenient_json", "partial_json", "field_match",
    "csv_v5", "markdown", "llm_transform",
)  # fmt: skip
ERROR_CLASSES = (
    "empty_answer", "not_found", "truncated", "malformed", "schema_mismatch", "transform_failed", "no_answer",
)  # fmt: skip
_MAX_EMBEDDED_STARTS = 200
_FENCE = re.compile(r"```")


class Extraction(BaseModel):
    """The outcome of the deterministic links; ``fields`` holds what was found even when invalid."""

    fields: dict[str, Any] = Field(default_factory=dict)
    valid: bool
    errors: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    path: str = Field(description="the links that produced the record, '+'-joined, or 'failed'")
    error_class: str | None = None
    trace: list[str] = Field(default_factory=list)


class _Parsed:
    def __init__(
        self,
        obj: dict[str, Any] | None,
        error: str | None,
        duplicates: list[str] | None = None,
        *,
        link: str = "failed",
        complete: bool = True,
        repairs: list[str] | None = None,
    ) -> None:
        self.obj = obj
        self.error = error
        self.duplicates = duplicates or []
        self.link = link
        self.complete = complete
        self.repairs = repairs or []


def _loads(text: str) -> _Parsed:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a valid JSON number")

    try:
        obj = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        return _Parsed(None, f"{exc.msg} at line {exc.lineno}, column {exc.colno}", [])
    except (ValueError, RecursionError) as exc:
        return _Parsed(None, str(exc), [])
    if not isinstance(obj, dict):
        return _Parsed(None, f"the JSON is a {type(obj).__name__}, not an object", [])
    return _Parsed(obj, None, duplicates)


def _fenced_bodies(text: str) -> list[str]:
    """Contents of ``` fences in order (language tag dropped); an unclosed last fence runs to the end."""
    marks = [m.start() for m in _FENCE.finditer(text)]
    bodies: list[str] = []
    for i in range(0, len(marks), 2):
        start = marks[i] + 3
        end = marks[i + 1] if i + 1 < len(marks) else len(text)
        body = text[start:end]
        first, nl, rest = body.partition("\n")
        if nl and re.fullmatch(r"[A-Za-z0-9_+-]*\s*", first):
            body = rest
        bodies.append(body)
    return bodies


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the ``}`` closing the object opened at ``start`` (strings respected)."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _find_json(text: str) -> _Parsed:
    """The answer's JSON object through the strict links, then the lenient reader."""
    bare = _loads(text.strip())
    if bare.obj is not None:
        bare.link = "bare_json"
        return bare
    for body in _fenced_bodies(text):
        if body.lstrip().startswith("{"):
            fenced = _loads(body.strip())
            if fenced.obj is not None:
                fenced.link = "fenced_json"
                return fenced
    # Scan objects left to right. Never look inside a candidate that failed (its inner objects are
    # fragments), and stop at an object that never closes: everything after it is inside it.
    first_error: str | None = None
    starts: list[int] = []
    pos, attempts = text.find("{"), 0
    while pos >= 0 and attempts < _MAX_EMBEDDED_STARTS:
        attempts += 1
        starts.append(pos)
        end = _balanced_end(text, pos)
        if end is None:
            first_error = first_error or (
                f"truncated JSON: the object opened at character {pos} is never closed "
                "(the answer may have been cut off: check finish_reason and max_tokens)"
            )
            break
        candidate = _loads(text[pos:end])
        if candidate.obj is not None:
            candidate.link = "embedded_json"
            return candidate
        first_error = first_error or f"malformed JSON: {candidate.error}"
        pos = text.find("{", end)
    if not starts:
        return _Parsed(None, "no JSON object found in the answer")
    partial: _Parsed | None = None
    lenient_error: str | None = None
    for start in starts[:20]:
        read = read_lenient(text, start)
        if read.value is None:
            lenient_error = lenient_error or read.error
            continue
        if read.complete:
            return _Parsed(read.value, first_error, link="lenient_json", repairs=read.repairs)
        if partial is None or len(read.value) > len(partial.obj or {}):
            cut = (
                f"truncated JSON: the object opened at character {start} is never closed "
                "(the answer may have been cut off: check finish_reason and max_tokens)"
            )
            partial = _Parsed(read.value, cut, link="partial_json", complete=False, repairs=read.repairs)
    if partial is not None and partial.obj:
        return partial
    if partial is None and lenient_error and not (first_error or "").startswith("malformed"):
        first_error = f"malformed JSON: {lenient_error}"  # it never closes because it is broken, not cut
    return _Parsed(None, first_error or f"malformed JSON: {bare.error}", link="failed",
                   complete=partial is None)


def as_shape(target: RecordShape | Mapping[str, Any]) -> RecordShape:
    return target if isinstance(target, RecordShape) else RecordShape(target)


def extract(
    raw_text: str | None,
    target: RecordShape | Mapping[str, Any],
    *,
    finish_reason: str | None = None,
) -> Extraction:
    """Run the deterministic links on one answer and validate the flat record they produce.

    ``target`` is the answer's :class:`RecordShape`, or a JSON Schema (whose leaves then become the
    flat fields).
    """
    shape = as_shape(target)
    if raw_text is None or not raw_text.strip():
        return Extraction(valid=False, errors=["empty answer"], path="failed", error_class="empty_answer",
                          trace=["empty answer"])
    trace: list[str] = []
    flags: list[str] = []
    links: list[str] = []
    found = _find_json(raw_text)
    match = Match()
    if not shape.fields and found.obj is not None and found.complete:
        # A free-form schema ({"type": "object"}): the object found is the record.
        return Extraction(fields=found.obj, valid=True, flags=[f"duplicate_key:{k}" for k in found.duplicates],
                          path=found.link, trace=[f"{found.link}: free-form object"])
    if found.obj is not None:
        match = shape.match(json_nodes(found.obj))
        trace.append(f"{found.link}: {len(match.fields)} of {len(shape.fields)} fields"
                     + ("" if match.exact else " (by field names)"))
        if match.fields:
            links.append(found.link + ("" if match.exact else "+field_match"))
        flags += [f"duplicate_key:{k}" for k in dict.fromkeys(found.duplicates)]
        flags += [f"repaired:{r}" for r in found.repairs]
    else:
        trace.append(f"json: {found.error}")
    errors = list(match.errors)

    required = [f.name for f in shape.fields if f.required]
    if any(name not in match.fields for name in required):
        known = {words_key([n]) for f in shape.fields for n in (f.name, *f.path)}
        known |= {f.subject for f in shape.fields if f.subject}

        def is_known(cell: str) -> bool:
            return tuple(sorted(name_words(cell))) in known or words_key([cell]) in known

        for link, nodes in (("csv_v5", lambda: csv_nodes(raw_text, is_known)),
                            ("markdown", lambda: markdown_nodes(raw_text))):
            before = len(match.fields)
            more = shape.match(nodes(), fill=match.fields)
            gained = len(more.fields) - before
            if gained:
                trace.append(f"{link}: {gained} more fields")
                links.append(link)
                match = Match(fields=more.fields, exact=match.exact, errors=errors + more.errors)
                errors = match.errors
            if all(name in match.fields for name in required):
                break

    fields = match.fields
    verrors, vflags = validate(fields, shape.flat_schema())
    errors += verrors
    flags += vflags
    if found.obj is not None and match.exact:
        flags += [f"extra_field:{'.'.join(p)}" for p in match.unused]
    if not errors and finish_reason == "length":
        flags.append("answer_cut_off:finish_reason=length (the record was complete before the cut)")
    if errors:
        error_class = _classify(found, fields, finish_reason)
        if not fields and not match.errors:  # nothing usable: the one reason beats a list of every field
            errors = [found.error or "no values found in the answer"]
        elif found.error and error_class in ("truncated", "malformed", "not_found"):
            errors.insert(0, found.error)
        elif error_class == "truncated" and finish_reason == "length":
            errors.insert(0, "the answer was cut off at max_tokens (finish_reason=length)")
        return Extraction(fields=fields, valid=False, errors=errors, flags=flags, path="failed",
                          error_class=error_class, trace=trace)
    return Extraction(fields=fields, valid=True, errors=[], flags=flags, path="+".join(links) or "failed",
                      trace=trace)


def _classify(found: _Parsed, fields: Mapping[str, Any], finish_reason: str | None) -> str:
    if not found.complete or finish_reason == "length":
        return "truncated"
    if found.obj is None and not fields:
        return "not_found" if found.error and found.error.startswith("no JSON") else "malformed"
    return "schema_mismatch"


# ---------------------------------------------------------------- validation


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_type(value: Any, t: str) -> bool:
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if t == "integer":
        return _is_type(value, "number") and float(value).is_integer()
    return _json_type(value) == t


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(value: Any, schema: Mapping[str, Any], where: str = "") -> tuple[list[str], list[str]]:
    """(errors, flags) for ``value`` against the subset of JSON Schema that ``schema.py`` emits."""
    errors: list[str] = []
    flags: list[str] = []
    _check(value, schema, where, errors, flags)
    return errors, flags


def _check(value: Any, schema: Mapping[str, Any], where: str, errors: list[str], flags: list[str]) -> None:
    label = where or "answer"
    raw_type = schema.get("type")
    types: list[str] = raw_type if isinstance(raw_type, list) else [raw_type] if raw_type else []
    if types and not any(_is_type(value, t) for t in types):
        errors.append(f"{label}: expected {' or '.join(types)}, got {_json_type(value)} {_show(value)}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{label}: {_show(value)} is not one of {_show(schema['enum'])}")
        return
    if _is_type(value, "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        xlow, xhigh = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if (
            (low is not None and value < low)
            or (high is not None and value > high)
            or (xlow is not None and value <= xlow)
            or (xhigh is not None and value >= xhigh)
        ):
            flags.append(f"out_of_range:{label}={_show(value)}")
    elif isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            flags.append(f"too_long:{label}={len(value)}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            flags.append(f"too_short:{label}={len(value)}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{label}: {_show(value)} does not match the pattern {schema['pattern']!r}")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            flags.append(f"too_many_items:{label}={len(value)}")
        if "minItems" in schema and len(value) < schema["minItems"]:
            flags.append(f"too_few_items:{label}={len(value)}")
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                _check(item, items, f"{where}[{i}]", errors, flags)
    elif isinstance(value, dict):
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return
        prefix = f"{where}." if where else ""
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{prefix}{key}: missing required field")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{prefix}{key}", errors, flags)
            elif schema.get("additionalProperties") is False:
                flags.append(f"extra_field:{prefix}{key}")
