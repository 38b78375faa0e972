"""A deterministic OpenAI-compatible provider that stands behind the real LiteLLM proxy.

Tests and benchmarks need a provider that answers like a real model - schema-conforming JSON in
the wrappings real models use, versioned model ids, token usage - and that fails like one: 429
storms with ``Retry-After``, 5xx, hangs, truncated or malformed output, context-length and auth
errors. Everything it does is a pure function of the request, the config seed and (for faults) the
attempt counter, so a run can be repeated exactly and a retry can succeed where the first try failed.

Run it with ``python -m mva_dagster.providers.simulated --port P [--config FILE] [--ledger FILE]``
(127.0.0.1 only) and point a proxy deployment ``openai/<alias>`` at ``http://127.0.0.1:P/v1``.
``docs/simulated-provider.md`` is the reference for the config, the answer styles, the faults and
the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import uvicorn
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mva_dagster.errors import ProviderError
from mva_dagster.providers._schema_fill import fill_schema, is_evidence_name
from mva_dagster.records import canonical_json, sha256_text

LATENCY_ENV = "MVA_SIMULATED_LATENCY"
REQUEST_KEY_HEADER = "x-mva-request-key"

Style = Literal["bare", "fenced", "prose", "nested", "csv_v5", "truncated", "malformed", "mixed"]
STYLES: tuple[str, ...] = ("bare", "fenced", "prose", "nested", "csv_v5", "truncated", "malformed")
FaultKind = Literal["429", "500", "503", "hang", "truncated", "malformed", "context_length", "auth"]

SCORES_START, SCORES_END = "<<<DISCERNUS_SCORES_CSV_v1>>>", "<<<END_DISCERNUS_SCORES_CSV_v1>>>"
EVIDENCE_START, EVIDENCE_END = "<<<DISCERNUS_EVIDENCE_CSV_v1>>>", "<<<END_DISCERNUS_EVIDENCE_CSV_v1>>>"

# The answer when the request carries no JSON Schema (json_object, text, or no response_format).
DEFAULT_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 80},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "evidence": {"type": "array", "items": {"type": "string", "maxLength": 120}},
    },
    "required": ["summary", "score", "confidence", "evidence"],
}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class FaultRule(BaseModel):
    """One way to fail; the first rule (in list order) that fires decides a request's fate."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    rate: float = Field(default=1.0, ge=0, le=1, description="Share of matching requests that fail.")
    models: list[str] | None = Field(default=None, description="Aliases it applies to; None = all.")
    start_s: float | None = Field(
        default=None, ge=0, description="Window start, seconds since the clock zero."
    )
    end_s: float | None = Field(default=None, ge=0, description="Window end (exclusive).")
    first_n: int | None = Field(default=None, ge=0, description="Only the first N matching requests.")
    retry_after: float = Field(default=1.0, ge=0, description="429 only: seconds sent as Retry-After.")
    hang_s: float = Field(default=30.0, ge=0, description="hang only: seconds to sleep before the 504.")

    @field_validator("kind", mode="before")
    @classmethod
    def _kind_as_text(cls, value: Any) -> Any:
        # YAML reads `kind: 429` as an int.
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _window_ordered(self) -> FaultRule:
        if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
            raise ValueError(f"end_s ({self.end_s}) is before start_s ({self.start_s})")
        return self


class SimulatedConfig(BaseModel):
    """Runtime behaviour of the simulated provider; replaceable mid-run via ``POST /admin/config``."""

    model_config = ConfigDict(extra="forbid")

    latency_s: float = Field(
        default=0.0, ge=0, description=f"Base latency per answer; ${LATENCY_ENV} overrides."
    )
    latency_jitter: float = Field(default=0.0, ge=0, le=1, description="±fraction of latency, per request.")
    style: Style = "bare"
    style_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "bare": 4.0,
            "fenced": 2.0,
            "prose": 1.0,
            "nested": 1.0,
            "csv_v5": 0.0,
            "truncated": 0.5,
            "malformed": 0.5,
        },
        description="Weights of the styles when style == 'mixed'.",
    )
    faults: list[FaultRule] = Field(default_factory=list)
    model_versions: dict[str, str] = Field(
        default_factory=dict,
        description="alias -> versioned id reported as `model`; default <alias>-sim-001.",
    )
    seed: int = 0

    @field_validator("style_weights")
    @classmethod
    def _weights_valid(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(STYLES))
        if unknown:
            raise ValueError(f"unknown styles {unknown}; known: {list(STYLES)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("style weights must be >= 0 and not all 0")
        return weights

    def version_of(self, alias: str) -> str:
        return self.model_versions.get(alias) or f"{alias}-sim-001"

    def effective_latency_s(self) -> float:
        """``$MVA_SIMULATED_LATENCY`` when set (benchmarks slow every provider at once), else latency_s."""
        raw = os.environ.get(LATENCY_ENV, "").strip()
        if raw:
            try:
                return max(0.0, float(raw))
            except ValueError:
                pass  # rejected at start-up by check_latency_env(); never fail a request for it
        return self.latency_s


def check_latency_env() -> None:
    raw = os.environ.get(LATENCY_ENV, "").strip()
    if raw:
        try:
            float(raw)
        except ValueError:
            raise ProviderError(
                f"{LATENCY_ENV}={raw!r} is not a number of seconds",
                hint=f"set e.g. {LATENCY_ENV}=0.2, or unset it",
            ) from None


def load_config(path: Path) -> SimulatedConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        return SimulatedConfig.model_validate(data or {})
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValidationError is a ValueError
        raise ProviderError(
            f"simulated provider config {path} is unusable: {exc}",
            hint="see docs/simulated-provider.md for the fields",
        ) from exc


# --------------------------------------------------------------------------------------------------
# Deterministic helpers
# --------------------------------------------------------------------------------------------------


def _unit(*parts: Any) -> float:
    """A number in [0, 1) that depends only on ``parts``."""
    return int(sha256_text(canonical_json(list(parts)))[:13], 16) / float(16**13)


def alias_of(requested: str, config: SimulatedConfig) -> str:
    """The alias behind the ``model`` the proxy sent (``openai/x``, ``x`` or a versioned id)."""
    name = requested.strip()
    while name.startswith("openai/"):
        name = name[len("openai/") :]
    reverse = {version: alias for alias, version in config.model_versions.items()}
    return reverse.get(name, name)


def _content_text(content: Any) -> str:
    """Text of a message's content: a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and "text" in part
        )
    return ""


def last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def schema_of(response_format: Any) -> dict[str, Any]:
    """The JSON Schema a request asks for, or the default answer's schema when it names none."""
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, Mapping) and isinstance(spec.get("schema"), Mapping):
            return dict(spec["schema"])
    return DEFAULT_ANSWER_SCHEMA


# --------------------------------------------------------------------------------------------------
# Answer styles
# --------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_fields(instance: Any) -> dict[str, Any]:
    """Numbers of the top level and of nested objects (not inside arrays), first name wins."""
    found: dict[str, Any] = {}
    if isinstance(instance, Mapping):
        for key, value in instance.items():
            if _is_number(value):
                found.setdefault(str(key), value)
            elif isinstance(value, Mapping):
                for inner_key, inner in _numeric_fields(value).items():
                    found.setdefault(inner_key, inner)
    return found


def _evidence_rows(instance: Any) -> list[tuple[str, str]]:
    """(field, quote) pairs: strings in top-level arrays and evidence/quote-named strings."""
    rows: list[tuple[str, str]] = []
    if not isinstance(instance, Mapping):
        return rows
    for key, value in instance.items():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    rows.append((str(key), item))
                elif isinstance(item, Mapping):
                    quotes = [v for k, v in item.items() if isinstance(v, str) and is_evidence_name(str(k))]
                    rows.extend((str(key), q) for q in quotes[:1])
        elif isinstance(value, str) and is_evidence_name(str(key)):
            rows.append((str(key), value))
    return rows


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _single_quoted(value: Any) -> str:
    """JSON written with single-quoted strings: the commonest 'almost JSON' from chatty models."""
    if isinstance(value, str):
        return "'" + json.dumps(value, ensure_ascii=False)[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return (
            "{" + ", ".join(f"{_single_quoted(str(k))}: {_single_quoted(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_single_quoted(v) for v in value) + "]"
    return json.dumps(value)


def render(style: str, instance: Any, rng: random.Random) -> tuple[str, str]:
    """(content, finish_reason) of ``instance`` written in ``style`` (never 'mixed')."""
    text = json.dumps(instance, indent=2, ensure_ascii=False)
    if style == "bare":
        return text, "stop"
    if style == "fenced":
        return f"```json\n{text}\n```", "stop"
    if style == "prose":
        return (
            "Here is my analysis of the text, following the requested format.\n\n"
            f"{text}\n\nThe scores reflect the passages quoted as evidence.",
            "stop",
        )
    if style == "nested":
        if isinstance(instance, Mapping):
            scores = {k: v for k, v in instance.items() if _is_number(v)}
            details = {k: v for k, v in instance.items() if k not in scores}
        else:
            scores, details = {}, instance
        nested = {"analysis": {"scores": scores, "details": details}}
        return json.dumps(nested, indent=2, ensure_ascii=False), "stop"
    if style == "csv_v5":
        scores = _numeric_fields(instance)
        evidence = _evidence_rows(instance)
        return (
            "Analysis complete. The scores and evidence follow as CSV.\n\n"
            f"{SCORES_START}\n{_csv_text([list(scores), list(scores.values())])}{SCORES_END}\n\n"
            f"{EVIDENCE_START}\n{_csv_text([('field', 'quote'), *evidence])}{EVIDENCE_END}\n",
            "stop",
        )
    if style == "truncated":
        cut = max(1, int(len(text) * (0.35 + 0.3 * rng.random())))
        return text[:cut], "length"
    if style == "malformed":
        if rng.random() < 0.5 and isinstance(instance, Mapping | list) and instance:
            closing = text.rstrip()[-1]
            body = text.rstrip()[:-1].rstrip()
            return f"{body},\n{closing}", "stop"  # trailing comma
        return _single_quoted(instance), "stop"
    raise ValueError(f"unknown style {style!r}")


def pick_style(config: SimulatedConfig, digest: str) -> str:
    if config.style != "mixed":
        return config.style
    weights = [(s, w) for s, w in config.style_weights.items() if w > 0]
    point = _unit("style", config.seed, digest) * sum(w for _, w in weights)
    for style, weight in weights:
        point -= weight
        if point < 0:
            return style
    return weights[-1][0]


# --------------------------------------------------------------------------------------------------
# Server state and the app
# --------------------------------------------------------------------------------------------------


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _ModelStats:
    served: int = 0
    failed: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)


class _State:
    """Everything that changes while the server runs. Mutated only on the event loop's thread."""

    def __init__(self, config: SimulatedConfig, ledger: Path | None) -> None:
        self.config = config
        self.config_version = 1
        self.started = time.monotonic()
        self.clock_zero = self.started
        self.attempts: dict[str, int] = {}
        self.rule_counts = [0] * len(config.faults)
        self.stats: dict[str, _ModelStats] = {}
        self.ledger = ledger
        self._ledger_lock = threading.Lock()
        if ledger is not None:
            ledger.parent.mkdir(parents=True, exist_ok=True)

    def replace_config(self, config: SimulatedConfig, *, reset_clock: bool) -> None:
        self.config = config
        self.config_version += 1
        self.rule_counts = [0] * len(config.faults)
        if reset_clock:
            self.clock_zero = time.monotonic()

    def choose_fault(self, alias: str, digest: str, attempt: int) -> FaultRule | None:
        """Count the request against every rule it matches, then return the first that fires."""
        elapsed = time.monotonic() - self.clock_zero
        fired: FaultRule | None = None
        for index, rule in enumerate(self.config.faults):
            if rule.models is not None and alias not in rule.models:
                continue
            if (rule.start_s is not None and elapsed < rule.start_s) or (
                rule.end_s is not None and elapsed >= rule.end_s
            ):
                continue
            self.rule_counts[index] += 1
            if rule.first_n is not None and self.rule_counts[index] > rule.first_n:
                continue
            if fired is None and _unit("fault", self.config.seed, index, digest, attempt) < rule.rate:
                fired = rule
        return fired

    def count(self, alias: str, status: int, fault: str | None) -> None:
        stats = self.stats.setdefault(alias, _ModelStats())
        if status == 200:
            stats.served += 1
        else:
            stats.failed += 1
        stats.by_status[str(status)] = stats.by_status.get(str(status), 0) + 1
        if fault:
            stats.faults[fault] = stats.faults.get(fault, 0) + 1

    def stats_json(self) -> dict[str, Any]:
        models = {alias: vars(s) for alias, s in sorted(self.stats.items())}
        served = sum(s.served for s in self.stats.values())
        failed = sum(s.failed for s in self.stats.values())
        return {
            "total": {"served": served, "failed": failed, "requests": served + failed},
            "models": models,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "clock_s": round(time.monotonic() - self.clock_zero, 3),
            "config_version": self.config_version,
            "ledger": str(self.ledger) if self.ledger else None,
        }

    async def write_ledger(self, entry: Mapping[str, Any]) -> None:
        """Append one line, flushed and fsync'd, before the response leaves (crash-test evidence)."""
        if self.ledger is None:
            return
        await anyio.to_thread.run_sync(self._append_line, json.dumps(entry, ensure_ascii=False) + "\n")

    def _append_line(self, line: str) -> None:
        assert self.ledger is not None
        with self._ledger_lock:
            new_file = not self.ledger.exists()
            with open(self.ledger, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            if new_file:  # make the new directory entry durable too
                dir_fd = os.open(self.ledger.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)


@dataclass
class _Call:
    """What the ledger and the stats need to know about one chat-completion request."""

    alias: str | None = None
    messages: Any = None
    seed: Any = None
    request_key: str | None = None
    attempt: int = 0
    style: str | None = None
    fault: str | None = None
    version: str | None = None
    response_id: str | None = None
    finish_reason: str | None = None


async def _finish(state: _State, call: _Call, response: Response) -> Response:
    status = response.status_code
    await state.write_ledger(
        {
            "ts": _now_iso(),
            "model": call.alias,
            "status": status,
            "style": call.style,
            "fault": call.fault,
            "messages_sha256": sha256_text(canonical_json(call.messages))
            if call.messages is not None
            else None,
            "seed": call.seed,
            "x_mva_request_key": call.request_key,
            "served_ok": status == 200,
            "attempt": call.attempt,
            "model_version": call.version,
            "response_id": call.response_id,
            "finish_reason": call.finish_reason,
        }
    )
    state.count(call.alias or "<none>", status, call.fault)
    return response


def _fault_response(rule: FaultRule, alias: str, prompt_tokens: int) -> JSONResponse:
    kind = rule.kind
    if kind == "429":
        wait = rule.retry_after
        return JSONResponse(
            _error_body(
                f"Rate limit reached for {alias} in organization org-simulated on requests per min (RPM): "
                f"Limit 60, Used 60, Requested 1. Please try again in {wait:g}s. "
                "Visit https://platform.openai.com/account/rate-limits to learn more.",
                "requests",
                "rate_limit_exceeded",
            ),
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))},
        )
    if kind == "500":
        return JSONResponse(
            _error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            status_code=500,
        )
    if kind == "503":
        return JSONResponse(
            _error_body("The engine is currently overloaded, please try again later.", "server_error", None),
            status_code=503,
        )
    if kind == "hang":
        return JSONResponse(
            _error_body(
                "The upstream did not answer in time (simulated hang).", "timeout", "gateway_timeout"
            ),
            status_code=504,
        )
    if kind == "context_length":
        return JSONResponse(
            _error_body(
                f"This model's maximum context length is 8192 tokens. However, your messages resulted in "
                f"{max(prompt_tokens, 8193)} tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            ),
            status_code=400,
        )
    if kind == "auth":
        return JSONResponse(
            _error_body(
                "Incorrect API key provided: sk-sim***. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            ),
            status_code=401,
        )
    raise ValueError(f"fault {kind!r} has no error response")


async def _sleep_latency(config: SimulatedConfig, digest: str, attempt: int) -> None:
    latency = config.effective_latency_s()
    if latency <= 0:
        return
    jitter = config.latency_jitter * (2 * _unit("latency", config.seed, digest, attempt) - 1)
    await asyncio.sleep(latency * (1 + jitter))


def _stream(body: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """The same answer as server-sent events, for clients that ask for ``stream: true``."""

    async def events() -> AsyncIterator[bytes]:
        choice = body["choices"][0]
        content = choice["message"]["content"]
        base = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")}
        base["object"] = "chat.completion.chunk"
        pieces = [{"role": "assistant", "content": ""}] + [
            {"content": content[i : i + 64]} for i in range(0, len(content), 64)
        ]
        for delta in pieces:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]}
        yield f"data: {json.dumps(final)}\n\n".encode()
        if include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': body['usage']})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return events()


async def _chat_completions(request: Request) -> Response:
    state: _State = request.app.state.sim
    config = state.config
    call = _Call(request_key=request.headers.get(REQUEST_KEY_HEADER))
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return await _finish(
            state,
            call,
            JSONResponse(_error_body("The body is not a JSON object.", "invalid_request_error", None), 400),
        )
    requested = payload.get("model")
    messages = payload.get("messages")
    call.messages, call.seed = messages, payload.get("seed")
    if isinstance(requested, str) and requested.strip():
        call.alias = alias_of(requested, config)
    if call.alias is None or not isinstance(messages, list) or not messages:
        problem = (
            "you must provide a model parameter"
            if call.alias is None
            else "'messages' must be a non-empty list"
        )
        return await _finish(
            state, call, JSONResponse(_error_body(problem, "invalid_request_error", None), 400)
        )
    alias = call.alias
    call.version = config.version_of(alias)
    digest = sha256_text(canonical_json({"model": alias, "messages": messages, "seed": call.seed}))
    call.attempt = state.attempts.get(digest, 0)
    state.attempts[digest] = call.attempt + 1
    prompt_chars = sum(len(_content_text(m.get("content"))) for m in messages if isinstance(m, Mapping))
    prompt_tokens = max(1, math.ceil(prompt_chars / 4))

    rule = state.choose_fault(alias, digest, call.attempt)
    if rule is not None:
        call.fault = rule.kind
        if rule.kind in ("500", "503"):
            await _sleep_latency(config, digest, call.attempt)
        elif rule.kind == "hang":
            await asyncio.sleep(rule.hang_s)
        if rule.kind not in ("truncated", "malformed"):
            return await _finish(state, call, _fault_response(rule, alias, prompt_tokens))

    call.style = call.fault if call.fault else pick_style(config, digest)
    rng = random.Random(int(sha256_text(canonical_json(["answer", config.seed, digest])), 16))
    instance = fill_schema(schema_of(payload.get("response_format")), rng, last_user_text(messages))
    content, finish_reason = render(call.style, instance, rng)
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > 0 and len(content) > max_tokens * 4:
        content, finish_reason = content[: max_tokens * 4], "length"
    completion_tokens = max(1, math.ceil(len(content) / 4))
    call.finish_reason = finish_reason
    call.response_id = "chatcmpl-sim" + sha256_text(f"{digest}:{call.attempt}:{config.seed}")[:24]
    await _sleep_latency(config, digest, call.attempt)

    body = {
        "id": call.response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.version,
        "system_fingerprint": "fp_sim_" + sha256_text(call.version)[:10],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    headers = {"x-sim-style": call.style, "x-sim-attempt": str(call.attempt)}
    if call.fault:
        headers["x-sim-fault"] = call.fault
    response: Response
    if payload.get("stream"):
        options = payload.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        response = StreamingResponse(
            _stream(body, include_usage), media_type="text/event-stream", headers=headers
        )
    else:
        response = JSONResponse(body, headers=headers)
    return await _finish(state, call, response)


async def _models(request: Request) -> JSONResponse:
    state: _State = request.app.state.sim
    aliases = sorted(set(state.config.model_versions) | (set(state.stats) - {"<none>"}))
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": alias, "object": "model", "created": 0, "owned_by": "mva-simulated"}
                for alias in aliases
            ],
        }
    )


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _stats(request: Request) -> JSONResponse:
    state: _State = request.app.state.sim
    return JSONResponse(state.stats_json())


async def _config(request: Request) -> JSONResponse:
    """GET: the running config. POST: replace it (``?reset_clock=1`` restarts the fault clock)."""
    state: _State = request.app.state.sim
    if request.method == "POST":
        try:
            config = SimulatedConfig.model_validate(await request.json())
        except ValidationError as exc:
            return JSONResponse(
                {"error": {"message": "invalid config", "details": json.loads(exc.json())}}, 422
            )
        except ValueError:
            return JSONResponse({"error": {"message": "the body is not JSON"}}, 400)
        reset = request.query_params.get("reset_clock", "").lower() in ("1", "true", "yes")
        state.replace_config(config, reset_clock=reset)
    return JSONResponse(
        {"config": state.config.model_dump(mode="json"), "config_version": state.config_version}
    )


def create_app(config: SimulatedConfig | None = None, ledger: Path | None = None) -> Starlette:
    """The ASGI app; its state (config, counters, ledger) lives in ``app.state.sim``."""
    check_latency_env()
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
            Route("/chat/completions", _chat_completions, methods=["POST"]),
            Route("/v1/models", _models, methods=["GET"]),
            Route("/models", _models, methods=["GET"]),
            Route("/health", _health, methods=["GET"]),
            Route("/admin/stats", _stats, methods=["GET"]),
            Route("/admin/config", _config, methods=["GET", "POST"]),
        ]
    )
    app.state.sim = _State(config or SimulatedConfig(), ledger)
    return app


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


@dataclass
class SimulatedServer:
    """A provider running in a background thread of this process (for tests)."""

    url: str
    port: int
    app: Starlette
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def api_base(self) -> str:
        """What a proxy deployment's ``api_base`` should be."""
        return f"{self.url}/v1"

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> SimulatedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_in_thread(
    config: SimulatedConfig | None = None,
    port: int = 0,
    *,
    ledger: Path | None = None,
    timeout_s: float = 10.0,
) -> SimulatedServer:
    """Start the provider on 127.0.0.1 in a daemon thread; ``port=0`` lets the OS pick a free one."""
    app = create_app(config, ledger)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, name=f"simulated-provider-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ProviderError(
                f"the simulated provider did not start on 127.0.0.1:{port}",
                hint="is the port already in use?",
            )
        time.sleep(0.01)
    bound = int(server.servers[0].sockets[0].getsockname()[1])
    return SimulatedServer(
        url=f"http://127.0.0.1:{bound}", port=bound, app=app, _server=server, _thread=thread
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mva_dagster.providers.simulated",
        description="Deterministic OpenAI-compatible provider for tests and benchmarks (127.0.0.1 only).",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", type=Path, help="YAML or JSON SimulatedConfig")
    parser.add_argument("--ledger", type=Path, help="append one fsync'd JSON line per request here")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else SimulatedConfig()
        app = create_app(config, args.ledger.resolve() if args.ledger else None)
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"simulated provider on http://127.0.0.1:{args.port}/v1 (style={config.style})", flush=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=2,  # a pending `hang` must not hold up stop_service
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
