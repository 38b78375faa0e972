"""The model registry: names resolve, prices are the public list prices, errors say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mva_dagster.errors import SpecError
from mva_dagster.llm.registry import DEFAULT_REGISTRY_PATH, load_registry

REQUIRED = ["gemini-2.5-pro", "gemini-2.5-flash", "claude-sonnet-4-5", "gpt-4.1", "smollm2-135m"]

# USD per million tokens (input, output): public list prices, short-prompt tier.
LIST_PRICES = {
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "claude-sonnet-4-5": (3.0, 15.0),
    "gpt-4.1": (2.0, 8.0),
    "smollm2-135m": (0.0, 0.0),
}


def test_required_models_are_registered() -> None:
    registry = load_registry()
    assert set(REQUIRED) <= set(registry.names())
    assert registry.path == DEFAULT_REGISTRY_PATH
    assert registry.resolve("smollm2-135m").provider == "local"
    assert registry.resolve("gemini-2.5-pro").litellm_model == "vertex_ai/gemini-2.5-pro"


@pytest.mark.parametrize(("name", "per_million"), LIST_PRICES.items())
def test_prices_are_list_prices(name: str, per_million: tuple[float, float]) -> None:
    entry = load_registry().resolve(name)
    assert entry.input_cost_per_token * 1e6 == pytest.approx(per_million[0])
    assert entry.output_cost_per_token * 1e6 == pytest.approx(per_million[1])
    assert entry.cost(1_000_000, 1_000_000) == pytest.approx(sum(per_million) / 1.0)


def test_every_entry_has_limits() -> None:
    for entry in load_registry().models.values():
        assert entry.context_window > entry.max_output_tokens > 0
        assert entry.rpm > 0 and entry.tpm > 0 and entry.timeout_s > 0 and entry.max_concurrency > 0


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("gemini-2.5-pro", "gemini-2.5-pro"),
        ("vertex_ai/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini/gemini-2.5-flash", "gemini-2.5-flash"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("openai/gpt-4.1", "gpt-4.1"),
        ("local/smollm2-135m", "smollm2-135m"),
    ],
)
def test_resolve_accepts_aliases(name: str, canonical: str) -> None:
    assert load_registry().resolve(name).name == canonical


def test_unknown_model_lists_known_names_and_says_how_to_add_one() -> None:
    with pytest.raises(SpecError) as caught:
        load_registry().resolve("gpt-5-turbo-ultra")
    text = str(caught.value)
    assert "gpt-5-turbo-ultra" in text
    for name in REQUIRED:
        assert name in text
    assert "models.yaml" in text and "add an entry" in text


def test_missing_env_names_unset_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = load_registry()
    claude = registry.resolve("claude-sonnet-4-5")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert registry.missing_env(claude) == ["ANTHROPIC_API_KEY"]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    assert registry.missing_env(claude) == []

    vertex = registry.resolve("gemini-2.5-flash")
    assert registry.missing_env(vertex, {"VERTEXAI_PROJECT": "p", "VERTEXAI_LOCATION": ""}) == [
        "VERTEXAI_LOCATION",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ]
    assert registry.missing_env(registry.resolve("smollm2-135m"), {}) == []


def _write(tmp_path: Path, models: dict[str, object]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def _entry(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "provider": "openai",
        "litellm_model": "openai/x",
        "context_window": 1000,
        "max_output_tokens": 100,
        "input_cost_per_token": 1e-6,
        "output_cost_per_token": 2e-6,
        "rpm": 10,
        "tpm": 1000,
        "timeout_s": 30,
        "max_concurrency": 2,
    }
    base.update(overrides)
    return base


def test_an_alias_may_not_point_at_two_models(tmp_path: Path) -> None:
    path = _write(tmp_path, {"a": _entry(aliases=["shared"]), "b": _entry(aliases=["shared"])})
    with pytest.raises(SpecError, match="shared"):
        load_registry(path)


def test_a_bad_field_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {"a": _entry(provider="azure")})
    with pytest.raises(SpecError, match=r"models\.a.*provider"):
        load_registry(path)
    path = _write(tmp_path, {"a": _entry(input_cost_per_token=-1)})
    with pytest.raises(SpecError, match="input_cost_per_token"):
        load_registry(path)
    path = _write(tmp_path, {"a": _entry(colour="red")})
    with pytest.raises(SpecError, match="colour"):
        load_registry(path)


def test_an_unreadable_registry_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_registry(tmp_path / "absent.yaml")
    (tmp_path / "empty.yaml").write_text("models: {}\n")
    with pytest.raises(SpecError, match="non-empty"):
        load_registry(tmp_path / "empty.yaml")
