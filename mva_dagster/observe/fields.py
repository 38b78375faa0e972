"""A record's fields arranged for people: one row per dimension, one column per role.

No framework's field names live here. The arrangement comes from the shape of the output
contract and from the *role words* frameworks use to name a dimension's parts (``score``,
``confidence``, ``salience``, ``evidence``/``quote``). Three shapes are recognised:

* flat names ending in a role: ``fear_score``, ``fear_confidence``, ``fear_evidence``;
* a role object holding dimensions: ``scores: {fear: 0.8}``, ``evidence: {fear: [...]}``;
* a dimension object holding roles: ``dimensional_scores: {fear: {raw_score, salience, evidence}}``.

Anything else (``worldview``, a free-text summary, an index) is kept as an *other* field, in full.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# Role word (as written in a contract) -> the column it belongs to.
ROLE_WORDS: dict[str, str] = {
    "raw_score": "score", "score": "score", "scores": "score",
    "confidence": "confidence", "confidences": "confidence",
    "salience": "salience",
    "evidence": "evidence", "quote": "evidence", "quotes": "evidence",
}  # fmt: skip
_SUFFIX = re.compile(r"^(?P<dim>.+?)_(?P<role>raw_score|score|confidence|salience|evidence|quotes?)$")
ROLE_ORDER = ("score", "confidence", "salience", "evidence")


def flatten(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, leaf) pairs; lists are leaves (evidence lists stay whole)."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from flatten(item, (*path, str(key)))
    elif path:
        yield path, value


def variable_name(path: tuple[str, ...]) -> str:
    """The name a formula uses for a leaf: top-level names as they are, nested ones joined by '_'."""
    return "_".join(path)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_values(fields: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric leaf of a record under its formula name (for alert rules)."""
    return {variable_name(path): float(v) for path, v in flatten(fields) if is_number(v)}


def schema_numeric_names(schema: Mapping[str, Any], path: tuple[str, ...] = ()) -> set[str]:
    """Formula names of every number/integer leaf a JSON Schema allows (to check alert rules)."""
    names: set[str] = set()
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for key, sub in props.items():
            if isinstance(sub, Mapping):
                names |= schema_numeric_names(sub, (*path, str(key)))
        return names
    raw = schema.get("type")
    types = raw if isinstance(raw, list) else [raw]
    if path and any(t in ("number", "integer") for t in types):
        names.add(variable_name(path))
    return names


def schema_bounds(schema: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], tuple[float, float]]:
    """(lower, upper) of every bounded numeric leaf, keyed by path (for range checks)."""
    bounds: dict[tuple[str, ...], tuple[float, float]] = {}
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for key, sub in props.items():
            if isinstance(sub, Mapping):
                bounds.update(schema_bounds(sub, (*path, str(key))))
        return bounds
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if path and (is_number(lo) or is_number(hi)):
        bounds[path] = (float(lo) if is_number(lo) else float("-inf"), float(hi) if is_number(hi) else float("inf"))
    return bounds


def classify(path: tuple[str, ...]) -> tuple[str, str] | None:
    """(dimension, role) for a leaf path, or None when the leaf is not part of a dimension.

    Containers around a dimension (``dimensional_scores``) are left out of its name; when that
    makes two leaves collide, :func:`score_table` falls back to the full path.
    """
    leaf = path[-1]
    parent = path[-2] if len(path) > 1 else None
    if leaf in ROLE_WORDS:
        if parent is not None and parent not in ROLE_WORDS:
            return parent, ROLE_WORDS[leaf]
        return None
    match = _SUFFIX.match(leaf)
    if match:
        return match["dim"], ROLE_WORDS[match["role"]]
    if parent is not None and parent in ROLE_WORDS:
        return leaf, ROLE_WORDS[parent]
    return None


@dataclass
class ScoreTable:
    """Dimensions (rows) x roles (columns), plus the fields that belong to no dimension."""

    roles: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    other: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.rows and not self.other


def score_table(fields: Mapping[str, Any]) -> ScoreTable:
    """Arrange one record's fields; the order of dimensions is the order of the answer's fields."""
    table = ScoreTable()
    seen_roles: set[str] = set()
    for path, value in flatten(fields):
        found = classify(path)
        if found is None or (found[1] != "evidence" and not (is_number(value) or value is None)):
            table.other.append((".".join(path), value))
            continue
        dimension, role = found
        if role in table.rows.get(dimension, {}):
            dimension = ".".join((*path[:-1], dimension))
        table.rows.setdefault(dimension, {})[role] = value
        seen_roles.add(role)
    table.roles = [r for r in ROLE_ORDER if r in seen_roles] + sorted(seen_roles - set(ROLE_ORDER))
    return table


def quotes(value: Any) -> list[str]:
    """Evidence as a list of quotations, whatever shape the model gave it."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            if isinstance(item, Mapping):
                text = next((v for k, v in item.items() if isinstance(v, str) and ROLE_WORDS.get(k) == "evidence"),
                            None) or next((v for v in item.values() if isinstance(v, str)), None)
                if text:
                    out.append(text)
            elif item is not None and str(item).strip():
                out.append(str(item))
        return out
    return [str(value)]
