"""The offline default provider: a small GGUF model behind an OpenAI-compatible front.

``python -m mva_dagster.providers.local --port P [--model GGUF] [--threads N] [--ctx N]``

llama.cpp's own server (embedded by the prebuilt ``xllamacpp`` wheel, no compile step) runs on an
internal port of 127.0.0.1. The front on ``P`` exists because the JSON-schema grammar does not enforce
everything a schema says, and a small model exploits every gap:

* ``minimum``/``maximum`` on numbers are ignored (scores of 12 and 100 for a 0..1 field were seen):
  answers are parsed and numbers clamped into their bounds, and each clamp is reported
  (``mva_clamped`` in the body, ``x-mva-clamped`` header) so nothing is corrected silently;
* a string without ``maxLength`` lets the model loop inside it until ``max_tokens``: every string
  gets a default ``maxLength`` before the schema is forwarded.

The response's ``model`` is ``<gguf stem>@<first 12 hex of its sha256>``: the exact weights, for
provenance. Requests are served one at a time (one llama.cpp slot); the client uses concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mva_dagster.errors import ProviderError, SetupError
from mva_dagster.providers.model_fetch import check_gguf_file, ensure_local_model, gguf_sha256

HOST = "127.0.0.1"
DEFAULT_CTX = 8192  # the model's trained context; the registry advertises the same window
DEFAULT_STRING_MAX_LENGTH = 200
BACKEND_TIMEOUT_S = 600.0

# Keywords whose value is a map of name -> subschema, a list of subschemas, or one subschema.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "not",
    "contains",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "unevaluatedProperties",
    "propertyNames",
    "additionalItems",
)


def default_threads() -> int:
    """1 thread when the machine is busy (2 threads under load fell to 2-5 tokens/s), else up to 2."""
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return 1 if load > 0.5 * cpus else min(2, cpus)


def model_id_for(path: Path, sha256: str) -> str:
    """``SmolLM2-135M-Instruct-Q4_1@b179c9523d0e``: readable name plus the weights' digest."""
    return f"{path.name.removesuffix('.gguf').replace('.', '-')}@{sha256[:12]}"


# --- schema helpers (pure functions; unit-tested without a server) ---------------------------------


def _is_string_schema(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def with_string_limits(
    schema: Mapping[str, Any],
    default_max_length: int = DEFAULT_STRING_MAX_LENGTH,
) -> dict[str, Any]:
    """A copy of ``schema`` where every string without ``maxLength`` (and without enum/const) gets one.

    Without a bound the grammar lets a small model stay inside a string until ``max_tokens``, which
    returns truncated JSON; a bounded string forces it to close the quote.
    """
    result = copy.deepcopy(dict(schema))

    def visit(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if _is_string_schema(node) and "maxLength" not in node and "enum" not in node and "const" not in node:
            node["maxLength"] = default_max_length
        for key in _SCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                for sub in node[key].values():
                    visit(sub)
        for key in _SCHEMA_LISTS:
            if isinstance(node.get(key), list):
                for sub in node[key]:
                    visit(sub)
        for key in _SCHEMA_ONE:
            sub = node.get(key)
            if isinstance(sub, list):  # draft-4 tuple "items"
                for item in sub:
                    visit(item)
            else:
                visit(sub)

    visit(result)
    return result


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    """Follow local ``$ref`` pointers (``#/$defs/X``, ``#/definitions/X``); siblings of $ref win."""
    for _ in range(32):  # a ref chain longer than this is a cycle
        if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
            return schema
        ref: str = schema["$ref"]
        if not ref.startswith("#"):
            return {k: v for k, v in schema.items() if k != "$ref"}  # remote refs: not followed
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return {k: v for k, v in schema.items() if k != "$ref"}
        merged = dict(target) if isinstance(target, dict) else {}
        merged.update({k: v for k, v in schema.items() if k != "$ref"})
        schema = merged
    return schema


def _json_types(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    return {"object"} if isinstance(value, dict) else set()


def _accepts(schema: Any, value: Any, root: Mapping[str, Any]) -> bool:
    """Whether ``schema``'s declared type admits ``value`` (used to pick an anyOf/oneOf branch)."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return schema is not False
    kind = schema.get("type")
    if kind is None:
        return True
    kinds = set(kind) if isinstance(kind, list) else {kind}
    return bool(kinds & _json_types(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _clamp(value: Any, schema: Any, root: Mapping[str, Any], path: str, out: list[str]) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return value
    for part in schema.get("allOf") or []:
        value = _clamp(value, part, root, path, out)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key) or []
        branch = next((b for b in branches if _accepts(b, value, root)), None)
        if branch is not None:
            value = _clamp(value, branch, root, path, out)
    if _is_number(value):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if isinstance(value, float) and math.isnan(value):
            return value
        if _is_number(low) and value < low:
            out.append(path or "$")
            return low
        if _is_number(high) and value > high:
            out.append(path or "$")
            return high
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        patterns = schema.get("patternProperties") or {}
        extra = schema.get("additionalProperties")
        result: dict[str, Any] = {}
        for key, item in value.items():
            sub: Any = properties.get(key)
            if sub is None:
                sub = next((s for p, s in patterns.items() if re.search(p, key)), None)
            if sub is None and isinstance(extra, dict):
                sub = extra
            result[key] = _clamp(item, sub, root, _join(path, key), out) if sub is not None else item
        return result
    if isinstance(value, list):
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft-4 tuple form
            prefix, items = items, schema.get("additionalItems")
        prefix = prefix if isinstance(prefix, list) else []
        clamped_list: list[Any] = []
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else items
            clamped_list.append(
                _clamp(item, sub, root, _join(path, index), out) if isinstance(sub, dict) else item
            )
        return clamped_list
    return value


def clamp_to_schema(value: Any, schema: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """``value`` with every number moved into its schema's ``minimum``/``maximum``, and the clamped paths.

    The grammar does not enforce numeric bounds, so this is the only place they hold. Exclusive bounds
    clamp to the bound itself (closest representable answer). Paths look like ``a.b[0].c``.
    """
    clamped: list[str] = []
    return _clamp(value, schema, schema, "", clamped), clamped


def request_json_schema(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema a chat request constrains its answer to, if any (OpenAI or llama.cpp form)."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            schema = fmt["json_schema"].get("schema")
            return schema if isinstance(schema, dict) else None
        if fmt.get("type") == "json_object" and isinstance(fmt.get("schema"), dict):
            return dict(fmt["schema"])
    return dict(body["json_schema"]) if isinstance(body.get("json_schema"), dict) else None


def _with_schema(body: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its schema (wherever the request put it) replaced by ``schema``."""
    body = dict(body)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        body["response_format"] = {**fmt, "json_schema": {**fmt["json_schema"], "schema": schema}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        body["response_format"] = {**fmt, "schema": schema}
    else:
        body["json_schema"] = schema
    return body


# --- the HTTP front --------------------------------------------------------------------------------


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status_code=status)


def create_app(
    backend_url: str,
    model_id: str,
    *,
    model_info: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    default_max_length: int = DEFAULT_STRING_MAX_LENGTH,
) -> Starlette:
    """The OpenAI-compatible front that forwards to the llama.cpp server at ``backend_url``.

    ``fingerprint`` becomes the answers' ``system_fingerprint``: the thread count changes the
    numerics, so a seeded answer is reproducible only under the same fingerprint.
    """
    lock = asyncio.Lock()
    started = int(time.time())
    clients: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=backend_url, timeout=BACKEND_TIMEOUT_S) as client:
            clients["backend"] = client
            yield

    async def health(_request: Request) -> JSONResponse:
        try:
            response = await clients["backend"].get("/health", timeout=5.0)
        except httpx.HTTPError as exc:
            return JSONResponse({"status": "error", "detail": type(exc).__name__}, status_code=503)
        if response.status_code != 200:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": model_id})

    async def models(_request: Request) -> JSONResponse:
        entry = {
            "id": model_id,
            "object": "model",
            "created": started,
            "owned_by": "mva-local",
            "meta": dict(model_info or {}),
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat_completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        if body.get("stream"):
            return _error(400, "streaming is not supported by the local provider; send stream=false")
        if "max_tokens" not in body and isinstance(body.get("max_completion_tokens"), int):
            body["max_tokens"] = body["max_completion_tokens"]
        if "seed" in body:
            # A reused KV prefix changes the numerics: the same seeded request then answers differently
            # depending on what was served before it. Reproducibility wins over the saved prompt time.
            body.setdefault("cache_prompt", False)
        schema = request_json_schema(body)
        forwarded = _with_schema(body, with_string_limits(schema, default_max_length)) if schema else body
        forwarded.pop("model", None)  # one model is loaded; its id is ours to report
        began = time.monotonic()
        try:
            async with lock:
                response = await clients["backend"].post("/v1/chat/completions", json=forwarded)
        except httpx.HTTPError as exc:
            return _error(
                502, f"the llama.cpp backend did not answer: {type(exc).__name__}: {exc}", "server_error"
            )
        try:
            data = response.json()
        except ValueError:
            return _error(
                502, f"the llama.cpp backend sent non-JSON (HTTP {response.status_code})", "server_error"
            )
        if response.status_code != 200 or not isinstance(data, dict):
            return JSONResponse(
                data, status_code=response.status_code if response.status_code != 200 else 502
            )
        data["model"] = model_id
        if fingerprint:
            data["system_fingerprint"] = fingerprint
        headers: dict[str, str] = {}
        clamped: list[str] = []
        if schema is not None:
            choices = data.get("choices") or []
            for index, choice in enumerate(choices):
                if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
                    continue
                message: dict[str, Any] = choice["message"]
                content = message.get("content")
                if not isinstance(content, str):
                    continue
                try:
                    parsed = json.loads(content)
                except ValueError:
                    continue  # malformed/truncated: left as sent, for the client's parse chain
                fixed, paths = clamp_to_schema(parsed, schema)
                if paths:
                    message["content"] = json.dumps(fixed, ensure_ascii=False)
                    prefix = f"choices[{index}]." if len(choices) > 1 else ""
                    clamped.extend(prefix + path for path in paths)
            data["mva_clamped"] = clamped
            headers["x-mva-clamped"] = str(len(clamped))
        usage = data.get("usage") or {}
        print(
            f"chat {time.monotonic() - began:.2f}s prompt={usage.get('prompt_tokens')} "
            f"completion={usage.get('completion_tokens')} schema={schema is not None} "
            f"clamped={len(clamped)}",
            file=sys.stderr,
            flush=True,
        )
        return JSONResponse(data, headers=headers)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def backend_version() -> str:
    """The installed xllamacpp version (it pins the llama.cpp build that computes the answers)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xllamacpp")
    except PackageNotFoundError:
        return "unknown"


def start_backend(model: Path, *, threads: int, ctx: int) -> tuple[Any, str]:
    """Load ``model`` into llama.cpp's server on a free internal port; (server object, its URL).

    The returned object must stay referenced: dropping it stops the server.
    """
    import xllamacpp  # imported here so that the schema helpers load without the native library

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.n_ctx = ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = [HOST]
    params.port = 0  # the OS picks a free port: no race with other services
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:  # the native side raises plain RuntimeError/ValueError
        raise ProviderError(
            f"llama.cpp could not load {model}: {exc}",
            hint="check that the file is a complete chat GGUF; see the log above",
        ) from exc
    return server, str(server.listening_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mva_dagster.providers.local",
        description="Serve a local GGUF model as OpenAI chat completions on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="GGUF file (default: $MVA_LOCAL_GGUF, else SmolLM2-135M-Instruct fetched once)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: 1 when the machine is loaded, else min(2, CPUs))",
    )
    parser.add_argument(
        "--ctx", type=int, default=DEFAULT_CTX, help=f"context window (default {DEFAULT_CTX})"
    )
    parser.add_argument(
        "--max-string-length",
        type=int,
        default=DEFAULT_STRING_MAX_LENGTH,
        help="maxLength added to schema strings that have none",
    )
    args = parser.parse_args(argv)

    import uvicorn

    began = time.monotonic()
    try:
        model = args.model.expanduser().resolve() if args.model else ensure_local_model()
        check_gguf_file(model)
        sha256 = gguf_sha256(model)
        threads = args.threads if args.threads and args.threads > 0 else default_threads()
        backend, backend_url = start_backend(model, threads=threads, ctx=args.ctx)
    except (SetupError, ProviderError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    model_id = model_id_for(model, sha256)
    info = {"gguf": str(model), "sha256": sha256, "threads": threads, "n_ctx": args.ctx}
    fingerprint = f"xllamacpp-{backend_version()}-threads{threads}"
    app = create_app(
        backend_url,
        model_id,
        model_info=info,
        fingerprint=fingerprint,
        default_max_length=args.max_string_length,
    )
    print(
        f"local provider: {model_id} on http://{HOST}:{args.port} (backend {backend_url}, threads={threads}, "
        f"ctx={args.ctx}, ready in {time.monotonic() - began:.1f}s)",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(app, host=HOST, port=args.port, log_level="warning")
    finally:
        del backend
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
