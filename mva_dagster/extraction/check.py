"""``mva framework check``: everything about a framework that can be known before a call is paid for.

Loading already refuses what cannot work (no or several JSON blocks, invalid JSON, unsafe or cyclic
formulas, unknown types). The check goes further, with what extraction will derive from the file:

* the JSON Schema of an answer, for every variant, is well-formed (checked with ``jsonschema``);
* every formula variable is a value of the answer - also for nested contracts, via the flat record
  (:class:`~mva_dagster.extraction.shape.RecordShape`) - and a number;
* formulas that are the same after normalisation are reported (a metric pasted under two names is a
  real bug of a published framework);
* the range of every metric, by interval arithmetic over the input ranges the framework states;
* Framework Spec v5: CSV delimiters named in the prompt, ``dimension_groups`` naming known subjects,
  rubric ranges in order; the v10 style: ``dimensions`` and the output schema agree;
* which constraints were derived from the prose, and from which sentence.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mva_dagster.calc.formula import CalculationPlan, build_plan
from mva_dagster.errors import SpecError
from mva_dagster.extraction.derive import DerivedContract, derive_contract
from mva_dagster.extraction.shape import RecordShape
from mva_dagster.extraction.words import name_words
from mva_dagster.specs.framework import Framework, load_framework

__all__ = ["Finding", "FrameworkCheck", "check_framework"]

Level = Literal["error", "warning", "info"]
_SUPERSEDED = ("same formula as", "cannot be checked at load")  # loader warnings the check restates


@dataclass(frozen=True)
class Finding:
    level: Level
    where: str
    message: str


@dataclass
class FrameworkCheck:
    """The outcome: findings, each metric's range, and how each formula variable is read."""

    path: Path
    framework: Framework | None = None
    findings: list[Finding] = field(default_factory=list)
    metric_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    variables: dict[str, str | None] = field(default_factory=dict)
    flat_fields: list[str] = field(default_factory=list)

    def add(self, level: Level, where: str, message: str) -> None:
        self.findings.append(Finding(level, where, message))

    def of(self, level: Level) -> list[Finding]:
        return [f for f in self.findings if f.level == level]

    @property
    def ok(self) -> bool:
        return not self.of("error")

    def as_json(self) -> dict[str, Any]:
        fw = self.framework
        return {
            "path": str(self.path),
            "framework": None if fw is None else {"name": fw.name, "version": fw.version,
                                                  "spec_version": fw.spec_version},
            "ok": self.ok,
            "findings": [asdict(f) for f in self.findings],
            "metric_ranges": {k: [_num(lo), _num(hi)] for k, (lo, hi) in self.metric_ranges.items()},
            "variables": self.variables,
            "flat_fields": self.flat_fields,
        }


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _fmt(x: float) -> str:
    return f"{x:g}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def check_framework(path: str | Path, variant: str = "default") -> FrameworkCheck:
    """Check one framework file; never raises for a problem in the file (it becomes a finding)."""
    result = FrameworkCheck(Path(path))
    try:
        fw = load_framework(path)
    except SpecError as exc:
        where = exc.field or "framework"
        message = exc.message.split(f"{where}: ", 1)[-1] if exc.field else exc.message
        result.add("error", where, message + (f" (hint: {exc.hint})" if exc.hint else ""))
        return result
    result.framework = fw
    style = {"4": "Framework Specification v4", "5": "Framework Specification v5", "10": "v10 Markdown + YAML"}
    result.add("info", "framework", f"{fw.name} {fw.version}, {style.get(fw.spec_version, fw.spec_version)}; "
                                    f"variants: {', '.join(fw.analysis_variants)}")
    for warning in fw.warnings:
        if not any(s in warning for s in _SUPERSEDED):
            where, _, message = warning.partition(": ")
            result.add("warning", where if message else "framework", message or warning)
    if variant not in fw.analysis_variants:
        result.add("error", "analysis_variant", f"no variant {variant!r}; this framework has "
                                                f"{', '.join(fw.analysis_variants)}")
        return result

    derived: dict[str, DerivedContract] = {}
    for name in fw.analysis_variants:
        try:
            derived[name] = derive_contract(fw, name)
        except SpecError as exc:
            result.add("error", f"analysis_variants.{name}", f"the answer schema cannot be built: {exc.message}")
    if variant not in derived:
        return result
    _check_schemas(result, derived)
    main = derived[variant]
    for d in main.derivations:
        result.add("info", f"output_contract.schema.{d.where}", f"{d.what} ({d.source})")

    plan = build_plan(fw.calculation_spec, known_inputs=None, file=fw.path)
    shape = RecordShape(main.schema, subjects=main.subjects, variables=sorted(plan.inputs))
    result.flat_fields = shape.names
    nested = [f for f in shape.fields if len(f.path) > 1]
    if nested:
        sample = ", ".join(f"{'.'.join(f.path)} -> {f.name}" for f in nested[:3])
        result.add("info", "record", f"{len(shape.fields)} values per answer, {len(nested)} of them nested "
                                     f"and flattened ({sample}, ...)")
    _check_variables(result, plan, shape)
    _check_duplicates(result, plan)
    _check_ranges(result, plan, shape)
    _check_v5(result, fw, main, variant)
    _check_v10(result, fw, shape)
    return result


def _check_schemas(result: FrameworkCheck, derived: dict[str, DerivedContract]) -> None:
    try:
        from jsonschema import Draft7Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # pragma: no cover - jsonschema comes with litellm
        result.add("warning", "output_contract", "jsonschema is not installed: schema well-formedness not checked")
        return
    for name, d in derived.items():
        try:
            Draft7Validator.check_schema(d.schema)
        except SchemaError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            result.add("error", f"output_contract ({name})", f"the answer schema is not valid JSON Schema at "
                                                              f"{where or 'the top'}: {exc.message}")


def _check_variables(result: FrameworkCheck, plan: CalculationPlan, shape: RecordShape) -> None:
    for metric, used in plan.dependencies.items():
        for var in sorted(used - set(plan.formulas)):
            target = shape.resolve(var)
            result.variables[var] = target
            if target is None:
                close = difflib.get_close_matches(var, [*shape.names, *shape.aliases], n=2, cutoff=0.6)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                result.add("error", f"calculation_spec.{metric}",
                           f"variable '{var}' is not a value of the answer{hint} (the record has: "
                           f"{', '.join(shape.names[:12])}{' ...' if len(shape.names) > 12 else ''})")
            elif not shape.by_name[target].numeric:
                result.add("error", f"calculation_spec.{metric}",
                           f"variable '{var}' reads '{target}', which is not a number")
    read = {v: t for v, t in result.variables.items() if t and len(shape.by_name[t].path) > 1}
    if read:
        sample = ", ".join(f"{v} <- {'.'.join(shape.by_name[t].path)}" for v, t in list(read.items())[:4])
        result.add("info", "calculation_spec", f"{len(read)} formula variables read nested values ({sample}"
                                               f"{', ...' if len(read) > 4 else ''})")


def _check_duplicates(result: FrameworkCheck, plan: CalculationPlan) -> None:
    for first, second in plan.duplicates():
        result.add("warning", f"calculation_spec.{second}",
                   f"identical to {first} after normalisation ({plan.formulas[second]!r}): "
                   "probably a copy-paste mistake; the two columns will always be equal")


def _inputs_of(plan: CalculationPlan, metric: str) -> set[str]:
    seen: set[str] = set()
    inputs: set[str] = set()
    todo = [metric]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for dep in plan.dependencies.get(m, set()):
            if dep in plan.formulas:
                todo.append(dep)
            else:
                inputs.add(dep)
    return inputs


def _check_ranges(result: FrameworkCheck, plan: CalculationPlan, shape: RecordShape) -> None:
    ranges = shape.input_ranges()
    for metric in plan.order:
        lo, hi = plan.value_range(metric, ranges)
        result.metric_ranges[metric] = (lo, hi)
        if math.isfinite(lo) and math.isfinite(hi):
            if lo == hi:
                result.add("warning", f"calculation_spec.{metric}", f"is always {_fmt(lo)}")
            continue
        open_inputs = sorted(v for v in _inputs_of(plan, metric) if v not in ranges)
        why = (f"inputs without a stated range: {', '.join(open_inputs)}" if open_inputs
               else "a divisor's range contains 0, or a function is unbounded on the inputs' ranges")
        result.add("warning", f"calculation_spec.{metric}",
                   f"range [{_fmt(lo)}, {_fmt(hi)}] is unbounded ({why})")


def _mentioned(text: str, needle: str) -> bool:
    return needle.strip() in text


def _check_v5(result: FrameworkCheck, fw: Framework, derived: DerivedContract, variant: str) -> None:
    prompt = fw.variant(variant).analysis_prompt + "\n" + fw.output_contract.instructions
    for name, req in fw.output_contract.embedded_csv_requirements.items():
        where = f"output_contract.embedded_csv_requirements.{name}"
        for key in ("delimiter_start", "delimiter_end"):
            value = req.get(key) if isinstance(req, dict) else None
            if not isinstance(value, str) or not value.strip():
                result.add("error", where, f"needs a '{key}' string")
            elif not _mentioned(prompt, value):
                result.add("warning", where, f"{key} {value!r} appears neither in the prompt nor in the "
                                             "instructions: the model cannot know to write it")
    known = {name_words(k) for f in _leaf_keys(derived.schema) for k in f}
    for group, members in fw.dimension_groups.items():
        unknown = [m for m in members if name_words(m) not in known]
        if unknown:
            result.add("warning", f"dimension_groups.{group}",
                       f"names subjects the answer does not contain: {', '.join(unknown)}")
    for metric, bands in fw.reliability_rubric.items():
        if not isinstance(bands, dict):
            continue
        for band, bounds in bands.items():
            if isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds):
                if bounds[0] > bounds[1]:
                    result.add("warning", f"reliability_rubric.{metric}.{band}", f"range {bounds} is reversed")
            else:
                result.add("warning", f"reliability_rubric.{metric}.{band}", f"expected [low, high], got {bounds!r}")


def _leaf_keys(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterable[tuple[str, ...]]:
    props = schema.get("properties")
    if isinstance(props, dict):
        for key, sub in props.items():
            yield (*path, key)
            if isinstance(sub, dict):
                yield from _leaf_keys(sub, (*path, key))


def _check_v10(result: FrameworkCheck, fw: Framework, shape: RecordShape) -> None:
    if fw.spec_version != "10" or not fw.dimensions:
        return
    keys = {name_words(k) for f in shape.fields for k in f.path}
    for dim in fw.dimensions:
        name = str(dim.get("name", ""))
        if name and name_words(name) not in keys:
            result.add("warning", f"dimensions.{name}", "is not in the output schema: the model is never asked for it")


def render(check: FrameworkCheck, *, verbose: bool = False) -> str:
    """The check as text, errors first."""
    fw = check.framework
    title = f"{fw.display_name} ({fw.name} {fw.version})" if fw else "framework"
    lines = [f"{title}: {check.path}"]
    for level in ("error", "warning", "info"):
        for f in check.of(level):
            if level == "info" and not verbose and f.where.startswith("output_contract.schema."):
                continue
            lines.append(f"  {level.upper():7} {f.where}: {f.message}")
    derived = [f for f in check.of("info") if f.where.startswith("output_contract.schema.")]
    if derived and not verbose:
        lines.append(f"  INFO    output_contract: {len(derived)} constraints derived from the framework's prose "
                     "(--verbose lists them with their sources)")
    if check.metric_ranges:
        width = max(len(m) for m in check.metric_ranges)
        lines.append("  metric ranges (interval arithmetic over the stated input ranges):")
        for metric, (lo, hi) in check.metric_ranges.items():
            lines.append(f"    {metric:<{width}}  [{_fmt(lo)}, {_fmt(hi)}]")
    lines.append(f"  {len(check.of('error'))} errors, {len(check.of('warning'))} warnings")
    return "\n".join(lines)
