"""Session tables: scores (one row per document x model x replicate), metrics, documents.

Each table is written to the session's DuckDB file and as CSV in ``results/``. Column order follows
the framework's output contract and calculation spec, so no framework field names live in code.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import pandas as pd

from mva_dagster.calc.formula import build_plan
from mva_dagster.fsutil import atomic_write_text
from mva_dagster.records import ExtractedRecord
from mva_dagster.sessions.appendlog import append_line
from mva_dagster.steps.context import SessionContext

KEY_COLUMNS = ["document_id", "model", "replicate"]
# Floats in CSV: 12 significant digits, so a replay (or another machine) writes the same bytes even
# if a sum was taken in a different order; rows and columns are ordered by the frame's builder.
CSV_FLOAT_FORMAT = "%.12g"


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


def scores_columns(ctx: SessionContext) -> list[str]:
    # Nested contracts are flattened: one column per value.
    return [*KEY_COLUMNS, "valid", "extraction_path", "errors", "flags", *ctx.record_shape.names]


def scores_row(ctx: SessionContext, record: ExtractedRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "document_id": record.document_id, "model": record.model, "replicate": record.replicate,
        "valid": record.valid, "extraction_path": record.extraction_path,
        "errors": "; ".join(record.errors), "flags": "; ".join(record.flags),
    }
    for name in ctx.record_shape.names:
        row[name] = _cell(record.fields.get(name)) if record.valid else None
    return row


def scores_frame(ctx: SessionContext, records: Iterable[ExtractedRecord]) -> pd.DataFrame:
    rows = [scores_row(ctx, record) for record in records]
    frame = pd.DataFrame(rows, columns=scores_columns(ctx))
    return frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)


def metrics_frame(ctx: SessionContext, records: list[ExtractedRecord]) -> pd.DataFrame:
    framework = ctx.framework
    plan = build_plan(framework.calculation_spec, known_inputs=None, file=str(ctx.layout.experiment.framework_snapshot))
    rows = []
    for record in records:
        values = (plan.evaluate(ctx.record_shape.formula_row(record.fields)) if record.valid
                  else dict.fromkeys(plan.order))
        rows.append({"document_id": record.document_id, "model": record.model,
                     "replicate": record.replicate, "valid": record.valid,
                     **{name: values.get(name) for name in plan.order}})
    frame = pd.DataFrame(rows, columns=[*KEY_COLUMNS, "valid", *plan.order])
    return frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)


def documents_frame(ctx: SessionContext) -> pd.DataFrame:
    rows = []
    for entry in ctx.manifest.documents:
        rows.append({"document_id": entry.id, "sha256": entry.sha256, "n_words": entry.n_words,
                     **{k: _cell(v) for k, v in sorted(entry.metadata.items()) if k != "sha256"}})
    return pd.DataFrame(rows).sort_values("document_id", kind="stable").reset_index(drop=True)


def csv_text(frame: pd.DataFrame) -> str:
    """The one way tables become CSV: deterministic float format and line endings."""
    return frame.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")


class ProgressiveScores:
    """``results/scores.csv`` while the records arrive: always a valid CSV, one line per record.

    Opening it rewrites the file (atomically) with the header and the rows of the session's records
    that ``keep`` says stay as they are; each new record is then appended as one whole line under
    the append lock (a line torn by a crash is set aside, see sessions/appendlog.py). Rows are in
    landing order; the ``scores`` asset rewrites the file sorted once the batch is done. The
    records in ``extracted/`` stay the truth: this file is a view to watch and open mid-run.
    """

    def __init__(self, ctx: SessionContext, keep: Callable[[tuple[str, str, int]], bool]) -> None:
        self.ctx = ctx
        self.path = ctx.layout.scores_csv
        self.columns = scores_columns(ctx)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        for call in ctx.calls():  # streamed: one record in memory at a time
            if not keep(call):
                continue
            path = ctx.layout.extracted_path(*call)
            if path.exists():
                record = ExtractedRecord.model_validate_json(path.read_text(encoding="utf-8"))
                writer.writerow(self._cells(record))
        atomic_write_text(self.path, buffer.getvalue())

    def _cells(self, record: ExtractedRecord) -> list[str]:
        row = scores_row(self.ctx, record)
        return [_csv_cell(row[name]) for name in self.columns]

    def add(self, record: ExtractedRecord) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(self._cells(record))
        append_line(self.path, buffer.getvalue().encode("utf-8"), fsync=False)


def _csv_cell(value: Any) -> str:
    """A cell as :func:`csv_text` writes it (floats to 12 significant digits, None empty)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else CSV_FLOAT_FORMAT % value
    return str(value)


def write_table(ctx: SessionContext, name: str, frame: pd.DataFrame) -> None:
    """Replace table ``name`` in the session's DuckDB file and write ``results/<name>.csv``."""
    ctx.layout.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ctx.layout.results / f"{name}.csv", csv_text(frame))
    with duckdb.connect(str(ctx.layout.duckdb)) as con:
        con.register("frame_view", frame)
        con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM frame_view')
        con.unregister("frame_view")
