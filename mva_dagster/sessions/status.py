"""What a session has done, what is missing, and whether its files are intact (`mva status`).

Everything is read from the session folder - the manifest, snapshots, archive, extracted records,
results and logs - never from Dagster's run history, so the answer is the same whichever way the
session was run (``mva run``, ``mva resume``, a backfill from the UI) and survives a lost instance.

Per step: *done*, *missing* (never attempted, interrupted, or stale because what it depends on
changed) and *failed* (attempted and failed: a call that failed after its retries, an answer that is
not a valid record). Integrity: the snapshots' sha256 against ``session.json``, every document's
sha256, every archive entry's request key against a hash of its stored request, the chronolog.
Crash debris (a temp file, a torn last log line) is listed apart: it is expected after a kill and
``mva resume`` clears it.

A session whose manifest says ``running`` is checked against the process recorded as running it
(:mod:`mva_dagster.sessions.liveness`): if that process is gone (``kill -9``, a lost machine), the
session is reported as ``interrupted (process N no longer running)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mva_dagster.errors import ArchiveError, MvaError, SessionError
from mva_dagster.fsutil import sha256_file
from mva_dagster.sessions.appendlog import read_jsonl
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.liveness import Liveness
from mva_dagster.sessions.manager import SessionManifest, effective_status, load_manifest, run_liveness

PER_CALL_STEPS = ("analysis", "extraction")
SESSION_STEPS = ("scores", "metrics", "report")
STEP_ORDER = ("documents", *PER_CALL_STEPS, *SESSION_STEPS)

Call = tuple[str, str, int]


@dataclass
class StepStatus:
    step: str
    unit: str
    done: int = 0
    missing: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "unit": self.unit, "done": self.done, "missing": self.missing,
                "failed": self.failed, "notes": self.notes}


@dataclass
class SessionStatus:
    layout: SessionLayout
    manifest: SessionManifest
    steps: list[StepStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # integrity: something is wrong
    debris: list[str] = field(default_factory=list)  # crash leftovers: expected, cleared by resume
    calls_unanswered: list[Call] = field(default_factory=list)  # no answer (missing or failed)
    calls_unextracted: list[Call] = field(default_factory=list)  # answered, no current record
    recoverable: dict[str, int] = field(default_factory=dict)  # at $0: 'proxy journal', 'linked session'
    liveness: Liveness | None = None  # status 'running': whether the process running it is alive

    @property
    def run_status(self) -> str:
        """The manifest's status, except that a 'running' session whose process is gone is 'interrupted'."""
        return effective_status(self.manifest, self.liveness)[0]

    @property
    def run_status_text(self) -> str:
        """E.g. "interrupted (process 4242 no longer running)"."""
        return effective_status(self.manifest, self.liveness)[1]

    def step(self, name: str) -> StepStatus:
        return next(s for s in self.steps if s.step == name)

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.steps)

    def documents_needing_work(self) -> list[str]:
        """Documents with a call that has no answer or no current record, in manifest order."""
        needing = {doc for doc, _, _ in self.calls_unanswered} | {doc for doc, _, _ in self.calls_unextracted}
        return [d.id for d in self.manifest.documents if d.id in needing]

    def as_dict(self) -> dict[str, Any]:
        process = self.manifest.running_process
        return {"session": str(self.layout.root), "session_id": self.manifest.session_id,
                "status": self.run_status, "status_detail": self.run_status_text,
                "recorded_status": self.manifest.status,
                "process": process.model_dump(mode="json") if process and self.manifest.status == "running" else None,
                "process_state": self.liveness.state if self.liveness else None,
                "complete": self.complete, "intact": self.intact,
                "steps": [s.as_dict() for s in self.steps], "problems": self.problems,
                "debris": self.debris, "recoverable_at_no_cost": self.recoverable,
                "linked_from": self.manifest.linked_from.session_id if self.manifest.linked_from else None,
                "linked_sessions": [s.session_id for s in self.manifest.linked_sessions]}

    def render(self) -> list[str]:
        m = self.manifest
        lines = [f"Session {m.session_id} ({m.project} / {m.experiment}), status '{self.run_status_text}', "
                 f"provider {m.provider}",
                 f"  {len(m.documents)} documents x {len(m.models)} model(s) x {m.runs_per_model} run(s)"]
        if m.linked_from:
            lines.append(f"  linked from {m.linked_from.session_id} (its archive answers unchanged calls)")
        for link in m.linked_sessions:
            lines.append(f"  continued with changes in {link.session_id}: {link.path}")
        if m.migrated_from:
            lines.append(f"  migrated from {m.migrated_from}")
        lines.append("")
        lines.append(f"  {'step':<11}{'unit':<10}{'done':>6}{'missing':>9}{'failed':>8}")
        for s in self.steps:
            lines.append(f"  {s.step:<11}{s.unit:<10}{s.done:>6}{s.missing:>9}{s.failed:>8}")
            lines.extend(f"      {note}" for note in s.notes[:12])
            if len(s.notes) > 12:
                lines.append(f"      ... and {len(s.notes) - 12} more")
        if self.recoverable:
            what = ", ".join(f"{n} from the {where}" for where, n in sorted(self.recoverable.items()))
            lines.append(f"  recoverable at $0 on resume: {what}")
        lines.append("")
        if self.problems:
            lines.append(f"  INTEGRITY: {len(self.problems)} problem(s)")
            lines.extend(f"    - {p}" for p in self.problems[:30])
        else:
            lines.append("  integrity: snapshots, documents, archive keys and chronolog check out")
        if self.debris:
            lines.append(f"  crash debris (harmless; `mva resume` clears it): {len(self.debris)}")
            lines.extend(f"    - {d}" for d in self.debris[:10])
        if self.liveness is not None and self.liveness.state == "alive":
            lines.append(f"  still running ({self.liveness.detail}): wait for it to finish before resuming")
        elif self.liveness is not None and self.liveness.state == "unknown" and self.manifest.running_process:
            lines.append(f"  {self.liveness.detail}: make sure it has stopped before resuming "
                         "(`mva resume --force`)")
        elif self.complete and self.intact:
            lines.append("  nothing to resume")
        elif self.intact:
            lines.append(f"  to finish: mva resume {self.layout.root}")
        return lines


def _check_snapshots(layout: SessionLayout, manifest: SessionManifest, status: SessionStatus) -> bool:
    ok = True
    experiment = layout.experiment
    for path, expected, label in ((experiment.experiment_snapshot, manifest.experiment_sha256, "experiment"),
                                  (experiment.framework_snapshot, manifest.framework_sha256, "framework")):
        if not path.exists():
            status.problems.append(f"{label} snapshot {path} is missing")
            ok = False
        elif sha256_file(path) != expected:
            status.problems.append(f"{label} snapshot {path} changed since the session was created "
                                   f"(sha256 {sha256_file(path)[:12]} != {expected[:12]} in session.json)")
            ok = False
    return ok


def _check_chronolog(layout: SessionLayout, status: SessionStatus) -> None:
    from mva_dagster.sessions.chronolog import KEY_ENV, verify_chronolog

    read = read_jsonl(layout.chronolog)
    for bad in read.bad:
        if bad.last and bad.reason.startswith("torn"):
            status.debris.append(f"{layout.chronolog.name}: torn last line (a crash mid-write)")
        else:
            status.problems.append(f"{layout.chronolog.name} line {bad.lineno}: {bad.reason}")
    key = os.environ.get(KEY_ENV)
    if key:
        report = verify_chronolog(layout.chronolog, key.encode())
        for item in report.bad_signatures + report.out_of_order + report.duplicate_ids:
            status.problems.append(f"{layout.chronolog.name}: {item}")


def session_status(layout: SessionLayout) -> SessionStatus:
    """Count done / missing / failed per step and check the session's integrity."""
    from mva_dagster.llm.archive import SessionArchive
    from mva_dagster.records import ExtractedRecord
    from mva_dagster.steps.analysis import last_failures
    from mva_dagster.steps.context import SessionContext

    manifest = load_manifest(layout)
    status = SessionStatus(layout=layout, manifest=manifest, liveness=run_liveness(manifest))
    snapshots_ok = _check_snapshots(layout, manifest, status)
    ctx = SessionContext(layout=layout, manifest=manifest)

    docs = StepStatus("documents", "documents")
    readable: set[str] = set()
    for entry in manifest.documents:
        try:
            ctx.document_text(entry)
        except (SessionError, OSError, UnicodeDecodeError) as exc:
            docs.failed += 1
            docs.notes.append(str(exc).splitlines()[0])
            status.problems.append(str(exc).splitlines()[0])
        else:
            docs.done += 1
            readable.add(entry.id)
    status.steps.append(docs)

    archive = SessionArchive(layout)
    for problem in archive.check():
        (status.debris if problem.debris else status.problems).append(f"{problem.path.name}: {problem.problem}")

    analysis = StepStatus("analysis", "calls")
    extraction = StepStatus("extraction", "calls")
    calls = ctx.calls()
    if not snapshots_ok:
        analysis.missing = extraction.missing = len(calls)
        analysis.notes.append("not checked: the framework snapshot does not match session.json")
    else:
        failures = last_failures(ctx)
        for call in calls:
            document_id, model, replicate = call
            if document_id not in readable:
                analysis.failed += 1
                extraction.missing += 1
                status.calls_unanswered.append(call)
                continue
            request = ctx.analysis_request(document_id, model, replicate)
            source = archive.answered(request)
            if source is None:
                status.calls_unanswered.append(call)
                where = archive.recoverable(request)
                if where:
                    status.recoverable[where] = status.recoverable.get(where, 0) + 1
                failure = failures.get(call)
                if failure and not where:
                    analysis.failed += 1
                    analysis.notes.append(f"{document_id} / {model} / run {replicate}: "
                                          f"{failure.get('error_class')} - {str(failure.get('error'))[:100]}")
                else:
                    analysis.missing += 1
                extraction.missing += 1
                continue
            analysis.done += 1
            path = layout.extracted_path(document_id, model, replicate)
            record = None
            if path.exists():
                try:
                    record = ExtractedRecord.model_validate_json(path.read_text(encoding="utf-8"))
                except ValueError:
                    status.problems.append(f"extracted/{path.name} is unreadable")
            if (record is None or record.request_key != request.key()
                    or record.extraction_path in ("no_answer", "missing")):
                extraction.missing += 1
                status.calls_unextracted.append(call)
            elif record.valid:
                extraction.done += 1
            else:
                extraction.failed += 1
                extraction.notes.append(f"{document_id} / {model} / run {replicate}: "
                                        f"{'; '.join(record.errors)[:120]}")
    status.steps += [analysis, extraction]

    newest_record = max((p.stat().st_mtime for p in layout.extracted.glob("*.json")), default=0.0)
    outputs = {"scores": layout.scores_csv, "metrics": layout.metrics_csv, "report": layout.report_md}
    upstream_time = newest_record
    for name in SESSION_STEPS:
        step = StepStatus(name, "table" if name != "report" else "file")
        path = outputs[name]
        if not path.exists():
            step.missing = 1
        elif path.stat().st_mtime + 1e-6 < upstream_time:
            step.missing = 1
            step.notes.append(f"{path.name} is older than what it is computed from (stale)")
        else:
            step.done = 1
        upstream_time = max(upstream_time, path.stat().st_mtime if path.exists() else 0.0)
        status.steps.append(step)
    if extraction.missing or analysis.missing or analysis.failed:
        for step in status.steps[-len(SESSION_STEPS):]:
            if step.done:
                step.notes.append("will be recomputed: records are missing")

    _check_chronolog(layout, status)
    for path in (*layout.extracted.glob(".*.tmp"), *layout.results.glob(".*.tmp")):
        status.debris.append(f"{path.relative_to(layout.root)}: temporary file left by a crash mid-write")
    return status


def remove_debris(layout: SessionLayout) -> list[Path]:
    """Delete temporary files a crash left in the session (never a finished file)."""
    from mva_dagster.llm.archive import SessionArchive

    removed = SessionArchive(layout).remove_debris()
    for path in (*layout.extracted.glob(".*.tmp"), *layout.results.glob(".*.tmp")):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def ledger_served_keys(ledger: Path, *, since_offset: int = 0) -> dict[str, int]:
    """Request key -> times the simulated provider served it (200), from its ledger (crash tests)."""
    counts: dict[str, int] = {}
    if not ledger.exists():
        return counts
    with open(ledger, "rb") as handle:
        handle.seek(since_offset)
        for raw in handle:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            key = line.get("x_mva_request_key")
            if line.get("served_ok") and key:
                counts[key] = counts.get(key, 0) + 1
    return counts


def archived_keys(layout: SessionLayout) -> set[str]:
    from mva_dagster.llm.archive import SessionArchive

    try:
        return SessionArchive(layout).keys()
    except ArchiveError as exc:  # pragma: no cover - reported by status as a problem
        raise MvaError(str(exc)) from exc
