"""Output contract -> JSON Schema, sent as ``response_format`` and used to validate answers.

Framework-agnostic on purpose: field names come only from the contract. Each contract field is a
type string (``string|number|integer|boolean|array|object``) or a JSON-Schema object (our
extension) whose ``minimum``/``maximum``/``enum``/``items``/``properties``... are carried over.
Only draft-07 keywords that providers' structured-output modes understand are emitted, and
``extraction.parse`` validates exactly these keywords.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mva_dagster.errors import SpecError
from mva_dagster.specs.framework import CONTRACT_TYPES, Framework, OutputContract

__all__ = ["contract_json_schema", "describe_schema", "framework_json_schema", "nullable"]

_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_STRING_KEYS = ("minLength", "pattern")


def contract_json_schema(
    contract: OutputContract | Mapping[str, Any],
    *,
    max_string_length: int = 300,
    max_evidence_items: int = 3,
) -> dict[str, Any]:
    """A strict JSON Schema for the contract: every field required, no additional properties.

    Bare ``string`` fields get ``maxLength`` and bare ``array`` fields become lists of at most
    ``max_evidence_items`` short strings (quotations): caps that keep answers, and costs, bounded.
    A contract field that is a JSON-Schema object overrides these defaults.
    """
    required: Any = None
    if isinstance(contract, OutputContract):
        fields: Mapping[str, Any] = contract.schema_
        required = contract.required
    elif isinstance(contract.get("schema"), Mapping) and "instructions" in contract:
        fields = contract["schema"]  # an output_contract mapping as written in the framework
        required = contract.get("required")
    else:
        fields = contract
    return _object(fields, required, where="output_contract.schema", s=max_string_length, n=max_evidence_items)


def _object(props: Mapping[str, Any], required: Any, *, where: str, s: int, n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: _field(v, where=f"{where}.{k}", s=s, n=n) for k, v in props.items()},
        "required": list(required) if isinstance(required, list) else list(props),
        "additionalProperties": False,
    }


def _field(spec: Any, *, where: str, s: int, n: int) -> dict[str, Any]:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise SpecError(f"must be a type string or a JSON-Schema object, got {spec!r}", field=where)
    raw_type = spec.get("type")
    types: list[str] = raw_type if isinstance(raw_type, list) else [raw_type] if raw_type else []
    main = next((t for t in types if t != "null"), None)
    if main is None and "enum" not in spec:
        raise SpecError("a field needs a 'type' (or an 'enum')", field=where)
    if main is not None and main not in CONTRACT_TYPES:
        raise SpecError(f"unknown type {main!r}; use one of {', '.join(CONTRACT_TYPES)}", field=where)

    out: dict[str, Any] = {}
    if types:
        out["type"] = types[0] if len(types) == 1 else list(types)
    if isinstance(spec.get("description"), str):
        out["description"] = spec["description"]
    if "enum" in spec:
        out["enum"] = list(spec["enum"])
    if main in ("number", "integer"):
        out.update({k: spec[k] for k in _NUMBER_KEYS if k in spec})
    elif main == "string":
        out.update({k: spec[k] for k in _STRING_KEYS if k in spec})
        if "enum" not in spec:
            out["maxLength"] = spec.get("maxLength", s)
    elif main == "array":
        if "items" in spec:
            out["items"] = _field(spec["items"], where=f"{where}.items", s=s, n=n)
            if "maxItems" in spec:
                out["maxItems"] = spec["maxItems"]
        else:
            out["items"] = {"type": "string", "maxLength": s}
            out["maxItems"] = spec.get("maxItems", n)
        if "minItems" in spec:
            out["minItems"] = spec["minItems"]
    elif main == "object" and isinstance(spec.get("properties"), Mapping):
        nested = _object(spec["properties"], spec.get("required"), where=where, s=s, n=n)
        out.update({k: v for k, v in nested.items() if k != "type"})
    return out


def framework_json_schema(framework: Framework, variant: str = "default") -> dict[str, Any]:
    """The JSON Schema an analysis answer must satisfy: the contract completed from the framework's
    prose (dimensions, ranges, options; see :mod:`mva_dagster.extraction.derive`)."""
    from mva_dagster.extraction.derive import derive_contract

    return derive_contract(framework, variant).schema


def nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` whose top-level properties may also be null.

    The transformation model is told to give null for a value the answer does not contain; a
    strict schema would force it to invent one. Our own validation (which refuses null) then turns
    that null into an honest "missing" error.
    """
    out = dict(schema)
    props: dict[str, Any] = {}
    for key, sub in (schema.get("properties") or {}).items():
        t = sub.get("type")
        if isinstance(t, str) and "enum" not in sub:
            props[key] = {**sub, "type": [t, "null"]}
        elif isinstance(t, list) and "enum" not in sub:
            props[key] = {**sub, "type": list(dict.fromkeys([*t, "null"]))}
        else:
            props[key] = {"anyOf": [dict(sub), {"type": "null"}]}
    out["properties"] = props
    return out


def describe_schema(schema: Mapping[str, Any]) -> str:
    """One line per field for the prompt, so models without structured output see the same schema."""
    lines = []
    for key, sub in (schema.get("properties") or {}).items():
        lines.append(f"- {key}: {_describe(sub)}")
    return "\n".join(lines)


def _describe(node: Mapping[str, Any]) -> str:
    raw_type = node.get("type")
    types = [t for t in (raw_type if isinstance(raw_type, list) else [raw_type]) if t and t != "null"]
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in node["enum"])
    if types == ["object"] and isinstance(node.get("properties"), Mapping):
        props: Mapping[str, Any] = node["properties"]
        kinds = {_describe(v) for v in props.values()}
        if len(kinds) == 1 and all(not isinstance(v.get("properties"), Mapping) for v in props.values()):
            return f"object with {', '.join(props)}; each {kinds.pop()}"
        return "object with " + "; ".join(f"{k}: {_describe(v)}" for k, v in props.items())
    if types == ["array"]:
        raw_items = node.get("items")
        items: Mapping[str, Any] = raw_items if isinstance(raw_items, Mapping) else {}
        count = f"at most {node['maxItems']} " if "maxItems" in node else ""
        if items.get("type") == "string":
            return f"list of {count}short verbatim quotations (strings)"
        return f"list of {count}items, each {_describe(items)}"
    parts = [" or ".join("list of quotations" if t == "array" else t for t in types) or "any value"]
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        parts.append(f"from {low} to {high}")
    elif low is not None or high is not None:
        parts.append(f"at least {low}" if low is not None else f"at most {high}")
    if "maxLength" in node and "string" in types:
        parts.append(f"at most {node['maxLength']} characters")
    return ", ".join(parts)
