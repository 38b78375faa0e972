"""The safe formula evaluator: values, ordering, cycles, forbidden constructs, duplicates, ranges."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from mva_dagster.calc.formula import build_plan, is_prose, parse_formula
from mva_dagster.errors import FormulaError
from mva_dagster.specs.framework import load_framework


def one(formula: str, **row: Any) -> float | None:
    return build_plan({"m": formula}, known_inputs=None).evaluate(row)["m"]


# ---------------------------------------------------------------- values


def test_weighted_sum_by_hand() -> None:
    spec = {"idx": "(0.33 * (hope - fear)) + (0.27 * (comp - envy)) + (0.40 * (amity - enmity))"}
    plan = build_plan(spec, known_inputs={"hope", "fear", "comp", "envy", "amity", "enmity"})
    row = {"hope": 0.8, "fear": 0.2, "comp": 0.5, "envy": 0.1, "amity": 0.9, "enmity": 0.4}
    expected = 0.33 * 0.6 + 0.27 * 0.4 + 0.40 * 0.5  # 0.198 + 0.108 + 0.2
    assert plan.evaluate(row)["idx"] == pytest.approx(expected) == pytest.approx(0.506)


def test_metrics_using_metrics_are_ordered_and_chained() -> None:
    spec = {"final": "balance * weight", "balance": "a - b", "weight": "mean(a, b, 1)"}
    plan = build_plan(spec, known_inputs={"a", "b"})
    assert plan.order == ["balance", "weight", "final"]
    assert plan.inputs == {"a", "b"}
    assert list(plan.formulas) == ["final", "balance", "weight"]
    values = plan.evaluate({"a": 0.9, "b": 0.3})
    assert values == pytest.approx({"final": 0.6 * (2.2 / 3), "balance": 0.6, "weight": 2.2 / 3})
    assert list(values) == ["final", "balance", "weight"]  # spec order, not evaluation order


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("abs(x - 1)", 0.75),
        ("min(x, 0.1, 2)", 0.1),
        ("max(x, 0.1)", 0.25),
        ("round(x * 10 + 0.04, 1)", 2.5),
        ("round(3.7)", 4.0),
        ("sqrt(x)", 0.5),
        ("log(exp(2))", 2.0),
        ("log(8, 2)", 3.0),
        ("mean(x, 0.75)", 0.5),
        ("clamp(x * 8, 0, 1)", 1.0),
        ("clamp(-x, 0, 1)", 0.0),
        ("2 ** 3 ** 2", 512.0),
        ("-x + +x", 0.0),
        ("1 if x > 0.2 else 0", 1.0),
        ("(x >= 0.25) + (x < 0.25) * 10", 1.0),
        ("0 < x < 1", 1.0),
    ],
)
def test_functions_and_operators(formula: str, expected: float) -> None:
    assert one(formula, x=0.25) == pytest.approx(expected)


def test_missing_inputs_propagate_as_none() -> None:
    plan = build_plan({"base": "a + b", "derived": "base * 2", "other": "c * 2"}, known_inputs=None)
    assert plan.evaluate({"a": 1, "c": 2}) == {"base": None, "derived": None, "other": 4.0}


@pytest.mark.parametrize("bad", [None, "0.5", True, float("nan"), float("inf"), [1], {"v": 1}])
def test_non_numeric_inputs_give_none(bad: Any) -> None:
    assert one("a + 1", a=bad) is None


@pytest.mark.parametrize(
    "formula",
    ["a / 0", "a / (a - a)", "log(0)", "log(-a)", "sqrt(-a)", "(-8) ** (1 / 3)", "exp(1000)", "10.0 ** 400"],
)
def test_arithmetic_failures_give_none(formula: str) -> None:
    assert one(formula, a=1) is None


def test_row_value_for_a_metric_name_is_ignored() -> None:
    plan = build_plan({"m": "a * 2"}, known_inputs=None)
    assert plan.evaluate({"a": 1, "m": 99})["m"] == 2.0


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("__import__('os').system('x')", "attribute access"),
        ("__import__('os')", "'__import__' is not allowed"),
        ("a.real", "attribute access"),
        ("a.__class__", "attribute access"),
        ("(lambda: 1)()", "lambda"),
        ("x[0]", "indexing"),
        ("[v for v in a]", "comprehensions"),
        ("'text'", "strings are not allowed"),
        ("max(a, key=abs)", "keyword arguments"),
        ("open('f')", "function 'open' is not allowed"),
        ("eval('1')", "function 'eval' is not allowed"),
        ("__builtins__", "names may not start with '__'"),
        ("a % 2", "operator Mod is not allowed"),
        ("a // 2", "operator FloorDiv is not allowed"),
        ("not a", "unary operator Not"),
        ("a and b", "'and' / 'or' are not allowed"),
        ("a in b", "comparison In is not allowed"),
        ("(a := 1)", "assignment"),
        ("True", "the constant True"),
        ("min", "'min' is a function"),
        ("clamp(a, 1)", "clamp() takes 3 argument(s), got 2"),
        ("sqrt()", "sqrt() takes 1 argument(s), got 0"),
        ("max(*a)", "'*args' is not allowed"),
        ("a +", "does not parse"),
        ("hope_score + * fear_score", "does not parse"),
        ("", "formula is empty"),
        ("1" * 10_001, "longer than"),
    ],
)
def test_forbidden_constructs(formula: str, fragment: str) -> None:
    with pytest.raises(FormulaError) as err:
        build_plan({"metric_x": formula}, known_inputs=None, file="fw.md")
    assert err.value.field == "calculation_spec.metric_x" and err.value.file == "fw.md"
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", ["2fast", "has-dash", "__dunder", "lambda", "max", "with space"])
def test_bad_metric_names(name: str) -> None:
    with pytest.raises(FormulaError):
        build_plan({name: "1"}, known_inputs=None)


def test_non_string_formula() -> None:
    with pytest.raises(FormulaError, match="must be a string"):
        build_plan({"m": 0.5}, known_inputs=None)  # type: ignore[dict-item]


def test_cycles_are_named() -> None:
    with pytest.raises(FormulaError, match="cycle: a -> b -> a"):
        build_plan({"a": "b + 1", "b": "a * 2"}, known_inputs=None)
    with pytest.raises(FormulaError, match="cycle: self_ref -> self_ref"):
        build_plan({"self_ref": "self_ref + 1"}, known_inputs=None)


def test_unknown_variable_lists_close_matches() -> None:
    with pytest.raises(FormulaError) as err:
        build_plan(
            {"m": "hope_scor - fear_score"}, known_inputs={"hope_score", "fear_score", "hope_confidence"}
        )
    assert err.value.field == "calculation_spec.m"
    assert "unknown variable 'hope_scor'" in str(err.value) and "did you mean 'hope_score'" in str(err.value)


def test_unknown_variable_without_match_lists_known_names() -> None:
    with pytest.raises(FormulaError) as err:
        build_plan({"m": "zzz"}, known_inputs={"a"})
    assert err.value.hint == "known names: a, m"


def test_parse_formula_is_reusable() -> None:
    tree = parse_formula("a + max(b, 1)", name="n")
    assert tree is not None


# ---------------------------------------------------------------- prose rule


@pytest.mark.parametrize(
    ("text", "prose"),
    [
        ("CRITICAL: All indices use salience-weighted calculations.", True),
        ("SALIENCE-WEIGHTED: Normalized sum of [(a \u00d7 b)]", True),
        ("MATHEMATICAL PROCESS: (1) Multiply each score", True),
        ("All indices use salience-weighted calculations.", True),
        ("hope_score - fear_score", False),  # parses: a formula
        ("hope_score + * fear_score", False),  # broken formula, not prose
        ("hope plus fear", False),  # three words: too short to call prose
        ("a \u00d7 b", False),
        ("NOTE", False),  # parses (a name)
    ],
)
def test_prose_rule(text: str, prose: bool) -> None:
    assert is_prose(text) is prose


# ---------------------------------------------------------------- duplicates and ranges


def test_duplicates_ignore_order_parentheses_and_constant_placement() -> None:
    spec = {
        "m1": "0.5 * (a - b) + c",
        "m2": "c + ((a - b) * 0.5)",
        "m3": "c - 0.5 * (b - a)",
        "m4": "c + 0.5 * (b - a)",
        "m5": "max(a, b)",
        "m6": "max(b, a)",
        "m7": "a / b",
        "m8": "b / a",
    }
    assert build_plan(spec, known_inputs=None).duplicates() == [("m1", "m2"), ("m5", "m6")]


def test_value_range_by_interval_arithmetic() -> None:
    spec = {
        "diff": "a - b",
        "scaled": "0.5 * diff + 0.5",
        "ratio": "a / b",
        "sq": "diff ** 2",
        "c": "clamp(diff * 3, -1, 1)",
    }
    plan = build_plan(spec, known_inputs=None)
    unit = {"a": (0.0, 1.0), "b": (0.0, 1.0)}
    assert plan.value_range("diff", unit) == (-1.0, 1.0)
    assert plan.value_range("scaled", unit) == (0.0, 1.0)
    assert plan.value_range("ratio", unit) == (-math.inf, math.inf)  # divisor range contains 0
    assert plan.value_range("ratio", {"a": (1, 2), "b": (2, 4)}) == (0.25, 1.0)
    assert plan.value_range("sq", unit) == (0.0, 1.0)
    assert plan.value_range("c", unit) == (-1.0, 1.0)
    assert plan.value_range("diff", {"a": (0, 1)}) == (-math.inf, math.inf)  # b unbounded
    with pytest.raises(FormulaError, match="unknown metric"):
        plan.value_range("nope", unit)


@pytest.mark.shared
def test_cff_v41_duplicates_and_ranges(shared: Path) -> None:
    fw = load_framework(shared / "data/frameworks/cff/cff_v4.1.md")
    plan = fw.calculation_plan()
    assert plan.duplicates() == [("motivational_cohesion_index", "full_cohesion_index")]
    unit = {name: (0.0, 1.0) for name in plan.inputs}
    assert plan.value_range("descriptive_cohesion_index", unit) == (-1.0, 1.0)
    assert plan.value_range("motivational_cohesion_index", unit) == (-1.0, 1.0)
    row = {name: 0.5 for name in plan.inputs} | {"hope_score": 0.9, "fear_score": 0.1}
    assert plan.evaluate(row)["descriptive_cohesion_index"] == pytest.approx(0.33 * 0.8)
