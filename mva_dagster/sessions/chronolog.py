"""Append-only chronologs in the Discernus ProjectChronolog event format, signed and verifiable.

Each line is ``{timestamp, event, session_id, project, data, event_id, signature}``. The signature is
HMAC-SHA256 over the canonical JSON of the event without its signature (sorted keys, compact
separators) - the rule the Discernus MVA chronolog verifies with, so old and new files check alike.
The key comes from ``MVA_CHRONOLOG_KEY``. Without one, events are written unsigned
(``signature: null``); :func:`sign` refuses an empty or publicly known key, because a signature
anyone can forge is worse than none. Verification accepts any key (the Discernus file is signed
with ``default_dev_key``) and says when the key is a public one.

Lines are written through :mod:`mva_dagster.sessions.appendlog`: built and timestamped under the
file lock (so timestamps are in file order even with several writers), fsync'd before ``append``
returns, and a torn line left by a crash is set aside and recorded as ``TORN_LINE_SET_ASIDE``.
A session chronolog is mirrored, one plain line per event, into the session's ``logs/session.log``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mva_dagster.errors import MvaError
from mva_dagster.sessions.appendlog import PlainLog, TornTail, append_line, read_jsonl
from mva_dagster.sessions.crashpoints import torn_write
from mva_dagster.sessions.layout import SessionLayout

KEY_ENV = "MVA_CHRONOLOG_KEY"
# Keys known to be public; signing with them would make signatures meaningless.
KNOWN_DEFAULT_KEYS = frozenset({"default_dev_key", "changeme", "secret", "dev", "test"})
EVENT_FIELDS = ("timestamp", "event", "session_id", "project", "data", "event_id", "signature")


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _check_key(key: bytes | str | None) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    if not raw:
        raise MvaError("refusing to sign a chronolog event without a key",
                       hint=f"set {KEY_ENV} to a secret of your own, e.g. `openssl rand -hex 32`")
    if raw.decode(errors="replace") in KNOWN_DEFAULT_KEYS:
        raise MvaError(f"{KEY_ENV} is set to a publicly known default key; refusing to sign with it",
                       hint=f"set {KEY_ENV} to a secret of your own, e.g. `openssl rand -hex 32`")
    return raw


def signing_key() -> bytes | None:
    """The key to sign with, None when unset; a known default key is refused."""
    value = os.environ.get(KEY_ENV)
    return _check_key(value) if value else None


def signature_of(event: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the event without its signature: the one signing rule, for writing and checking."""
    body = {k: v for k, v in event.items() if k != "signature"}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def sign(event: dict[str, Any], key: bytes) -> str:
    """The signature for a new event; refuses an empty or publicly known key."""
    return signature_of(event, _check_key(key))


def verify_event(event: dict[str, Any], key: bytes) -> bool:
    signature = event.get("signature")
    return isinstance(signature, str) and hmac.compare_digest(signature, signature_of(event, key))


def _plain(event: str, data: dict[str, Any]) -> str:
    """One readable line for logs/session.log."""
    parts = [event]
    for name, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
        parts.append(f"{name}={text[:200]}")
    return " ".join(parts)


class Chronolog:
    """One chronolog file; safe to share between threads and processes."""

    def __init__(self, path: Path, *, project: str, session_id: str | None = None) -> None:
        self.path = path
        self.project = project
        self.session_id = session_id
        self._key = signing_key()
        layout = SessionLayout(path.parent)
        self._mirror = layout.run_log if path.name == layout.chronolog.name else None

    def append(self, event: str, data: dict[str, Any] | None = None, *,
               session_id: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {}

        def build() -> bytes:
            record.update({
                "timestamp": utc_now(),  # taken under the file lock: file order is time order
                "event": event,
                "session_id": session_id or self.session_id,
                "project": self.project,
                "data": data or {},
                "event_id": str(uuid.uuid4()),
            })
            record["signature"] = sign(record, self._key) if self._key else None
            return (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")

        torn = append_line(self.path, build, fsync=True, before_write=torn_write("chronolog.torn", f"chronolog.torn.{event}"))
        if self._mirror is not None:
            PlainLog.for_path(self._mirror).write(_plain(event, data or {}))
        if torn is not None:
            print(f"mva: {self.path} ended in an incomplete line (a crash mid-write); it was moved to "
                  f"{torn.set_aside_to}", file=sys.stderr, flush=True)
            self.append("TORN_LINE_SET_ASIDE", {"offset": torn.offset, "bytes": len(torn.fragment),
                                                "set_aside_to": torn.set_aside_to.name})
        return record


def report_torn_tail(chronolog: Chronolog | None, torn: TornTail) -> None:
    """Say that a torn last line of another session file (e.g. the cost ledger) was set aside:
    on stderr, and as ``TORN_LINE_SET_ASIDE`` (with ``file``) in ``chronolog`` if there is one."""
    print(f"mva: {torn.path} ended in an incomplete line (a crash mid-write); it was moved to "
          f"{torn.set_aside_to}", file=sys.stderr, flush=True)
    if chronolog is not None:
        chronolog.append("TORN_LINE_SET_ASIDE", {"file": torn.path.name, "offset": torn.offset,
                                                 "bytes": len(torn.fragment), "set_aside_to": torn.set_aside_to.name})


def read_events(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All complete events, and the lines that could not be read (e.g. a torn last line)."""
    result = read_jsonl(path)
    return result.records, [bad.text for bad in result.bad]


# ------------------------------------------------------------------ verification


@dataclass
class VerifyReport:
    """What `mva chronolog verify` found in one file."""

    path: Path
    events: int = 0
    signed_ok: int = 0
    unsigned: int = 0
    bad_signatures: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    torn_last_line: str | None = None
    set_aside: int = 0
    public_key: bool = False
    key_given: bool = True

    def ok(self, *, allow_unsigned: bool = False) -> bool:
        return (not self.bad_signatures and not self.out_of_order and not self.duplicate_ids
                and not self.malformed and (allow_unsigned or self.unsigned == 0)
                and (self.key_given or self.signed_ok == 0))

    def summary(self) -> list[str]:
        lines = [f"{self.path}: {self.events} events, {self.signed_ok} signatures valid, "
                 f"{len(self.bad_signatures)} invalid, {self.unsigned} unsigned"]
        if not self.key_given:
            lines.append(f"  no key: set {KEY_ENV} (or pass --key-env) to check signatures")
        if self.public_key:
            lines.append("  note: the key is a publicly known default; valid signatures show the file is "
                         "intact, not who wrote it")
        for label, items in (("invalid signature", self.bad_signatures), ("out of order", self.out_of_order),
                             ("duplicate event_id", self.duplicate_ids), ("malformed", self.malformed)):
            for item in items[:20]:
                lines.append(f"  {label}: {item}")
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more {label} lines")
        if self.torn_last_line is not None:
            lines.append(f"  torn last line (a crash mid-write, set aside by the next writer): "
                         f"{self.torn_last_line[:120]!r}")
        if self.set_aside:
            lines.append(f"  {self.set_aside} torn fragment(s) were set aside earlier in "
                         f"{self.path.name}.torn")
        return lines


def _parse_time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def verify_chronolog(path: Path, key: bytes | None) -> VerifyReport:
    """Check every event's signature (when a key is given), field set, order and uniqueness."""
    report = VerifyReport(path=path, key_given=bool(key),
                          public_key=bool(key) and (key or b"").decode(errors="replace") in KNOWN_DEFAULT_KEYS)
    read = read_jsonl(path)
    report.set_aside = len(read.set_aside)
    for bad in read.bad:
        if bad.last and bad.reason.startswith("torn"):
            report.torn_last_line = bad.text
        else:
            report.malformed.append(f"line {bad.lineno}: {bad.reason}")
    seen: set[str] = set()
    previous: datetime | None = None
    for number, event in enumerate(read.records, start=1):
        report.events += 1
        label = f"event {number} ({event.get('event')}, {event.get('event_id')})"
        missing = [name for name in EVENT_FIELDS if name not in event]
        if missing:
            report.malformed.append(f"{label}: missing {', '.join(missing)}")
        if event.get("signature") is None:
            report.unsigned += 1
        elif key:
            if verify_event(event, key):
                report.signed_ok += 1
            else:
                report.bad_signatures.append(label)
        when = _parse_time(event.get("timestamp"))
        if when is None:
            report.malformed.append(f"{label}: unreadable timestamp {event.get('timestamp')!r}")
        else:
            if previous is not None and when < previous:
                report.out_of_order.append(f"{label}: {event.get('timestamp')} is before the previous event")
            previous = when
        event_id = str(event.get("event_id"))
        if event_id in seen:
            report.duplicate_ids.append(label)
        seen.add(event_id)
    return report
