"""`mva watch`: a live terminal dashboard of one session, built only from the session's files.

It reads ``session.json``, ``logs/conversations.jsonl``, ``session_chronolog.jsonl`` and
``logs/live_records.jsonl`` incrementally (each frame reads only what was appended since the last),
so it works from another terminal, another user or another machine with the folder mounted, while
`mva run` or the Dagster daemon is running the session, and costs nothing when the session is big.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from mva_dagster.errors import SessionError
from mva_dagster.llm.conversations import conversations_path
from mva_dagster.observe import display
from mva_dagster.observe.fields import score_table
from mva_dagster.observe.files import JsonlTail, live_records_path
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import SessionManifest, load_manifest

RUNNING = ("created", "running")
CallKey = tuple[str, str, int]


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class SessionState:
    """What the dashboard knows so far; :meth:`refresh` folds in whatever was appended."""

    layout: SessionLayout
    manifest: SessionManifest
    answered: set[CallKey] = field(default_factory=set)
    failed: dict[CallKey, str] = field(default_factory=dict)
    from_archive: int = 0
    sent: int = 0
    other_calls: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    cost_by_model: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    proxy_retries: int = 0
    waited_calls: int = 0
    waited_seconds: float = 0.0
    answer_times: deque[datetime] = field(default_factory=lambda: deque(maxlen=10_000))
    first_event: datetime | None = None
    last_event: datetime | None = None
    waits: int = 0
    wait_seconds: float = 0.0
    last_wait: str | None = None
    alerts: Counter[str] = field(default_factory=Counter)
    last_alert: str | None = None
    run_failures: list[str] = field(default_factory=list)
    latest: dict[str, Any] | None = None
    invalid: dict[CallKey, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._conversations = JsonlTail(conversations_path(self.layout))
        self._chronolog = JsonlTail(self.layout.chronolog)
        self._records = JsonlTail(live_records_path(self.layout))

    @classmethod
    def open(cls, layout: SessionLayout) -> SessionState:
        return cls(layout=layout, manifest=load_manifest(layout))

    @property
    def planned(self) -> int:
        m = self.manifest
        return len(m.documents) * len(m.models) * m.runs_per_model

    def refresh(self) -> None:
        with contextlib.suppress(SessionError):  # being rewritten this instant: keep the last one
            self.manifest = load_manifest(self.layout)
        for entry in self._conversations.read():
            self._conversation(entry)
        for event in self._chronolog.read():
            self._event(event)
        for record in self._records.read():
            self.latest = record
            key = (str(record.get("document_id")), str(record.get("model")), int(record.get("replicate") or 0))
            if record.get("status") == "invalid":
                self.invalid[key] = "; ".join(record.get("errors") or []) or "invalid"
            else:
                self.invalid.pop(key, None)

    def _seen(self, when: datetime | None) -> None:
        if when is None:
            return
        self.first_event = when if self.first_event is None else min(self.first_event, when)
        self.last_event = when if self.last_event is None else max(self.last_event, when)

    def _conversation(self, entry: dict[str, Any]) -> None:
        when = _time(entry.get("ts"))
        self._seen(when)
        if entry.get("purpose", "analysis") != "analysis":
            self.other_calls[str(entry.get("purpose"))] += 1
        key = (str(entry.get("document_id")), str(entry.get("model")), int(entry.get("replicate") or 0))
        if entry.get("status") == "superseded":  # re-asked: paid for, replaced by a later line
            self.cost_usd += float(entry.get("cost_usd") or 0.0)
            self.cost_by_model[str(entry.get("model"))] += float(entry.get("cost_usd") or 0.0)
            return
        if entry.get("status") == "failed":
            if entry.get("purpose", "analysis") == "analysis" and key not in self.answered:
                self.failed[key] = f"{entry.get('error_class')}: {str(entry.get('error') or '').splitlines()[0]}"
            return
        if entry.get("purpose", "analysis") == "analysis":
            self.answered.add(key)
            self.failed.pop(key, None)
        if entry.get("from_archive"):
            self.from_archive += 1
            return
        self.sent += 1
        cost = float(entry.get("cost_usd") or 0.0)
        self.cost_usd += cost
        self.cost_by_model[str(entry.get("model"))] += cost
        self.prompt_tokens += int(entry.get("prompt_tokens") or 0)
        self.completion_tokens += int(entry.get("completion_tokens") or 0)
        self.proxy_retries += int(entry.get("proxy_retries") or 0)
        waited = float(entry.get("waited_s") or 0.0)
        self.waited_seconds += waited
        if waited >= 1.0:  # admission takes milliseconds; a second or more is a real wait
            self.waited_calls += 1
        if when is not None:
            self.answer_times.append(when)

    def _event(self, event: dict[str, Any]) -> None:
        self._seen(_time(event.get("timestamp")))
        data = event.get("data") or {}
        name = event.get("event")
        if name == "LLM_CALL_WAITING":
            self.waits += 1
            self.wait_seconds += float(data.get("seconds") or 0.0)
            self.last_wait = f"{data.get('document_id')} waited {float(data.get('seconds') or 0):.1f}s " \
                             f"({data.get('reason')})"
        elif name == "ALERT":
            label = str(data.get("rule") or data.get("kind"))
            self.alerts[label] += 1
            where = " · ".join(str(data[k]) for k in ("document_id", "model") if data.get(k))
            run = f" · run {data['replicate']}" if data.get("replicate") else ""
            values = ", ".join(f"{k} = {v}" for k, v in (data.get("values") or data.get("versions") or {}).items())
            self.last_alert = f"{label} on {where}{run}" + (f" ({values})" if values else "")
        elif name == "DAGSTER_RUN_FINISHED" and data.get("success") is False:
            self.run_failures.append(f"Dagster run {data.get('run_id')} ({data.get('job')}) failed")
        elif name == "RUN_FAILED":
            self.run_failures.append(str(data.get("message") or data.get("run_id")))


def _bar(done: int, total: int, width: int) -> str:
    filled = 0 if total == 0 else round(width * min(done, total) / total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def render(state: SessionState, *, now: datetime | None = None, width: int | None = None) -> str:
    """One frame of the dashboard as text (no terminal control codes)."""
    width = width or shutil.get_terminal_size((100, 40)).columns
    now = now or datetime.now(UTC)
    m = state.manifest
    running = m.status in RUNNING
    lines = [f"mva watch · {m.project}/{m.experiment} · {m.session_id} · provider {m.provider} · "
             f"status: {m.status}", "─" * min(width, 100)]
    total = state.planned
    done = len(state.answered)
    docs_total = len(m.documents)
    per_doc = len(m.models) * m.runs_per_model
    docs_done = sum(1 for d in m.documents
                    if sum(1 for key in state.answered if key[0] == d.id) >= per_doc)
    lines.append(f"progress     {_bar(done, total, 30)} {done}/{total} analysis calls "
                 f"({(done / total if total else 0):.0%}) · documents {docs_done}/{docs_total} complete")
    extra = ", ".join(f"{n} {purpose}" for purpose, n in sorted(state.other_calls.items()))
    lines.append(f"             {state.sent} sent · {state.from_archive} from archive · "
                 f"{len(state.failed)} failed" + (f" · other calls: {extra}" if extra else ""))
    end = now if running else (state.last_event or now)
    elapsed = (end - state.first_event).total_seconds() if state.first_event else 0.0
    recent = [t for t in state.answer_times if (end - t).total_seconds() <= 60]
    if len(state.answer_times) >= 2:
        span = (state.answer_times[-1] - state.answer_times[0]).total_seconds() or 1e-9
        overall = (len(state.answer_times) - 1) / span * 60
    else:
        overall = 0.0
    rate = len(recent) if running and recent else overall
    eta = ""
    if running and rate > 0 and done < total:
        eta = f" · ETA ~{_duration((total - done) / rate * 60)}"
    lines.append(f"throughput   {rate:.1f} calls/min ({'last 60 s' if running and recent else 'overall'}) · "
                 f"elapsed {_duration(elapsed)}{eta}")
    lines.append(f"waits        {state.waited_calls} calls waited 1 s or more on rate limits or retries "
                 f"({state.waited_seconds:.1f} s in all) · {state.waits} retry waits ({state.wait_seconds:.1f} s)"
                 + (f", last: {state.last_wait}" if state.last_wait else "")
                 + f" · proxy-side retries: {state.proxy_retries}")
    by_model = " · ".join(f"{k} ${v:.6f}" for k, v in sorted(state.cost_by_model.items()))
    lines.append(f"cost so far  ${state.cost_usd:.6f} · tokens {state.prompt_tokens:,} in / "
                 f"{state.completion_tokens:,} out" + (f" · {by_model}" if by_model else "")
                 + (" (simulated: what it would cost)" if m.provider == "simulated" else ""))
    if state.alerts:
        counts = " · ".join(f"{rule}: {n}" for rule, n in state.alerts.most_common())
        lines.append(f"alerts       {sum(state.alerts.values())} ({counts})")
        lines.append(f"             latest: {state.last_alert}")
    else:
        lines.append("alerts       none")
    lines.append("")
    if state.latest is not None:
        r = state.latest
        lines.append(f"latest scores  {r.get('document_id')} · {r.get('model')} · run {r.get('replicate')}: "
                     f"{r.get('status')}" + (f" ({r.get('path')})" if r.get("path") else ""))
        lines += display.text_lines(score_table(r.get("fields") or {}), indent="  ")
        lines += [f"  error: {e}" for e in r.get("errors") or []]
    else:
        lines.append("latest scores  (no answer has landed yet)")
    lines.append("")
    problems = [f"{doc} · {model} · run {rep}: {why}" for (doc, model, rep), why in sorted(state.failed.items())]
    problems += [f"{doc} · {model} · run {rep}: INVALID {why}" for (doc, model, rep), why in
                 sorted(state.invalid.items())]
    problems += state.run_failures
    if problems:
        lines.append(f"failures     {len(problems)}")
        lines += [f"  {p}" for p in problems[-8:]]
        if len(problems) > 8:
            lines.append(f"  ... and {len(problems) - 8} earlier (see logs/failures.jsonl)")
    else:
        lines.append("failures     none")
    return "\n".join(lines) + "\n"


def watch(layout: SessionLayout, *, once: bool = False, interval: float = 2.0, out: TextIO | None = None) -> int:
    """Redraw until the session stops running (or once); returns an exit code (0, or 3 if failed)."""
    stream = out or sys.stdout
    state = SessionState.open(layout)
    clear = not once and stream.isatty()
    while True:
        state.refresh()
        frame = render(state)
        stream.write(("\x1b[H\x1b[2J" if clear else "") + frame)
        stream.flush()
        if once or state.manifest.status not in RUNNING:
            return 3 if state.manifest.status == "failed" else 0
        time.sleep(interval)
        if not clear:
            stream.write("\n")
