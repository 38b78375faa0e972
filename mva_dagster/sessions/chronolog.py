"""Append-only chronologs in the Discernus ProjectChronolog event format.

Each line is ``{timestamp, event, session_id, project, data, event_id, signature}``. The signature is
HMAC-SHA256 over the canonical JSON of the event without its signature (sorted keys, compact
separators) - the form the Discernus MVA chronolog verifies with. The key comes from
``MVA_CHRONOLOG_KEY``; without one, events are written unsigned (``signature: null``), never signed
with a default key. Every line is flushed and fsync'd before ``append`` returns.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mva_dagster.errors import MvaError

KEY_ENV = "MVA_CHRONOLOG_KEY"
# Keys known to be public; signing with them would make signatures meaningless.
KNOWN_DEFAULT_KEYS = frozenset({"default_dev_key", "changeme", "secret", "dev", "test"})


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def signing_key() -> bytes | None:
    value = os.environ.get(KEY_ENV)
    if not value:
        return None
    if value in KNOWN_DEFAULT_KEYS:
        raise MvaError(f"{KEY_ENV} is set to a publicly known default key; refusing to sign with it",
                       hint=f"set {KEY_ENV} to a secret of your own, e.g. `openssl rand -hex 32`")
    return value.encode()


def sign(event: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in event.items() if k != "signature"}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


class Chronolog:
    """One chronolog file; safe to share between threads of one process."""

    _locks: dict[Path, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, path: Path, *, project: str, session_id: str | None = None) -> None:
        self.path = path
        self.project = project
        self.session_id = session_id
        self._key = signing_key()
        with self._locks_guard:
            self._lock = self._locks.setdefault(path.resolve(), threading.Lock())

    def append(self, event: str, data: dict[str, Any] | None = None, *,
               session_id: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "timestamp": utc_now(),
            "event": event,
            "session_id": session_id or self.session_id,
            "project": self.project,
            "data": data or {},
            "event_id": str(uuid.uuid4()),
        }
        record["signature"] = sign(record, self._key) if self._key else None
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        return record


def read_events(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All complete events, and the lines that could not be read (e.g. a torn last line)."""
    events: list[dict[str, Any]] = []
    bad: list[str] = []
    if not path.exists():
        return events, bad
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                bad.append(line.rstrip("\n"))
    return events, bad
