"""What a finished session must satisfy, as plain functions (Dagster asset checks wrap them).

Each check returns a :class:`CheckOutcome`: passed or not, how serious, one sentence, and the
details as Markdown for the Dagster UI. They read only the session's files, so `mva health`, tests
and the asset checks agree. Severity: a session that is incomplete, out of range or over budget is
an error; alerts, missing quotations and a provider that changed model mid-session are warnings
(the data may be fine, a person should look).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mva_dagster.errors import MvaError
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.observe.alerts import session_rules
from mva_dagster.observe.fields import flatten, is_number, quotes, schema_bounds, score_table
from mva_dagster.observe.ledger import paid_answers, session_ledger
from mva_dagster.observe.provenance import version_drift
from mva_dagster.records import ExtractedRecord
from mva_dagster.steps.context import SessionContext

Severity = Literal["ERROR", "WARN"]
_MAX_ROWS = 50


@dataclass
class CheckOutcome:
    passed: bool
    severity: Severity
    description: str
    details: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        shown = self.details[:_MAX_ROWS]
        more = [f"- ... and {len(self.details) - _MAX_ROWS} more"] if len(self.details) > _MAX_ROWS else []
        return "\n".join([self.description, "", *(f"- {d}" for d in shown), *more]).rstrip() + "\n"


def _records(ctx: SessionContext) -> list[ExtractedRecord]:
    from mva_dagster.steps.extraction import load_records

    return load_records(ctx)


def _call(record: ExtractedRecord) -> str:
    return f"{record.document_id} · {record.model} · run {record.replicate}"


def coverage(ctx: SessionContext) -> CheckOutcome:
    """Every document x model x run has a valid record."""
    records = _records(ctx)
    bad = [f"{_call(r)}: {'; '.join(r.errors) or r.extraction_path}" for r in records if not r.valid]
    valid = len(records) - len(bad)
    return CheckOutcome(not bad, "ERROR", f"{valid} of {len(records)} calls (documents x models x runs) have a "
                        "valid record", bad, {"expected": len(records), "valid": valid, "missing_or_invalid": len(bad)})


def score_ranges(ctx: SessionContext) -> CheckOutcome:
    """Every number within the minimum/maximum its output contract declares."""
    bounds = schema_bounds(ctx.json_schema)
    outside = []
    checked = 0
    for record in _records(ctx):
        if not record.valid:
            continue
        for path, value in flatten(record.fields):
            if path in bounds and is_number(value):
                checked += 1
                lo, hi = bounds[path]
                if not lo <= float(value) <= hi:
                    outside.append(f"{_call(record)}: {'.'.join(path)} = {value} (allowed {lo} to {hi})")
    return CheckOutcome(not outside, "ERROR", f"{checked - len(outside)} of {checked} bounded values in range",
                        outside, {"checked": checked, "out_of_range": len(outside)})


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def evidence_present(ctx: SessionContext) -> CheckOutcome:
    """Each dimension scored above zero quotes at least one passage; share of quotes found verbatim."""
    missing, found, total = [], 0, 0
    texts: dict[str, str] = {}
    for record in _records(ctx):
        if not record.valid:
            continue
        if record.document_id not in texts:
            try:
                texts[record.document_id] = _normal(ctx.document_text(ctx.manifest.document(record.document_id)))
            except MvaError:
                texts[record.document_id] = ""
        for dimension, row in score_table(record.fields).rows.items():
            if "evidence" not in row:
                continue
            said = quotes(row["evidence"])
            score = row.get("score")
            if not said and isinstance(score, int | float) and score > 0:
                missing.append(f"{_call(record)}: {dimension} scored {score} with no quotation")
            for quote in said:
                total += 1
                found += _normal(quote) in texts[record.document_id]
    share = found / total if total else 1.0
    return CheckOutcome(not missing, "WARN", f"{len(missing)} scored dimension(s) without a quotation; "
                        f"{found} of {total} quotations ({share:.0%}) found verbatim in their document",
                        missing, {"without_quotation": len(missing), "quotations": total, "verbatim": found})


def session_budget(ctx: SessionContext) -> float | None:
    """The USD budget the session holds (``session_policy.json``: the experiment's ``budget:`` or
    ``--budget`` of `mva run` / `mva resume`); for a session made before policies existed, its
    experiment snapshot's ``budget:``."""
    if ctx.layout.session_policy.exists():
        from mva_dagster.llm.budget import load_policy

        try:
            return load_policy(ctx.layout).session_usd
        except MvaError:
            pass
    from mva_dagster.specs.experiment import load_experiment

    experiment = ctx.layout.experiment
    try:
        return load_experiment(experiment.experiment_snapshot, framework_override=experiment.framework_snapshot).budget
    except MvaError:
        return None


def cost_within_budget(ctx: SessionContext) -> CheckOutcome:
    spent = sum(float(a.cost_usd or 0.0) for e in SessionArchive(ctx.layout).iter_entries() for a in paid_answers(e))
    budget = session_budget(ctx)
    if budget is None:
        return CheckOutcome(True, "ERROR", f"no budget set; the session cost ${spent:.6f}", [],
                            {"cost_usd": round(spent, 8)})
    return CheckOutcome(spent <= budget, "ERROR", f"the session cost ${spent:.6f} of a ${budget:.2f} budget "
                        f"({spent / budget:.0%})" if budget else f"the session cost ${spent:.6f} of a $0 budget",
                        [], {"cost_usd": round(spent, 8), "budget_usd": budget})


def alerts(ctx: SessionContext) -> CheckOutcome:
    """The experiment's alert rules over every valid record (the live alerts, recomputed)."""
    rules = session_rules(ctx.layout.experiment.experiment_snapshot, ctx.layout.experiment.framework_snapshot,
                          ctx.json_schema, ctx.framework.calculation_spec)
    if not rules:
        return CheckOutcome(True, "WARN", "the experiment sets no alert rules", [], {"rules": 0})
    hits = [f"`{hit.rule}` on {_call(r)}: {hit.describe()}" for r in _records(ctx) if r.valid
            for hit in rules.evaluate(r.fields)]
    return CheckOutcome(not hits, "WARN", f"{len(hits)} alert(s) from {len(rules.rules)} rule(s): "
                        + "; ".join(rules.rules), hits, {"rules": len(rules.rules), "alerts": len(hits)})


def provider_versions(ctx: SessionContext) -> CheckOutcome:
    """Each alias answered by one provider model id throughout the session.

    Reads the ledger lines the analysis step copied into ``logs/`` (no scan of the proxy's ledger).
    """
    lines = session_ledger(ctx.layout)
    drift = version_drift(lines)
    seen = sorted({str(i.get("provider_response_model")) for i in lines
                   if i.get("status") == "success" and i.get("provider_response_model")})
    if drift:
        details = [f"{alias}: " + ", ".join(f"{v} ({n} calls)" for v, n in versions.items())
                   for alias, versions in drift.items()]
        return CheckOutcome(False, "WARN", f"the provider changed model mid-session for {', '.join(drift)}",
                            details, {"provider_versions": ", ".join(seen)})
    if not seen and any(paid_answers(e) for e in SessionArchive(ctx.layout).iter_entries()):
        return CheckOutcome(False, "WARN", "the provider versions are unknown: no proxy ledger lines were "
                            "copied into logs/ (see docs/runbook.md, ledger_missing)", [], {"provider_versions": ""})
    return CheckOutcome(True, "WARN", f"one provider version per model: {', '.join(seen) or 'no calls'}", [],
                        {"provider_versions": ", ".join(seen)})


CHECKS = {
    "coverage": (coverage, "Every document x model x run has a valid record."),
    "score_ranges": (score_ranges, "Every number lies within the bounds the output contract declares."),
    "evidence_present": (evidence_present, "Each dimension scored above zero quotes a passage."),
    "cost_within_budget": (cost_within_budget, "The session's cost stays within the experiment's budget."),
    "alerts": (alerts, "No record trips one of the experiment's alert rules."),
    "provider_versions": (provider_versions, "Each model alias was answered by one provider version."),
}
