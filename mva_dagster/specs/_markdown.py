"""Reading spec files and finding the machine-readable blocks inside Markdown.

Shared by the framework, experiment and corpus loaders so that every spec file is read, decoded and
split the same way, and every error names the file (and, where it helps, the line).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mva_dagster.errors import SpecError

_FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")


@dataclass(frozen=True)
class RawFile:
    """A spec file as read: its bytes' hash and its decoded text."""

    path: Path
    data: bytes
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class CodeBlock:
    """One fenced code block. ``first_line`` is the 1-based file line of its first content line."""

    lang: str
    body: str
    first_line: int
    fence_line: int


def utf8_problem(data: bytes) -> str | None:
    """Why ``data`` is not usable text (empty, binary, not UTF-8), or None when it is."""
    if not data.strip():
        return "is empty" if not data else "contains only whitespace"
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"looks binary (NUL byte at offset {nul})"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
    return None


def read_spec_file(path: str | Path, *, what: str, error: type[SpecError] = SpecError) -> RawFile:
    """Read a spec file, refusing missing, empty, binary and non-UTF-8 files with a named error."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} file not found", file=p)
    if not p.is_file():
        raise error(f"{what} path is not a file", file=p)
    data = p.read_bytes()
    problem = utf8_problem(data)
    if problem:
        raise error(f"{what} file {problem}", file=p)
    text = data.decode("utf-8").removeprefix("\ufeff")
    return RawFile(path=p, data=data, text=text)


def fenced_blocks(text: str) -> list[CodeBlock]:
    """All fenced code blocks (``` or ~~~), CommonMark-style: a block closes on a fence of the same
    character that is at least as long, so examples nested in longer fences are not mistaken for
    configuration blocks."""
    blocks: list[CodeBlock] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[j])
            j += 1
        blocks.append(CodeBlock(lang=lang, body="\n".join(body), first_line=i + 2, fence_line=i + 1))
        i = j + 1
    return blocks


def yaml_load(
    text: str, *, file: Path, field: str, line_offset: int = 0, error: type[SpecError] = SpecError
) -> Any:
    """``yaml.safe_load`` whose errors name the file line (``line_offset`` = lines before ``text``)."""
    try:
        return jsonable(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1 + line_offset}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"invalid YAML{where}: {problem}", file=file, field=field) from exc


def jsonable(value: Any) -> Any:
    """YAML turns unquoted dates into date objects; keep everything JSON-serialisable (ISO strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, _dt.date | _dt.datetime):
        return value.isoformat()
    return value
