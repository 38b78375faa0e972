"""The conversation log: every prompt/response pair of a session, one JSON line per call outcome.

Separate from workflow telemetry (the chronolog): this is what was said to which model and what it
answered, with timing, tokens, cost, attempts and error class. The gateway calls
:func:`record_answer` for every answer (sent, or served from the archive) and :func:`record_failure`
for every call that failed after its retries; each line is fsync'd, in ``logs/conversations.jsonl``
(:attr:`SessionLayout.conversations_log`), through :func:`mva_dagster.sessions.appendlog.append_line`:
one locked ``write`` per line, and a torn line left by a crash set aside instead of glued to the next.

One entry with ``from_archive: false`` and status ``ok``/``empty`` exists per archive file (the test
suite checks the one-to-one match); an answer that a re-ask replaced gets its own ``superseded``
line (it was paid for), and ``from_archive: true`` entries record re-uses at $0. ``call_id`` is the
proxy's ``x-litellm-call-id`` (what the proxy ledger shows) or, when the proxy gave none (failures),
the first 16 characters of the request key. The DuckDB index across sessions and ``mva log`` live
in :mod:`mva_dagster.observe.log_index`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mva_dagster.errors import LLMError
from mva_dagster.records import LLMAnswer, LLMRequest, canonical_json, sha256_text
from mva_dagster.sessions.appendlog import append_line
from mva_dagster.sessions.chronolog import Chronolog, report_torn_tail, utc_now
from mva_dagster.sessions.layout import SessionLayout

SCHEMA_VERSION = 2


def conversations_path(layout: SessionLayout) -> Path:
    return layout.conversations_log


def prompt_sha256(messages: list[dict[str, str]]) -> str:
    """The hash of a prompt as sent (all messages, canonical JSON): equal prompts, equal hashes."""
    return sha256_text(canonical_json(messages))


def _append(layout: SessionLayout, entry: dict[str, Any]) -> None:
    line = json.dumps(entry, ensure_ascii=False, default=str).encode("utf-8")
    torn = append_line(layout.conversations_log, line, fsync=True)
    if torn is not None:
        chronolog = None
        if layout.manifest.is_file():  # a session (not a bare folder some tool logs into)
            chronolog = Chronolog(layout.chronolog, project=layout.experiment.project.name,
                                  session_id=layout.session_id)
        report_torn_tail(chronolog, torn)


def _base(request: LLMRequest) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION, "request_key": request.key(), "ts": utc_now(),
        "session_id": request.session_id, "document_id": request.document_id, "purpose": request.purpose,
        "model": request.model, "replicate": request.replicate, "params": request.params,
        "response_format": request.response_format, "prompt_sha256": prompt_sha256(request.messages),
        "messages": request.messages,
    }


def record_answer(layout: SessionLayout, request: LLMRequest, answer: LLMAnswer, *, from_archive: bool) -> None:
    """One line for the answer; before it, one line per earlier answer a re-ask replaced (also paid)."""
    if not from_archive:
        for replaced in answer.superseded:
            _append(layout, _answer_entry(request, replaced, from_archive=False, status="superseded"))
    _append(layout, _answer_entry(request, answer, from_archive=from_archive,
                                  status="ok" if answer.ok else "empty"))


def _answer_entry(request: LLMRequest, answer: LLMAnswer, *, from_archive: bool, status: str) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in answer.response_headers.items()}
    retries = headers.get("x-litellm-attempted-retries")
    return {
        **_base(request),
        "call_id": answer.call_id or request.key()[:16], "status": status,
        "from_archive": from_archive, "provider_model": answer.provider_model,
        "deployment": headers.get("x-litellm-model-id"), "litellm_model": headers.get("x-litellm-model-name"),
        "litellm_version": headers.get("x-litellm-version"),
        "system_fingerprint": answer.system_fingerprint, "response": answer.raw_text,
        "finish_reason": answer.finish_reason, "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens, "cost_usd": 0.0 if from_archive else answer.cost_usd,
        "original_cost_usd": answer.cost_usd, "latency_s": answer.latency_s, "started_at": answer.started_at,
        "finished_at": answer.finished_at, "attempts": answer.attempts,
        "proxy_retries": int(retries) if retries and retries.isdigit() else None,
        "waited_s": answer.waited_s, "model_used": answer.model_used, "fallback_used": answer.fallback_used,
        "reask_reason": answer.reask_reason, "error_class": None,
    }


def record_failure(layout: SessionLayout, request: LLMRequest, error: LLMError) -> None:
    _append(layout, {
        **_base(request),
        "call_id": request.key()[:16], "status": "failed", "from_archive": False, "response": None,
        "cost_usd": 0.0, "attempts": getattr(error, "attempts", None), "error_class": error.error_class,
        "error": str(error)[:2000], "http_status": error.status,
    })


def read_entries(layout: SessionLayout) -> Iterator[dict[str, Any]]:
    """The session's entries in order; a torn last line (a crash mid-write) is skipped."""
    path = conversations_path(layout)
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item
