"""Two real LiteLLM proxies sharing limits through Redis, behind one gateway that spreads its calls.

The gateway here is ``LLMGateway`` with the proposed ``make_client`` (the client options of
``mva_dagster.llm.endpoints``); everything else - the proxies, Redis, the key table, the simulated
provider, the gateway's send/classify/archive path - is the real thing. (The rate-limit tests of
tests/integration/test_limits*.py cover the limits themselves; this file covers the spreading.)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from mva_dagster.errors import LLMError, TransientLLMError
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.endpoints import RoundRobinTransport, client_options
from mva_dagster.llm.gateway import LLMGateway, proxy_key, resolve_proxy_url
from mva_dagster.llm.registry import load_registry
from mva_dagster.providers.simulated import SimulatedConfig, serve_in_thread
from mva_dagster.proxy.config import render_proxy_config_file
from mva_dagster.proxy.process import LEDGER_FILENAME, ProxyInfo, start_proxy, stop_proxy
from mva_dagster.records import LLMRequest
from mva_dagster.sessions.layout import SessionLayout

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY_ENV = "MVA_PROXY_KEY_SCALE_TEST"
KEY_RPM = 4
MODEL = "gemini-2.5-flash"


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class SpreadingGateway(LLMGateway):
    """LLMGateway with the proposed make_client: its calls go to every proxy of MVA_PROXY_URL in turn."""

    def make_client(self, max_connections: int = 64) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            **client_options(resolve_proxy_url(self.proxy_url), limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections)),
            headers={"Authorization": f"Bearer {proxy_key()}"},
            timeout=httpx.Timeout(self.request_timeout_s, connect=10.0))


@dataclass
class TwoProxies:
    proxies: list[ProxyInfo]
    state_dirs: list[Path]
    key: str
    root: Path

    @property
    def url_list(self) -> str:
        return ",".join(p.url for p in self.proxies)

    def ledger_keys(self, index: int, status: str = "success") -> set[str]:
        path = self.state_dirs[index] / LEDGER_FILENAME
        if not path.exists():
            return set()
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {str(line.get("request_key")) for line in lines if line.get("status") == status}


@pytest.fixture(scope="module")
def two_proxies(mva_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoProxies]:
    if not redis_available():
        pytest.skip("no Redis answers on 127.0.0.1:6379; the shared-limit test needs one")
    root = tmp_path_factory.mktemp("two_proxies")
    key = "sk-scale-" + secrets.token_hex(16)  # a fresh key: its Redis counters are this run's alone
    keys_file = root / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": {"scale_test": {
        "env": KEY_ENV, "rpm": KEY_RPM, "max_parallel_requests": 4}}}))
    with pytest.MonkeyPatch.context() as env, serve_in_thread(SimulatedConfig(), port=0) as provider:
        env.setenv("MVA_PROXY_KEYS", str(keys_file))
        env.setenv(KEY_ENV, key)
        registry = load_registry()
        dirs = [root / "proxy_a", root / "proxy_b"]
        configs = [render_proxy_config_file(registry, mode="simulated", aliases=[MODEL],
                                            upstream_url=provider.api_base, out_dir=d, redis_url=REDIS_URL)
                   for d in dirs]
        try:
            with ThreadPoolExecutor(2) as pool:  # two proxies start in parallel (15-40 s each)
                infos = list(pool.map(lambda pair: start_proxy(pair[0].path, state_dir=pair[1]),
                                      zip(configs, dirs, strict=True)))
            yield TwoProxies(infos, dirs, key, root)
        finally:
            for d in dirs:
                stop_proxy(d)


def requests_for(tag: str, count: int) -> list[LLMRequest]:
    return [LLMRequest(session_id="session_scale", document_id=f"{tag}-{i}", model=MODEL, replicate=1,
                       messages=[{"role": "user", "content": f"{tag} request {i}: say something short."}],
                       params={"max_tokens": 64, "seed": i})
            for i in range(count)]


def send_all(gateway: LLMGateway, layout: SessionLayout, requests: list[LLMRequest]) -> list[LLMError | None]:
    """Send the requests one after another through the gateway; None for an answer, else the error."""
    archive = SessionArchive(layout)

    async def go() -> tuple[list[LLMError | None], RoundRobinTransport]:
        outcomes: list[LLMError | None] = []
        async with gateway.make_client() as client:
            for request in requests:
                try:
                    await gateway.complete(client, request, archive)
                    outcomes.append(None)
                except LLMError as exc:
                    outcomes.append(exc)
            transport = client._transport
        assert isinstance(transport, RoundRobinTransport)
        return outcomes, transport

    outcomes, transport = asyncio.run(go())
    counts = sorted(transport.sent.values())  # retries of refused calls are requests too
    assert len(counts) == 2 and counts[1] - counts[0] <= 1 and sum(counts) >= len(requests), transport.sent
    return outcomes


def session_layout(root: Path, name: str) -> SessionLayout:
    layout = SessionLayout(root / "projects" / "P" / "experiments" / "E" / "sessions" / name)
    layout.create_dirs()
    return layout


def test_gateway_spreads_calls_over_both_proxies(two_proxies: TwoProxies, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVA_PROXY_API_KEY", raising=False)  # the master key: no per-key limit
    gateway = SpreadingGateway(proxy_url=two_proxies.url_list)
    requests = requests_for("spread", 6)
    outcomes = send_all(gateway, session_layout(two_proxies.root, "session_spread"), requests)
    assert outcomes == [None] * 6
    keys = [r.key() for r in requests]
    served_a, served_b = two_proxies.ledger_keys(0), two_proxies.ledger_keys(1)
    assert served_a | served_b == set(keys)
    assert served_a == set(keys[0::2]) and served_b == set(keys[1::2])  # one each in turn


def test_key_limit_holds_across_both_proxies(two_proxies: TwoProxies, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key allowed 4 requests a minute gets 4 through two proxies together, not 4 from each."""
    second = time.gmtime().tm_sec
    if second > 40:  # the key's window is the clock minute: start all requests inside one
        time.sleep(61 - second)
    monkeypatch.setenv("MVA_PROXY_API_KEY", two_proxies.key)  # the gateway sends the limited key
    # No waiting out the window: a refused call comes back as the 429 it got.
    gateway = SpreadingGateway(proxy_url=two_proxies.url_list, max_attempts=1, rate_limit_max_wait_s=0.01)
    requests = requests_for(f"limit-{os.getpid()}", 2 * KEY_RPM + 2)
    outcomes = send_all(gateway, session_layout(two_proxies.root, "session_limit"), requests)
    answered = [r for r, o in zip(requests, outcomes, strict=True) if o is None]
    refused = [o for o in outcomes if o is not None]
    assert len(answered) <= KEY_RPM, f"{len(answered)} answered through two proxies with a shared rpm of {KEY_RPM}"
    assert answered, "the key's first requests should have been answered"
    assert all(isinstance(o, TransientLLMError) and o.status == 429 for o in refused), [str(o) for o in refused]
    # Each proxy alone saw more requests than the limit allows, so only the shared count explains it.
    assert min(len(requests) // 2, len(requests) - len(requests) // 2) > KEY_RPM
