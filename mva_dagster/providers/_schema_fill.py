"""Generate a valid, deterministic instance of a JSON Schema (the simulated provider's "answer").

The simulated provider must answer like a model that obeys ``response_format``: the instance has
to *validate* against the schema the client sent (so that extraction, range checks and quote checks
run on realistic data), be identical for identical requests, and change when the request's seed
changes (replicates must differ). Evidence-like strings are verbatim cuts of the document text so
that a quote checker accepts them.

Supported: ``type`` (or a list of types), ``properties``/``required``, ``enum``, ``const``,
``$ref`` to any JSON pointer in the root (``#/definitions/...``, ``#/$defs/...``), ``allOf``
(merged), ``anyOf``/``oneOf`` (first non-null option), strings (``minLength``/``maxLength``, a few
``format`` values), numbers and integers (``minimum``/``maximum``, both exclusive forms,
``multipleOf``), arrays (``items``, ``minItems``/``maxItems``, ``uniqueItems``), booleans, null.
``pattern`` is not honoured: nothing in our output contracts uses it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from typing import Any

_DEFAULT_ARRAY_LEN = 2
_MAX_DEPTH = 12  # beyond this (recursive $ref) only required members and minItems are generated
_WORD = re.compile(r"\S+")
_FALLBACK_TEXT = "no user text was sent to the simulated provider"


def is_evidence_name(name: str | None) -> bool:
    """Property names whose strings the provider fills with quotes from the document."""
    lowered = (name or "").lower()
    return "evidence" in lowered or "quote" in lowered


class SchemaFiller:
    """Fills one schema; ``rng`` decides every choice, ``source_text`` supplies the quotes."""

    def __init__(self, root: Mapping[str, Any], rng: random.Random, source_text: str) -> None:
        self.root = root
        self.rng = rng
        self.source_text = source_text if source_text.strip() else _FALLBACK_TEXT
        # Word spans per line: quotes never cross a line break, so whitespace-normalising checkers
        # and strict ones agree. Lines of 4+ words are preferred as quote sources.
        lines: list[list[tuple[int, int]]] = []
        offset = 0
        for line in self.source_text.splitlines(keepends=True):
            spans = [(offset + m.start(), offset + m.end()) for m in _WORD.finditer(line)]
            if spans:
                lines.append(spans)
            offset += len(line)
        self._lines = [spans for spans in lines if len(spans) >= 4] or lines

    # -- public --------------------------------------------------------------------------------

    def instance(self) -> Any:
        return self._value(self.root, name=None, in_array=False, depth=0)

    def quote(self, max_length: int | None = None, min_length: int = 0) -> str:
        """A few consecutive words of one line of the source text, verbatim."""
        spans = self.rng.choice(self._lines)
        count = min(len(spans), self.rng.randint(4, 12))
        first = self.rng.randint(0, len(spans) - count)
        text = self.source_text[spans[first][0] : spans[first + count - 1][1]]
        if max_length is not None and len(text) > max_length:
            cut = text[:max_length]
            if not text[max_length].isspace() and cut.rfind(" ") > max_length // 2:
                cut = cut[: cut.rfind(" ")]  # end on a whole word when that keeps most of the room
            text = cut.rstrip() or cut
        if len(text) < min_length:  # the document is too short to quote: stay valid, not verbatim
            text = text + "." * (min_length - len(text))
        return text

    # -- dispatch ------------------------------------------------------------------------------

    def _value(self, schema: Any, *, name: str | None, in_array: bool, depth: int) -> Any:
        if schema is True or not isinstance(schema, Mapping):
            schema = {}
        schema = self._resolve(schema)
        if "allOf" in schema:
            schema = self._merge_all_of(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema and schema["enum"]:
            return self.rng.choice(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                options = [self._resolve(option) for option in schema[key] if isinstance(option, Mapping)]
                non_null = [option for option in options if option.get("type") != "null"]
                chosen = (non_null or options or [{}])[0]
                return self._value(chosen, name=name, in_array=in_array, depth=depth + 1)
        kind = self._type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "string":
            return self._string(schema, name, in_array)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, name, in_array)

    def _type_of(self, schema: Mapping[str, Any]) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            non_null = [t for t in declared if t != "null"]
            return str((non_null or declared or ["string"])[0])
        if isinstance(declared, str):
            return declared
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema:
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
            return "number"
        return "string"

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """Follow ``$ref`` chains (local JSON pointers only); sibling keywords override the target."""
        seen: set[str] = set()
        while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
            ref = schema["$ref"]
            if ref in seen or not ref.startswith("#"):
                break
            seen.add(ref)
            target: Any = self.root
            for part in ref[1:].lstrip("/").split("/") if ref != "#" else []:
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, Mapping) else {}
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**(target if isinstance(target, Mapping) else {}), **siblings}
        return schema

    def _merge_all_of(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema.get("allOf") or []:
            part = self._resolve(part) if isinstance(part, Mapping) else {}
            if "allOf" in part:
                part = self._merge_all_of(part)
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                else:
                    merged.setdefault(key, value)
        return merged

    # -- kinds ---------------------------------------------------------------------------------

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = [str(r) for r in schema.get("required") or []]
        names = list(properties) if depth < _MAX_DEPTH else [n for n in properties if n in required]
        result: dict[str, Any] = {}
        for prop in names:
            result[prop] = self._value(properties[prop], name=prop, in_array=False, depth=depth + 1)
        for prop in required:  # required but undeclared: any value is valid
            if prop not in result:
                result[prop] = self._string({}, prop, False)
        return result

    def _array(self, schema: Mapping[str, Any], name: str | None, depth: int) -> list[Any]:
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        length = max(low, _DEFAULT_ARRAY_LEN if depth < _MAX_DEPTH else low)
        if high is not None:
            length = min(length, int(high))
        items = schema.get("items", {})
        if isinstance(items, list):  # draft-4 tuple form
            items = items[0] if items else {}
        prefix = schema.get("prefixItems") or []
        values: list[Any] = []
        for index in range(length):
            item_schema = prefix[index] if index < len(prefix) else items
            value = self._value(item_schema, name=name, in_array=True, depth=depth + 1)
            if schema.get("uniqueItems"):
                for _ in range(8):
                    if value not in values:
                        break
                    value = self._value(item_schema, name=name, in_array=True, depth=depth + 1)
                if value in values:
                    break  # cannot find another distinct value: a shorter array is still valid
            values.append(value)
        return values

    def _string(self, schema: Mapping[str, Any], name: str | None, in_array: bool) -> str:
        max_length = schema.get("maxLength")
        min_length = int(schema.get("minLength", 0))
        fmt = schema.get("format")
        if fmt:
            formatted = self._formatted(str(fmt))
            if formatted is not None:
                return formatted
        if in_array or is_evidence_name(name):
            return self.quote(int(max_length) if max_length is not None else None, min_length)
        text = f"simulated {name or 'text'} {self.rng.getrandbits(24):06x}"
        if max_length is not None:
            text = text[: int(max_length)]
        return text + "x" * max(0, min_length - len(text))

    def _formatted(self, fmt: str) -> str | None:
        rng = self.rng
        if fmt == "date-time":
            return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
        if fmt == "date":
            return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if fmt == "email":
            return f"sim{rng.randint(0, 999)}@example.org"
        if fmt in ("uri", "url"):
            return f"https://example.org/sim/{rng.getrandbits(32):08x}"
        if fmt == "uuid":
            h = f"{rng.getrandbits(128):032x}"
            return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
        return None

    def _bounds(self, schema: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
        """(low, low_exclusive, high, high_exclusive), accepting draft-4 boolean exclusivity."""
        low, high = schema.get("minimum"), schema.get("maximum")
        low_ex = high_ex = False
        ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(ex_min, bool):
            low_ex = ex_min and low is not None
        elif isinstance(ex_min, int | float) and (low is None or ex_min >= low):
            low, low_ex = ex_min, True
        if isinstance(ex_max, bool):
            high_ex = ex_max and high is not None
        elif isinstance(ex_max, int | float) and (high is None or ex_max <= high):
            high, high_ex = ex_max, True
        return (
            float(low) if low is not None else None,
            low_ex,
            float(high) if high is not None else None,
            high_ex,
        )

    def _number(self, schema: Mapping[str, Any]) -> float:
        low, low_ex, high, high_ex = self._bounds(schema)
        if low is None and high is None:
            low, high = 0.0, 1.0  # scores: most contracts mean 0..1 when they forget to say so
        elif low is None:
            assert high is not None
            low = high - 1.0
        elif high is None:
            high = low + 1.0
        assert low is not None and high is not None
        value = round(low + self.rng.random() * (high - low), 3)
        multiple = schema.get("multipleOf")
        if isinstance(multiple, int | float) and multiple > 0:
            first, last = math.ceil(low / multiple), math.floor(high / multiple)
            first += 1 if low_ex and first * multiple <= low else 0
            last -= 1 if high_ex and last * multiple >= high else 0
            if first <= last:
                return self.rng.randint(first, last) * multiple
        if value < low or (low_ex and value <= low) or value > high or (high_ex and value >= high):
            value = (low + high) / 2
        return value

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low, low_ex, high, high_ex = self._bounds(schema)
        lo = (math.floor(low) + 1 if low_ex else math.ceil(low)) if low is not None else None
        hi = (math.ceil(high) - 1 if high_ex else math.floor(high)) if high is not None else None
        if lo is None and hi is None:
            lo, hi = 0, 10
        elif lo is None:
            assert hi is not None
            lo = hi - 10
        elif hi is None:
            hi = lo + 10
        assert lo is not None and hi is not None
        multiple = schema.get("multipleOf")
        if isinstance(multiple, int) and multiple > 0:
            first = math.ceil(lo / multiple) * multiple
            count = max(0, (hi - first) // multiple)
            return int(first + self.rng.randint(0, count) * multiple)
        return self.rng.randint(lo, max(lo, hi))


def fill_schema(schema: Mapping[str, Any], rng: random.Random, source_text: str) -> Any:
    """A valid instance of ``schema`` (see the module docstring for what is honoured)."""
    return SchemaFiller(schema, rng, source_text).instance()
