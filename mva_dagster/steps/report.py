"""The session report: a Markdown summary computed from the session's tables, nothing else.

Statistics and the LLM-written synthesis are separate steps; this report states what ran, what it
cost, what failed, the per-document means of every score and metric, and the hypothesis verdicts
and figures the statistics step computed (read back from ``results/``, never recomputed here).
"""

from __future__ import annotations

import json

import pandas as pd

from mva_dagster.fsutil import atomic_write_text
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.records import ExtractedRecord
from mva_dagster.steps.context import SessionContext


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


def per_document_means(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    valid = frame[frame["valid"]]
    numeric = [c for c in columns if c in valid and pd.api.types.is_numeric_dtype(valid[c])
               and not pd.api.types.is_bool_dtype(valid[c]) and c != "replicate"]
    if valid.empty or not numeric:
        return pd.DataFrame()
    means = valid.groupby("document_id")[numeric].mean().T
    means.insert(0, "field", means.index)
    return means.reset_index(drop=True)


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
    every_entry = SessionArchive(ctx.layout).entries()
    entries = [e for e in every_entry if e.request.purpose != "synthesis"]
    synthesis_cost = sum(e.answer.cost_usd or 0.0 for e in every_entry if e.request.purpose == "synthesis")
    cost = sum(e.answer.cost_usd or 0.0 for e in entries)
    tokens_in = sum(e.answer.prompt_tokens or 0 for e in entries)
    tokens_out = sum(e.answer.completion_tokens or 0 for e in entries)
    provider_models = sorted({e.answer.provider_model or "?" for e in entries})
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
        f"- Calls: {len(records)} planned, {len(entries)} answered and archived, "
        f"{valid} valid records, {len(invalid)} invalid or failed",
        f"- Tokens: {tokens_in} in, {tokens_out} out; cost ${cost:.6f}"
        + (" (simulated provider: what the calls would have cost at the models' list prices)"
           if manifest.provider == "simulated" else "")
        + (f"; synthesis ${synthesis_cost:.6f}" if synthesis_cost else ""),
        "",
        *_statistics_section(ctx),
        "## Derived metrics: mean per document across models and runs",
        "",
        _markdown_table(per_document_means(metrics, list(metrics.columns))),
        "## Scores: mean per document across models and runs",
        "",
        _markdown_table(per_document_means(scores, list(scores.columns))),
    ]
    if invalid:
        lines += ["## Invalid or failed records", "",
                  "Every raw answer is kept in `llm_archive/`; `mva resume` retries calls without an answer.",
                  ""]
        for record in invalid:
            lines.append(f"- {record.document_id} / {record.model} / run {record.replicate}: "
                         f"{'; '.join(record.errors)[:300]}")
        lines.append("")
    lines += ["## Files", "",
              "- `results/scores.csv`, `results/metrics.csv`, `results/documents.csv` and the same tables in "
              "`results/session.duckdb`",
              "- `extracted/`: one validated record per call; `llm_archive/`: every raw answer",
              "- `session_chronolog.jsonl`: what happened, in order", ""]
    text = "\n".join(lines)
    atomic_write_text(ctx.layout.report_md, text)
    return text
