"""Append-only line files that survive a crash: the chronologs, ``logs/`` and their readers.

Why it is built this way:

* **One ``os.write`` per line** on an ``O_APPEND`` descriptor, under an exclusive ``flock`` shared by
  every writer (threads and processes): a line is wholly in the file, or - after a crash mid-write -
  it is a *torn tail* with no newline. Nothing sits in a user-space buffer that dies with the process.
* **A torn tail is set aside, never glued to the next line.** The next writer moves the fragment to
  ``<file>.torn`` (fsync'd; nothing is deleted), truncates the file back to its last newline and
  tells its caller, who records that it happened. Readers skip and report bad lines.
* **Durable within 500 ms.** Chronologs ``fsync`` every line (after releasing the lock, so writers
  never queue behind each other's fsync). Plain logs use a group commit: a
  background thread ``fsync``s at most ``interval`` (0.2 s) after a write, so progress lines never
  wait for the disk. ``bench/persistence.py`` measures the event-to-durable latency of both.
* **Plain logs rotate** past ``max_bytes`` into ``<name>.000001.gz``, ``.000002.gz``, ... (oldest
  first, never deleted); a rotation interrupted by a crash is finished by the next writer.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gzip
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_INTERVAL_S = 0.2
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
IDLE_EXIT_S = 30.0  # a flusher with nothing to do for this long ends (long-lived processes log many sessions)


@dataclass(frozen=True)
class TornTail:
    """An incomplete last line found in ``path`` and moved to ``set_aside_to``."""

    path: Path
    offset: int
    fragment: bytes
    set_aside_to: Path


@dataclass
class BadLine:
    """A line a reader could not use: its 1-based number, its text and why."""

    lineno: int
    text: str
    reason: str
    last: bool = False  # the file's last line: a crash mid-write, not tampering


@dataclass
class JsonlRead:
    records: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)  # fragments moved to <file>.torn earlier


def torn_path(path: Path) -> Path:
    return path.with_name(path.name + ".torn")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _last_newline_end(fd: int, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 if there is none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        pos = start
    return 0


def _set_aside_torn_tail(fd: int, path: Path, mode: int = 0o644) -> TornTail | None:
    """Called with the lock held: move an incomplete last line out of the way (to a file made with ``mode``)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    start = _last_newline_end(fd, size)
    fragment = os.pread(fd, size - start, start)
    aside = torn_path(path)
    note = json.dumps({"set_aside_at": _now(), "file": path.name, "offset": start,
                       "fragment": fragment.decode("utf-8", errors="replace")}, ensure_ascii=False)
    afd = os.open(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(afd, (note + "\n").encode("utf-8"))
        os.fsync(afd)
    finally:
        os.close(afd)
    os.ftruncate(fd, start)
    os.fsync(fd)
    return TornTail(path=path, offset=start, fragment=fragment, set_aside_to=aside)


@contextlib.contextmanager
def locked_append(path: Path, mode: int = 0o644) -> Iterator[int]:
    """An ``O_APPEND`` descriptor of ``path`` under an exclusive flock, surviving a concurrent rotation.

    ``mode`` is the permission a new file is created with (before the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # rotated away while we waited for the lock: open the new file
                continue
            yield fd
            return
        finally:
            os.close(fd)  # closing releases the flock


def append_line(path: Path, line: bytes | Callable[[], bytes], *, fsync: bool = True,
                before_write: Callable[[int, bytes], None] | None = None, mode: int = 0o644) -> TornTail | None:
    """Append one line (built under the lock if ``line`` is callable, so timestamps stay ordered).

    The one writer of fsync'd JSON-lines files: chronologs, ``logs/failures.jsonl``, the cost ledger,
    the conversation log, the proxy ledger. Returns the torn tail that was set aside first, if there
    was one. ``before_write`` is a hook for crash tests (see :mod:`mva_dagster.sessions.crashpoints`);
    ``mode`` is the permission a new file (and its ``.torn``) is created with.
    """
    with locked_append(path, mode) as fd:
        torn = _set_aside_torn_tail(fd, path, mode)
        data = line() if callable(line) else line
        if not data.endswith(b"\n"):
            data += b"\n"
        if before_write is not None:
            before_write(fd, data)
        os.write(fd, data)
        if fsync:
            # The line is whole in the file: let the next writer in while this one waits for the disk
            # (one fsync then covers every line written so far, so writers do not queue behind fsyncs).
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.fsync(fd)
    return torn


def read_jsonl(path: Path) -> JsonlRead:
    """Every JSON object line of ``path``; unreadable lines are reported, never raised."""
    result = JsonlRead()
    if not path.exists():
        return result
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    ends_clean = raw.endswith(b"\n") or not raw
    if ends_clean and lines and lines[-1] == b"":
        lines.pop()
    for number, chunk in enumerate(lines, start=1):
        text = chunk.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        is_last = number == len(lines)
        try:
            value = json.loads(text)
        except ValueError as exc:
            torn = is_last and not ends_clean
            result.bad.append(BadLine(number, text, "torn last line (a crash mid-write)" if torn
                                      else f"not JSON: {exc}", last=is_last))
            continue
        if isinstance(value, dict):
            result.records.append(value)
        else:
            result.bad.append(BadLine(number, text, "not a JSON object", last=is_last))
    aside = torn_path(path)
    if aside.exists():
        for text in aside.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                result.set_aside.append(str(json.loads(text).get("fragment", "")))
            except (ValueError, AttributeError):
                result.set_aside.append(text)
    return result


# ------------------------------------------------------------------ plain logs (group commit)


_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d{6})(?P<gz>\.gz)?$")


def rotated_files(path: Path) -> list[Path]:
    """``<name>.NNNNNN.gz`` of ``path``, oldest first."""
    if not path.parent.is_dir():
        return []
    found = []
    for candidate in path.parent.iterdir():
        match = _ROTATED.match(candidate.name)
        if match and match.group("base") == path.name and match.group("gz"):
            found.append((int(match.group("n")), candidate))
    return [p for _, p in sorted(found)]


def _compress(raw: Path) -> Path:
    """gzip ``raw`` to ``raw.gz`` durably, then remove ``raw``."""
    target = raw.with_name(raw.name + ".gz")
    tmp = raw.with_name(f".{raw.name}.gz.tmp")
    with open(raw, "rb") as source, open(tmp, "wb") as sink:
        with gzip.GzipFile(filename=raw.name, mode="wb", fileobj=sink, mtime=0) as zipped:
            shutil.copyfileobj(source, zipped)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(tmp, target)
    raw.unlink()
    from mva_dagster.fsutil import fsync_dir

    fsync_dir(raw.parent)
    return target


def finish_rotations(path: Path) -> None:
    """Compress rotated files a crash left uncompressed."""
    if not path.parent.is_dir():
        return
    for candidate in path.parent.iterdir():
        match = _ROTATED.match(candidate.name)
        if match and match.group("base") == path.name and not match.group("gz"):
            _compress(candidate)


def _rotate(fd: int, path: Path) -> None:
    """Called with the lock held: move the full log aside and compress it."""
    os.fsync(fd)
    numbers = [int(_ROTATED.match(p.name).group("n")) for p in rotated_files(path)]  # type: ignore[union-attr]
    raw = path.with_name(f"{path.name}.{(max(numbers) + 1 if numbers else 1):06d}")
    os.rename(path, raw)
    _compress(raw)


class PlainLog:
    """A human-readable log (``logs/session.log``): one line per write, durable within ``interval``.

    One instance per file and process (:meth:`for_path`); a daemon thread fsyncs at most
    ``interval`` after a write. ``write`` returns a sequence number; :meth:`wait_durable` blocks
    until that line is fsync'd and returns when it was.
    """

    _instances: dict[Path, PlainLog] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, *, interval: float = DEFAULT_INTERVAL_S,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.interval = interval
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._written = 0
        self._durable = 0
        self._durable_at: dict[int, float] = {}
        self._last_sync = 0.0
        self._closed = False
        self.torn: list[TornTail] = []
        # Called by the flusher after each fsync with (last line made durable, its monotonic time);
        # bench/persistence.py measures event-to-durable latency with it.
        self.on_durable: Callable[[int, float], None] | None = None
        finish_rotations(path)
        self._thread = threading.Thread(target=self._flusher, name=f"plainlog:{path.name}", daemon=True)
        self._thread.start()

    @classmethod
    def for_path(cls, path: Path) -> PlainLog:
        key = path.resolve()
        with cls._guard:
            log = cls._instances.get(key)
            if log is None or log._closed:
                log = cls._instances[key] = cls(key)
            return log

    def write(self, message: str) -> int:
        """Append ``<UTC time> <message>`` (one line per message line); return its sequence number."""
        stamp = _now()
        text = "".join(f"{stamp} {part}\n" for part in (message.rstrip("\n").split("\n") or [""]))
        with locked_append(self.path) as fd:
            torn = _set_aside_torn_tail(fd, self.path)
            if torn is not None:
                self.torn.append(torn)
                os.write(fd, f"{stamp} [log] an incomplete line left by a crash was moved to "
                             f"{torn.set_aside_to.name}\n".encode())
            os.write(fd, text.encode("utf-8"))
            if os.fstat(fd).st_size > self.max_bytes:
                _rotate(fd, self.path)
        with self._cond:
            self._written += 1
            seq = self._written
            closed = self._closed
            self._cond.notify_all()
        if closed:  # the flusher has ended (idle or at exit): make this line durable here
            self._fsync()
            with self._cond:
                self._durable = max(self._durable, seq)
                self._cond.notify_all()
        return seq

    def wait_durable(self, seq: int, timeout: float = 5.0) -> float | None:
        """Block until line ``seq`` is fsync'd; the ``time.monotonic()`` of that fsync, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._durable < seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._durable_at.get(seq, self._last_sync)

    def _flusher(self) -> None:
        while True:
            with self._cond:
                while self._durable >= self._written and not self._closed:
                    if not self._cond.wait(timeout=IDLE_EXIT_S) and self._durable >= self._written:
                        self._closed = True  # idle: for_path() makes a new one when needed
                if self._closed and self._durable >= self._written:
                    return
            delay = self._last_sync + self.interval - time.monotonic()
            if delay > 0 and not self._closed:
                time.sleep(delay)
            with self._cond:
                target = self._written
            self._fsync()
            done = time.monotonic()
            with self._cond:
                for seq in range(self._durable + 1, target + 1):
                    self._durable_at[seq] = done
                if len(self._durable_at) > 4096:  # only recent lines are ever waited for
                    for seq in sorted(self._durable_at)[:-1024]:
                        del self._durable_at[seq]
                self._durable = target
                self._last_sync = done
                self._cond.notify_all()
            if self.on_durable is not None:
                self.on_durable(target, done)

    def _fsync(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        except OSError as exc:  # pragma: no cover - a full or failing disk
            print(f"mva: could not fsync {self.path}: {exc}", file=sys.stderr, flush=True)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Flush what was written and stop the flusher (also run at interpreter exit)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        self._fsync()


@atexit.register
def _close_all() -> None:
    for log in list(PlainLog._instances.values()):
        log.close()


def read_plain_log(path: Path) -> tuple[list[str], list[str]]:
    """All lines of a plain log, rotated parts included, oldest first; and torn fragments found."""
    lines: list[str] = []
    for part in rotated_files(path):
        with gzip.open(part, "rt", encoding="utf-8", errors="replace") as handle:
            lines.extend(handle.read().splitlines())
    torn: list[str] = []
    if path.exists():
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        current = text.split("\n")
        if current and current[-1] == "":
            current.pop()
        elif current:
            torn.append(current.pop())  # no newline: a crash mid-write
        lines.extend(current)
    return lines, torn
