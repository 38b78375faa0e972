"""The example deployment configs under deploy/ parse, and say what docs/scale-out.md says they do."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
EXPERIMENT_LIMIT = {"key": "mva/experiment", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path: Path) -> None:
    load(path)


def test_python_examples_parse() -> None:
    for path in DEPLOY.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("name", ["postgres/dagster.yaml", "celery/dagster.yaml"])
def test_instance_yamls_validate_against_dagsters_schema(name: str) -> None:
    """Dagster's own validation of an instance config (storage classes are resolved on load)."""
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema, validate_concurrency_config

    config = load(DEPLOY / name)
    result = validate_config(dagster_instance_config_schema(), config)
    assert result.success, [e.message for e in result.errors or []]
    if "concurrency" in config:
        validate_concurrency_config(config)
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "MVA_DAGSTER_POSTGRES_URL"}


def test_postgres_yaml_queues_one_session_per_experiment() -> None:
    config = load(DEPLOY / "postgres" / "dagster.yaml")
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert EXPERIMENT_LIMIT in config["concurrency"]["runs"]["tag_concurrency_limits"]


def test_celery_configs_agree_and_fit_the_executor_schema() -> None:
    worker = load(DEPLOY / "celery" / "celery.yaml")["execution"]["celery"]
    run = load(DEPLOY / "celery" / "run_config.yaml")["execution"]["config"]
    assert worker == run  # workers and runs must use the same broker and backend
    assert set(run) <= {"broker", "backend", "include", "config_source", "retries"}
    celery = pytest.importorskip("dagster_celery", reason="dagster-celery is optional (see docs/scale-out.md)")
    from dagster._config import validate_config

    assert validate_config(celery.celery_executor.config_schema.config_type, run).success


def test_helm_values_configure_the_queue_postgres_and_the_code_location() -> None:
    values = load(DEPLOY / "k8s" / "values.yaml")
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert EXPERIMENT_LIMIT in coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "mva_dagster.definitions"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert "," in env["MVA_PROXY_URL"]  # several proxies, spread by mva_dagster.llm.endpoints
