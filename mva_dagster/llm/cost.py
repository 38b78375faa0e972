"""The cost ledger: what every call of a session cost, durably, and totals for any part of a project.

One JSON line per event in the session's ``logs/cost_ledger.jsonl`` (:attr:`SessionLayout.cost_ledger`),
appended and fsync'd through :func:`mva_dagster.sessions.appendlog.append_line` (a file lock shared
with other processes of the session; a torn line left by a crash is set aside, never glued to the
next record):

* ``reserve`` - before a call is sent: its worst-case cost (prompt tokens + ``max_tokens`` at the
  dearest candidate model's list price). Written first, so a crash never hides money in flight.
* ``settle``  - after it: the actual cost from the proxy's ``x-litellm-response-cost``, and
  ``uncertain_usd`` for attempts whose fate is unknown (the connection broke after the request
  was sent: the provider may have billed it), counted at their worst case.
* ``alert``   - a budget crossed 50 %, 80 % or 100 %; ``pause`` - the session stopped for a budget.

A reservation that is never settled (the process died) counts at its worst case until the session
runs again and reconciles it against the archive. Totals for a session, an experiment or a project
add up the ledgers below that folder (sessions from before the ledger count their archived answers).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mva_dagster.errors import SessionError
from mva_dagster.sessions.appendlog import TornTail, append_line
from mva_dagster.sessions.layout import ExperimentLayout, ProjectLayout, SessionLayout

# The provider's tokenizer can count more than litellm's (Gemini and Claude are counted with a
# tiktoken stand-in; the simulated provider counts characters / 4, measured +12 % on English).
# Reservations add this margin to the counted prompt; completions are capped by max_tokens.
PROMPT_MARGIN = 1.25
PROMPT_PAD_TOKENS = 64


def append(path: Path, record: dict[str, Any]) -> TornTail | None:
    """Append one line and fsync it; returns the torn tail a crash had left (now set aside), if any."""
    return append_line(path, json.dumps(record, sort_keys=True, default=str).encode("utf-8"), fsync=True)


def ledger_mark(layout: SessionLayout) -> int:
    """Where the session's ledger ends now (its last complete line): pass it as ``since`` to
    :func:`mva_dagster.llm.budget.paused_state` to see only what a run about to start writes."""
    return LedgerReader(layout.cost_ledger).mark()


# --------------------------------------------------------------------------------------------------
# Token counting and worst cases
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _count(route: str, text: str) -> int:
    from litellm import token_counter  # imported late: importing litellm takes seconds

    return int(token_counter(model=route, text=text))


def count_prompt_tokens(route: str, messages: list[dict[str, str]],
                        response_format: dict[str, Any] | None = None) -> int:
    """Prompt tokens as litellm counts them for ``route`` (e.g. ``vertex_ai/gemini-2.5-flash``).

    The response format's JSON Schema is counted too: providers that honour it bill it as input.
    """
    from litellm import token_counter

    total = int(token_counter(model=route, messages=messages))
    if response_format:
        total += _count(route, json.dumps(response_format, sort_keys=True))
    return total


def reserved_prompt_tokens(counted: int) -> int:
    """The prompt tokens a reservation assumes: the count plus a margin for other tokenizers."""
    return int(counted * PROMPT_MARGIN) + PROMPT_PAD_TOKENS


# --------------------------------------------------------------------------------------------------
# Reading ledgers
# --------------------------------------------------------------------------------------------------


@dataclass
class LedgerTotals:
    """What one or more ledgers add up to (USD)."""

    spent_usd: float = 0.0  # settled, as the proxy reported it
    uncertain_usd: float = 0.0  # attempts that may have been billed, at their worst case
    open_usd: float = 0.0  # reserved and not (yet) settled: in flight, or orphaned by a crash
    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_model: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    by_purpose: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    alerts: set[tuple[str, float]] = field(default_factory=set)
    paused: dict[str, Any] | None = None
    source: str = "ledger"

    @property
    def committed_usd(self) -> float:
        """What a budget must count: spent, possibly spent, and in flight."""
        return self.spent_usd + self.uncertain_usd + self.open_usd

    def add(self, other: LedgerTotals) -> None:
        self.spent_usd += other.spent_usd
        self.uncertain_usd += other.uncertain_usd
        self.open_usd += other.open_usd
        self.calls += other.calls
        self.failed_calls += other.failed_calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        for model, values in other.by_model.items():
            for key, value in values.items():
                self.by_model[model][key] += value
        for purpose, value in other.by_purpose.items():
            self.by_purpose[purpose] += value


class LedgerReader:
    """Reads one session's ledger incrementally: each refresh parses only the new lines."""

    def __init__(self, path: Path, *, start: int = 0) -> None:
        """``start``: a byte offset (a :meth:`mark`) to read from; the lines before it are not counted."""
        self.path = path
        self._offset = start
        self._open: dict[str, dict[str, Any]] = {}
        self._settled_ids: set[str] = set()
        self._settled = LedgerTotals()
        self._alerts: set[tuple[str, float]] = set()
        self._paused: dict[str, Any] | None = None

    def refresh(self) -> LedgerTotals:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1  # a torn last line is read once it is complete
        for raw in data[:end].splitlines():
            try:
                self._apply(json.loads(raw))
            except (ValueError, TypeError):
                continue
        self._offset += end
        totals = LedgerTotals()
        totals.add(self._settled)
        totals.open_usd = sum(float(r.get("worst_usd") or 0.0) for r in self._open.values())
        totals.alerts = set(self._alerts)
        totals.paused = self._paused
        return totals

    def mark(self) -> int:
        """The offset just after the last complete line read so far (after a refresh)."""
        self.refresh()
        return self._offset

    def open_reservations(self) -> dict[str, dict[str, Any]]:
        self.refresh()
        return dict(self._open)

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "reserve":
            self._open[str(record["id"])] = record
            self._paused = None  # the session is running again
        elif kind == "settle":
            if str(record.get("id")) in self._settled_ids:
                return  # settled twice (a reconciliation raced the live process): count it once
            self._settled_ids.add(str(record.get("id")))
            reserved = self._open.pop(str(record.get("id")), {})
            totals = self._settled
            cost = float(record.get("cost_usd") or 0.0)
            uncertain = float(record.get("uncertain_usd") or 0.0)
            totals.spent_usd += cost
            totals.uncertain_usd += uncertain
            model = str(record.get("model_used") or reserved.get("model") or record.get("model") or "?")
            totals.by_model[model]["cost_usd"] += cost
            totals.by_model[model]["uncertain_usd"] += uncertain
            if record.get("outcome") == "answered":
                totals.calls += 1
                totals.by_model[model]["calls"] += 1
            else:
                totals.failed_calls += 1
            totals.prompt_tokens += int(record.get("prompt_tokens") or 0)
            totals.completion_tokens += int(record.get("completion_tokens") or 0)
            totals.by_purpose[str(reserved.get("purpose") or record.get("purpose") or "analysis")] += cost
        elif kind == "alert":
            self._alerts.add((str(record.get("level")), float(record.get("threshold") or 0.0)))
        elif kind == "pause":
            self._paused = record


def archive_totals(layout: SessionLayout) -> LedgerTotals:
    """Totals of a session without a ledger (made before it existed): its archived answers' costs."""
    totals = LedgerTotals(source="archive")
    if not layout.llm_archive.is_dir():
        return totals
    for path in sorted(layout.llm_archive.glob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            answers = [entry["answer"], *(entry["answer"].get("superseded") or [])]
            model = str(entry["request"]["model"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for answer in answers:
            cost = float(answer.get("cost_usd") or 0.0)
            totals.spent_usd += cost
            totals.calls += 1
            totals.prompt_tokens += int(answer.get("prompt_tokens") or 0)
            totals.completion_tokens += int(answer.get("completion_tokens") or 0)
            totals.by_model[str(answer.get("model_used") or model)]["cost_usd"] += cost
            totals.by_model[str(answer.get("model_used") or model)]["calls"] += 1
            totals.by_purpose["analysis"] += cost
    return totals


def session_totals(layout: SessionLayout) -> LedgerTotals:
    path = layout.cost_ledger
    return LedgerReader(path).refresh() if path.exists() else archive_totals(layout)


# --------------------------------------------------------------------------------------------------
# Scopes: session, experiment, project
# --------------------------------------------------------------------------------------------------


def experiment_sessions(experiment: ExperimentLayout) -> list[SessionLayout]:
    return experiment.sessions()


def project_sessions(project: ProjectLayout) -> Iterator[SessionLayout]:
    for experiment in project.experiments():
        yield from experiment.sessions()


def scope_of(path: Path) -> tuple[str, list[SessionLayout], str]:
    """(level, its sessions, its name) for a session, experiment or project folder."""
    path = path.resolve()
    if (path / "session.json").is_file():
        return "session", [SessionLayout(path)], path.name
    if (path / "sessions").is_dir() or (path / "experiment_snapshot.md").is_file():
        return "experiment", experiment_sessions(ExperimentLayout(path)), path.name
    if (path / "experiments").is_dir():
        return "project", list(project_sessions(ProjectLayout(path))), path.name
    raise SessionError(
        f"{path} is not a session, experiment or project folder",
        hint="pass projects/<P>, projects/<P>/experiments/<E> or .../sessions/session_YYYYMMDD_HHMMSS",
    )


def cost_report(path: Path) -> dict[str, Any]:
    """The totals ``mva cost`` prints: overall, per session, per model, per purpose (USD)."""
    level, sessions, name = scope_of(path)
    overall = LedgerTotals()
    rows = []
    for layout in sessions:
        totals = session_totals(layout)
        overall.add(totals)
        rows.append({
            "session_id": layout.session_id,
            "experiment": layout.experiment.name,
            "total_usd": round(totals.spent_usd, 6),
            "uncertain_usd": round(totals.uncertain_usd, 6),
            "open_usd": round(totals.open_usd, 6),
            "calls": totals.calls,
            "failed_calls": totals.failed_calls,
            "source": totals.source,
            "paused_by_budget": totals.paused is not None,
        })
    return {
        "level": level,
        "name": name,
        "path": str(path.resolve()),
        "total_usd": round(overall.spent_usd, 6),
        "uncertain_usd": round(overall.uncertain_usd, 6),
        "open_usd": round(overall.open_usd, 6),
        "calls": overall.calls,
        "failed_calls": overall.failed_calls,
        "prompt_tokens": overall.prompt_tokens,
        "completion_tokens": overall.completion_tokens,
        "by_model": {m: {k: round(v, 6) if k != "calls" else int(v) for k, v in vals.items()}
                     for m, vals in sorted(overall.by_model.items())},
        "by_purpose": {p: round(v, 6) for p, v in sorted(overall.by_purpose.items())},
        "sessions": rows,
    }


def ledger_paths(sessions: Iterable[SessionLayout]) -> list[Path]:
    return [layout.cost_ledger for layout in sessions]
