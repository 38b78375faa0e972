"""The LLM archive: the source of truth for every paid answer.

One JSON file per answered call, ``{request, answer}``, written atomically (temp file, fsync,
rename, fsync of the folder) *before* the answer is handed to anything else. A request whose key is
already archived is answered from here and never sent again. This is the only module that writes
the archive.
"""

from __future__ import annotations

import json
from pathlib import Path

from mva_dagster.errors import ArchiveError
from mva_dagster.fsutil import atomic_write_json
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.layout import SessionLayout


class ArchiveEntry:
    """A request and its answer as stored."""

    def __init__(self, path: Path, request: LLMRequest, answer: LLMAnswer) -> None:
        self.path = path
        self.request = request
        self.answer = answer


class SessionArchive:
    def __init__(self, layout: SessionLayout) -> None:
        self.layout = layout
        self.root = layout.llm_archive

    def path_for(self, request: LLMRequest) -> Path:
        return self.layout.archive_path(request.document_id, request.model, request.replicate,
                                        request.key())

    def lookup(self, request: LLMRequest) -> LLMAnswer | None:
        """The archived answer to exactly this request, or None."""
        path = self.path_for(request)
        if not path.exists():
            return None
        entry = read_entry(path)
        if entry.answer.request_key != request.key():
            raise ArchiveError(f"{path} holds an answer to a different request (key mismatch)",
                               hint="the file was edited or renamed by hand; move it aside and resume")
        return entry.answer

    def store(self, request: LLMRequest, answer: LLMAnswer) -> Path:
        if answer.request_key != request.key():
            raise ArchiveError("refusing to archive an answer under another request's key")
        path = self.path_for(request)
        atomic_write_json(path, {"request": request.model_dump(mode="json"),
                                 "answer": answer.model_dump(mode="json")})
        return path

    def entries(self) -> list[ArchiveEntry]:
        if not self.root.is_dir():
            return []
        return [read_entry(p) for p in sorted(self.root.glob("*.json"))]

    def find(self, document_id: str, model: str, replicate: int) -> ArchiveEntry | None:
        """The archived call for (document, model, replicate), whatever its key."""
        stem = self.layout.call_stem(document_id, model, replicate)
        matches = sorted(self.root.glob(f"{stem}__*.json"))
        if not matches:
            return None
        # Several keys for one call happen only if generation settings changed; the newest wins.
        return read_entry(max(matches, key=lambda p: p.stat().st_mtime))


def read_entry(path: Path) -> ArchiveEntry:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ArchiveEntry(path, LLMRequest.model_validate(raw["request"]),
                            LLMAnswer.model_validate(raw["answer"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ArchiveError(f"archive entry {path} is unreadable: {exc}") from exc
