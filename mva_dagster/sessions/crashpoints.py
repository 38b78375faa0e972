"""Named points where a crash test can make this process die exactly as ``kill -9`` would.

Random kills (``bench/crash.py``) show the guarantees hold in general; these points make the worst
moments reproducible in the test suite. Set ``MVA_CRASH_AT`` to a comma-separated list of
``name`` or ``name:N`` (die the N-th time the point is reached in this process). Unset, every
call is a dictionary lookup and nothing else.

Points: ``archive.before_store`` (an answer received, not yet archived), ``archive.after_store``
(archived, its proxy-journal entry not yet removed), ``chronolog.torn`` (half of a chronolog line
written; ``chronolog.torn.<EVENT>`` counts only that event, e.g. ``chronolog.torn.DAGSTER_RUN_FINISHED``
dies mid-line right after a Dagster run), ``runner.before_session_job`` (per-document work done,
tables not yet written).
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable

ENV = "MVA_CRASH_AT"
_counts: Counter[str] = Counter()
_lock = threading.Lock()


def _armed(name: str) -> bool:
    spec = os.environ.get(ENV)
    if not spec:
        return False
    for item in spec.split(","):
        point, _, nth = item.strip().partition(":")
        if point == name:
            with _lock:
                _counts[name] += 1
                return _counts[name] == (int(nth) if nth else 1)
    return False


def die() -> None:
    """SIGKILL this process: no cleanup, no atexit, no flush - a real crash."""
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str) -> None:
    if _armed(name):
        die()


def torn_write(*names: str) -> Callable[[int, bytes], None] | None:
    """A hook for :func:`~mva_dagster.sessions.appendlog.append_line` that writes half a line, then dies."""
    if not os.environ.get(ENV):
        return None

    def hook(fd: int, data: bytes) -> None:
        if any([_armed(name) for name in names]):  # a list: every name's counter advances
            os.write(fd, data[: max(1, len(data) // 2)])
            os.fsync(fd)
            die()

    return hook
