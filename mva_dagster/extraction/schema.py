"""Output contract -> JSON Schema, sent as ``response_format`` and used to validate answers.

Framework-agnostic on purpose: field names come only from the contract. Each contract field is a
type string (``string|number|integer|boolean|array|object``) or a JSON-Schema object (our
extension) whose ``minimum``/``maximum``/``enum``/``items``/``properties``... are carried over.
Only draft-07 keywords that providers' structured-output modes understand are emitted, and
``extraction.parse`` validates exactly these keywords.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mva_dagster.errors import SpecError
from mva_dagster.specs.framework import CONTRACT_TYPES, OutputContract

__all__ = ["contract_json_schema"]

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
    if isinstance(contract, OutputContract):
        fields: Mapping[str, Any] = contract.schema_
    elif isinstance(contract.get("schema"), Mapping) and "instructions" in contract:
        fields = contract["schema"]  # an output_contract mapping as written in the framework
    else:
        fields = contract
    return _object(fields, None, where="output_contract.schema", s=max_string_length, n=max_evidence_items)


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
