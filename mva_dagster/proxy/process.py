"""Start, stop and check the LiteLLM proxy that every LLM call goes through.

The proxy is a separate process (``litellm --config ...``) on 127.0.0.1, started through
:func:`mva_dagster.services.start_service`, so its pid, port, log and config hash live in
``<state_dir>/proxy.json`` where any later command finds it. Starting takes 8-40 s on a 2-core
machine, which is why a running proxy with the same config is reused rather than restarted.

The master key never appears in argv, the config file (``os.environ/LITELLM_MASTER_KEY``), the state
file or the log: it travels only in the proxy's environment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from mva_dagster.errors import MvaError, ProxyError
from mva_dagster.proxy.config import LEDGER_ENV, MASTER_KEY_ENV, config_hash
from mva_dagster.services import free_port, mva_home, running_state, start_service, stop_service

SERVICE_NAME = "proxy"
LIVENESS_PATH = "/health/liveliness"  # sic: LiteLLM's spelling
READINESS_PATH = "/health/readiness"
DEFAULT_START_TIMEOUT_S = 120.0
LEDGER_FILENAME = "proxy_ledger.jsonl"


@dataclass(frozen=True)
class ProxyInfo:
    """A running proxy: where to reach it and which config it serves."""

    url: str
    port: int
    pid: int
    config_hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_state_dir() -> Path:
    """``$MVA_HOME/proxy``: state file, log, ledger and master key of the proxy."""
    return mva_home() / "proxy"


def master_key_path() -> Path:
    return mva_home() / "proxy" / "master_key"


def master_key() -> str:
    """The proxy's master key: ``$LITELLM_MASTER_KEY``, else a generated key kept in a 0600 file.

    The file lives under ``$MVA_HOME`` (git-ignored) and is created once, atomically, so two
    commands starting at the same moment agree on one key. Never print or log the result.
    """
    from_env = os.environ.get(MASTER_KEY_ENV)
    if from_env:
        return from_env
    path = master_key_path()
    existing = _read_key(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "sk-" + secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        raced = _read_key(path)
        if raced:
            return raced
        raise ProxyError(
            f"the master key file {path} is empty", hint="delete it; a new key is generated"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _read_key(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProxyError(f"cannot read the master key file {path}: {exc}") from exc
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it; a key readable by others is a leaked key
    return text or None


def litellm_argv() -> list[str]:
    """How to run the ``litellm`` CLI of *this* environment (the venv next to sys.executable)."""
    beside = Path(sys.executable).parent / "litellm"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("litellm")
    if found:
        return [found]
    # litellm has no __main__; its console script only calls run_server().
    return [sys.executable, "-c", "import sys; from litellm import run_server; sys.exit(run_server())"]


def start_proxy(
    config_path: str | Path,
    *,
    state_dir: Path | None = None,
    port: int | None = None,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    replace: bool = False,
) -> ProxyInfo:
    """Start the proxy on ``config_path`` (or reuse the one already serving exactly that config).

    A proxy already running in ``state_dir`` with a different config is an error unless ``replace``
    is true, in which case it is stopped first: silently serving another config would make the
    session's recorded config hash a lie.
    """
    config = Path(config_path).resolve()
    if not config.is_file():
        raise ProxyError(
            f"proxy config {config} does not exist", hint="render it with render_proxy_config_file"
        )
    directory = (state_dir or default_state_dir()).resolve()
    digest = config_hash(config)
    current = running_state(directory, SERVICE_NAME)
    if current is not None:
        same_config = current.get("config_hash") == digest
        if same_config and _http_ok(str(current["url"]) + LIVENESS_PATH):
            return _info(current)
        if not same_config and not replace:
            raise ProxyError(
                f"a proxy with another config is already running at {current.get('url')} "
                f"(pid {current.get('pid')}, config {current.get('config_path')})",
                hint="stop it (`mva proxy stop`) or start with replace=True",
            )
        stop_service(directory, SERVICE_NAME)  # replaced, or alive but no longer answering
    chosen_port = port or free_port()
    argv = [*litellm_argv(), "--config", str(config), "--host", "127.0.0.1", "--port", str(chosen_port)]
    ledger = directory / LEDGER_FILENAME
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the price map from the internet
        MASTER_KEY_ENV: master_key(),
        LEDGER_ENV: str(ledger),
    }
    try:
        state = start_service(
            SERVICE_NAME,
            argv,
            state_dir=directory,
            port=chosen_port,
            health_path=LIVENESS_PATH,
            timeout_s=timeout_s,
            env=env,
            extra_state={"config_path": str(config), "config_hash": digest, "ledger": str(ledger)},
        )
    except ProxyError:
        raise
    except MvaError as exc:
        raise ProxyError(f"the LiteLLM proxy did not start: {exc.message}", hint=exc.hint) from exc
    return _info(state)


def stop_proxy(state_dir: Path | None = None) -> bool:
    """Stop the proxy of ``state_dir``; True if one was running."""
    return stop_service((state_dir or default_state_dir()).resolve(), SERVICE_NAME)


def proxy_status(state_dir: Path | None = None) -> dict[str, Any]:
    """What ``mva proxy status`` shows: process, config hash and the two cheap health checks.

    ``/health`` is deliberately not called: it sends a real completion to every deployment.
    """
    directory = (state_dir or default_state_dir()).resolve()
    state = running_state(directory, SERVICE_NAME)
    if state is None:
        return {"running": False, "healthy": False, "state_dir": str(directory)}
    url = str(state["url"])
    key = os.environ.get(MASTER_KEY_ENV) or _read_key(master_key_path())
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    liveliness = _probe(url + LIVENESS_PATH, headers)
    readiness = _probe(url + READINESS_PATH, headers)
    config_path = state.get("config_path")
    config_changed: bool | None = None
    if config_path:
        with contextlib.suppress(OSError):
            config_changed = config_hash(config_path) != state.get("config_hash")
    return {
        "running": True,
        "healthy": bool(liveliness["ok"] and readiness["ok"]),
        "url": url,
        "port": state.get("port"),
        "pid": state.get("pid"),
        "config_path": config_path,
        "config_hash": state.get("config_hash"),
        "config_changed_on_disk": config_changed,
        "started_at": state.get("started_at"),
        "log": state.get("log"),
        "ledger": state.get("ledger"),
        "liveliness": liveliness,
        "readiness": readiness,
        "state_dir": str(directory),
    }


def _info(state: dict[str, Any]) -> ProxyInfo:
    return ProxyInfo(
        url=str(state["url"]),
        port=int(state["port"]),
        pid=int(state["pid"]),
        config_hash=str(state["config_hash"]),
    )


def _http_ok(url: str) -> bool:
    return bool(_probe(url, {})["ok"])


def _probe(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """One GET; the result says what answered, never raises."""
    try:
        response = httpx.get(url, headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        return {"ok": False, "status": None, "error": type(exc).__name__}
    result: dict[str, Any] = {"ok": response.status_code < 300, "status": response.status_code}
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            # readiness reports db/cache state and the litellm version; nothing secret.
            result["detail"] = {k: body[k] for k in ("status", "db", "cache", "litellm_version") if k in body}
    return result
