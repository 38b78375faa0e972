"""The serving stack of one provider mode: a provider server (simulated/local) behind a real proxy.

Each mode has its own state folder, ``$MVA_HOME/proxy/<mode>/``, so a simulated dry-run and a real
session can run side by side. The proxy of a mode serves every registered alias: in ``simulated``
mode each alias answers from the simulated server at its real list price (what it would have
cost); in ``local`` mode each alias is answered by the local model (cost 0) and the session records
that it ran on ``local``; in ``real`` mode each alias goes to its provider.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mva_dagster.errors import ProxyError, SpecError
from mva_dagster.llm.registry import load_registry
from mva_dagster.proxy.config import render_proxy_config_file
from mva_dagster.proxy.process import ProxyInfo, proxy_status, start_proxy, stop_proxy
from mva_dagster.services import (
    free_port,
    mva_home,
    python_module_argv,
    running_state,
    start_service,
    stop_service,
)

Mode = Literal["real", "local", "simulated"]
MODES: tuple[Mode, ...] = ("real", "local", "simulated")
SIMULATED_CONFIG_ENV = "MVA_SIMULATED_CONFIG"


def state_dir(mode: str) -> Path:
    return mva_home() / "proxy" / mode


@dataclass
class Stack:
    mode: Mode
    proxy: ProxyInfo
    upstream_url: str | None
    started: list[str] = field(default_factory=list)  # services this call started (and may stop)

    def stop_started(self) -> None:
        """Stop what :func:`ensure_stack` started; leave what was already running."""
        directory = state_dir(self.mode)
        if "proxy" in self.started:
            stop_proxy(directory)
        for name in ("simulated", "local"):
            if name in self.started:
                stop_service(directory, name)


def check_real_keys(aliases: list[str]) -> None:
    """Refuse to start a real session whose provider keys are missing, naming each variable."""
    registry = load_registry()
    missing = {}
    for alias in aliases:
        entry = registry.resolve(alias)
        if entry.provider != "local" and registry.missing_env(entry):
            missing[alias] = registry.missing_env(entry)
    if missing:
        detail = "; ".join(f"{alias} needs {', '.join(names)}" for alias, names in missing.items())
        raise SpecError(f"provider keys are missing for a real run: {detail}",
                        hint="export them (see docs/proxy-and-models.md), or dry-run with "
                             "`--provider simulated` (no cost) or `--provider local`")


def _ensure_provider(mode: Mode, directory: Path, started: list[str]) -> str | None:
    if mode == "real":
        return None
    existing = running_state(directory, mode)
    if existing is None:
        port = free_port()
        if mode == "simulated":
            argv = python_module_argv("mva_dagster.providers.simulated", "--port", str(port),
                                      "--ledger", str(directory / "simulated_ledger.jsonl"))
            if os.environ.get(SIMULATED_CONFIG_ENV):
                argv += ["--config", os.environ[SIMULATED_CONFIG_ENV]]
            timeout = 60.0
        else:
            from mva_dagster.providers.model_fetch import ensure_local_model

            model = ensure_local_model()
            argv = python_module_argv("mva_dagster.providers.local", "--port", str(port), "--model", str(model))
            timeout = 240.0
        existing = start_service(mode, argv, state_dir=directory, port=port, health_path="/health",
                                 timeout_s=timeout)
        started.append(mode)
    return f"{existing['url']}/v1"


def ensure_stack(mode: Mode) -> Stack:
    """Start (or reuse) the provider and the proxy of ``mode``; export ``MVA_PROXY_URL``."""
    if mode not in MODES:
        raise ProxyError(f"unknown provider mode {mode!r}; expected one of {', '.join(MODES)}")
    directory = state_dir(mode)
    started: list[str] = []
    try:
        upstream = _ensure_provider(mode, directory, started)
        registry = load_registry()
        rendered = render_proxy_config_file(registry, mode=mode, aliases=registry.names(),
                                            upstream_url=upstream, out_dir=directory)
        was_running = proxy_status(directory).get("running", False)
        info = start_proxy(rendered.path, state_dir=directory, replace=True)
        if not was_running or info.config_hash != rendered.sha256:
            started.append("proxy")
    except BaseException:
        Stack(mode, ProxyInfo("", 0, 0, ""), None, started).stop_started()
        raise
    os.environ["MVA_PROXY_URL"] = info.url
    return Stack(mode=mode, proxy=info, upstream_url=upstream, started=started)


def running_proxy_urls() -> dict[str, str]:
    """Mode -> URL of every healthy proxy under ``$MVA_HOME/proxy``."""
    urls: dict[str, str] = {}
    for mode in MODES:
        status = proxy_status(state_dir(mode))
        if status.get("running") and status.get("url"):
            urls[mode] = str(status["url"])
    return urls


def stop_stack(mode: Mode) -> list[str]:
    """Stop the proxy and provider of ``mode`` (``mva proxy stop``); names what was stopped."""
    directory = state_dir(mode)
    stopped = []
    if stop_proxy(directory):
        stopped.append("proxy")
    for name in ("simulated", "local"):
        if stop_service(directory, name):
            stopped.append(name)
    return stopped
