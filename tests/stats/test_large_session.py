"""A 5,000-document session: figures, report and synthesis prompt stay the same size as a small one's.

The session-level steps once drew a column per document (a 225,000-pixel-wide figure at 5,000
documents) and pasted every document into report.md and the synthesis prompt. Sizes and shapes
only are asserted here, never time: the test machines are shared.
"""

from __future__ import annotations

import struct
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mva_dagster.records import ExtractedRecord
from mva_dagster.stats import core
from mva_dagster.stats.data import StatsData, build_data
from mva_dagster.stats.engine import MAX_NAMED, StatisticsResult, compute_statistics
from mva_dagster.stats.grounding import NumberIndex, check_text, find_numbers
from mva_dagster.steps import plots, report, synthesis

N_DOCUMENTS = 5000
RUNS = 2
SCORES = [f"s{i}_score" for i in range(6)]
METRICS = ["index_a", "index_b", "index_c"]
PLAN = [
    {"test": {"name": "by party", "hypothesis_ref": "H1", "method": "t-test",
              "params": {"data_source": "index_a", "grouping_variable": "party"}}},
    {"test": {"name": "alpha", "hypothesis_ref": "H2", "method": "cronbachs_alpha",
              "params": {"data_sources": SCORES[:3]}}},
    {"test": {"name": "documents differ", "hypothesis_ref": "H2", "method": "anova",
              "params": {"data_source": "index_c", "grouping_variable": "document_id"}}},
    {"test": {"name": "pairwise by document", "hypothesis_ref": "H2", "method": "t-test",
              "params": {"data_source": "index_c", "grouping_variable": "document_id", "pairwise": True}}},
    {"test": {"name": "view", "hypothesis_ref": "H2", "method": "agreement", "params": {"data_source": "view"}}},
]
HYPOTHESES = {"H1": "Parties differ.", "H2": "Runs agree."}
MAX_PROMPT_CHARS = 40_000  # a small session's prompt is ~15,000; this one must not grow with the corpus
MAX_PIXELS = 2500


def frames(n: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scores (0.1 steps, as models write them), continuous metrics, every 97th document one run short."""
    rng = np.random.default_rng(7)
    ids = np.array([f"doc_{i:05d}" for i in range(n)], dtype=object)
    level = rng.random((n, len(SCORES)))
    keys = pd.DataFrame({"document_id": np.repeat(ids, RUNS), "model": "m",
                         "replicate": np.tile(np.arange(1, RUNS + 1), n)})
    valid = ~((np.repeat(np.arange(n), RUNS) % 97 == 5) & (keys["replicate"].to_numpy() == RUNS))
    values = np.clip(np.round(np.repeat(level, RUNS, axis=0) + rng.normal(0, 0.1, (n * RUNS, len(SCORES))), 1), 0, 1)
    values[~valid] = np.nan
    scores = pd.concat([keys, pd.DataFrame(values, columns=SCORES)], axis=1)
    scores.insert(3, "valid", valid)
    scores["view"] = np.where(valid, rng.choice(np.array(["x", "y", "z"], dtype=object), n * RUNS), None)
    metrics = keys.assign(valid=valid)
    for k, name in enumerate(METRICS):
        metrics[name] = values[:, :3].mean(axis=1) - values[:, 3:].mean(axis=1) + k
    documents = pd.DataFrame({"document_id": ids, "sha256": "0", "n_words": 2000,
                              "party": np.where(np.arange(n) % 2, "R", "D"),
                              "year": [str(1981 + i % 40) for i in range(n)]})
    return scores, metrics, documents


@pytest.fixture(scope="module")
def session() -> tuple[StatsData, StatisticsResult, pd.DataFrame, pd.DataFrame]:
    scores, metrics, documents = frames(N_DOCUMENTS)
    data = build_data(scores=scores, metrics=metrics, documents=documents, numeric_fields=SCORES,
                      categorical_fields=["view"], metric_names=METRICS, models=["m"], runs_per_model=RUNS)
    return data, compute_statistics(data, PLAN, HYPOTHESES), scores, metrics


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def stub_context(tmp_path: Path, n: int) -> Any:
    manifest = SimpleNamespace(
        experiment="large", session_id="s1", project="p", framework_name="f", framework_version="1",
        framework_sha256="0" * 64, analysis_variant="default", documents=[f"doc_{i:05d}" for i in range(n)],
        corpus_sha256="0" * 64, models=["m"], provider="simulated", model_override=None, runs_per_model=RUNS)
    layout = SimpleNamespace(results=tmp_path / "results", report_md=tmp_path / "report.md",
                             llm_archive=tmp_path / "llm_archive")
    return SimpleNamespace(manifest=manifest, layout=layout)


def test_figures_keep_their_size_and_say_why_they_changed(session: Any, tmp_path: Path) -> None:
    data, result, _, _ = session
    paths = plots.make_plots(tmp_path, data, result)
    assert [p.name for p in paths] == list(plots.PLOT_FILES.values())
    for path in paths:
        width, height = png_size(path)
        assert width <= MAX_PIXELS and height <= MAX_PIXELS, (path.name, width, height)
        assert path.stat().st_size < 400_000, path.name
    again = plots.plot_runs_by_document(data, result, tmp_path / "again.png")
    assert again.read_bytes() == (tmp_path / plots.PLOT_FILES["runs_by_document"]).read_bytes()  # replay


def test_a_small_session_keeps_one_column_per_document(tmp_path: Path) -> None:
    scores, metrics, documents = frames(12)
    data = build_data(scores=scores, metrics=metrics, documents=documents, numeric_fields=SCORES,
                      categorical_fields=["view"], metric_names=METRICS, models=["m"], runs_per_model=RUNS)
    result = compute_statistics(data, PLAN[:2], HYPOTHESES)
    small = plots.plot_runs_by_document(data, result, tmp_path / "small.png")
    width, _ = png_size(small)
    assert width == round(100 * len(METRICS) * (0.45 * 12 + 1.5))  # 0.45 inch per document and panel


def test_per_document_cells_and_tables_stay_bounded(session: Any) -> None:
    data, result, _, _ = session
    tables = result.tables
    assert len(tables["stats_documents"]) == N_DOCUMENTS * len(data.numeric)  # the full table, as before
    note = tables["stats_reliability"].set_index("data_source").loc["s0_score", "note"]
    assert f"and {N_DOCUMENTS // 97 - MAX_NAMED + 1} more" in note and len(note) < 400
    tests = tables["stats_tests"].set_index("test_name")
    assert "too many to list" in tests.loc["documents differ", "detail"]
    assert len(tests.loc["documents differ", "detail"]) < 300
    assert tests.loc["pairwise by document", "verdict"] == "not computable"
    assert "pairwise comparison of 5000" in tests.loc["pairwise by document", "reason"]
    assert len(tables["stats_tests"]) == 7  # one row per source: 1 + 3 + 1 + 1 + 1


def test_synthesis_prompt_is_bounded(session: Any, tmp_path: Path) -> None:
    _, result, _, _ = session
    ctx = stub_context(tmp_path, N_DOCUMENTS)
    featured = synthesis.featured_documents(ctx, result.tables)
    assert featured is not None and len(featured) == 2 * synthesis.FEATURED_PER_END
    quotes = {d: [("evidence", f"a verbatim sentence from {d}")] * synthesis.QUOTES_PER_DOCUMENT for d in featured}
    prompt = synthesis.build_prompt(ctx, SimpleNamespace(hypotheses=HYPOTHESES), result.tables, quotes)
    assert len(prompt) < MAX_PROMPT_CHARS, len(prompt)
    assert f"{N_DOCUMENTS} documents are too many to list one by one" in prompt
    assert sum(1 for line in prompt.splitlines() if line.startswith("| doc_")) == 2 * synthesis.FEATURED_PER_END
    index = synthesis.number_index(result.tables, prompt)
    p_values = result.tables["stats_tests"]["p_value"].dropna()
    token = find_numbers(f"p = {p_values.iloc[0]:.3f}")[0]
    assert index.match(token)[0] is not None


def test_report_is_bounded(session: Any, tmp_path: Path) -> None:
    data, result, scores, metrics = session
    ctx = stub_context(tmp_path, N_DOCUMENTS)
    ctx.layout.results.mkdir()
    result.tables["stats_hypotheses"].to_csv(ctx.layout.results / "stats_hypotheses.csv", index=False)
    plots.make_plots(ctx.layout.results, data, result)
    records = [ExtractedRecord(session_id="s1", document_id=d, model="m", replicate=int(r), request_key="",
                               valid=bool(v), errors=[] if v else ["the answer was not JSON"],
                               extraction_path="direct", error_class=None if v else "parse")
               for d, r, v in zip(scores["document_id"], scores["replicate"], scores["valid"], strict=True)]
    text = report.write_report(ctx, records, scores, metrics)
    assert len(text) < 30_000, len(text)
    assert f"_{N_DOCUMENTS} documents, more than {report.MAX_REPORT_DOCUMENTS} to give each a column" in text
    invalid = N_DOCUMENTS // 97 + 1
    assert f"and {invalid - report.MAX_LISTED_RECORDS} more. All {invalid} by error class: parse {invalid}" in text
    assert "(plot_runs_by_document.png)" in text


def test_quotations_are_checked_one_document_at_a_time() -> None:
    read: list[str] = []

    def corpus() -> Any:
        for i in range(1000):
            read.append(f"d{i}")
            yield f"d{i}", f"Text number {i} says something quotable here."

    found = check_text('He said "number 3 says something".', NumberIndex(), corpus())
    assert found.quotes[0].source == "document d3" and read == ["d0", "d1", "d2", "d3"]
    read.clear()
    assert check_text("No quotation, alpha = 0.5.", NumberIndex(), corpus()).quotes == [] and read == []


def test_krippendorff_closed_form_equals_the_pairwise_definition() -> None:
    rng = np.random.default_rng(3)
    units: list[list[Any]] = [[float(v) for v in rng.random(rng.integers(0, 5))] for _ in range(200)]
    labels: list[list[Any]] = [[str(v) for v in rng.choice(list("abcd"), rng.integers(0, 5))] for _ in range(200)]
    for level, data in (("interval", units), ("nominal", labels)):
        pairable = [u for u in data if len(u) >= 2]
        values = [v for u in pairable for v in u]

        def delta(a: Any, b: Any, level: str = level) -> float:
            return float((a - b) ** 2) if level == "interval" else float(a != b)

        observed = sum(2 * sum(delta(a, b) for a, b in combinations(u, 2)) / (len(u) - 1) for u in pairable)
        expected = sum(2 * delta(a, b) for a, b in combinations(values, 2))
        brute = 1 - (len(values) - 1) * observed / expected
        assert core.krippendorff_alpha(data, level) == pytest.approx(brute, rel=1e-9)
