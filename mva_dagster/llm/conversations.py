"""The conversation log: every prompt/response pair of a session, one JSON line per call attempt.

Separate from workflow telemetry (the chronolog): this is what was said to which model and what it
answered, with timing, tokens, cost, attempts and error class. Written by the gateway for every
call it sends or answers from the archive, fsync'd per line, in ``logs/conversations.jsonl``.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from mva_dagster.errors import LLMError
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import utc_now
from mva_dagster.sessions.layout import SessionLayout

_lock = threading.Lock()


def conversations_path(layout: SessionLayout) -> os.PathLike[str]:
    return layout.logs / "conversations.jsonl"


def _append(layout: SessionLayout, entry: dict[str, Any]) -> None:
    layout.logs.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
    with _lock:
        fd = os.open(conversations_path(layout), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def record_answer(layout: SessionLayout, request: LLMRequest, answer: LLMAnswer, *, from_archive: bool) -> None:
    _append(layout, {
        "call_id": answer.call_id or request.key()[:16], "request_key": request.key(), "ts": utc_now(),
        "session_id": request.session_id, "document_id": request.document_id, "purpose": request.purpose,
        "model": request.model, "replicate": request.replicate, "status": "ok" if answer.ok else "empty",
        "from_archive": from_archive, "provider_model": answer.provider_model,
        "system_fingerprint": answer.system_fingerprint, "params": request.params,
        "messages": request.messages, "response": answer.raw_text, "finish_reason": answer.finish_reason,
        "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
        "cost_usd": 0.0 if from_archive else answer.cost_usd, "latency_s": answer.latency_s,
        "attempts": answer.attempts, "error_class": None,
    })


def record_failure(layout: SessionLayout, request: LLMRequest, error: LLMError) -> None:
    _append(layout, {
        "call_id": request.key()[:16], "request_key": request.key(), "ts": utc_now(),
        "session_id": request.session_id, "document_id": request.document_id, "purpose": request.purpose,
        "model": request.model, "replicate": request.replicate, "status": "failed", "from_archive": False,
        "params": request.params, "messages": request.messages, "response": None,
        "attempts": getattr(error, "attempts", None), "error_class": error.error_class,
        "error": str(error)[:2000], "http_status": error.status,
    })
