"""Render the LiteLLM proxy's config from the model registry.

The proxy config is generated, never hand-edited: one deployment per canonical alias, its limits and
prices taken from ``models.yaml``. The same aliases are served in all three modes, so an experiment
runs unchanged against real providers, the local model or the simulated provider:

* ``real``      - the entry's LiteLLM route; credentials are ``os.environ/VAR`` references.
* ``simulated`` - ``openai/<alias>`` at the simulated server, priced at the alias's real list price,
  so ``x-litellm-response-cost`` says what the call *would* have cost.
* ``local``     - ``openai/<alias>`` at the local llama.cpp server, priced at 0.

Prices are declared as ``input_cost_per_token``/``output_cost_per_token`` in ``litellm_params``
(custom pricing, registered under the deployment id) and repeated in ``model_info``; either alone
was measured to give a non-zero ``x-litellm-response-cost``. Without them an ``openai/<alias>``
route is not in LiteLLM's price map and the proxy reports no cost at all. Real mode uses the same
registry prices, so the registry is the one source of cost in every mode.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import yaml

from mva_dagster.errors import ProxyError
from mva_dagster.llm.registry import ModelEntry, Registry

Mode = Literal["real", "local", "simulated"]
MODES: tuple[Mode, ...] = ("real", "local", "simulated")

CALLBACK_INSTANCE = "mva_dagster.proxy.callbacks.proxy_handler_instance"
# Keeps each keyed answer until the client archived it (see proxy/journal.py).
JOURNAL_INSTANCE = "mva_dagster.proxy.journal_callback.answer_journal_instance"
CUSTOM_AUTH = "mva_dagster.proxy.callbacks.user_api_key_auth"
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
LEDGER_ENV = "MVA_PROXY_LEDGER"  # where callbacks.py (inside the proxy) appends its ledger lines
REQUEST_KEY_HEADER = "x-mva-request-key"  # a client's own request key, copied into the ledger

# Which litellm_params key receives which credential variable (real mode). Values are always
# ``os.environ/VAR`` references, so no secret is ever written into the config file.
ENV_TO_PARAM: dict[str, str] = {
    "OPENAI_API_KEY": "api_key",
    "ANTHROPIC_API_KEY": "api_key",
    "GEMINI_API_KEY": "api_key",
    "VERTEXAI_PROJECT": "vertex_project",
    "VERTEXAI_LOCATION": "vertex_location",
    "GOOGLE_APPLICATION_CREDENTIALS": "vertex_credentials",
}

# Placeholder keys for servers that ignore auth; the OpenAI client refuses to send no key at all.
SIMULATED_API_KEY = "sim-no-key"
LOCAL_API_KEY = "local-no-key"

DEFAULT_NUM_RETRIES = 3  # the default for errors retry_policy does not name
REDIS_URL_ENV = "MVA_REDIS_URL"  # e.g. redis://127.0.0.1:6379/0: share limits between proxies
REDIS_PASSWORD_ENV = "MVA_REDIS_PASSWORD"  # referenced as os.environ/..., never written into the config

# Retries the proxy makes itself, by error type. A 429 from the provider goes straight back to the
# client: every retry the proxy makes inside a request counts against the deployment's rpm for that
# UTC minute without the client knowing, and in a 50 % storm (bench/rate_limits.py) those hidden
# retries filled the minute and the proxy then held the client's next requests for up to 60 s. The
# gateway waits out the Retry-After itself, for all calls of the model at once, paced and visible.
# The same policy covers the proxy's own rpm/tpm fence: over the limit it answers 429 with
# `llm_provider-retry-after: 60` at once (measured) instead of holding the request, and the gateway
# waits, saying so. Server errors and timeouts get a couple of quick retries here, and the gateway's
# backoff after that.
RETRY_POLICY: dict[str, int] = {
    "RateLimitErrorRetries": 0,
    "InternalServerErrorRetries": 2,
    "ServiceUnavailableErrorRetries": 2,
    "TimeoutErrorRetries": 1,
    "BadRequestErrorRetries": 0,
    "AuthenticationErrorRetries": 0,
    "ContentPolicyViolationErrorRetries": 0,
}


class RenderedConfig(NamedTuple):
    """A written proxy config and the sha256 of its bytes (the config hash)."""

    path: Path
    sha256: str


def render_proxy_config(
    registry: Registry,
    *,
    mode: Mode,
    aliases: list[str],
    upstream_url: str | None,
    extra: dict[str, Any] | None = None,
    num_retries: int = DEFAULT_NUM_RETRIES,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """The proxy config (a dict ready for YAML) serving ``aliases`` in ``mode``.

    ``aliases`` may use any registered name; each model is served once, under its canonical alias,
    and its other names are mapped to it (``model_group_alias``). ``upstream_url`` is the provider
    server for ``simulated``/``local``; in ``real`` mode it is the local server for ``local``-provider
    entries, which are left out when it is None (real mode needs no local server).
    ``redis_url`` (default ``$MVA_REDIS_URL``; ``""`` for none) makes every proxy on that Redis share
    per-key limits exactly (``coordination_redis``) and deployment usage approximately (router cache).
    ``extra`` is deep-merged last, for the rare setting this function does not know.
    """
    if mode not in MODES:
        raise ProxyError(f"unknown proxy mode {mode!r}; expected one of {', '.join(MODES)}")
    if not aliases:
        raise ProxyError("no models to serve: the proxy config needs at least one alias")
    entries: dict[str, ModelEntry] = {}
    for name in aliases:
        entry = registry.resolve(name)
        # Real mode reaches a local-provider model only through a running local server.
        if mode == "real" and entry.provider == "local" and not upstream_url:
            continue
        entries.setdefault(entry.name, entry)
    if not entries:
        raise ProxyError(
            f"none of {aliases} can be served in mode {mode!r}",
            hint="local models need the local server's URL as upstream_url",
        )

    model_list = [_deployment(entry, mode, upstream_url) for entry in entries.values()]
    group_alias = {
        alias: entry.name for entry in entries.values() for alias in entry.aliases if alias not in entries
    }
    config: dict[str, Any] = {
        "model_list": model_list,
        "router_settings": {
            "routing_strategy": "usage-based-routing-v2",
            "enable_pre_call_checks": True,  # enforces rpm/tpm and context windows before sending
            "num_retries": num_retries,
            "retry_policy": {k: min(v, num_retries) for k, v in RETRY_POLICY.items()},
            "retry_after": 0,  # no extra sleep on top of the rate-limit wait
            # The circuit breaker: each deployment's model_info carries its allowed_fails_policy and
            # cooldown_time (from models.yaml); these are the defaults for anything else.
            "allowed_fails": 3,
            "cooldown_time": max(entry.cooldown_s for entry in entries.values()),
            "model_group_alias": group_alias,
        },
        "litellm_settings": {
            "drop_params": True,  # a provider that lacks a param ignores it instead of failing the call
            "callbacks": [CALLBACK_INSTANCE, JOURNAL_INSTANCE],
            "request_timeout": max(entry.timeout_s for entry in entries.values()),
        },
        "general_settings": {
            "master_key": f"os.environ/{MASTER_KEY_ENV}",
            # Without a database LiteLLM refuses a bad key with 500/400; ours says 401.
            "custom_auth": CUSTOM_AUTH,
        },
    }
    redis = _redis_settings(os.environ.get(REDIS_URL_ENV, "") if redis_url is None else redis_url)
    if redis:
        # Per-key limits are exact across proxies only through coordination_redis (measured); the
        # router's cache in Redis shares deployment rpm/tpm usage too, though only approximately.
        config["general_settings"]["coordination_redis"] = dict(redis)
        config["router_settings"].update({f"redis_{k}": v for k, v in redis.items() if k != "db"})
    if mode != "real":
        # Our own upstreams (simulated, local) receive the client's x-* headers, so the simulated
        # provider's ledger records x-mva-request-key (crash tests join it to the archive). Real
        # providers are not sent our session and document ids.
        config["general_settings"]["forward_client_headers_to_llm_api"] = True
    if extra:
        _deep_merge(config, copy.deepcopy(extra))
    return config


def render_proxy_config_file(
    registry: Registry,
    *,
    mode: Mode,
    aliases: list[str],
    upstream_url: str | None,
    out_dir: str | Path,
    extra: dict[str, Any] | None = None,
    num_retries: int = DEFAULT_NUM_RETRIES,
    filename: str = "proxy_config.yaml",
    redis_url: str | None = None,
) -> RenderedConfig:
    """Write :func:`render_proxy_config` as YAML to ``out_dir/filename`` (atomically)."""
    config = render_proxy_config(
        registry,
        mode=mode,
        aliases=aliases,
        upstream_url=upstream_url,
        extra=extra,
        num_retries=num_retries,
        redis_url=redis_url,
    )
    header = f"# Generated by mva_dagster.proxy.config (mode: {mode}). Do not edit; re-render instead.\n"
    text = header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    tmp = directory / f".{filename}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return RenderedConfig(path, hashlib.sha256(text.encode("utf-8")).hexdigest())


def config_hash(path: str | Path) -> str:
    """sha256 of a config file's bytes: identifies the exact config a proxy was started with."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _deployment(entry: ModelEntry, mode: Mode, upstream_url: str | None) -> dict[str, Any]:
    priced = mode != "local"
    input_cost = entry.input_cost_per_token if priced else 0.0
    output_cost = entry.output_cost_per_token if priced else 0.0
    params: dict[str, Any]
    if mode == "real" and entry.provider != "local":
        params = {"model": entry.litellm_model}
        for var in entry.env:
            if var in ENV_TO_PARAM:
                params[ENV_TO_PARAM[var]] = f"os.environ/{var}"
    else:
        base = _openai_base(upstream_url, entry, mode)
        key = SIMULATED_API_KEY if mode == "simulated" else LOCAL_API_KEY
        params = {"model": f"openai/{entry.name}", "api_base": base, "api_key": key}
    params.update(
        {
            "rpm": entry.rpm,
            "tpm": entry.tpm,
            "timeout": entry.timeout_s,
            "max_parallel_requests": entry.max_concurrency,
            "input_cost_per_token": input_cost,
            "output_cost_per_token": output_cost,
        }
    )
    model_info: dict[str, Any] = {
        "id": f"{mode}-{entry.name}",  # stable deployment id: x-litellm-model-id and the ledger show it
        "mode": "chat",
        "max_input_tokens": entry.context_window,
        "max_output_tokens": entry.max_output_tokens,
        "max_tokens": entry.max_output_tokens,
        "input_cost_per_token": input_cost,
        "output_cost_per_token": output_cost,
        "supports_response_schema": entry.structured_output,
        # The circuit breaker of this deployment: after `allowed_fails` server errors or timeouts,
        # the proxy stops sending to it for `cooldown_s` and answers 429 "in cooldown" with a
        # retry-after (measured; without an explicit policy LiteLLM never cools down a model group
        # of one deployment). Rate limits are left out on purpose: a 429 means wait, not broken.
        "allowed_fails_policy": {
            "InternalServerErrorAllowedFails": entry.allowed_fails,
            "ServiceUnavailableErrorAllowedFails": entry.allowed_fails,
            "BadGatewayErrorAllowedFails": entry.allowed_fails,
            "TimeoutErrorAllowedFails": entry.allowed_fails,
        },
        "cooldown_time": entry.cooldown_s,
        "mva_provider": entry.provider,
        "mva_mode": mode,
    }
    return {"model_name": entry.name, "litellm_params": params, "model_info": model_info}


def _openai_base(upstream_url: str | None, entry: ModelEntry, mode: Mode) -> str:
    """``upstream_url`` as an OpenAI api_base: a bare ``http://host:port`` gets ``/v1``."""
    if not upstream_url:
        raise ProxyError(
            f"mode {mode!r} needs the provider server's URL to serve {entry.name!r}",
            hint="start the simulated/local provider first and pass its URL as upstream_url",
        )
    parts = urlsplit(upstream_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ProxyError(f"upstream_url {upstream_url!r} is not an http(s) URL")
    path = parts.path or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _redis_settings(url: str) -> dict[str, Any]:
    """``redis://[:password@]host:port[/db]`` as LiteLLM's connection fields ({} for no Redis).

    A password in the URL is refused: it would be written into the config file. It goes in
    ``$MVA_REDIS_PASSWORD`` instead and is referenced as ``os.environ/MVA_REDIS_PASSWORD``.
    """
    if not url.strip():
        return {}
    parts = urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ProxyError(
            f"{REDIS_URL_ENV}={url!r} is not a redis:// URL", hint="for example redis://127.0.0.1:6379/0"
        )
    if parts.password or parts.username:
        raise ProxyError(
            f"{REDIS_URL_ENV} must not contain credentials: the URL is written into the proxy config",
            hint=f"put the password in ${REDIS_PASSWORD_ENV} and leave it out of the URL",
        )
    settings: dict[str, Any] = {"host": parts.hostname, "port": parts.port or 6379}
    db = parts.path.strip("/")
    if db:
        if not db.isdigit():
            raise ProxyError(f"{REDIS_URL_ENV}: database {db!r} is not a number", hint="e.g. redis://host:6379/0")
        settings["db"] = int(db)
    if os.environ.get(REDIS_PASSWORD_ENV):
        settings["password"] = f"os.environ/{REDIS_PASSWORD_ENV}"
    return settings


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
