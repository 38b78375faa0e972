"""Threshold alerts: the experiment's ``alerts:`` rules evaluated on every valid record as it lands.

A rule is a condition in the calculation-spec language (``fear_score > 0.8``), evaluated by the
safe evaluator in :mod:`mva_dagster.calc.formula`, never by ``eval``. Its names are the record's
numeric fields (nested ones joined by ``_``) and the framework's derived metrics. Rules are checked
against the output contract when the session starts, so a misspelt name fails before any call is
paid for. A rule whose inputs are missing from a record (an invalid answer) does not fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mva_dagster.calc.formula import CalculationPlan, build_plan
from mva_dagster.errors import FormulaError, MvaError, SpecError
from mva_dagster.observe.fields import numeric_values, schema_numeric_names


@dataclass(frozen=True)
class AlertHit:
    """One rule that fired on one record, with the values it read."""

    rule: str
    values: dict[str, float | None]

    def describe(self) -> str:
        shown = ", ".join(f"{k} = {v}" for k, v in sorted(self.values.items()))
        return f"{self.rule} ({shown})" if shown else self.rule


class AlertRules:
    """The checked rules of one session and the metric plan they may read."""

    def __init__(self, rules: list[str], plans: list[CalculationPlan], metrics: CalculationPlan | None) -> None:
        self.rules = rules
        self._plans = plans
        self._metrics = metrics

    def __bool__(self) -> bool:
        return bool(self.rules)

    def evaluate(self, fields: Mapping[str, Any]) -> list[AlertHit]:
        """The rules that hold for this record (value 1.0); missing inputs never fire."""
        if not self.rules:
            return []
        env: dict[str, Any] = dict(numeric_values(fields))
        if self._metrics is not None:
            env.update({k: v for k, v in self._metrics.evaluate(fields).items() if v is not None})
        hits = []
        for rule, plan in zip(self.rules, self._plans, strict=True):
            if plan.evaluate(env).get("alert") == 1.0:
                hits.append(AlertHit(rule, {name: env.get(name) for name in sorted(plan.inputs)}))
        return hits


def compile_rules(rules: list[str], *, json_schema: Mapping[str, Any], calculation_spec: Mapping[str, str],
                  file: Path | None = None) -> AlertRules:
    """Check each rule's names against the contract and the metrics; SpecError names the rule."""
    known = schema_numeric_names(json_schema) | set(calculation_spec)
    metrics = build_plan(calculation_spec, known_inputs=None, file=file) if calculation_spec else None
    plans = []
    for i, rule in enumerate(rules):
        try:
            plans.append(build_plan({"alert": rule}, known_inputs=known, file=file))
        except FormulaError as exc:
            raise SpecError(f"alert rule {rule!r}: {exc.message.split(': ', 1)[-1]}", file=file,
                            field=f"alerts[{i}]", hint=exc.hint) from exc
    return AlertRules(rules, plans, metrics)


def session_rules(experiment_snapshot: Path, framework_snapshot: Path, json_schema: Mapping[str, Any],
                  calculation_spec: Mapping[str, str]) -> AlertRules:
    """The rules of the session's own experiment snapshot (not the researcher's working copy)."""
    from mva_dagster.specs.experiment import load_experiment

    if not experiment_snapshot.exists():
        return AlertRules([], [], None)
    try:
        experiment = load_experiment(experiment_snapshot, framework_override=framework_snapshot)
    except SpecError:
        raise
    except MvaError:
        return AlertRules([], [], None)
    return compile_rules(experiment.alerts, json_schema=json_schema, calculation_spec=calculation_spec,
                         file=experiment_snapshot)
