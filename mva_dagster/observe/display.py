"""Score tables for people: plain text (session log, terminal) and Markdown (Dagster UI).

Every dimension, every role and every quotation is shown in full: the point is that a researcher
can read what the model said without opening JSON, so nothing is cut to fit a width.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mva_dagster.observe.fields import ScoreTable, is_number, quotes

DASH = "-"


def fmt_value(value: Any) -> str:
    """A field value as written by the model: numbers unrounded, text as is, structures as JSON."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _quoted(items: Sequence[str]) -> list[str]:
    return [f'"{q}"' for q in items]


def text_lines(table: ScoreTable, indent: str = "    ") -> list[str]:
    """The table as aligned plain-text lines; each further quotation gets a line of its own."""
    lines: list[str] = []
    numeric_roles = [r for r in table.roles if r != "evidence"]
    has_evidence = "evidence" in table.roles
    if table.rows:
        width = max(len("dimension"), *(len(d) for d in table.rows))
        cells = {d: [fmt_value(row.get(r)) for r in numeric_roles] for d, row in table.rows.items()}
        widths = [max(len(r), *(len(c[i]) for c in cells.values())) for i, r in enumerate(numeric_roles)]
        header = [f"{'dimension':<{width}}", *(f"{r:>{w}}" for r, w in zip(numeric_roles, widths, strict=True))]
        if has_evidence:
            header.append("evidence")
        lines.append(indent + "  ".join(header).rstrip())
        pad = " " * (width + sum(w + 2 for w in widths))
        for dimension, row in table.rows.items():
            parts = [f"{dimension:<{width}}",
                     *(f"{c:>{w}}" for c, w in zip(cells[dimension], widths, strict=True))]
            said = _quoted(quotes(row.get("evidence"))) if has_evidence else []
            first = "  ".join(parts) + ("  " + said[0] if said else "")
            lines.append(indent + first.rstrip())
            lines.extend(indent + pad + q for q in said[1:])
    lines.extend(f"{indent}{name}: {fmt_value(value)}" for name, value in table.other)
    return lines


def md_cell(text: str) -> str:
    """Text made safe for one Markdown table cell (pipes escaped, line breaks flattened)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown(table: ScoreTable) -> str:
    """The table as GitHub-flavoured Markdown, quotations joined in one cell, then other fields."""
    out: list[str] = []
    numeric_roles = [r for r in table.roles if r != "evidence"]
    if table.rows:
        columns = ["dimension", *numeric_roles, *(["evidence"] if "evidence" in table.roles else [])]
        out.append("| " + " | ".join(columns) + " |")
        out.append("|---|" + "".join("---:|" for _ in numeric_roles)
                   + ("---|" if "evidence" in table.roles else ""))
        for dimension, row in table.rows.items():
            cells = [dimension, *(fmt_value(row.get(r)) if r in row else "" for r in numeric_roles)]
            if "evidence" in table.roles:
                cells.append(" · ".join(_quoted(quotes(row.get("evidence")))))
            out.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
        out.append("")
    out.extend(f"- **{md_cell(name)}**: {md_cell(fmt_value(value))}" for name, value in table.other)
    return "\n".join(out).rstrip() + "\n"
