"""The proxy's answer journal: answers held for a client that may die before archiving them.

A paid answer exists in two places while a call is in flight: at the provider, who has charged for
it, and on the wire. If ``mva run`` is killed in that moment the answer is lost to us and a resume
would pay for it again. So the proxy keeps it: before returning a completion that carries our
``x-mva-request-key`` header, ``AnswerJournal`` (a LiteLLM callback, registered by
``proxy/config.py``) writes the completion to ``<proxy state dir>/answer_journal/<key>.json``
(temp file, fsync, rename). While the call is in flight a ``<key>.pending`` marker names the
proxy's pid, so a resume that starts before the answer arrives waits for it instead of paying twice.

The callback lives in ``proxy/journal_callback.py`` (it imports LiteLLM; this module must not, as
the client imports it). The client side (:func:`recover`, :func:`discard`) is used only by ``llm/archive.py``: on a lookup
miss it moves a journaled answer into the session's archive, and once an answer is archived its
journal entry is removed. The journal therefore only ever holds answers nobody has archived yet.
Nothing but the completion and LiteLLM's cost/model metadata is written: no header, no credential.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from mva_dagster.fsutil import atomic_write_json

JOURNAL_DIRNAME = "answer_journal"
REQUEST_KEY_HEADER = "x-mva-request-key"
DEFAULT_WAIT_S = 900.0  # the longest a call may be in flight (the gateway's per-attempt timeout)
_KEY = re.compile(r"^[0-9a-f]{64}$")


def journal_dir(state_dir: Path) -> Path:
    """The journal of the proxy whose state folder is ``state_dir`` ($MVA_HOME/proxy/<mode>)."""
    return state_dir / JOURNAL_DIRNAME


def _entry_path(directory: Path, key: str) -> Path:
    return directory / f"{key}.json"


def _pending_path(directory: Path, key: str) -> Path:
    return directory / f"{key}.pending"


# ------------------------------------------------------------------ inside the proxy


def proxy_journal_dir() -> Path:
    """Inside the proxy: the journal next to the proxy's ledger (its state folder)."""
    from mva_dagster.proxy.callbacks import ledger_path

    return journal_dir(ledger_path().parent)


def request_key_of(data: dict[str, Any]) -> str | None:
    """Our request key from the proxy's request data, if the client sent a well-formed one."""
    from mva_dagster.proxy.callbacks import _request_key

    key = _request_key(data, {}, data.get("metadata") or {})
    return key if key and _KEY.match(key) else None


def response_meta(response: Any) -> dict[str, Any]:
    """LiteLLM's cost and deployment metadata of a completion; of headers only the x-sim diagnostics."""
    hidden = getattr(response, "_hidden_params", None) or {}
    keep = ("response_cost", "model_id", "api_base", "litellm_call_id")
    out = {name: hidden.get(name) for name in keep if hidden.get(name) is not None}
    headers = hidden.get("additional_headers") or {}
    out["provider_headers"] = {k: str(v) for k, v in headers.items()
                               if str(k).lower().startswith(("llm_provider-x-sim", "x-sim"))}
    return out


def write_entry(directory: Path, key: str, body: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Durably journal one completion (atomic), then drop its in-flight marker."""
    path = _entry_path(directory, key)
    atomic_write_json(path, {"request_key": key, "journaled_at": time.time(), "proxy_pid": os.getpid(),
                             "response": body, "meta": meta})
    with contextlib.suppress(FileNotFoundError):
        _pending_path(directory, key).unlink()
    return path


def write_pending(directory: Path, key: str, timeout_s: float) -> None:
    """An advisory in-flight marker (not fsync'd: a proxy crash voids it anyway)."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = {"pid": os.getpid(), "started": time.time(), "deadline": time.time() + timeout_s}
    tmp = directory / f".{key}.pending.tmp"
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, _pending_path(directory, key))


def clear_pending(directory: Path, key: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _pending_path(directory, key).unlink()


# ------------------------------------------------------------------ client side (the archive)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def in_flight(directory: Path, key: str) -> dict[str, Any] | None:
    """The live in-flight marker of ``key``, or None (stale markers of a dead proxy are removed)."""
    from mva_dagster.services import pid_alive

    marker = _read(_pending_path(directory, key))
    if marker is None:
        return None
    if not pid_alive(int(marker.get("pid", -1))) or time.time() > float(marker.get("deadline", 0)):
        clear_pending(directory, key)
        return None
    return marker


def recover(directory: Path, key: str, *, wait: bool = True, poll_s: float = 0.2) -> dict[str, Any] | None:
    """The journaled completion for ``key``; waits while the proxy still has the call in flight."""
    if not directory.is_dir():
        return None
    while True:
        entry = _read(_entry_path(directory, key))
        if entry is not None and entry.get("request_key") == key:
            return entry
        if not wait or in_flight(directory, key) is None:
            # One last look: the answer may have landed between the two checks.
            entry = _read(_entry_path(directory, key))
            return entry if entry is not None and entry.get("request_key") == key else None
        time.sleep(poll_s)


def discard(directory: Path, key: str) -> None:
    """Forget a journaled answer once the archive holds it (best effort)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        _entry_path(directory, key).unlink()


def pending_keys(directory: Path) -> list[str]:
    """Keys with a journaled, not yet archived answer (for `mva status`)."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if _KEY.match(p.stem))
