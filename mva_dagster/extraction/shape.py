"""The flat record: one column per value of the answer, named so that formulas evaluate.

A contract may nest (``ratings.calm``, ``per_item.calm.level``) while formulas, tables and
statistics want flat names (``calm_rating``). :class:`RecordShape` is that mapping, computed
once from the answer's JSON Schema and the formula variables:

* a top-level value keeps its name;
* a value one level down is named ``<key>_<container in the singular>`` (``ratings.calm`` ->
  ``calm_rating``), or just ``<key>`` when the key already ends with it;
* deeper values join the keys below the top (``per_item.calm.level`` -> ``calm_level``);
* when a formula variable names the same words in another order (``rating_calm``), that spelling
  wins; clashing names fall back to the full path.

A formula variable that names a *subject* rather than a value (what a group of values is about,
such as ``calm`` above) reads that subject's first number in contract order - documented in
docs/calculation-spec.md. :meth:`RecordShape.match` maps any answer, whatever its nesting, onto
the flat fields by comparing names as words (:mod:`.words`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mva_dagster.extraction.words import name_words, singular_name, words_key

__all__ = ["FlatField", "Match", "Node", "RecordShape"]


@dataclass(frozen=True)
class FlatField:
    """One value of the record: its flat name, where the contract puts it, and its schema."""

    name: str
    path: tuple[str, ...]
    schema: Mapping[str, Any]
    required: bool = True
    subject: tuple[str, ...] = ()

    @property
    def types(self) -> set[str]:
        t = self.schema.get("type")
        if isinstance(t, list):
            return {str(x) for x in t}
        if isinstance(t, str):
            return {t}
        return {"string"} if "enum" in self.schema else set()

    @property
    def numeric(self) -> bool:
        return bool(self.types & {"number", "integer"})


@dataclass(frozen=True)
class Node:
    """A named value found in an answer: its key path and whether it came from text (CSV, Markdown)."""

    path: tuple[str, ...]
    value: Any
    textual: bool = False


@dataclass
class Match:
    """The outcome of mapping nodes onto the flat fields."""

    fields: dict[str, Any] = field(default_factory=dict)
    exact: bool = True  # every value sat exactly where the contract puts it
    errors: list[str] = field(default_factory=list)
    unused: list[tuple[str, ...]] = field(default_factory=list)


def _leaves(schema: Mapping[str, Any], path: tuple[str, ...], required: bool) -> Iterable[FlatField]:
    props = schema.get("properties")
    types = schema.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types)
    if is_object and isinstance(props, Mapping) and props:
        needed = set(schema.get("required") or [])
        for key, sub in props.items():
            yield from _leaves(sub, (*path, str(key)), required and key in needed)
    elif path:
        yield FlatField(name="", path=path, schema=schema, required=required)


def _default_name(path: tuple[str, ...]) -> str:
    if len(path) == 1:
        return path[0]
    if len(path) == 2:
        stem = singular_name(path[0])
        key_words, stem_words = name_words(path[1]), name_words(stem)
        if key_words[-len(stem_words) :] == stem_words:
            return path[1]
        return f"{path[1]}_{stem}"
    return "_".join(path[1:])


class RecordShape:
    """The flat fields of one framework's answers, and how formula variables map onto them."""

    def __init__(
        self,
        schema: Mapping[str, Any],
        *,
        subjects: Sequence[str] = (),
        variables: Iterable[str] = (),
    ) -> None:
        self.schema = schema
        dims = {name_words(d): d for d in subjects}
        raw = list(_leaves(schema, (), True))
        variables = list(dict.fromkeys(variables))

        names = [_default_name(f.path) for f in raw]
        by_words: dict[tuple[str, ...], list[int]] = {}
        for i, f in enumerate(raw):
            keys = {words_key([names[i]]), words_key(f.path)}
            if len(f.path) == 2:
                keys.add(words_key([f.path[1], singular_name(f.path[0])]))
            for k in keys:
                by_words.setdefault(k, []).append(i)
        for var in variables:
            hits = by_words.get(words_key([var]), [])
            if len(set(hits)) == 1 and var not in names:
                names[hits[0]] = var
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        for i, f in enumerate(raw):
            if counts[names[i]] > 1:
                names[i] = "_".join(f.path)
        if len(set(names)) != len(names):
            names = ["__".join(f.path) for f in raw]

        self.fields: list[FlatField] = []
        for f, n in zip(raw, names, strict=True):
            dim = next((name_words(k) for k in f.path if name_words(k) in dims), ())
            if not dim and len(f.path) == 1:
                dim = next((w for w in dims if _starts(name_words(f.path[0]), w)), ())
            self.fields.append(FlatField(n, f.path, f.schema, f.required, tuple(sorted(dim))))
        self.by_name = {f.name: f for f in self.fields}

        # The first number of each subject / object: what a bare name of that thing means.
        self.primary: dict[tuple[str, ...], str] = {}
        for f in self.fields:
            if f.numeric:
                if f.subject:
                    self.primary.setdefault(f.subject, f.name)
                for i in range(1, len(f.path)):
                    self.primary.setdefault(tuple(sorted(name_words(f.path[i - 1]))), f.name)
                    self.primary.setdefault(words_key(f.path[:i]), f.name)
        self.aliases: dict[str, str] = {}
        for var in variables:
            if var in self.by_name:
                continue
            target = self.primary.get(tuple(sorted(name_words(var))))
            if target is not None:
                self.aliases[var] = target

    # -- what downstream code needs ---------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def flat_schema(self) -> dict[str, Any]:
        """The strict JSON Schema of the flat record (the transformation's target)."""
        return {
            "type": "object",
            "properties": {f.name: dict(f.schema) for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": False,
        }

    def resolve(self, variable: str) -> str | None:
        """The flat field a formula variable reads, or None when the record has no such value."""
        if variable in self.by_name:
            return variable
        return self.aliases.get(variable) or self.primary.get(tuple(sorted(name_words(variable))))

    def formula_row(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The record with every aliased formula variable filled in, ready for CalculationPlan.evaluate."""
        row = dict(fields)
        for var, target in self.aliases.items():
            row.setdefault(var, fields.get(target))
        return row

    def input_ranges(self) -> dict[str, tuple[float, float]]:
        """(minimum, maximum) of every bounded number, under its flat name and its aliases."""
        out: dict[str, tuple[float, float]] = {}
        for f in self.fields:
            lo, hi = f.schema.get("minimum"), f.schema.get("maximum")
            if f.numeric and lo is not None and hi is not None:
                out[f.name] = (float(lo), float(hi))
        for var, target in self.aliases.items():
            if target in out:
                out[var] = out[target]
        return out

    # -- mapping an answer onto the record --------------------------------------------------------

    def match(self, nodes: Sequence[Node], *, fill: Mapping[str, Any] | None = None) -> Match:
        """Map named values onto the flat fields, most specific rule first.

        1. the exact contract path; 2. a path that *ends* with the contract path (wrappers such as
        ``{"analysis": {...}}``); 3. a key equal to the flat name; 4. keys whose words equal the
        flat name's words in any order (``"Calm Rating"``, ``ratings.calm_rating``, a heading
        ``Calm`` over ``Rating``); 5. the bare name of a subject, for its first number. From rule
        2 on, a value of the wrong type is not taken. Two different values for one field under the
        same rule leave it unfilled and say so. ``fill`` holds fields already known (they are
        skipped).
        """
        result = Match(fields=dict(fill or {}))
        used: set[int] = set()
        keys = [tuple(sorted(name_words(n.path[-1]))) if n.path else () for n in nodes]
        for rule in range(1, 6):
            for f in self.fields:
                if f.name in result.fields:
                    continue
                hits = [i for i, n in enumerate(nodes) if i not in used and self._rule(rule, f, n, keys[i])]
                if rule > 1:
                    hits = [i for i in hits if _compatible(f, nodes[i])]
                if not hits:
                    continue
                values = {_canonical(_coerce(f, nodes[i])) for i in hits}
                if len(values) > 1 and rule > 1:  # the least nested wins, if it is the only one that high
                    shortest = min(len(nodes[i].path) for i in hits)
                    hits = [i for i in hits if len(nodes[i].path) == shortest]
                    values = {_canonical(_coerce(f, nodes[i])) for i in hits}
                if len(values) > 1:
                    paths = ", ".join(".".join(nodes[i].path) for i in hits[:4])
                    result.errors.append(f"{f.name}: ambiguous, the answer gives it {len(hits)} times ({paths})")
                    result.fields.setdefault(f.name, _AMBIGUOUS)
                    continue
                result.fields[f.name] = _coerce(f, nodes[hits[0]])
                used.update(hits)
                if rule > 1:
                    result.exact = False
        result.fields = {k: v for k, v in result.fields.items() if v is not _AMBIGUOUS}
        covered = [nodes[i].path for i in used]
        for i, n in enumerate(nodes):
            if i in used or isinstance(n.value, dict):
                continue
            if not any(n.path[: len(c)] == c for c in covered):
                result.unused.append(n.path)
        return result

    def _rule(self, rule: int, f: FlatField, n: Node, key: tuple[str, ...]) -> bool:
        if rule == 1:
            return n.path == f.path
        if rule == 2:
            return len(n.path) > len(f.path) and n.path[-len(f.path) :] == f.path
        if rule == 3:
            return bool(n.path) and n.path[-1] == f.name
        if rule == 4:
            target = words_key([f.name])
            alt = words_key(f.path)
            return any(words_key(n.path[-k:]) in (target, alt) for k in range(1, len(n.path) + 1))
        return bool(key) and self.primary.get(key) == f.name and key == f.subject


class _Ambiguous:
    pass


_AMBIGUOUS = _Ambiguous()


def _starts(words: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return 0 < len(prefix) < len(words) and words[: len(prefix)] == prefix


def _canonical(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _number_from_text(text: str) -> float | int | None:
    import re

    # "0.4", "**0.4**", "0.4/1.0", "0.4 (moderate)", "0.4 - clear but brief"; not "40%" or "0.4 to 0.6".
    m = re.match(
        r"^\s*[*_`]*\s*([-+\u2212]?\d+(?:\.\d+)?)\s*(?:/\s*\d+(?:\.\d+)?)?\s*[*_`]*\s*"
        r"(?:$|[(\[,;]|[-\u2013\u2014:]\s+(?!\d))",
        text,
    )
    if not m:
        return None
    raw = m.group(1).replace("\u2212", "-")
    value = float(raw)
    return int(value) if "." not in raw and value.is_integer() else value


def _coerce(f: FlatField, n: Node) -> Any:
    """Text-born values (CSV cells, Markdown) become numbers or lists where the field says so.
    JSON values are never changed: a string "0.4" where a number is due stays a type error."""
    value = n.value
    if not n.textual:
        return value
    if f.numeric and isinstance(value, str):
        number = _number_from_text(value)
        return value if number is None else number
    if "array" in f.types and isinstance(value, str):
        return [value]
    if "boolean" in f.types and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _compatible(f: FlatField, n: Node) -> bool:
    value = _coerce(f, n)
    types = f.types or {"string", "number", "integer", "boolean", "array", "object", "null"}
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int | float):
        ok = math.isfinite(value) and bool(types & {"number", "integer"})
        return ok and ("number" in types or float(value).is_integer())
    if isinstance(value, str):
        return "string" in types or ("enum" in f.schema and value in f.schema["enum"])
    if isinstance(value, list):
        return "array" in types
    if isinstance(value, dict):
        return "object" in types
    return value is None and "null" in types
