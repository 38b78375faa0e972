"""The simulated provider, exercised over real HTTP (in-thread servers, one subprocess for the CLI)."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from mva_dagster.errors import ProviderError
from mva_dagster.providers._schema_fill import fill_schema
from mva_dagster.providers.simulated import (
    EVIDENCE_END,
    EVIDENCE_START,
    LATENCY_ENV,
    SCORES_END,
    SCORES_START,
    SimulatedConfig,
    SimulatedServer,
    load_config,
    serve_in_thread,
)
from mva_dagster.records import canonical_json, sha256_text
from mva_dagster.services import free_port, python_module_argv, start_service, stop_service

DOCUMENT = (
    "Tonight I want to speak plainly about the work ahead of us.\n"
    "We will rebuild the roads and bridges that connect our towns, and we will do it together.\n"
    "No family should have to choose between paying rent and paying for medicine.\n"
    "Our opponents say this cannot be done; they said the same thing about every great project.\n"
    "I ask every citizen to hold us to these promises, and to judge us by what we deliver."
)
MESSAGES = [
    {"role": "system", "content": "You are an expert discourse analyst. Answer in JSON."},
    {"role": "user", "content": f"Analyse the following text.\n\n{DOCUMENT}"},
]
USER_TEXT = MESSAGES[-1]["content"]


def _contract_34() -> dict[str, Any]:
    """A flat framework contract: 10 dimensions x (score, salience, evidence) + 4 document fields."""
    properties: dict[str, Any] = {}
    for i in range(1, 11):
        properties[f"dim_{i:02d}_score"] = {"type": "number", "minimum": 0, "maximum": 1}
        properties[f"dim_{i:02d}_salience"] = {"type": "number", "minimum": 0, "maximum": 1}
        properties[f"dim_{i:02d}_evidence"] = {
            "type": "array",
            "items": {"type": "string", "maxLength": 60},
            "minItems": 1,
            "maxItems": 3,
        }
    properties["confidence"] = {"type": "number", "minimum": 0, "maximum": 1}
    properties["overall_tone"] = {"type": "string", "enum": ["hopeful", "fearful", "mixed"]}
    properties["strategy"] = {"type": "string", "enum": ["unifying", "dividing"]}
    properties["summary"] = {"type": "string", "maxLength": 40}
    assert len(properties) == 34
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


CONTRACT_34 = _contract_34()

SCHEMA_DEFINITIONS = {  # draft-7 style $ref
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "definitions": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "quoted": {
            "type": "object",
            "properties": {
                "score": {"$ref": "#/definitions/score"},
                "quotes": {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 2},
            },
            "required": ["score", "quotes"],
            "additionalProperties": False,
        },
    },
    "properties": {
        "hope": {"$ref": "#/definitions/quoted"},
        "fear": {"$ref": "#/definitions/quoted"},
    },
    "required": ["hope", "fear"],
}

SCHEMA_DEFS_AND_KINDS = {  # 2020-12 $defs plus every kind the generator claims to honour
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "item": {
            "type": "object",
            "properties": {
                "evidence_text": {"type": "string", "maxLength": 30},
                "weight": {"type": "integer"},
            },
            "required": ["evidence_text", "weight"],
        }
    },
    "properties": {
        "count": {"type": "integer", "minimum": 3, "maximum": 7},
        "odd": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 12},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.01},
        "step": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
        "flag": {"type": "boolean"},
        "maybe": {"type": ["null", "string"], "maxLength": 5},
        "either": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 5, "maximum": 6}]},
        "label": {"type": "string", "minLength": 3, "maxLength": 8},
        "key_quote": {"type": "string", "maxLength": 25},
        "fixed": {"const": "v1"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 3, "maxItems": 4},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "uniqueItems": True},
        "when": {"type": "string", "format": "date-time"},
        "meta": {
            "allOf": [{"properties": {"a": {"type": "number"}}, "required": ["a"]}, {"required": ["b"]}]
        },
    },
    "required": ["count", "items", "meta"],
}

SCHEMAS = {
    "contract_34": CONTRACT_34,
    "definitions": SCHEMA_DEFINITIONS,
    "defs_and_kinds": SCHEMA_DEFS_AND_KINDS,
}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

HTTP = httpx.Client(timeout=30)  # one client: a new one per call costs ~0.1 s (SSL context set-up)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture
def start() -> Iterator[Callable[..., SimulatedServer]]:
    """Start in-thread servers on free ports; all are stopped at the end of the test."""
    servers: list[SimulatedServer] = []

    def _start(config: SimulatedConfig | None = None, **kwargs: Any) -> SimulatedServer:
        server = serve_in_thread(config or SimulatedConfig(), **kwargs)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


def faulty(rule: dict[str, Any]) -> SimulatedConfig:
    return SimulatedConfig.model_validate({"faults": [rule]})


def response_format(schema: dict[str, Any] | None) -> dict[str, Any]:
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "contract", "schema": schema, "strict": True}}


def chat(
    server: SimulatedServer,
    *,
    schema: dict[str, Any] | None = CONTRACT_34,
    seed: int | None = 1,
    model: str = "sim-model",
    messages: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": messages or MESSAGES, **extra}
    if seed is not None:
        body["seed"] = seed
    body["response_format"] = response_format(schema)
    return HTTP.post(server.url + path, json=body, headers=headers or {}, timeout=30)


def content_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def set_config(server: SimulatedServer, reset_clock: bool = False, **fields: Any) -> None:
    url = server.url + "/admin/config" + ("?reset_clock=1" if reset_clock else "")
    response = HTTP.post(url, json=fields)
    assert response.status_code == 200, response.text


def numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


def quotes_in(value: Any, name: str = "", in_array: bool = False) -> list[str]:
    """Strings the provider promises to quote verbatim (inside arrays, or evidence/quote-named)."""
    if isinstance(value, str):
        evidence_name = "evidence" in name.lower() or "quote" in name.lower()
        return [value] if in_array or evidence_name else []
    if isinstance(value, dict):
        return [q for k, v in value.items() for q in quotes_in(v, k, False)]
    if isinstance(value, list):
        return [q for v in value for q in quotes_in(v, name, True)]
    return []


# --------------------------------------------------------------------------------------------------
# answers: schema instances, quotes, determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_answers_validate_against_the_requested_schema(
    start: Callable[..., SimulatedServer], name: str
) -> None:
    schema = SCHEMAS[name]
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    server = start()
    for seed in range(1, 6):
        instance = json.loads(content_of(chat(server, schema=schema, seed=seed)))
        validator_class(schema).validate(instance)
        found = quotes_in(instance)
        assert found, "every schema here has evidence-like strings"
        for quote in found:
            assert quote and quote in USER_TEXT, f"not a verbatim quote: {quote!r}"
            assert "\n" not in quote


def test_contract_34_fields_are_all_present_and_in_range(start: Callable[..., SimulatedServer]) -> None:
    instance = json.loads(content_of(chat(start(), schema=CONTRACT_34)))
    assert set(instance) == set(CONTRACT_34["properties"])
    scores = [v for k, v in instance.items() if k.endswith(("_score", "_salience"))]
    assert len(scores) == 20 and all(0 <= s <= 1 for s in scores)
    assert all(len(q) <= 60 for k, v in instance.items() if k.endswith("_evidence") for q in v)


def test_schema_filler_edge_cases() -> None:
    import random

    empty_text = fill_schema({"type": "array", "items": {"type": "string"}}, random.Random(1), "")
    assert len(empty_text) == 2 and all(isinstance(s, str) and s for s in empty_text)
    recursive = {
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}},
        "$ref": "#/$defs/node",
    }
    jsonschema.Draft202012Validator(recursive).validate(fill_schema(recursive, random.Random(2), "a b c d"))
    draft4 = {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "exclusiveMinimum": True,
        "exclusiveMaximum": True,
    }
    assert all(0 < fill_schema(draft4, random.Random(s), "") < 1 for s in range(50))
    integer_default = [fill_schema({"type": "integer"}, random.Random(s), "") for s in range(20)]
    assert all(isinstance(i, int) and 0 <= i <= 10 for i in integer_default)


def test_without_a_schema_the_answer_is_a_small_json_object(start: Callable[..., SimulatedServer]) -> None:
    server = start()
    for response_format_field in ({"response_format": {"type": "json_object"}}, {}):
        body = {"model": "m", "messages": MESSAGES, "seed": 3, **response_format_field}
        answer = json.loads(content_of(HTTP.post(server.url + "/v1/chat/completions", json=body)))
        assert set(answer) == {"summary", "score", "confidence", "evidence"}
        assert 0 <= answer["score"] <= 1 and all(q in USER_TEXT for q in answer["evidence"])


def test_answers_are_deterministic_and_seeds_change_numbers(start: Callable[..., SimulatedServer]) -> None:
    server = start()
    first = content_of(chat(server, seed=1))
    assert content_of(chat(server, seed=1)) == first
    other_seed = json.loads(content_of(chat(server, seed=2)))
    assert numbers(other_seed) != numbers(json.loads(first))
    assert content_of(chat(server, seed=1, model="another")) != first
    assert content_of(chat(server, seed=None)) == content_of(chat(server, seed=None))

    # A second server with the same config answers the same; another config seed does not.
    assert content_of(chat(start(), seed=1)) == first
    assert numbers(json.loads(content_of(chat(start(SimulatedConfig(seed=7)), seed=1)))) != numbers(
        json.loads(first)
    )


# --------------------------------------------------------------------------------------------------
# styles
# --------------------------------------------------------------------------------------------------


def test_each_style_wraps_the_same_answer(start: Callable[..., SimulatedServer]) -> None:
    server = start()
    bare_text = content_of(chat(server))
    bare = json.loads(bare_text)

    def styled(style: str) -> tuple[str, str]:
        set_config(server, style=style)
        response = chat(server)
        assert response.headers["x-sim-style"] == style
        return content_of(response), response.json()["choices"][0]["finish_reason"]

    text, _ = styled("fenced")
    assert text.startswith("```json\n") and text.endswith("\n```")
    assert json.loads(text[len("```json\n") : -len("\n```")]) == bare

    text, _ = styled("prose")
    before, after = text[: text.index("{")], text[text.rindex("}") + 1 :]
    assert before.strip() and after.strip()
    assert json.loads(text[len(before) : len(text) - len(after)]) == bare

    text, _ = styled("nested")
    analysis = json.loads(text)["analysis"]
    numeric = {k: v for k, v in bare.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert analysis["scores"] == numeric and len(numeric) == 21
    assert analysis["details"] == {k: v for k, v in bare.items() if k not in numeric}

    text, _ = styled("csv_v5")
    scores_block = text[text.index(SCORES_START) + len(SCORES_START) : text.index(SCORES_END)]
    header, values = list(csv.reader(io.StringIO(scores_block.strip())))
    assert dict(zip(header, map(float, values), strict=True)) == numeric
    evidence_block = text[text.index(EVIDENCE_START) + len(EVIDENCE_START) : text.index(EVIDENCE_END)]
    rows = list(csv.reader(io.StringIO(evidence_block.strip())))
    assert rows[0] == ["field", "quote"]
    assert sorted(rows[1:]) == sorted([k, q] for k, v in bare.items() if isinstance(v, list) for q in v)

    text, finish = styled("truncated")
    assert finish == "length" and bare_text.startswith(text) and len(text) < len(bare_text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)

    seen_variants: set[str] = set()
    for seed in range(1, 12):
        set_config(server, style="bare")
        expected = json.loads(content_of(chat(server, seed=seed)))
        set_config(server, style="malformed")
        text = content_of(chat(server, seed=seed))
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        if re.search(r",\s*}\s*$", text):
            seen_variants.add("trailing_comma")
            assert json.loads(re.sub(r",\s*}\s*$", "}", text)) == expected
        else:
            seen_variants.add("single_quotes")
            assert ast.literal_eval(text) == expected
    assert seen_variants == {"trailing_comma", "single_quotes"}


def test_mixed_style_is_deterministic_per_request_and_varied(start: Callable[..., SimulatedServer]) -> None:
    config = SimulatedConfig(style="mixed", style_weights={"bare": 1, "fenced": 1, "nested": 1, "csv_v5": 1})
    server = start(config)
    styles = [chat(server, seed=seed).headers["x-sim-style"] for seed in range(40)]
    assert set(styles) == {"bare", "fenced", "nested", "csv_v5"}
    assert [chat(server, seed=seed).headers["x-sim-style"] for seed in range(40)] == styles


# --------------------------------------------------------------------------------------------------
# the OpenAI envelope, models, admin endpoints
# --------------------------------------------------------------------------------------------------


def test_response_is_an_openai_chat_completion(start: Callable[..., SimulatedServer]) -> None:
    server = start(SimulatedConfig(model_versions={"gemini-2.5-flash": "gemini-2.5-flash-001"}))
    body = chat(server, model="openai/gemini-2.5-flash", path="/chat/completions").json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "gemini-2.5-flash-001"
    assert re.fullmatch(r"fp_sim_[0-9a-f]{10}", body["system_fingerprint"])
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    usage = body["usage"]
    prompt_chars = sum(len(m["content"]) for m in MESSAGES)
    assert abs(usage["prompt_tokens"] - prompt_chars / 4) <= 1
    assert abs(usage["completion_tokens"] - len(choice["message"]["content"]) / 4) <= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    assert chat(server, model="plain").json()["model"] == "plain-sim-001"
    assert chat(server, model="gemini-2.5-flash-001").json()["model"] == "gemini-2.5-flash-001"
    assert HTTP.get(server.url + "/health").json() == {"status": "ok"}
    ids = [m["id"] for m in HTTP.get(server.api_base + "/models").json()["data"]]
    assert ids == ["gemini-2.5-flash", "plain"]


def test_max_tokens_truncates_and_streaming_sends_the_same_answer(
    start: Callable[..., SimulatedServer],
) -> None:
    server = start()
    full = content_of(chat(server))
    short = chat(server, max_tokens=20).json()["choices"][0]
    assert short["finish_reason"] == "length" and short["message"]["content"] == full[:80]

    body = {"model": "sim-model", "messages": MESSAGES, "seed": 1, "stream": True}
    body["response_format"] = response_format(CONTRACT_34)
    body["stream_options"] = {"include_usage": True}
    with HTTP.stream("POST", server.api_base + "/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == full
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_bad_requests_are_400(start: Callable[..., SimulatedServer]) -> None:
    server = start()
    url = server.api_base + "/chat/completions"
    assert HTTP.post(url, content=b"{not json").status_code == 400
    assert HTTP.post(url, json={"messages": MESSAGES}).status_code == 400
    missing = HTTP.post(url, json={"model": "m", "messages": []})
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"


def test_admin_config_changes_the_model_version_mid_run(start: Callable[..., SimulatedServer]) -> None:
    server = start()
    before = chat(server, model="claude").json()
    assert before["model"] == "claude-sim-001"
    set_config(server, model_versions={"claude": "claude-sonnet-4-20250514"})
    after = chat(server, model="claude").json()
    assert after["model"] == "claude-sonnet-4-20250514"
    assert after["system_fingerprint"] != before["system_fingerprint"]
    assert after["choices"][0]["message"]["content"] == before["choices"][0]["message"]["content"]

    current = HTTP.get(server.url + "/admin/config").json()
    assert current["config"]["model_versions"] == {"claude": "claude-sonnet-4-20250514"}
    assert current["config_version"] == 2
    rejected = HTTP.post(server.url + "/admin/config", json={"style": "poetry"})
    assert rejected.status_code == 422
    assert HTTP.get(server.url + "/admin/config").json()["config_version"] == 2


def test_admin_stats_count_served_and_failed_per_model(start: Callable[..., SimulatedServer]) -> None:
    server = start(faulty({"kind": "500", "models": ["b"], "first_n": 2}))
    for model in ("a", "a", "b", "b", "b"):
        chat(server, model=model)
    stats = HTTP.get(server.url + "/admin/stats").json()
    assert stats["total"] == {"served": 3, "failed": 2, "requests": 5}
    assert stats["models"]["a"] == {"served": 2, "failed": 0, "by_status": {"200": 2}, "faults": {}}
    assert stats["models"]["b"] == {
        "served": 1,
        "failed": 2,
        "by_status": {"500": 2, "200": 1},
        "faults": {"500": 2},
    }
    assert stats["uptime_s"] >= 0 and stats["ledger"] is None


# --------------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------------


def test_429_storm_in_a_time_window_with_retry_after(start: Callable[..., SimulatedServer]) -> None:
    server = start()
    set_config(
        server, reset_clock=True, faults=[{"kind": "429", "start_s": 0, "end_s": 0.6, "retry_after": 2}]
    )
    response = chat(server)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2" and response.headers["retry-after-ms"] == "2000"
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "Rate limit reached for sim-model" in error["message"]
    assert chat(server, seed=9).status_code == 429
    time.sleep(0.7)
    assert chat(server).status_code == 200

    # A window that has not opened yet does nothing.
    set_config(server, reset_clock=True, faults=[{"kind": "429", "start_s": 60}])
    assert chat(server).status_code == 200


def test_fault_rate_is_a_share_and_retries_can_succeed(start: Callable[..., SimulatedServer]) -> None:
    server = start(faulty({"kind": "429", "rate": 0.5, "retry_after": 0}))
    statuses = [chat(server, seed=seed).status_code for seed in range(60)]
    assert set(statuses) == {200, 429}
    assert 15 <= statuses.count(429) <= 45
    failing_seed = statuses.index(429)
    retries = [chat(server, seed=failing_seed).status_code for _ in range(10)]
    assert 200 in retries  # the attempt counter changes the draw


def test_first_n_and_model_filters(start: Callable[..., SimulatedServer]) -> None:
    server = start(faulty({"kind": "503", "first_n": 3, "models": ["flaky"]}))
    assert chat(server, model="steady").status_code == 200
    assert [chat(server, model="flaky").status_code for _ in range(5)] == [503, 503, 503, 200, 200]
    # Replacing the config restarts the first_n counters.
    set_config(server, faults=[{"kind": "503", "first_n": 1}])
    assert [chat(server, model="steady").status_code for _ in range(2)] == [503, 200]


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("500", 500, None),
        ("503", 503, None),
        ("context_length", 400, "context_length_exceeded"),
        ("auth", 401, "invalid_api_key"),
    ],
)
def test_error_faults_look_like_openai_errors(
    start: Callable[..., SimulatedServer], kind: str, status: int, code: str | None
) -> None:
    server = start(faulty({"kind": kind}))
    response = chat(server)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error


def test_output_faults_and_hang(start: Callable[..., SimulatedServer]) -> None:
    server = start()
    bare = content_of(chat(server))
    set_config(server, faults=[{"kind": "truncated"}])
    response = chat(server)
    assert response.headers["x-sim-fault"] == "truncated"
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert bare.startswith(content_of(response)) and content_of(response) != bare

    set_config(server, faults=[{"kind": "malformed"}])
    with pytest.raises(json.JSONDecodeError):
        json.loads(content_of(chat(server)))

    set_config(server, faults=[{"kind": "hang", "hang_s": 0.3}])
    began = time.monotonic()
    assert chat(server).status_code == 504
    assert time.monotonic() - began >= 0.3 * 0.8


# --------------------------------------------------------------------------------------------------
# latency, ledger, the CLI
# --------------------------------------------------------------------------------------------------


def test_latency_from_config_and_env_var(
    start: Callable[..., SimulatedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LATENCY_ENV, raising=False)
    server = start(SimulatedConfig(latency_s=0.25, latency_jitter=0.2))
    began = time.monotonic()
    content_of(chat(server))
    assert time.monotonic() - began >= 0.25 * 0.8 * 0.8  # jitter may take 20 % off

    monkeypatch.setenv(LATENCY_ENV, "0.3")
    server = start(SimulatedConfig(latency_s=0))
    began = time.monotonic()
    content_of(chat(server))
    assert time.monotonic() - began >= 0.3 * 0.8

    monkeypatch.setenv(LATENCY_ENV, "soon")
    with pytest.raises(ProviderError, match=LATENCY_ENV):
        serve_in_thread(SimulatedConfig())


def test_ledger_has_one_fsynced_line_per_request(
    start: Callable[..., SimulatedServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:  # observes the real call; the data still goes to disk
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    ledger = tmp_path / "ledger" / "served.jsonl"
    server = start(faulty({"kind": "429", "first_n": 1}), ledger=ledger)
    assert chat(server, headers={"x-mva-request-key": "k-1"}).status_code == 429
    lines = ledger.read_text().splitlines()
    assert len(lines) == 1  # written before the response arrived
    assert chat(server, headers={"x-mva-request-key": "k-1"}, seed=4).status_code == 200
    chat(server, seed=None, model="other")

    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(entries) == 3 and len(synced) >= 3
    failed, served, anonymous = entries
    for entry in entries:
        assert {"ts", "model", "status", "style", "fault", "messages_sha256", "seed"} <= set(entry)
        assert entry["messages_sha256"] == sha256_text(canonical_json(MESSAGES))
    assert {"model": "sim-model", "status": 429, "fault": "429", "served_ok": False}.items() <= failed.items()
    assert failed["x_mva_request_key"] == "k-1" and failed["style"] is None
    assert served["served_ok"] is True and served["status"] == 200 and served["seed"] == 4
    assert served["style"] == "bare" and served["model_version"] == "sim-model-sim-001"
    assert anonymous["x_mva_request_key"] is None and anonymous["seed"] is None
    stats = HTTP.get(server.url + "/admin/stats").json()
    assert stats["total"]["requests"] == len(entries) and stats["ledger"] == str(ledger)


def test_cli_subprocess_with_yaml_config_and_ledger(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text(
        "style: fenced\nmodel_versions: {gpt-sim: gpt-sim-2025}\n"
        "faults:\n  - kind: 429\n    first_n: 1\n    retry_after: 0\n"
    )
    ledger = tmp_path / "ledger.jsonl"
    port = free_port()
    argv = python_module_argv(
        "mva_dagster.providers.simulated",
        "--port",
        str(port),
        "--config",
        str(config),
        "--ledger",
        str(ledger),
    )
    state = start_service(
        "simulated",
        argv,
        state_dir=tmp_path / "state",
        port=port,
        health_path="/health",
        timeout_s=30,
        env={LATENCY_ENV: "0.2"},
    )
    try:
        server_url = f"http://127.0.0.1:{port}"
        body = {"model": "openai/gpt-sim", "messages": MESSAGES, "seed": 1}
        first = HTTP.post(server_url + "/v1/chat/completions", json=body, timeout=10)
        assert first.status_code == 429 and first.headers["retry-after"] == "0"
        began = time.monotonic()
        second = HTTP.post(server_url + "/v1/chat/completions", json=body, timeout=10)
        assert time.monotonic() - began >= 0.2 * 0.8
        assert second.json()["model"] == "gpt-sim-2025"
        assert second.json()["choices"][0]["message"]["content"].startswith("```json")
        # Killed without warning, the ledger still holds both answers.
        os.kill(int(state["pid"]), signal.SIGKILL)
        entries = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert [e["status"] for e in entries] == [429, 200]
    finally:
        stop_service(tmp_path / "state", "simulated")


def test_load_config_reports_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"style": "bare", "faults": [{"kind": "teapot"}]}))
    with pytest.raises(ProviderError, match="bad.json"):
        load_config(bad)
    good = tmp_path / "good.yml"
    good.write_text("latency_s: 0.5\nfaults: [{kind: 503, rate: 0.1, start_s: 5, end_s: 35}]\n")
    loaded = load_config(good)
    assert loaded.latency_s == 0.5 and loaded.faults[0].kind == "503" and loaded.faults[0].end_s == 35
