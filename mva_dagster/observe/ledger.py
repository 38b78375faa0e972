"""The proxy's call ledger, joined to a session's calls by our ``x-mva-request-key``.

The proxy rewrites a response's ``model`` to the alias, so the model id the provider actually
returned (``gemini-2.5-flash-001``) exists only in the ledger the proxy-side callback writes
(``$MVA_HOME/proxy/<mode>/proxy_ledger.jsonl``). :func:`sync_session_ledger` copies the lines of
one session's calls into ``logs/proxy_ledger.jsonl``, so the session carries its own provenance
even after the proxy's ledger is rotated or the session folder is moved to another machine.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mva_dagster.llm import conversations
from mva_dagster.llm.archive import ArchiveEntry, SessionArchive
from mva_dagster.observe.files import append_line, iter_jsonl, ledger_copy_path
from mva_dagster.records import LLMAnswer
from mva_dagster.sessions.layout import SessionLayout

_KEY_IN_LINE = re.compile(rb'"request_key": "([0-9A-Za-z_-]+)"')


def ledger_candidates(mode: str | None) -> list[Path]:
    """Ledger files that may hold a session's calls: its mode's first, then the others."""
    from mva_dagster.proxy.config import LEDGER_ENV
    from mva_dagster.proxy.process import LEDGER_FILENAME, default_state_dir
    from mva_dagster.proxy.stack import MODES, state_dir

    ordered = [mode] if mode in MODES else []
    ordered += [m for m in MODES if m not in ordered]
    paths = [state_dir(m) / LEDGER_FILENAME for m in ordered]
    paths.append(default_state_dir() / LEDGER_FILENAME)  # a proxy started on the default state dir
    if os.environ.get(LEDGER_ENV):
        paths.append(Path(os.environ[LEDGER_ENV]))
    unique: list[Path] = []
    for path in paths:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return [p for p in unique if p.exists()]


def read_ledger(paths: Iterable[Path], keys: set[str]) -> list[dict[str, Any]]:
    """The ledger lines whose request key is in ``keys`` (keys are matched before JSON parsing)."""
    found: list[dict[str, Any]] = []
    for path in paths:
        try:
            found.extend(_matching_lines(path, keys))
        except OSError:
            continue  # unreadable (permissions, vanished): the others may still hold the calls
    return found


def _matching_lines(path: Path, keys: set[str]) -> list[dict[str, Any]]:
    found = []
    with open(path, "rb") as handle:
        for raw in handle:
            match = _KEY_IN_LINE.search(raw)
            if match is None or match.group(1).decode() not in keys or not raw.endswith(b"\n"):
                continue
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            item.setdefault("ledger_file", str(path))
            found.append(item)
    return found


def _line_id(item: dict[str, Any]) -> tuple[Any, ...]:
    return item.get("litellm_call_id"), item.get("status"), item.get("ts")


@dataclass
class SessionCalls:
    """What identifies a session's lines in a ledger shared by every session of a proxy.

    Identical requests made by two sessions share a request key, so a key alone is not enough:
    a line belongs to the session when its LiteLLM call id is one of the session's answers, or -
    for attempts the client never got an answer for (failures, answers recovered from the proxy's
    journal) - when its key is the session's and it was written after the session was created.
    """

    keys: set[str] = field(default_factory=set)
    call_ids: set[str] = field(default_factory=set)
    answered_keys: set[str] = field(default_factory=set)  # keys whose answer has a known call id
    since: float = 0.0  # epoch seconds: the session's creation

    def owns(self, line: dict[str, Any]) -> bool:
        if line.get("litellm_call_id") in self.call_ids:
            return True
        key = line.get("request_key")
        if key not in self.keys or float(line.get("ts") or 0.0) < self.since:
            return False
        # A failed attempt, or the success line of an answer the session holds without a call id.
        return line.get("status") != "success" or key not in self.answered_keys


def session_calls(layout: SessionLayout, entries: list[ArchiveEntry] | None = None) -> SessionCalls:
    """Keys and call ids of every call the session made or tried (archive and conversation log)."""
    entries = entries if entries is not None else SessionArchive(layout).entries()
    calls = SessionCalls(since=_created_at(layout))
    for entry in entries:
        calls.keys.add(entry.request.key())
        for answer in (entry.answer, *entry.answer.superseded):
            if answer.call_id:
                calls.call_ids.add(answer.call_id)
                calls.answered_keys.add(entry.request.key())
    calls.keys |= {str(c["request_key"]) for c in conversations.read_entries(layout) if c.get("request_key")}
    return calls


def _created_at(layout: SessionLayout) -> float:
    try:
        created = json.loads(layout.manifest.read_text(encoding="utf-8")).get("created_at")
        return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
    except (OSError, ValueError, TypeError):
        return 0.0


def sync_session_ledger(layout: SessionLayout, mode: str | None, *, wait_s: float = 0.0,
                        entries: list[ArchiveEntry] | None = None, calls: SessionCalls | None = None,
                        expected: set[str] | None = None) -> list[dict[str, Any]]:
    """Copy the session's new ledger lines into ``logs/``; return every line the copy holds.

    ``calls`` (see :class:`SessionCalls`) and ``expected`` (LiteLLM call ids that must have a
    success line) default to the whole archive; the analysis step passes just its batch's, so
    finishing a batch does not re-read a big session. The ledger line of the last call may land a
    moment after its answer (the proxy writes it in a callback), so ``wait_s`` > 0 polls until
    every expected call id has its success line.
    """
    if calls is None or expected is None:
        entries = entries if entries is not None else SessionArchive(layout).entries()
        calls = calls if calls is not None else session_calls(layout, entries)
        expected = expected if expected is not None else {
            a.call_id for e in entries for a in paid_answers(e) if a.call_id}
    copy = ledger_copy_path(layout)
    have = list(iter_jsonl(copy))
    seen = {_line_id(item) for item in have}
    deadline = time.monotonic() + wait_s
    while True:
        for item in read_ledger(ledger_candidates(mode), calls.keys) if calls.keys else []:
            if _line_id(item) not in seen and calls.owns(item):
                seen.add(_line_id(item))
                append_line(copy, item)
                have.append(item)
        answered = {i.get("litellm_call_id") for i in have if i.get("status") == "success"}
        if expected <= answered or time.monotonic() >= deadline:
            return have
        time.sleep(0.2)


def session_ledger(layout: SessionLayout) -> list[dict[str, Any]]:
    """The ledger lines copied into the session (what provenance and cost reconciliation read)."""
    return list(iter_jsonl(ledger_copy_path(layout)))


def success_by_call(lines: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Success lines indexed by LiteLLM call id and by request key (the last one wins)."""
    by_call: dict[str, dict[str, Any]] = {}
    by_key: dict[str, dict[str, Any]] = {}
    for item in lines:
        if item.get("status") != "success":
            continue
        if item.get("litellm_call_id"):
            by_call[str(item["litellm_call_id"])] = item
        if item.get("request_key"):
            by_key[str(item["request_key"])] = item
    return by_call, by_key


def paid_by_session(entry: ArchiveEntry) -> bool:
    """False for answers another session (or a legacy run) paid for and this one only copied."""
    return not ({"reused_from", "migrated_from"} & set(entry.provenance))


def paid_answers(entry: ArchiveEntry) -> list[LLMAnswer]:
    """The answers this session paid for in one archive entry: the answer and those a re-ask replaced."""
    return [entry.answer, *entry.answer.superseded] if paid_by_session(entry) else []


def ledger_line_for(entry: ArchiveEntry, by_call: dict[str, dict[str, Any]],
                    by_key: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The success line of one archived call: by its LiteLLM call id, else by our request key."""
    if entry.answer.call_id and entry.answer.call_id in by_call:
        return by_call[entry.answer.call_id]
    return by_key.get(entry.answer.request_key)
