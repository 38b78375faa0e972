"""The statistics step: the session's tables in, the experiment's statistical plan executed, out.

Reads the session's own records and the experiment snapshot the session recorded (checked against
its hash), never the researcher's working copy. Writes every table to ``results/<name>.csv`` and
the session's DuckDB file, and the plots to ``results/plot_*.png``. The same function runs in the
``statistics`` asset and in ``mva replay``, so both produce the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from mva_dagster.errors import SessionError
from mva_dagster.fsutil import sha256_file
from mva_dagster.records import ExtractedRecord
from mva_dagster.specs.experiment import Experiment, load_experiment
from mva_dagster.stats.data import KEYS, StatsData, build_data
from mva_dagster.stats.engine import StatisticsResult, compute_statistics
from mva_dagster.steps import tables
from mva_dagster.steps.context import SessionContext
from mva_dagster.steps.extraction import load_records

STATS_TABLES = ("stats_hypotheses", "stats_tests", "stats_reliability", "stats_documents", "stats_groups",
                "stats_agreement", "stats_correlations")


def session_experiment(ctx: SessionContext) -> Experiment:
    """The experiment as the session recorded it: hypotheses, plan and synthesis model come from here."""
    experiment = ctx.layout.experiment
    snapshot = experiment.experiment_snapshot
    if not snapshot.exists():
        raise SessionError(f"{snapshot} is missing; the statistical plan of session "
                           f"{ctx.manifest.session_id} cannot be read")
    actual = sha256_file(snapshot)
    if actual != ctx.manifest.experiment_sha256:
        raise SessionError(
            f"{snapshot} changed since session {ctx.manifest.session_id} was created "
            f"(sha256 {actual[:12]} != {ctx.manifest.experiment_sha256[:12]})",
            hint="restore the snapshot; a changed plan belongs to a new experiment")
    return load_experiment(snapshot, framework_override=experiment.framework_snapshot)


def session_data(ctx: SessionContext, records: list[ExtractedRecord] | None = None) -> StatsData:
    """The session's valid records joined with its metrics and its documents' metadata."""
    records = load_records(ctx) if records is None else records
    contract = ctx.framework.output_contract
    numeric, categorical = [], []
    for name in contract.schema_:
        types = contract.field_types(name) - {"null"}
        if types & {"number", "integer"} and types <= {"number", "integer"}:
            numeric.append(name)
        elif types and types <= {"string", "boolean"}:
            categorical.append(name)
    metrics = tables.metrics_frame(ctx, records)
    scores = tables.scores_frame(ctx, records)
    del records  # the records (every field of every run) are not needed for the join below
    return build_data(scores=scores, metrics=metrics,
                      documents=tables.documents_frame(ctx), numeric_fields=numeric,
                      categorical_fields=categorical,
                      metric_names=[c for c in metrics.columns if c not in (*KEYS, "valid")],
                      models=list(ctx.manifest.models), runs_per_model=ctx.manifest.runs_per_model)


@dataclass
class StatisticsOutcome:
    result: StatisticsResult
    data: StatsData
    plots: list[Path] = field(default_factory=list)


def run_statistics(ctx: SessionContext) -> StatisticsOutcome:
    from mva_dagster.steps.plots import make_plots

    experiment = session_experiment(ctx)
    data = session_data(ctx)
    result = compute_statistics(data, experiment.statistical_plan, experiment.hypotheses)
    for name, frame in result.tables.items():
        tables.write_table(ctx, name, frame)
    plots = make_plots(ctx.layout.results, data, result)
    return StatisticsOutcome(result=result, data=data, plots=plots)


def load_statistics(ctx: SessionContext) -> dict[str, pd.DataFrame]:
    """The statistics tables as the statistics step wrote them (full precision, from DuckDB)."""
    path = ctx.layout.duckdb
    missing = SessionError(f"the statistics of session {ctx.manifest.session_id} have not been computed",
                           hint="materialize the statistics asset first (it runs before synthesis)")
    if not path.exists():
        raise missing
    with duckdb.connect(str(path), read_only=True) as con:
        present = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if not set(STATS_TABLES) <= present:
            raise missing
        return {name: con.execute(f'SELECT * FROM "{name}"').df() for name in STATS_TABLES}
