"""Names as words: the one normalisation behind every name comparison extraction makes.

Field names reach us as ``snake_case`` keys, ``camelCase`` keys, Markdown headings ("Calm
Rating"), CSV headers and formula variables. Comparing them as lower-case, singular word
tuples makes ``calm_rating``, ``"Calm Rating"`` and ``ratings.calm`` comparable without any list of
known field names: the words come from the framework, never from this code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["identifiers", "name_words", "singular", "singular_name", "slug", "words_key"]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
# snake_case identifiers in prose: at least one underscore, so ordinary words are not taken.
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+(?![A-Za-z0-9_])")


def singular(word: str) -> str:
    """A crude English singular that is applied to both sides of every comparison.

    It only has to be consistent, not correct: ``vertices`` -> ``vertex``, ``entries`` -> ``entry``,
    ``ratings`` -> ``rating``; words ending in ``ss``, ``us``, ``is`` (``process``, ``status``,
    ``analysis``) and short words are left alone.
    """
    w = word.lower()
    if len(w) <= 3:
        return w
    if w.endswith("ices") and len(w) > 5:
        return w[:-4] + "ex"
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("sses"):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


@lru_cache(maxsize=65536)  # pure, and called for every (field, node) pair while matching
def name_words(name: str) -> tuple[str, ...]:
    """Lower-case singular words of a key, heading, header or variable name."""
    spaced = _CAMEL.sub(" ", str(name))
    return tuple(singular(w) for w in _NON_WORD.split(spaced) if w)


def words_key(names: Iterable[str]) -> tuple[str, ...]:
    """Order-free comparison key of several names: ``("ratings", "calm")`` == ``("calm_rating",)``."""
    return tuple(sorted(w for n in names for w in name_words(n)))


def slug(label: str) -> str:
    """``"Civic Calm"`` -> ``"civic_calm"`` (words kept as written, not singularised)."""
    return "_".join(w.lower() for w in _NON_WORD.split(_CAMEL.sub(" ", label)) if w)


def singular_name(name: str) -> str:
    """The name with its last word made singular: ``item_ratings`` -> ``item_rating``."""
    parts = name.split("_")
    parts[-1] = singular(parts[-1]) if parts[-1].lower() == parts[-1] else parts[-1]
    return "_".join(parts)


def identifiers(text: str) -> list[str]:
    """snake_case identifiers mentioned in prose, in order of first mention."""
    return list(dict.fromkeys(m.group(0) for m in _IDENTIFIER.finditer(text or "")))
