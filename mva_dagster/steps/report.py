"""The session report: a Markdown summary computed from the session's tables, nothing else.

Statistics and the LLM-written synthesis are separate steps; this report states what ran, what it
cost, what failed, the per-document means of every score and metric, and the hypothesis verdicts
and figures the statistics step computed (read back from ``results/``, never recomputed here).

Its size does not grow with the corpus beyond a point: above ``MAX_REPORT_DOCUMENTS`` documents the
per-document means are summarised per field, and at most ``MAX_LISTED_RECORDS`` failed records are
listed one by one; the report says so and names the files that hold every row.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from mva_dagster.fsutil import atomic_write_text
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.records import ExtractedRecord
from mva_dagster.steps.context import SessionContext

MAX_REPORT_DOCUMENTS = 60  # one column per document up to here; a summary per field above
MAX_LISTED_RECORDS = 50  # invalid records listed one by one; the rest are counted by error class


def _markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(no rows)_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.3f}"
    return str(value)


def _document_means(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """documents x numeric fields: the mean of each document's valid runs (all models)."""
    numeric = [c for c in columns if c in frame and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c]) and c != "replicate"]
    valid = frame.loc[frame["valid"].astype(bool), ["document_id", *numeric]]
    if valid.empty or not numeric:
        return pd.DataFrame()
    return valid.groupby("document_id")[numeric].mean()


def per_document_means(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per field, one column per document."""
    means = _document_means(frame, columns)
    if means.empty:
        return means
    wide = means.T
    wide.insert(0, "field", wide.index)
    return wide.reset_index(drop=True)


def document_means_section(frame: pd.DataFrame, columns: list[str], csv: str) -> str:
    """The per-document means table, or above MAX_REPORT_DOCUMENTS a summary of it per field."""
    means = _document_means(frame, columns)
    if len(means) <= MAX_REPORT_DOCUMENTS:
        return _markdown_table(per_document_means(frame, columns))
    summary = pd.DataFrame({"field": means.columns, "documents": means.count().to_numpy(),
                            "mean": means.mean().to_numpy(), "sd": means.std(ddof=1).to_numpy(),
                            "min": means.min().to_numpy(), "median": means.median().to_numpy(),
                            "max": means.max().to_numpy()})
    return (f"_{len(means)} documents, more than {MAX_REPORT_DOCUMENTS} to give each a column: each row "
            "summarises one field's document means over the documents. Every run is in "
            f"`results/{csv}`; each document's mean and inter-run SD in `results/stats_documents.csv`._\n\n"
            + _markdown_table(summary))


@dataclass
class _Usage:
    cost: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    answered: int = 0
    synthesis_cost: float = 0.0


def _usage(ctx: SessionContext) -> tuple[_Usage, list[str]]:
    usage, provider_models = _Usage(), set()
    for entry in SessionArchive(ctx.layout).iter_entries():  # one at a time: entries are large
        if entry.request.purpose == "synthesis":
            usage.synthesis_cost += entry.answer.cost_usd or 0.0
            continue
        usage.answered += 1
        usage.cost += entry.answer.cost_usd or 0.0
        usage.tokens_in += entry.answer.prompt_tokens or 0
        usage.tokens_out += entry.answer.completion_tokens or 0
        provider_models.add(entry.answer.provider_model or "?")
    return usage, sorted(provider_models)


def _invalid_section(invalid: list[ExtractedRecord]) -> list[str]:
    lines = ["## Invalid or failed records", "",
             "Every raw answer is kept in `llm_archive/`; `mva resume` retries calls without an answer.", ""]
    for record in invalid[:MAX_LISTED_RECORDS]:
        lines.append(f"- {record.document_id} / {record.model} / run {record.replicate}: "
                     f"{'; '.join(record.errors)[:300]}")
    if len(invalid) > MAX_LISTED_RECORDS:
        classes = Counter(r.error_class or "unclassified" for r in invalid)
        lines.append(f"- ... and {len(invalid) - MAX_LISTED_RECORDS} more. All {len(invalid)} by error class: "
                     + ", ".join(f"{name} {count}" for name, count in sorted(classes.items()))
                     + "; every one is in `results/scores.csv` (columns `valid` and `errors`)")
    lines.append("")
    return lines


def _statistics_section(ctx: SessionContext) -> list[str]:
    """Hypothesis verdicts, the synthesis check and the figures, if the statistics step ran."""
    results = ctx.layout.results
    hypotheses = results / "stats_hypotheses.csv"
    if not hypotheses.exists():
        return []
    frame = pd.read_csv(hypotheses, dtype=str, keep_default_na=False)
    lines = ["## Hypotheses (computed by the statistics step)", "",
             _markdown_table(frame[["hypothesis", "verdict", "tests", "computed", "supported"]]),
             "Tests, effect sizes and reasons: `results/stats_tests.csv`; reliability: "
             "`results/stats_reliability.csv`.", ""]
    check = results / "synthesis_check.json"
    if check.exists():
        data = json.loads(check.read_text(encoding="utf-8"))
        lines += ["## Synthesis", "",
                  f"`results/synthesis.md` (and a self-contained `synthesis.html`) was written by "
                  f"{data.get('model')}. Check: {data.get('numbers_checked')} numbers, "
                  f"{data.get('numbers_unmatched')} not found among the computed statistics; "
                  f"{data.get('quotes_checked')} quotations, {data.get('quotes_unmatched')} not found in the "
                  "documents." + (f" The synthesis failed: {data['failed']}" if data.get("failed") else ""), ""]
    plots = sorted(results.glob("plot_*.png"))
    if plots:
        lines += ["## Figures", "", *[f"![{p.stem}]({p.name})\n" for p in plots]]
    return lines


def write_report(ctx: SessionContext, records: list[ExtractedRecord], scores: pd.DataFrame,
                 metrics: pd.DataFrame) -> str:
    manifest = ctx.manifest
    usage, provider_models = _usage(ctx)
    valid = sum(1 for r in records if r.valid)
    invalid = [r for r in records if not r.valid]
    lines = [
        f"# Session report: {manifest.experiment} / {manifest.session_id}",
        "",
        f"- Project: {manifest.project}",
        f"- Framework: {manifest.framework_name} {manifest.framework_version} "
        f"(snapshot sha256 {manifest.framework_sha256[:12]}), variant `{manifest.analysis_variant}`",
        f"- Corpus: {len(manifest.documents)} documents (sha256 {manifest.corpus_sha256[:12]})",
        f"- Models asked for: {', '.join(manifest.models)}; provider mode: {manifest.provider}"
        + (f" (overridden with --model {manifest.model_override})" if manifest.model_override else ""),
        f"- Models that answered (as reported): {', '.join(provider_models) or 'none'}",
        f"- Runs per model: {manifest.runs_per_model}",
        f"- Calls: {len(records)} planned, {usage.answered} answered and archived, "
        f"{valid} valid records, {len(invalid)} invalid or failed",
        f"- Tokens: {usage.tokens_in} in, {usage.tokens_out} out; cost ${usage.cost:.6f}"
        + (" (simulated provider: what the calls would have cost at the models' list prices)"
           if manifest.provider == "simulated" else "")
        + (f"; synthesis ${usage.synthesis_cost:.6f}" if usage.synthesis_cost else ""),
        "",
        *_statistics_section(ctx),
        "## Derived metrics: mean per document across models and runs",
        "",
        document_means_section(metrics, list(metrics.columns), "metrics.csv"),
        "## Scores: mean per document across models and runs",
        "",
        document_means_section(scores, list(scores.columns), "scores.csv"),
    ]
    if invalid:
        lines += _invalid_section(invalid)
    lines += ["## Files", "",
              "- `results/scores.csv`, `results/metrics.csv`, `results/documents.csv` and the same tables in "
              "`results/session.duckdb`",
              "- `extracted/`: one validated record per call; `llm_archive/`: every raw answer",
              "- `session_chronolog.jsonl`: what happened, in order", ""]
    text = "\n".join(lines)
    atomic_write_text(ctx.layout.report_md, text)
    return text
