"""MVA experiment 3's shape on the simulated provider: 8 speeches x 6 runs, its hypotheses and plan.

The plan is experiment 3's own (verbatim, including its reference to a metric that CFF v4.1 does
not define) plus entries that name the framework's real fields, so that every hypothesis gets a
computed row. Numbers are checked against scipy run here on the session's CSV files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from mva_dagster.instance import get_instance
from mva_dagster.launch import launch_session
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.specs.experiment import load_experiment
from mva_dagster.stats.grounding import check_text, normalise_quote
from mva_dagster.steps.context import SessionContext
from mva_dagster.steps.replay import replay_session
from mva_dagster.steps.statistics import load_statistics
from mva_dagster.steps.synthesis import SYNTHESIS_DOCUMENT_ID, number_index
from tests.conftest import shared_path

pytestmark = [pytest.mark.integration, pytest.mark.shared]

IDEOLOGY = {"conservative": ["conservative_dignity", "conservative_tribalism"],
            "progressive": ["progressive_dignity", "progressive_tribalism"]}
EXTRA_PLAN: list[dict[str, Any]] = [
    {"test": {"name": "Speeches differ in full cohesion", "hypothesis_ref": "H1", "method": "anova",
              "params": {"data_source": "full_cohesion_index", "grouping_variable": "document_id"}}},
    {"test": {"name": "Conservative vs progressive", "hypothesis_ref": "H1", "method": "t-test",
              "params": {"data_source": "full_cohesion_index", "grouping_variable": "ideological_category",
                         "groups": IDEOLOGY}}},
    {"test": {"name": "Opposed speeches with equivalent cohesion", "hypothesis_ref": "H2", "method": "equivalence",
              "params": {"data_source": "full_cohesion_index", "grouping_variable": "document_id", "pairwise": True,
                         "margin": 0.1, "across": {"variable": "ideological_category", "groups": IDEOLOGY}}}},
    {"test": {"name": "Worldview agreement across runs", "method": "agreement", "params": {"field": "worldview"}}},
    {"test": {"name": "Mean inter-run SD", "method": "inter_run_sd",
              "params": {"data_sources": ["hope_score", "fear_score"]}}},
    {"test": {"name": "Hope and cohesive goals", "method": "correlation",
              "params": {"data_sources": ["hope_score", "cohesive_goal_score"], "method": "both"}}},
]


@pytest.fixture(scope="module")
def mva_session(simulated_stack: object, tmp_path_factory: pytest.TempPathFactory) -> SessionLayout:
    snapshot = shared_path("reference", "discernus", "mva", "experiment_3", "experiment_snapshot.md")
    framework = shared_path("data", "frameworks", "cff", "cff_v4.1.md")
    corpus = shared_path("data", "mva_corpus")
    spec = dict(load_experiment(snapshot).raw)  # hypotheses, models, runs_per_model and plan, verbatim
    spec.update(name="mva_experiment_3", framework_file=str(framework), corpus=str(corpus))
    spec["statistical_plan"] = [*spec["statistical_plan"], *EXTRA_PLAN]
    root = tmp_path_factory.mktemp("mva3")
    folder = root / "exp" / "mva_experiment_3"
    folder.mkdir(parents=True)
    (folder / "experiment.md").write_text("---\n" + yaml.safe_dump(spec, sort_keys=False) + "---\n")
    return launch_session(folder, project_dir=root / "projects" / "MVA", provider="simulated", keep_stack=True)


def csv(layout: SessionLayout, name: str) -> pd.DataFrame:
    return pd.read_csv(layout.results / f"{name}.csv")


def test_the_full_hypothesis_table(mva_session: SessionLayout) -> None:
    hypotheses = csv(mva_session, "stats_hypotheses").set_index("hypothesis")
    snapshot = load_experiment(shared_path("reference", "discernus", "mva", "experiment_3", "experiment_snapshot.md"))
    assert list(hypotheses.index) == ["H1", "H2", "H3"]
    assert hypotheses["text"].to_dict() == snapshot.hypotheses
    assert hypotheses["tests"].to_dict() == {"H1": "T1, T3, T4", "H2": "T5", "H3": "T2"}
    assert set(hypotheses["verdict"]) <= {"supported", "not supported", "mixed"}  # each has computed rows
    tests = csv(mva_session, "stats_tests")
    assert len(tests) == 1 + 13 + 1 + 1 + 16 + 1 + 2 + 2
    # Experiment 3's own H1 test names a metric CFF v4.1 does not have: reported, never faked.
    t1 = tests[tests.test_id == "T1"].iloc[0]
    assert t1["verdict"] == "not computable" and pd.isna(t1["statistic"])
    assert "'cff_cohesion_index'" in t1["reason"] and "full_cohesion_index" in t1["reason"]
    # Every computed row carries a statistic, and its verdict is what its criterion says.
    computed = tests[tests.verdict.isin(["supported", "not supported"])]
    assert computed["statistic"].notna().all() and computed["criterion"].notna().all()
    t2 = tests[tests.test_id == "T2"]
    assert len(t2) == 13 and ((t2.statistic >= 0.7) == (t2.verdict == "supported")).all()
    with_p = computed[computed.p_value.notna() & computed.p_adjusted.isna()]
    assert ((with_p.p_value < 0.05) == (with_p.verdict == "supported")).all()


def test_numbers_match_an_independent_computation(mva_session: SessionLayout) -> None:
    scores, metrics = csv(mva_session, "scores"), csv(mva_session, "metrics")
    documents = csv(mva_session, "documents").set_index("document_id")
    tests = csv(mva_session, "stats_tests").set_index(["test_id", "statistic_name"], drop=False)
    assert len(scores) == 48 and scores["valid"].all()
    # H3: Cronbach's alpha of fear_score over the 8 x 6 documents x runs table.
    table = scores.pivot(index="document_id", columns="replicate", values="fear_score").to_numpy()
    k = table.shape[1]
    alpha = k / (k - 1) * (1 - table.var(axis=0, ddof=1).sum() / table.sum(axis=1).var(ddof=1))
    rel = csv(mva_session, "stats_reliability").set_index("data_source")
    assert rel.loc["fear_score", "cronbach_alpha"] == pytest.approx(alpha, abs=1e-9)
    t2 = csv(mva_session, "stats_tests").query("test_id == 'T2' and data_source == 'fear_score'").iloc[0]
    assert t2["statistic"] == pytest.approx(alpha, abs=1e-9)
    # H1: one-way ANOVA of full_cohesion_index across the eight speeches (runs as replication).
    groups = [g["full_cohesion_index"].to_numpy() for _, g in metrics.groupby("document_id")]
    f = sps.f_oneway(*groups)
    assert tests.loc[("T3", "F"), "statistic"] == pytest.approx(f.statistic, abs=1e-9)
    assert tests.loc[("T3", "F"), "p_value"] == pytest.approx(f.pvalue, abs=1e-9)
    # H1: Welch t-test of the speeches' mean full_cohesion_index, conservative vs progressive.
    means = metrics.groupby("document_id")["full_cohesion_index"].mean()
    side = documents["ideological_category"].str.split("_").str[0]
    t = sps.ttest_ind(means[side == "conservative"], means[side == "progressive"], equal_var=False)
    assert tests.loc[("T4", "t (Welch)"), "statistic"] == pytest.approx(t.statistic, abs=1e-9)
    # Correlation of the speeches' mean hope and cohesive-goal scores.
    doc = scores.groupby("document_id")[["hope_score", "cohesive_goal_score"]].mean()
    r = sps.pearsonr(doc["hope_score"], doc["cohesive_goal_score"])
    assert tests.loc[("T8", "Pearson r"), "statistic"] == pytest.approx(r.statistic, abs=1e-9)


def test_the_synthesis_is_written_from_tables_and_checked(mva_session: SessionLayout) -> None:
    check = json.loads((mva_session.results / "synthesis_check.json").read_text())
    markdown = (mva_session.results / "synthesis.md").read_text()
    assert "Written by **gemini-2.5-pro**" in markdown and check["model"] == "gemini-2.5-pro"
    entries = [e for e in SessionArchive(mva_session).entries() if e.request.purpose == "synthesis"]
    assert len(entries) == 1 and entries[0].request.document_id == SYNTHESIS_DOCUMENT_ID
    prompt = entries[0].request.messages[-1]["content"]
    assert "## Hypothesis verdicts (computed)" in prompt and "fear_score" in prompt
    assert "sanitized_speech_a1c5e7d2 | 1 |" not in prompt  # no raw per-run rows to compute from
    # The simulated provider answers free text with a JSON object quoting the prompt; quotations of table
    # rows are not in any speech, and the check says so.
    ctx = SessionContext.load(mva_session)
    texts = [normalise_quote(ctx.document_text(d)) for d in ctx.manifest.documents]
    assert check["quotes"], "the simulated answer quotes its prompt"
    for quote in check["quotes"]:
        assert quote["matched"] == any(normalise_quote(quote["text"]) in t for t in texts), quote
    assert check["quotes_unmatched"] >= 1 and not check["grounded"]
    assert "[!Q1]" in markdown and "## Grounding check" in markdown
    # The Dagster asset check carries the same outcome.
    key = dg.AssetCheckKey(dg.AssetKey(["MVA", "mva_experiment_3", "synthesis"]), "numbers_and_quotes_grounded")
    record = get_instance().event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    evaluation = record.event.dagster_event.event_specific_data  # type: ignore[union-attr]
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN  # type: ignore[union-attr]


def test_injected_fabrications_are_caught_and_true_numbers_pass(mva_session: SessionLayout) -> None:
    ctx = SessionContext.load(mva_session)
    stats = load_statistics(ctx)
    entry = next(e for e in SessionArchive(mva_session).entries() if e.request.purpose == "synthesis")
    index = number_index(stats, entry.request.messages[-1]["content"])
    documents = {d.id: ctx.document_text(d) for d in ctx.manifest.documents}
    tests = stats["stats_tests"].set_index(["test_id", "statistic_name"])
    anova = tests.loc[("T3", "F")]
    alpha = stats["stats_reliability"].set_index("data_source").loc["fear_score", "cronbach_alpha"]
    quote = documents["sanitized_speech_a1c5e7d2"].split(".")[3].strip()
    honest = (f"The speeches differed, F({int(anova['df'])}, {int(anova['df2'])}) = {anova['statistic']:.2f}, "
              f"p = {anova['p_value']:.3f}; fear's alpha was {alpha:.2f} (α = {alpha:.3f}). One speech said "
              f'"{quote}".')
    assert check_text(honest, index, documents).grounded, check_text(honest, index, documents).to_json()
    fabricated = honest + (' Overall, F = 31,558 and α = 0.999, and a speaker promised "to crush every '
                           'enemy of the people".')
    report = check_text(fabricated, index, documents)
    assert [n.text.strip() for n in report.unmatched_numbers] == ["31,558", "0.999"]
    assert [q.text for q in report.unmatched_quotes] == ["to crush every enemy of the people"]


def test_plots_html_and_report(mva_session: SessionLayout) -> None:
    results = mva_session.results
    for name in ("plot_scores_by_group.png", "plot_runs_by_document.png", "plot_reliability.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (results / "synthesis.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and 'src="plot_' not in page
    report = (results / "report.md").read_text()
    assert "## Hypotheses (computed by the statistics step)" in report and "(plot_reliability.png)" in report
    assert "48 planned, 48 answered" in report  # the synthesis call is not counted as an analysis call


def test_replay_is_byte_identical(mva_session: SessionLayout, tmp_path: Path) -> None:
    result = replay_session(mva_session, tmp_path / "replay")
    assert result.identical, [c for c in result.tables if c.status != "identical"]
    names = {c.name for c in result.tables}
    assert {"scores.csv", "metrics.csv", "documents.csv", "stats_tests.csv", "stats_hypotheses.csv",
            "stats_reliability.csv"} <= names
    assert {c.name: c.status for c in result.documents} == {"report.md": "identical", "synthesis.md": "identical"}
    assert result.synthesis is not None and result.synthesis.from_archive and not result.warnings


def test_stats_tables_are_in_duckdb(mva_session: SessionLayout) -> None:
    stats = load_statistics(SessionContext.load(mva_session))
    assert len(stats["stats_tests"]) == len(csv(mva_session, "stats_tests"))
    assert np.isclose(stats["stats_reliability"]["cronbach_alpha"].astype(float),
                      csv(mva_session, "stats_reliability")["cronbach_alpha"], atol=1e-9).all()
