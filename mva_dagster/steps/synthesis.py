"""The synthesis step: an LLM narrates the computed statistics; software checks what it wrote.

The model receives the computed tables (hypothesis verdicts, tests, reliability, group and
document summaries, correlations) and a few verbatim evidence quotations - never the raw rows, so
there is nothing to compute from and no reason to. The prompt's size is bounded whatever the corpus:
above ``MAX_PROMPT_DOCUMENTS`` documents the per-document means are summarised (with the documents
at both ends of the first focus source listed, and quoted), and long tables are cut with a note. The call goes through the LLM gateway like
every other (``purpose="synthesis"``, archived before use), and its answer is then checked: every
number against the computed statistics, every quotation against the source documents
(:mod:`mva_dagster.stats.grounding`). Unmatched items are marked in ``results/synthesis.md``,
listed in ``results/synthesis_check.json`` and fail the asset's check.

``mva replay`` runs the same code with no gateway: the answer must then come from the archive.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from markdown_it import MarkdownIt

from mva_dagster.errors import ArchiveError, LLMError, SpecError
from mva_dagster.fsutil import atomic_write_json, atomic_write_text
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.gateway import LLMGateway
from mva_dagster.records import ExtractedRecord, LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import Chronolog
from mva_dagster.specs.experiment import Experiment
from mva_dagster.stats.engine import fmt, fmt_p
from mva_dagster.stats.grounding import GroundingReport, NumberIndex, check_text, normalise_quote
from mva_dagster.steps.context import SessionContext
from mva_dagster.steps.plots import PLOT_FILES, plot_titles
from mva_dagster.steps.statistics import load_statistics, session_experiment

# Not a valid corpus document id (those start with a letter or digit), so it can never clash.
SYNTHESIS_DOCUMENT_ID = "_synthesis"
SYNTHESIS_MAX_TOKENS = 8192
QUOTES_PER_DOCUMENT = 3
MAX_TEST_ROWS = 80
MAX_GROUP_ROWS = 80
MAX_PROMPT_DOCUMENTS = 60  # each document's means listed (and quoted) up to here; summarised above
FEATURED_PER_END = 10  # above it: the documents with the lowest and the highest mean, listed and quoted
SYSTEM_PROMPT = """\
You write the results section of a research report about a text-analysis experiment. Software has \
already computed every statistic; you are given its tables and nothing else. Rules:
1. Use only numbers that appear in the tables, written exactly as they appear there. Do not compute, \
convert, round differently or estimate any number, and do not write percentages the tables do not show. Put each statistic's symbol right before its value ("F(df, df2) = ...", "t = ...", "p = ...", "r = ...", "d = ...", "alpha = ...", "ICC = ...", "SD = ...", "M = ...").
2. Report each hypothesis with the verdict the table gives and say which test and criterion it rests \
on. Where a test was not computable, say so and give its reason; never guess a result.
3. Quote the documents only with the evidence quotations provided, verbatim, in double quotes, naming \
the document.
4. Write Markdown with these sections: Summary, Hypotheses, Reliability, Differences between \
documents and groups, Limitations. Be concise and precise."""

Say = Callable[[str], None]


@dataclass
class SynthesisOutcome:
    model: str
    provider_model: str | None
    request_key: str
    grounding: GroundingReport
    markdown_path: Path
    html_path: Path
    from_archive: bool
    failed: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def grounded(self) -> bool:
        return self.failed is None and self.grounding.grounded


# ---------------------------------------------------------------- the prompt


def markdown_table(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None) -> str:
    """A Markdown table whose numbers are written the way the grounding check will read them."""
    if frame.empty:
        return "_(no rows)_\n"
    formats = formats or {}

    def cell(column: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        if column in formats:
            return formats[column](value)
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int) or (isinstance(value, float) and float(value).is_integer() and column in
                                      ("n", "n_runs", "n_documents", "rows", "computed", "supported", "df2",
                                       "documents_excluded", "n_distinct")):
            return str(int(value))
        if isinstance(value, float):
            return fmt(value)
        return str(value).replace("|", "/").replace("\n", " ")

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(c, v) for c, v in zip(frame.columns, row, strict=True)) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


P_FORMATS: dict[str, Callable[[Any], str]] = {
    "p_value": lambda p: fmt_p(float(p)), "p_adjusted": lambda p: fmt_p(float(p)),
    "pearson_p": lambda p: fmt_p(float(p)), "spearman_p": lambda p: fmt_p(float(p)),
    "df": lambda v: str(int(v)) if float(v).is_integer() else f"{float(v):.1f}",
}


def _evidence_fields(ctx: SessionContext) -> list[str]:
    contract = ctx.framework.output_contract
    return [name for name in contract.schema_
            if "array" in contract.field_types(name) and ("evidence" in name.lower() or "quot" in name.lower())]


def _valid_records(ctx: SessionContext, document_id: str) -> list[ExtractedRecord]:
    """One document's valid records, in (model, replicate) order; only its own files are read."""
    records = []
    for doc, model, replicate in ctx.calls([document_id]):
        path = ctx.layout.extracted_path(doc, model, replicate)
        if path.exists():
            record = ExtractedRecord.model_validate_json(path.read_text(encoding="utf-8"))
            if record.valid:
                records.append(record)
    return records


def evidence_quotes(ctx: SessionContext, documents: list[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Up to three verbatim quotations per document, (field, quote), taken from valid records.

    ``documents`` limits them to those documents (the ones a large session's prompt lists); each
    document's records and text are read on their own, never the whole session at once.
    """
    fields = _evidence_fields(ctx)
    wanted = None if documents is None else set(documents)
    out: dict[str, list[tuple[str, str]]] = {}
    for entry in sorted(ctx.manifest.documents, key=lambda d: d.id):
        if not fields or (wanted is not None and entry.id not in wanted):
            continue
        records = _valid_records(ctx, entry.id)
        if not records:
            continue
        text = normalise_quote(ctx.document_text(entry))
        chosen: list[tuple[str, str]] = []
        for name in fields:
            for record in records:
                quotes = record.fields.get(name)
                candidates = [q for q in quotes if isinstance(q, str)] if isinstance(quotes, list) else []
                fresh = [q.strip() for q in candidates
                         if 12 <= len(q.strip()) <= 240 and normalise_quote(q) in text
                         and q.strip() not in (c for _, c in chosen) and '"' not in q]
                if fresh:
                    chosen.append((name, fresh[0]))
                    break
            if len(chosen) >= QUOTES_PER_DOCUMENT:
                break
        if chosen:
            out[entry.id] = chosen
    return out


def _focus(stats: dict[str, pd.DataFrame]) -> list[str]:
    """The numeric sources the plan's tests name (in order), or every source with a reliability row."""
    rel = stats["stats_reliability"]
    focus = list(dict.fromkeys(s for s in stats["stats_tests"]["data_source"].dropna()
                               if s in set(rel["data_source"])))
    return focus or list(dict.fromkeys(rel["data_source"]))


def _document_means(stats: dict[str, pd.DataFrame], model: str, focus: list[str]) -> pd.DataFrame:
    """document_id and the mean of its runs for each focus source (one model), documents sorted."""
    docs = stats["stats_documents"]
    docs = docs[(docs["model"] == model) & docs["data_source"].isin(focus)]
    wide = docs.pivot(index="document_id", columns="data_source", values="mean")
    return wide[[c for c in focus if c in wide.columns]].reset_index()


def _extremes(wide: pd.DataFrame) -> pd.DataFrame:
    """The FEATURED_PER_END documents with the lowest and with the highest first focus source."""
    first = wide.columns[1]
    ranked = wide.dropna(subset=[first]).sort_values([first, "document_id"], kind="stable")
    if len(ranked) <= 2 * FEATURED_PER_END:
        return ranked
    return pd.concat([ranked.head(FEATURED_PER_END), ranked.tail(FEATURED_PER_END)])


def featured_documents(ctx: SessionContext, stats: dict[str, pd.DataFrame]) -> list[str] | None:
    """The documents a large session's prompt lists (and quotes); None when it lists every one."""
    if len(ctx.manifest.documents) <= MAX_PROMPT_DOCUMENTS:
        return None
    focus = _focus(stats)
    chosen: set[str] = set()
    for model in ctx.manifest.models:
        wide = _document_means(stats, model, focus)
        if len(wide.columns) > 1:  # as _documents_section: every document up to the limit, both ends above
            listed = wide if len(wide) <= MAX_PROMPT_DOCUMENTS else _extremes(wide)
            chosen.update(str(d) for d in listed["document_id"])
    return sorted(chosen)


def _cut(frame: pd.DataFrame, limit: int, table: str) -> tuple[pd.DataFrame, str]:
    """The first ``limit`` rows, and a note saying so when rows were left out."""
    if len(frame) <= limit:
        return frame, ""
    return frame.head(limit), (f"_(the first {limit} of {len(frame)} rows; every row is in "
                               f"results/{table}.csv)_\n")


def _documents_section(stats: dict[str, pd.DataFrame], model: str, label: str, focus: list[str]) -> list[str]:
    """Each document's mean of its runs; above MAX_PROMPT_DOCUMENTS a summary and both ends only."""
    wide = _document_means(stats, model, focus)
    if len(wide) <= MAX_PROMPT_DOCUMENTS or len(wide.columns) < 2:
        return [f"## Mean of the runs per document{label} (computed)", markdown_table(wide)]
    means = wide.set_index("document_id")
    summary = pd.DataFrame({"data_source": means.columns, "documents": means.count().to_numpy(),
                            "mean": means.mean().to_numpy(), "sd": means.std(ddof=1).to_numpy(),
                            "min": means.min().to_numpy(), "median": means.median().to_numpy(),
                            "max": means.max().to_numpy()})
    first = wide.columns[1]
    return [f"## Means of the runs per document{label}, summarised over documents (computed)",
            f"{len(wide)} documents are too many to list one by one (more than {MAX_PROMPT_DOCUMENTS}): each row "
            "summarises one data source's document means (every document's mean is in "
            "results/stats_documents.csv).", "",
            markdown_table(summary),
            f"## The {FEATURED_PER_END} documents with the lowest and the {FEATURED_PER_END} with the highest "
            f"mean {first}{label} (computed)",
            markdown_table(_extremes(wide))]


def build_prompt(ctx: SessionContext, experiment: Experiment, stats: dict[str, pd.DataFrame],
                 quotes: dict[str, list[tuple[str, str]]]) -> str:
    manifest = ctx.manifest
    hyp = stats["stats_hypotheses"]
    tests = stats["stats_tests"]
    rel = stats["stats_reliability"]
    focus = _focus(stats)
    shown_tests, tests_note = _cut(tests, MAX_TEST_ROWS, "stats_tests")
    multi_model = len(manifest.models) > 1
    keep_model = ["model"] if multi_model else []
    parts = [
        f"# Experiment {manifest.experiment}, session {manifest.session_id}",
        "",
        f"Framework: {manifest.framework_name} {manifest.framework_version}. Documents: {len(manifest.documents)}. "
        f"Models: {', '.join(manifest.models)}. Runs per model: {manifest.runs_per_model}.",
        "",
        "## Hypotheses as the researcher wrote them",
        *[f"- {k}: {v}" for k, v in experiment.hypotheses.items()],
        "" if experiment.hypotheses else "_(none)_",
        "## Hypothesis verdicts (computed)",
        markdown_table(hyp[["hypothesis", "verdict", "tests", "computed", "supported", "basis"]]),
        "## Tests of the statistical plan (computed; one row per data source, model or pair)",
        markdown_table(shown_tests[["test_id", "hypothesis", "method", *keep_model, "data_source", "grouping",
                                    "comparison", "unit", "n", "statistic_name", "statistic", "df", "p_value",
                                    "p_adjusted", "effect_size_name", "effect_size", "ci_low", "ci_high",
                                    "criterion", "verdict", "reason", "detail"]], P_FORMATS) + tests_note,
        "## Inter-run reliability (documents x runs; computed)",
        markdown_table(rel[rel["data_source"].isin(focus)][[
            *keep_model, "data_source", "n_documents", "n_runs", "cronbach_alpha", "alpha_ci_low",
            "alpha_ci_high", "icc1_k", "icc2_1", "krippendorff_alpha", "mean_inter_run_sd", "note"]]),
    ]
    groups = stats["stats_groups"]
    if not groups.empty:
        shown_groups, groups_note = _cut(groups[groups["data_source"].isin(focus)], MAX_GROUP_ROWS, "stats_groups")
        parts += ["## Means of document means by group (computed)",
                  markdown_table(shown_groups[[*keep_model, "grouping", "group", "data_source", "n", "mean", "sd"]])
                  + groups_note]
    docs = stats["stats_documents"]
    if not docs[docs["data_source"].isin(focus)].empty:
        for model in manifest.models:
            parts += _documents_section(stats, model, f" ({model})" if multi_model else "", focus)
    agreement = stats["stats_agreement"]
    summary = agreement[agreement["document_id"] == "(all documents)"]
    if not summary.empty:
        parts += ["## Agreement of categorical answers across runs (computed)",
                  markdown_table(summary[[*keep_model, "field", "n_runs", "agreement", "min_agreement",
                                          "n_distinct", "krippendorff_alpha"]])]
    corr = stats["stats_correlations"].dropna(subset=["pearson_r"])
    if not corr.empty:
        top = corr.reindex(corr["pearson_r"].abs().sort_values(ascending=False, kind="stable").index).head(10)
        parts += ["## Strongest correlations between document means (computed)",
                  markdown_table(top[[*keep_model, "variable_a", "variable_b", "n", "pearson_r", "pearson_p",
                                      "spearman_rho", "spearman_p"]], P_FORMATS)]
    if quotes:
        parts += ["## Evidence quotations (verbatim from the documents)", ""]
        for document_id, items in quotes.items():
            parts += [f'- {document_id} ({name}): "{quote}"' for name, quote in items]
        parts.append("")
    parts.append("Write the results section now, following the rules.")
    return "\n".join(parts)


def synthesis_model(ctx: SessionContext, experiment: Experiment) -> str:
    """The experiment's ``synthesis_model``, or the first analysis model of the session."""
    from mva_dagster.llm.registry import load_registry

    name = experiment.synthesis_model or ctx.manifest.models[0]
    try:
        return load_registry().resolve(name).name
    except SpecError as exc:
        raise SpecError(f"synthesis_model {name!r} is not a registered model: {exc.message}",
                        file=experiment.path, field="synthesis_model",
                        hint="use an alias from mva_dagster/llm/models.yaml") from exc


def synthesis_request(ctx: SessionContext, model: str, prompt: str) -> LLMRequest:
    from mva_dagster.llm.registry import load_registry

    limit = min(SYNTHESIS_MAX_TOKENS, load_registry().resolve(model).max_output_tokens)
    params = {"temperature": float(ctx.manifest.generation.get("temperature", 0.0)), "max_tokens": limit,
              "seed": 1}
    return LLMRequest(session_id=ctx.manifest.session_id, document_id=SYNTHESIS_DOCUMENT_ID, model=model,
                      replicate=1, purpose="synthesis",
                      messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                      params=params, response_format=None)


def number_index(stats: dict[str, pd.DataFrame], prompt: str) -> NumberIndex:
    index = NumberIndex()
    for name, frame in stats.items():
        index.add_frame(frame, name)
    index.add_text(prompt, "the prompt's text")
    return index


# ---------------------------------------------------------------- the answer


async def _ask(gateway: LLMGateway, request: LLMRequest, archive: SessionArchive) -> tuple[LLMAnswer, bool]:
    async with gateway.make_client(max_connections=2) as client:
        return await gateway.complete(client, request, archive)


def _answer(ctx: SessionContext, request: LLMRequest, gateway: LLMGateway | None,
            warnings: list[str]) -> tuple[LLMAnswer, bool]:
    archive = SessionArchive(ctx.layout)
    archived = archive.lookup(request)
    if archived is not None:
        return archived, True
    if gateway is not None:
        return asyncio.run(_ask(gateway, request, archive))
    entry = archive.find(SYNTHESIS_DOCUMENT_ID, request.model, 1)
    if entry is None:
        raise ArchiveError(f"no archived synthesis answer for {request.model} in {ctx.layout.llm_archive}",
                           hint="replay never calls a provider; materialize the synthesis asset of the "
                                "original session first")
    warnings.append("the synthesis prompt rebuilt from the recomputed statistics differs from the archived "
                    f"one ({entry.path.name}); the archived answer is checked against the new statistics")
    return entry.answer, True


def run_synthesis(ctx: SessionContext, gateway: LLMGateway | None, say: Say | None = None) -> SynthesisOutcome:
    """Ask for (or, with ``gateway=None``, replay) the synthesis, check it and write the report files."""
    experiment = session_experiment(ctx)
    stats = load_statistics(ctx)
    quotes = evidence_quotes(ctx, featured_documents(ctx, stats))
    prompt = build_prompt(ctx, experiment, stats, quotes)
    model = synthesis_model(ctx, experiment)
    request = synthesis_request(ctx, model, prompt)
    warnings: list[str] = []
    failed = None
    answer: LLMAnswer | None = None
    from_archive = False
    try:
        answer, from_archive = _answer(ctx, request, gateway, warnings)
    except LLMError as exc:
        failed = f"the synthesis call failed ({exc.error_class}): {exc}"
    if answer is not None and not from_archive:
        Chronolog(ctx.layout.chronolog, project=ctx.manifest.project, session_id=ctx.manifest.session_id).append(
            "SYNTHESIS_COMPLETED", {"model": model, "request_key": request.key(), "cost_usd": answer.cost_usd,
                                    "provider_model": answer.provider_model})
    if answer is not None and not answer.ok:
        failed = f"the model returned no usable text ({answer.error.message if answer.error else 'empty answer'})"
    text = (answer.raw_text or "") if answer is not None else ""
    if answer is not None and answer.finish_reason == "length":
        warnings.append(f"the answer was cut off at max_tokens ({request.params['max_tokens']})")
    # One document at a time, and only if the text quotes anything: a corpus is never held whole.
    documents = ((d.id, ctx.document_text(d)) for d in ctx.manifest.documents)
    known = {f"the experiment's hypothesis {k}": v for k, v in experiment.hypotheses.items()}
    grounding = check_text(text, number_index(stats, prompt), documents, known)
    results = ctx.layout.results
    outcome = SynthesisOutcome(model=model, provider_model=answer.provider_model if answer else None,
                               request_key=request.key(), grounding=grounding,
                               markdown_path=results / "synthesis.md", html_path=results / "synthesis.html",
                               from_archive=from_archive, failed=failed, warnings=warnings)
    markdown = render_markdown(ctx, outcome, text, answer, stats)
    atomic_write_text(outcome.markdown_path, markdown)
    atomic_write_text(outcome.html_path, render_html(markdown, results,
                                                     f"Synthesis: {ctx.manifest.experiment} / {ctx.manifest.session_id}"))
    atomic_write_json(results / "synthesis_check.json", {
        "model": model, "provider_model": outcome.provider_model, "request_key": request.key(),
        "failed": failed, "warnings": warnings, **grounding.to_json()})
    if say is not None:
        summary = grounding.summary()
        say(f"[synthesis] {model}: {summary['numbers_checked']} numbers ({summary['numbers_unmatched']} unmatched), "
            f"{summary['quotes_checked']} quotations ({summary['quotes_unmatched']} unmatched)"
            + (f"; FAILED: {failed}" if failed else ""))
    return outcome


# ---------------------------------------------------------------- the files


def render_markdown(ctx: SessionContext, outcome: SynthesisOutcome, text: str, answer: LLMAnswer | None,
                    stats: dict[str, pd.DataFrame]) -> str:
    manifest = ctx.manifest
    g = outcome.grounding
    s = g.summary()
    who = f"**{outcome.model}**" + (f" (the provider reported model `{outcome.provider_model}`)"
                                    if outcome.provider_model and outcome.provider_model != outcome.model else "")
    lines = [f"# Synthesis: {manifest.experiment} / {manifest.session_id}", "",
             f"Written by {who} from the computed statistics only (it was given the tables below, "
             "never the raw records). Every number and quotation in its text was checked afterwards.", "",
             f"**Grounding check:** {s['numbers_checked']} numbers checked, {s['numbers_unmatched']} not found "
             f"among the computed statistics; {s['quotes_checked']} quotations checked, {s['quotes_unmatched']} "
             "not found in the source documents. "
             + ("Everything matched." if g.grounded else
                "Unmatched items are marked **[!N1]** (numbers) and **[!Q1]** (quotations) in the text and "
                "listed under *Grounding check*."), ""]
    lines += [f"> Warning: {w}" for w in outcome.warnings]
    if outcome.failed:
        lines += [f"> **The synthesis failed:** {outcome.failed}", ""]
    lines += ["## The model's text", ""]
    stripped = text.strip()
    looks_json = stripped.startswith("{") and stripped.endswith("}")
    if looks_json:
        try:
            json.loads(stripped)
        except ValueError:
            looks_json = False
    if looks_json:  # e.g. the simulated provider: keep it readable and verbatim
        lines += ["_The model answered with JSON; it is shown as received._", "", "```json",
                  g.annotate(text, plain=True).strip(), "```", ""]
    else:
        lines += [g.annotate(text).strip() or "_(empty)_", ""]
    if not g.grounded:
        lines += ["## Grounding check", "", "| flag | as written | problem | nearest computed value |",
                  "|---|---|---|---|"]
        labels = g.labels()
        for n in g.unmatched_numbers:
            lines.append(f"| {labels[n.start]} | {n.text.strip()} | no computed statistic or number shown to the "
                         f"model has this value at this precision | {n.nearest or ''} |")
        for q in g.unmatched_quotes:
            shown = q.text if len(q.text) <= 160 else q.text[:157] + "..."
            lines.append(f"| {labels[q.start]} | \"{shown.replace('|', '/')}\" | not found in any source "
                         "document | |")
        lines.append("")
    hyp = stats["stats_hypotheses"]
    tests = stats["stats_tests"]
    lines += ["## Hypotheses (computed)", "", markdown_table(hyp[["hypothesis", "text", "verdict", "tests", "basis"]]),
              "## Tests (computed)", "",
              markdown_table(tests[["test_id", "hypothesis", "model", "data_source", "comparison", "n",
                                    "statistic_name", "statistic", "df", "p_value", "p_adjusted",
                                    "effect_size_name", "effect_size", "criterion", "verdict", "reason"]], P_FORMATS),
              "## Figures", ""]
    titles = plot_titles()
    for name in PLOT_FILES.values():
        if (ctx.layout.results / name).exists():
            lines += [f"![{titles[name]}]({name})", ""]
    lines += ["## Provenance", "",
              f"- Synthesis request key `{outcome.request_key}` (archived in `llm_archive/`, purpose `synthesis`)"]
    if answer is not None:
        lines.append(f"- Tokens: {answer.prompt_tokens} in, {answer.completion_tokens} out; cost "
                     f"${(answer.cost_usd or 0.0):.6f}; finish reason `{answer.finish_reason}`")
    lines += ["- Every table: `results/stats_*.csv` and the same tables in `results/session.duckdb`",
              "- The check itself: `results/synthesis_check.json`", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.45;color:#222}table{border-collapse:collapse;font-size:.85em;margin:1em 0;display:block;
overflow-x:auto}th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;overflow-x:auto;white-space:pre-wrap}
blockquote{border-left:4px solid #e0a000;margin:1em 0;padding:.2em 1em;background:#fff8e6}strong{color:#000}"""


def render_html(markdown: str, base: Path, title: str) -> str:
    """One self-contained HTML file: Markdown rendered, figures inlined as base64 PNGs.

    Raw HTML in the model's text is not passed through (``html=False``): the file must be safe to open.
    """
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        src = html.unescape(match.group(1))
        path = base / src
        if "/" in src or "\\" in src or not src.endswith(".png") or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+)"', inline, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n")
