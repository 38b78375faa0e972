"""The model registry: which models exist, what they cost, and how hard we may call them.

``models.yaml`` (next to this module) is the one place that knows a model's provider, LiteLLM
route, prices and limits. The proxy config, the budget checks and the cost reports all read it, so
a price changed here is a price changed everywhere. Experiments name models by alias; everything
downstream uses the canonical alias that :meth:`Registry.resolve` returns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mva_dagster.errors import SpecError

DEFAULT_REGISTRY_PATH = Path(__file__).with_name("models.yaml")
REGISTRY_ENV = "MVA_MODEL_REGISTRY"  # another models.yaml: your account's quotas, without editing the package

Provider = Literal["vertex_ai", "gemini", "anthropic", "openai", "local"]


class ModelEntry(BaseModel):
    """One model as the proxy serves it: route, credentials, prices (USD per token), limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="canonical alias: the proxy's model_name")
    provider: Provider
    litellm_model: str = Field(description="LiteLLM route used in real mode, e.g. vertex_ai/gemini-2.5-pro")
    aliases: tuple[str, ...] = ()
    env: tuple[str, ...] = Field(default=(), description="environment variables the real provider needs")
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    input_cost_per_token: float = Field(ge=0)
    output_cost_per_token: float = Field(ge=0)
    rpm: int = Field(gt=0)
    tpm: int = Field(gt=0)
    timeout_s: float = Field(gt=0)
    max_concurrency: int = Field(gt=0)
    allowed_fails: int = Field(
        default=3, ge=1, description="5xx/timeouts in a cooldown window before the proxy's circuit opens"
    )
    cooldown_s: float = Field(default=15.0, gt=0, description="how long the circuit stays open")
    structured_output: bool = False
    notes: str = ""

    @property
    def all_names(self) -> tuple[str, ...]:
        """Every name that resolves to this entry, canonical alias first."""
        return (self.name, *self.aliases)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call with these token counts costs at list price (USD)."""
        return prompt_tokens * self.input_cost_per_token + completion_tokens * self.output_cost_per_token

    @property
    def client_concurrency(self) -> int:
        """Calls a client keeps in flight: the registry's cap, never more than the rpm allows."""
        return max(1, min(self.max_concurrency, self.rpm))

    @property
    def client_rpm(self) -> int:
        """Requests a client starts per 60 s: one under ``rpm``.

        Measured with LiteLLM 1.108.7: a deployment with ``rpm: 20`` admitted 19 requests per window
        and held the 20th for the next one (~60 s), so pacing at rpm - 1 never trips that wait.
        """
        return max(1, self.rpm - 1)


class Registry(BaseModel):
    """All registered models, keyed by canonical alias; ``path`` is the file they came from."""

    model_config = ConfigDict(frozen=True)

    models: dict[str, ModelEntry]
    path: Path | None = None

    @model_validator(mode="after")
    def _names_are_unique(self) -> Registry:
        # An alias that points at two entries would make an experiment's meaning depend on order.
        seen: dict[str, str] = {}
        for entry in self.models.values():
            for name in entry.all_names:
                if name in seen and seen[name] != entry.name:
                    raise ValueError(f"name {name!r} is used by both {seen[name]!r} and {entry.name!r}")
                seen[name] = entry.name
        return self

    def names(self) -> list[str]:
        """Canonical aliases, in file order."""
        return list(self.models)

    def resolve(self, name: str) -> ModelEntry:
        """The entry for a canonical alias or any of its aliases; SpecError if nobody knows it."""
        if name in self.models:
            return self.models[name]
        for entry in self.models.values():
            if name in entry.aliases:
                return entry
        known = ", ".join(
            f"{entry.name} ({', '.join(entry.aliases)})" if entry.aliases else entry.name
            for entry in self.models.values()
        )
        raise SpecError(
            f"unknown model {name!r}; known models (aliases in brackets): {known}",
            file=self.path,
            hint=f"use one of the names above, or add an entry for {name!r} to "
            f"{self.path or 'mva_dagster/llm/models.yaml'} (see docs/proxy-and-models.md)",
        )

    def missing_env(self, entry: ModelEntry, environ: Mapping[str, str] | None = None) -> list[str]:
        """The entry's required environment variables that are unset or empty (real mode only)."""
        env = os.environ if environ is None else environ
        return [var for var in entry.env if not env.get(var)]


# Parsed registries by file identity: every request asks for its model's entry, and re-parsing the
# YAML each time was half of the client's CPU per call (bench/README.md). An edited file (new
# mtime, size or inode) is read again, so a changed price still takes effect at once.
_CACHE: dict[tuple[str, int, int, int], Registry] = {}


def load_registry(path: str | Path | None = None) -> Registry:
    """Read and validate ``models.yaml`` (``$MVA_MODEL_REGISTRY``, else the packaged one).

    The result is cached until the file changes; treat it as read-only.
    """
    if path is None and os.environ.get(REGISTRY_ENV):
        path = os.environ[REGISTRY_ENV]
    file = Path(path) if path is not None else DEFAULT_REGISTRY_PATH
    try:
        stat = file.stat()
    except OSError as exc:
        raise SpecError(f"cannot read the model registry: {exc}", file=file) from exc
    identity = (str(file.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _CACHE.get(identity)
    if cached is None:
        cached = _read_registry(file)
        if len(_CACHE) > 32:
            _CACHE.clear()
        _CACHE[identity] = cached
    return cached


def _read_registry(file: Path) -> Registry:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read the model registry: {exc}", file=file) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=file) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise SpecError("expected a non-empty mapping under 'models:'", file=file, field="models")
    entries: dict[str, ModelEntry] = {}
    for name, body in raw["models"].items():
        entries[str(name)] = _entry(str(name), body, file)
    try:
        return Registry(models=entries, path=file)
    except ValidationError as exc:
        raise SpecError(_first_error(exc), file=file, field="models") from exc


def _entry(name: str, body: Any, file: Path) -> ModelEntry:
    if not isinstance(body, dict):
        raise SpecError("expected a mapping of fields", file=file, field=f"models.{name}")
    try:
        return ModelEntry(name=name, **body)
    except (ValidationError, TypeError) as exc:
        message = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise SpecError(message, file=file, field=f"models.{name}") from exc


def _first_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)
