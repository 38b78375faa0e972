"""Limits held by real LiteLLM proxies: per-key rpm, a key limit shared by two proxies through Redis,
and a proxy killed and restarted in the middle of a run.

Two proxies (the second only matters with Redis) start once for the module, in front of one
simulated provider, with a key table of their own. Redis is 127.0.0.1:6379 unless
``MVA_TEST_REDIS_URL`` says otherwise; without it the shared-limit test is skipped.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from mva_dagster.errors import RateLimitedLLMError
from mva_dagster.llm.gateway import classify_http_error
from mva_dagster.llm.registry import load_registry
from mva_dagster.proxy.config import render_proxy_config_file
from mva_dagster.proxy.process import master_key, start_proxy, stop_proxy

pytestmark = pytest.mark.integration
MODEL = "gemini-2.5-flash"
REDIS_URL = os.environ.get("MVA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_RPM = 3
SHARED_RPM = 4


def redis_problem() -> str | None:
    """Why Redis cannot be used here, or None."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no Redis to test with
        return f"no Redis at {REDIS_URL} ({type(exc).__name__}); set MVA_TEST_REDIS_URL to test shared limits"
    return None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mva_dagster.providers.simulated import SimulatedConfig, serve_in_thread

    home = tmp_path_factory.mktemp("fleet")
    keys = {"MVA_TEST_KEY_LIMITED": "sk-lim-" + secrets.token_hex(8),  # fresh values: fresh counters in Redis
            "MVA_TEST_KEY_SHARED": "sk-sha-" + secrets.token_hex(8)}
    table = home / "keys.yaml"
    table.write_text(f"keys:\n  limited: {{env: MVA_TEST_KEY_LIMITED, rpm: {KEY_RPM}}}\n"
                     f"  shared: {{env: MVA_TEST_KEY_SHARED, rpm: {SHARED_RPM}}}\n")
    redis_url = "" if redis_problem() else REDIS_URL
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MVA_HOME", str(home))
        mp.setenv("MVA_PROXY_KEYS", str(table))
        mp.delenv("LITELLM_MASTER_KEY", raising=False)
        for name, value in keys.items():
            mp.setenv(name, value)
        upstream = serve_in_thread(SimulatedConfig(latency_s=0.3), ledger=home / "simulated_ledger.jsonl")
        rendered = render_proxy_config_file(load_registry(), mode="simulated", aliases=[MODEL],
                                            upstream_url=upstream.api_base, out_dir=home, redis_url=redis_url)
        dirs = [home / "proxy_a", home / "proxy_b"]
        try:
            with ThreadPoolExecutor(2) as pool:  # two proxies start faster side by side
                infos = list(pool.map(lambda d: start_proxy(rendered.path, state_dir=d), dirs))
            yield {"a": infos[0], "b": infos[1], "dirs": dirs, "config": rendered.path, "upstream": upstream,
                   "keys": keys, "redis": bool(redis_url), "home": home}
        finally:
            for directory in dirs:
                stop_proxy(directory)
            upstream.stop()


def chat(url: str, key: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": MODEL, "messages": [{"role": "user", "content": text}]})


def test_a_keys_rpm_is_enforced_and_answered_with_retry_after(fleet: dict[str, Any]) -> None:
    key = fleet["keys"]["MVA_TEST_KEY_LIMITED"]
    statuses = [chat(fleet["a"].url, key, f"limited {i}").status_code for i in range(KEY_RPM)]
    over = chat(fleet["a"].url, key, "limited over")
    assert statuses == [200] * KEY_RPM
    assert over.status_code == 429 and float(over.headers["retry-after"]) > 0
    assert key not in over.text  # the proxy names the key by its hash only
    error = classify_http_error(over.status_code, over.text, over.headers)
    assert isinstance(error, RateLimitedLLMError) and error.retry_after  # the gateway waits, not fails
    assert chat(fleet["a"].url, master_key(), "master is not limited by the key table").status_code == 200
    assert chat(fleet["a"].url, "sk-not-in-the-table", "who").status_code == 401


def test_a_key_limit_is_shared_by_two_proxies_through_redis(fleet: dict[str, Any]) -> None:
    if not fleet["redis"]:
        pytest.skip(redis_problem() or "no Redis")
    key = fleet["keys"]["MVA_TEST_KEY_SHARED"]
    statuses = [chat(fleet["a" if i % 2 == 0 else "b"].url, key, f"shared {i}").status_code
                for i in range(2 * SHARED_RPM)]
    # Without the shared counter each proxy would admit SHARED_RPM: twice the limit in total.
    assert statuses.count(200) == SHARED_RPM and statuses.count(429) == SHARED_RPM


def test_a_proxy_killed_and_restarted_mid_run_loses_nothing(fleet: dict[str, Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mva_dagster.demo.sotu_corpus import build_sotu_corpus
    from mva_dagster.launch import create_planned_session, plan_session
    from mva_dagster.llm.archive import SessionArchive
    from mva_dagster.llm.gateway import LLMGateway
    from mva_dagster.steps.analysis import run_analysis
    from mva_dagster.steps.context import SessionContext
    from tests.integration.test_session_e2e import DEMO_FRAMEWORK, write_experiment

    corpus = build_sotu_corpus(tmp_path / "corpus", words=40,
                               fileids=("1982-Reagan-1", "1994-Clinton-1", "2010-Obama-1", "2018-Trump-1"))
    experiment = write_experiment(tmp_path / "exp" / "restart", framework=DEMO_FRAMEWORK, corpus=corpus,
                                  models=[MODEL], runs=2)
    plan = plan_session(experiment, provider="simulated", project_dir=tmp_path / "projects" / "R")
    layout = create_planned_session(plan)
    ctx = SessionContext.load(layout)
    monkeypatch.setenv("MVA_MAX_CONCURRENCY", "2")  # calls in pairs, so the kill lands mid-run
    proxy, directory = fleet["a"], fleet["dirs"][0]
    lines: list[str] = []
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = run_analysis(ctx, LLMGateway(proxy_url=proxy.url), [d.id for d in
                                                                                      plan.corpus.documents],
                                              lines.append)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while len(list(layout.llm_archive.glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proxy.pid, signal.SIGKILL)  # a crash, not a clean shutdown
    stop_proxy(directory)  # forget the dead one's state
    restarted = start_proxy(fleet["config"], state_dir=directory, port=proxy.port)
    fleet["a"] = restarted
    worker.join(240)
    assert not worker.is_alive() and "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert len(summary.outcomes) == 8 and not summary.failed
    assert any("unreachable" in line for line in lines)  # the wait was said, not silent
    archived = SessionArchive(layout).keys()
    served = {line["x_mva_request_key"] for line in _ledger(fleet["home"] / "simulated_ledger.jsonl")
              if line["served_ok"] and line.get("x_mva_request_key")}
    mine = {ctx.analysis_request(*call).key() for call in ctx.calls()}
    assert served & mine <= archived  # every answer the provider served for this run is archived


def _ledger(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
