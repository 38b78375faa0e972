"""Complete an output contract from what the framework says elsewhere, without knowing any framework.

Real contracts are often thinner than the answers they expect: ``"ratings": "object"`` with its
subjects named only in formulas (``calm_rating``), ranges stated only in the prompt
("Calm (0.0-1.0)", "rate from 0.0 to 1.0", "-1 to +1"), options listed in a sentence ("The
valid options are "A", "B" or "C""), and arrays of objects described in the instructions ("an
ordered array of objects, each containing 'name' (string), 'weight' (0.0-1.0)"). This module reads
those statements and turns them into JSON Schema, so the schema sent as ``response_format`` and the
validation of answers say what the framework says.

Every rule works on words taken from the framework (see :mod:`.words`); the module holds no field
names. Each addition is recorded as a :class:`Derivation` naming its source, so ``mva framework
check`` can show a researcher where a constraint came from. Explicit JSON-Schema constraints in the
contract always win over derived ones. ``docs/extraction.md`` documents the rules.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mva_dagster.calc.formula import formula_variables, parse_formula
from mva_dagster.errors import FormulaError
from mva_dagster.extraction.schema import contract_json_schema
from mva_dagster.extraction.words import identifiers, name_words, slug
from mva_dagster.specs.framework import Framework

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_LENGTH",
    "DerivedContract",
    "Derivation",
    "RangeStatement",
    "derive_contract",
    "range_statements",
]

DEFAULT_MAX_LENGTH = 300
DEFAULT_MAX_ITEMS = 3
_NUMBER_TYPES = {"number", "integer"}

_NUM = r"[-+\u2212]?\d+(?:\.\d+)?"
_RANGE = re.compile(
    rf"(?<![\w.])(?:between\s+)?(?P<lo>{_NUM})\s*(?:-|\u2013|\u2014|to|and|\.\.|\u2026)\s*(?P<hi>{_NUM})(?!\w|\.\d)",
    re.IGNORECASE,
)
# Where a statement's own context starts: a line break, or sentence/clause punctuation + space.
_BOUNDARY = re.compile(r"\n|[.!?;:](?=\s)")
_LABEL = re.compile(r"([A-Z][A-Za-z'-]*(?:\s+[A-Z][A-Za-z'-]*){0,4})\s*\(\s*$")
# "'some_name' (0.0-1.0)" or "some_name (0-1)": the range is about that name and nothing else.
_NAMED = re.compile(r"[\"'\u2018\u201c]?([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*)[\"'\u2019\u201d]?\s*\(\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'\u201c(])|\n+")
_ENUM_CUE = re.compile(
    r"\b(?:options\s+are|options:|one\s+of|valid\s+values\s+are|must\s+be\s+either|either)\b", re.IGNORECASE
)
_QUOTED_RUN = re.compile(
    r"^[\s:]*((?:[\"\u201c][^\"\u201d]{1,60}[\"\u201d]\s*(?:,\s*(?:or|and)?|\bor\b|\band\b|/)?\s*){2,})"
)
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]{1,60})[\"\u201d]")
_ITEM_SPEC = re.compile(
    r"[\"'\u2018\u201c](?P<name>[A-Za-z_][A-Za-z0-9_]{0,60})[\"'\u2019\u201d]\s*\((?P<spec>[^)]{1,40})\)"
)
_STOP = frozenset(
    ("a", "an", "the", "of", "for", "from", "to", "on", "in", "at", "by", "with", "and", "or", "each",
     "every", "all", "any", "your", "its", "their", "this", "that", "these", "those", "is", "are", "be",
     "been", "as", "it", "based", "using", "use")
)  # fmt: skip
_CONTEXT_WORDS = 10
_MAX_ABS = 100.0  # larger numbers are years, counts or ids, not score ranges


@dataclass(frozen=True)
class RangeStatement:
    """A numeric range stated in prose, with the words just before it (its subject)."""

    low: float
    high: float
    context: frozenset[str]
    label: str | None
    snippet: str


@dataclass(frozen=True)
class Derivation:
    """One constraint or structure that came from the framework's prose, and where it came from."""

    where: str
    what: str
    source: str


@dataclass
class DerivedContract:
    """The contract's JSON Schema completed from the framework, with the record of each addition."""

    schema: dict[str, Any]
    subjects: list[str] = field(default_factory=list)
    derivations: list[Derivation] = field(default_factory=list)


# ---------------------------------------------------------------- reading prose


def _number(text: str) -> float:
    return float(text.replace("\u2212", "-").lstrip("+"))


def _context_words(segment: str) -> frozenset[str]:
    words = [w for w in name_words(segment) if w not in _STOP and not w.isdigit()]
    return frozenset(words[-_CONTEXT_WORDS:])


def range_statements(text: str) -> list[RangeStatement]:
    """Every plausible numeric range in ``text`` ("0.0-1.0", "0 to 1", "-1 to +1", "between 0 and 2")."""
    found: list[RangeStatement] = []
    previous_end = 0
    for m in _RANGE.finditer(text or ""):
        sep = text[m.end("lo") : m.start("hi")].strip().lower()
        if sep == "and" and not m.group(0).lower().startswith("between"):
            continue
        low, high = _number(m.group("lo")), _number(m.group("hi"))
        if not low < high or max(abs(low), abs(high)) > _MAX_ABS:
            continue
        segment = text[previous_end : m.start()]
        cuts = [b.end() for b in _BOUNDARY.finditer(segment)]
        segment = segment[cuts[-1] :] if cuts else segment
        label = _LABEL.search(segment)
        named = _NAMED.search(segment)
        quoted = named and (("_" in named.group(1)) or segment.rstrip(" (")[-1:] in "\"'\u2019\u201d")
        context = _context_words(named.group(1) if quoted and named else segment)
        previous_end = m.end()
        snippet = " ".join((segment + m.group(0)).split()[-16:])
        found.append(RangeStatement(low, high, context, label.group(1) if label else None, snippet))
    return found


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text or "") if s.strip()]


def _enum_statements(text: str) -> list[tuple[list[str], frozenset[str], str]]:
    """(options, words of this and the previous sentence, snippet) for 'options are "A", "B" or "C"'."""
    out = []
    sentences = _sentences(text)
    for i, sentence in enumerate(sentences):
        for cue in _ENUM_CUE.finditer(sentence):
            run = _QUOTED_RUN.match(sentence[cue.end() :])
            if not run:
                continue
            options = [o.strip() for o in _QUOTED.findall(run.group(1)) if o.strip(" ,")]
            options = [o.rstrip(",") for o in options]
            if len(options) >= 2:
                words = frozenset(name_words(sentence)) | frozenset(name_words(sentences[i - 1] if i else ""))
                out.append((list(dict.fromkeys(options)), words, sentence[:160]))
    return out


def _item_properties(text: str, name: str) -> tuple[dict[str, Any], str] | None:
    """Properties of an array's objects from a sentence like "<name> ... array of objects, each
    containing 'a' (string), 'b' (0.0-1.0), and 'c' (integer)"."""
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", re.IGNORECASE)
    for sentence in _sentences(text):
        if not pattern.search(sentence) or not re.search(r"\bobjects?\b", sentence, re.IGNORECASE):
            continue
        props: dict[str, Any] = {}
        for m in _ITEM_SPEC.finditer(sentence):
            spec = m.group("spec").strip().lower()
            rng = _RANGE.fullmatch(spec.replace(" ", ""))
            if spec in ("string", "text"):
                props[m.group("name")] = {"type": "string"}
            elif spec in ("integer", "int"):
                props[m.group("name")] = {"type": "integer"}
            elif spec in ("number", "float"):
                props[m.group("name")] = {"type": "number"}
            elif spec in ("boolean", "bool"):
                props[m.group("name")] = {"type": "boolean"}
            elif rng:
                low, high = _number(rng.group("lo")), _number(rng.group("hi"))
                props[m.group("name")] = {"type": "number", "minimum": low, "maximum": high}
        if props:
            return props, sentence[:200]
    return None


def _mentions(text: str, name: str) -> list[str]:
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", re.IGNORECASE)
    return [s for s in _sentences(text) if pattern.search(s)]


# ---------------------------------------------------------------- the contract's structure


def _is_bare(spec: Any, kind: str) -> bool:
    """A contract field of type ``kind`` whose structure the framework left open."""
    if spec == kind:
        return True
    if not isinstance(spec, Mapping) or spec.get("type") != kind:
        return False
    return "properties" not in spec if kind == "object" else "items" not in spec


def _ends_with(words: tuple[str, ...], tail: tuple[str, ...]) -> bool:
    return 0 < len(tail) < len(words) and words[-len(tail) :] == tail


def _strip_tail(name: str, tail: tuple[str, ...]) -> str:
    parts = name.split("_")
    return "_".join(parts[: len(parts) - len(tail)])


def _formula_variables(framework: Framework) -> list[str]:
    out: list[str] = []
    for name, text in framework.calculation_spec.items():
        try:
            tree = parse_formula(text, name=name)
        except FormulaError:
            continue
        out.extend(sorted(formula_variables(tree) - set(framework.calculation_spec)))
    return list(dict.fromkeys(out))


def _family_suffixes(keys: Iterable[str]) -> dict[str, str]:
    """For flat contracts: key -> the suffix it shares with other keys (``x_score``, ``y_score``)."""
    prefixes: dict[str, set[str]] = {}
    keys = list(keys)
    for key in keys:
        parts = key.split("_")
        for j in range(1, len(parts)):
            prefixes.setdefault("_".join(parts[j:]), set()).add("_".join(parts[:j]))
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split("_")
        options = [("_".join(parts[j:]), len(prefixes["_".join(parts[j:])])) for j in range(1, len(parts))]
        options = [(s, n) for s, n in options if n >= 2]
        if options:
            out[key] = max(options, key=lambda o: (o[1], -len(o[0])))[0]
    return out


@dataclass
class _Reader:
    framework: Framework
    variant: str
    max_length: int
    max_items: int
    derivations: list[Derivation] = field(default_factory=list)

    def __post_init__(self) -> None:
        fw = self.framework
        contract = fw.output_contract
        self.prompt = fw.variant(self.variant).analysis_prompt
        self.instructions = contract.instructions
        self.notes_text = "\n".join(fw.calculation_notes.values())
        self.all_text = "\n".join((self.prompt, self.instructions))
        self.statements = range_statements(self.prompt) + range_statements(self.instructions)
        self.statements += range_statements(self.notes_text)
        self.labels = [s.label for s in self.statements if s.label]
        self.variables = _formula_variables(fw)
        self.metrics = set(fw.calculation_spec) | set(fw.calculation_notes)

    def note(self, where: str, what: str, source: str) -> None:
        self.derivations.append(Derivation(where, what, source))

    # -- objects the contract left open: one property per subject --------------------------------

    def open_objects(self, schema: dict[str, Any], item_names: set[str]) -> list[str]:
        contract = self.framework.output_contract.schema_
        open_fields = [k for k, spec in contract.items() if _is_bare(spec, "object")]
        pool = list(self.variables)
        pool += [v for v in identifiers(self.notes_text) if v not in self.metrics]
        pool += [v for v in identifiers(self.all_text) if v not in self.metrics]
        pool = [v for v in dict.fromkeys(pool) if v not in contract and v not in item_names]
        numeric_pool = set(self.variables) | set(identifiers(self.notes_text))

        own: dict[str, tuple[list[str], str, bool]] = {}  # field -> (keys, source, keys are verbatim)
        for key in open_fields:
            tail = name_words(key)
            listed = [
                v
                for sentence in _mentions(self.instructions + "\n" + self.prompt, key)
                for v in identifiers(sentence)
                if _ends_with(name_words(v), tail) and v not in contract
            ]
            if listed:
                own[key] = (list(dict.fromkeys(listed)), "named in the instructions", True)
                continue
            dims = [_strip_tail(v, tail) for v in pool if _ends_with(name_words(v), tail)]
            if dims:
                source = "from names ending in its name: " + ", ".join(
                    v for v in pool if _ends_with(name_words(v), tail))
                labelled = [slug(label) for label in self.labels]
                if {name_words(d) for d in dims} < {name_words(lb) for lb in labelled}:
                    # The prompt rates more than the formulas use: ask for everything it rates.
                    dims = [*dims, *(lb for lb in labelled if name_words(lb) not in {name_words(d) for d in dims})]
                    source += "; and the prompt's labels before ranges"
                own[key] = (list(dict.fromkeys(dims)), source, False)

        declared = [str(d.get("name")) for d in self.framework.dimensions if d.get("name")]
        declared += [d for members in self.framework.dimension_groups.values() for d in members]
        candidates = [keys for keys, _, verbatim in own.values() if not verbatim]
        shared = max(candidates, key=len) if candidates else []
        shared = list(dict.fromkeys([*shared, *declared]))
        shared_source = "the subjects of the other per-subject objects"
        if not shared and len(set(self.labels)) >= 2:
            shared = list(dict.fromkeys(slug(label) for label in self.labels))
            shared_source = "labels before ranges in the prompt"
        shared = self.prompt_order(shared)

        for key in open_fields:
            keys, source, verbatim = own.get(key, (shared, shared_source, False))
            if not keys:
                self.note(key, "left open (any object)", "no subject names found in formulas or prompt")
                continue
            keys = keys if verbatim else self.prompt_order(keys)
            tail = name_words(key)
            numeric = (
                any(_ends_with(name_words(v), tail) for v in numeric_pool)
                or any(set(tail) <= s.context for s in self.statements)
                or (verbatim and all(k in self.metrics for k in keys))
            )
            value = (
                {"type": "number"}
                if numeric
                else {
                    "type": ["string", "array"],
                    "maxLength": self.max_length,
                    "items": {"type": "string", "maxLength": self.max_length},
                    "maxItems": self.max_items,
                }
            )
            schema["properties"][key] = {
                **{k: v for k, v in schema["properties"][key].items() if k != "type"},
                "type": "object",
                "properties": {k: copy.deepcopy(value) for k in keys},
                "required": list(keys),
                "additionalProperties": False,
            }
            kind = "numbers" if numeric else "text or quotations"
            self.note(key, f"{len(keys)} properties ({kind}): {', '.join(keys)}", source)
        return shared

    def prompt_order(self, names: list[str]) -> list[str]:
        """Names in the order the prompt introduces them (labels before ranges), others after."""
        order = {name_words(label): i for i, label in reversed(list(enumerate(self.labels)))}
        return sorted(names, key=lambda n: order.get(name_words(n), len(order)))

    # -- arrays of objects described in prose ----------------------------------------------------

    def open_arrays(self, schema: dict[str, Any]) -> set[str]:
        names: set[str] = set()
        for key, spec in self.framework.output_contract.schema_.items():
            if not _is_bare(spec, "array"):
                continue
            found = _item_properties(self.instructions + "\n" + self.prompt, key)
            if not found:
                continue
            props, sentence = found
            prop = schema["properties"][key]
            prop["items"] = {
                "type": "object",
                "properties": props,
                "required": list(props),
                "additionalProperties": False,
            }
            if not isinstance(spec, Mapping) or "maxItems" not in spec:
                prop.pop("maxItems", None)
            names |= set(props)
            self.note(key, "items: objects with " + ", ".join(props), f"instructions: {sentence!r}")
        return names

    # -- ranges and options on the leaves ---------------------------------------------------------

    def constrain(self, schema: dict[str, Any], subjects: list[str]) -> None:
        leaves = list(_leaves(schema))
        dim_words = {name_words(d): d for d in subjects}
        families = _family_suffixes(schema["properties"])
        primary: dict[tuple[str, ...], tuple[str, ...]] = {}
        described: list[tuple[tuple[str, ...], dict[str, Any], frozenset[str], frozenset[str], frozenset[str]]] = []
        for path, node in leaves:
            dim_words_of, rest_words, outer_words = _split(path, dim_words, families)
            if dim_words_of and _types(node) & _NUMBER_TYPES:
                primary.setdefault(dim_words_of, path)
            described.append((path, node, frozenset(dim_words_of), frozenset(rest_words), frozenset(outer_words)))

        enums = _enum_statements(self.all_text)
        for path, node, dim, rest, outer in described:
            where = ".".join(path)
            if _types(node) & _NUMBER_TYPES and not any(k in node for k in ("minimum", "maximum")):
                best, chosen = 0, []
                is_primary = bool(dim) and primary.get(tuple(sorted(dim))) == path
                for st in self.statements:
                    # The words about *what* is measured count double; a statement that names only the
                    # subject ("Calm (0.0-1.0)") applies to the subject's first number alone.
                    score = 2 * len(st.context & rest)
                    if dim and dim <= st.context and (score or is_primary):
                        score += len(dim)
                    if is_primary and not score and st.context & outer:
                        score = 1  # "rate both axes from 0 to 1": the container's subjects, first numbers
                    if score > best:
                        best, chosen = score, [st]
                    elif score == best and score:
                        chosen.append(st)
                if chosen:
                    node["minimum"] = min(s.low for s in chosen)
                    node["maximum"] = max(s.high for s in chosen)
                    sources = "; ".join(dict.fromkeys(repr(s.snippet) for s in chosen))
                    self.note(where, f"range [{node['minimum']:g}, {node['maximum']:g}]", f"prose: {sources}")
            if _types(node) == {"string"} and "enum" not in node and path:
                words = set(name_words(path[-1]))
                matches = [(opts, src) for opts, ctx, src in enums if words <= ctx]
                if len(matches) == 1:
                    node["enum"] = matches[0][0]
                    node.pop("maxLength", None)
                    self.note(where, "one of " + ", ".join(map(repr, node["enum"])), f"prompt: {matches[0][1]!r}")


def _types(node: Mapping[str, Any]) -> set[str]:
    t = node.get("type")
    return set(t) if isinstance(t, list) else {t} if isinstance(t, str) else set()


def _leaves(schema: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """(path, node) of every value that is not an object with properties (arrays are leaves)."""
    props = schema.get("properties")
    if isinstance(props, Mapping) and "object" in _types(schema):
        for key, sub in props.items():
            yield from _leaves(sub, (*path, key))
    else:
        yield path, schema


def _split(
    path: tuple[str, ...], dims: Mapping[tuple[str, ...], str], families: Mapping[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(subject words, words about what is measured, words of the containers around the subject)."""
    for i, key in enumerate(path):
        words = name_words(key)
        if words in dims:
            rest = path[i + 1 :] or path[:i]
            outer = tuple(w for k in path[:i] for w in name_words(k))
            return tuple(sorted(words)), tuple(w for k in rest for w in name_words(k)), outer
    if len(path) == 1 and path[0] in families:
        suffix = families[path[0]]
        return tuple(sorted(name_words(_strip_tail(path[0], name_words(suffix))))), name_words(suffix), ()
    return (), tuple(w for k in path for w in name_words(k)), ()


# ---------------------------------------------------------------- entry point


def derive_contract(
    framework: Framework,
    variant: str = "default",
    *,
    max_string_length: int = DEFAULT_MAX_LENGTH,
    max_evidence_items: int = DEFAULT_MAX_ITEMS,
) -> DerivedContract:
    """The framework's output contract as a strict JSON Schema, completed from its prose.

    Structure first (open objects get one property per subject, open arrays get the objects the
    instructions describe), then ranges and options on every leaf that has none of its own.
    """
    schema = contract_json_schema(
        framework.output_contract, max_string_length=max_string_length, max_evidence_items=max_evidence_items
    )
    reader = _Reader(framework, variant, max_string_length, max_evidence_items)
    item_names = reader.open_arrays(schema)
    shared = reader.open_objects(schema, item_names)
    # Flat contracts name their subjects as prefixes of the commonest shared suffix (x_rating, y_rating).
    families = _family_suffixes(schema["properties"])
    counts = Counter(families.values())
    flat_dims: list[str] = []
    if counts and not shared:
        top = counts.most_common(1)[0][0]
        flat_dims = [_strip_tail(k, name_words(s)) for k, s in families.items() if s == top]
    declared = [str(d.get("name")) for d in framework.dimensions if d.get("name")]
    subjects = list(dict.fromkeys([*shared, *flat_dims, *declared]))
    reader.constrain(schema, subjects)
    return DerivedContract(schema=schema, subjects=subjects, derivations=reader.derivations)
