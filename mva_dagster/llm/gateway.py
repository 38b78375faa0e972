"""The LLM gateway: a Dagster resource, and the only code that sends an LLM request.

It speaks OpenAI-compatible HTTP to the LiteLLM proxy (never to a provider), consults the archive
before sending, writes the answer to the archive before returning it, retries transient failures
with jittered backoff (honouring ``Retry-After``), and classifies every failure (see errors.py).
The proxy's master key is read from the environment or the git-ignored key file at call time, so it
never appears in Dagster run config, logs or archives.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dagster as dg
import httpx
from pydantic import Field

from mva_dagster.errors import (
    LLMError,
    PermanentLLMError,
    ProxyError,
    RecoverableLLMError,
    TransientLLMError,
)
from mva_dagster.llm import conversations
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import utc_now

PROXY_URL_ENV = "MVA_PROXY_URL"
# Response headers worth keeping for provenance; nothing that could carry a credential.
KEPT_HEADER_PREFIXES = ("x-litellm-", "llm_provider-x-", "llm_provider-openai-", "x-mva-")
WaitCallback = Callable[[str, float, str], Awaitable[None] | None]


def resolve_proxy_url(explicit: str | None = None) -> str:
    """The proxy to talk to: explicit config, ``$MVA_PROXY_URL``, or the proxy ``mva proxy start`` left."""
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get(PROXY_URL_ENV):
        return os.environ[PROXY_URL_ENV].rstrip("/")
    from mva_dagster.proxy.stack import running_proxy_urls

    urls = running_proxy_urls()
    if len(urls) == 1:
        return next(iter(urls.values())).rstrip("/")
    if len(urls) > 1:
        raise ProxyError(f"several proxies are running ({', '.join(sorted(urls))}); which one is meant?",
                         hint=f"set {PROXY_URL_ENV} to one of: " + ", ".join(urls.values()))
    raise ProxyError("no LiteLLM proxy is running and MVA_PROXY_URL is not set",
                     hint="start one with `mva proxy start --provider simulated|local|real`, "
                          "or use `mva run`, which starts what it needs")


def proxy_key() -> str:
    from mva_dagster.proxy.process import master_key

    return master_key()


def classify_http_error(status: int, body: str, headers: httpx.Headers) -> LLMError:
    """Map a proxy error response onto the error taxonomy, with what to do about it."""
    text = body[:500]
    lowered = body.lower()
    retry_after = _retry_after(headers)
    if status == 429:
        return TransientLLMError(f"rate limited (HTTP 429): {text}", status=status, retry_after=retry_after)
    if status in (408, 409, 425) or status >= 500:
        return TransientLLMError(f"provider or proxy error (HTTP {status}): {text}", status=status,
                                 retry_after=retry_after)
    if "context_length" in lowered or "context window" in lowered or "maximum context" in lowered:
        return PermanentLLMError(f"the prompt is longer than the model's context window: {text}",
                                 status=status, hint="use a model with a larger context window, "
                                                     "or split long documents")
    if "content_filter" in lowered or "safety" in lowered and status == 400:
        return PermanentLLMError(f"the provider refused the content: {text}", status=status,
                                 hint="check the document; some providers filter political speech")
    if status in (401, 403):
        return PermanentLLMError(f"the proxy or provider refused the credentials (HTTP {status}): {text}",
                                 status=status, hint="check the provider key variables named in "
                                                     "docs/proxy-and-models.md and restart the proxy")
    if status == 404:
        return PermanentLLMError(f"the proxy does not know this model (HTTP 404): {text}", status=status,
                                 hint="the alias must be in mva_dagster/llm/models.yaml and the proxy "
                                      "must have been started for it")
    return PermanentLLMError(f"request rejected (HTTP {status}): {text}", status=status)


def _retry_after(headers: httpx.Headers) -> float | None:
    for name in ("retry-after", "x-ratelimit-reset-requests", "llm_provider-retry-after"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                continue
    return None


class LLMGateway(dg.ConfigurableResource):
    """Sends analysis/extraction/synthesis calls through the LiteLLM proxy, archive first."""

    proxy_url: str | None = Field(default=None, description="Default: $MVA_PROXY_URL or the running proxy.")
    request_timeout_s: float = Field(default=900.0, description="Per attempt; the proxy has its own.")
    max_attempts: int = Field(default=6, description="Attempts for transient failures (429, 5xx, timeouts).")
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0

    def make_client(self, max_connections: int = 64) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=resolve_proxy_url(self.proxy_url),
            headers={"Authorization": f"Bearer {proxy_key()}"},
            timeout=httpx.Timeout(self.request_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def complete(
        self,
        client: httpx.AsyncClient,
        request: LLMRequest,
        archive: SessionArchive,
        *,
        on_wait: WaitCallback | None = None,
    ) -> tuple[LLMAnswer, bool]:
        """The answer to ``request`` and whether it came from the archive (True) or the proxy."""
        archived = archive.lookup(request)
        if archived is not None:
            conversations.record_answer(archive.layout, request, archived, from_archive=True)
            return archived, True
        try:
            answer = await self._send(client, request, on_wait=on_wait)
        except LLMError as exc:
            conversations.record_failure(archive.layout, request, exc)
            raise
        archive.store(request, answer)  # durable before anyone uses it
        conversations.record_answer(archive.layout, request, answer, from_archive=False)
        return answer, False

    async def _send(self, client: httpx.AsyncClient, request: LLMRequest, *,
                    on_wait: WaitCallback | None) -> LLMAnswer:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages, **request.params}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        headers = {"x-mva-request-key": request.key(), "x-mva-session": request.session_id,
                   "x-mva-document": request.document_id}
        started_at = utc_now()
        attempt = 0
        while True:
            attempt += 1
            t0 = time.monotonic()
            try:
                response = await client.post("/v1/chat/completions", json=body, headers=headers)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                error: LLMError = TransientLLMError(
                    f"could not reach the proxy or it timed out ({type(exc).__name__}: {exc})",
                    hint="check `mva proxy status`; the call is retried and nothing is lost")
            else:
                if response.status_code == 200:
                    return self._answer(request, response, started_at, attempt, time.monotonic() - t0)
                error = classify_http_error(response.status_code, response.text, response.headers)
            if not isinstance(error, TransientLLMError) or attempt >= self.max_attempts:
                error.attempts = attempt  # type: ignore[attr-defined]
                raise error
            delay = error.retry_after if error.retry_after is not None else min(
                self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
            delay = delay * (1 + random.uniform(0, 0.25))  # jitter so waiters do not stampede together
            if on_wait is not None:
                maybe = on_wait(request.document_id, delay, error.message.split(":")[0])
                if maybe is not None:
                    await maybe
            await asyncio.sleep(delay)

    @staticmethod
    def _answer(request: LLMRequest, response: httpx.Response, started_at: str, attempt: int,
                latency: float) -> LLMAnswer:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            content = choice.get("message", {}).get("content")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RecoverableLLMError(f"the proxy returned an unreadable completion: {exc}") from exc
        usage = payload.get("usage") or {}
        cost = response.headers.get("x-litellm-response-cost")
        kept = {k: v for k, v in response.headers.items() if k.lower().startswith(KEPT_HEADER_PREFIXES)}
        return LLMAnswer(
            request_key=request.key(),
            raw_text=content if isinstance(content, str) else None,
            ok=isinstance(content, str) and bool(content.strip()),
            model_alias=request.model,
            provider_model=payload.get("model"),
            system_fingerprint=payload.get("system_fingerprint"),
            finish_reason=choice.get("finish_reason"),
            call_id=response.headers.get("x-litellm-call-id"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cost_usd=float(cost) if cost not in (None, "", "None") else None,
            latency_s=round(latency, 4),
            attempts=attempt,
            started_at=started_at,
            finished_at=utc_now(),
            response_headers=kept,
        )
