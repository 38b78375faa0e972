"""The session's data as the statistics see it: valid records, their document's metadata, and names.

Nothing here knows a framework's field names: numeric data sources are the output contract's
number/integer fields followed by the calculation spec's metrics, categorical answer fields are its
string/boolean fields, and grouping variables are corpus metadata fields or categorical answers.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from mva_dagster.stats.core import NotComputable

KEYS = ["document_id", "model", "replicate"]
DOCUMENT_ID_NAMES = ("document_id", "document", "speech", "text")


@dataclass
class StatsData:
    """Valid records (one row per document x model x run) plus the documents' metadata."""

    records: pd.DataFrame
    documents: pd.DataFrame
    numeric: list[str]
    metrics: list[str]
    categorical: list[str]
    metadata: list[str]
    models: list[str]
    runs_per_model: int
    invalid_records: int = 0

    def model_rows(self, model: str, columns: list[str]) -> pd.DataFrame:
        """``columns`` of one model's records (a copy of those columns only, not of every column)."""
        return self.records.loc[self.records["model"] == model, columns]

    def doc_means(self, model: str, source: str) -> pd.Series:
        """Mean of the valid runs per document (index document_id, sorted)."""
        rows = self.model_rows(model, ["document_id", source])
        return rows.groupby("document_id", sort=True)[source].mean().dropna()

    def runs_matrix(self, model: str, source: str) -> tuple[pd.DataFrame, list[str]]:
        """documents x runs for one model; documents missing a run are dropped (and named)."""
        rows = self.model_rows(model, ["document_id", "replicate", source])
        wide = rows.pivot(index="document_id", columns="replicate", values=source)
        wide = wide.reindex(index=sorted(self.documents["document_id"]),
                            columns=range(1, self.runs_per_model + 1))
        incomplete = [str(d) for d in wide.index[wide.isna().any(axis=1)]]
        return wide.dropna(how="any"), incomplete


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def build_data(*, scores: pd.DataFrame, metrics: pd.DataFrame, documents: pd.DataFrame,
               numeric_fields: list[str], categorical_fields: list[str], metric_names: list[str],
               models: list[str], runs_per_model: int) -> StatsData:
    """Join scores and metrics on (document, model, run), keeping valid records only."""
    valid = scores[scores["valid"].astype(bool)]
    keep_metrics = [m for m in metric_names if m in metrics.columns and m not in numeric_fields]
    frame = valid[[*KEYS, *numeric_fields, *categorical_fields]].merge(
        metrics[[*KEYS, *keep_metrics]], on=KEYS, how="left", validate="one_to_one")
    for name in [*numeric_fields, *keep_metrics]:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    for name in categorical_fields:
        frame[name] = [_as_text(v) for v in frame[name]]
    frame = frame.sort_values(KEYS, kind="stable").reset_index(drop=True)
    docs = documents.copy()
    metadata = [c for c in docs.columns if c not in ("document_id", "sha256", "n_words")]
    for name in metadata:
        docs[name] = [_as_text(v) for v in docs[name]]
    return StatsData(records=frame, documents=docs.sort_values("document_id").reset_index(drop=True),
                     numeric=[*numeric_fields, *keep_metrics], metrics=keep_metrics,
                     categorical=list(categorical_fields), metadata=metadata, models=list(models),
                     runs_per_model=runs_per_model, invalid_records=int(len(scores) - len(valid)))


# ---------------------------------------------------------------- names the plan uses


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    tail = [c for c in candidates if c not in close and (name in c or c.endswith(name.split("_", 1)[-1]))]
    found = list(dict.fromkeys([*close, *tail]))[:4]
    return f" (did you mean {', '.join(found)}?)" if found else ""


def resolve_source(data: StatsData, name: str) -> str:
    if name in data.numeric:
        return name
    if name in data.categorical:
        raise NotComputable(f"data source {name!r} is a categorical answer, not a number")
    raise NotComputable(
        f"data source {name!r} is neither a numeric field of the output contract nor a metric of the "
        f"calculation spec{_suggest(name, data.numeric)}")


@dataclass
class Grouping:
    """How records or documents fall into groups for one test."""

    variable: str
    label: str
    level: Literal["document", "record"]
    by_document: dict[str, str] = field(default_factory=dict)  # document-level groupings
    by_record: dict[tuple[str, str, int], str] = field(default_factory=dict)  # record-level ones
    order: list[str] = field(default_factory=list)
    dropped: int = 0

    @property
    def is_document_id(self) -> bool:
        return self.variable in DOCUMENT_ID_NAMES

    def group_of_document(self, document_id: str) -> str | None:
        return self.by_document.get(document_id)


def _recode(values: dict[Any, str | None], groups: Any, variable: str) -> tuple[dict[Any, str], list[str], int]:
    """Apply ``groups`` (label -> list of values, or a list of values to keep) to raw group values."""
    if groups is None:
        kept = {k: v for k, v in values.items() if v is not None}
        return kept, sorted(set(kept.values())), len(values) - len(kept)
    if isinstance(groups, list):
        mapping = {str(v): str(v) for v in groups}
        order = [str(v) for v in groups]
    elif isinstance(groups, dict):
        mapping = {}
        for label, members in groups.items():
            for member in members if isinstance(members, list) else [members]:
                mapping[str(member)] = str(label)
        order = [str(label) for label in groups]
    else:
        raise NotComputable(f"params.groups must be a list of {variable} values or a mapping "
                            "group -> list of values")
    known = {v for v in values.values() if v is not None}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise NotComputable(f"params.groups names {', '.join(map(repr, unknown))}, which no "
                            f"{variable} value is (values: {', '.join(sorted(known))})")
    recoded = {k: mapping[v] for k, v in values.items() if v is not None and v in mapping}
    return recoded, order, len(values) - len(recoded)


def resolve_grouping(data: StatsData, variable: str, groups: Any = None) -> Grouping:
    """A corpus metadata field, a categorical answer field, or the document itself."""
    label = variable if groups is None else f"{variable} (grouped)"
    if variable in DOCUMENT_ID_NAMES and variable not in data.metadata and variable not in data.categorical:
        values: dict[Any, str | None] = {d: d for d in data.documents["document_id"]}
        mapping, order, dropped = _recode(values, groups, variable)
        return Grouping("document_id", label, "document", by_document=mapping, order=order, dropped=dropped)
    if variable in data.metadata:
        values = dict(zip(data.documents["document_id"], data.documents[variable], strict=True))
        mapping, order, dropped = _recode(values, groups, variable)
        return Grouping(variable, label, "document", by_document=mapping, order=order, dropped=dropped)
    if variable in data.categorical:
        rec = data.records
        values = {(d, m, int(r)): v for d, m, r, v in
                  zip(rec["document_id"], rec["model"], rec["replicate"], rec[variable], strict=True)}
        rmapping, order, dropped = _recode(values, groups, variable)
        return Grouping(variable, label, "record", by_record=rmapping, order=order, dropped=dropped)
    candidates = [*data.metadata, *data.categorical]
    raise NotComputable(
        f"grouping variable {variable!r} is neither a corpus metadata field ({', '.join(data.metadata) or 'none'}) "
        f"nor a categorical answer field ({', '.join(data.categorical) or 'none'}){_suggest(variable, candidates)}")


def grouped_values(data: StatsData, grouping: Grouping, model: str, source: str,
                   unit: str) -> dict[str, list[float]]:
    """Values of ``source`` per group, as document means (unit 'document') or single runs ('record')."""
    out: dict[str, list[float]] = {}
    if unit == "document":
        for document_id, value in data.doc_means(model, source).items():
            group = grouping.group_of_document(str(document_id))
            if group is not None:
                out.setdefault(group, []).append(float(value))
    else:
        rows = data.model_rows(model, ["document_id", "replicate", source])
        for d, r, value in zip(rows["document_id"], rows["replicate"], rows[source], strict=True):
            if pd.isna(value):
                continue
            group = (grouping.by_record.get((d, model, int(r))) if grouping.level == "record"
                     else grouping.group_of_document(d))
            if group is not None:
                out.setdefault(group, []).append(float(value))
    return {g: out[g] for g in [*grouping.order, *sorted(set(out) - set(grouping.order))] if g in out}
