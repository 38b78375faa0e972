"""Run the statistics of a session: the standard tables, then every test of the statistical plan.

The standard tables are computed whatever the plan says (descriptives per document and group,
inter-run reliability, categorical agreement, correlations) so that a synthesis always has the
numbers it needs; the plan adds the tests its hypotheses call for. Every row either carries a
computed value or a ``reason`` it could not be computed - a result is never invented.

Verdicts are mechanical: a row is "supported" when it meets its stated ``criterion`` (p < alpha,
alpha >= threshold ...), and a hypothesis combines its tests' rows (``require: all|any|N``). The
criterion column says exactly what was checked, because a hypothesis' prose cannot be parsed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from mva_dagster.stats import core
from mva_dagster.stats.core import NotComputable
from mva_dagster.stats.data import Grouping, StatsData, grouped_values, resolve_grouping, resolve_source
from mva_dagster.stats.plan import DEFAULT_THRESHOLD, PlannedTest, parse_plan

SUPPORTED, NOT_SUPPORTED, NOT_COMPUTABLE = "supported", "not supported", "not computable"
DESCRIPTIVE, NOT_TESTED, MIXED = "descriptive", "not tested", "mixed"
DEFAULT_ALPHA = 0.05
MAX_CATEGORIES = 12  # a string answer with more distinct values is free text, not a category
MAX_NAMED = 10  # documents or groups named in one text cell; the rest are counted ("and 490 more")
MAX_PAIRWISE_GROUPS = 200  # pairwise tests grow with the square of the groups: 200 groups, 19,900 pairs

TEST_COLUMNS = [
    "test_id", "hypothesis", "test_name", "method", "model", "data_source", "grouping", "comparison",
    "unit", "n", "statistic_name", "statistic", "df", "df2", "p_value", "p_adjusted", "effect_size_name",
    "effect_size", "ci_low", "ci_high", "criterion", "verdict", "reason", "detail",
]  # fmt: skip
HYPOTHESIS_COLUMNS = ["hypothesis", "text", "tests", "rows", "computed", "supported", "verdict", "basis"]
RELIABILITY_COLUMNS = [
    "model", "data_source", "kind", "n_documents", "n_runs", "documents_excluded", "cronbach_alpha",
    "alpha_ci_low", "alpha_ci_high", "icc1_1", "icc1_1_ci_low", "icc1_1_ci_high", "icc1_k", "icc1_k_ci_low",
    "icc1_k_ci_high", "icc2_1", "icc2_1_ci_low", "icc2_1_ci_high", "krippendorff_alpha", "mean_inter_run_sd",
    "max_inter_run_sd", "note",
]  # fmt: skip
RELIABILITY_STATISTICS = {
    "cronbach_alpha": ("Cronbach's alpha", "cronbach_alpha", "alpha_ci_low", "alpha_ci_high"),
    "icc1_k": ("ICC(1,k)", "icc1_k", "icc1_k_ci_low", "icc1_k_ci_high"),
    "icc1_1": ("ICC(1,1)", "icc1_1", "icc1_1_ci_low", "icc1_1_ci_high"),
    "icc2_1": ("ICC(2,1)", "icc2_1", "icc2_1_ci_low", "icc2_1_ci_high"),
    "krippendorff_alpha": ("Krippendorff's alpha (interval)", "krippendorff_alpha", None, None),
}


def fmt(value: float | None, digits: int = 3) -> str:
    """The one way numbers are written into text cells (and into the synthesis prompt)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def named(items: list[str], limit: int = MAX_NAMED) -> str:
    """``items`` joined for a text cell, the first ``limit`` named and the rest counted.

    A cell lists documents or groups; at 10,000 documents an unbounded list would be longer than
    the rest of the table (and the synthesis prompt) together.
    """
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class StatisticsResult:
    tables: dict[str, pd.DataFrame]
    tests: list[PlannedTest]
    focus: list[str]
    groupings: list[Grouping] = field(default_factory=list)


# ---------------------------------------------------------------- standard tables


DOCUMENT_COLUMNS = ["model", "document_id", "data_source", "n_runs", "mean", "sd", "min", "max"]


def document_table(data: StatsData) -> pd.DataFrame:
    """Per model x document x data source: runs, mean, SD across runs (the inter-run spread), range.

    One grouped aggregation for every source at once (a Python loop over documents x sources was
    the statistics step's slowest part at 10,000 documents); rows in (model, document, source) order.
    """
    sources = list(data.numeric)
    if not sources or data.records.empty:
        return pd.DataFrame(columns=DOCUMENT_COLUMNS)
    grouped = data.records.groupby(["model", "document_id"], sort=True)[sources]
    count = grouped.count()
    keys, k = count.index, len(sources)

    def flat(frame: pd.DataFrame) -> np.ndarray:
        return frame.reindex(index=keys, columns=sources).to_numpy(dtype=float).ravel()

    return pd.DataFrame({
        "model": np.repeat(keys.get_level_values(0).to_numpy(), k),
        "document_id": np.repeat(keys.get_level_values(1).to_numpy(), k),
        "data_source": np.tile(np.array(sources, dtype=object), len(keys)),
        "n_runs": count.to_numpy(dtype=np.int64).ravel(),
        "mean": flat(grouped.mean()) + 0.0, "sd": flat(grouped.std(ddof=1)),  # + 0.0: no "-0" mean
        "min": flat(grouped.min()), "max": flat(grouped.max()),
    }, columns=DOCUMENT_COLUMNS)


def _describe(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"n": len(a), "mean": a.mean() if len(a) else None, "sd": a.std(ddof=1) if len(a) >= 2 else None,
            "min": a.min() if len(a) else None, "max": a.max() if len(a) else None}


def group_table(data: StatsData, groupings: list[Grouping], sources: list[str]) -> pd.DataFrame:
    rows = []
    for grouping in groupings:
        unit = "document" if grouping.level == "document" else "record"
        for model in data.models:
            for source in sources:
                for group, values in grouped_values(data, grouping, model, source, unit).items():
                    rows.append({"model": model, "grouping": grouping.label, "group": group, "unit": unit,
                                 "data_source": source, **_describe(values)})
    return pd.DataFrame(rows, columns=["model", "grouping", "group", "unit", "data_source", "n", "mean", "sd",
                                       "min", "max"])


def reliability_rows(data: StatsData) -> dict[tuple[str, str], dict[str, Any]]:
    """Inter-run reliability of every numeric data source, per model (documents x runs)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for model in data.models:
        for source in data.numeric:
            row: dict[str, Any] = dict.fromkeys(RELIABILITY_COLUMNS)
            row.update(model=model, data_source=source,
                       kind="metric" if source in data.metrics else "score", n_runs=data.runs_per_model)
            notes: list[str] = []
            if data.runs_per_model < 2:
                notes.append("one run per model: inter-run reliability needs runs_per_model >= 2")
                row.update(n_documents=0, documents_excluded=0, note="; ".join(notes))
                out[(model, source)] = row
                continue
            matrix, incomplete = data.runs_matrix(model, source)
            row.update(n_documents=len(matrix), documents_excluded=len(incomplete))
            if incomplete:
                notes.append(f"documents without every run valid, left out of alpha and ICC: "
                             f"{named(incomplete)}")
            values = matrix.to_numpy(dtype=float)
            try:
                a = core.cronbach_alpha(values)
                row.update(cronbach_alpha=a.alpha, alpha_ci_low=a.ci_low, alpha_ci_high=a.ci_high)
            except NotComputable as exc:
                notes.append(f"Cronbach's alpha: {exc}")
            try:
                i = core.icc(values)
                row.update(icc1_1=i.icc1, icc1_1_ci_low=i.icc1_ci[0], icc1_1_ci_high=i.icc1_ci[1],
                           icc1_k=i.icc1_k, icc1_k_ci_low=i.icc1_k_ci[0], icc1_k_ci_high=i.icc1_k_ci[1],
                           icc2_1=i.icc2, icc2_1_ci_low=i.icc2_ci[0], icc2_1_ci_high=i.icc2_ci[1])
            except NotComputable as exc:
                notes.append(f"ICC: {exc}")
            full, _ = _all_runs(data, model, source)
            try:
                row["krippendorff_alpha"] = core.krippendorff_alpha(full, "interval")
            except NotComputable as exc:
                notes.append(f"Krippendorff's alpha: {exc}")
            sds = inter_run_sds(full)
            if len(sds):
                row.update(mean_inter_run_sd=float(np.mean(sds)), max_inter_run_sd=float(np.max(sds)))
            row["note"] = "; ".join(notes) or None
            out[(model, source)] = row
    return out


def inter_run_sds(units: list[list[Any]]) -> np.ndarray:
    """The SD (ddof 1) of each unit with two or more values, as ``np.std`` per unit, in one pass.

    ``np.std`` called per document was most of the statistics step's time at 10,000 documents.
    """
    kept = [u for u in units if len(u) >= 2]
    if not kept:
        return np.empty(0)
    sizes = np.array([len(u) for u in kept])
    values = np.array([float(v) for u in kept for v in u])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    deviations = values - np.repeat(np.add.reduceat(values, starts) / sizes, sizes)
    return np.sqrt(np.add.reduceat(deviations * deviations, starts) / (sizes - 1))


def _all_runs(data: StatsData, model: str, source: str) -> tuple[list[list[Any]], list[str]]:
    """Each document's valid run values (any number of runs), documents in sorted order."""
    rows = data.model_rows(model, ["document_id", source])
    rows = rows[rows[source].notna()].sort_values("document_id", kind="stable")
    ids_of_rows = rows["document_id"].to_numpy()
    values = rows[source].tolist()
    # Runs of one document are adjacent after the sort: cut at each change of document (a groupby
    # iterated in Python cost ~30 us per document and source).
    cuts = [0, *(np.flatnonzero(ids_of_rows[1:] != ids_of_rows[:-1]) + 1).tolist(), len(values)]
    by_document = {str(ids_of_rows[a]): values[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a}
    ids = sorted(data.documents["document_id"])
    return [by_document.get(d, []) for d in ids], ids


def category_like(data: StatsData, name: str) -> bool:
    values = [v for v in data.records[name] if v is not None]
    return bool(values) and len(set(values)) <= min(MAX_CATEGORIES, max(2, len(values) // 2))


def agreement_rows(data: StatsData, name: str, model: str) -> list[dict[str, Any]]:
    """Share of runs that agree with each document's most frequent answer, and Krippendorff's alpha."""
    units, ids = _all_runs(data, model, name)
    rows = []
    shares = []
    for document_id, values in zip(ids, units, strict=True):
        if not values:
            rows.append({"model": model, "field": name, "document_id": document_id, "n_runs": 0})
            continue
        counts = Counter(values)
        top = max(counts.values())
        modal = sorted(v for v, c in counts.items() if c == top)
        share = top / len(values)
        shares.append(share)
        rows.append({"model": model, "field": name, "document_id": document_id, "n_runs": len(values),
                     "modal_value": " | ".join(modal), "agreement": share, "n_distinct": len(counts)})
    summary: dict[str, Any] = {"model": model, "field": name, "document_id": "(all documents)",
                               "n_runs": sum(len(u) for u in units),
                               "agreement": float(np.mean(shares)) if shares else None,
                               "min_agreement": float(np.min(shares)) if shares else None,
                               "n_distinct": len({v for u in units for v in u})}
    try:
        summary["krippendorff_alpha"] = core.krippendorff_alpha(units, "nominal")
    except NotComputable as exc:
        summary["note"] = f"Krippendorff's alpha: {exc}"
    return [*rows, summary]


AGREEMENT_COLUMNS = ["model", "field", "document_id", "n_runs", "modal_value", "agreement", "min_agreement",
                     "n_distinct", "krippendorff_alpha", "note"]


def correlation_table(data: StatsData, sources: list[str]) -> pd.DataFrame:
    """Pearson and Spearman between every pair of the focus variables, over document means."""
    rows = []
    for model in data.models:
        rows_of_model = data.model_rows(model, ["document_id", *sources])
        means = rows_of_model.groupby("document_id", sort=True)[sources].mean()
        for a, b in combinations(sources, 2):
            x, y = means[a].to_numpy(dtype=float), means[b].to_numpy(dtype=float)
            row: dict[str, Any] = {"model": model, "variable_a": a, "variable_b": b, "unit": "document",
                                   "n": int((~(np.isnan(x) | np.isnan(y))).sum())}
            try:
                p = core.correlation(x, y, "pearson")
                s = core.correlation(x, y, "spearman")
                row.update(pearson_r=p.r, pearson_p=p.p, spearman_rho=s.r, spearman_p=s.p)
            except NotComputable as exc:
                row["note"] = str(exc)
            rows.append(row)
    return pd.DataFrame(rows, columns=["model", "variable_a", "variable_b", "unit", "n", "pearson_r", "pearson_p",
                                       "spearman_rho", "spearman_p", "note"])


def _group_means(values: dict[str, list[float]]) -> str:
    """Each group's n and mean for a detail cell; beyond MAX_CATEGORIES groups, the range only."""
    shown = {g: (len(v), float(np.mean(v))) for g, v in values.items() if len(v)}
    if len(shown) <= MAX_CATEGORIES:
        return "; ".join(f"{g}: n={n}, mean={fmt(m)}" for g, (n, m) in shown.items())
    low = min(shown, key=lambda g: (shown[g][1], g))
    high = max(shown, key=lambda g: (shown[g][1], g))
    return (f"{len(shown)} groups (too many to list); lowest mean {low}: n={shown[low][0]}, "
            f"mean={fmt(shown[low][1])}; highest mean {high}: n={shown[high][0]}, mean={fmt(shown[high][1])}")


# ---------------------------------------------------------------- the plan's tests


class _Runner:
    def __init__(self, data: StatsData, reliability: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.data = data
        self.reliability = reliability

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def alpha_level(test: PlannedTest) -> float:
        value = test.param("alpha", test.param("significance", DEFAULT_ALPHA))
        if not isinstance(value, int | float) or not 0 < value < 1:
            raise NotComputable(f"params.alpha must be a number between 0 and 1, got {value!r}")
        return float(value)

    @staticmethod
    def threshold(test: PlannedTest) -> float:
        value = test.param("threshold", DEFAULT_THRESHOLD.get(test.method))
        if not isinstance(value, int | float):
            raise NotComputable(f"params.threshold must be a number, got {value!r}")
        return float(value)

    def grouping(self, test: PlannedTest) -> Grouping:
        if not test.grouping_variable:
            raise NotComputable(f"a {test.method_written or test.method} needs params.grouping_variable")
        return resolve_grouping(self.data, test.grouping_variable, test.param("groups"))

    @staticmethod
    def unit(test: PlannedTest, grouping: Grouping | None) -> str:
        unit = test.param("unit")
        if unit is None:
            if grouping is None:
                return "document"
            return "record" if grouping.level == "record" or grouping.is_document_id else "document"
        unit = str(unit).lower().rstrip("s")
        if unit in ("run", "replicate"):
            unit = "record"
        if unit not in ("document", "record"):
            raise NotComputable(f"params.unit must be 'document' (means of the runs) or 'record' (each run), "
                                f"got {test.param('unit')!r}")
        if grouping is not None and unit == "document" and grouping.level == "record":
            raise NotComputable(f"{grouping.variable} is an answer that can change from run to run; "
                                "compare it with unit: record")
        if grouping is not None and unit == "document" and grouping.is_document_id:
            raise NotComputable("grouping by document leaves one mean per group; use unit: record "
                                "(the runs are the replication)")
        return unit

    def pairs(self, test: PlannedTest, groups: list[str], grouping: Grouping) -> list[tuple[str, str]]:
        if len(groups) > MAX_PAIRWISE_GROUPS:
            raise NotComputable(
                f"pairwise comparison of {len(groups)} {grouping.label} groups would be "
                f"{len(groups) * (len(groups) - 1) // 2} tests; at most {MAX_PAIRWISE_GROUPS} groups are "
                "compared pairwise. Merge groups with params.groups, or use an anova")
        pairs = list(combinations(groups, 2))
        across = test.param("across")
        if across is None:
            return pairs
        if grouping.level != "document":
            raise NotComputable("params.across works with document-level groupings only")
        if isinstance(across, dict):
            variable, recode = across.get("variable"), across.get("groups")
        else:
            variable, recode = across, None
        other = resolve_grouping(self.data, str(variable), recode)
        if other.level != "document":
            raise NotComputable(f"params.across: {variable} must be a corpus metadata field")

        sides_of: dict[str, set[str | None]] = {}
        for d, g in grouping.by_document.items():  # one pass, not one per pair
            sides_of.setdefault(g, set()).add(other.group_of_document(d))
        side = {g: next(iter(s)) if len(s) == 1 else None for g, s in sides_of.items()}
        kept = [(a, b) for a, b in pairs if side.get(a) and side.get(b) and side.get(a) != side.get(b)]
        if not kept:
            raise NotComputable(f"no pair of {grouping.variable} groups falls on different sides of {variable}")
        return kept

    # -- one plan entry ----------------------------------------------------------------------------

    def run(self, test: PlannedTest) -> list[dict[str, Any]]:
        base = {"test_id": test.test_id, "hypothesis": test.hypothesis, "test_name": test.name,
                "method": test.method_written or test.method}
        if test.problems:
            return [{**base, "verdict": NOT_COMPUTABLE, "reason": "; ".join(test.problems)}]
        handler: Callable[[PlannedTest, str, Any], list[dict[str, Any]]] = getattr(self, f"_{test.method}")
        sources = test.data_sources
        if not sources:
            return [{**base, "verdict": NOT_COMPUTABLE, "reason": "the entry names no data_source(s)"}]
        rows: list[dict[str, Any]] = []
        for model in self.data.models:
            if test.method == "correlation":
                sources_iter: list[Any] = [tuple(sources)]
            else:
                sources_iter = list(sources)
            for source in sources_iter:
                label = " x ".join(source) if isinstance(source, tuple) else source
                cell = {**base, "model": model, "data_source": label, "grouping": test.grouping_variable}
                try:
                    produced = handler(test, model, source)
                except NotComputable as exc:
                    rows.append({**cell, "verdict": NOT_COMPUTABLE, "reason": str(exc)})
                    continue
                rows.extend({**cell, **row} for row in produced)
        return rows

    def source_and_grouping(self, test: PlannedTest, source: str) -> tuple[str, Grouping]:
        """Both names resolved, or every problem with them at once (not only the first)."""
        problems, resolved, grouping = [], None, None
        try:
            resolved = resolve_source(self.data, source)
        except NotComputable as exc:
            problems.append(str(exc))
        try:
            grouping = self.grouping(test)
        except NotComputable as exc:
            problems.append(str(exc))
        if resolved is None or grouping is None:
            raise NotComputable("; ".join(problems))
        return resolved, grouping

    def _two_or_pairs(self, test: PlannedTest, model: str, source: str, one: Callable[..., dict[str, Any]]
                      ) -> list[dict[str, Any]]:
        source, grouping = self.source_and_grouping(test, source)
        unit = self.unit(test, grouping)
        values = grouped_values(self.data, grouping, model, source, unit)
        if not values:
            raise NotComputable(f"{source} has no valid value for {model} in any {grouping.label} group")
        alpha = self.alpha_level(test)
        common = {"grouping": grouping.label, "unit": unit}
        if test.param("pairwise"):
            pairs = self.pairs(test, list(values), grouping)
            rows, ps = [], []
            for a, b in pairs:
                try:
                    row = one(values[a], values[b], a, b)
                    ps.append(row["p_value"])
                except NotComputable as exc:
                    row = {"comparison": f"{a} vs {b}", "verdict": NOT_COMPUTABLE, "reason": str(exc)}
                    ps.append(None)
                rows.append({**common, **row})
            finite = [p for p in ps if p is not None]
            adjusted = iter(core.holm(finite))
            for row, p in zip(rows, ps, strict=True):
                if p is not None:
                    row["p_adjusted"] = next(adjusted)
                    row["verdict"] = SUPPORTED if row["p_adjusted"] < alpha else NOT_SUPPORTED
                    row["criterion"] = f"Holm-adjusted p < {alpha:g} ({len(finite)} pairs)"
            return rows
        if len(values) != 2:
            shown = named([f"{g} (n={len(v)})" for g, v in values.items()]) or "none"
            raise NotComputable(f"compares exactly 2 groups; {grouping.label} has {len(values)}: {shown}. "
                                "Choose or merge two with params.groups, or use pairwise: true")
        (a, va), (b, vb) = values.items()
        row = one(va, vb, a, b)
        row.update(verdict=SUPPORTED if row["p_value"] < alpha else NOT_SUPPORTED,
                   criterion=row.get("criterion") or f"p < {alpha:g}")
        return [{**common, **row}]

    def _t_test(self, test: PlannedTest, model: str, source: str) -> list[dict[str, Any]]:
        equal_var = bool(test.param("equal_var", False))

        def one(va: list[float], vb: list[float], a: str, b: str) -> dict[str, Any]:
            r = core.t_test(va, vb, equal_var=equal_var)
            return {"comparison": f"{a} vs {b}", "n": r.n_a + r.n_b,
                    "statistic_name": "t (Student)" if equal_var else "t (Welch)", "statistic": r.t,
                    "df": r.df, "p_value": r.p, "effect_size_name": "Cohen's d", "effect_size": r.cohen_d,
                    "detail": f"{a}: n={r.n_a}, mean={fmt(r.mean_a)}; {b}: n={r.n_b}, mean={fmt(r.mean_b)}; "
                              f"Hedges' g={fmt(r.hedges_g)}"}

        return self._two_or_pairs(test, model, source, one)

    def _equivalence(self, test: PlannedTest, model: str, source: str) -> list[dict[str, Any]]:
        margin = test.param("margin", test.param("bound", test.param("equivalence_margin")))
        if not isinstance(margin, int | float) or isinstance(margin, bool):
            raise NotComputable("an equivalence test needs params.margin: the largest difference of means "
                                "that still counts as 'the same'")
        alpha = self.alpha_level(test)

        def one(va: list[float], vb: list[float], a: str, b: str) -> dict[str, Any]:
            r = core.tost(va, vb, float(margin))
            half = float(sps.t.ppf(1 - alpha, r.df)) * r.se
            binding = r.t_lower if sps.t.sf(r.t_lower, r.df) >= sps.t.cdf(r.t_upper, r.df) else r.t_upper
            return {"comparison": f"{a} vs {b}", "n": r.n_a + r.n_b, "statistic_name": "t (TOST, Welch)",
                    "statistic": binding, "df": r.df, "p_value": r.p, "effect_size_name": "mean difference",
                    "effect_size": r.difference, "ci_low": r.difference - half, "ci_high": r.difference + half,
                    "criterion": f"TOST p < {alpha:g} (margin +/-{float(margin):g})",
                    "detail": f"{int(round(100 * (1 - 2 * alpha)))}% CI of the difference inside "
                              f"+/-{float(margin):g} means equivalent"}

        return self._two_or_pairs(test, model, source, one)

    def _anova(self, test: PlannedTest, model: str, source: str) -> list[dict[str, Any]]:
        source, grouping = self.source_and_grouping(test, source)
        unit = self.unit(test, grouping)
        values = grouped_values(self.data, grouping, model, source, unit)
        alpha = self.alpha_level(test)
        r = core.anova(list(values.values()))
        groups = _group_means(values)
        return [{"grouping": grouping.label, "unit": unit, "comparison": f"{r.k} groups", "n": r.n,
                 "statistic_name": "F", "statistic": r.f, "df": r.df_between, "df2": r.df_within,
                 "p_value": r.p, "effect_size_name": "eta squared", "effect_size": r.eta_squared,
                 "criterion": f"p < {alpha:g}", "verdict": SUPPORTED if r.p < alpha else NOT_SUPPORTED,
                 "detail": f"omega squared={fmt(r.omega_squared)}; {groups}"}]

    def _correlation(self, test: PlannedTest, model: str, sources: tuple[str, ...]) -> list[dict[str, Any]]:
        names = [resolve_source(self.data, s) for s in sources]
        if len(names) < 2:
            raise NotComputable("a correlation needs two data sources (x and y, or data_sources: [a, b, ...])")
        unit = self.unit(test, None)
        alpha = self.alpha_level(test)
        which = str(test.param("method", "pearson")).lower()
        methods = ["pearson", "spearman"] if which == "both" else [which]
        if any(m not in ("pearson", "spearman") for m in methods):
            raise NotComputable(f"params.method must be pearson, spearman or both, got {which!r}")
        expect = test.param("expect")
        rows = []
        for a, b in combinations(names, 2):
            if unit == "document":
                xa, xb = self.data.doc_means(model, a), self.data.doc_means(model, b)
                joined = pd.concat([xa, xb], axis=1, keys=["a", "b"]).dropna()
            else:
                part = self.data.model_rows(model, [a, b])
                joined = part.set_axis(["a", "b"], axis=1).dropna()
            for method in methods:
                cell: dict[str, Any] = {"data_source": f"{a} x {b}", "unit": unit, "comparison": f"{a} x {b}"}
                try:
                    r = core.correlation(joined["a"], joined["b"], method)
                except NotComputable as exc:
                    rows.append({**cell, "verdict": NOT_COMPUTABLE, "reason": str(exc)})
                    continue
                ok = r.p < alpha and (expect is None or (expect == "positive") == (r.r > 0))
                rows.append({**cell, "n": r.n, "statistic_name": "Pearson r" if method == "pearson"
                             else "Spearman rho", "statistic": r.r, "df": r.n - 2, "p_value": r.p,
                             "effect_size_name": "r squared", "effect_size": r.r**2,
                             "criterion": f"p < {alpha:g}" + (f" and r {'>' if expect == 'positive' else '<'} 0"
                                                             if expect else ""),
                             "verdict": SUPPORTED if ok else NOT_SUPPORTED})
        return rows

    def _reliability(self, test: PlannedTest, model: str, source: str) -> list[dict[str, Any]]:
        source = resolve_source(self.data, source)
        which = str(test.param("statistic", "cronbach_alpha"))
        if which not in RELIABILITY_STATISTICS:
            raise NotComputable(f"params.statistic must be one of {', '.join(RELIABILITY_STATISTICS)}")
        name, column, low, high = RELIABILITY_STATISTICS[which]
        threshold = self.threshold(test)
        row = self.reliability[(model, source)]
        value = row.get(column)
        if value is None:
            raise NotComputable(row.get("note") or f"{name} could not be computed")
        return [{"unit": "document x run", "n": row["n_documents"], "comparison": f"{row['n_runs']} runs",
                 "statistic_name": name, "statistic": value, "ci_low": row.get(low) if low else None,
                 "ci_high": row.get(high) if high else None, "criterion": f"{name} >= {threshold:g}",
                 "verdict": SUPPORTED if value >= threshold else NOT_SUPPORTED,
                 "detail": f"ICC(1,k)={fmt(row.get('icc1_k'))}, ICC(2,1)={fmt(row.get('icc2_1'))}, "
                           f"Krippendorff's alpha={fmt(row.get('krippendorff_alpha'))}, "
                           f"mean inter-run SD={fmt(row.get('mean_inter_run_sd'))}"
                           + (f"; {row['note']}" if row.get("note") else "")}]

    def _run_spread(self, test: PlannedTest, model: str, source: str) -> list[dict[str, Any]]:
        source = resolve_source(self.data, source)
        if self.data.runs_per_model < 2:
            raise NotComputable("one run per model: the spread between runs needs runs_per_model >= 2")
        threshold = self.threshold(test)
        units, _ = _all_runs(self.data, model, source)
        sds = inter_run_sds(units)
        if not len(sds):
            raise NotComputable("no document has two or more valid runs")
        mean = float(np.mean(sds))
        return [{"unit": "document", "n": len(sds), "statistic_name": "mean inter-run SD", "statistic": mean,
                 "criterion": f"mean inter-run SD <= {threshold:g}",
                 "verdict": SUPPORTED if mean <= threshold else NOT_SUPPORTED,
                 "detail": f"largest document SD={fmt(float(np.max(sds)))}"}]

    def _agreement(self, test: PlannedTest, model: str, source: str) -> list[dict[str, Any]]:
        if source not in self.data.categorical:
            raise NotComputable(f"{source!r} is not a categorical answer field "
                                f"({', '.join(self.data.categorical) or 'none'})")
        if self.data.runs_per_model < 2:
            raise NotComputable("one run per model: agreement between runs needs runs_per_model >= 2")
        threshold = self.threshold(test)
        rows = agreement_rows(self.data, source, model)
        summary = rows[-1]
        per_doc = [r for r in rows[:-1] if r.get("n_runs", 0) >= 2]
        if not per_doc:
            raise NotComputable("no document has two or more valid runs")
        lowest = min(per_doc, key=lambda r: (r["agreement"], r["document_id"]))
        return [{"unit": "document x run", "n": len(per_doc), "statistic_name": "mean agreement with modal answer",
                 "statistic": summary["agreement"], "effect_size_name": "Krippendorff's alpha (nominal)",
                 "effect_size": summary.get("krippendorff_alpha"),
                 "criterion": f"every document's agreement >= {threshold:g}",
                 "verdict": SUPPORTED if lowest["agreement"] >= threshold else NOT_SUPPORTED,
                 "detail": f"lowest: {lowest['document_id']} {fmt(lowest['agreement'])} "
                           f"({lowest['n_distinct']} distinct answers in {lowest['n_runs']} runs)"}]

    def _descriptives(self, test: PlannedTest, model: str, source: str) -> list[dict[str, Any]]:
        source = resolve_source(self.data, source)
        if test.grouping_variable:
            grouping = self.grouping(test)
            unit = self.unit(test, grouping)
            values = grouped_values(self.data, grouping, model, source, unit)
        else:
            grouping, unit = None, str(test.param("unit", "document"))
            values = {"all": (self.data.doc_means(model, source).tolist() if unit == "document" else
                              self.data.model_rows(model, [source])[source].dropna().tolist())}
        rows = []
        for group, vals in values.items():
            d = _describe(vals)
            rows.append({"grouping": grouping.label if grouping else None, "unit": unit, "comparison": group,
                         "n": d["n"], "statistic_name": "mean", "statistic": d["mean"], "verdict": DESCRIPTIVE,
                         "detail": f"sd={fmt(d['sd'])}, min={fmt(d['min'])}, max={fmt(d['max'])}"})
        return rows


# ---------------------------------------------------------------- verdicts


def _require(test: PlannedTest) -> str | int | float:
    value = test.param("require", "any" if test.param("pairwise") else "all")
    if value in ("all", "any") or (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
        return value
    return "all"


def combine(verdicts: list[str], require: str | int | float) -> str:
    """One verdict for a plan entry from its rows, by the entry's ``require``."""
    judged = [v for v in verdicts if v != DESCRIPTIVE]
    if not judged:
        return DESCRIPTIVE if verdicts else NOT_COMPUTABLE
    ok, missing = judged.count(SUPPORTED), judged.count(NOT_COMPUTABLE)
    if require == "all":
        needed = len(judged)
    elif require == "any":
        needed = 1
    elif isinstance(require, float) and require < 1:
        needed = math.ceil(require * len(judged))
    else:
        needed = int(require)
    if ok >= needed:
        return SUPPORTED
    if ok + missing < needed:
        return NOT_SUPPORTED
    return NOT_COMPUTABLE


def hypothesis_table(tests: list[PlannedTest], rows: pd.DataFrame, hypotheses: dict[str, str]) -> pd.DataFrame:
    ids = list(hypotheses) + sorted({t.hypothesis for t in tests if t.hypothesis and t.hypothesis not in hypotheses})
    out = []
    for hid in ids:
        entries = [t for t in tests if t.hypothesis == hid]
        if not entries:
            out.append({"hypothesis": hid, "text": hypotheses.get(hid), "tests": "", "rows": 0, "computed": 0,
                        "supported": 0, "verdict": NOT_TESTED,
                        "basis": f"no test in the statistical_plan references {hid}"})
            continue
        verdicts, basis, n_rows, n_computed, n_supported = [], [], 0, 0, 0
        for test in entries:
            part = rows[rows["test_id"] == test.test_id]
            row_verdicts = part["verdict"].tolist()
            require = _require(test)
            verdict = combine(row_verdicts, require)
            verdicts.append(verdict)
            computed = sum(1 for v in row_verdicts if v in (SUPPORTED, NOT_SUPPORTED))
            supported = row_verdicts.count(SUPPORTED)
            n_rows += len(row_verdicts)
            n_computed += computed
            n_supported += supported
            if computed:
                criteria = sorted({c for c in part["criterion"].dropna()})
                basis.append(f"{test.test_id} ({test.name}): {supported} of {computed} computed rows meet "
                             f"{' / '.join(criteria)} (require {require}) -> {verdict}")
            else:
                reasons = sorted({r for r in part["reason"].dropna()})
                basis.append(f"{test.test_id} ({test.name}): {verdict}: {'; '.join(reasons)[:400]}")
        judged = [v for v in verdicts if v not in (DESCRIPTIVE, NOT_COMPUTABLE)]
        if not judged:
            overall = NOT_COMPUTABLE if NOT_COMPUTABLE in verdicts else DESCRIPTIVE
        elif all(v == SUPPORTED for v in judged):
            overall = SUPPORTED
        elif all(v == NOT_SUPPORTED for v in judged):
            overall = NOT_SUPPORTED
        else:
            overall = MIXED
        out.append({"hypothesis": hid, "text": hypotheses.get(hid), "tests": ", ".join(t.test_id for t in entries),
                    "rows": n_rows, "computed": n_computed, "supported": n_supported, "verdict": overall,
                    "basis": " | ".join(basis)})
    return pd.DataFrame(out, columns=HYPOTHESIS_COLUMNS)


# ---------------------------------------------------------------- everything


def focus_sources(data: StatsData, tests: list[PlannedTest]) -> list[str]:
    """The numeric data sources the plan names (in plan order), or all of them when it names none."""
    named = [s for t in tests for s in t.data_sources if s in data.numeric]
    return list(dict.fromkeys(named)) or list(data.numeric)


def default_groupings(data: StatsData, tests: list[PlannedTest]) -> list[Grouping]:
    """Groupings of the plan that resolve, then metadata fields whose every level has 2+ documents."""
    found: list[Grouping] = []
    for test in tests:
        if test.grouping_variable and test.method != "unknown":
            try:
                grouping = resolve_grouping(data, test.grouping_variable, test.param("groups"))
            except NotComputable:
                continue
            if grouping.is_document_id or not 2 <= len(grouping.order) <= MAX_CATEGORIES:
                continue
            if all((g.variable, g.label, g.order) != (grouping.variable, grouping.label, grouping.order)
                   for g in found):
                found.append(grouping)
    n_docs = len(data.documents)
    for name in data.metadata:
        counts = Counter(v for v in data.documents[name] if v is not None)
        if 2 <= len(counts) < n_docs and min(counts.values()) >= 2 and all(g.label != name for g in found):
            found.append(resolve_grouping(data, name))
    return found


def compute_statistics(data: StatsData, plan: list[Any], hypotheses: dict[str, str]) -> StatisticsResult:
    tests = parse_plan(plan, hypotheses)
    focus = focus_sources(data, tests)
    groupings = default_groupings(data, tests)
    reliability = reliability_rows(data)
    runner = _Runner(data, reliability)
    test_rows = [row for test in tests for row in runner.run(test)]
    tests_frame = pd.DataFrame(test_rows, columns=TEST_COLUMNS)
    agreement_fields = [f for f in data.categorical if category_like(data, f)]
    agreement = [row for f in agreement_fields for m in data.models for row in agreement_rows(data, f, m)] \
        if data.runs_per_model >= 2 else []
    tables = {
        "stats_hypotheses": hypothesis_table(tests, tests_frame, hypotheses),
        "stats_tests": tests_frame,
        "stats_reliability": pd.DataFrame(list(reliability.values()), columns=RELIABILITY_COLUMNS),
        "stats_documents": document_table(data),
        "stats_groups": group_table(data, groupings, focus),
        "stats_agreement": pd.DataFrame(agreement, columns=AGREEMENT_COLUMNS),
        "stats_correlations": correlation_table(data, focus),
    }
    return StatisticsResult(tables=tables, tests=tests, focus=focus, groupings=groupings)
