"""Run a whole session on a Dagster instance: the one way to run one, whoever asks.

Dagster runs cover one partitions definition each, so a session is three runs, never one per
partition: documents (a range of the document partitions), analysis + extraction (a range of
document x session), then scores, metrics and report (the session partition). Document partitions
are registered in the session's order, so a session's documents form one contiguous range (more
only if another corpus interleaved them; each contiguous stretch is one run).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dagster as dg

from mva_dagster.defs.factory import SESSION_TAG, ExperimentDefs, observe_documents_max
from mva_dagster.errors import SessionError
from mva_dagster.sessions.chronolog import Chronolog
from mva_dagster.sessions.crashpoints import crash_point
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import load_manifest, set_status

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


PLANNED_SUBSET_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


@contextmanager
def _planned_events(documents: int) -> Iterator[None]:
    """One 'materialization planned' event per asset for runs over many partitions, not one per
    partition: those events cost more CPU than the calls (bench/README.md). Dagster then shows a
    failed run's partitions as missing rather than failed; `mva status` has the detail. Set for
    the whole session (its runs may overlap), never over an operator's own setting."""
    if documents <= observe_documents_max() or os.environ.get(PLANNED_SUBSET_ENV) is not None:
        yield
        return
    os.environ[PLANNED_SUBSET_ENV] = "true"
    try:
        yield
    finally:
        os.environ.pop(PLANNED_SUBSET_ENV, None)


@dataclass
class SessionRun:
    run_ids: list[str] = field(default_factory=list)
    success: bool = True


def register_partitions(instance: dg.DagsterInstance, bundle: ExperimentDefs, layout: SessionLayout) -> list[list[str]]:
    """Add the session's partitions; return its documents as contiguous stretches of partition order."""
    manifest = load_manifest(layout)
    wanted = [d.id for d in manifest.documents]
    known = set(instance.get_dynamic_partitions(bundle.documents_partitions))
    new = [d for d in wanted if d not in known]
    if new:
        instance.add_dynamic_partitions(bundle.documents_partitions, new)
    if not instance.has_dynamic_partition(bundle.sessions_partitions, manifest.session_id):
        instance.add_dynamic_partitions(bundle.sessions_partitions, [manifest.session_id])
    order = instance.get_dynamic_partitions(bundle.documents_partitions)
    wanted_set = set(wanted)
    segments: list[list[str]] = []
    current: list[str] = []
    for key in order:
        if key in wanted_set:
            current.append(key)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def run_session(layout: SessionLayout, bundle: ExperimentDefs, definitions: dg.Definitions,
                instance: dg.DagsterInstance, *, terminal: bool = True,
                steps: tuple[str, ...] = ("documents", "per_document", "session"),
                assets: Collection[str] | None = None, documents: Collection[str] | None = None) -> SessionRun:
    """Materialize the session. ``assets`` (names such as 'extraction') and ``documents`` narrow it
    for `mva resume`: only those assets, and per-document runs only over stretches that hold one of
    ``documents`` (documents in between are re-materialized from the archive, at $0)."""
    manifest = load_manifest(layout)
    session_id = manifest.session_id
    segments = register_partitions(instance, bundle, layout)
    if not segments:
        raise SessionError(f"session {session_id} has no documents")
    if documents is not None:
        wanted = set(documents)
        trimmed = []
        for seg in segments:
            hits = [i for i, doc in enumerate(seg) if doc in wanted]
            if hits:
                trimmed.append(seg[hits[0]:hits[-1] + 1])
        segments = trimmed
    tags = {SESSION_TAG: session_id, "mva/project": manifest.project, "mva/experiment": manifest.experiment}
    if terminal:
        tags["mva/progress"] = "terminal"
    chronolog = Chronolog(layout.chronolog, project=manifest.project, session_id=session_id)
    set_status(layout, "running")
    result = SessionRun()

    def execute(job_name: str, extra_tags: dict[str, str], partition_key: str | None = None) -> None:
        job = definitions.resolve_job_def(job_name)
        if assets is None:
            run(job_name, job, None, extra_tags, partition_key)
            return
        # The experiment's assets are defined in dependency order. A selection with a hole (a step
        # left out between two chosen ones) would lose that order in one run: each unbroken stretch
        # of chosen steps is its own run, in order.
        batches: list[list[dg.AssetKey]] = [[]]
        for key in (k for k in bundle.asset_keys if k in job.asset_layer.selected_asset_keys):
            if key.path[-1] in assets:
                batches[-1].append(key)
            elif batches[-1]:
                batches.append([])
        for batch in (b for b in batches if b):
            run(job_name, job, batch, extra_tags, partition_key)

    def run(job_name: str, job: dg.JobDefinition, selection: list[dg.AssetKey] | None,
            extra_tags: dict[str, str], partition_key: str | None) -> None:
        outcome = job.execute_in_process(instance=instance, tags={**tags, **extra_tags},
                                         partition_key=partition_key, run_config=QUIET,
                                         raise_on_error=False, asset_selection=selection)
        result.run_ids.append(outcome.run_id)
        chronolog.append("DAGSTER_RUN_FINISHED", {"job": job_name, "run_id": outcome.run_id,
                                                  "success": outcome.success})
        if not outcome.success:
            result.success = False
            errors = [e.event_specific_data.error.to_string()  # type: ignore[union-attr]
                      for e in outcome.all_events if e.is_step_failure and e.event_specific_data]
            set_status(layout, "failed")
            raise SessionError(f"Dagster run {outcome.run_id} ({job_name}) failed:\n" + "\n".join(errors)[:4000],
                               hint=f"nothing paid is lost: answers are in {layout.llm_archive}; "
                                    f"fix the cause and run `mva resume {layout.root}`")

    def documents_runs() -> None:
        for seg in segments:
            execute(bundle.documents_job, {RANGE_START: seg[0], RANGE_END: seg[-1]})

    def per_document_runs() -> None:
        for seg in segments:
            execute(bundle.per_document_job, {RANGE_START: f"{seg[0]}|{session_id}",
                                              RANGE_END: f"{seg[-1]}|{session_id}"})

    with _planned_events(sum(len(seg) for seg in segments)):
        try:
            # Documents first, then the calls. Running the documents run alongside them (it costs
            # ~18 s per 1,000 documents, bench/README.md) deadlocked: two in-process Dagster runs
            # on threads reconfigure Python logging under each other's locks.
            if "documents" in steps:
                documents_runs()
            if "per_document" in steps:
                per_document_runs()
            if "session" in steps:
                crash_point("runner.before_session_job")
                execute(bundle.session_job, {}, partition_key=session_id)
        except BaseException:
            if load_manifest(layout).status == "running":
                set_status(layout, "interrupted")
            raise
    set_status(layout, "completed")
    chronolog.append("SESSION_COMPLETED", {"runs": result.run_ids})
    return result
