"""Named values from the three things an answer can carry: JSON, delimited CSV blocks, Markdown.

Each reader returns :class:`~mva_dagster.extraction.shape.Node` s (a key path and a value) and
knows nothing about any framework; :meth:`RecordShape.match` decides which node fills which field.

* JSON: every key at every depth (lists are values, not descended into).
* CSV blocks as Framework Specification v5 embeds them: any ``<<<NAME>>>`` ... ``<<<END_NAME>>>``
  block. A *wide* block has a header of names and a row of values; a *long* block has one
  ``name,value`` row per value (several rows for one name make a list, e.g. quotations). Which
  one it is follows from which reading names more of the record's fields.
* Markdown: ``**Label:** value`` lines and list items, ``## Heading: value`` headings, headings
  that group the labels under them (``### Calm`` then ``- Rating: 0.7``), a label followed by a
  bullet list (its items become a list), and pipe tables (row label x column header).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

from mva_dagster.extraction.shape import Node

__all__ = ["csv_blocks", "csv_nodes", "json_nodes", "markdown_nodes"]

_BLOCK = re.compile(r"<<<\s*(?!END_)([A-Za-z0-9_]+)\s*>>>(.*?)(?:<<<\s*END_\1\s*>>>|(?=<<<)|\Z)", re.DOTALL)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_LABEL_LINE = re.compile(
    r"^\s*(?:[-*+]\s+|\d+[.)]\s+)?(?:\*\*|__)?(?P<label>[A-Za-z](?:[^:*\n|_]|_(?!_)){0,79}?)(?:\*\*|__)?\s*"
    r"(?:\((?P<range>[^)]{0,30})\))?\s*(?:\*\*|__)?\s*[:=]\s*(?:\*\*|__)?\s*(?P<value>.*?)\s*$"
)
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?P<item>.+?)\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def json_nodes(obj: Any, path: tuple[str, ...] = ()) -> list[Node]:
    """Every (key path, value) of a parsed JSON object, dicts included (they may be values too)."""
    nodes: list[Node] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = (*path, str(key))
            nodes.append(Node(sub, value))
            if isinstance(value, dict):
                nodes.extend(json_nodes(value, sub))
    return nodes


def _clean(text: str) -> str:
    text = text.strip()
    for mark in ("**", "__", "*", "_", "`"):
        if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark):
            text = text[len(mark) : -len(mark)].strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def csv_blocks(text: str) -> list[tuple[str, list[list[str]]]]:
    """(block name, rows) of every ``<<<NAME>>>`` block; an unclosed block runs to the next or the end."""
    out = []
    for m in _BLOCK.finditer(text or ""):
        body = m.group(2).strip("\n")
        rows = [[c.strip() for c in row] for row in csv.reader(io.StringIO(body)) if any(c.strip() for c in row)]
        if rows:
            out.append((m.group(1), rows))
    return out


def csv_nodes(text: str, known: Callable[[str], bool]) -> list[Node]:
    """Nodes from every CSV block, each read wide or long (whichever names more known fields)."""
    nodes: list[Node] = []
    for _, rows in csv_blocks(text):
        header, data = rows[0], rows[1:]
        wide_hits = sum(known(c) for c in header)
        long_hits = sum(known(r[0]) for r in data if r)
        if data and long_hits > wide_hits:
            grouped: dict[str, list[str]] = {}
            for row in data:
                if len(row) >= 2:
                    grouped.setdefault(row[0], []).append(_clean(row[1]))
            for name, values in grouped.items():
                nodes.append(Node((name,), values if len(values) > 1 else values[0], textual=True))
        elif data:
            for name, cell in zip(header, data[0], strict=False):
                nodes.append(Node((name,), _clean(cell), textual=True))
    return nodes


def _heading_text(raw: str) -> str:
    text = _clean(re.sub(r"^\s*(?:\d+[.)]|[IVX]+\.)\s+", "", raw))
    return re.sub(r"\s*\([^)]*\)\s*$", "", text).strip()


def _table_rows(lines: list[str], start: int) -> tuple[list[list[str]], int]:
    rows = []
    i = start
    while i < len(lines) and lines[i].strip().startswith("|"):
        if not _TABLE_RULE.match(lines[i]):
            rows.append([_clean(c) for c in lines[i].strip().strip("|").split("|")])
        i += 1
    return rows, i


def markdown_nodes(text: str) -> list[Node]:
    """Labelled values in Markdown-ish prose, keyed by the headings they sit under."""
    nodes: list[Node] = []
    headings: list[tuple[int, str]] = []
    lines = (text or "").splitlines()
    pending: tuple[tuple[str, ...], list[str]] | None = None

    def under() -> tuple[str, ...]:
        return tuple(h for _, h in headings)

    def flush() -> None:
        nonlocal pending
        if pending and pending[1]:
            nodes.append(Node(pending[0], list(pending[1]), textual=True))
        pending = None

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            i += 1
            continue
        if line.strip().startswith("|"):
            flush()
            rows, i = _table_rows(lines, i)
            if len(rows) >= 2:
                header = rows[0]
                for row in rows[1:]:
                    for col, cell in zip(header[1:], row[1:], strict=False):
                        if row[0] and col and cell:
                            nodes.append(Node((*under(), _heading_text(row[0]), col), cell, textual=True))
            continue
        heading = _HEADING.match(line)
        if heading:
            flush()
            level, title = len(heading.group(1)), heading.group(2)
            headings = [(lv, h) for lv, h in headings if lv < level]
            labelled = _LABEL_LINE.match(title)
            if labelled and labelled.group("value"):
                label = _heading_text(labelled.group("label"))
                nodes.append(Node((*under(), label), _clean(labelled.group("value")), textual=True))
                headings.append((level, label))
            else:
                headings.append((level, _heading_text(title)))
            i += 1
            continue
        bullet = _BULLET.match(line)
        labelled = _LABEL_LINE.match(line)
        if labelled and not (pending and bullet and not labelled.group("value")):
            flush()
            label = _heading_text(labelled.group("label"))
            value = labelled.group("value")
            if value:
                nodes.append(Node((*under(), label), _clean(value), textual=True))
            else:
                pending = ((*under(), label), [])
        elif pending is not None and bullet:
            pending[1].append(_clean(bullet.group("item")))
        elif pending is not None and line.lstrip().startswith(">"):
            pending[1].append(_clean(line.lstrip()[1:]))
        i += 1
    flush()
    return nodes

