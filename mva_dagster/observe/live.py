"""Scores as they land: the analysis step hands every call's outcome to a :class:`LiveObserver`.

For each answer the observer parses the raw text (the same parse chain the extraction step uses),
writes the full score table to ``logs/session.log`` (the session's plain-text log, one timestamped
line per table row, through :class:`~mva_dagster.sessions.appendlog.PlainLog`), records
the parsed record in ``logs/live_records.jsonl`` for `mva watch`, and evaluates the experiment's
alert rules (chronolog event + console line). When the last call of a document lands it returns the
document's Markdown so the asset can put it on that partition in Dagster while the run goes on.
At the end it copies the session's proxy ledger lines into ``logs/`` and flags provider-version
drift. None of this decides anything: the extraction step still writes the authoritative records.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mva_dagster.errors import MvaError
from mva_dagster.fsutil import atomic_write_json
from mva_dagster.observe import display
from mva_dagster.observe.alerts import AlertHit, AlertRules, session_rules
from mva_dagster.observe.fields import score_table
from mva_dagster.observe.files import (
    append_line,
    live_records_path,
    proxy_config_copy_path,
    proxy_info_path,
)
from mva_dagster.observe.ledger import SessionCalls
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.appendlog import PlainLog
from mva_dagster.sessions.chronolog import Chronolog, read_events, utc_now
from mva_dagster.steps.context import SessionContext

Report = Callable[[str], None]


@dataclass
class LandedCall:
    """One call's outcome as the observer saw it, parsed."""

    document_id: str
    model: str
    replicate: int
    status: str  # valid | invalid | failed
    from_archive: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    path: str = ""
    cost_usd: float | None = None
    latency_s: float | None = None
    alerts: list[AlertHit] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.document_id} · {self.model} · run {self.replicate}"

    def summary(self) -> str:
        bits = [self.status + (f" ({self.path})" if self.path and self.status != "failed" else "")]
        if self.from_archive:
            bits.append("from archive")
        elif self.cost_usd is not None:
            bits.append(f"${self.cost_usd:.6f}")
        if self.latency_s is not None and not self.from_archive:
            bits.append(f"{self.latency_s:.2f}s")
        return ", ".join(bits)


def record_text(call: LandedCall) -> list[str]:
    """The plain-text block for one call: header, full table, errors (alerts get their own lines)."""
    lines = [f"[scores] {call.title}: {call.summary()}"]
    lines += display.text_lines(score_table(call.fields))
    lines += [f"    error: {e}" for e in call.errors]
    return lines


def record_markdown(call: LandedCall) -> str:
    """The Markdown block for one call (what the Dagster UI shows on the partition)."""
    parts = [f"#### {call.model} · run {call.replicate}: {call.summary()}", ""]
    if call.fields:
        parts.append(display.markdown(score_table(call.fields)))
    parts += [f"- error: {display.md_cell(e)}" for e in call.errors]
    parts += [f"- **ALERT** `{hit.rule}`: {display.md_cell(hit.describe())}" for hit in call.alerts]
    return "\n".join(parts).rstrip() + "\n"


class LiveObserver:
    """Watches one batch of analysis calls of one session (created by the analysis step)."""

    def __init__(self, ctx: SessionContext, report: Report, document_ids: list[str]) -> None:
        self.ctx = ctx
        self.report = report
        self.layout = ctx.layout
        self.chronolog = Chronolog(ctx.layout.chronolog, project=ctx.manifest.project,
                                   session_id=ctx.manifest.session_id)
        framework = ctx.framework
        # Checked before the first call: a misspelt rule must not wait for a paid answer to fail.
        self.rules: AlertRules = session_rules(ctx.layout.experiment.experiment_snapshot,
                                               ctx.layout.experiment.framework_snapshot, ctx.json_schema,
                                               framework.calculation_spec)
        self.pending = Counter(doc for doc, _, _ in ctx.calls(document_ids))
        # Alerts already raised in this session (a re-run answered from the archive says nothing new).
        self.raised: set[tuple[Any, ...]] = set()
        for event in read_events(ctx.layout.chronolog)[0]:
            if event.get("event") == "ALERT":
                data = event.get("data") or {}
                self.raised.add(_alert_key(data))
        self.landed: dict[str, list[LandedCall]] = defaultdict(list)
        # This batch's calls, to copy their proxy ledger lines (and wait for the sent ones').
        self.calls = SessionCalls(since=_epoch(ctx.manifest.created_at))
        self.sent_call_ids: set[str] = set()
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        self.session_log = PlainLog.for_path(self.layout.run_log)
        if self.rules:
            self._log([f"[alerts] rules: {'; '.join(self.rules.rules)}"])

    def _log(self, lines: list[str]) -> None:
        self.session_log.write("\n".join(lines))

    def waiting(self, document_id: str, seconds: float, reason: str) -> None:
        """A retry wait (rate limit, 5xx): a chronolog event, so `mva watch` can show time lost to waits."""
        self.chronolog.append("LLM_CALL_WAITING", {"document_id": document_id, "seconds": round(seconds, 3),
                                                   "reason": reason})

    def call_landed(self, request: LLMRequest, answer: LLMAnswer | None, *, from_archive: bool = False,
                    error_class: str | None = None, error: str | None = None) -> str | None:
        """Show one outcome; returns the document's Markdown when this was its last call."""
        call = self._parse(request, answer, from_archive, error_class, error)
        self.calls.keys.add(request.key())
        if answer is not None:
            ids = {a.call_id for a in (answer, *answer.superseded) if a.call_id}
            self.calls.call_ids |= ids
            if answer.call_id:
                self.calls.answered_keys.add(request.key())
            if not from_archive:
                self.sent_call_ids |= ids
        self._log(record_text(call))
        append_line(live_records_path(self.layout), {
            "ts": utc_now(), "document_id": call.document_id, "model": call.model,
            "replicate": call.replicate, "status": call.status, "from_archive": from_archive,
            "path": call.path, "fields": call.fields, "errors": call.errors, "cost_usd": call.cost_usd,
            "alerts": [{"rule": h.rule, "values": h.values} for h in call.alerts]})
        for hit in call.alerts:
            data = {"kind": "threshold", "rule": hit.rule, "values": hit.values, "document_id": call.document_id,
                    "model": call.model, "replicate": call.replicate}
            if _alert_key(data) in self.raised:
                continue
            self.raised.add(_alert_key(data))
            self.report(f"ALERT {hit.describe()} on {call.title}")
            self.chronolog.append("ALERT", data)
        self.landed[call.document_id].append(call)
        self.pending[call.document_id] -= 1
        if self.pending[call.document_id] > 0:
            return None
        return self.document_markdown(call.document_id)

    def document_markdown(self, document_id: str) -> str:
        calls = sorted(self.landed.get(document_id, []), key=lambda c: (c.model, c.replicate))
        header = f"### {document_id}\n\n"
        return header + "\n".join(record_markdown(c) for c in calls)

    def _parse(self, request: LLMRequest, answer: LLMAnswer | None, from_archive: bool,
               error_class: str | None, error: str | None) -> LandedCall:
        call = LandedCall(request.document_id, request.model, request.replicate, "failed",
                          from_archive=from_archive)
        if answer is None:
            call.errors = [f"{error_class or 'unknown'} error: {(error or '').strip()}"]
            return call
        call.cost_usd = 0.0 if from_archive else answer.cost_usd
        call.latency_s = answer.latency_s
        if answer.raw_text is None:
            call.status, call.errors = "invalid", ["the answer had no text"]
            return call
        from mva_dagster.extraction.parse import extract

        result = extract(answer.raw_text, self.ctx.json_schema)
        call.fields, call.path = dict(result.fields), result.path
        call.errors = list(result.errors)
        if answer.finish_reason == "length":
            call.errors.append("the answer was cut off at max_tokens (finish_reason=length)")
        call.status = "valid" if result.valid and not call.errors else "invalid"
        if call.status == "valid":  # the same records the `alerts` asset check evaluates
            call.alerts = self.rules.evaluate(call.fields)
        return call

    def finish(self) -> None:
        """Copy the session's ledger lines and proxy config into logs/, then flag version drift."""
        from mva_dagster.observe.ledger import sync_session_ledger
        from mva_dagster.observe.provenance import version_drift

        try:
            record_proxy(self.ctx)
            lines = sync_session_ledger(self.layout, self.ctx.manifest.provider, wait_s=3.0, calls=self.calls,
                                        expected=self.sent_call_ids)
        except (OSError, MvaError) as exc:  # provenance must never fail the analysis it describes
            self._log([f"[provenance] could not copy the proxy ledger: {exc}"])
            return
        for alias, versions in version_drift(lines).items():
            data = {"kind": "model_version_drift", "model": alias, "versions": versions}
            if _alert_key(data) in self.raised:
                continue
            self.raised.add(_alert_key(data))
            described = ", ".join(f"{v} ({n} calls)" for v, n in versions.items())
            self.report(f"ALERT {alias} was answered by {len(versions)} provider versions: {described}")
            self.chronolog.append("ALERT", data)


def _epoch(timestamp: str) -> float:
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _alert_key(data: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two alerts the same: a rule on one call, or the same set of provider versions."""
    if data.get("kind") == "model_version_drift":
        return ("drift", data.get("model"), tuple(sorted((data.get("versions") or {}).items())))
    return (data.get("kind"), data.get("rule"), data.get("document_id"), data.get("model"), data.get("replicate"))


def record_proxy(ctx: SessionContext) -> dict[str, Any] | None:
    """Note which proxy config served the session and copy the config into logs/.

    The rendered config holds no secret (credentials and the master key are ``os.environ/VAR``
    references), so the copy is safe to keep with the session.
    """
    from mva_dagster.proxy.process import proxy_status
    from mva_dagster.proxy.stack import state_dir

    status = proxy_status(state_dir(ctx.manifest.provider))
    if not status.get("running"):
        return None
    info_path = proxy_info_path(ctx.layout)
    known: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError):
        known = list(json.loads(info_path.read_text(encoding="utf-8")).get("proxies", []))
    digest = str(status.get("config_hash") or "")
    if any(p.get("config_hash") == digest for p in known):
        return None
    detail = (status.get("readiness") or {}).get("detail") or {}
    entry = {"mode": ctx.manifest.provider, "url": status.get("url"), "config_hash": digest,
             "litellm_version": detail.get("litellm_version"), "seen_at": utc_now()}
    config = status.get("config_path")
    if config and digest:
        with contextlib.suppress(OSError):
            target = proxy_config_copy_path(ctx.layout, digest)
            shutil.copyfile(str(config), target)
            entry["config_copy"] = target.name
    known.append(entry)
    atomic_write_json(info_path, {"proxies": known})
    return entry
