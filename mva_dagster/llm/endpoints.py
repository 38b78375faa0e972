"""Several LiteLLM proxies behind one gateway: the calls are spread over them, round-robin per request.

``MVA_PROXY_URL`` (or ``LLMGateway.proxy_url``) may name several proxies separated by commas::

    MVA_PROXY_URL=http://10.0.0.5:4000,http://10.0.0.6:4000

The proxies must serve the same models with the same config. With ``MVA_REDIS_URL`` set when they
are started, they share per-key limits exactly (``coordination_redis``) and deployment usage
approximately (docs/scale-out.md). Each request goes to the next proxy in turn; a request that
fails to connect is retried by the gateway like any transient failure, and so goes to the next
proxy: one proxy down slows a session, it does not stop it.

The spreading lives in an httpx transport, so a client built with :func:`client_options` is an
ordinary ``httpx.AsyncClient`` whose relative URLs (``/v1/chat/completions``) are sent to each
proxy in turn; with one URL it is exactly the client the gateway made before.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import httpx

from mva_dagster.errors import ProxyError

SEPARATOR = ","


def split_proxy_urls(spec: str) -> list[str]:
    """The proxy URLs in ``spec`` ("url" or "url1,url2,..."), without trailing slashes or repeats."""
    urls: list[str] = []
    for part in spec.split(SEPARATOR):
        url = part.strip().rstrip("/")
        if not url:
            continue
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ProxyError(f"proxy URL {url!r} is not an http(s) URL",
                             hint="MVA_PROXY_URL takes http(s)://host:port, or several separated by commas")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ProxyError(f"no proxy URL in {spec!r}", hint="set MVA_PROXY_URL to http(s)://host:port[,...]")
    return urls


class RoundRobinTransport(httpx.AsyncBaseTransport):
    """Sends each request to the next proxy in turn (their URL prefix swapped for the first one's)."""

    def __init__(self, urls: list[str], *, limits: httpx.Limits,
                 inner: httpx.AsyncBaseTransport | None = None) -> None:
        if not urls:
            raise ProxyError("RoundRobinTransport needs at least one proxy URL")
        self.targets = [httpx.URL(u) for u in urls]
        self._base_path = self.targets[0].path.rstrip("/")
        self._inner = inner or httpx.AsyncHTTPTransport(limits=limits)
        self._turn = itertools.count()
        self.sent: Counter[str] = Counter()  # requests per proxy URL, for tests and progress output

    def pick(self) -> httpx.URL:
        return self.targets[next(self._turn) % len(self.targets)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self.pick()
        path = request.url.path
        if self._base_path and path.startswith(self._base_path):
            path = path[len(self._base_path):]
        request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port,
                                            path=target.path.rstrip("/") + path)
        request.headers["Host"] = target.netloc.decode("ascii")
        self.sent[str(target)] += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def client_options(spec: str, *, limits: httpx.Limits) -> dict[str, Any]:
    """``base_url`` and ``transport`` for an ``httpx.AsyncClient`` talking to the proxies in ``spec``.

    A custom transport ignores the client's own ``limits``, so they are given here.
    """
    urls = split_proxy_urls(spec)
    transport: httpx.AsyncBaseTransport = (
        httpx.AsyncHTTPTransport(limits=limits) if len(urls) == 1 else RoundRobinTransport(urls, limits=limits))
    return {"base_url": urls[0], "transport": transport}
