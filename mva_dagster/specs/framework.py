"""Framework files: load, check and normalise them into one :class:`Framework` model.

Three shapes are accepted, all mapped onto the same model (``spec_version`` says which one it was):

* Framework Specification v4 - Markdown with exactly one ```json block (usually in a
  ``<details><summary>Machine-Readable Configuration</summary>`` appendix).
* Framework Specification v5 - the same JSON block plus ``dimension_groups``,
  ``reliability_rubric`` and ``output_contract.embedded_csv_requirements``.
* The "v10" Markdown style - a ```yaml block with ``metadata``, ``analysis_variants``,
  ``dimensions``, ``derived_metrics`` and a JSON-Schema ``output_schema``.

Everything that can be checked without an LLM is checked here, at load, so a researcher learns about a
broken formula or a typo'd variant before any money is spent. ``docs/writing-frameworks.md`` is the
researcher-facing description of the same rules.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mva_dagster.calc.formula import CalculationPlan, build_plan, is_prose
from mva_dagster.errors import FormulaError, SpecError
from mva_dagster.specs._markdown import CodeBlock, fenced_blocks, read_spec_file, yaml_load

__all__ = [
    "CONTRACT_TYPES",
    "AnalysisVariant",
    "Framework",
    "OutputContract",
    "contract_field_types",
    "load_framework",
]

CONTRACT_TYPES = ("string", "number", "integer", "boolean", "array", "object")
_NUMERIC = {"number", "integer"}
_V5_KEYS = ("dimension_groups", "reliability_rubric")
_V5_MAX_CHARS = 15_000
DEFAULT_INSTRUCTIONS = (
    "IMPORTANT: Your response MUST be a single, valid JSON object and nothing else. Do not include any "
    "text, explanations, or markdown code fences before or after the JSON object."
)
_APPENDIX_HINT = (
    "end the file with <details><summary>Machine-Readable Configuration</summary>, one ```json block "
    "holding the configuration object, and </details>"
)


class AnalysisVariant(BaseModel):
    """One way of analysing a text with this framework (``default`` always exists)."""

    model_config = ConfigDict(frozen=True)

    description: str = ""
    analysis_prompt: str


class OutputContract(BaseModel):
    """What the analysis answer must contain: field -> type string or JSON-Schema object."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: dict[str, Any] = Field(alias="schema")
    instructions: str = ""
    embedded_csv_requirements: dict[str, Any] = Field(default_factory=dict)
    required: list[str] | None = Field(
        default=None, description="Fields an answer must have; None means all (v4/v5 contracts)."
    )

    def field_types(self, name: str) -> set[str]:
        """The JSON types a field may take ('null' included when the contract allows it)."""
        return contract_field_types(self.schema_[name])

    def numeric_fields(self) -> set[str]:
        return {k for k in self.schema_ if self.field_types(k) & _NUMERIC}

    def object_fields(self) -> list[str]:
        return [k for k in self.schema_ if "object" in self.field_types(k)]


class Framework(BaseModel):
    """A loaded framework; ``calculation_spec`` holds only computable formulas (prose is in notes)."""

    name: str
    version: str
    display_name: str
    spec_version: str = Field(description="'4', '5' or '10': which spec style the file follows.")
    path: Path
    sha256: str = Field(description="sha256 of the file's bytes.")
    text: str = Field(repr=False)
    analysis_variants: dict[str, AnalysisVariant]
    calculation_spec: dict[str, str] = Field(default_factory=dict)
    calculation_notes: dict[str, str] = Field(default_factory=dict)
    output_contract: OutputContract
    dimension_groups: dict[str, list[str]] = Field(default_factory=dict)
    reliability_rubric: dict[str, Any] = Field(default_factory=dict)
    dimensions: list[dict[str, Any]] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict, repr=False, description="The raw machine block.")
    warnings: list[str] = Field(default_factory=list)

    def variant(self, name: str = "default") -> AnalysisVariant:
        """The named analysis variant; an unknown name is a SpecError listing the available ones."""
        if name in self.analysis_variants:
            return self.analysis_variants[name]
        available = ", ".join(self.analysis_variants)
        close = difflib.get_close_matches(name, list(self.analysis_variants), n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise SpecError(
            f"unknown analysis variant '{name}'; this framework has: {available}",
            file=self.path,
            field="analysis_variant",
            hint=hint,
        )

    def known_inputs(self) -> set[str] | None:
        """Names formulas may read, or None when the contract nests them in objects (uncheckable)."""
        return None if self.output_contract.object_fields() else self.output_contract.numeric_fields()

    def calculation_plan(self) -> CalculationPlan:
        return build_plan(self.calculation_spec, known_inputs=self.known_inputs(), file=self.path)


# ---------------------------------------------------------------- contract checks


def contract_field_types(spec: Any) -> set[str]:
    """Types of a (checked) contract field given as a type string or a JSON-Schema object."""
    if isinstance(spec, str):
        return {spec}
    if isinstance(spec, dict):
        t = spec.get("type")
        if isinstance(t, list):
            return {str(x) for x in t}
        if isinstance(t, str):
            return {t}
        if "enum" in spec:
            return {_json_type(v) for v in spec["enum"]}
    return set()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "string"


def _check_field(spec: Any, *, field: str, file: Path) -> None:
    """Refuse contract fields whose type we would not know how to ask for or validate."""

    def bad(msg: str, hint: str | None = None) -> SpecError:
        return SpecError(msg, file=file, field=field, hint=hint)

    if isinstance(spec, str):
        if spec not in CONTRACT_TYPES:
            close = difflib.get_close_matches(spec, CONTRACT_TYPES, n=1)
            raise bad(
                f"unknown type '{spec}'; use one of {', '.join(CONTRACT_TYPES)} or a JSON-Schema object",
                hint=f"did you mean '{close[0]}'?" if close else None,
            )
        return
    if not isinstance(spec, dict):
        raise bad(f"must be a type string or a JSON-Schema object, got {type(spec).__name__}")
    t = spec.get("type")
    types = t if isinstance(t, list) else [t] if t is not None else []
    if not types and "enum" not in spec:
        raise bad("a JSON-Schema field needs a 'type' (or an 'enum')")
    for one in types:
        if one not in (*CONTRACT_TYPES, "null"):
            raise bad(f"unknown type {one!r}; use one of {', '.join(CONTRACT_TYPES)}")
    if "enum" in spec and (not isinstance(spec["enum"], list) or not spec["enum"]):
        raise bad("'enum' must be a non-empty list")
    for key in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "maxLength",
        "maxItems",
        "minItems",
    ):
        if key in spec and (isinstance(spec[key], bool) or not isinstance(spec[key], int | float)):
            raise bad(f"'{key}' must be a number")
    if "minimum" in spec and "maximum" in spec and spec["minimum"] > spec["maximum"]:
        raise bad(f"minimum {spec['minimum']} is greater than maximum {spec['maximum']}")
    if "items" in spec:
        _check_field(spec["items"], field=f"{field}.items", file=file)
    props = spec.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise bad("'properties' must be an object")
        for key, sub in props.items():
            _check_field(sub, field=f"{field}.{key}", file=file)


def _contract(raw: Any, *, file: Path, field: str, default_instructions: str | None) -> OutputContract:
    if not isinstance(raw, dict):
        raise SpecError("must be an object with 'schema' and 'instructions'", file=file, field=field)
    for key in ("schema", "instructions"):
        if key not in raw and not (key == "instructions" and default_instructions is not None):
            raise SpecError(f"missing required key '{key}'", file=file, field=f"{field}.{key}")
    schema = raw["schema"]
    if not isinstance(schema, dict) or not schema:
        raise SpecError("must be a non-empty object of field -> type", file=file, field=f"{field}.schema")
    for key, spec in schema.items():
        _check_field(spec, field=f"{field}.schema.{key}", file=file)
    instructions = raw.get("instructions", default_instructions)
    if not isinstance(instructions, str):
        raise SpecError("must be a string", file=file, field=f"{field}.instructions")
    csv = raw.get("embedded_csv_requirements") or {}
    if not isinstance(csv, dict):
        raise SpecError("must be an object", file=file, field=f"{field}.embedded_csv_requirements")
    for name, block in csv.items():
        where = f"{field}.embedded_csv_requirements.{name}"
        if not isinstance(block, dict):
            raise SpecError("must be an object with delimiter_start and delimiter_end", file=file, field=where)
        for key in ("delimiter_start", "delimiter_end"):
            if not isinstance(block.get(key), str) or not block[key].strip():
                raise SpecError(f"missing '{key}' (the exact line that opens/closes the CSV block)",
                                file=file, field=f"{where}.{key}",
                                hint='e.g. "<<<DISCERNUS_SCORES_CSV_v1>>>" and "<<<END_DISCERNUS_SCORES_CSV_v1>>>"')
    required = raw.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SpecError("must be a list of field names", file=file, field=f"{field}.required")
        unknown = [r for r in required if r not in schema]
        if unknown:
            raise SpecError(f"names fields the schema does not have: {', '.join(unknown)}",
                            file=file, field=f"{field}.required")
    return OutputContract(schema=schema, instructions=instructions, embedded_csv_requirements=csv,
                          required=required)


def _variants(raw: Any, *, file: Path) -> dict[str, AnalysisVariant]:
    if not isinstance(raw, dict) or not raw:
        raise SpecError(
            "must be a non-empty object of variant name -> {analysis_prompt}",
            file=file,
            field="analysis_variants",
        )
    if "default" not in raw:
        raise SpecError(
            f"a 'default' variant is required (found: {', '.join(map(str, raw))})",
            file=file,
            field="analysis_variants.default",
        )
    out: dict[str, AnalysisVariant] = {}
    for name, body in raw.items():
        field = f"analysis_variants.{name}"
        if not isinstance(body, dict):
            raise SpecError("must be an object with 'analysis_prompt'", file=file, field=field)
        prompt = body.get("analysis_prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            what = (
                "is missing"
                if prompt is None
                else "is empty"
                if isinstance(prompt, str)
                else "must be a string"
            )
            raise SpecError(f"analysis_prompt {what}", file=file, field=f"{field}.analysis_prompt")
        desc = body.get("description", "")
        out[str(name)] = AnalysisVariant(
            description=desc if isinstance(desc, str) else str(desc), analysis_prompt=prompt
        )
    return out


# ---------------------------------------------------------------- locating the machine block


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key '{key}'")
        out[key] = value
    return out


def _json_block(block: CodeBlock, *, file: Path) -> dict[str, Any]:
    try:
        data = json.loads(block.body, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        line = block.first_line + exc.lineno - 1
        raise SpecError(
            f"invalid JSON at line {line}, column {exc.colno}: {exc.msg}", file=file, field="json_appendix"
        ) from exc
    except ValueError as exc:
        raise SpecError(
            f"invalid JSON in the block at line {block.fence_line}: {exc}", file=file, field="json_appendix"
        ) from exc
    if not isinstance(data, dict):
        raise SpecError("the ```json block must hold one object {...}", file=file, field="json_appendix")
    return data


def _find_config(text: str, file: Path) -> tuple[str, dict[str, Any]]:
    """("json", config) for v4/v5 files, ("yaml", config) for the v10 style."""
    blocks = fenced_blocks(text)
    json_blocks = [b for b in blocks if b.lang == "json"]
    if len(json_blocks) > 1:
        lines = ", ".join(str(b.fence_line) for b in json_blocks)
        raise SpecError(
            f"found {len(json_blocks)} ```json blocks (lines {lines}); a framework has exactly one",
            file=file,
            field="json_appendix",
            hint="keep the configuration in one block; mark examples as ```text instead of ```json",
        )
    if json_blocks:
        return "json", _json_block(json_blocks[0], file=file)
    candidates: list[dict[str, Any]] = []
    for b in blocks:
        if b.lang in ("yaml", "yml"):
            data = yaml_load(b.body, file=file, field="yaml_block", line_offset=b.first_line - 1)
            if isinstance(data, dict) and "analysis_variants" in data:
                candidates.append(data)
    if len(candidates) == 1:
        return "yaml", candidates[0]
    if len(candidates) > 1:
        raise SpecError(
            "found several ```yaml blocks with analysis_variants; keep exactly one",
            file=file,
            field="yaml_block",
        )
    unlabelled = any(b.lang == "" and b.body.lstrip().startswith("{") for b in blocks)
    hint = (
        "a ``` block holds JSON but is not labelled: open it with ```json" if unlabelled else _APPENDIX_HINT
    )
    raise SpecError("no ```json configuration block found", file=file, field="json_appendix", hint=hint)


def _require(config: dict[str, Any], key: str, *, file: Path, prefix: str = "") -> Any:
    if key not in config or config[key] in (None, ""):
        present = ", ".join(config) or "(nothing)"
        raise SpecError(
            f"missing required key '{key}' (the block has: {present})", file=file, field=f"{prefix}{key}"
        )
    return config[key]


# ---------------------------------------------------------------- v10 helpers


def _resolve_refs(node: Any, definitions: dict[str, Any], *, file: Path, depth: int = 0) -> Any:
    """Inline local ``$ref``s so the contract is self-contained (what providers accept)."""
    if depth > 20:
        raise SpecError("$ref nesting is too deep (recursive definitions?)", file=file, field="output_schema")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if not ref.startswith("#/") or name not in definitions:
                raise SpecError(f"cannot resolve $ref {ref!r}", file=file, field="output_schema")
            merged = {**copy.deepcopy(definitions[name]), **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve_refs(merged, definitions, file=file, depth=depth + 1)
        return {k: _resolve_refs(v, definitions, file=file, depth=depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, definitions, file=file, depth=depth) for v in node]
    return node


def _v10_contract(config: dict[str, Any], file: Path) -> OutputContract:
    if "output_contract" in config:
        return _contract(
            config["output_contract"],
            file=file,
            field="output_contract",
            default_instructions=DEFAULT_INSTRUCTIONS,
        )
    schema = _require(config, "output_schema", file=file)
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        raise SpecError("must be a JSON-Schema object with 'properties'", file=file, field="output_schema")
    definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    props = _resolve_refs(schema["properties"], definitions, file=file)
    contract: dict[str, Any] = {"schema": props}
    if "required" in schema:
        contract["required"] = schema["required"]
    return _contract(contract, file=file, field="output_schema", default_instructions=DEFAULT_INSTRUCTIONS)


def _v10_formulas(config: dict[str, Any], file: Path) -> Any:
    if "calculation_spec" in config:
        return config["calculation_spec"]
    metrics = config.get("derived_metrics") or []
    if isinstance(metrics, dict):
        return metrics
    if not isinstance(metrics, list):
        raise SpecError("must be a list of {name, formula}", file=file, field="derived_metrics")
    out: dict[str, Any] = {}
    for i, item in enumerate(metrics):
        formula = item.get("formula", item.get("expression")) if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or formula is None:
            raise SpecError("each entry needs 'name' and 'formula'", file=file, field=f"derived_metrics[{i}]")
        out[item["name"]] = formula
    return out


# ---------------------------------------------------------------- calculation_spec


def _calculations(
    raw: Any, contract: OutputContract, file: Path
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Split formulas from prose notes, and check the formulas (syntax, safety, cycles, variables)."""
    if raw is None:
        return {}, {}, []
    if not isinstance(raw, dict):
        raise FormulaError("must be an object of metric name -> formula", file=file, field="calculation_spec")
    formulas: dict[str, Any] = {}
    notes: dict[str, str] = {}
    warnings: list[str] = []
    for name, value in raw.items():
        if isinstance(value, str) and is_prose(value):
            notes[name] = value
            warnings.append(
                f"calculation_spec.{name}: prose, not a formula - kept as a note and not computed"
            )
        else:
            formulas[name] = value
    plan = build_plan(formulas, known_inputs=None, file=file)
    nested = contract.object_fields()
    if formulas and nested:
        warnings.append(
            "calculation_spec: formula variables cannot be checked at load because the output contract "
            f"nests values in object fields ({', '.join(nested)}); missing inputs will compute as None"
        )
    elif formulas:
        numeric = contract.numeric_fields()
        for metric, used in plan.dependencies.items():
            for var in sorted(used - set(formulas)):
                if var in contract.schema_ and var not in numeric:
                    kinds = "/".join(sorted(contract.field_types(var)))
                    raise FormulaError(
                        f"variable '{var}' is a {kinds} field of the output contract; formulas need number or integer fields",
                        file=file,
                        field=f"calculation_spec.{metric}",
                    )
        build_plan(formulas, known_inputs=numeric, file=file)
    for first, second in plan.duplicates():
        warnings.append(
            f"calculation_spec.{second}: same formula as {first} (after normalisation) - probably a copy-paste mistake"
        )
    return {k: str(v) for k, v in formulas.items()}, notes, warnings


# ---------------------------------------------------------------- the loader


def load_framework(path: str | Path) -> Framework:
    """Load and check a framework file (v4, v5 or v10 style); every problem is a named SpecError."""
    raw = read_spec_file(path, what="framework")
    file = raw.path
    style, config = _find_config(raw.text, file)
    warnings: list[str] = []
    dimensions: list[dict[str, Any]] = []

    if style == "json":
        name = _require(config, "name", file=file)
        version = _require(config, "version", file=file)
        variants = _variants(_require(config, "analysis_variants", file=file), file=file)
        contract = _contract(
            _require(config, "output_contract", file=file),
            file=file,
            field="output_contract",
            default_instructions=None,
        )
        display = config.get("display_name") or name
        csv = contract.embedded_csv_requirements
        is_v5 = str(version).lstrip("vV").startswith("5") or any(k in config for k in _V5_KEYS) or bool(csv)
        spec_version = "5" if is_v5 else "4"
        formulas_raw = config.get("calculation_spec")
    else:
        meta = _require(config, "metadata", file=file)
        if not isinstance(meta, dict):
            raise SpecError("must be an object", file=file, field="metadata")
        name = meta.get("framework_name") or meta.get("name")
        if not name:
            raise SpecError(
                "missing required key 'framework_name'", file=file, field="metadata.framework_name"
            )
        version = meta.get("framework_version") or meta.get("version") or "unversioned"
        display = meta.get("display_name") or name
        variants = _variants(_require(config, "analysis_variants", file=file), file=file)
        contract = _v10_contract(config, file)
        spec_version = "10"
        formulas_raw = _v10_formulas(config, file)
        dims = config.get("dimensions") or []
        if not isinstance(dims, list) or not all(isinstance(d, dict) for d in dims):
            raise SpecError("must be a list of objects", file=file, field="dimensions")
        for i, dim in enumerate(dims):
            if not isinstance(dim.get("name"), str) or not dim["name"].strip():
                raise SpecError("each dimension needs a 'name'", file=file, field=f"dimensions[{i}]")
        dimensions = dims

    groups = config.get("dimension_groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise SpecError(
            "must be an object of group name -> list of dimensions", file=file, field="dimension_groups"
        )
    rubric = config.get("reliability_rubric") or {}
    if not isinstance(rubric, dict):
        raise SpecError("must be an object", file=file, field="reliability_rubric")
    if spec_version == "5" and len(raw.text) > _V5_MAX_CHARS:
        warnings.append(
            f"framework is {len(raw.text)} characters; Framework Spec v5 asks for at most {_V5_MAX_CHARS}"
        )

    formulas, notes, calc_warnings = _calculations(formulas_raw, contract, file)
    return Framework(
        name=str(name),
        version=str(version),
        display_name=str(display),
        spec_version=spec_version,
        path=file,
        sha256=raw.sha256,
        text=raw.text,
        analysis_variants=variants,
        calculation_spec=formulas,
        calculation_notes=notes,
        output_contract=contract,
        dimension_groups={str(k): [str(x) for x in v] for k, v in groups.items()},
        reliability_rubric=rubric,
        dimensions=dimensions,
        config=config,
        warnings=warnings + calc_warnings,
    )
