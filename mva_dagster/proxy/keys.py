"""The proxy's key table: keys other than the master key, each with its own rpm/tpm/parallel limits.

LiteLLM's own virtual keys need its Postgres database, which cannot run here; its ``custom_auth``
hook can instead hand back an identity carrying ``rpm_limit``/``tpm_limit``/``max_parallel_requests``,
and the proxy's rate limiter then enforces them per key (answering 429 with ``retry-after``) - in
memory, or in Redis when ``general_settings.coordination_redis`` is set, so that several proxies
share one budget of requests. The table lives in the repo (``keys.yaml``); key *values* come only
from environment variables, so no secret is ever committed or written into a config file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mva_dagster.errors import SpecError

DEFAULT_KEYS_PATH = Path(__file__).with_name("keys.yaml")
KEYS_FILE_ENV = "MVA_PROXY_KEYS"  # another key table (tests, a team's own file)


class KeySpec(BaseModel):
    """One key: where its value comes from and what it may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    env: str = Field(description="environment variable holding the key's value")
    description: str = ""
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_parallel_requests: int | None = Field(default=None, gt=0)


def keys_path() -> Path:
    configured = os.environ.get(KEYS_FILE_ENV)
    return Path(configured) if configured else DEFAULT_KEYS_PATH


def load_key_table(path: str | Path | None = None) -> dict[str, KeySpec]:
    """Read and validate a key table (``$MVA_PROXY_KEYS`` or the packaged ``keys.yaml``)."""
    file = Path(path) if path is not None else keys_path()
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SpecError(f"cannot read the proxy key table: {exc}", file=file) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=file) from exc
    keys = raw.get("keys") if isinstance(raw, dict) else None
    if keys is None:
        return {}
    if not isinstance(keys, dict):
        raise SpecError("expected a mapping of key names under 'keys:'", file=file, field="keys")
    table: dict[str, KeySpec] = {}
    envs: dict[str, str] = {}
    for name, body in keys.items():
        if not isinstance(body, dict):
            raise SpecError("expected a mapping of fields", file=file, field=f"keys.{name}")
        try:
            spec = KeySpec(name=str(name), **body)
        except (ValidationError, TypeError) as exc:
            raise SpecError(str(exc).splitlines()[0] if isinstance(exc, TypeError) else _first(exc),
                            file=file, field=f"keys.{name}") from exc
        if spec.env in envs:
            raise SpecError(f"variable {spec.env} is used by both {envs[spec.env]!r} and {spec.name!r}",
                            file=file, field=f"keys.{name}.env")
        envs[spec.env] = spec.name
        table[spec.name] = spec
    return table


def active_keys(table: Mapping[str, KeySpec], environ: Mapping[str, str] | None = None) -> dict[str, KeySpec]:
    """Key value -> spec, for the keys whose variable is set (inactive keys admit nobody)."""
    env = os.environ if environ is None else environ
    return {env[spec.env]: spec for spec in table.values() if env.get(spec.env)}


def key_identity(value: str) -> str:
    """What the proxy's counters and logs see instead of a key: its sha256 (LiteLLM's own form)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def auth_fields(spec: KeySpec, value: str) -> dict[str, Any]:
    """The ``UserAPIKeyAuth`` fields that make LiteLLM's rate limiter enforce ``spec`` for this key."""
    fields: dict[str, Any] = {"api_key": key_identity(value), "key_alias": spec.name, "key_name": spec.name}
    if spec.rpm is not None:
        fields["rpm_limit"] = spec.rpm
    if spec.tpm is not None:
        fields["tpm_limit"] = spec.tpm
    if spec.max_parallel_requests is not None:
        fields["max_parallel_requests"] = spec.max_parallel_requests
    return fields


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])
