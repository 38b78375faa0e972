"""`mva resume`: finish a session, re-running only what is missing, never paying twice.

What runs is decided from the session folder (:mod:`mva_dagster.sessions.status`), then handed to
the same runner `mva run` uses, narrowed to some assets and documents:

* no ``--from``: documents with a call that has no answer or no current record get analysis and
  extraction (archived answers cost $0, so only unanswered calls are sent); then every session-level
  step. A completed, intact session has nothing to resume.
* ``--from analysis``: documents with any call lacking a *valid* record, and everything downstream.
* ``--from extraction``: every document re-extracted from the archive (no LLM call), and downstream.
* ``--from scores|metrics|report|...``: that session-level step and everything downstream of it.

Before anything runs, the researcher's files are compared with what the session ran with. A changed
framework, experiment or corpus is refused with a readable diff; ``--allow-changes`` starts a new
session linked to this one instead, whose unchanged calls are answered from this archive at $0.

A session whose status says ``running`` is resumed only if the process recorded as running it is
gone (it was killed: the session is *interrupted*); a live run is refused, and one recorded on
another host (which cannot be checked from here) needs ``force``. ``budget`` (``--budget USD``)
sets the session budget before the run, as ``mva run --budget`` does; a run that stops on a budget
leaves the session *paused_by_budget*, as ``mva run`` does.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from mva_dagster.errors import BudgetExceeded, CorpusError, SessionError, SpecError
from mva_dagster.sessions.chronolog import Chronolog
from mva_dagster.sessions.layout import SessionLayout, session_layout_for
from mva_dagster.sessions.manager import (
    SessionManifest,
    effective_status,
    load_manifest,
    readable_diff,
    run_liveness,
    set_status,
)
from mva_dagster.sessions.status import SessionStatus, remove_debris, session_status

Say = Callable[[str], None]
# --offline points the gateway at a closed port with one attempt: nothing can be sent or paid for.
OFFLINE_ENV = {"MVA_PROXY_URL": "http://127.0.0.1:9", "MVA_LLM_MAX_ATTEMPTS": "1",
               "MVA_LLM_PROXY_DOWN_MAX_WAIT_S": "0"}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ what changed


@dataclass
class Change:
    """One input that differs from what the session ran with."""

    what: str
    summary: str
    detail: str = ""


def detect_changes(layout: SessionLayout, manifest: SessionManifest | None = None) -> tuple[list[Change], list[str]]:
    """Compare the researcher's files now with the session's snapshots; also return notes."""
    from mva_dagster.specs.corpus import load_corpus

    manifest = manifest or load_manifest(layout)
    changes: list[Change] = []
    notes: list[str] = []
    experiment = layout.experiment
    for label, source, snapshot in (("experiment", manifest.experiment_source, experiment.experiment_snapshot),
                                    ("framework", manifest.framework_source, experiment.framework_snapshot)):
        path = Path(source)
        if not path.is_file():
            notes.append(f"the {label} file {path} no longer exists; the session's snapshot is used")
            continue
        if not snapshot.is_file():
            continue  # an integrity problem, reported by status
        old, new = snapshot.read_text(encoding="utf-8"), path.read_text(encoding="utf-8")
        if old != new:
            diff = readable_diff(old, new, old_label=f"{label} as the session ran it ({snapshot.name})",
                                 new_label=f"{label} now ({path})")
            added = sum(1 for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
            removed = sum(1 for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
            changes.append(Change(label, f"{label} {path.name} changed (+{added} / -{removed} lines)", diff))

    corpus_dir = Path(manifest.corpus_path)
    recorded = {d.id: d for d in manifest.documents}
    if not corpus_dir.exists():
        missing = [d.id for d in manifest.documents if not Path(d.path).is_file()]
        if missing:
            changes.append(Change("corpus", f"corpus {corpus_dir} is gone ({len(missing)} documents missing)",
                                  "missing: " + ", ".join(missing)))
        else:
            notes.append(f"the corpus folder {corpus_dir} no longer exists; its documents are still in place")
        return changes, notes
    try:
        current = {d.id: d for d in load_corpus(corpus_dir).documents}
    except (CorpusError, SpecError) as exc:
        changes.append(Change("corpus", f"corpus {corpus_dir} no longer loads", str(exc)))
        return changes, notes
    new_docs = sorted(set(current) - set(recorded))
    gone_docs = sorted(set(recorded) - set(current))
    changed_docs = sorted(i for i in set(current) & set(recorded) if current[i].sha256 != recorded[i].sha256)
    groups = [(label, items) for label, items in (("changed", changed_docs), ("added", new_docs),
                                                  ("removed", gone_docs)) if items]
    if groups:
        parts = [f"{len(items)} {label}" for label, items in groups]
        detail = "\n".join(f"{label}: {', '.join(items)}" for label, items in groups)
        changes.append(Change("corpus", f"corpus {corpus_dir.name}: " + ", ".join(parts) + " document(s)", detail))
    return changes, notes


def changes_error(layout: SessionLayout, changes: list[Change]) -> SessionError:
    lines = [f"the inputs of session {layout.session_id} changed since it ran:"]
    for change in changes:
        lines.append(f"  - {change.summary}")
    for change in changes:
        if change.detail:
            lines.append("")
            lines.append(change.detail.rstrip())
    return SessionError(
        "\n".join(lines),
        hint=f"restore the files to resume the session as it ran, or `mva resume {layout.root} "
             "--allow-changes` to start a new session linked to this one: unchanged calls are answered "
             "from this session's archive at $0, changed ones are sent")


# ------------------------------------------------------------------ the plan


@dataclass
class ResumePlan:
    layout: SessionLayout
    from_step: str | None
    assets: list[str]
    documents: list[str]
    needs_llm: bool
    lines: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not self.assets


def _asset_order(bundle: Any) -> list[str]:
    return bundle.steps


def _downstream(definitions: dg.Definitions, bundle: Any, step: str) -> list[str]:
    """``step`` and every asset of the experiment downstream of it, in the bundle's order."""
    names = _asset_order(bundle)
    key = bundle.key(step)
    graph = definitions.resolve_asset_graph()
    keys = dg.AssetSelection.assets(key).downstream().resolve(graph)
    chosen = {k.path[-1] for k in keys if k.path[:-1] == key.path[:-1]}
    return [n for n in names if n in chosen]


def plan_resume(layout: SessionLayout, status: SessionStatus, definitions: dg.Definitions, bundle: Any,
                from_step: str | None, *, offline: bool = False) -> ResumePlan:
    names = _asset_order(bundle)
    per_document = [n for n in ("analysis", "extraction") if n in names]
    session_level = [n for n in names if n not in ("documents", *per_document)]
    manifest = status.manifest
    all_docs = [d.id for d in manifest.documents]
    plan = ResumePlan(layout, from_step, [], [], False)
    if from_step is not None and from_step not in names:
        raise SessionError(f"--from {from_step}: no such step in {manifest.experiment}",
                           hint="steps, in order: " + ", ".join(names))
    if from_step is None:
        docs = status.documents_needing_work()
        if docs:
            plan.assets = _downstream(definitions, bundle, "analysis")
            plan.documents = docs
        elif manifest.status != "completed":
            # Interrupted after its per-document work: every session-level step may be half done,
            # including steps status does not track; all are cheap or answered from the archive.
            plan.assets = list(session_level)
        else:
            first = next((s for s in session_level if s in ("scores", "metrics", "report")
                          and not status.step(s).complete), None)
            plan.assets = _downstream(definitions, bundle, first) if first else []
    elif from_step in ("documents", "analysis"):
        plan.assets = _downstream(definitions, bundle, from_step)
        if from_step == "documents":
            plan.documents = all_docs
        else:
            failed_records = _calls_without_valid_record(status)
            plan.documents = [d for d in all_docs if d in failed_records]
            if not plan.documents:
                plan.assets = [a for a in plan.assets if a not in per_document and a != "documents"]
    elif from_step in per_document:
        plan.assets = _downstream(definitions, bundle, from_step)
        plan.documents = all_docs
    else:
        plan.assets = _downstream(definitions, bundle, from_step)

    llm_assets = {key.path[-1] for a in bundle.assets if "llm" in a.required_resource_keys
                  for key in a.specs_by_key}
    # Offline, the steps that exist to make calls are left out; extraction stays (its LLM link is only
    # a fallback for answers the parser cannot read, and fails as a call: the record is kept invalid).
    skipped = [a for a in plan.assets if a in llm_assets and a != "extraction"] if offline else []
    plan.assets = [a for a in plan.assets if a not in skipped]
    per_doc_selected = any(a in per_document for a in plan.assets)
    plan.needs_llm = not offline and any(a in llm_assets and (a not in per_document or plan.documents)
                                         for a in plan.assets)
    unanswered = len(status.calls_unanswered)
    recoverable = sum(status.recoverable.values())
    if plan.nothing_to_do:
        plan.lines.append("nothing to resume: every call has an answer and a record, and the tables are current "
                          "(use --from extraction to re-extract, or --from scores|metrics|report)")
        return plan
    if per_doc_selected:
        plan.lines.append(f"documents to (re)materialize: {len(plan.documents)} of {len(all_docs)}")
    if "analysis" in plan.assets and plan.documents:
        plan.lines.append(f"calls without an answer: {unanswered} ({recoverable} recoverable at $0 "
                          f"from {', '.join(sorted(status.recoverable)) or 'nowhere'}; the rest are sent)")
    plan.lines.append("steps: " + ", ".join(plan.assets))
    if skipped:
        plan.lines.append("skipped (--offline; they make LLM calls): " + ", ".join(skipped))
    return plan


def _calls_without_valid_record(status: SessionStatus) -> set[str]:
    from mva_dagster.records import ExtractedRecord

    layout, needing = status.layout, set(status.documents_needing_work())
    for document in status.manifest.documents:
        for model in status.manifest.models:
            for replicate in range(1, status.manifest.runs_per_model + 1):
                path = layout.extracted_path(document.id, model, replicate)
                try:
                    if not ExtractedRecord.model_validate_json(path.read_text(encoding="utf-8")).valid:
                        needing.add(document.id)
                except (OSError, ValueError):
                    needing.add(document.id)
    return needing


# ------------------------------------------------------------------ running it


@dataclass
class ResumeOutcome:
    layout: SessionLayout
    plan: ResumePlan
    linked_from: SessionLayout | None = None
    seconds: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)  # new archive entries by where they came from


def _archive_sources(layout: SessionLayout) -> dict[str, str]:
    from mva_dagster.llm.archive import SessionArchive

    sources = {}
    for entry in SessionArchive(layout).entries():
        prov = entry.provenance
        sources[entry.path.name] = ("reused from a linked session" if "reused_from" in prov else
                                    "recovered from the proxy journal" if "recovered_from" in prov else
                                    "migrated" if "migrated_from" in prov else "sent and paid")
    return sources


def _check_intact(layout: SessionLayout, status: SessionStatus) -> None:
    if status.problems:
        raise SessionError(
            f"session {layout.session_id} failed its integrity check:\n"
            + "\n".join(f"  - {p}" for p in status.problems[:30]),
            hint=f"see `mva status {layout.root}`; restore the named files (hashes are in session.json), "
                 "or move a damaged archive entry aside so its call is made again")


def check_not_running(layout: SessionLayout, manifest: SessionManifest, *, force: bool = False) -> str | None:
    """Refuse to resume a session another process is still running. Returns the readable status of
    a session whose run was killed (``interrupted (process N no longer running)``), else None."""
    liveness = run_liveness(manifest)
    if liveness is None:
        return None
    if liveness.state == "alive":
        raise SessionError(
            f"session {layout.session_id} is still running ({liveness.detail}); resuming it now would run "
            "it twice",
            hint=f"wait for it to finish (`mva watch {layout.root}`), or stop that process; "
                 "then `mva resume` finishes what it left")
    if liveness.state == "unknown" and manifest.running_process is not None and not force:
        raise SessionError(
            f"session {layout.session_id} says it is running: {liveness.detail}",
            hint="make sure that process has stopped (or that its machine is gone), then resume with "
                 "`--force`")
    if liveness.state == "dead":
        return effective_status(manifest, liveness)[1]
    return None


def resume_session(session_dir: Path, *, from_step: str | None = None, allow_changes: bool = False,
                   dry_run: bool = False, offline: bool = False, instance: dg.DagsterInstance | None = None,
                   terminal: bool = True, keep_stack: bool = False, say: Say = _stderr,
                   budget: float | None = None, force: bool = False) -> ResumeOutcome:
    """Resume the session at ``session_dir`` (or start its linked successor); see the module docstring.

    ``offline`` leaves out every step that makes LLM calls (a migrated session's answers can become
    tables without provider keys); ``dry_run`` only prints the plan. ``budget`` is the session
    budget in USD from now on (``session_policy.json``, recorded as ``BUDGET_SET``). ``force``
    resumes a session recorded as running on another host. Raises :class:`BudgetExceeded` when the
    run paused on a budget (the session's status is then ``paused_by_budget``).
    """
    from mva_dagster.definitions import build_definitions
    from mva_dagster.defs.runner import run_session
    from mva_dagster.instance import get_instance
    from mva_dagster.llm.budget import load_policy, mark_paused_by_budget, set_session_budget
    from mva_dagster.llm.cost import ledger_mark

    layout = session_layout_for(session_dir)
    manifest = load_manifest(layout)
    # First, before any file is touched: a live run must not be resumed under its feet.
    interrupted = check_not_running(layout, manifest, force=force)
    if interrupted:
        say(f"session {layout.session_id}: {interrupted}")
        if not dry_run:
            manifest = set_status(layout, "interrupted")
    changes, notes = detect_changes(layout, manifest)
    for note in notes:
        say(f"note: {note}")
    linked_from: SessionLayout | None = None
    if changes:
        if not allow_changes:
            raise changes_error(layout, changes)
        if dry_run:
            say(f"would start a new session linked to {layout.session_id}: "
                + "; ".join(c.summary for c in changes))
            return ResumeOutcome(layout, ResumePlan(layout, None, [], [], False))
        linked_from, layout = layout, _start_linked_session(layout, manifest, changes, say, budget=budget)
        manifest = load_manifest(layout)
        from_step = None
        budget = None  # the new session was created with it (BUDGET_SET in its chronolog)

    removed = [] if dry_run else remove_debris(layout)
    if removed:
        say(f"removed {len(removed)} temporary file(s) left by a crash")
    status = session_status(layout)
    _check_intact(layout, status)
    definitions, bundles = build_definitions([layout.experiment])
    bundle = bundles[layout.experiment.root.resolve()]
    plan = plan_resume(layout, status, definitions, bundle, from_step, offline=offline)
    for line in plan.lines:
        say(f"resume {layout.session_id}: {line}")
    outcome = ResumeOutcome(layout, plan, linked_from=linked_from)
    current = load_policy(layout).session_usd
    was = f"${current:.4f}" if current is not None else "none"
    if budget is not None:
        if plan.nothing_to_do:
            say(f"resume {layout.session_id}: nothing runs, so the session budget stays {was}")
        elif dry_run:
            say(f"resume {layout.session_id}: would set the session budget to ${budget:.4f} (now {was})")
    if plan.nothing_to_do or dry_run:
        return outcome

    if budget is not None:
        set_session_budget(layout, budget, command="resume")
        say(f"resume {layout.session_id}: session budget set to ${budget:.4f} (was {was})")
    before = _archive_sources(layout)
    chronolog = Chronolog(layout.chronolog, project=manifest.project, session_id=manifest.session_id)
    data: dict[str, Any] = {"from_step": from_step, "steps": plan.assets, "documents": len(plan.documents),
                            "calls_without_answer": len(status.calls_unanswered),
                            "recoverable_at_no_cost": status.recoverable,
                            "debris_removed": [p.name for p in removed]}
    if interrupted:
        data["previous_status"] = interrupted
    chronolog.append("RESUME_STARTED", data)
    mark = ledger_mark(layout)  # a pause written after this is this resume's
    started = time.monotonic()
    stack = None
    saved_env = {name: os.environ.get(name) for name in OFFLINE_ENV}
    if offline:  # no proxy is reachable: a call fails at once instead of reaching any running proxy
        os.environ.update(OFFLINE_ENV)
    try:
        if plan.needs_llm:
            from mva_dagster.proxy.stack import check_real_keys, ensure_stack

            if manifest.provider == "real":
                try:
                    check_real_keys(manifest.models)
                except SpecError as exc:
                    raise SpecError(exc.message, hint="export them, or resume with --offline to run only the "
                                                      "steps that need no LLM call") from exc

            say(f"Starting the {manifest.provider} provider and the LiteLLM proxy ...")
            stack = ensure_stack(manifest.provider)
            say(f"Proxy ready at {stack.proxy.url}")
        try:
            run_session(layout, bundle, definitions, instance or get_instance(), terminal=terminal,
                        assets=plan.assets, documents=plan.documents)
        except (SessionError, BudgetExceeded) as exc:
            # As `mva run` does: a run that stopped on a budget leaves the session paused_by_budget
            # (not failed), with the same guidance on how to continue.
            paused = mark_paused_by_budget(layout, since=mark)
            if paused is None:
                raise
            raise paused from exc
    finally:
        if stack is not None and not keep_stack:
            stack.stop_started()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    outcome.seconds = time.monotonic() - started
    after = _archive_sources(layout)
    for name, source in after.items():
        if name not in before:
            outcome.sources[source] = outcome.sources.get(source, 0) + 1
    chronolog.append("RESUME_COMPLETED", {"seconds": round(outcome.seconds, 2), "new_answers": outcome.sources})
    say(f"resume {layout.session_id}: done in {outcome.seconds:.1f}s; new archive entries: "
        + (", ".join(f"{n} {what}" for what, n in sorted(outcome.sources.items())) or "none"))
    return outcome


def _start_linked_session(layout: SessionLayout, manifest: SessionManifest, changes: list[Change],
                          say: Say, *, budget: float | None = None) -> SessionLayout:
    from mva_dagster.launch import create_planned_session, plan_session

    plan = plan_session(Path(manifest.experiment_source), corpus=Path(manifest.corpus_path),
                        model=manifest.model_override, provider=manifest.provider,
                        project_dir=layout.experiment.project.root, experiment_name=manifest.experiment)
    plan.budget_override = budget  # `--budget`, as `mva run --budget` sets it
    new = create_planned_session(plan, model_override=manifest.model_override, linked_from=layout,
                                 changes=[c.summary for c in changes])
    say(f"inputs changed ({'; '.join(c.summary for c in changes)}): started session {new.session_id}, "
        f"linked to {layout.session_id}; unchanged calls are answered from its archive at $0")
    return new
