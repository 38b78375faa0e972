"""Several proxy URLs behind one gateway client: parsing, round-robin per request, failover."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mva_dagster.errors import ProxyError
from mva_dagster.llm.endpoints import RoundRobinTransport, client_options, split_proxy_urls
from mva_dagster.providers.simulated import SimulatedConfig, serve_in_thread
from mva_dagster.services import free_port

LIMITS = httpx.Limits(max_connections=8)


def test_split_accepts_one_or_several_urls() -> None:
    assert split_proxy_urls("http://127.0.0.1:4000/") == ["http://127.0.0.1:4000"]
    assert split_proxy_urls(" http://a:1 , http://b:2/,http://a:1,") == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize("spec", ["", " , ", "ftp://a:1", "127.0.0.1:4000"])
def test_split_refuses_what_is_no_url(spec: str) -> None:
    with pytest.raises(ProxyError):
        split_proxy_urls(spec)


def test_one_url_is_a_plain_client() -> None:
    options = client_options("http://127.0.0.1:4000", limits=LIMITS)
    assert options["base_url"] == "http://127.0.0.1:4000"
    assert not isinstance(options["transport"], RoundRobinTransport)


def test_requests_alternate_between_proxies_keeping_paths() -> None:
    seen: list[tuple[str, str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.url.path, request.headers["host"]))
        return httpx.Response(200, json={})

    urls = ["http://a.example:4000/team-a", "http://b.example:4001"]
    transport = RoundRobinTransport(urls, limits=LIMITS, inner=httpx.MockTransport(handler))

    async def send() -> None:
        async with httpx.AsyncClient(base_url=urls[0], transport=transport) as client:
            for _ in range(4):
                await client.post("/v1/chat/completions", json={})

    asyncio.run(send())
    assert seen == [("a.example", "/team-a/v1/chat/completions", "a.example:4000"),
                    ("b.example", "/v1/chat/completions", "b.example:4001")] * 2
    assert sorted(transport.sent.values()) == [2, 2]


def test_a_dead_proxy_costs_one_retry_not_the_call() -> None:
    """The gateway retries a connection error; with two proxies the retry reaches the live one."""
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hello"}]}
    with serve_in_thread(SimulatedConfig(), port=0) as live:
        dead = f"http://127.0.0.1:{free_port()}"

        async def send() -> list[int | str]:
            outcomes: list[int | str] = []
            async with httpx.AsyncClient(**client_options(f"{dead},{live.url}", limits=LIMITS)) as client:
                for _ in range(2):
                    try:
                        outcomes.append((await client.post("/v1/chat/completions", json=body)).status_code)
                    except httpx.ConnectError:
                        outcomes.append("connect-error")
            return outcomes

        assert asyncio.run(send()) == ["connect-error", 200]
