"""Start, watch and stop the external processes mva-dagster owns (proxy, provider servers).

Every service runs on 127.0.0.1, writes its log to ``<state_dir>/<name>.log`` and leaves a
``<name>.json`` state file (pid, port, url, config hash) so that another command - ``mva proxy
status``, ``mva health``, a later ``mva run`` - can find it, reuse it, or stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from mva_dagster.errors import MvaError


def mva_home() -> Path:
    """Runtime state (keys, pids, logs, model cache): ``$MVA_HOME`` or ``./.mva``."""
    return Path(os.environ.get("MVA_HOME") or Path.cwd() / ".mva").resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def read_state(state_dir: Path, name: str) -> dict[str, Any] | None:
    path = state_dir / f"{name}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def running_state(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The state of ``name`` if its process is still alive, else None (stale state is removed)."""
    state = read_state(state_dir, name)
    if state is None:
        return None
    if not pid_alive(int(state.get("pid", -1))):
        with contextlib.suppress(OSError):
            (state_dir / f"{name}.json").unlink()
        return None
    return state


def wait_http_ok(url: str, *, timeout_s: float, process: subprocess.Popen[bytes] | None = None,
                 log_path: Path | None = None, what: str = "service",
                 headers: Mapping[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early (with the log's tail) if the process exits."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise MvaError(
                f"{what} exited with code {process.returncode} while starting.\n{log_tail(log_path)}",
                hint=f"see the full log at {log_path}" if log_path else None,
            )
        try:
            response = httpx.get(url, timeout=2.0, headers=dict(headers or {}))
            if response.status_code < 300:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = type(exc).__name__
        time.sleep(0.25)
    raise MvaError(
        f"{what} did not become ready at {url} within {timeout_s:.0f}s (last: {last_error}).\n"
        f"{log_tail(log_path)}",
        hint=f"see the full log at {log_path}" if log_path else None,
    )


def log_tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "last log lines:\n    " + "\n    ".join(tail)


def start_service(
    name: str,
    argv: Sequence[str],
    *,
    state_dir: Path,
    port: int,
    health_path: str,
    timeout_s: float = 90.0,
    env: Mapping[str, str] | None = None,
    extra_state: Mapping[str, Any] | None = None,
    health_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Start ``argv`` detached, wait for ``http://127.0.0.1:{port}{health_path}``, record its state."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"{name}.log"
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,  # survives Ctrl-C of the launching command; stopped by stop_service
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + health_path, timeout_s=timeout_s, process=process, log_path=log_path,
                     what=name, headers=health_headers)
    except BaseException:
        _terminate(process.pid)
        raise
    state = {"name": name, "pid": process.pid, "port": port, "url": url, "log": str(log_path),
             "started_at": time.time(), **(extra_state or {})}
    tmp = state_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_dir / f"{name}.json")
    return state


def stop_service(state_dir: Path, name: str, *, timeout_s: float = 15.0) -> bool:
    """Stop a service started by :func:`start_service`; True if one was running."""
    state = read_state(state_dir, name)
    with contextlib.suppress(OSError):
        (state_dir / f"{name}.json").unlink()
    if state is None or not pid_alive(int(state["pid"])):
        return False
    _terminate(int(state["pid"]), timeout_s=timeout_s)
    return True


def _terminate(pid: int, *, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``timeout_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module`` with this interpreter (the project's venv)."""
    return [sys.executable, "-m", module, *args]
