"""Reading a session's own files safely while another process is still appending to them.

JSON-lines logs are read up to their last complete line (a line being written is not an error),
and :class:`JsonlTail` remembers where it stopped so a live view re-reads only what is new.
Paths of files that only the observe package writes are defined here; everything else comes
from :class:`~mva_dagster.sessions.layout.SessionLayout`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mva_dagster.sessions.layout import SessionLayout


def live_records_path(layout: SessionLayout) -> Path:
    """One line per landed answer, parsed, with the alerts it raised (what `mva watch` shows)."""
    return layout.logs / "live_records.jsonl"


def ledger_copy_path(layout: SessionLayout) -> Path:
    """The proxy ledger lines of this session's calls, copied so the session is self-contained."""
    return layout.logs / "proxy_ledger.jsonl"


def proxy_info_path(layout: SessionLayout) -> Path:
    """Which proxy (URL, config hash, LiteLLM version) served the session."""
    return layout.logs / "proxy.json"


def proxy_config_copy_path(layout: SessionLayout, config_hash: str) -> Path:
    return layout.logs / f"proxy_config_{config_hash[:12]}.yaml"


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete JSON object line; a torn or foreign line is skipped, never fatal."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # being written right now
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item


def append_line(path: Path, item: dict[str, Any] | str, *, fsync: bool = False) -> None:
    """Append one line under the session files' lock (a torn tail left by a crash is set aside)."""
    from mva_dagster.sessions.appendlog import append_line as locked_append_line

    line = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str)
    locked_append_line(path, line.encode("utf-8"), fsync=fsync)


class JsonlTail:
    """Incremental reader of a growing JSON-lines file: each :meth:`read` returns the new lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # replaced or truncated: start again
            self.offset = 0
        items: list[dict[str, Any]] = []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                self.offset += len(raw)
                try:
                    item = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(item, dict):
                    items.append(item)
        return items
