"""Check an LLM-written text against what was computed: every number, every quotation.

In MVA experiment 3 the synthesis model, given ten sample rows, wrote "F = 31,558" and
"alpha = 0.999". Here the model is given computed tables only, and afterwards every number in its
text must match a computed statistic (or a number it was shown) at the precision it was written,
and every quotation must occur in a source document. Whatever does not match is flagged, in the
report and in a Dagster asset check; nothing is silently corrected.

Matching rules (docs/statistics-and-synthesis.md):

* A number written with d decimals matches a value v when |x - v| <= 0.5 * 10^-d (so 0.71 matches
  0.7148, 0.7 matches 0.66); a whole number must equal an integral value exactly (counts, df, n).
  A number labelled by the symbol before it ("alpha = ", "F(7, 40) = ", "p = ", "d = ", "ICC = ")
  must match a value of that kind; "p < x" holds when some computed p-value is below x.
  Signs are not required to agree (a model may write "d = 0.5" for d = -0.5); "45%" matches 0.45
  or 45. List markers ("1."), numbers glued to letters ("H1", "v4.1"), the digits of "ICC(1,k)"
  and numbers inside checked quotations are not statistics and are skipped.
* A quotation ("...", “...” or a "> " block quote of 3+ words) matches when, after normalising case,
  whitespace, quote marks, dashes and Markdown emphasis, each part between ellipses occurs in one
  source document. Quotations of the experiment's own text (a hypothesis) are recognised as such.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["GroundingReport", "NumberIndex", "check_text", "find_numbers", "find_quotes", "normalise_quote"]

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-\u2212\u2013]?)"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exp>[-+]?\d+))?(?P<pct>\s?%)?(?![\w])")
_LIST_MARKER = re.compile(r"^[ \t]*(?:#+[ \t]*)?(?:[-*+][ \t]+)?(\d+)[.)](?=\s|$)", re.M)
_NAMES = re.compile(r"ICC\s*\([^)]{0,12}\)")  # the form's name, ICC(1,k), holds digits that are no data
_QUOTE = re.compile(r'"([^"\n]+)"|\u201c([^\u201d\n]+)\u201d')
_BLOCKQUOTE = re.compile(r"^[ \t]*>[ \t]?(.+)$", re.M)
_ELLIPSIS = re.compile(r"\s*(?:\[\s*(?:\.\.\.|\u2026)\s*\]|\.\.\.+|\u2026)\s*")
MIN_QUOTE_WORDS = 3


# What a number is said to be, from the symbol written just before it ("alpha = 0.82", "p < .05").
_LABEL = re.compile(
    r"(?:(?P<alpha>\u03b1|\balpha|Cronbach['\u2019]?s?(?:\s+alpha)?|Krippendorff['\u2019]?s?(?:\s+alpha)?)"
    r"|(?P<icc>\bICC(?:\s*\(\s*[\dAkC,\s]+\))?)"
    r"|(?P<F>\bF)|(?P<t>\bt)|(?P<p>\bp(?:[-\s]?values?)?|\bp[-_]adj(?:usted)?)|(?P<r>\br|\u03c1|\brho)"
    r"|(?P<d>\bd|\bg|Cohen['\u2019]?s\s+d|Hedges['\u2019]?\s+g)"
    r"|(?P<eta>\u03b7\u00b2|\u03b72|\beta[\s_]squared|\u03c9\u00b2|\bomega[\s_]squared)"
    r"|(?P<sd>\bSD|\bsd|standard deviation)|(?P<mean>\bM|\bmean))"
    r"\s*(?:\(\s*[\d.]+(?:\s*,\s*[\d.]+)?\s*\))?\s*(?P<op>=|<|>|\u2264|\u2265|\u2248|:)\s*\**[\s(]*$")
KINDS = ("alpha", "icc", "F", "t", "p", "r", "d", "eta", "sd", "mean")


def kind_of_name(name: str | None) -> str | None:
    """The kind of statistic a column or ``statistic_name`` holds, for labelled matching."""
    n = (name or "").lower()
    if not n:
        return None
    if "cronbach" in n or "krippendorff" in n or n.startswith("alpha_ci"):
        return "alpha"
    if n.startswith("icc"):
        return "icc"
    if n in ("p_value", "p_adjusted") or n.endswith("_p"):
        return "p"
    if n in ("pearson_r", "spearman_rho") or n.startswith(("pearson r", "spearman rho")):
        return "r"
    if n == "t" or n.startswith("t ("):
        return "t"
    if n == "f":
        return "F"
    if "cohen" in n or "hedges" in n:
        return "d"
    if "eta" in n or "omega" in n:
        return "eta"
    if n in ("sd", "mean_inter_run_sd", "max_inter_run_sd") or n.endswith("inter-run sd"):
        return "sd"
    if n in ("mean", "min", "max", "mean difference"):
        return "mean"
    return None


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int
    value: float
    decimals: int
    percent: bool
    exponent: int = 0
    kind: str | None = None
    op: str | None = None


def _label(text: str, start: int) -> tuple[str | None, str | None]:
    m = _LABEL.search(text[max(0, start - 48):start])
    if not m:
        return None, None
    kind = next((k for k in KINDS if m.group(k)), None)
    return kind, m.group("op")


def find_numbers(text: str, skip: Iterable[tuple[int, int]] = ()) -> list[Token]:
    """Numbers that state a quantity (see the module docstring for what is skipped)."""
    skipped = [*skip, *((m.start(1), m.end(1)) for m in _LIST_MARKER.finditer(text)),
               *((m.start(), m.end()) for m in _NAMES.finditer(text))]
    found = []
    for m in _NUMBER.finditer(text):
        if any(a <= m.start("body") < b for a, b in skipped):
            continue
        body = m.group("body")
        decimals = len(body.split(".", 1)[1]) if "." in body else 0
        value = float(body.replace(",", ""))
        exponent = int(m.group("exp")) if m.group("exp") else 0
        value *= 10.0**exponent
        if m.group("sign"):
            value = -value
        kind, op = _label(text, m.start())
        found.append(Token(m.group(0), m.start(), m.end(), value, decimals, bool(m.group("pct")), exponent,
                           kind, op))
    return found


def normalise_quote(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = (text.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u2014", "-").replace("\u2013", "-"))
    text = re.sub(r"[*_`\"]+", "", text)  # emphasis and inner quotation marks are often dropped
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.strip(" .,;:!?\"'()[]")


@dataclass(frozen=True)
class QuoteSpan:
    text: str
    start: int
    end: int


def find_quotes(text: str) -> list[QuoteSpan]:
    """Quoted passages of 3+ words: "...", “...” and Markdown block quotes."""
    spans: list[QuoteSpan] = []
    for m in _QUOTE.finditer(text):
        group = 1 if m.group(1) is not None else 2
        inner = m.group(group)
        if len(inner.split()) >= MIN_QUOTE_WORDS:
            spans.append(QuoteSpan(inner, m.start(), m.end()))
    for m in _BLOCKQUOTE.finditer(text):
        inner = m.group(1).strip()
        if len(inner.split()) >= MIN_QUOTE_WORDS and not any(s.start <= m.start(1) < s.end for s in spans):
            spans.append(QuoteSpan(inner.strip("\"\u201c\u201d"), m.start(1), m.end(1)))
    return sorted(spans, key=lambda s: s.start)


class NumberIndex:
    """Every computed value (full precision) and every number the model was shown, with its source.

    Values carry a kind (alpha, p, F, ...) when their column says so, so that a number written as
    "alpha = 0.91" must match an alpha, not any value that happens to round the same. Numeric
    columns are kept as arrays, not one Python tuple per value: a 10,000-document session's
    tables hold about a million values.
    """

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, str, str | None]] = []
        self._scalars: list[tuple[float, str, str | None]] = []
        self._by_kind: dict[str | None, tuple[np.ndarray, np.ndarray]] | None = None
        self._labels: list[str] = []

    def add(self, value: float, source: str, kind: str | None = None) -> None:
        if value is None or not math.isfinite(value):
            return
        self._scalars.append((abs(float(value)), source, kind))
        self._by_kind = None

    def add_values(self, values: Any, source: str, kind: str | None = None) -> None:
        """Many values of one source and kind at once (missing and infinite ones are skipped)."""
        array = np.abs(np.asarray(values, dtype=float))
        array = array[np.isfinite(array)]
        if len(array):
            self._chunks.append((array, source, kind))
            self._by_kind = None

    def add_text(self, text: str, source: str) -> None:
        for token in find_numbers(text):
            self.add(token.value, source, token.kind)

    def add_frame(self, frame: pd.DataFrame, table: str) -> None:
        row_kinds: dict[str, list[list[str | None]]] = {}
        for name_column, value_columns in (("statistic_name", ("statistic", "ci_low", "ci_high")),
                                           ("effect_size_name", ("effect_size", "ci_low", "ci_high"))):
            if name_column in frame.columns:
                kinds = [kind_of_name(v) if isinstance(v, str) else None for v in frame[name_column]]
                for column in value_columns:
                    row_kinds.setdefault(column, []).append(kinds)
        for column in frame.columns:
            column_kind = kind_of_name(str(column))
            label = f"{table}.{column}"
            series = frame[column]
            per_row = row_kinds.get(str(column), [])
            dtype = series.dtype
            if not per_row and (pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)):
                self.add_values(series.to_numpy(dtype=float, na_value=np.nan), label, column_kind)
                continue
            texts: set[str] = set()  # a text adds the same numbers every time it occurs
            for i, value in enumerate(series):
                if isinstance(value, bool) or value is None:
                    continue
                if isinstance(value, int | float):
                    found = {column_kind, *(k[i] for k in per_row)} - {None}
                    for kind in found or {None}:
                        self.add(float(value), label, kind)
                elif isinstance(value, str) and value not in texts:
                    texts.add(value)
                    self.add_text(value, label)

    def _ready(self) -> dict[str | None, tuple[np.ndarray, np.ndarray]]:
        """Per kind (None: every value): the values sorted, and their labels' numbers alongside.

        Ties are ordered by label, so the source named for a value does not depend on the order
        the tables were added in.
        """
        if self._by_kind is None:
            self._labels = sorted({s for _, s, _ in self._chunks} | {s for _, s, _ in self._scalars})
            rank = {s: i for i, s in enumerate(self._labels)}
            parts: dict[str | None, list[tuple[np.ndarray, np.ndarray]]] = {None: []}
            scalars: dict[tuple[str, str | None], list[float]] = {}
            for value, source, kind in self._scalars:
                scalars.setdefault((source, kind), []).append(value)
            chunks = [*self._chunks, *((np.array(v), s, k) for (s, k), v in scalars.items())]
            for array, source, kind in chunks:
                ranks = np.full(len(array), rank[source], dtype=np.int64)
                parts[None].append((array, ranks))
                if kind is not None:
                    parts.setdefault(kind, []).append((array, ranks))
            self._by_kind = {}
            for kind, pieces in parts.items():
                values = np.concatenate([a for a, _ in pieces]) if pieces else np.empty(0)
                ranks = np.concatenate([r for _, r in pieces]) if pieces else np.empty(0, dtype=np.int64)
                order = np.lexsort((ranks, values))
                self._by_kind[kind] = (values[order], ranks[order])
        return self._by_kind

    def match(self, token: Token) -> tuple[str | None, str | None]:
        """(source, None) when ``token`` matches, else (None, nearest value of its kind as a hint)."""
        values, ranks = self._ready().get(token.kind, (np.empty(0), np.empty(0, dtype=np.int64)))

        def labels(i: int) -> str:
            return self._labels[int(ranks[i])]

        if token.kind == "p" and token.op in ("<", "\u2264"):
            # "p < .001" is true when some p-value is below it; a bound, not a value to round.
            if len(values) and values[0] < abs(token.value):
                return labels(0), None
            return None, f"no p-value below {token.text.strip()}"
        candidates = [(abs(token.value), token.decimals - token.exponent)]
        if token.percent:
            candidates = [(abs(token.value) / 100, token.decimals + 2), (abs(token.value), token.decimals)]
        for target, decimals in candidates:
            if decimals <= 0 and not token.percent and token.exponent == 0:
                tolerance = 1e-9  # whole numbers are counts: exact
            else:
                tolerance = 0.5 * 10.0 ** (-decimals) + 1e-12
            lo = int(np.searchsorted(values, target - tolerance, side="left"))
            if lo < len(values) and values[lo] <= target + tolerance:
                return labels(lo), None
        if not len(values):
            return None, f"no computed {token.kind} at all" if token.kind else None
        target = candidates[0][0]
        i = int(np.searchsorted(values, target, side="left"))
        near = min((j for j in (i - 1, i) if 0 <= j < len(values)), key=lambda j: abs(float(values[j]) - target))
        return None, f"{float(values[near]):.4g} ({labels(near)})"


@dataclass
class NumberFinding:
    text: str
    start: int
    end: int
    matched: bool
    source: str | None = None
    nearest: str | None = None


@dataclass
class QuoteFinding:
    text: str
    start: int
    end: int
    matched: bool
    source: str | None = None


@dataclass
class GroundingReport:
    numbers: list[NumberFinding] = field(default_factory=list)
    quotes: list[QuoteFinding] = field(default_factory=list)

    @property
    def unmatched_numbers(self) -> list[NumberFinding]:
        return [n for n in self.numbers if not n.matched]

    @property
    def unmatched_quotes(self) -> list[QuoteFinding]:
        return [q for q in self.quotes if not q.matched]

    @property
    def grounded(self) -> bool:
        return not self.unmatched_numbers and not self.unmatched_quotes

    def labels(self) -> dict[int, str]:
        """start offset -> flag label (N1, N2 ... for numbers, Q1 ... for quotations)."""
        out = {n.start: f"N{i}" for i, n in enumerate(self.unmatched_numbers, start=1)}
        out.update({q.start: f"Q{i}" for i, q in enumerate(self.unmatched_quotes, start=1)})
        return out

    def annotate(self, text: str, *, plain: bool = False) -> str:
        """``text`` with a visible "[!N1]" after every unmatched number and "[!Q1]" after every quote.

        ``plain`` leaves out the Markdown bold, for text shown inside a code block.
        """
        marks = sorted([(n.end, n.start) for n in self.unmatched_numbers]
                       + [(q.end, q.start) for q in self.unmatched_quotes], reverse=True)
        labels = self.labels()
        for end, start in marks:
            flag = f"[!{labels[start]}]" if plain else f"**[!{labels[start]}]**"
            text = f"{text[:end]} {flag}{text[end:]}"
        return text

    def summary(self) -> dict[str, Any]:
        return {"numbers_checked": len(self.numbers), "numbers_unmatched": len(self.unmatched_numbers),
                "quotes_checked": len(self.quotes), "quotes_unmatched": len(self.unmatched_quotes),
                "grounded": self.grounded}

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "numbers": [asdict(n) for n in self.numbers],
                "quotes": [asdict(q) for q in self.quotes]}


def _quote_parts(quote: str) -> list[str]:
    parts = [normalise_quote(p) for p in _ELLIPSIS.split(quote)]
    return [p for p in parts if p]


def check_text(text: str, index: NumberIndex, documents: Mapping[str, str] | Iterable[tuple[str, str]],
               known_texts: Mapping[str, str] | None = None) -> GroundingReport:
    """Check every number and quotation of ``text``; ``documents`` and ``known_texts`` are raw texts.

    ``documents`` is a mapping name -> text or an iterable of (name, text) pairs. It is read one
    document at a time, only when ``text`` quotes something, and only until every quotation is
    found, so a caller can pass a generator instead of holding a large corpus in memory.
    """
    report = GroundingReport()
    quotes = find_quotes(text)
    parts = [_quote_parts(q.text) for q in quotes]
    sources: list[str | None] = [None] * len(quotes)
    pending = [i for i, p in enumerate(parts) if p]
    if pending:
        pairs = documents.items() if isinstance(documents, Mapping) else documents
        for name, raw in pairs:
            document = normalise_quote(raw)
            for i in pending:
                if all(p in document for p in parts[i]):
                    sources[i] = f"document {name}"  # the first document that holds it, as listed
            pending = [i for i in pending if sources[i] is None]
            if not pending:
                break
    if pending:
        known = {k: normalise_quote(v) for k, v in (known_texts or {}).items()}
        for i in pending:
            sources[i] = next((name for name, known_text in known.items()
                               if all(p in known_text for p in parts[i])), None)
    for q, source in zip(quotes, sources, strict=True):
        report.quotes.append(QuoteFinding(q.text, q.start, q.end, source is not None, source))
    for token in find_numbers(text, skip=[(q.start, q.end) for q in quotes]):
        source, nearest = index.match(token)
        report.numbers.append(NumberFinding(token.text, token.start, token.end, source is not None, source,
                                            nearest))
    return report
