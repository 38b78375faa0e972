"""The experiment's ``statistical_plan``, read into tests the statistics step can run.

Discernus plans look like this (Experiment Specification v2), and that is the vocabulary accepted::

    statistical_plan:
      - test:
          name: "Cohesion by worldview"
          hypothesis_ref: "H1"
          method: "t-test"            # or anova, correlation, cronbachs_alpha, icc, ...
          params:
            data_source: "full_cohesion_index"      # or data_sources: [...]
            grouping_variable: "worldview"          # corpus metadata field or categorical answer

The ``test:`` wrapper is optional. Method names are matched loosely ("t-test", "T Test", "ttest");
an entry that cannot run as written is kept with its ``problem`` so the hypothesis table can say
why, instead of the entry silently disappearing. docs/statistics-and-synthesis.md lists every
method and parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["METHODS", "PlannedTest", "parse_plan"]

# canonical method -> accepted spellings (normalised: lower case, runs of non-letters -> "_")
METHODS: dict[str, tuple[str, ...]] = {
    "t_test": ("t_test", "ttest", "independent_t_test", "welch_t_test", "welch", "student_t_test"),
    "anova": ("anova", "one_way_anova", "oneway_anova", "f_test"),
    "correlation": ("correlation", "correlations", "pearson", "spearman", "pearson_correlation",
                    "spearman_correlation"),
    "reliability": ("cronbachs_alpha", "cronbach_alpha", "cronbach", "reliability", "inter_run_reliability",
                    "icc", "intraclass_correlation", "krippendorff_alpha", "krippendorffs_alpha"),
    "agreement": ("agreement", "categorical_agreement", "run_agreement", "classification_agreement"),
    "run_spread": ("run_spread", "inter_run_sd", "mean_inter_run_sd", "inter_run_standard_deviation"),
    "equivalence": ("equivalence", "tost", "equivalence_test"),
    "descriptives": ("descriptives", "descriptive", "descriptive_statistics", "summary"),
}
_ALIASES = {alias: canonical for canonical, aliases in METHODS.items() for alias in aliases}
# The statistic a reliability entry is judged on depends on the name the researcher used.
RELIABILITY_STATISTIC = {"icc": "icc1_k", "intraclass_correlation": "icc1_k",
                         "krippendorff_alpha": "krippendorff_alpha",
                         "krippendorffs_alpha": "krippendorff_alpha"}
DEFAULT_THRESHOLD = {"reliability": 0.70, "agreement": 0.80, "run_spread": 0.20}


def normalise_method(raw: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", raw.lower().replace("'", "")).strip("_")


@dataclass
class PlannedTest:
    """One plan entry, its parameters read and checked for shape (not yet against the data)."""

    test_id: str
    name: str
    hypothesis: str | None
    method: str
    method_written: str
    data_sources: list[str] = field(default_factory=list)
    grouping_variable: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)


def _sources(params: dict[str, Any], problems: list[str]) -> list[str]:
    found: list[str] = []
    for key in ("data_source", "data_sources", "variables", "x", "y", "field", "fields"):
        value = params.get(key)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and item.strip():
                if item.strip() not in found:
                    found.append(item.strip())
            else:
                problems.append(f"params.{key}: {item!r} is not a field name")
    return found


def parse_plan(plan: list[Any], hypotheses: dict[str, str]) -> list[PlannedTest]:
    """Every entry of ``statistical_plan`` as a :class:`PlannedTest` (ids T1, T2, ... in plan order)."""
    tests: list[PlannedTest] = []
    for index, raw in enumerate(plan, start=1):
        entry = raw.get("test") if isinstance(raw, dict) and isinstance(raw.get("test"), dict) else raw
        test_id = f"T{index}"
        if not isinstance(entry, dict):
            tests.append(PlannedTest(test_id, f"entry {index}", None, "unknown", repr(raw)[:60],
                                     problems=["the plan entry is not a mapping (name, method, params)"]))
            continue
        problems: list[str] = []
        written = str(entry.get("method") or "").strip()
        method = _ALIASES.get(normalise_method(written), "unknown")
        if not written:
            problems.append("the entry names no method")
        elif method == "unknown":
            problems.append(f"unknown method {written!r}; known: {', '.join(sorted(_ALIASES))}")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            problems.append("params must be a mapping")
            params = {}
        # Parameters written next to method (without a params block) are accepted too.
        params = {**{k: v for k, v in entry.items()
                     if k not in ("name", "hypothesis_ref", "hypothesis", "method", "params")}, **params}
        normalised = normalise_method(written)
        if method == "correlation" and normalised in ("pearson", "spearman", "pearson_correlation",
                                                      "spearman_correlation"):
            params.setdefault("method", normalised.split("_")[0])
        if method == "reliability":
            params.setdefault("statistic", RELIABILITY_STATISTIC.get(normalised, "cronbach_alpha"))
        hypothesis = entry.get("hypothesis_ref", entry.get("hypothesis"))
        hypothesis = str(hypothesis).strip() if hypothesis is not None else None
        if hypothesis is not None and hypotheses and hypothesis not in hypotheses:
            problems.append(f"hypothesis_ref {hypothesis!r} is not one of the experiment's hypotheses "
                            f"({', '.join(hypotheses)})")
        grouping = params.get("grouping_variable", params.get("group_by", params.get("grouping")))
        if grouping is not None and not (isinstance(grouping, str) and grouping.strip()):
            problems.append(f"grouping_variable {grouping!r} is not a field name")
            grouping = None
        tests.append(PlannedTest(
            test_id=test_id, name=str(entry.get("name") or f"{written or 'test'} {index}").strip(),
            hypothesis=hypothesis, method=method, method_written=written,
            data_sources=_sources(params, problems),
            grouping_variable=grouping.strip() if isinstance(grouping, str) else None,
            params=params, problems=problems))
    return tests
