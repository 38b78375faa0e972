"""Experiment files: what to run (framework, corpus, models, replicates), never how.

Two shapes are accepted and mapped onto one :class:`Experiment` (``spec_version`` says which):

* Experiment Specification v2 - YAML at the top of ``experiment.md`` (or ``experiment.yaml``):
  either front matter between two ``---`` lines, or plain YAML (comments allowed) that ends at the
  first line that is exactly ``---``; Markdown prose may follow.
* The "v10" style - Markdown with a ```yaml block holding ``metadata`` and ``components``.

Paths inside the file are resolved relative to the experiment file, and the framework file must
exist, so a typo is reported at load and not after the first paid call.
``docs/writing-experiments.md`` documents every field.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mva_dagster.errors import SpecError
from mva_dagster.specs._markdown import fenced_blocks, read_spec_file, yaml_load

__all__ = ["DEFAULT_GENERATION", "Experiment", "load_experiment"]

EXPERIMENT_FILENAMES = ("experiment.md", "experiment.yaml", "experiment.yml")
DEFAULT_GENERATION: dict[str, Any] = {"temperature": 0.0, "max_tokens": 4096}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_YAML_START = re.compile(r"^[A-Za-z_][\w-]*\s*:(\s|$)")
_KNOWN_KEYS = {
    "name", "description", "hypothesis", "hypotheses", "framework", "framework_file", "corpus",
    "models", "num_runs", "runs_per_model", "analysis_variant", "statistical_plan", "schedule",
    "budget", "prompt_metadata", "generation", "workflow", "definition_of_success", "metadata",
    "components", "alerts", "synthesis_model", "extraction_model", "fallbacks",
}  # fmt: skip
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_CRON_NAMES = {
    "month": {"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"},
    "day-of-week": {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"},
}


class Experiment(BaseModel):
    """A loaded experiment; paths are absolute and the framework file is known to exist."""

    name: str
    description: str = ""
    spec_version: str = Field(description="'2' (YAML front matter) or '10' (```yaml block).")
    path: Path
    dir: Path
    sha256: str
    text: str = Field(repr=False)
    framework_file: Path
    analysis_variant: str = "default"
    models: list[str] = Field(default_factory=list, description="Empty when the file names none (v10).")
    runs_per_model: int = 1
    corpus: Path | None = None
    hypotheses: dict[str, str] = Field(default_factory=dict)
    statistical_plan: list[Any] = Field(default_factory=list)
    schedule: str | None = None
    budget: float | None = Field(default=None, description="USD cap for one session, or None.")
    experiment_budget: float | None = Field(default=None, description="USD cap for all sessions of it.")
    project_budget: float | None = Field(default=None, description="USD cap for the whole project.")
    budget_webhook: str | None = Field(default=None, description="URL POSTed budget alerts (50/80/100 %).")
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="model -> models the proxy may answer with when it fails (recorded)."
    )
    prompt_metadata: list[str] = Field(default_factory=list)
    generation: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_GENERATION))
    alerts: list[str] = Field(
        default_factory=list, description="Threshold rules such as 'fear_score > 0.8' (calc/formula syntax)."
    )
    synthesis_model: str | None = Field(default=None, description="Writes the synthesis; default: models[0].")
    extraction_model: str | None = Field(
        default=None, description="Transforms answers the parser cannot read; default gemini-2.5-flash."
    )
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)
    warnings: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- finding the YAML


def _front_matter(text: str, file: Path) -> tuple[str, int] | None:
    """(yaml text, lines before it) for v2 files, or None when the file does not start with YAML."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].rstrip() in ("---", "..."):
                return "\n".join(lines[1:i]), 1
        if file.suffix.lower() in (".yaml", ".yml"):
            return "\n".join(lines[1:]), 1  # a plain YAML file that opens with a document marker
        raise SpecError(
            "YAML front matter opened by '---' on line 1 is never closed",
            file=file,
            field="front_matter",
            hint="add a line containing only '---' after the last YAML line",
        )
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None or not _YAML_START.match(first):
        return None
    end = next((i for i, ln in enumerate(lines) if ln.rstrip() == "---"), len(lines))
    return "\n".join(lines[:end]), 0


def _yaml_config(text: str, file: Path) -> tuple[str, dict[str, Any]]:
    """("2", mapping) for front-matter files, ("10", mapping) for a ```yaml block with components."""
    if not text.lstrip().startswith("---"):
        blocks = []
        for b in fenced_blocks(text):
            if b.lang in ("yaml", "yml"):
                data = yaml_load(b.body, file=file, field="yaml_block", line_offset=b.first_line - 1)
                if isinstance(data, dict) and ("components" in data or "metadata" in data):
                    blocks.append(data)
        if len(blocks) > 1:
            raise SpecError(
                "found several ```yaml blocks with metadata/components; keep one",
                file=file,
                field="yaml_block",
            )
        if blocks:
            return "10", blocks[0]
    found = _front_matter(text, file)
    if found is None:
        raise SpecError(
            "no YAML found",
            file=file,
            field="front_matter",
            hint="start the file with YAML between two '---' lines (name:, framework_file:, models: ...)",
        )
    body, offset = found
    data = yaml_load(body, file=file, field="front_matter", line_offset=offset)
    if not isinstance(data, dict):
        raise SpecError("the YAML must be a mapping of key: value", file=file, field="front_matter")
    return "2", data


def _flatten_v10(data: dict[str, Any], file: Path) -> dict[str, Any]:
    meta = data.get("metadata") or {}
    comps = data.get("components") or {}
    for key, value in (("metadata", meta), ("components", comps)):
        if not isinstance(value, dict):
            raise SpecError("must be a mapping", file=file, field=key)
    flat = {k: v for k, v in data.items() if k not in ("metadata", "components")}
    if "name" not in flat and (meta.get("experiment_name") or meta.get("name")):
        flat["name"] = meta.get("experiment_name") or meta.get("name")
    if "framework" in comps and "framework" not in flat and "framework_file" not in flat:
        flat["framework"] = comps["framework"]
    if "corpus" in comps and "corpus" not in flat:
        flat["corpus"] = comps["corpus"]
    return flat


# ---------------------------------------------------------------- field checks


def _err(msg: str, file: Path, field: str, hint: str | None = None) -> SpecError:
    return SpecError(msg, file=file, field=field, hint=hint)


def _sanitize(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:128]
    return clean if clean and clean[0].isalnum() else f"experiment_{clean}".rstrip("_")


def _name(data: dict[str, Any], dir_: Path, file: Path) -> str:
    value = data.get("name")
    if value is None:
        return _sanitize(dir_.name)
    value = str(value).strip()
    if not _NAME.match(value) or ".." in value:
        raise _err(
            f"{value!r} is not a usable name (letters, digits, '.', '_', '-'; starts with a letter or digit)",
            file,
            "name",
            hint=f"for example: {_sanitize(value)}",
        )
    return value


def _positive_int(value: Any, file: Path, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(f"must be a whole number, got {value!r}", file, field)
    if value < 1:
        raise _err(f"must be at least 1, got {value}", file, field)
    return value


def _runs(data: dict[str, Any], file: Path) -> int:
    runs = data.get("runs_per_model")
    num = data.get("num_runs")
    if runs is not None and num is not None and runs != num:
        raise _err(f"runs_per_model ({runs}) and num_runs ({num}) disagree; give one", file, "runs_per_model")
    if runs is not None:
        return _positive_int(runs, file, "runs_per_model")
    return 1 if num is None else _positive_int(num, file, "num_runs")


def _models(value: Any, file: Path) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err(
            f"must be a list of model names, got {type(value).__name__}",
            file,
            "models",
            hint="models:\n  - my-model",
        )
    if not value:
        raise _err(
            "is empty; list at least one model (or leave the key out and pass --model)", file, "models"
        )
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _err(f"entry {i + 1} must be a non-empty string, got {item!r}", file, "models")
        if item.strip() in out:
            raise _err(f"'{item.strip()}' is listed twice", file, "models")
        out.append(item.strip())
    return out


def _str_list(value: Any, file: Path, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
        raise _err("must be a list of non-empty strings", file, field)
    return [x.strip() for x in value]


def _hypotheses(data: dict[str, Any], file: Path) -> dict[str, str]:
    raw = data.get("hypotheses")
    single = data.get("hypothesis")
    out: dict[str, str] = {}
    if raw is not None:
        if not isinstance(raw, dict):
            raise _err("must be a mapping like {H1: '...', H2: '...'}", file, "hypotheses")
        out = {str(k): str(v).strip() for k, v in raw.items()}
    if single is not None:
        if not isinstance(single, str):
            raise _err("must be a string (use 'hypotheses' for several)", file, "hypothesis")
        out.setdefault("H1" if not out else "hypothesis", single.strip())
    return out


def _cron(value: Any, file: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _err(f"must be a cron string like '0 6 * * 1', got {value!r}", file, "schedule")
    parts = value.split()
    if len(parts) != 5:
        raise _err(
            f"{value!r} has {len(parts)} fields; a cron schedule has 5 (minute hour day-of-month month day-of-week)",
            file,
            "schedule",
        )
    for part, (label, lo, hi) in zip(parts, _CRON_FIELDS, strict=True):
        for item in part.split(","):
            base, _, step = item.partition("/")
            ok = not step or (step.isdigit() and int(step) > 0)
            if base != "*":
                ends = base.split("-", 1)
                ok = ok and all(
                    e.upper() in _CRON_NAMES.get(label, set()) or (e.isdigit() and lo <= int(e) <= hi)
                    for e in ends
                )
            if not ok:
                raise _err(
                    f"{value!r}: the {label} field {part!r} is not valid (range {lo}-{hi})", file, "schedule"
                )
    return " ".join(parts)


def _budget(value: Any, file: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().lstrip("$").replace(",", ""))
        except ValueError:
            raise _err(f"must be an amount in USD like 5.00, got {value!r}", file, "budget") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _err(f"must be a non-negative amount in USD, got {value!r}", file, "budget")
    return float(value)


def _budgets(value: Any, file: Path) -> dict[str, Any]:
    """``budget: 5`` (the session) or a mapping of session / experiment / project / webhook."""
    if not isinstance(value, dict):
        return {"session": _budget(value, file)}
    unknown = sorted(set(map(str, value)) - {"session", "experiment", "project", "webhook"})
    if unknown:
        raise _err(f"unknown keys {unknown}", file, "budget",
                   hint="budget: {session: 5.00, experiment: 50.00, project: 200.00, webhook: https://...}")
    out: dict[str, Any] = {level: _budget(value.get(level), file) for level in ("session", "experiment", "project")}
    hook = value.get("webhook")
    if hook is not None and not (isinstance(hook, str) and re.match(r"^https?://\S+$", hook.strip())):
        raise _err(f"webhook must be an http(s) URL, got {hook!r}", file, "budget.webhook")
    out["webhook"] = hook.strip() if isinstance(hook, str) else None
    return out


def _fallbacks(value: Any, file: Path) -> dict[str, list[str]]:
    """``fallbacks: {gemini-2.5-pro: [gemini-2.5-flash]}``: the only way a call may change model."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err("must be a mapping of model -> list of fallback models", file, "fallbacks",
                   hint="fallbacks:\n  gemini-2.5-pro: [gemini-2.5-flash]")
    out: dict[str, list[str]] = {}
    for model, targets in value.items():
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise _err(f"{model}: must be a non-empty list of model names", file, "fallbacks")
        out[str(model).strip()] = [t.strip() for t in targets]
    return out


def _alerts(value: Any, file: Path) -> list[str]:
    """Alert rules, checked for syntax now so a typo fails at load, not after the first paid call.

    Whether each rule's names exist is checked when a session starts, against the output contract.
    """
    from mva_dagster.calc.formula import parse_formula
    from mva_dagster.errors import FormulaError

    rules = _str_list(value, file, "alerts")
    for i, rule in enumerate(rules):
        try:
            parse_formula(rule, name=f"alerts[{i}]")
        except FormulaError as exc:
            raise _err(
                f"rule {rule!r} is not a valid condition: {exc.message.split(': ', 1)[-1]}",
                file,
                f"alerts[{i}]",
                hint=exc.hint or "write a comparison such as 'fear_score > 0.8' (see docs/observability.md)",
            ) from exc
    return rules


def _generation(value: Any, file: Path) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _err("must be a mapping (temperature, max_tokens, seed ...)", file, "generation")
    gen = {**DEFAULT_GENERATION, **value}
    t = gen["temperature"]
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 2:
        raise _err(f"temperature must be a number from 0 to 2, got {t!r}", file, "generation.temperature")
    gen["temperature"] = float(t)
    gen["max_tokens"] = _positive_int(gen["max_tokens"], file, "generation.max_tokens")
    return gen


def _resolve(base: Path, value: Any, file: Path, field: str) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise _err(f"must be a path, got {value!r}", file, field)
    p = Path(str(value).strip()).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


# ---------------------------------------------------------------- the loader


def load_experiment(
    path: str | Path,
    corpus_override: str | Path | None = None,
    *,
    framework_override: str | Path | None = None,
) -> Experiment:
    """Load an experiment file, or the experiment.md/.yaml inside a directory.

    ``corpus_override`` / ``framework_override`` (relative to the working directory) replace what the
    file names - for a different corpus state, or a spec whose recorded paths no longer exist.
    """
    p = Path(path)
    if p.is_dir():
        found = next((p / n for n in EXPERIMENT_FILENAMES if (p / n).is_file()), None)
        if found is None:
            raise SpecError(f"no {' / '.join(EXPERIMENT_FILENAMES)} in this directory", file=p)
        p = found
    raw = read_spec_file(p, what="experiment")
    file = raw.path.resolve()
    base = file.parent
    style, original = _yaml_config(raw.text, file)
    data = _flatten_v10(original, file) if style == "10" else original

    warnings = []
    for key in data:
        if key not in _KNOWN_KEYS:
            close = difflib.get_close_matches(key, sorted(_KNOWN_KEYS), n=1)
            warnings.append(
                f"{key}: unknown key, ignored" + (f" (did you mean '{close[0]}'?)" if close else "")
            )

    if framework_override is not None:
        framework_file = Path(framework_override).expanduser().resolve()
        fw_field = "framework_file (override)"
    else:
        fw_value = data.get("framework_file", data.get("framework"))
        if fw_value is None:
            raise _err("missing required key 'framework_file' (or 'framework')", file, "framework_file")
        framework_file = _resolve(base, fw_value, file, "framework_file")
        fw_field = "framework_file"
    if not framework_file.is_file():
        raise _err(
            f"framework file not found: {framework_file}",
            file,
            fw_field,
            hint="paths are relative to the experiment file's folder",
        )

    corpus: Path | None = None
    if corpus_override is not None:
        corpus = Path(corpus_override).expanduser().resolve()
        if not corpus.exists():
            raise _err(f"corpus not found: {corpus}", file, "corpus (override)")
    elif data.get("corpus") is not None:
        corpus = _resolve(base, data["corpus"], file, "corpus")
        nested = base / "corpus" / str(data["corpus"]).strip()
        if not corpus.exists() and style == "10" and nested.exists():
            corpus = nested.resolve()  # v10 projects keep the corpus manifest in ./corpus/
        if not corpus.exists():
            # Not an error here: a corpus may be built later (`mva demo`) or replaced by an override;
            # load_corpus names the missing path when the corpus is actually needed.
            warnings.append(f"corpus: {corpus} does not exist (yet)")

    variant = data.get("analysis_variant", "default")
    if not isinstance(variant, str) or not variant.strip():
        raise _err(f"must be a variant name, got {variant!r}", file, "analysis_variant")
    description = data.get("description") or ""
    plan = data.get("statistical_plan") or []
    if not isinstance(plan, list):
        raise _err("must be a list of tests", file, "statistical_plan")
    synthesis_model = data.get("synthesis_model")
    if synthesis_model is not None and not (isinstance(synthesis_model, str) and synthesis_model.strip()):
        raise _err(f"must be a model alias, got {synthesis_model!r}", file, "synthesis_model")
    extraction_model = data.get("extraction_model")
    if extraction_model is not None and not (isinstance(extraction_model, str) and extraction_model.strip()):
        raise _err(f"must be a model alias, got {extraction_model!r}", file, "extraction_model")

    budgets = _budgets(data.get("budget"), file)
    return Experiment(
        name=_name(data, base, file),
        description=str(description).strip(),
        spec_version=style,
        path=file,
        dir=base,
        sha256=raw.sha256,
        text=raw.text,
        framework_file=framework_file,
        analysis_variant=variant.strip(),
        models=_models(data.get("models"), file),
        runs_per_model=_runs(data, file),
        corpus=corpus,
        hypotheses=_hypotheses(data, file),
        statistical_plan=plan,
        schedule=_cron(data.get("schedule"), file),
        budget=budgets["session"],
        experiment_budget=budgets.get("experiment"),
        project_budget=budgets.get("project"),
        budget_webhook=budgets.get("webhook"),
        fallbacks=_fallbacks(data.get("fallbacks"), file),
        prompt_metadata=_str_list(data.get("prompt_metadata"), file, "prompt_metadata"),
        generation=_generation(data.get("generation"), file),
        alerts=_alerts(data.get("alerts"), file),
        synthesis_model=synthesis_model.strip() if synthesis_model else None,
        extraction_model=extraction_model.strip() if extraction_model else None,
        raw=original,
        warnings=warnings,
    )
