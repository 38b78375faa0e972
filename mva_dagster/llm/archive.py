"""The LLM archive: the source of truth for every paid answer.

One JSON file per answered call, ``{request, answer[, provenance]}``, written atomically (temp file,
fsync, rename, fsync of the folder) *before* the answer is handed to anything else. This is the only
module that writes the archive. A request is looked up by its key - the hash of the resolved request
(model alias, messages, every generation parameter, response schema, replicate) - in this order:

1. this session's archive;
2. the archives of the sessions this one is linked from (``mva resume --allow-changes``), same
   provider mode only - a simulated answer never stands in for a real one;
3. the proxy's answer journal (``proxy/journal.py``): an answer the provider served while the
   client died; if the proxy still has the call in flight, the lookup waits for it;
4. in a migrated session, the legacy answer recorded for the same (document, model, run).

Answers found in 2 or 3 are copied into this session's archive with their provenance, so a session
is always self-contained. Only a miss on all four is sent (and paid for).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mva_dagster.errors import ArchiveError, SessionError
from mva_dagster.fsutil import atomic_write_json, sha256_file
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.crashpoints import crash_point
from mva_dagster.sessions.layout import SessionLayout

_ENTRY_NAME = re.compile(r"^(?P<stem>.+)__(?P<key16>[0-9a-f]{16})\.json$")


class ArchiveEntry:
    """A request and its answer as stored, and where the answer came from if not from a call."""

    def __init__(self, path: Path, request: LLMRequest, answer: LLMAnswer,
                 provenance: dict[str, Any] | None = None) -> None:
        self.path = path
        self.request = request
        self.answer = answer
        self.provenance = provenance or {}

    @property
    def migrated(self) -> bool:
        return "migrated_from" in self.provenance


@dataclass
class ArchiveProblem:
    """One integrity finding: the file, what is wrong, and whether it is only crash debris."""

    path: Path
    problem: str
    debris: bool = False


@dataclass
class _Session:
    layout: SessionLayout
    provider: str | None
    index: dict[str, list[Path]] = field(default_factory=dict)


class SessionArchive:
    def __init__(self, layout: SessionLayout) -> None:
        self.layout = layout
        self.root = layout.llm_archive
        self._provider: str | None = None
        self._linked: list[_Session] | None = None
        self._migrated: dict[str, list[Path]] | None = None

    # -------------------------------------------------------------- where answers can come from

    @property
    def provider(self) -> str | None:
        if self._provider is None:
            try:
                raw = json.loads(self.layout.manifest.read_text(encoding="utf-8"))
                self._provider = str(raw.get("provider") or "")
            except (OSError, ValueError):
                self._provider = ""
        return self._provider or None

    def journal_dir(self) -> Path | None:
        """The answer journal of the proxy this session's provider mode uses."""
        if not self.provider:
            return None
        from mva_dagster.proxy.journal import journal_dir
        from mva_dagster.proxy.stack import state_dir

        return journal_dir(state_dir(self.provider))

    def linked(self) -> list[_Session]:
        if self._linked is None:
            from mva_dagster.sessions.manager import linked_ancestors, load_manifest

            sessions = []
            for parent in linked_ancestors(self.layout):
                try:
                    provider: str | None = load_manifest(parent).provider
                except SessionError:
                    continue
                if provider == self.provider:
                    sessions.append(_Session(parent, provider, _index(parent.llm_archive)))
            self._linked = sessions
        return self._linked

    def path_for(self, request: LLMRequest) -> Path:
        return self.layout.archive_path(request.document_id, request.model, request.replicate,
                                        request.key())

    # -------------------------------------------------------------- lookup and store

    def lookup(self, request: LLMRequest, *, wait_in_flight: bool = True) -> LLMAnswer | None:
        """The archived answer to exactly this request (see the module docstring), or None."""
        key = request.key()
        path = self.path_for(request)
        if path.exists():
            entry = read_entry(path)
            if entry.answer.request_key != key:
                raise ArchiveError(f"{path} holds an answer to a different request (key mismatch)",
                                   hint="the file was edited or renamed by hand; move it aside and resume")
            self._forget_journaled(key)
            return entry.answer
        return (self._from_linked(request, key) or self._from_journal(request, key, wait_in_flight)
                or self._from_migrated(request))

    def answered(self, request: LLMRequest) -> str | None:
        """Without side effects: 'archive' or 'migrated' if this session holds an answer, else None."""
        if self.path_for(request).exists():
            return "archive"
        if self.layout.legacy.is_dir() and self._from_migrated(request) is not None:
            return "migrated"
        return None

    def recoverable(self, request: LLMRequest) -> str | None:
        """Where a missing answer would come from at $0 ('linked session', 'proxy journal'), if anywhere."""
        key = request.key()
        if any(_find_key(s.index, key) for s in self.linked()):
            return "linked session"
        journal = self.journal_dir()
        if journal is not None and (journal / f"{key}.json").exists():
            return "proxy journal"
        return None

    def store(self, request: LLMRequest, answer: LLMAnswer, *,
              provenance: dict[str, Any] | None = None) -> Path:
        if answer.request_key != request.key():
            raise ArchiveError("refusing to archive an answer under another request's key")
        crash_point("archive.before_store")
        path = self.path_for(request)
        value: dict[str, Any] = {"request": request.model_dump(mode="json"),
                                 "answer": answer.model_dump(mode="json")}
        if provenance:
            value["provenance"] = provenance
        atomic_write_json(path, value)
        crash_point("archive.after_store")
        self._forget_journaled(answer.request_key)
        return path

    def store_migrated(self, request: LLMRequest, answer: LLMAnswer, provenance: dict[str, Any]) -> Path:
        """Archive a legacy answer; it answers its (document, model, run) whatever today's prompt."""
        if "migrated_from" not in provenance:
            raise ArchiveError("a migrated entry must say where it was migrated from")
        return self.store(request, answer, provenance=provenance)

    def _forget_journaled(self, key: str) -> None:
        journal = self.journal_dir()
        if journal is not None:
            from mva_dagster.proxy.journal import discard

            discard(journal, key)

    def _from_linked(self, request: LLMRequest, key: str) -> LLMAnswer | None:
        for session in self.linked():
            for path in _find_key(session.index, key):
                entry = read_entry(path)
                if entry.answer.request_key == key and entry.request.key() == key:
                    self.store(request, entry.answer, provenance={
                        "reused_from": {"session_id": session.layout.session_id, "file": str(path),
                                        "sha256": sha256_file(path)}})
                    return entry.answer
        return None

    def _from_journal(self, request: LLMRequest, key: str, wait: bool) -> LLMAnswer | None:
        journal = self.journal_dir()
        if journal is None:
            return None
        from mva_dagster.proxy.journal import recover

        entry = recover(journal, key, wait=wait)
        if entry is None:
            return None
        answer = answer_from_journal(request, entry)
        self.store(request, answer, provenance={"recovered_from": {
            "proxy_journal": str(journal / f"{key}.json"), "proxy_pid": entry.get("proxy_pid"),
            "why": "the provider answered while the client was not there to archive it"}})
        return answer

    def _from_migrated(self, request: LLMRequest) -> LLMAnswer | None:
        if self._migrated is None:
            self._migrated = {}
            if (self.layout.legacy).is_dir():  # only migrated sessions have legacy answers
                for path in sorted(self.root.glob("*.json")):
                    match = _ENTRY_NAME.match(path.name)
                    if match and _has_provenance(path, "migrated_from"):
                        self._migrated.setdefault(match.group("stem"), []).append(path)
        if request.purpose != "analysis":  # legacy sessions hold analysis answers only
            return None
        stem = self.layout.call_stem(request.document_id, request.model, request.replicate)
        for path in self._migrated.get(stem, []):
            entry = read_entry(path)
            if entry.migrated and entry.request.purpose == "analysis" and entry.answer.raw_text is not None:
                return entry.answer
        return None

    # -------------------------------------------------------------- reading

    def iter_entries(self) -> Iterator[ArchiveEntry]:
        """Every entry, one at a time in file-name order: each holds its whole request (the
        document's text included), so a 10,000-document session's list would be hundreds of MB."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*.json")):
            if not path.name.startswith("."):
                yield read_entry(path)

    def entries(self) -> list[ArchiveEntry]:
        return list(self.iter_entries())

    def find(self, document_id: str, model: str, replicate: int) -> ArchiveEntry | None:
        """The archived call for (document, model, replicate), whatever its key."""
        stem = self.layout.call_stem(document_id, model, replicate)
        matches = sorted(self.root.glob(f"{stem}__*.json"))
        if not matches:
            return None
        # Several keys for one call happen only if generation settings changed; the newest wins.
        return read_entry(max(matches, key=lambda p: p.stat().st_mtime))

    def keys(self) -> set[str]:
        """The request key of every archived answer (crash tests compare the provider's ledger to it)."""
        return {entry.answer.request_key for entry in self.iter_entries()}

    # -------------------------------------------------------------- integrity

    def check(self) -> list[ArchiveProblem]:
        """Every entry readable, its key the hash of its stored request, its file name its own."""
        problems: list[ArchiveProblem] = []
        if not self.root.is_dir():
            return problems
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                problems.append(ArchiveProblem(path, "temporary file left by a crash mid-write (the "
                                                     "answer was not archived yet; safe to delete)", True))
                continue
            if path.is_dir() or path.suffix != ".json":
                problems.append(ArchiveProblem(path, "not an archive entry"))
                continue
            try:
                entry = read_entry(path)
            except ArchiveError as exc:
                problems.append(ArchiveProblem(path, exc.message))
                continue
            computed = entry.request.key()
            if entry.answer.request_key != computed:
                problems.append(ArchiveProblem(path, f"answer's request_key {entry.answer.request_key[:16]} is "
                                                     f"not the hash of the stored request ({computed[:16]})"))
                continue
            expected = self.layout.archive_path(entry.request.document_id, entry.request.model,
                                                entry.request.replicate, computed).name
            if path.name != expected:
                problems.append(ArchiveProblem(path, f"file name does not match its request (expected {expected})"))
            source = entry.provenance.get("migrated_from")
            if isinstance(source, dict) and source.get("copy") and source.get("sha256"):
                copy = self.layout.root / str(source["copy"])
                if not copy.exists() or sha256_file(copy) != source["sha256"]:
                    problems.append(ArchiveProblem(path, f"its legacy source {copy} is missing or changed"))
        return problems

    def remove_debris(self) -> list[Path]:
        """Delete temporary files a crash left behind (never an entry)."""
        removed = []
        for problem in self.check():
            if problem.debris:
                problem.path.unlink(missing_ok=True)
                removed.append(problem.path)
        return removed


def answer_from_journal(request: LLMRequest, entry: dict[str, Any]) -> LLMAnswer:
    """The LLMAnswer the gateway would have built from the completion the proxy journaled."""
    from datetime import UTC, datetime

    body = entry.get("response") or {}
    meta = entry.get("meta") or {}
    try:
        choice = body["choices"][0]
        content = (choice.get("message") or {}).get("content")
    except (KeyError, IndexError, TypeError) as exc:
        raise ArchiveError(f"the proxy journal's answer for {request.key()[:16]} is unreadable: {exc}") from exc
    usage = body.get("usage") or {}
    when = datetime.fromtimestamp(float(entry.get("journaled_at") or 0), UTC).isoformat().replace("+00:00", "Z")
    cost = meta.get("response_cost")
    headers = {"x-mva-recovered-from": "proxy-answer-journal"}
    if body.get("model"):
        headers["x-mva-provider-reported-model"] = str(body["model"])
    if meta.get("model_id"):
        headers["x-litellm-model-id"] = str(meta["model_id"])
    headers.update({k: str(v) for k, v in (meta.get("provider_headers") or {}).items()})
    return LLMAnswer(
        request_key=request.key(),
        raw_text=content if isinstance(content, str) else None,
        ok=isinstance(content, str) and bool(content.strip()),
        model_alias=request.model,
        provider_model=request.model,  # what the proxy tells a client (it rewrites `model` to the alias)
        system_fingerprint=body.get("system_fingerprint"),
        finish_reason=choice.get("finish_reason"),
        call_id=meta.get("litellm_call_id"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        cost_usd=float(cost) if cost not in (None, "") else None,
        latency_s=None,
        attempts=1,
        started_at=when,
        finished_at=when,
        response_headers=headers,
    )


def _index(root: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    if root.is_dir():
        for name in os.listdir(root):
            match = _ENTRY_NAME.match(name)
            if match:
                index.setdefault(match.group("key16"), []).append(root / name)
    return index


def _find_key(index: dict[str, list[Path]], key: str) -> list[Path]:
    return index.get(key[:16], [])


def _has_provenance(path: Path, name: str) -> bool:
    try:
        return name in (json.loads(path.read_text(encoding="utf-8")).get("provenance") or {})
    except (OSError, ValueError, AttributeError):
        return False


def read_entry(path: Path) -> ArchiveEntry:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ArchiveEntry(path, LLMRequest.model_validate(raw["request"]),
                            LLMAnswer.model_validate(raw["answer"]), raw.get("provenance"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"archive entry {path} is unreadable: {exc}") from exc
