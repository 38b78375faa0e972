"""The statistical plan on a small hand-checkable session: 4 documents, 2 runs, 2 camps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mva_dagster.stats.data import StatsData, build_data
from mva_dagster.stats.engine import combine, compute_statistics
from mva_dagster.stats.plan import parse_plan

# document -> (camp, cat, a_score runs, c_score runs, view runs)
DOCS = {
    "d1": ("c", "cd", (0.1, 0.3), (0.5, 0.5), ("X", "X")),
    "d2": ("c", "ct", (0.4, 0.2), (0.1, 0.3), ("X", "Y")),
    "d3": ("p", "pd", (0.6, 0.8), (0.9, 0.7), ("Y", "Y")),
    "d4": ("p", "pt", (0.9, 0.7), (0.6, 0.6), ("Y", "Y")),
}
CAMPS = {"left": ["cd", "ct"], "right": ["pd", "pt"]}


def fixture(runs: int = 2) -> StatsData:
    rows, metrics = [], []
    for doc, (_, _, a, c, view) in DOCS.items():
        for r in range(runs):
            key = {"document_id": doc, "model": "m", "replicate": r + 1}
            rows.append({**key, "valid": True, "a_score": a[r], "b_score": 0.5, "c_score": c[r], "view": view[r]})
            metrics.append({**key, "valid": True, "idx": a[r] - 0.5})
    documents = pd.DataFrame([{"document_id": d, "sha256": "0", "n_words": 9, "camp": v[0], "cat": v[1]}
                              for d, v in DOCS.items()])
    return build_data(scores=pd.DataFrame(rows), metrics=pd.DataFrame(metrics), documents=documents,
                      numeric_fields=["a_score", "b_score", "c_score"], categorical_fields=["view"],
                      metric_names=["idx"], models=["m"], runs_per_model=runs)


def entry(kind: str, hypothesis: str | None = "H1", **params: Any) -> dict[str, Any]:
    return {"test": {"name": f"{kind} test", "hypothesis_ref": hypothesis, "method": kind, "params": params}}


def run(plan: list[dict[str, Any]], data: StatsData | None = None,
        hypotheses: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    return compute_statistics(data or fixture(), plan, hypotheses or {"H1": "x", "H2": "y"}).tables


def only(frame: pd.DataFrame) -> pd.Series:
    assert len(frame) == 1, frame
    return frame.iloc[0]


def test_welch_t_test_on_document_means_by_hand() -> None:
    row = only(run([entry("t-test", data_source="a_score", grouping_variable="camp")])["stats_tests"])
    # document means c: .2, .3; p: .7, .8 -> variances .005; t = -.5 / sqrt(.005), df = 2, d = t here
    assert row["unit"] == "document" and row["comparison"] == "c vs p" and row["n"] == 4
    assert row["statistic"] == pytest.approx(-0.5 / math.sqrt(0.005))
    assert row["df"] == pytest.approx(2.0)
    assert row["effect_size"] == pytest.approx(-0.5 / math.sqrt(0.005))
    assert row["verdict"] == "supported" and row["criterion"] == "p < 0.05"


def test_groups_recode_a_metadata_field_into_two() -> None:
    tables = run([entry("t-test", data_source="a_score", grouping_variable="cat", groups=CAMPS)])
    row = only(tables["stats_tests"])
    assert row["comparison"] == "left vs right"
    assert row["statistic"] == pytest.approx(-0.5 / math.sqrt(0.005))
    groups = tables["stats_groups"]
    left = groups[(groups.grouping == "cat (grouped)") & (groups.group == "left") & (groups.data_source == "a_score")]
    assert only(left)["mean"] == pytest.approx(0.25)


def test_anova_by_document_over_runs_by_hand() -> None:
    row = only(run([entry("anova", data_source="a_score", grouping_variable="document_id")])["stats_tests"])
    # group means .2 .3 .7 .8 around .5: SS_between = 2 * .26 = .52; SS_within = 4 * .02 = .08
    assert row["unit"] == "record" and (row["df"], row["df2"]) == (3, 4)
    assert row["statistic"] == pytest.approx((0.52 / 3) / (0.08 / 4))
    assert row["effect_size"] == pytest.approx(0.52 / 0.60)


def test_reliability_by_hand() -> None:
    tables = run([entry("cronbachs_alpha", hypothesis="H2", data_sources=["a_score", "b_score"])])
    tests = tables["stats_tests"].set_index("data_source")
    # rater variances .34/3 and .26/3, total-score variance 1.04/3: alpha = 2 * (1 - .6/1.04) = 11/13
    assert tests.loc["a_score", "statistic"] == pytest.approx(11 / 13)
    assert tests.loc["a_score", "verdict"] == "supported"
    assert tests.loc["b_score", "verdict"] == "not computable"
    assert "do not vary" in tests.loc["b_score", "reason"]
    rel = tables["stats_reliability"].set_index("data_source")
    assert rel.loc["a_score", "mean_inter_run_sd"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    hyp = only(tables["stats_hypotheses"][tables["stats_hypotheses"].hypothesis == "H2"])
    assert hyp["verdict"] == "not computable"  # "all" cannot be established with b_score undefined


def test_correlation_by_hand() -> None:
    rows = run([entry("correlation", hypothesis=None, data_sources=["a_score", "c_score"], method="both")])
    rows = rows["stats_tests"].set_index("statistic_name")
    x, y = np.array([0.2, 0.3, 0.7, 0.8]), np.array([0.5, 0.2, 0.8, 0.6])
    r = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert rows.loc["Pearson r", "statistic"] == pytest.approx(r)
    # ranks 1 2 3 4 vs 2 1 4 3: rho = 1 - 6 * 4 / (4 * 15)
    assert rows.loc["Spearman rho", "statistic"] == pytest.approx(0.6)


def test_agreement_of_a_categorical_answer() -> None:
    row = only(run([entry("agreement", hypothesis=None, field="view")])["stats_tests"])
    assert row["statistic"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert row["verdict"] == "not supported" and "d2 0.500" in row["detail"]


def test_answer_field_as_grouping_uses_runs() -> None:
    row = only(run([entry("t-test", data_source="a_score", grouping_variable="view")])["stats_tests"])
    assert row["unit"] == "record" and row["comparison"] == "X vs Y" and row["n"] == 8


def test_pairwise_equivalence_across_camps() -> None:
    rows = run([entry("equivalence", hypothesis="H2", data_source="a_score", grouping_variable="document_id",
                      pairwise=True, margin=0.5, across={"variable": "cat", "groups": CAMPS})])["stats_tests"]
    assert sorted(rows["comparison"]) == ["d1 vs d3", "d1 vs d4", "d2 vs d3", "d2 vs d4"]
    assert (rows["p_adjusted"] >= rows["p_value"]).all()
    assert set(rows["criterion"]) == {"Holm-adjusted p < 0.05 (4 pairs)"}


def test_what_the_experiment_3_plan_gets_wrong_is_reported_not_faked() -> None:
    tables = run([entry("t-test", data_source="cff_cohesion_index", grouping_variable="worldview")],
                 hypotheses={"H1": "x", "H2": "y"})
    row = only(tables["stats_tests"])
    assert row["verdict"] == "not computable" and pd.isna(row["statistic"])
    assert "'cff_cohesion_index'" in row["reason"] and "'worldview'" in row["reason"]
    assert "did you mean view" in row["reason"]
    hyp = tables["stats_hypotheses"].set_index("hypothesis")
    assert hyp.loc["H1", "verdict"] == "not computable"
    assert hyp.loc["H2", "verdict"] == "not tested"
    assert "no test in the statistical_plan references H2" in hyp.loc["H2", "basis"]


@pytest.mark.parametrize(("plan", "reason"), [
    (entry("t-test", data_source="a_score", grouping_variable="cat"), "compares exactly 2 groups; cat has 4"),
    (entry("anova", data_source="a_score", grouping_variable="cat", groups={"all": ["cd", "ct", "pd", "pt"]}),
     "at least 2 groups"),
    (entry("t-test", data_source="b_score", grouping_variable="camp"), "no variance"),
    (entry("t-test", data_source="a_score", grouping_variable="camp", groups=["c", "q"]), "'q'"),
    (entry("equivalence", data_source="a_score", grouping_variable="camp"), "params.margin"),
    (entry("bootstrap", data_source="a_score"), "unknown method 'bootstrap'"),
    (entry("t-test", grouping_variable="camp"), "names no data_source"),
    (entry("t-test", data_source="a_score", grouping_variable="camp", unit="parsec"), "params.unit"),
    (entry("anova", data_source="a_score", grouping_variable="document_id", unit="document"), "unit: record"),
    (entry("t-test", hypothesis="H9", data_source="a_score", grouping_variable="camp"), "not one of"),
])
def test_not_computable_with_a_reason(plan: dict[str, Any], reason: str) -> None:
    row = only(run([plan])["stats_tests"])
    assert row["verdict"] == "not computable"
    assert reason in row["reason"]


def test_one_run_makes_reliability_and_agreement_not_computable() -> None:
    data = fixture(runs=1)
    tables = run([entry("cronbachs_alpha", data_source="a_score"), entry("agreement", field="view"),
                  entry("inter_run_sd", data_source="a_score")], data=data)
    tests = tables["stats_tests"]
    assert set(tests["verdict"]) == {"not computable"}
    assert all("one run per model" in r for r in tests["reason"])
    assert tables["stats_agreement"].empty
    assert set(tables["stats_reliability"]["note"]) == {
        "one run per model: inter-run reliability needs runs_per_model >= 2"}
    # Descriptives and group tests still work with one run.
    t = only(run([entry("t-test", data_source="a_score", grouping_variable="camp")], data=data)["stats_tests"])
    assert t["verdict"] in ("supported", "not supported")


def test_standard_tables_without_a_plan() -> None:
    tables = run([])
    docs = tables["stats_documents"]
    d2 = only(docs[(docs.document_id == "d2") & (docs.data_source == "a_score")])
    assert (d2["n_runs"], d2["mean"], d2["min"], d2["max"]) == (2, pytest.approx(0.3), 0.2, 0.4)
    assert set(tables["stats_groups"]["grouping"]) == {"camp"}  # cat has one document per level
    assert list(tables["stats_hypotheses"]["verdict"]) == ["not tested", "not tested"]
    assert len(tables["stats_correlations"]) == 6  # 4 numeric sources, every pair
    assert only(tables["stats_correlations"].query("variable_a == 'a_score' and variable_b == 'b_score'"))[
        "note"].startswith("one of the two variables is constant")


def test_plan_vocabulary() -> None:
    tests = parse_plan([entry("T Test", data_source="x"), entry("Cronbach's Alpha", data_sources=["x"]),
                        entry("ICC", data_sources=["x"]), {"name": "bare", "method": "spearman", "x": "a", "y": "b"},
                        "nonsense"], {"H1": ""})
    assert [t.method for t in tests] == ["t_test", "reliability", "reliability", "correlation", "unknown"]
    assert tests[2].params["statistic"] == "icc1_k" and tests[1].params["statistic"] == "cronbach_alpha"
    assert tests[3].params["method"] == "spearman" and tests[3].data_sources == ["a", "b"]
    assert tests[4].problems


def test_combine_by_require() -> None:
    s, n, x = "supported", "not supported", "not computable"
    assert combine([s, s], "all") == s and combine([s, n], "all") == n and combine([s, x], "all") == x
    assert combine([n, s], "any") == s and combine([n, x], "any") == x and combine([n, n], "any") == n
    assert combine([s, s, n, x], 2) == s and combine([s, n, n, x], 3) == n and combine([s, x, x], 2) == x
    assert combine(["descriptive"], "all") == "descriptive"
