"""The proxy's limits as rendered from the registry, the key table, and the key check (no processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from fastapi import HTTPException

from mva_dagster.errors import ProxyError, SpecError
from mva_dagster.llm.registry import load_registry
from mva_dagster.proxy import callbacks
from mva_dagster.proxy.config import render_proxy_config
from mva_dagster.proxy.keys import DEFAULT_KEYS_PATH, active_keys, auth_fields, key_identity, load_key_table

UPSTREAM = "http://127.0.0.1:9/v1"


def test_every_deployment_carries_its_limits_timeout_and_circuit_breaker() -> None:
    registry = load_registry()
    config = render_proxy_config(registry, mode="simulated", aliases=registry.names(), upstream_url=UPSTREAM,
                                 redis_url="")
    router = config["router_settings"]
    assert router["routing_strategy"] == "usage-based-routing-v2" and router["enable_pre_call_checks"] is True
    assert router["retry_policy"]["RateLimitErrorRetries"] == 0  # the gateway waits out a 429, visibly
    assert router["retry_policy"]["BadRequestErrorRetries"] == 0
    for deployment in config["model_list"]:
        entry = registry.resolve(deployment["model_name"])
        params, info = deployment["litellm_params"], deployment["model_info"]
        assert (params["rpm"], params["tpm"], params["timeout"]) == (entry.rpm, entry.tpm, entry.timeout_s)
        assert params["max_parallel_requests"] == entry.max_concurrency
        assert info["cooldown_time"] == entry.cooldown_s
        assert info["allowed_fails_policy"]["InternalServerErrorAllowedFails"] == entry.allowed_fails
        assert "RateLimitErrorAllowedFails" not in info["allowed_fails_policy"]  # a 429 means wait
    assert "coordination_redis" not in config["general_settings"]


def test_redis_makes_proxies_share_limits_without_writing_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVA_REDIS_PASSWORD", "s3cret")
    config = render_proxy_config(load_registry(), mode="simulated", aliases=["gemini-2.5-flash"],
                                 upstream_url=UPSTREAM, redis_url="redis://127.0.0.1:6380/2")
    coordination = config["general_settings"]["coordination_redis"]
    assert coordination == {"host": "127.0.0.1", "port": 6380, "db": 2,
                            "password": "os.environ/MVA_REDIS_PASSWORD"}
    assert config["router_settings"]["redis_host"] == "127.0.0.1"
    assert config["router_settings"]["redis_port"] == 6380
    assert "s3cret" not in yaml.safe_dump(config)
    monkeypatch.setenv("MVA_REDIS_URL", "redis://127.0.0.1:6379")
    from_env = render_proxy_config(load_registry(), mode="simulated", aliases=["gemini-2.5-flash"],
                                   upstream_url=UPSTREAM)
    assert from_env["general_settings"]["coordination_redis"]["port"] == 6379
    with pytest.raises(ProxyError, match="credentials"):
        render_proxy_config(load_registry(), mode="simulated", aliases=["gemini-2.5-flash"],
                            upstream_url=UPSTREAM, redis_url="redis://:pw@127.0.0.1:6379")
    with pytest.raises(ProxyError, match="redis://"):
        render_proxy_config(load_registry(), mode="simulated", aliases=["gemini-2.5-flash"],
                            upstream_url=UPSTREAM, redis_url="http://127.0.0.1:6379")


def test_the_packaged_key_table_names_variables_never_values() -> None:
    table = load_key_table(DEFAULT_KEYS_PATH)
    assert table and all(spec.env.startswith("MVA_PROXY_KEY_") for spec in table.values())
    assert active_keys(table, {}) == {}  # no variable set: no key admits anybody
    value = "sk-ci-value"
    active = active_keys(table, {"MVA_PROXY_KEY_CI": value})
    assert list(active) == [value] and active[value].name == "ci"
    fields = auth_fields(active[value], value)
    assert fields["api_key"] == key_identity(value) != value  # the proxy only ever sees the hash
    assert fields["rpm_limit"] == table["ci"].rpm and fields["key_alias"] == "ci"


def test_a_bad_key_table_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys:\n  a: {env: K, rpm: 0}\n")
    with pytest.raises(SpecError, match=r"keys\.a"):
        load_key_table(bad)
    bad.write_text("keys:\n  a: {env: K}\n  b: {env: K}\n")
    with pytest.raises(SpecError, match="used by both"):
        load_key_table(bad)


def test_the_auth_hook_admits_table_keys_with_their_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "keys.yaml"
    table.write_text("keys:\n  team: {env: TEAM_KEY, rpm: 4, tpm: 1000, max_parallel_requests: 2}\n")
    monkeypatch.setenv("MVA_PROXY_KEYS", str(table))
    monkeypatch.setenv("TEAM_KEY", "sk-team")
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    monkeypatch.setattr(callbacks, "_key_table", None)
    auth = asyncio.run(callbacks.user_api_key_auth(None, "sk-team"))  # type: ignore[arg-type]
    assert auth.rpm_limit == 4 and auth.tpm_limit == 1000 and auth.max_parallel_requests == 2
    assert auth.api_key == key_identity("sk-team") and auth.key_alias == "team"
    master = asyncio.run(callbacks.user_api_key_auth(None, "sk-master"))  # type: ignore[arg-type]
    assert master.rpm_limit is None
    for wrong in ("sk-nope", ""):
        with pytest.raises(HTTPException) as refused:
            asyncio.run(callbacks.user_api_key_auth(None, wrong))  # type: ignore[arg-type]
        assert refused.value.status_code == 401
