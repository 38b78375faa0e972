"""Costs of a session checked against the proxy's own ledger, broken down, with hints.

The cost a session records comes from the proxy's ``x-litellm-response-cost`` header, per answer;
the proxy's ledger records ``response_cost`` in its callback. Two independent records of one
spend: they must agree (within 5 % by default) or something was paid that the session does not
know about (retries the client never saw, calls from a crashed run) or vice versa. Issue 4 owns
``mva cost``; these functions are what it (or anyone) can call for the reconciliation figure.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from mva_dagster.llm.archive import SessionArchive
from mva_dagster.observe.ledger import (
    paid_answers,
    paid_by_session,
    session_ledger,
    success_by_call,
    sync_session_ledger,
)
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import load_manifest

DEFAULT_TOLERANCE = 0.05


@dataclass
class Reconciliation:
    """Session cost (from answers) against the proxy ledger (from its callback), per model too."""

    session_usd: float  # what the session recorded: its cost ledger (issue 4) if any, else its archive
    ledger_usd: float
    matched_calls: int
    calls_without_ledger_line: int
    ledger_only_usd: float = 0.0  # ledger success lines of the session's keys that no answer matched
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    session_source: str = "archive"
    archive_usd: float = 0.0

    @property
    def difference_usd(self) -> float:
        return self.ledger_usd + self.ledger_only_usd - self.session_usd

    @property
    def difference_pct(self) -> float:
        base = max(self.session_usd, self.ledger_usd + self.ledger_only_usd)
        return 0.0 if base == 0 else abs(self.difference_usd) / base * 100

    @property
    def within_tolerance(self) -> bool:
        return self.calls_without_ledger_line == 0 and self.difference_pct <= self.tolerance * 100

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(difference_usd=round(self.difference_usd, 10), difference_pct=round(self.difference_pct, 4),
                    within_tolerance=self.within_tolerance)
        return data


def reconcile_costs(layout: SessionLayout, *, tolerance: float = DEFAULT_TOLERANCE,
                    sync: bool = True) -> Reconciliation:
    """Join every archived answer to its ledger line and compare the two costs."""
    entries = SessionArchive(layout).entries()
    lines = (sync_session_ledger(layout, load_manifest(layout).provider, entries=entries) if sync
             else session_ledger(layout))
    by_call, by_key = success_by_call(lines)
    result = Reconciliation(0.0, 0.0, 0, 0, tolerance=tolerance)
    used: set[str] = set()
    per_model: dict[str, dict[str, float]] = defaultdict(lambda: {"session_usd": 0.0, "ledger_usd": 0.0})
    for entry in entries:
        for i, answer in enumerate(paid_answers(entry)):  # re-asked answers were paid for too
            cost = float(answer.cost_usd or 0.0)
            result.session_usd += cost
            per_model[entry.request.model]["session_usd"] += cost
            line = by_call.get(answer.call_id or "")
            if line is None and i == 0:
                line = by_key.get(entry.answer.request_key)
            if line is None or str(line.get("litellm_call_id")) in used:
                result.calls_without_ledger_line += 1
                continue
            used.add(str(line.get("litellm_call_id")))
            ledger_cost = float(line.get("response_cost") or 0.0)
            result.matched_calls += 1
            result.ledger_usd += ledger_cost
            per_model[entry.request.model]["ledger_usd"] += ledger_cost
    for call_id, line in by_call.items():
        if call_id not in used:
            result.ledger_only_usd += float(line.get("response_cost") or 0.0)
    result.archive_usd = result.session_usd
    recorded = _cost_ledger_spent(layout)
    if recorded is not None:  # the session's own cost ledger also counts answers later superseded
        result.session_usd, result.session_source = recorded, "cost_ledger"
    result.by_model = {m: {k: round(v, 10) for k, v in d.items()} for m, d in per_model.items()}
    return result


def _cost_ledger_spent(layout: SessionLayout) -> float | None:
    """Settled spend in the session's cost ledger (``llm/cost.py``), or None without one."""
    from mva_dagster.llm.cost import session_totals

    if not layout.cost_ledger.exists():
        return None
    return float(session_totals(layout).spent_usd)


def cost_breakdown(layout: SessionLayout) -> dict[str, dict[str, float]]:
    """Spend per model, per step (analysis / extraction / synthesis) and per day (UTC)."""
    out: dict[str, dict[str, float]] = {"by_model": defaultdict(float), "by_step": defaultdict(float),
                                        "by_day": defaultdict(float)}
    for entry in SessionArchive(layout).entries():
        for answer in paid_answers(entry):
            cost = float(answer.cost_usd or 0.0)
            out["by_model"][entry.request.model] += cost
            out["by_step"][entry.request.purpose] += cost
            out["by_day"][answer.started_at[:10]] += cost
    return {k: {name: round(v, 10) for name, v in sorted(d.items())} for k, d in out.items()}


def optimisation_hints(layouts: SessionLayout | list[SessionLayout]) -> list[str]:
    """What the sessions' own numbers suggest; each hint says what it is based on."""
    from mva_dagster.errors import SpecError
    from mva_dagster.llm.registry import load_registry
    from mva_dagster.sessions.chronolog import read_events

    sessions = layouts if isinstance(layouts, list) else [layouts]
    hints: list[str] = []
    entries = [e for layout in sessions for e in SessionArchive(layout).entries() if paid_by_session(e)]
    total = sum(float(a.cost_usd or 0.0) for e in entries for a in paid_answers(e))
    sent = reused = 0
    for layout in sessions:  # the chronolog counts re-uses without reading every prompt again
        for event in read_events(layout.chronolog)[0]:
            if event.get("event") == "ANALYSIS_COMPLETED":
                sent += int((event.get("data") or {}).get("sent") or 0)
                reused += int((event.get("data") or {}).get("from_archive") or 0)
    if reused:
        average = total / len(entries) if entries else 0.0
        hints.append(f"cache: {reused} of {sent + reused} analysis answers came from the archive "
                     f"({reused / (sent + reused):.0%}), saving about ${reused * average:.6f}")
    reasked = [e for e in entries if e.answer.superseded]
    if reasked:
        wasted = sum(float(a.cost_usd or 0) for e in reasked for a in e.answer.superseded)
        hints.append(f"re-asks: {len(reasked)} answers were unusable and asked again, costing ${wasted:.6f} "
                     "extra; `mva log search --status superseded` shows what the model returned")
    retried = [e for e in entries if e.answer.attempts > 1 or e.answer.waited_s >= 1]
    if retried:
        hints.append(f"retries and rate limits: {len(retried)} calls waited or needed more than one attempt "
                     f"({sum(e.answer.waited_s for e in retried):.0f} s waited; failed attempts are not billed "
                     "by the proxy); lower the concurrency or raise the rpm in models.yaml if this grows")
    registry = load_registry()
    by_purpose: dict[str, list[Any]] = defaultdict(list)
    for e in entries:
        by_purpose[e.request.purpose].append(e)
    for purpose in ("extraction", "synthesis"):
        for model in sorted({e.request.model for e in by_purpose.get(purpose, [])}):
            try:
                entry = registry.resolve(model)
            except SpecError:
                continue
            cheaper = sorted((m for m in registry.models.values() if m.structured_output and m.provider != "local"
                              and m.output_cost_per_token < entry.output_cost_per_token),
                             key=lambda m: m.output_cost_per_token)
            if cheaper:
                hints.append(f"{purpose} runs on {model}; {cheaper[0].name} also honours JSON Schema and costs "
                             f"${cheaper[0].output_cost_per_token * 1e6:.2f}/M output tokens instead of "
                             f"${entry.output_cost_per_token * 1e6:.2f}/M")
    if total > 0:
        out_cost = 0.0
        prompt = completion = 0
        for e in entries:
            for answer in paid_answers(e):
                prompt += answer.prompt_tokens or 0
                completion += answer.completion_tokens or 0
                try:
                    out_cost += (answer.completion_tokens or 0) * registry.resolve(e.request.model).output_cost_per_token
                except SpecError:
                    continue
        if out_cost / total > 0.6:
            hints.append(f"output tokens are {out_cost / total:.0%} of the cost ({completion} out vs {prompt} in): "
                         "a tighter output contract (shorter quotations, fewer fields) or a lower max_tokens "
                         "saves most")
    return hints


def scope_details(sessions: list[SessionLayout], *, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """What `mva cost` adds for a session, experiment or project: spend per day and per step, the
    reconciliation with the proxy ledger lines each session copied into ``logs/``, and hints."""
    by_day: dict[str, float] = defaultdict(float)
    by_step: dict[str, float] = defaultdict(float)
    rows = []
    session_usd = proxy_usd = 0.0
    unmatched = 0
    for layout in sessions:
        breakdown = cost_breakdown(layout)
        for day, usd in breakdown["by_day"].items():
            by_day[day] += usd
        for step, usd in breakdown["by_step"].items():
            by_step[step] += usd
        r = reconcile_costs(layout, tolerance=tolerance, sync=False)
        session_usd += r.session_usd
        proxy_usd += r.ledger_usd + r.ledger_only_usd
        unmatched += r.calls_without_ledger_line
        rows.append({"session_id": layout.session_id, "session_usd": round(r.session_usd, 8),
                     "proxy_ledger_usd": round(r.ledger_usd + r.ledger_only_usd, 8),
                     "difference_pct": round(r.difference_pct, 4), "within_tolerance": r.within_tolerance,
                     "calls_without_ledger_line": r.calls_without_ledger_line})
    base = max(session_usd, proxy_usd)
    difference = 0.0 if base == 0 else abs(proxy_usd - session_usd) / base * 100
    return {
        "by_day": {k: round(v, 8) for k, v in sorted(by_day.items())},
        "by_step": {k: round(v, 8) for k, v in sorted(by_step.items())},
        "reconciliation": {"session_usd": round(session_usd, 8), "proxy_ledger_usd": round(proxy_usd, 8),
                           "difference_pct": round(difference, 4), "tolerance_pct": tolerance * 100,
                           "within_tolerance": unmatched == 0 and difference <= tolerance * 100,
                           "calls_without_ledger_line": unmatched, "sessions": rows},
        "hints": optimisation_hints(sessions) if sessions else [],
    }
