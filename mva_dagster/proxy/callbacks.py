"""Code that runs *inside* the LiteLLM proxy: the call ledger and the master-key check.

The proxy rewrites a response's ``model`` to the alias the client asked for, so the provider's own
model version (``gemini-2.5-flash-001``) never reaches the client. This callback is where that
provenance survives: it appends one JSON line per success or failure to ``$MVA_PROXY_LEDGER`` (set by
:func:`mva_dagster.proxy.process.start_proxy`), fsync'd so a crash loses at most the call in flight.
A client that sends ``x-mva-request-key`` can join the ledger to its archive by that key.

Only the async hooks are implemented: the proxy calls both the sync and the async failure hooks, so
implementing both would write failures twice. No header other than ``x-mva-request-key`` and no
credential is ever read into a record.

:func:`user_api_key_auth` is the proxy's ``custom_auth``. Without a database, LiteLLM 1.108.7 answers
a request without a key with 500 (its error path imports the absent ``prisma``) and one with a wrong
key with 400 ("No connected db"); this check answers both with 401 and accepts the master key and
the keys of the key table (``keys.py``), each of those with its own rate limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from litellm.constants import LITELLM_PROXY_MASTER_KEY_ALIAS
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.proxy.auth.user_api_key_auth import UserAPIKeyAuth
from litellm.types.proxy.auth.user_roles import LitellmUserRoles

from mva_dagster.proxy.config import LEDGER_ENV, MASTER_KEY_ENV, REQUEST_KEY_HEADER
from mva_dagster.proxy.keys import KeySpec, active_keys, auth_fields, load_key_table
from mva_dagster.sessions.appendlog import append_line

_MAX_ERROR_CHARS = 500


def ledger_path() -> Path:
    """``$MVA_PROXY_LEDGER``, else ``$MVA_HOME/proxy/proxy_ledger.jsonl`` (the default state dir)."""
    configured = os.environ.get(LEDGER_ENV)
    if configured:
        return Path(configured)
    home = Path(os.environ.get("MVA_HOME") or Path.cwd() / ".mva").resolve()
    return home / "proxy" / "proxy_ledger.jsonl"


def append_record(record: Mapping[str, Any], path: Path | None = None) -> None:
    """Append one JSON line and fsync it, through the sessions' :func:`append_line`.

    Safe inside the proxy: it is called in a worker thread (``asyncio.to_thread``), never on the
    event loop, so the file lock and the fsync never hold up other requests. The lock is held only
    for one ``write`` by the proxy's own threads (or workers: unlike a thread lock, the ``flock``
    also keeps several worker processes' lines whole), and it is released before the fsync; readers
    take no lock. The file keeps its 0600 permissions. A torn line left by a proxy that died
    mid-write is moved to ``proxy_ledger.jsonl.torn`` (and reported in the proxy log) instead of
    swallowing the next record. Errors propagate to :meth:`MvaProxyLedger._log`, which reports them
    and never fails the call.
    """
    line = json.dumps(record, default=str, sort_keys=True).encode("utf-8")
    torn = append_line(path or ledger_path(), line, fsync=True, mode=0o600)
    if torn is not None:
        print(f"mva proxy ledger: an incomplete last line (a crash mid-write) was moved to {torn.set_aside_to}",
              file=sys.stderr, flush=True)


def build_record(
    status: str,
    kwargs: Mapping[str, Any],
    response_obj: Any,
    start_time: Any,
    end_time: Any,
) -> dict[str, Any]:
    """The ledger line for one call attempt, from what LiteLLM hands a logger."""
    slo: Mapping[str, Any] = kwargs.get("standard_logging_object") or {}
    hidden = _hidden_params(response_obj)
    litellm_params: Mapping[str, Any] = kwargs.get("litellm_params") or {}
    metadata: Mapping[str, Any] = litellm_params.get("metadata") or {}
    record: dict[str, Any] = {
        "ts": time.time(),
        "status": status,
        "litellm_call_id": kwargs.get("litellm_call_id") or slo.get("litellm_call_id"),
        "request_key": _request_key(kwargs, slo, metadata),
        "model_group": slo.get("model_group") or metadata.get("model_group"),
        "model_id": slo.get("model_id") or (litellm_params.get("model_info") or {}).get("id"),
        "litellm_model": slo.get("model") or kwargs.get("model"),
        "api_base": slo.get("api_base") or hidden.get("api_base"),
        "provider_response_model": hidden.get("provider_response_model"),
        "system_fingerprint": getattr(response_obj, "system_fingerprint", None),
        "prompt_tokens": slo.get("prompt_tokens"),
        "completion_tokens": slo.get("completion_tokens"),
        "response_cost": slo.get("response_cost", kwargs.get("response_cost")),
        "start_time": slo.get("startTime") or _epoch(start_time),
        "end_time": slo.get("endTime") or _epoch(end_time),
    }
    if status == "failure":
        exc = kwargs.get("exception")
        record["error_class"] = type(exc).__name__ if exc is not None else None
        record["error_status"] = getattr(exc, "status_code", None)
        message = str(exc) if exc is not None else (slo.get("error_str") or "")
        record["error_message"] = message[:_MAX_ERROR_CHARS]
    return record


class MvaProxyLedger(CustomLogger):
    """Writes the proxy ledger; never raises into the proxy (a logging fault must not fail a call)."""

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._log("success", kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._log("failure", kwargs, response_obj, start_time, end_time)

    async def _log(self, status: str, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            record = build_record(status, kwargs or {}, response_obj, start_time, end_time)
            # fsync takes milliseconds: keep it off the event loop that serves other requests.
            await asyncio.to_thread(append_record, record)
        except Exception as exc:  # noqa: BLE001 - reported in the proxy log, the call itself succeeded
            print(
                f"mva proxy ledger: could not record a {status} event: {exc!r}", file=sys.stderr, flush=True
            )


proxy_handler_instance = MvaProxyLedger()


_key_table: dict[str, KeySpec] | None = None


def _keys() -> dict[str, KeySpec]:
    """The active key table, read once per proxy process (restart the proxy after editing it)."""
    global _key_table
    if _key_table is None:
        _key_table = active_keys(load_key_table())
    return _key_table


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """Admit the master key and the keys of the key table (constant-time compares); 401 otherwise.

    The master key's identity is LiteLLM's alias for it, and a table key's identity is its sha256
    plus its name, never the key itself, so nothing downstream (logs, callbacks, rate-limit
    buckets, Redis) can see a key. A table key carries its rpm/tpm/parallel limits: LiteLLM's rate
    limiter enforces them and answers 429 with ``retry-after`` when a key is over its limit.
    """
    expected = os.environ.get(MASTER_KEY_ENV, "")
    given = (api_key or "").encode("utf-8")
    if expected and given and secrets.compare_digest(given, expected.encode("utf-8")):
        return UserAPIKeyAuth(api_key=LITELLM_PROXY_MASTER_KEY_ALIAS, user_role=LitellmUserRoles.PROXY_ADMIN)
    if given:
        match = None
        for value, spec in _keys().items():  # compare against every key: timing says nothing
            if secrets.compare_digest(given, value.encode("utf-8")):
                match = (value, spec)
        if match is not None:
            return UserAPIKeyAuth(**auth_fields(match[1], match[0]))
    raise HTTPException(
        status_code=401,
        detail="missing or wrong proxy key: send 'Authorization: Bearer <key>' with the master key "
        "(mva_dagster.proxy.process.master_key()) or a key of the key table (mva_dagster/proxy/keys.yaml)",
    )


def _hidden_params(response_obj: Any) -> Mapping[str, Any]:
    hidden = getattr(response_obj, "_hidden_params", None)
    if hidden is None and isinstance(response_obj, Mapping):
        hidden = response_obj.get("_hidden_params")
    return hidden if isinstance(hidden, Mapping) else {}


def _request_key(
    kwargs: Mapping[str, Any], slo: Mapping[str, Any], metadata: Mapping[str, Any]
) -> str | None:
    """Our ``x-mva-request-key`` header, wherever this LiteLLM version put the client's headers."""
    candidates: list[Any] = [
        (kwargs.get("proxy_server_request") or {}).get("headers"),
        metadata.get("headers"),
        metadata.get("requester_custom_headers"),
        (slo.get("metadata") or {}).get("requester_custom_headers"),
    ]
    for headers in candidates:
        if isinstance(headers, Mapping):
            for name, value in headers.items():
                if str(name).lower() == REQUEST_KEY_HEADER and value:
                    return str(value)
    return None


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None
