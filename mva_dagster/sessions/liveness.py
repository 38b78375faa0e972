"""Is the process that set a session's status to *running* still running it?

A process killed with ``kill -9`` (or lost with its machine) never gets to write its final status,
so ``session.json`` would say ``running`` forever. When a run starts, :func:`this_process` is
recorded in the manifest (``running_process``): the pid, the host, and - on Linux - the boot id and
the process's start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``). A pid can be
reused after its process died; the pair (boot id, start time) cannot, so a recycled pid is never
mistaken for the run.

:func:`check_process` answers *alive*, *dead* or *unknown* (recorded on another host, or nothing
recorded: a session from before this field existed), with a sentence saying why.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

State = Literal["alive", "dead", "unknown"]
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class ProcessRef(BaseModel):
    """The process that runs a session (``running_process`` in ``session.json``)."""

    pid: int
    host: str
    boot_id: str | None = Field(default=None, description="Linux boot id: a reboot ends every process.")
    start_ticks: int | None = Field(
        default=None, description="Start time in clock ticks since boot (/proc/<pid>/stat); defeats pid reuse.")
    since: str = Field(description="When the status became running (UTC).")


@dataclass(frozen=True)
class Liveness:
    state: State
    detail: str  # e.g. "process 4242 no longer running"


def hostname() -> str:
    return socket.gethostname()


def boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None (no such process, or no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rfind(b")") + 2:].decode("ascii", errors="replace").split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of stat; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def this_process() -> ProcessRef:
    pid = os.getpid()
    return ProcessRef(pid=pid, host=hostname(), boot_id=boot_id(), start_ticks=start_ticks(pid),
                      since=datetime.now(UTC).isoformat().replace("+00:00", "Z"))


def check_process(ref: ProcessRef | None) -> Liveness:
    """Whether ``ref`` is still running; only a process on this host can be checked."""
    if ref is None:
        return Liveness("unknown", "no running process is recorded (a session from before pids were recorded)")
    if ref.host != hostname():
        return Liveness("unknown", f"process {ref.pid} on host {ref.host}; it cannot be checked from {hostname()}")
    if ref.boot_id is not None and boot_id() is not None and ref.boot_id != boot_id():
        return Liveness("dead", f"process {ref.pid} no longer running (the machine restarted since)")
    from mva_dagster.services import pid_alive

    if not pid_alive(ref.pid):
        return Liveness("dead", f"process {ref.pid} no longer running")
    fields = _stat_fields(ref.pid)
    if fields is not None and fields[:1] == ["Z"]:  # a zombie: dead, its parent has not reaped it yet
        return Liveness("dead", f"process {ref.pid} no longer running")
    if ref.start_ticks is not None:
        now = start_ticks(ref.pid)
        if now is not None and now != ref.start_ticks:
            return Liveness("dead", f"process {ref.pid} no longer running (the pid now belongs to another process)")
    return Liveness("alive", f"process {ref.pid} on {ref.host}")
