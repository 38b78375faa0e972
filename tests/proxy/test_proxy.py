"""The proxy config, the master key, and the real LiteLLM proxy in front of the simulated provider.

Integration tests start the real ``litellm`` proxy (8-40 s) once for the module, with a temporary
``$MVA_HOME`` and a generated master key, in ``simulated`` mode in front of the simulated provider
answering a versioned model id.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mva_dagster.errors import ProxyError
from mva_dagster.llm.registry import load_registry
from mva_dagster.proxy.config import (
    CALLBACK_INSTANCE,
    CUSTOM_AUTH,
    config_hash,
    render_proxy_config,
    render_proxy_config_file,
)
from mva_dagster.proxy.process import (
    litellm_argv,
    master_key,
    master_key_path,
    proxy_status,
    start_proxy,
    stop_proxy,
)
from mva_dagster.services import pid_alive

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

UPSTREAM = "http://127.0.0.1:9/v1"
ALIAS = "gemini-2.5-flash"
VERSIONED_ID = "gemini-2.5-flash-001"
FAILING_ALIAS = "gpt-4.1"  # the simulated provider answers it with a context-length error


# --------------------------------------------------------------------------------------------------
# Config rendering (no processes)
# --------------------------------------------------------------------------------------------------


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["model_name"]: d for d in config["model_list"]}


def test_simulated_config_carries_real_prices_and_limits() -> None:
    registry = load_registry()
    config = render_proxy_config(
        registry, mode="simulated", aliases=["gemini/gemini-2.5-flash", "gpt-4.1"], upstream_url=UPSTREAM
    )
    flash = _deployments(config)[ALIAS]
    params, info = flash["litellm_params"], flash["model_info"]
    entry = registry.resolve(ALIAS)
    assert params["model"] == "openai/gemini-2.5-flash"
    assert params["api_base"] == UPSTREAM and params["api_key"] == "sim-no-key"
    assert params["input_cost_per_token"] == info["input_cost_per_token"] == entry.input_cost_per_token
    assert params["output_cost_per_token"] == info["output_cost_per_token"] == entry.output_cost_per_token
    assert (params["rpm"], params["tpm"], params["timeout"]) == (entry.rpm, entry.tpm, entry.timeout_s)
    assert info["max_input_tokens"] == entry.context_window and info["mva_provider"] == "vertex_ai"
    assert config["router_settings"]["model_group_alias"]["gemini/gemini-2.5-flash"] == ALIAS
    router = config["router_settings"]
    assert router["routing_strategy"] == "usage-based-routing-v2" and router["enable_pre_call_checks"]
    assert router["num_retries"] == 3
    assert config["litellm_settings"]["callbacks"][0] == CALLBACK_INSTANCE  # then the answer journal
    assert config["litellm_settings"]["drop_params"] is True
    assert config["general_settings"] == {
        "master_key": "os.environ/LITELLM_MASTER_KEY",
        "custom_auth": CUSTOM_AUTH,
        "forward_client_headers_to_llm_api": True,  # the simulated ledger records x-mva-request-key
    }


def test_real_config_references_credentials_and_never_contains_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-value")
    registry = load_registry()
    config = render_proxy_config(registry, mode="real", aliases=registry.names(), upstream_url=None)
    deployments = _deployments(config)
    assert "smollm2-135m" not in deployments  # no local server given: real mode leaves it out
    assert deployments["claude-sonnet-4-5"]["litellm_params"]["api_key"] == "os.environ/ANTHROPIC_API_KEY"
    assert deployments["gpt-4.1"]["litellm_params"]["model"] == "openai/gpt-4.1"
    vertex = deployments["gemini-2.5-pro"]["litellm_params"]
    assert vertex["model"] == "vertex_ai/gemini-2.5-pro"
    assert vertex["vertex_project"] == "os.environ/VERTEXAI_PROJECT"
    assert vertex["vertex_credentials"] == "os.environ/GOOGLE_APPLICATION_CREDENTIALS"
    text = yaml.safe_dump(config)
    assert "secret-value" not in text


def test_local_config_costs_nothing() -> None:
    config = render_proxy_config(
        load_registry(), mode="local", aliases=[ALIAS, "smollm2-135m"], upstream_url="http://127.0.0.1:8081"
    )
    for deployment in config["model_list"]:
        assert deployment["litellm_params"]["api_base"] == "http://127.0.0.1:8081/v1"
        assert deployment["litellm_params"]["input_cost_per_token"] == 0.0
        assert deployment["model_info"]["output_cost_per_token"] == 0.0


def test_config_errors_are_proxy_errors() -> None:
    registry = load_registry()
    with pytest.raises(ProxyError, match="upstream_url"):
        render_proxy_config(registry, mode="simulated", aliases=[ALIAS], upstream_url=None)
    with pytest.raises(ProxyError, match="mode"):
        render_proxy_config(registry, mode="cloud", aliases=[ALIAS], upstream_url=UPSTREAM)  # type: ignore[arg-type]
    with pytest.raises(ProxyError, match="at least one"):
        render_proxy_config(registry, mode="simulated", aliases=[], upstream_url=UPSTREAM)


def test_extra_is_deep_merged_and_the_file_hash_is_its_sha256(tmp_path: Path) -> None:
    rendered = render_proxy_config_file(
        load_registry(),
        mode="simulated",
        aliases=[ALIAS],
        upstream_url=UPSTREAM,
        out_dir=tmp_path,
        extra={"router_settings": {"num_retries": 0}},
    )
    loaded = yaml.safe_load(rendered.path.read_text())
    assert loaded["router_settings"]["num_retries"] == 0
    assert loaded["router_settings"]["routing_strategy"] == "usage-based-routing-v2"
    assert rendered.sha256 == config_hash(rendered.path)


# --------------------------------------------------------------------------------------------------
# Master key (no processes)
# --------------------------------------------------------------------------------------------------


def test_master_key_is_generated_once_private_and_overridable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVA_HOME", str(tmp_path))
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    key = master_key()
    assert key.startswith("sk-") and len(key) > 30
    assert master_key() == key
    path = master_key_path()
    assert path == tmp_path / "proxy" / "master_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-from-env")
    assert master_key() == "sk-from-env"


def test_litellm_cli_is_the_one_of_this_venv() -> None:
    argv = litellm_argv()
    assert Path(argv[0]).exists()


# --------------------------------------------------------------------------------------------------
# The real proxy
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Simulated provider + real proxy, in a temporary MVA_HOME with a generated master key."""
    from mva_dagster.providers.simulated import FaultRule, SimulatedConfig, serve_in_thread

    home = tmp_path_factory.mktemp("mva_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MVA_HOME", str(home))
        mp.delenv("LITELLM_MASTER_KEY", raising=False)
        upstream = serve_in_thread(
            SimulatedConfig(
                model_versions={ALIAS: VERSIONED_ID},
                faults=[FaultRule(kind="context_length", models=[FAILING_ALIAS])],
            )
        )
        state_dir = home / "proxy"
        try:
            rendered = render_proxy_config_file(
                load_registry(),
                mode="simulated",
                aliases=[ALIAS, "gpt-4.1"],
                upstream_url=upstream.api_base,
                out_dir=home / "config",
            )
            started = time.monotonic()
            info = start_proxy(rendered.path, state_dir=state_dir)
            print(f"proxy started in {time.monotonic() - started:.1f}s")
            yield {"info": info, "rendered": rendered, "state_dir": state_dir, "key": master_key()}
        finally:
            stop_proxy(state_dir)
            upstream.stop()


def _chat(url: str, key: str | None, *, model: str = ALIAS, request_key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if request_key:
        headers["x-mva-request-key"] = request_key
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers=headers,
        json={"model": model, "messages": [{"role": "user", "content": "Rate this speech for hope."}]},
        timeout=60,
    )


def _ledger_line(path: Path, request_key: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The callback writes after the response is sent: wait for its line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("request_key") == request_key:
                    return dict(record)
        time.sleep(0.1)
    raise AssertionError(f"no ledger line for {request_key} in {path}")


@pytest.mark.integration
def test_status_reports_a_healthy_proxy(stack: dict[str, Any]) -> None:
    status = proxy_status(stack["state_dir"])
    assert status["running"] and status["healthy"], status
    assert status["pid"] == stack["info"].pid and status["url"] == stack["info"].url
    assert status["config_hash"] == stack["rendered"].sha256 == stack["info"].config_hash
    assert status["liveliness"]["ok"] and status["readiness"]["ok"]


@pytest.mark.integration
def test_same_config_reuses_the_running_proxy_and_another_is_refused(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    again = start_proxy(stack["rendered"].path, state_dir=stack["state_dir"])
    assert again.pid == stack["info"].pid
    other = render_proxy_config_file(
        load_registry(), mode="simulated", aliases=["gpt-4.1"], upstream_url=UPSTREAM, out_dir=tmp_path
    )
    with pytest.raises(ProxyError, match="another config"):
        start_proxy(other.path, state_dir=stack["state_dir"])


@pytest.mark.integration
def test_the_master_key_is_required(stack: dict[str, Any]) -> None:
    url = stack["info"].url
    assert _chat(url, stack["key"]).status_code == 200
    assert _chat(url, None).status_code == 401
    assert _chat(url, "sk-not-the-master-key").status_code == 401


@pytest.mark.integration
def test_simulated_cost_is_the_aliases_list_price(stack: dict[str, Any]) -> None:
    response = _chat(stack["info"].url, stack["key"], request_key="cost-check")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == ALIAS  # the proxy rewrites the upstream's id to the alias...
    cost = float(response.headers["x-litellm-response-cost"])
    entry = load_registry().resolve(ALIAS)
    usage = body["usage"]
    assert cost > 0
    assert cost == pytest.approx(entry.cost(usage["prompt_tokens"], usage["completion_tokens"]), rel=1e-9)


@pytest.mark.integration
def test_ledger_records_the_upstream_model_version_and_our_request_key(stack: dict[str, Any]) -> None:
    response = _chat(stack["info"].url, stack["key"], request_key="ledger-check-1")
    assert response.status_code == 200
    record = _ledger_line(stack["state_dir"] / "proxy_ledger.jsonl", "ledger-check-1")
    assert record["status"] == "success"
    assert record["provider_response_model"] == VERSIONED_ID  # ...and the ledger keeps the real one
    assert record["model_group"] == ALIAS and record["model_id"] == f"simulated-{ALIAS}"
    assert record["litellm_call_id"] == response.headers["x-litellm-call-id"]
    assert record["system_fingerprint"] == response.json()["system_fingerprint"]
    assert record["prompt_tokens"] == response.json()["usage"]["prompt_tokens"]
    assert record["response_cost"] == pytest.approx(float(response.headers["x-litellm-response-cost"]))
    assert record["api_base"].startswith("http://127.0.0.1:")


@pytest.mark.integration
def test_ledger_records_a_failure_with_its_class_and_status(stack: dict[str, Any]) -> None:
    response = _chat(stack["info"].url, stack["key"], model=FAILING_ALIAS, request_key="ledger-fail-1")
    assert response.status_code == 400
    record = _ledger_line(stack["state_dir"] / "proxy_ledger.jsonl", "ledger-fail-1")
    assert record["status"] == "failure"
    assert record["error_class"] == "ContextWindowExceededError" and record["error_status"] == 400
    assert record["model_group"] == FAILING_ALIAS and record["response_cost"] == 0


@pytest.mark.integration
def test_the_master_key_is_in_no_file(stack: dict[str, Any]) -> None:
    key = stack["key"]
    assert _chat(stack["info"].url, key, request_key="leak-check").status_code == 200
    _ledger_line(stack["state_dir"] / "proxy_ledger.jsonl", "leak-check")
    config_text = stack["rendered"].path.read_text()
    assert key not in config_text and "os.environ/LITELLM_MASTER_KEY" in config_text
    for name in ("proxy.log", "proxy.json", "proxy_ledger.jsonl"):
        assert key not in (stack["state_dir"] / name).read_text(), name


@pytest.mark.integration
def test_stop_proxy_stops_it(stack: dict[str, Any]) -> None:
    assert stop_proxy(stack["state_dir"]) is True
    assert not pid_alive(stack["info"].pid)
    assert proxy_status(stack["state_dir"])["running"] is False
    assert stop_proxy(stack["state_dir"]) is False
