"""The LLM gateway: a Dagster resource, and the only code that sends an LLM request.

It speaks OpenAI-compatible HTTP to the LiteLLM proxy (never to a provider), consults the archive
before sending, writes the answer to the archive before returning it, and classifies every failure
(see errors.py), treating each class as it deserves:

* rate limits (429 over a quota) **wait** - as long as it takes, within ``rate_limit_max_wait_s`` -
  and tell the model's :class:`~mva_dagster.llm.limits.ModelLimiter`, which slows every call of
  the model down together;
* the proxy's circuit breaker (429 "cooldown"), server errors and timeouts are retried with
  jittered exponential backoff honouring ``Retry-After``, up to ``max_attempts``;
* a proxy that is down or restarting is waited for (``proxy_down_max_wait_s``): nothing is lost;
* permanent errors fail the item at once, with a hint;
* an unusable answer (truncated, empty, unparseable) is archived and the request is sent once
  more; both answers are kept (``LLMAnswer.superseded``).

With a :class:`~mva_dagster.llm.budget.BudgetGuard`, each call's worst case is reserved before it
is sent and settled with the proxy's ``x-litellm-response-cost`` after, so a budget is never
crossed. A model fallback happens only when the experiment configures one, and the answer records
the model that actually answered. The proxy key is read from the environment or the git-ignored key
file at call time, so it never appears in Dagster run config, logs or archives.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dagster as dg
import httpx
from pydantic import Field

from mva_dagster.errors import (
    CooldownLLMError,
    LLMError,
    PermanentLLMError,
    ProxyError,
    ProxyUnreachableError,
    RateLimitedLLMError,
    RecoverableLLMError,
    TransientLLMError,
)
from mva_dagster.llm import conversations
from mva_dagster.llm import cost as cost_ledger
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.budget import BudgetGuard, Reservation, session_guard, worst_case_usd
from mva_dagster.llm.endpoints import client_options
from mva_dagster.llm.limits import ModelLimiter, Ticket
from mva_dagster.llm.registry import ModelEntry, Registry, load_registry
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import utc_now

PROXY_URL_ENV = "MVA_PROXY_URL"
PROXY_API_KEY_ENV = "MVA_PROXY_API_KEY"  # a key of the proxy's key table, instead of the master key
# Response headers worth keeping for provenance; nothing that could carry a credential.
KEPT_HEADER_PREFIXES = ("x-litellm-", "llm_provider-x-", "llm_provider-openai-", "x-mva-")
WaitCallback = Callable[[str, float, str], Awaitable[None] | None]
AnswerCheck = Callable[[LLMAnswer], str | None]  # why an answer is unusable, or None

# Retry settings that tests and operators may change without touching run config.
ENV_MAX_ATTEMPTS = "MVA_LLM_MAX_ATTEMPTS"
ENV_BACKOFF_BASE_S = "MVA_LLM_BACKOFF_BASE_S"
ENV_BACKOFF_MAX_S = "MVA_LLM_BACKOFF_MAX_S"
ENV_RATE_LIMIT_MAX_WAIT_S = "MVA_LLM_RATE_LIMIT_MAX_WAIT_S"
ENV_PROXY_DOWN_MAX_WAIT_S = "MVA_LLM_PROXY_DOWN_MAX_WAIT_S"
PROXY_DOWN_POLL_S = 2.0
COOLDOWN_MAX_WAIT_S = 120.0
BUDGET_POLL_S = 0.1


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
    """``$MVA_PROXY_API_KEY`` (a key with its own limits, see proxy/keys.yaml), else the master key."""
    if os.environ.get(PROXY_API_KEY_ENV):
        return os.environ[PROXY_API_KEY_ENV]
    from mva_dagster.proxy.process import master_key

    return master_key()


def classify_http_error(status: int, body: str, headers: httpx.Headers) -> LLMError:
    """Map a proxy error response onto the error taxonomy, with what to do about it."""
    text = body[:500]
    lowered = body.lower()
    retry_after = _retry_after(headers)
    if status == 429:
        if "no deployments available" in lowered and "cooldown" not in lowered:
            # The proxy's own rpm/tpm fence. It says "retry after 60", but it counts per UTC minute
            # (measured), so the window reopens at the next minute boundary - often a second away
            # when our pacing and its count straddle a boundary.
            wait = 60.0 - time.time() % 60.0 + 0.5
            return RateLimitedLLMError(
                f"the proxy's rpm/tpm limit for this model is reached for this minute (HTTP 429): {text}",
                status=status, retry_after=min(retry_after or 60.0, wait),
                hint="another client shares this model's quota, or rpm/tpm in models.yaml are above "
                     "what the proxy was started with; the call waits for the next minute")
        if "cooldown" in lowered:
            return CooldownLLMError(
                f"the proxy has taken the model out of rotation after repeated failures (HTTP 429, "
                f"cooldown): {text}", status=status, retry_after=retry_after,
                hint="the provider is failing; the call is retried when the cooldown ends")
        return RateLimitedLLMError(f"rate limited (HTTP 429): {text}", status=status, retry_after=retry_after,
                                   hint="raise rpm/tpm in models.yaml only if your quota allows it")
    if status in (408, 409, 425) or status >= 500:
        return TransientLLMError(f"provider or proxy error (HTTP {status}): {text}", status=status,
                                 retry_after=retry_after,
                                 hint="the provider is failing; once it recovers, resume the session: "
                                      "only calls without an answer are sent again")
    if "context_length" in lowered or "context window" in lowered or "maximum context" in lowered:
        return PermanentLLMError(f"the prompt is longer than the model's context window: {text}",
                                 status=status, hint="use a model with a larger context window, "
                                                     "or split long documents")
    if "content_filter" in lowered or ("safety" in lowered and status == 400):
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
    return PermanentLLMError(f"request rejected (HTTP {status}): {text}", status=status,
                             hint="the request itself is wrong for this model; see the message")


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from the proxy's own header or the upstream's (passed on as ``llm_provider-*``);
    milliseconds first, since ``Retry-After`` is rounded up to whole seconds."""
    for name in ("retry-after-ms", "llm_provider-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                continue
    for name in ("retry-after", "llm_provider-retry-after", "x-ratelimit-reset-requests"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                continue
    return None


def default_check(answer: LLMAnswer) -> str | None:
    """Unusable whatever the contract: empty, or cut off at ``max_tokens``."""
    if answer.raw_text is None or not answer.raw_text.strip():
        return "the answer is empty"
    if answer.finish_reason == "length":
        return "the answer was cut off at max_tokens (finish_reason=length)"
    return None


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ProxyError(f"{name}={raw!r} is not a number") from None


class LLMGateway(dg.ConfigurableResource):
    """Sends analysis/extraction/synthesis calls through the LiteLLM proxy, archive first."""

    proxy_url: str | None = Field(default=None, description="Default: $MVA_PROXY_URL or the running proxy.")
    request_timeout_s: float = Field(default=900.0, description="Per attempt; the proxy has its own.")
    max_attempts: int | None = Field(
        default=None, description="Attempts for failures (5xx, timeouts, cooldowns); rate-limit waits "
                                  f"do not count. Default ${ENV_MAX_ATTEMPTS} or 6.")
    backoff_base_s: float | None = Field(default=None, description=f"Default ${ENV_BACKOFF_BASE_S} or 1.")
    backoff_max_s: float | None = Field(default=None, description=f"Default ${ENV_BACKOFF_MAX_S} or 60.")
    rate_limit_max_wait_s: float | None = Field(
        default=None, description=f"Longest total wait on 429s for one call. Default ${ENV_RATE_LIMIT_MAX_WAIT_S} "
                                  "or 1800.")
    proxy_down_max_wait_s: float | None = Field(
        default=None, description=f"Longest wait for an unreachable proxy. Default ${ENV_PROXY_DOWN_MAX_WAIT_S} "
                                  "or 300.")

    # -- settings ------------------------------------------------------------------------------

    def _attempts(self) -> int:
        return max(1, int(self.max_attempts or _env_number(ENV_MAX_ATTEMPTS, 6)))

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        base = self.backoff_base_s if self.backoff_base_s is not None else _env_number(ENV_BACKOFF_BASE_S, 1.0)
        cap = self.backoff_max_s if self.backoff_max_s is not None else _env_number(ENV_BACKOFF_MAX_S, 60.0)
        delay = retry_after if retry_after is not None else base * 2 ** max(0, failures - 1)
        return min(cap, delay) * (1 + random.uniform(0, 0.25))  # jitter so waiters do not stampede

    def _limit(self, value: float | None, env: str, default: float) -> float:
        return value if value is not None else _env_number(env, default)

    # -- the client ----------------------------------------------------------------------------

    def make_client(self, max_connections: int = 64) -> httpx.AsyncClient:
        """A client for the proxy, or for several proxies in turn (llm/endpoints.py)."""
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return httpx.AsyncClient(
            headers={"Authorization": f"Bearer {proxy_key()}"},
            timeout=httpx.Timeout(self.request_timeout_s, connect=10.0),
            **client_options(resolve_proxy_url(self.proxy_url), limits=limits),
        )

    async def complete(
        self,
        client: httpx.AsyncClient,
        request: LLMRequest,
        archive: SessionArchive,
        *,
        on_wait: WaitCallback | None = None,
        limiter: ModelLimiter | None = None,
        budget: BudgetGuard | None = None,
        check: AnswerCheck | None = None,
        fallbacks: list[str] | None = None,
        registry: Registry | None = None,
    ) -> tuple[LLMAnswer, bool]:
        """The answer to ``request`` and whether it came from the archive (True) or the proxy.

        ``check`` says why an answer is unusable (e.g. :func:`default_check`); with it, an unusable
        answer is archived and the request is sent once more. ``budget`` defaults to the session's
        guard (``session_policy.json``); ``fallbacks`` are the experiment's, for this model only.

        Raises :class:`~mva_dagster.errors.BudgetExceeded` before sending anything if the call could
        cross a budget, and an :class:`~mva_dagster.errors.LLMError` subclass if it failed.
        """
        archived = archive.lookup(request)
        if archived is not None:
            conversations.record_answer(archive.layout, request, archived, from_archive=True)
            return archived, True
        registry = registry or load_registry()
        if budget is None:
            budget = session_guard(archive.layout)  # every call is in the ledger, whoever sends it
        call = _Call(self, client, request, archive, registry, on_wait=on_wait, limiter=limiter,
                     budget=budget, fallbacks=list(fallbacks or []))
        try:
            first = await call.attempt()
        except RecoverableLLMError as exc:  # answered, but unreadable: re-ask once when checking
            if check is None:
                raise
            await call._say(0.0, f"re-asking once: {exc.message[:120]}")
            return await call.attempt(), False
        if check is None:
            return first, False
        problem = check(first)
        if problem is None:
            return first, False
        return await call.reask(first, problem, check), False

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
        group = response.headers.get("x-litellm-model-group") or request.model
        try:
            fallbacks_taken = int(response.headers.get("x-litellm-attempted-fallbacks") or 0)
        except ValueError:
            fallbacks_taken = 0
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
            model_used=group,
            fallback_used=fallbacks_taken > 0 or group != request.model,
        )


class _Call:
    """One call's journey: reserve, send (with its retries and waits), settle, archive, re-ask."""

    def __init__(self, gateway: LLMGateway, client: httpx.AsyncClient, request: LLMRequest,
                 archive: SessionArchive, registry: Registry, *, on_wait: WaitCallback | None,
                 limiter: ModelLimiter | None, budget: BudgetGuard | None, fallbacks: list[str]) -> None:
        self.gateway = gateway
        self.client = client
        self.request = request
        self.archive = archive
        self.on_wait = on_wait
        self.limiter = limiter
        self.budget = budget
        entry = registry.resolve(request.model)
        self.candidates: list[ModelEntry] = [entry, *(registry.resolve(name) for name in fallbacks)]
        self.fallbacks = [c.name for c in self.candidates[1:]]
        # The limiter's tpm only needs a rough count; litellm's tokenizer is paid for (import time)
        # only when a budget must hold.
        chars = sum(len(m.get("content") or "") for m in request.messages)
        self.rough_tokens = math.ceil(chars / 4)
        self.max_tokens = request.params.get("max_tokens") or request.params.get("max_completion_tokens")

    async def attempt(self) -> LLMAnswer:
        """Send once (with retries); archive and settle the answer; raise on failure."""
        reservation = await self._reserve()
        uncertain = 0
        try:
            answer, uncertain = await self._send()
        except LLMError as exc:
            if reservation is not None and self.budget is not None:
                self.budget.settle(reservation, None, uncertain_attempts=getattr(exc, "uncertain", 0),
                                   billed_usd=getattr(exc, "billed_usd", 0.0))
            conversations.record_failure(self.archive.layout, self.request, exc)
            raise
        except BaseException:
            # Cancelled or interrupted with the call in flight: it may be billed; the next run
            # reconciles the open reservation against the archive.
            raise
        self.archive.store(self.request, answer)  # durable before anyone uses it
        if reservation is not None and self.budget is not None:
            self.budget.settle(reservation, answer, uncertain_attempts=uncertain)
        conversations.record_answer(self.archive.layout, self.request, answer, from_archive=False)
        return answer

    async def reask(self, first: LLMAnswer, problem: str, check: AnswerCheck) -> LLMAnswer:
        """Send the same request once more; keep both answers; hand the better one on.

        The first answer is already archived, so if the re-ask cannot be made (budget) or fails,
        nothing is lost and extraction gets the first answer.
        """
        from mva_dagster.errors import BudgetExceeded

        await self._say(0.0, f"re-asking once: {problem}")
        try:
            second = await self.attempt()
        except (LLMError, BudgetExceeded) as exc:
            kept = first.model_copy(update={"reask_reason": f"{problem}; the re-ask failed: "
                                                             f"{str(exc).splitlines()[0][:200]}"})
            self.archive.store(self.request, kept)
            return kept
        usable = check(second) is None
        final, replaced = (second, first) if usable or check(first) is not None else (first, second)
        final = final.model_copy(update={"reask_reason": problem, "superseded": [*replaced.superseded, replaced]})
        self.archive.store(self.request, final)
        return final

    async def _reserve(self) -> Reservation | None:
        if self.budget is None:
            return None
        if self.budget.active:
            counted = cost_ledger.count_prompt_tokens(
                self.candidates[0].litellm_model, self.request.messages, self.request.response_format)
        else:
            counted = self.rough_tokens
        worst = worst_case_usd(self.candidates, counted, self.max_tokens)
        names = [c.name for c in self.candidates]
        waited = 0.0
        while True:
            reservation = self.budget.try_reserve(self.request, worst, candidates=names)
            if reservation is not None:
                return reservation
            if waited == 0.0:
                await self._say(0.0, "the budget is nearly used: waiting for calls in flight to settle")
            await asyncio.sleep(BUDGET_POLL_S)
            waited += BUDGET_POLL_S

    async def _send(self) -> tuple[LLMAnswer, int]:
        """(answer, attempts whose fate is unknown); raises the last error when retries run out."""
        gw = self.gateway
        request = self.request
        body: dict[str, Any] = {"model": request.model, "messages": request.messages, **request.params}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if self.fallbacks:
            body["fallbacks"] = self.fallbacks  # only when the experiment configures them
        headers = {"x-mva-request-key": request.key(), "x-mva-session": request.session_id,
                   "x-mva-document": request.document_id}
        started_at = utc_now()
        began = time.monotonic()
        sends = failures = uncertain = 0
        rate_waited = down_waited = in_requests = 0.0
        max_attempts = gw._attempts()
        rate_cap = gw._limit(gw.rate_limit_max_wait_s, ENV_RATE_LIMIT_MAX_WAIT_S, 1800.0)
        down_cap = gw._limit(gw.proxy_down_max_wait_s, ENV_PROXY_DOWN_MAX_WAIT_S, 300.0)
        while True:
            sends += 1
            ticket: Ticket | None = None
            if self.limiter is not None:
                ticket = await self.limiter.acquire(self.rough_tokens + int(self.max_tokens or 0) // 4)
            t0 = time.monotonic()
            response: httpx.Response | None = None
            error: LLMError | None = None
            try:
                response = await self.client.post("/v1/chat/completions", json=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                error = ProxyUnreachableError(
                    f"the proxy is not reachable ({type(exc).__name__}); it may be restarting",
                    hint="check `mva proxy status`; the call waits for it and nothing is lost")
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                uncertain += 1
                error = ProxyUnreachableError(
                    f"the connection to the proxy broke mid-call ({type(exc).__name__}: {exc})",
                    hint="check `mva proxy status`; the call is sent again and nothing is lost")
            except httpx.TimeoutException as exc:
                uncertain += 1
                error = TransientLLMError(
                    f"no answer within {gw.request_timeout_s:.0f}s ({type(exc).__name__})",
                    hint="the provider is slow or hanging; raise timeout_s in models.yaml if answers "
                         "are legitimately slow")
            else:
                if response.status_code != 200:
                    error = classify_http_error(response.status_code, response.text, response.headers)
            finally:
                in_requests += time.monotonic() - t0
                if ticket is not None and self.limiter is not None:
                    extra = _proxy_retries(response)
                    await self.limiter.release(ticket, tokens_used=_total_tokens(response), extra_requests=extra)
            if error is None and response is not None:
                try:
                    answer = LLMGateway._answer(request, response, started_at, sends, time.monotonic() - t0)
                except RecoverableLLMError as unreadable:  # a 200 is billed even when unreadable
                    unreadable.billed_usd = _header_cost(response)  # type: ignore[attr-defined]
                    raise _final(unreadable, sends, uncertain) from None
                if self.limiter is not None:
                    await self.limiter.succeeded()
                answer.waited_s = round(max(0.0, time.monotonic() - began - in_requests), 3)
                return answer, uncertain
            assert error is not None

            if isinstance(error, RateLimitedLLMError):
                # A quota: wait it out together with the model's other calls; not a failure.
                pause = await self.limiter.rate_limited(error.retry_after) if self.limiter is not None \
                    else gw._backoff(1, error.retry_after)
                rate_waited += pause
                if rate_waited > rate_cap:
                    raise _final(error, sends, uncertain, f"still rate limited after waiting {rate_waited:.0f}s "
                                                          f"({ENV_RATE_LIMIT_MAX_WAIT_S})")
                if self.limiter is None:
                    await self._say(pause, "rate limited (HTTP 429)")
                    await asyncio.sleep(pause)
                continue
            if isinstance(error, ProxyUnreachableError):
                delay = min(PROXY_DOWN_POLL_S * (1 + random.uniform(0, 0.25)), max(0.1, down_cap - down_waited))
                down_waited += delay
                if down_waited >= down_cap:
                    raise _final(error, sends, uncertain, f"the proxy stayed unreachable for {down_waited:.0f}s "
                                                          f"({ENV_PROXY_DOWN_MAX_WAIT_S})")
                await self._say(delay, "the proxy is unreachable (restarting?)")
                await asyncio.sleep(delay)
                continue
            if not isinstance(error, TransientLLMError):
                raise _final(error, sends, uncertain)
            failures += 1
            if failures >= max_attempts:
                raise _final(error, sends, uncertain,
                             f"gave up after {failures} failed attempts ({ENV_MAX_ATTEMPTS})")
            if isinstance(error, CooldownLLMError):
                delay = min(COOLDOWN_MAX_WAIT_S, error.retry_after or gw._backoff(failures, None))
                if self.limiter is not None:
                    await self.limiter.rate_limited(delay, cooldown=True)
                reason = "the proxy's circuit breaker is open (cooldown after repeated failures)"
            else:
                delay = gw._backoff(failures, error.retry_after)
                reason = error.message.split(":")[0]
            await self._say(delay, reason)
            await asyncio.sleep(delay)

    async def _say(self, seconds: float, reason: str) -> None:
        if self.on_wait is None:
            return
        maybe = self.on_wait(self.request.document_id, seconds, reason)
        if maybe is not None:
            await maybe


def _final(error: LLMError, sends: int, uncertain: int, note: str | None = None) -> LLMError:
    """The error that ends a call, carrying how many attempts were made and how many may be billed."""
    if note:
        error.message = f"{error.message} - {note}"
        error.args = (error.message,)
    error.attempts = sends  # type: ignore[attr-defined]
    error.uncertain = uncertain  # type: ignore[attr-defined]
    return error


def _header_cost(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("x-litellm-response-cost") or 0.0)
    except ValueError:
        return 0.0


def _proxy_retries(response: httpx.Response | None) -> int:
    """Retries the proxy made inside one request (they count against the rpm like ours)."""
    if response is None:
        return 0
    try:
        return max(0, int(response.headers.get("x-litellm-attempted-retries") or 0))
    except ValueError:
        return 0


def _total_tokens(response: httpx.Response | None) -> int | None:
    if response is None or response.status_code != 200:
        return None
    try:
        usage = response.json().get("usage") or {}
        return int(usage.get("total_tokens") or 0) or None
    except (ValueError, AttributeError, TypeError):
        return None
