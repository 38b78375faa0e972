"""What a run will cost and how long its rate limits make it take, before anything is sent.

The analysis prompts are built exactly as the session will build them (the same
:class:`~mva_dagster.steps.context.SessionContext` code, on the planned documents) and counted with
litellm's tokenizer for each model. Answers do not exist yet, so their length is modelled from the
output contract's JSON Schema: an obedient answer fills every field (numbers, enums, evidence
quotes of typical length), pretty-printed as models return it. Around that:

* **low** - compact JSON answers with short quotes; no re-asks and no extraction calls;
* **expected** - typical answers, counted halfway between compact JSON (what strict structured
  output returns) and indented JSON (what many models write); a few re-asks of unusable answers
  and LLM extraction transforms (fewer for models with structured output);
* **high** - indented answers half as long again (prose around the JSON), long quotes, the
  response schema billed as input (some providers do), and more re-asks and transforms;
* **ceiling** - every answer at ``max_tokens``: what the budget check reserves, and the most the
  run can cost whatever the models write (thinking models bill their reasoning as output: for
  them the truth lies between *expected* and *ceiling*).

Plus one synthesis call per session, and the minutes the registry's rpm/tpm imply (models run in
parallel, each under its own limits).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mva_dagster.llm import cost as cost_ledger
from mva_dagster.llm.registry import ModelEntry, Registry, load_registry

if TYPE_CHECKING:
    from mva_dagster.launch import Plan
    from mva_dagster.steps.context import SessionContext

SCENARIOS = ("low", "expected", "high")
# Shares of analysis calls that need a second analysis call (re-ask) or an LLM extraction transform,
# for models with structured output (the answer is schema-constrained) and without.
REASK_SHARE = {True: {"low": 0.0, "expected": 0.01, "high": 0.10}, False: {"low": 0.0, "expected": 0.05, "high": 0.20}}
TRANSFORM_SHARE = {True: {"low": 0.0, "expected": 0.01, "high": 0.15},
                   False: {"low": 0.0, "expected": 0.10, "high": 0.30}}
HIGH_ANSWER_SCALE = 1.5
QUOTE_WORDS = {"low": 5, "expected": 8, "high": 12}
TEXT_CHARS = {"low": 20, "expected": 60, "high": 120}  # free-text string fields
# Synthesis: one call per session, its prompt the computed tables plus a few quotes per document,
# its answer a concise results section in five parts.
SYNTHESIS_PROMPT_BASE_TOKENS = 1200
SYNTHESIS_TOKENS_PER_DOCUMENT = 120
SYNTHESIS_OUTPUT_TOKENS = {"low": 400, "expected": 800, "high": 2000}
_QUOTE = ("the nation will rise together and build a stronger future for every family across the land "
          "with courage hope and shared purpose")  # stands in for a quotation of the document
_WORDS = _QUOTE.split(" ")


@dataclass
class CallGroup:
    """One kind of call for one model: how many, tokens, and cost per scenario (USD)."""

    purpose: str
    model: str
    calls: dict[str, float]
    prompt_tokens: dict[str, float]
    output_tokens: dict[str, float]
    cost_usd: dict[str, float]
    ceiling_usd: float


@dataclass
class Estimate:
    experiment: str
    provider: str
    documents: int
    models: list[str]
    runs_per_model: int
    analysis_calls: int
    groups: list[CallGroup] = field(default_factory=list)
    minutes: dict[str, float] = field(default_factory=dict)  # per model, from rpm/tpm
    notes: list[str] = field(default_factory=list)

    def total(self, scenario: str) -> float:
        return sum(g.cost_usd[scenario] for g in self.groups)

    @property
    def ceiling_usd(self) -> float:
        return sum(g.ceiling_usd for g in self.groups)

    @property
    def rate_limit_minutes(self) -> float:
        return max(self.minutes.values(), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_usd"] = {s: round(self.total(s), 6) for s in SCENARIOS}
        data["ceiling_usd"] = round(self.ceiling_usd, 6)
        data["rate_limit_minutes"] = round(self.rate_limit_minutes, 2)
        return data


def typical_answer(schema: dict[str, Any], scenario: str = "expected") -> Any:
    """A plausible instance of ``schema``: what an obedient model writes, field by field."""
    return _instance(schema, schema, scenario, name="", in_array=False, depth=0)


def _instance(node: Any, root: dict[str, Any], scenario: str, *, name: str, in_array: bool, depth: int) -> Any:
    if not isinstance(node, dict) or depth > 12:
        return None
    if "$ref" in node and isinstance(node["$ref"], str) and node["$ref"].startswith("#"):
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if part and isinstance(target, dict) else target
        return _instance(target, root, scenario, name=name, in_array=in_array, depth=depth + 1)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            options = [o for o in node[key] if isinstance(o, dict) and o.get("type") != "null"]
            return _instance(options[0] if options else {}, root, scenario, name=name, in_array=in_array,
                             depth=depth + 1)
    if "enum" in node and node["enum"]:
        return node["enum"][0]
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in node:
        props = node.get("properties") or {}
        return {key: _instance(value, root, scenario, name=key, in_array=False, depth=depth + 1)
                for key, value in props.items()}
    if kind == "array":
        low, high = int(node.get("minItems", 0)), node.get("maxItems")
        count = max(low, 2) if high is None else min(int(high), max(low, 2))
        return [_instance(node.get("items") or {}, root, scenario, name=name, in_array=True, depth=depth + 1)
                for _ in range(count)]
    if kind == "string":
        evidence = in_array or any(w in name.lower() for w in ("evidence", "quote"))
        if evidence:
            text = " ".join(_WORDS[: QUOTE_WORDS[scenario]])
        else:
            text = (" ".join(_WORDS) * 4)[: TEXT_CHARS[scenario]].strip()
        if isinstance(node.get("maxLength"), int):
            text = text[: node["maxLength"]]
        return text
    if kind == "integer":
        return int(node.get("maximum", 10) or 10) // 2
    if kind == "number":
        return 0.5 if scenario == "low" else 0.625
    if kind == "boolean":
        return True
    return None


def answer_text(schema: dict[str, Any], scenario: str, *, indent: bool | None = None) -> str:
    """The typical answer as text: compact JSON for ``low``, indented for ``high`` (or as asked)."""
    instance = typical_answer(schema, scenario)
    if indent is None:
        indent = scenario == "high"
    if not indent:
        return json.dumps(instance, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(instance, indent=2, ensure_ascii=False)


def answer_tokens(entry: ModelEntry, schema: dict[str, Any]) -> dict[str, float]:
    """Output tokens of one answer per scenario, counted with the model's tokenizer."""
    compact = _tokens(entry, answer_text(schema, "expected", indent=False))
    indented = _tokens(entry, answer_text(schema, "expected", indent=True))
    return {"low": float(_tokens(entry, answer_text(schema, "low"))),
            "expected": (compact + indented) / 2,
            "high": _tokens(entry, answer_text(schema, "high")) * HIGH_ANSWER_SCALE}


def _prompt_context(plan: Plan) -> SessionContext:
    """A session context for the planned session that does not exist yet: same prompts, no files.

    The framework is handed over directly (a real session reads its snapshot, checked by hash),
    so the requests - and their token counts - are the ones the session will send.
    """
    from mva_dagster.sessions.layout import SessionLayout
    from mva_dagster.sessions.manager import DocumentEntry, SessionManifest
    from mva_dagster.steps.context import SessionContext

    documents = [DocumentEntry(id=d.id, path=str(d.path.resolve()), sha256=d.sha256, n_words=d.n_words,
                               metadata=dict(d.metadata)) for d in plan.corpus.documents]
    manifest = SessionManifest(
        session_id="session_estimate", project=plan.project_dir.name, experiment=plan.experiment_name,
        created_at="", provider=plan.provider, models=plan.models, runs_per_model=plan.experiment.runs_per_model,
        analysis_variant=plan.experiment.analysis_variant, generation=plan.generation,
        prompt_metadata=list(plan.experiment.prompt_metadata), experiment_source=str(plan.experiment.path),
        experiment_sha256=plan.experiment.sha256, framework_source=str(plan.experiment.framework_file),
        framework_sha256="", framework_name=plan.framework.name, framework_version=plan.framework.version,
        corpus_path=str(plan.corpus.path), corpus_sha256=plan.corpus.sha256, documents=documents)
    ctx = SessionContext(layout=SessionLayout(plan.project_dir / "_estimate"), manifest=manifest)
    ctx.__dict__["framework"] = plan.framework  # the cached_property a session fills from its snapshot
    return ctx


def estimate_plan(plan: Plan, registry: Registry | None = None) -> Estimate:
    """The cost range and rate-limit time of a planned session (see the module docstring)."""
    registry = registry or load_registry()
    ctx = _prompt_context(plan)
    runs = plan.experiment.runs_per_model
    docs = [d.id for d in plan.corpus.documents]
    estimate = Estimate(experiment=plan.experiment_name, provider=plan.provider, documents=len(docs),
                        models=list(plan.models), runs_per_model=runs, analysis_calls=plan.calls)
    max_tokens = int(plan.generation.get("max_tokens") or 0)
    schema = ctx.json_schema
    per_model_tokens: dict[str, float] = {}
    per_model_calls: dict[str, float] = {}
    for model in plan.models:
        entry = registry.resolve(model)
        per_answer = answer_tokens(entry, schema)
        text_tokens = schema_tokens = 0
        for document_id in docs:
            request = ctx.analysis_request(document_id, model, 1)  # replicates differ only by seed
            text = cost_ledger.count_prompt_tokens(entry.litellm_model, request.messages)
            text_tokens += text * runs
            schema_tokens += (cost_ledger.count_prompt_tokens(
                entry.litellm_model, request.messages, request.response_format) - text) * runs
        n = len(docs) * runs
        reask = REASK_SHARE[entry.structured_output]
        calls = {s: n * (1 + reask[s]) for s in SCENARIOS}
        prompt = {s: (text_tokens + (schema_tokens if s == "high" else 0)) * (1 + reask[s]) for s in SCENARIOS}
        output = {s: calls[s] * per_answer[s] for s in SCENARIOS}
        cap = min(max_tokens or entry.max_output_tokens, entry.max_output_tokens)
        reserved = cost_ledger.reserved_prompt_tokens((text_tokens + schema_tokens) // max(n, 1))
        estimate.groups.append(CallGroup(
            purpose="analysis", model=entry.name, calls=calls, prompt_tokens=prompt, output_tokens=output,
            cost_usd={s: entry.cost(int(prompt[s]), int(output[s])) for s in SCENARIOS},
            ceiling_usd=entry.cost(reserved * n, cap * n) * (1 + reask["high"])))
        per_model_calls[entry.name] = per_model_calls.get(entry.name, 0) + calls["expected"]
        per_model_tokens[entry.name] = per_model_tokens.get(entry.name, 0) + prompt["expected"] + output["expected"]
        estimate.groups.append(_transforms(ctx, plan, registry, schema, n, entry.structured_output))
    estimate.groups.append(_synthesis(plan, registry, len(docs)))
    for group in estimate.groups[-len(plan.models) - 1:]:
        if group.purpose in ("extraction", "synthesis"):
            per_model_calls[group.model] = per_model_calls.get(group.model, 0) + group.calls["expected"]
            per_model_tokens[group.model] = per_model_tokens.get(group.model, 0) + \
                group.prompt_tokens["expected"] + group.output_tokens["expected"]
    for model, calls_n in per_model_calls.items():
        entry = registry.resolve(model)
        estimate.minutes[model] = max(calls_n / entry.client_rpm, per_model_tokens[model] / entry.tpm)
    if plan.provider != "real":
        estimate.notes.append(f"provider '{plan.provider}': nothing is paid; the amounts are what the same "
                              "run would cost with the real providers" if plan.provider == "simulated"
                              else f"provider '{plan.provider}': nothing is paid (local model)")
    estimate.notes.append("thinking models bill their reasoning as output tokens; for them the cost lies "
                          "between 'expected' and 'ceiling'")
    return estimate


def _tokens(entry: ModelEntry, text: str) -> int:
    return cost_ledger.count_prompt_tokens(entry.litellm_model, [{"role": "assistant", "content": text}]) - 3


def _transforms(ctx: SessionContext, plan: Plan, registry: Registry, schema: dict[str, Any], n: int,
                structured: bool) -> CallGroup:
    """LLM extraction transforms: a share of the answers, each one the answer plus the flat schema."""
    from mva_dagster.extraction.transform import transform_request
    from mva_dagster.steps.context import structured_output

    model = registry.resolve(plan.experiment.extraction_model or "gemini-2.5-flash")
    request = transform_request(session_id="estimate", document_id="estimate", replicate=1, model=model.name,
                                raw_text=answer_text(schema, "high"), shape=ctx.record_shape,
                                max_tokens=min(8192, model.max_output_tokens),
                                structured_output=structured_output(model.name))
    prompt_each = cost_ledger.count_prompt_tokens(model.litellm_model, request.messages, request.response_format)
    flat = {f.name: 0.625 for f in ctx.record_shape.fields}
    output_each = _tokens(model, json.dumps(flat, indent=1))
    calls = {s: n * TRANSFORM_SHARE[structured][s] for s in SCENARIOS}
    prompt = {s: calls[s] * prompt_each for s in SCENARIOS}
    output = {s: calls[s] * output_each for s in SCENARIOS}
    return CallGroup(purpose="extraction", model=model.name, calls=calls, prompt_tokens=prompt,
                     output_tokens=output,
                     cost_usd={s: model.cost(int(prompt[s]), int(output[s])) for s in SCENARIOS},
                     ceiling_usd=model.cost(int(prompt["high"]), int(calls["high"]) * min(8192, model.max_output_tokens)))


def _synthesis(plan: Plan, registry: Registry, documents: int) -> CallGroup:
    model = registry.resolve(plan.experiment.synthesis_model or plan.models[0])
    prompt_each = SYNTHESIS_PROMPT_BASE_TOKENS + SYNTHESIS_TOKENS_PER_DOCUMENT * documents
    calls = {s: 1.0 for s in SCENARIOS}
    prompt = {s: float(prompt_each) for s in SCENARIOS}
    output = {s: float(SYNTHESIS_OUTPUT_TOKENS[s]) for s in SCENARIOS}
    return CallGroup(purpose="synthesis", model=model.name, calls=calls, prompt_tokens=prompt,
                     output_tokens=output,
                     cost_usd={s: model.cost(int(prompt[s]), int(output[s])) for s in SCENARIOS},
                     ceiling_usd=model.cost(prompt_each, min(8192, model.max_output_tokens)))


def render(estimate: Estimate) -> str:
    """The estimate as `mva estimate` and `mva run` print it."""
    lines = [f"Estimate for {estimate.experiment}: {estimate.documents} documents x {len(estimate.models)} "
             f"model(s) x {estimate.runs_per_model} run(s) = {estimate.analysis_calls} analysis calls "
             f"(provider '{estimate.provider}')",
             f"  {'purpose':<11}{'model':<20}{'calls':>7}{'prompt tok':>12}{'output tok':>12}"
             f"{'low':>11}{'expected':>11}{'high':>11}"]
    for g in estimate.groups:
        lines.append(f"  {g.purpose:<11}{g.model:<20}{g.calls['expected']:>7.1f}{g.prompt_tokens['expected']:>12,.0f}"
                     f"{g.output_tokens['expected']:>12,.0f}{_usd(g.cost_usd['low']):>11}"
                     f"{_usd(g.cost_usd['expected']):>11}{_usd(g.cost_usd['high']):>11}")
    lines.append(f"  {'total':<50}{_usd(estimate.total('low')):>30}{_usd(estimate.total('expected')):>11}"
                 f"{_usd(estimate.total('high')):>11}")
    lines.append(f"  ceiling (every answer at max_tokens; what budgets reserve): {_usd(estimate.ceiling_usd)}")
    pace = ", ".join(f"{m} {v:.1f} min" for m, v in estimate.minutes.items())
    lines.append(f"  rate limits (rpm/tpm in models.yaml) allow it in no less than {_minutes(estimate.rate_limit_minutes)}"
                 f" ({pace})")
    lines += [f"  note: {note}" for note in estimate.notes]
    return "\n".join(lines)


def _usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _minutes(value: float) -> str:
    if value < 1:
        return f"{math.ceil(value * 60)} s"
    return f"{value:.1f} min" if value < 120 else f"{value / 60:.1f} h"
