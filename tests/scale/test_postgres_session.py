"""The same definitions on Dagster's Postgres storage: `launch_session` (what `mva run` does) with
DAGSTER_HOME holding deploy/postgres/dagster.yaml runs a whole simulated session."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mva_dagster.defs.factory import SESSION_TAG
from mva_dagster.demo.sotu_corpus import build_sotu_corpus
from mva_dagster.launch import launch_session
from tests.conftest import REPO

pytestmark = pytest.mark.integration
POSTGRES_YAML = REPO / "deploy" / "postgres" / "dagster.yaml"
DEMO_FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"
DOCUMENTS = ("1982-Reagan-1", "1994-Clinton-1", "2010-Obama-1")


def postgres_home(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(POSTGRES_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MVA_DAGSTER_POSTGRES_URL", url)
    return home


def test_postgres_yaml_loads_an_instance_with_the_run_queue(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    postgres_home(tmp_path, postgres_url, monkeypatch)
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 8
        [limit] = queue.tag_concurrency_limits
        assert limit["key"] == "mva/experiment" and limit["limit"] == 1
        assert limit["value"] == {"applyLimitPerUniqueValue": True}


def test_session_runs_on_postgres_storage(simulated_stack: object, postgres_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    postgres_home(tmp_path, postgres_url, monkeypatch)
    corpus = build_sotu_corpus(tmp_path / "corpus", words=60, fileids=DOCUMENTS)
    folder = tmp_path / "exp" / "pg_sotu"
    folder.mkdir(parents=True)
    experiment = folder / "experiment.md"
    experiment.write_text(
        "---\nname: pg_sotu\n"
        f"framework_file: {DEMO_FRAMEWORK}\ncorpus: {corpus}\n"
        "models: [gemini-2.5-flash]\nruns_per_model: 1\n"
        "hypotheses:\n  H1: 'parties differ'\n---\n\n# Postgres check\n")

    layout = launch_session(experiment, project_dir=tmp_path / "projects" / "PG", provider="simulated",
                            keep_stack=True, say=lambda line: None)  # no instance: DAGSTER_HOME's

    with dg.DagsterInstance.get() as instance:  # a new connection: the records are in Postgres
        runs = instance.get_runs(filters=dg.RunsFilter(tags={SESSION_TAG: layout.session_id}))
        assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        analysis = dg.AssetKey(["PG", "pg_sotu", "analysis"])
        materialized = {r.partition_key for r in instance.fetch_materializations(analysis, limit=50).records}
        assert {f"{doc}|{layout.session_id}" for doc in DOCUMENTS} <= materialized
        documents = instance.get_dynamic_partitions("PG__pg_sotu__documents")
        assert set(DOCUMENTS) <= set(documents)
    scores = pd.read_csv(layout.scores_csv)
    assert len(scores) == len(DOCUMENTS) and scores["valid"].all()
