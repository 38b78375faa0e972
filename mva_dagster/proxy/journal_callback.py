"""The answer journal's LiteLLM callback: runs inside the proxy (see ``proxy/journal.py``)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from mva_dagster.proxy.journal import (
    DEFAULT_WAIT_S,
    clear_pending,
    proxy_journal_dir,
    request_key_of,
    response_meta,
    write_entry,
    write_pending,
)


class AnswerJournal(CustomLogger):
    """Journal every keyed completion before it leaves the proxy.

    Never raises into the proxy: a journal fault is reported in the proxy log and the call goes on
    (the client still archives the answer it receives).
    """

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> None:
        try:
            key = request_key_of(data)
            if key:
                timeout = float(data.get("timeout") or DEFAULT_WAIT_S)
                await asyncio.to_thread(write_pending, proxy_journal_dir(), key, timeout)
        except Exception as exc:  # noqa: BLE001
            print(f"mva answer journal: could not mark a call in flight: {exc!r}", file=sys.stderr, flush=True)
        return None

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any,
                                           response: Any) -> None:
        try:
            key = request_key_of(data)
            if key and hasattr(response, "model_dump"):
                body = response.model_dump(mode="json")
                await asyncio.to_thread(write_entry, proxy_journal_dir(), key, body, response_meta(response))
        except Exception as exc:  # noqa: BLE001
            print(f"mva answer journal: could not journal an answer: {exc!r}", file=sys.stderr, flush=True)
        return None

    async def async_post_call_failure_hook(self, request_data: dict[str, Any], original_exception: Exception,
                                           user_api_key_dict: Any, traceback_str: str | None = None) -> None:
        try:
            key = request_key_of(request_data)
            if key:
                await asyncio.to_thread(clear_pending, proxy_journal_dir(), key)
        except Exception as exc:  # noqa: BLE001
            print(f"mva answer journal: could not clear a marker: {exc!r}", file=sys.stderr, flush=True)
        return None


answer_journal_instance = AnswerJournal()
