"""The conversation log across sessions: a DuckDB index of every ``logs/conversations.jsonl``.

Each session keeps its own JSON-lines log (the record of truth, readable without us). Searching
100,000 calls by re-reading JSON each time is too slow, so ``mva log`` keeps a DuckDB file under
``$MVA_HOME/conversation_index/`` that it brings up to date before every query, reading only the
bytes appended since last time. Prompts are stored once per distinct prompt (a document's prompt
is the same for every model and run), which keeps the index small and text search fast.

The view ``conversations`` joins calls with their prompts; open the file with DuckDB to query it
directly (``SELECT model, count(*), sum(cost_usd) FROM conversations GROUP BY model``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from mva_dagster.errors import MvaError
from mva_dagster.llm.conversations import prompt_sha256
from mva_dagster.services import mva_home

INDEX_VERSION = 3
_CALL_COLUMNS = {
    "file": "VARCHAR", "line_offset": "BIGINT", "call_id": "VARCHAR", "request_key": "VARCHAR",
    "ts": "VARCHAR", "project": "VARCHAR", "experiment": "VARCHAR", "session_id": "VARCHAR",
    "session_dir": "VARCHAR", "replay": "BOOLEAN", "document_id": "VARCHAR", "purpose": "VARCHAR",
    "model": "VARCHAR", "replicate": "INTEGER", "status": "VARCHAR", "from_archive": "BOOLEAN",
    "provider_model": "VARCHAR", "deployment": "VARCHAR", "system_fingerprint": "VARCHAR",
    "params": "VARCHAR", "prompt_sha": "VARCHAR", "response": "VARCHAR", "finish_reason": "VARCHAR",
    "prompt_tokens": "BIGINT", "completion_tokens": "BIGINT", "cost_usd": "DOUBLE", "latency_s": "DOUBLE",
    "attempts": "INTEGER", "proxy_retries": "INTEGER", "error_class": "VARCHAR", "error": "VARCHAR",
    "http_status": "INTEGER",
}  # fmt: skip
STATUSES = ("ok", "empty", "failed", "superseded")


def default_index_path(roots: list[Path]) -> Path:
    """One index per set of project roots, under ``$MVA_HOME`` (git-ignored, rebuildable)."""
    digest = hashlib.sha256("\n".join(sorted(str(r.resolve()) for r in roots)).encode()).hexdigest()[:12]
    return mva_home() / "conversation_index" / f"conversations_{digest}.duckdb"


def conversation_files(roots: list[Path]) -> list[Path]:
    """Every session's conversation log (and its replays') under the project roots."""
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found += root.glob("*/experiments/*/sessions/*/logs/conversations.jsonl")
            found += root.glob("*/experiments/*/sessions/*/replays/*/logs/conversations.jsonl")
        if (root / "session.json").exists():  # a single session given directly
            found += [root / "logs" / "conversations.jsonl", *root.glob("replays/*/logs/conversations.jsonl")]
    return sorted({p.resolve() for p in found if p.exists()})


def _where(path: Path) -> dict[str, Any]:
    """project / experiment / session of a log, from the tree's fixed shape."""
    parts = path.parts
    replay = "replays" in parts
    session_at = parts.index("replays") - 1 if replay else len(parts) - 3
    session_dir = Path(*parts[: session_at + 1])
    experiment_dir = session_dir.parent.parent
    return {"project": experiment_dir.parent.parent.name, "experiment": experiment_dir.name,
            "session_dir": str(session_dir), "replay": replay}


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _prompt_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    return "\n\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


@dataclass
class RefreshStats:
    files: int = 0
    new_calls: int = 0
    seconds: float = 0.0


class LogIndex:
    """An open index; use as a context manager. Every query first calls :meth:`refresh`."""

    def __init__(self, roots: list[Path], path: Path | None = None) -> None:
        self.roots = [r.resolve() for r in roots]
        self.path = path or default_index_path(self.roots)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = self._connect()
        self._schema()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if time.monotonic() > deadline:
                    raise MvaError(f"the conversation index {self.path} is locked by another process: {exc}",
                                   hint="wait for the other `mva log` to finish, or delete the file "
                                        "(it is rebuilt from the sessions' logs)") from exc
                time.sleep(0.2)

    def __enter__(self) -> LogIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def _schema(self) -> None:
        con = self.con
        con.execute("CREATE TABLE IF NOT EXISTS meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
        row = con.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is not None and row[0] != str(INDEX_VERSION):
            for name in ("conversations",):
                con.execute(f"DROP VIEW IF EXISTS {name}")
            for name in ("calls", "prompts", "files"):
                con.execute(f"DROP TABLE IF EXISTS {name}")
        con.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", [str(INDEX_VERSION)])
        con.execute("CREATE TABLE IF NOT EXISTS files(path VARCHAR PRIMARY KEY, offset_bytes BIGINT)")
        # search_text columns hold lower-cased copies: contains() on them is ~3x faster than ILIKE.
        # The prompts table keeps them under search_text too (the messages JSON is the original).
        con.execute("CREATE TABLE IF NOT EXISTS prompts(prompt_sha VARCHAR PRIMARY KEY, messages VARCHAR, "
                    "search_text VARCHAR)")
        columns = ", ".join(f"{name} {kind}" for name, kind in _CALL_COLUMNS.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS calls({columns}, search_text VARCHAR)")
        con.execute("CREATE OR REPLACE VIEW conversations AS SELECT c.* EXCLUDE (search_text), p.messages "
                    "FROM calls c LEFT JOIN prompts p USING (prompt_sha)")

    # ------------------------------------------------------------------ ingest

    def refresh(self) -> RefreshStats:
        """Read what was appended to every log since the last refresh (a shrunk log is re-read)."""
        started = time.monotonic()
        stats = RefreshStats()
        known = dict(self.con.execute("SELECT path, offset_bytes FROM files").fetchall())
        for path in conversation_files(self.roots):
            stats.files += 1
            size = path.stat().st_size
            offset = int(known.get(str(path), 0))
            if size < offset:  # replaced or truncated: forget what we had
                self.con.execute("DELETE FROM calls WHERE file = ?", [str(path)])
                offset = 0
            if size == offset:
                continue
            stats.new_calls += self._ingest(path, offset)
        stats.seconds = time.monotonic() - started
        return stats

    def _ingest(self, path: Path, offset: int) -> int:
        where = _where(path)
        rows: list[dict[str, Any]] = []
        prompts: dict[str, tuple[str, str]] = {}
        position = offset
        with open(path, "rb") as handle:
            handle.seek(offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # being written: next refresh
                line_at = position
                position += len(raw)
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                messages = entry.get("messages")
                sha = entry.get("prompt_sha256") or (prompt_sha256(messages) if isinstance(messages, list) else None)
                if sha and sha not in prompts:
                    prompts[sha] = (json.dumps(messages, ensure_ascii=False), _prompt_text(messages).lower())
                rows.append({
                    "file": str(path), "line_offset": line_at, "call_id": entry.get("call_id"),
                    "request_key": entry.get("request_key"), "ts": entry.get("ts"), **where,
                    "session_id": entry.get("session_id"), "document_id": entry.get("document_id"),
                    "purpose": entry.get("purpose"), "model": entry.get("model"),
                    "replicate": _int(entry.get("replicate")), "status": entry.get("status"),
                    "from_archive": bool(entry.get("from_archive")), "provider_model": entry.get("provider_model"),
                    "deployment": entry.get("deployment"), "system_fingerprint": entry.get("system_fingerprint"),
                    "params": json.dumps(entry.get("params"), sort_keys=True), "prompt_sha": sha,
                    "response": entry.get("response"), "finish_reason": entry.get("finish_reason"),
                    "prompt_tokens": _int(entry.get("prompt_tokens")),
                    "completion_tokens": _int(entry.get("completion_tokens")),
                    "cost_usd": _float(entry.get("cost_usd")), "latency_s": _float(entry.get("latency_s")),
                    "attempts": _int(entry.get("attempts")), "proxy_retries": _int(entry.get("proxy_retries")),
                    "error_class": entry.get("error_class"), "error": entry.get("error"),
                    "http_status": _int(entry.get("http_status")),
                    "search_text": "\n".join(str(entry.get(k)) for k in ("response", "error") if entry.get(k)).lower(),
                })
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            if prompts:
                frame = pd.DataFrame([(k, m, t) for k, (m, t) in prompts.items()],
                                     columns=["prompt_sha", "messages", "prompt_text"])
                con.register("new_prompts", frame)
                con.execute("INSERT INTO prompts SELECT prompt_sha, messages, prompt_text FROM new_prompts n "
                            "WHERE NOT EXISTS (SELECT 1 FROM prompts p WHERE p.prompt_sha = n.prompt_sha)")
                con.unregister("new_prompts")
            if rows:
                frame = pd.DataFrame(rows, columns=[*_CALL_COLUMNS, "search_text"])
                con.register("new_calls", frame)
                casts = ", ".join(f"CAST({name} AS {kind})" for name, kind in _CALL_COLUMNS.items())
                con.execute(f"INSERT INTO calls SELECT {casts}, search_text FROM new_calls")
                con.unregister("new_calls")
            con.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", [str(path), position])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return len(rows)

    # ------------------------------------------------------------------ queries

    def search(self, text: str | None = None, *, model: str | None = None, document: str | None = None,
               status: str | None = None, session: str | None = None, include_archive_hits: bool = False,
               limit: int = 20) -> list[dict[str, Any]]:
        """Calls whose response, prompt or error contains ``text`` (case-insensitive), newest first."""
        self.refresh()
        clauses: list[str] = []
        args: list[Any] = []
        if text:
            clauses.append("(contains(c.search_text, ?) OR c.prompt_sha IN "
                           "(SELECT prompt_sha FROM prompts WHERE contains(search_text, ?)))")
            args += [text.lower(), text.lower()]  # lowered as the stored copies were: by Python
        if model:
            clauses.append("(lower(c.model) = lower(?) OR lower(c.provider_model) = lower(?))")
            args += [model, model]
        if document:
            clauses.append("c.document_id LIKE ? ESCAPE '\\'")
            args.append(document.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%"))
        if status:
            if status not in STATUSES:
                raise MvaError(f"unknown status {status!r}", hint=f"use one of: {', '.join(STATUSES)}")
            clauses.append("c.status = ?")
            args.append(status)
        if session:
            clauses.append("(c.session_id = ? OR c.session_dir = ?)")
            args += [session, str(Path(session).resolve())]
        if not include_archive_hits:
            clauses.append("NOT c.from_archive")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        # Two steps: rank only row ids (cheap), then fetch the few wide rows wanted; sorting whole
        # rows with their answers and prompts took most of the time on 100,000 calls.
        ranked = [r[0] for r in self.con.execute(
            f"SELECT c.rowid FROM calls c {where} ORDER BY c.ts DESC, c.line_offset DESC LIMIT ?",
            [*args, int(limit)]).fetchall()]
        if not ranked:
            return []
        rows = self._rows("SELECT c.rowid AS row_id, c.* EXCLUDE (search_text), p.messages FROM calls c "
                          "LEFT JOIN prompts p USING (prompt_sha) WHERE c.rowid IN "
                          f"({', '.join('?' for _ in ranked)})", ranked)
        order = {row_id: i for i, row_id in enumerate(ranked)}
        rows.sort(key=lambda row: order[row.pop("row_id")])
        return rows

    def find(self, call_id: str) -> list[dict[str, Any]]:
        """Entries whose call id or request key equals or starts with ``call_id`` (original call first)."""
        self.refresh()
        if len(call_id) < 6:
            raise MvaError(f"{call_id!r} is too short to identify a call", hint="give at least 6 characters")
        prefix = call_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = ("SELECT c.* EXCLUDE (search_text), p.messages FROM calls c LEFT JOIN prompts p USING (prompt_sha) "
                 "WHERE c.call_id LIKE ? ESCAPE '\\' OR c.request_key LIKE ? ESCAPE '\\' "
                 "ORDER BY c.from_archive, c.ts")
        return self._rows(query, [prefix, prefix])

    def count(self) -> int:
        row = self.con.execute("SELECT count(*) FROM calls").fetchone()
        return int(row[0]) if row else 0

    def _rows(self, query: str, args: list[Any]) -> list[dict[str, Any]]:
        cursor = self.con.execute(query, args)
        names = [d[0] for d in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def snippet(row: dict[str, Any], text: str | None, width: int = 70) -> str:
    """A one-line excerpt around the first match (for the result list only; `show` prints all)."""
    for source in ("response", "error", "prompt"):
        value = row.get(source) if source != "prompt" else _prompt_text(json.loads(row.get("messages") or "null"))
        if not isinstance(value, str) or not value:
            continue
        flat = " ".join(value.split())
        if not text:
            return flat[: width * 2] + ("..." if len(flat) > width * 2 else "")
        at = flat.lower().find(text.lower())
        if at >= 0:
            start = max(0, at - width)
            end = min(len(flat), at + len(text) + width)
            label = "" if source == "response" else f"[{source}] "
            return label + ("..." if start else "") + flat[start:end] + ("..." if end < len(flat) else "")
    return ""
