"""One asset group per experiment: documents ... metrics, statistics, synthesis, report.

Partitioning (dynamic partitions, so sessions and documents appear as they are created):

* ``documents``              [document]
* ``analysis``, ``extraction`` [document x session]  (single-run backfills: one run per range)
* ``scores``, ``metrics``, ``statistics``, ``synthesis``, ``report``  [session]

Assets stay thin: they load the session's context and call ``mva_dagster.steps``. Dagster's
materialization records are the provenance; per-document details are logged as observations.
"""


import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from mva_dagster.llm.gateway import LLMGateway
from mva_dagster.observe.provenance import observed_provider_versions
from mva_dagster.records import ExtractedRecord
from mva_dagster.sessions.layout import ExperimentLayout
from mva_dagster.steps import analysis as analysis_step
from mva_dagster.steps import extraction as extraction_step
from mva_dagster.steps import report as report_step
from mva_dagster.steps import statistics as statistics_step
from mva_dagster.steps import synthesis as synthesis_step
from mva_dagster.steps import tables
from mva_dagster.steps.context import SessionContext

SESSION_TAG = "mva/session"
GROUNDED_CHECK = "numbers_and_quotes_grounded"


def ident(value: str) -> str:
    """A Dagster-safe identifier (asset key part, group, partitions name)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", value)


@dataclass(frozen=True)
class ExperimentDefs:
    """The names of everything defined for one experiment, so callers never rebuild them."""

    experiment: ExperimentLayout
    group: str
    documents_partitions: str
    sessions_partitions: str
    documents_job: str
    per_document_job: str
    session_job: str
    assets: list[dg.AssetsDefinition]
    jobs: list[UnresolvedAssetJobDefinition]
    schedules: list[dg.ScheduleDefinition]

    @property
    def asset_keys(self) -> list[dg.AssetKey]:
        """Every asset key of the experiment, in dependency order (documents ... report)."""
        return [key for a in self.assets for key in a.specs_by_key]

    @property
    def steps(self) -> list[str]:
        """The assets' short names in dependency order: documents, analysis, extraction, ..."""
        return [key.path[-1] for key in self.asset_keys]

    def key(self, step: str) -> dg.AssetKey:
        return next(k for k in self.asset_keys if k.path[-1] == step)


def split_keys(keys: list[str]) -> dict[str, list[str]]:
    """Multi-partition keys 'document|session' grouped by session."""
    by_session: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        document_id, session_id = key.split("|", 1)
        by_session[session_id].append(document_id)
    return by_session


OBSERVE_ENV = "MVA_OBSERVE_DOCUMENTS_MAX"


def observe_documents_max() -> int:
    """Runs over at most this many documents log one Dagster observation per document
    (``$MVA_OBSERVE_DOCUMENTS_MAX``, default 200); larger runs log none, see docs/observability.md."""
    try:
        return int(os.environ.get(OBSERVE_ENV, "200"))
    except ValueError:
        return 200


def _record_lines(records: list[ExtractedRecord]) -> str:
    return "\n".join(
        f"- {r.model} run {r.replicate}: "
        + ("valid" if r.valid else "INVALID " + "; ".join(r.errors)[:200]) + f" [{r.extraction_path}]"
        for r in records)


def _reporter(context: dg.AssetExecutionContext) -> Callable[[str], None]:
    """Progress lines: to the terminal when run by `mva`, to the Dagster log otherwise."""
    to_terminal = context.run.tags.get("mva/progress") == "terminal"

    def report(line: str) -> None:
        if to_terminal:
            print(line, file=sys.stderr, flush=True)
        else:
            context.log.info(line)

    return report


def build_experiment_defs(experiment: ExperimentLayout) -> ExperimentDefs:
    project = experiment.project.name
    group = ident(f"{project}__{experiment.name}")
    prefix = [ident(project), ident(experiment.name)]
    documents_parts = dg.DynamicPartitionsDefinition(name=f"{group}__documents")
    sessions_parts = dg.DynamicPartitionsDefinition(name=f"{group}__sessions")
    per_doc = dg.MultiPartitionsDefinition({"document": documents_parts, "session": sessions_parts})
    per_session_from_doc = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="session")
    doc_from_multi = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="document")

    def ctx_for(session_id: str) -> SessionContext:
        return SessionContext.load(experiment.session(session_id))

    documents_key = dg.AssetKey([*prefix, "documents"])

    @dg.multi_asset(
        name=f"{group}__documents", group_name=group, partitions_def=documents_parts,
        backfill_policy=dg.BackfillPolicy.single_run(),
        specs=[dg.AssetSpec(documents_key, skippable=True, kinds={"python"},
                            description="A corpus document: path, size and sha256 as the session "
                                        "recorded them.")])
    def documents(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        """Every document is checked first (a changed or missing file fails the run before anything
        is recorded); then each partition's materialization carries its path, sha256 and size."""
        session_id = context.run.tags.get(SESSION_TAG)
        sessions = [ctx_for(session_id)] if session_id else [SessionContext.load(s) for s in
                                                               reversed(experiment.sessions())]
        entries = []
        for document_id in context.partition_keys:
            ctx = next((c for c in sessions if c.manifest.has_document(document_id)), None)
            if ctx is None:
                raise dg.Failure(f"document {document_id} is in no session of {experiment.name}")
            entry = ctx.manifest.document(document_id)
            ctx.check_document(entry)  # refuses a changed or missing file
            entries.append(entry)
        for entry in entries:
            context.log_event(dg.AssetMaterialization(
                asset_key=documents_key, partition=entry.id,
                metadata={"path": entry.path, "sha256": entry.sha256, "words": entry.n_words}))
        context.log.info(f"{len(entries)} documents checked against their recorded sha256")
        yield from ()

    analysis_key = dg.AssetKey([*prefix, "analysis"])
    extraction_key = dg.AssetKey([*prefix, "extraction"])

    @dg.multi_asset(
        name=f"{group}__per_document", group_name=group, partitions_def=per_doc, can_subset=True,
        backfill_policy=dg.BackfillPolicy.single_run(),
        specs=[
            dg.AssetSpec(analysis_key, skippable=True, kinds={"litellm"},
                         deps=[dg.AssetDep(documents_key, partition_mapping=doc_from_multi)],
                         description="One LLM call per document x model x run through the proxy; raw "
                                     "answers are archived in llm_archive/ before anything reads them."),
            dg.AssetSpec(extraction_key, skippable=True, kinds={"json"}, deps=[analysis_key],
                         description="Each archived answer parsed and validated against the output "
                                     "contract as it lands; what the parser cannot read is transformed "
                                     "by the experiment's extraction_model (archived like every call); "
                                     "invalid answers are kept with their reasons."),
        ])
    def per_document(context: dg.AssetExecutionContext, llm: LLMGateway) -> Iterator[dg.MaterializeResult]:
        """Analysis and extraction pipelined in one step: each answer is extracted, and its row added
        to results/scores.csv, as soon as it is archived; each document's partitions are recorded
        as materialized the moment its last call is, so the UI's partition status follows the
        session live. Either asset can be materialized alone (a re-extraction reads the archive
        and pays for nothing)."""
        report = _reporter(context)
        selected = context.selected_asset_keys
        do_analysis, do_extraction = analysis_key in selected, extraction_key in selected
        by_session = split_keys(list(context.partition_keys))
        detailed = sum(len(d) for d in by_session.values()) <= observe_documents_max()
        totals = {"calls": 0, "sent": 0, "from_archive": 0, "failed": 0, "cost_usd": 0.0}
        valid = invalid = 0
        paths: dict[str, int] = defaultdict(int)
        for session_id, document_ids in by_session.items():
            ctx = ctx_for(session_id)
            extractor = extraction_step.Extractor(ctx, llm, document_ids, report) if do_extraction else None

            def analysed(document_id: str, outcomes: list[analysis_step.CallOutcome], scores_md: str,
                         session_id: str = session_id) -> None:
                partition = f"{document_id}|{session_id}"
                metadata: dict[str, Any] = {
                    "calls": len(outcomes),
                    "answered": sum(1 for o in outcomes if o.answered),
                    "from_archive": sum(1 for o in outcomes if o.from_archive),
                    "failed": [f"{o.model} run {o.replicate}: {o.error_class}" for o in outcomes
                               if not o.answered],
                    "cost_usd": round(sum(o.paid_usd for o in outcomes), 6),
                    "models": sorted({o.model for o in outcomes})}
                if detailed:  # the full score tables, for runs small enough to afford them
                    metadata["scores"] = dg.MetadataValue.md(scores_md)
                context.log_event(dg.AssetMaterialization(asset_key=analysis_key, partition=partition,
                                                          metadata=metadata))
                records = [o.record for o in outcomes if o.record is not None]
                if do_extraction:
                    extracted(document_id, records, session_id)

            def extracted(document_id: str, records: list[ExtractedRecord], session_id: str = session_id) -> None:
                metadata: dict[str, Any] = {"records": len(records),
                                            "valid": sum(1 for r in records if r.valid),
                                            "paths": sorted({r.extraction_path for r in records})}
                if detailed:
                    metadata["detail"] = dg.MetadataValue.md(_record_lines(records))
                context.log_event(dg.AssetMaterialization(
                    asset_key=extraction_key, partition=f"{document_id}|{session_id}", metadata=metadata))

            if do_analysis:
                summary = analysis_step.run_analysis(ctx, llm, document_ids, report, on_document=analysed,
                                                     extractor=extractor)
                totals["calls"] += len(summary.outcomes)
                totals["sent"] += summary.sent
                totals["from_archive"] += summary.from_archive
                totals["failed"] += len(summary.failed)
                totals["cost_usd"] += summary.cost_usd
                done = extractor.completed() if extractor is not None else None
            else:
                done = extraction_step.run_extraction(ctx, document_ids, llm, report, on_document=extracted)
            if do_analysis:
                # The model ids the providers returned (from the proxy ledger), not the aliases asked for.
                context.log.info(f"analysis of {session_id}: {totals} provider versions "
                                 f"{observed_provider_versions(ctx.layout)}")
            if done is not None:
                for path, count in done.by_path().items():
                    paths[path] += count
                valid += done.valid
                invalid += done.invalid
                report(f"[extraction] {session_id}: {done.valid} valid, {done.invalid} invalid "
                       f"of {done.records} records")
                for line in done.invalid_examples[:5]:
                    report(f"  invalid: {line}")
        if do_extraction:
            context.log.info(f"extraction: {valid} valid, {invalid} invalid, by path {dict(paths)}")
        yield from ()

    @dg.asset(key=[*prefix, "scores"], group_name=group, partitions_def=sessions_parts,
              deps=[dg.AssetDep(extraction_key, partition_mapping=per_session_from_doc)], kinds={"duckdb"},
              description="One row per document x model x run: results/scores.csv and the DuckDB table.")
    def scores(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        ctx = ctx_for(context.partition_key)
        records = extraction_step.load_records(ctx)
        frame = tables.scores_frame(ctx, records)
        tables.write_table(ctx, "scores", frame)
        tables.write_table(ctx, "documents", tables.documents_frame(ctx))
        return dg.MaterializeResult(metadata={
            "rows": len(frame), "valid_rows": int(frame["valid"].sum()),
            "csv": dg.MetadataValue.path(str(ctx.layout.scores_csv)),
            "duckdb": dg.MetadataValue.path(str(ctx.layout.duckdb))})

    @dg.asset(key=[*prefix, "metrics"], group_name=group, partitions_def=sessions_parts, deps=[scores],
              kinds={"duckdb"},
              description="The framework's calculation_spec evaluated per record, in dependency order.")
    def metrics(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        ctx = ctx_for(context.partition_key)
        frame = tables.metrics_frame(ctx, extraction_step.load_records(ctx))
        tables.write_table(ctx, "metrics", frame)
        return dg.MaterializeResult(metadata={
            "rows": len(frame), "metrics": list(frame.columns[4:]),
            "csv": dg.MetadataValue.path(str(ctx.layout.metrics_csv))})

    @dg.asset(key=[*prefix, "statistics"], group_name=group, partitions_def=sessions_parts, deps=[metrics],
              kinds={"duckdb"},
              description="The experiment's statistical plan and hypotheses, computed: descriptives, tests "
                          "with effect sizes, inter-run reliability; results/stats_*.csv and plot_*.png.")
    def statistics(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        outcome = statistics_step.run_statistics(ctx_for(context.partition_key))
        hypotheses = outcome.result.tables["stats_hypotheses"]
        return dg.MaterializeResult(metadata={
            "hypotheses": dg.MetadataValue.md(synthesis_step.markdown_table(
                hypotheses[["hypothesis", "verdict", "tests", "computed", "supported"]])),
            "tests": len(outcome.result.tables["stats_tests"]),
            "plots": [str(p) for p in outcome.plots]})

    @dg.asset(key=[*prefix, "synthesis"], group_name=group, partitions_def=sessions_parts, deps=[statistics],
              kinds={"litellm"},
              check_specs=[dg.AssetCheckSpec(GROUNDED_CHECK, asset=[*prefix, "synthesis"],
                                             description="Every number in the synthesis matches a computed "
                                                         "statistic; every quotation occurs in a document.")],
              description="An LLM narrates the computed statistics (results/synthesis.md and .html); its "
                          "numbers and quotations are checked afterwards.")
    def synthesis(context: dg.AssetExecutionContext, llm: LLMGateway) -> dg.MaterializeResult:
        outcome = synthesis_step.run_synthesis(ctx_for(context.partition_key), llm, _reporter(context))
        summary = outcome.grounding.summary()
        unmatched = [f"number {n.text.strip()}" for n in outcome.grounding.unmatched_numbers] + [
            f"quotation \"{q.text[:80]}\"" for q in outcome.grounding.unmatched_quotes]
        return dg.MaterializeResult(
            metadata={"model": outcome.model, "path": dg.MetadataValue.path(str(outcome.markdown_path)),
                      "html": dg.MetadataValue.path(str(outcome.html_path)), **summary},
            check_results=[dg.AssetCheckResult(
                check_name=GROUNDED_CHECK, passed=outcome.grounded, severity=dg.AssetCheckSeverity.WARN,
                metadata={**summary, "failed": outcome.failed or "", "unmatched": unmatched[:50]})])

    @dg.asset(key=[*prefix, "report"], group_name=group, partitions_def=sessions_parts, deps=[synthesis],
              kinds={"markdown"}, description="A Markdown summary of the session in results/report.md.")
    def report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        ctx = ctx_for(context.partition_key)
        records = extraction_step.load_records(ctx)
        text = report_step.write_report(ctx, records, tables.scores_frame(ctx, records),
                                        tables.metrics_frame(ctx, records))
        return dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(str(ctx.layout.report_md)),
            "preview": dg.MetadataValue.md(text[:20000])})

    documents_job = dg.define_asset_job(f"{group}__documents_job", selection=[documents],
                                        partitions_def=documents_parts)
    per_document_job = dg.define_asset_job(f"{group}__per_document_job", selection=[per_document],
                                           partitions_def=per_doc)
    session_job = dg.define_asset_job(f"{group}__session_job",
                                      selection=[scores, metrics, statistics, synthesis, report],
                                      partitions_def=sessions_parts)
    return ExperimentDefs(
        experiment=experiment, group=group,
        documents_partitions=str(documents_parts.name), sessions_partitions=str(sessions_parts.name),
        documents_job=documents_job.name, per_document_job=per_document_job.name,
        session_job=session_job.name,
        assets=[documents, per_document, scores, metrics, statistics, synthesis, report],
        jobs=[documents_job, per_document_job, session_job], schedules=[],
    )
