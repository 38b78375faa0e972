"""A whole session through the real proxy, the real simulated provider and a real Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mva_dagster.calc.formula import build_plan
from mva_dagster.demo.sotu_corpus import build_sotu_corpus
from mva_dagster.instance import get_instance
from mva_dagster.launch import launch_session
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.specs.framework import load_framework
from tests.conftest import REPO, shared_path

pytestmark = pytest.mark.integration
DEMO_FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"


def write_experiment(folder: Path, *, framework: Path, corpus: Path, models: list[str], runs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.md"
    path.write_text(
        "---\n"
        f"name: {folder.name}\n"
        f"framework_file: {framework}\n"
        f"corpus: {corpus}\n"
        f"models: {json.dumps(models)}\n"
        f"runs_per_model: {runs}\n"
        "hypotheses:\n  H1: 'parties differ'\n"
        "---\n\n# Test experiment\n")
    return path


@pytest.fixture(scope="module")
def demo_session(simulated_stack: object, tmp_path_factory: pytest.TempPathFactory) -> SessionLayout:
    root = tmp_path_factory.mktemp("e2e")
    corpus = build_sotu_corpus(root / "corpus", words=60, fileids=("1982-Reagan-1", "1994-Clinton-1",
                                                                    "2010-Obama-1"))
    experiment = write_experiment(root / "exp" / "tiny_sotu", framework=DEMO_FRAMEWORK, corpus=corpus,
                                  models=["gemini-2.5-flash"], runs=2)
    return launch_session(experiment, project_dir=root / "projects" / "TEST", provider="simulated",
                          keep_stack=True)


def test_session_tree_is_the_plans_structure(demo_session: SessionLayout) -> None:
    layout = demo_session
    project = layout.experiment.project
    assert project.chronolog.name == "PROJECT_CHRONOLOG_TEST.jsonl" and project.chronolog.exists()
    assert layout.experiment.experiment_snapshot.exists() and layout.experiment.framework_snapshot.exists()
    for path in (layout.chronolog, layout.llm_archive, layout.extracted, layout.results, layout.logs):
        assert path.exists(), path
    assert layout.root.parent.name == "sessions" and layout.session_id.startswith("session_")
    events, bad = read_events(project.chronolog)
    assert not bad and events[0]["event"] == "SESSION_STARTED"
    assert set(events[0]) == {"timestamp", "event", "session_id", "project", "data", "event_id", "signature"}


def test_every_call_archived_and_scored(demo_session: SessionLayout) -> None:
    layout = demo_session
    archived = sorted(p for p in layout.llm_archive.glob("*.json") if not p.name.startswith("_synthesis__"))
    assert len(archived) == 3 * 1 * 2  # documents x models x runs, replicates never collapsed
    for path in archived:
        entry = json.loads(path.read_text())
        assert entry["answer"]["raw_text"]
        assert entry["answer"]["request_key"][:16] == path.stem.split("__")[-1]
        assert entry["answer"]["cost_usd"] > 0  # simulated, at gemini-2.5-flash list prices
    scores = pd.read_csv(layout.scores_csv)
    assert len(scores) == 6 and scores["valid"].all()
    assert sorted(scores["replicate"].unique()) == [1, 2]
    # Replicates are distinct calls with distinct answers.
    first = scores[scores.replicate == 1].set_index("document_id")["hope_score"]
    second = scores[scores.replicate == 2].set_index("document_id")["hope_score"]
    assert (first != second).any()


def test_metrics_match_hand_computation(demo_session: SessionLayout) -> None:
    layout = demo_session
    scores = pd.read_csv(layout.scores_csv)
    metrics = pd.read_csv(layout.metrics_csv)
    row = scores.iloc[0]
    hand = (0.33 * (row.hope_score - row.fear_score) + 0.27 * (row.compersion_score - row.envy_score)
            + 0.40 * (row.amity_score - row.enmity_score))
    got = metrics[(metrics.document_id == row.document_id) & (metrics.replicate == row.replicate)]
    assert got["descriptive_cohesion_index"].iloc[0] == pytest.approx(hand, abs=1e-9)
    plan = build_plan(load_framework(DEMO_FRAMEWORK).calculation_spec, known_inputs=None)
    assert set(plan.order) <= set(metrics.columns)


def test_dagster_records_each_partition(demo_session: SessionLayout) -> None:
    instance = get_instance()
    key = dg.AssetKey(["TEST", "tiny_sotu", "analysis"])
    records = instance.fetch_materializations(key, limit=100).records
    partitions = {r.partition_key for r in records}
    expected = {f"{doc}|{demo_session.session_id}" for doc in ("1982-Reagan-1", "1994-Clinton-1", "2010-Obama-1")}
    assert expected <= partitions
    report = instance.fetch_materializations(dg.AssetKey(["TEST", "tiny_sotu", "report"]), limit=10).records
    assert any(r.partition_key == demo_session.session_id for r in report)
    assert demo_session.report_md.read_text().startswith("# Session report")


def test_rerun_of_partitions_is_answered_from_archive(demo_session: SessionLayout) -> None:
    """Re-materializing a session's partitions (a UI backfill does the same) pays for nothing."""
    from mva_dagster.definitions import build_definitions
    from mva_dagster.defs.runner import run_session

    definitions, bundles = build_definitions([demo_session.experiment])
    before = {p: p.stat().st_mtime for p in demo_session.llm_archive.glob("*.json")}
    run_session(demo_session, bundles[demo_session.experiment.root.resolve()], definitions, get_instance())
    after = {p: p.stat().st_mtime for p in demo_session.llm_archive.glob("*.json")}
    assert before == after


@pytest.mark.shared
def test_cli_cff_v41_on_mva_corpus(simulated_stack: object, tmp_path: Path) -> None:
    """The issue's acceptance case: CFF v4.1 + MVA corpus, 2 runs, simulated -> 16 rows, 3 indices."""
    framework = shared_path("data", "frameworks", "cff", "cff_v4.1.md")
    corpus = shared_path("data", "mva_corpus")
    experiment = write_experiment(tmp_path / "cff_check", framework=framework, corpus=corpus,
                                  models=["gemini-2.5-pro"], runs=2)
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "mva_dagster.cli.main", "run", str(experiment), "--provider", "simulated",
         "--project-dir", str(tmp_path / "projects" / "MVA"), "--keep-proxy"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    session = Path(result.stdout.split("Session: ")[1].splitlines()[0])
    scores = pd.read_csv(session / "results" / "scores.csv")
    metrics = pd.read_csv(session / "results" / "metrics.csv")
    assert len(scores) == 16 and scores["valid"].all()
    for index in ("descriptive_cohesion_index", "motivational_cohesion_index", "full_cohesion_index"):
        assert metrics[index].notna().all()
