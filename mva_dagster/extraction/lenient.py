"""A forgiving JSON reader for the two ways answers are almost JSON: sloppy and cut off.

*Sloppy* (trailing commas, single-quoted strings, ``True``/``None``, a missing comma between
members, ``//`` comments): the syntax is unambiguous and every value is read exactly as written, so
nothing is guessed. *Cut off* (``max_tokens`` reached): only members that were completely written
are kept - a number or string that runs into the end of the text, or a list that never closes, is
dropped rather than kept in a shortened form. The caller records which repairs were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LenientResult", "read_lenient"]

_WS = " \t\r\n"
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_MAX_DEPTH = 200


@dataclass
class LenientResult:
    """``value``: the object read (possibly partial); ``complete``: its closing brace was seen."""

    value: dict[str, Any] | None
    complete: bool
    end: int
    repairs: list[str] = field(default_factory=list)
    error: str | None = None


class _EOF(Exception):
    def __init__(self, partial: Any = None) -> None:
        self.partial = partial


class _Bad(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


class _Reader:
    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos
        self.repairs: list[str] = []

    def repair(self, what: str) -> None:
        if what not in self.repairs:
            self.repairs.append(what)

    def skip(self) -> None:
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c in _WS:
                self.pos += 1
            elif t.startswith("//", self.pos):
                end = t.find("\n", self.pos)
                self.pos = len(t) if end < 0 else end + 1
                self.repair("comments")
            else:
                return

    def peek(self) -> str:
        self.skip()
        if self.pos >= len(self.text):
            raise _EOF()
        return self.text[self.pos]

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Bad("nesting is too deep", self.pos)
        c = self.peek()
        if c == "{":
            return self.obj(depth)
        if c == "[":
            return self.array(depth)
        if c in "\"'":
            return self.string()
        if c in "-+0123456789.":
            return self.number()
        for word, literal in _LITERALS.items():
            if self.text.startswith(word, self.pos):
                end = self.pos + len(word)
                if end < len(self.text) and (self.text[end].isalnum() or self.text[end] == "_"):
                    continue
                if word not in ("true", "false", "null"):
                    self.repair("python_literals")
                self.pos = end
                return literal
            if word.startswith(self.text[self.pos :]) and len(self.text) - self.pos < len(word):
                raise _EOF()
        raise _Bad(f"unexpected {c!r}", self.pos)

    def obj(self, depth: int) -> dict[str, Any]:
        self.pos += 1
        out: dict[str, Any] = {}
        expecting_member = True
        try:
            while True:
                c = self.peek()
                if c == "}":
                    self.pos += 1
                    return out
                if c == ",":
                    self.pos += 1
                    if self.peek() == "}":
                        self.repair("trailing_comma")
                    expecting_member = True
                    continue
                if not expecting_member:
                    self.repair("missing_comma")
                key = self.key()
                if self.peek() != ":":
                    raise _Bad(f"expected ':' after key {key!r}", self.pos)
                self.pos += 1
                try:
                    out[key] = self.value(depth + 1)
                except _EOF as eof:
                    if isinstance(eof.partial, dict):
                        out[key] = eof.partial  # members of a cut-off object are each complete
                    raise
                expecting_member = False
        except _EOF as eof:
            raise _EOF(out) from eof

    def key(self) -> str:
        c = self.peek()
        if c in "\"'":
            return self.string()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_-"):
            self.pos += 1
        if self.pos == start:
            raise _Bad(f"expected a key, found {c!r}", self.pos)
        if self.pos >= len(self.text):
            raise _EOF()
        self.repair("unquoted_keys")
        return self.text[start : self.pos]

    def array(self, depth: int) -> list[Any]:
        self.pos += 1
        out: list[Any] = []
        while True:
            c = self.peek()  # an array cut off is dropped whole: _EOF carries no partial list
            if c == "]":
                self.pos += 1
                return out
            if c == ",":
                self.pos += 1
                if self.peek() == "]":
                    self.repair("trailing_comma")
                continue
            out.append(self.value(depth + 1))

    def string(self) -> str:
        quote = self.text[self.pos]
        if quote == "'":
            self.repair("single_quotes")
        self.pos += 1
        parts: list[str] = []
        t = self.text
        while True:
            if self.pos >= len(t):
                raise _EOF()
            c = t[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(parts)
            if c == "\\":
                if self.pos + 1 >= len(t):
                    raise _EOF()
                esc = t[self.pos + 1]
                simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\"}
                if esc in simple:
                    parts.append(simple[esc])
                    self.pos += 2
                elif esc in "\"'":
                    parts.append(esc)
                    self.pos += 2
                elif esc == "u":
                    digits = t[self.pos + 2 : self.pos + 6]
                    if len(digits) < 4:
                        raise _EOF()
                    try:
                        parts.append(chr(int(digits, 16)))
                    except ValueError:
                        raise _Bad(f"bad escape \\u{digits}", self.pos) from None
                    self.pos += 6
                else:
                    parts.append(esc)
                    self.pos += 2
                continue
            parts.append(c)
            self.pos += 1

    def number(self) -> float | int:
        t = self.text
        start = self.pos
        while self.pos < len(t) and (t[self.pos].isdigit() or t[self.pos] in "+-.eE"):
            self.pos += 1
        if self.pos >= len(t):
            raise _EOF()  # "0.2" at the very end may be the start of "0.25": not trusted
        raw = t[start : self.pos]
        try:
            value = float(raw)
        except ValueError:
            raise _Bad(f"bad number {raw!r}", start) from None
        if raw.startswith("+") or raw.startswith(".") or raw.endswith("."):
            self.repair("loose_numbers")
        is_int = raw.lstrip("+-").isdigit()
        return int(raw) if is_int else value


def read_lenient(text: str, start: int) -> LenientResult:
    """Read the object that opens at ``text[start] == "{"``."""
    reader = _Reader(text, start)
    try:
        value = reader.obj(0)
    except _EOF as eof:
        partial = eof.partial if isinstance(eof.partial, dict) else {}
        return LenientResult(partial, False, len(text), reader.repairs)
    except _Bad as bad:
        return LenientResult(None, False, bad.pos, reader.repairs, f"{bad.message} at character {bad.pos}")
    except RecursionError:
        return LenientResult(None, False, start, reader.repairs, "nesting is too deep")
    return LenientResult(value, True, reader.pos, reader.repairs)
