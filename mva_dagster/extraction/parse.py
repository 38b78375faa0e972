"""Turn a raw LLM answer into fields, then validate them against the contract's JSON Schema.

The parse chain tries, in order: the whole answer as JSON (``bare_json``), the first fenced block
that holds a JSON object (``fenced_json``), then the first balanced ``{...}`` embedded in prose
(``embedded_json``); ``path`` records which link worked, or ``failed``. No repair is attempted: a
truncated or malformed answer is reported as such so the caller can re-ask.

Validation policy (an invalid record is kept, with its reasons):

* errors (``valid`` False): a missing required field, a wrong type, a value outside an ``enum``, a
  string not matching ``pattern``;
* flags (``valid`` unchanged): a number outside ``minimum``/``maximum`` (``out_of_range:<field>=<v>``,
  stored unclamped so the analysis can see what the model said), over-long strings, too many or too
  few items, fields the contract does not know, and keys given twice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["EXTRACTION_PATHS", "Extraction", "extract", "validate"]

EXTRACTION_PATHS = ("bare_json", "fenced_json", "embedded_json", "failed")
_MAX_EMBEDDED_STARTS = 200
_FENCE = re.compile(r"```")


class Extraction(BaseModel):
    """The outcome of parsing one answer; ``fields`` holds what was parsed even when invalid."""

    fields: dict[str, Any] = Field(default_factory=dict)
    valid: bool
    errors: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    path: str = Field(description="bare_json | fenced_json | embedded_json | failed")


class _Parsed:
    def __init__(self, obj: dict[str, Any] | None, error: str | None, duplicates: list[str]) -> None:
        self.obj = obj
        self.error = error
        self.duplicates = duplicates


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


def _parse_chain(text: str) -> tuple[_Parsed, str]:
    bare = _loads(text.strip())
    if bare.obj is not None:
        return bare, "bare_json"
    for body in _fenced_bodies(text):
        if body.lstrip().startswith("{"):
            fenced = _loads(body.strip())
            if fenced.obj is not None:
                return fenced, "fenced_json"
    # Scan objects left to right. Never look inside a candidate that failed (its inner objects are
    # fragments), and stop at an object that never closes: everything after it is inside it.
    first_error: str | None = None
    pos, attempts = text.find("{"), 0
    while pos >= 0 and attempts < _MAX_EMBEDDED_STARTS:
        attempts += 1
        end = _balanced_end(text, pos)
        if end is None:
            first_error = first_error or (
                f"truncated JSON: the object opened at character {pos} is never closed "
                "(the answer may have been cut off: check finish_reason and max_tokens)"
            )
            break
        candidate = _loads(text[pos:end])
        if candidate.obj is not None:
            return candidate, "embedded_json"
        first_error = first_error or f"malformed JSON: {candidate.error}"
        pos = text.find("{", end)
    if "{" not in text:
        first_error = "no JSON object found in the answer"
    return _Parsed(None, first_error or f"malformed JSON: {bare.error}", []), "failed"


def extract(raw_text: str | None, json_schema: Mapping[str, Any]) -> Extraction:
    """Parse an answer through the chain, then validate it against ``json_schema``."""
    if raw_text is None or not raw_text.strip():
        return Extraction(valid=False, errors=["empty answer"], path="failed")
    parsed, path = _parse_chain(raw_text)
    if parsed.obj is None:
        return Extraction(valid=False, errors=[parsed.error or "no JSON object found"], path="failed")
    errors, flags = validate(parsed.obj, json_schema)
    flags = [f"duplicate_key:{k}" for k in dict.fromkeys(parsed.duplicates)] + flags
    return Extraction(fields=parsed.obj, valid=not errors, errors=errors, flags=flags, path=path)


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
