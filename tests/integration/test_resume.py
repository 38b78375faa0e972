"""Kill `mva run` / `mva resume` at the worst moments, resume, and count: nothing lost, nothing paid twice.

Real processes throughout: the simulated provider (its ledger counts what it served) behind the real
LiteLLM proxy, `mva` subprocesses killed by ``MVA_CRASH_AT`` exactly as ``kill -9`` would, and the
last step done by re-materializing the session in Dagster, as a backfill from the UI would.
``bench/crash.py`` does the same with 20 random kills.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner

from mva_dagster.demo.sotu_corpus import build_sotu_corpus
from mva_dagster.errors import SessionError
from mva_dagster.instance import get_instance
from mva_dagster.launch import launch_session
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.sessions.appendlog import torn_path
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import load_manifest
from mva_dagster.sessions.status import archived_keys, ledger_served_keys
from tests.conftest import REPO

pytestmark = pytest.mark.integration
FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"


def quiet(_line: str) -> None:
    pass


def ledger() -> Path:
    from mva_dagster.proxy.stack import state_dir

    return state_dir("simulated") / "simulated_ledger.jsonl"


def offset() -> int:
    return ledger().stat().st_size if ledger().exists() else 0


def tables(layout: SessionLayout) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(layout.results.glob("*.csv"))}


@pytest.fixture(scope="module")
def slow_provider(simulated_stack: object) -> Iterator[None]:
    """Answers take 0.5-1.5 s, so a kill always finds calls in flight."""
    from mva_dagster.proxy.stack import state_dir
    from mva_dagster.services import read_state

    url = str((read_state(state_dir("simulated"), "simulated") or {})["url"])
    before = httpx.get(f"{url}/admin/config", timeout=10).json()
    config = dict(before.get("config", before))
    httpx.post(f"{url}/admin/config", json={**config, "latency_s": 1.0, "latency_jitter": 0.5},
               timeout=10).raise_for_status()
    yield
    httpx.post(f"{url}/admin/config", json=config, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def world(slow_provider: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    corpus = build_sotu_corpus(root / "corpus", words=50, fileids=("1982-Reagan-1", "1994-Clinton-1",
                                                                    "2010-Obama-1"))
    folder = root / "exp" / "crashy"
    folder.mkdir(parents=True)
    (folder / "experiment.md").write_text(
        f"---\nname: crashy\nframework_file: {FRAMEWORK}\ncorpus: {corpus}\nmodels: [gemini-2.5-flash]\n"
        "runs_per_model: 2\nhypotheses:\n  H1: 'parties differ'\n---\n\n# Crash test experiment\n")
    project = root / "projects" / "TEST"
    baseline = launch_session(folder, project_dir=project, provider="simulated", keep_stack=True, say=quiet)
    return {"experiment": folder, "project": project, "baseline": baseline.root}


def mva(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if crash_at:
        env["MVA_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "mva_dagster.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


def test_killed_twice_then_rematerialized_loses_and_repays_nothing(world: dict[str, Path]) -> None:
    from mva_dagster.definitions import build_definitions
    from mva_dagster.defs.runner import run_session

    start = offset()
    sessions = world["project"] / "experiments" / "crashy" / "sessions"
    known = set(sessions.iterdir())
    # 1. An answer received but not yet archived (the proxy has journaled it, and the calls in flight).
    first = mva("run", str(world["experiment"]), "--provider", "simulated", "--project-dir",
                str(world["project"]), "--keep-proxy", crash_at="archive.before_store:3")
    assert first.returncode == -9, first.stderr[-2000:]
    (new,) = set(sessions.iterdir()) - known
    layout = SessionLayout(new)
    # 2. Every per-document step done, no table written yet, and half a chronolog line written.
    second = mva("resume", str(layout.root), "--keep-proxy", crash_at="chronolog.torn.DAGSTER_RUN_FINISHED")
    assert second.returncode == -9, second.stderr[-2000:]
    assert len(list(layout.extracted.glob("*.json"))) == 6 and not layout.metrics_csv.exists()
    # results/scores.csv grew as records landed: a valid CSV with all six rows, before any table step.
    assert len(pd.read_csv(layout.scores_csv)) == 6
    # 3. Finished by re-materializing the session's partitions in Dagster (what a UI backfill runs).
    definitions, bundles = build_definitions([layout.experiment])
    run_session(layout, bundles[layout.experiment.root.resolve()], definitions, get_instance(), terminal=False)

    served = ledger_served_keys(ledger(), since_offset=start)
    assert len(served) == 7  # 3 documents x 2 runs, and the synthesis
    assert set(served) <= archived_keys(layout)  # lost: 0
    assert [k for k, n in served.items() if n > 1] == []  # re-paid: 0
    recovered = [e for e in SessionArchive(layout).entries() if "recovered_from" in e.provenance]
    assert recovered  # answers served while no client was there to archive them
    events = [e["event"] for e in read_events(layout.chronolog)[0]]
    assert "TORN_LINE_SET_ASIDE" in events and torn_path(layout.chronolog).exists()
    assert tables(layout) == tables(SessionLayout(world["baseline"]))
    status = CliRunner().invoke(main_cli(), ["status", str(layout.root)])
    assert status.exit_code == 0, status.output
    assert "nothing to resume" in status.output


def main_cli():  # type: ignore[no-untyped-def]
    from mva_dagster.cli.main import main

    return main


def test_status_and_resume_plans_of_a_finished_session(world: dict[str, Path]) -> None:
    from mva_dagster.sessions.resume import resume_session

    baseline = world["baseline"]
    result = CliRunner().invoke(main_cli(), ["status", str(baseline), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["complete"] and report["intact"]
    assert {s["step"]: (s["done"], s["missing"], s["failed"]) for s in report["steps"]}["analysis"] == (6, 0, 0)
    assert resume_session(baseline, say=quiet).plan.nothing_to_do
    plan = resume_session(baseline, from_step="extraction", dry_run=True, say=quiet).plan
    assert plan.assets[0] == "extraction" and "analysis" not in plan.assets and len(plan.documents) == 3
    plan = resume_session(baseline, from_step="metrics", dry_run=True, say=quiet).plan
    assert plan.assets[0] == "metrics" and "scores" not in plan.assets and "report" in plan.assets
    with pytest.raises(SessionError, match="no such step"):
        resume_session(baseline, from_step="tables", dry_run=True, say=quiet)


def test_changed_experiment_is_refused_then_continued_in_a_linked_session(world: dict[str, Path]) -> None:
    from mva_dagster.sessions.resume import resume_session

    baseline = SessionLayout(world["baseline"])
    experiment = world["experiment"] / "experiment.md"
    original = experiment.read_text()
    experiment.write_text(original + "\nA note added after the session ran.\n")
    try:
        with pytest.raises(SessionError) as refused:
            resume_session(baseline.root, say=quiet)
        assert "+A note added after the session ran." in str(refused.value)
        assert "--allow-changes" in str(refused.value)

        start = offset()
        outcome = resume_session(baseline.root, allow_changes=True, instance=get_instance(), terminal=False,
                                 keep_stack=True, say=quiet)
    finally:
        experiment.write_text(original)
    linked = outcome.layout
    assert outcome.linked_from == baseline and linked.root != baseline.root
    assert load_manifest(linked).linked_from.session_id == baseline.session_id  # type: ignore[union-attr]
    assert linked.session_id in [s.session_id for s in load_manifest(baseline).linked_sessions]
    assert linked.own_experiment_snapshot.read_text().endswith("A note added after the session ran.\n")
    entries = SessionArchive(linked).entries()
    analysis = [e for e in entries if e.request.purpose == "analysis"]
    assert len(analysis) == 6 and all("reused_from" in e.provenance for e in analysis)
    served = ledger_served_keys(ledger(), since_offset=start)
    assert not set(served) & {e.answer.request_key for e in analysis}  # no analysis call paid again
    assert tables(linked) == tables(baseline)
