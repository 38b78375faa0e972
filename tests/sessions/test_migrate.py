"""`mva migrate` on the legacy fixtures: every file copied and hashed, answers placed, source untouched.

The fixtures (tests/fixtures/legacy/MVA) reproduce the Discernus layouts with invented content:
experiment_1 has a run that crashed in extraction (answers mapped through its state file) and a
completed one (per-call metadata files, one call mapped by its prompt's text); experiment_2 is the
early layout whose answers survive only in a conversation log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from mva_dagster.cli.main import main
from mva_dagster.fsutil import sha256_file
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.migrate import migrate_legacy
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import ProjectLayout
from mva_dagster.sessions.status import session_status
from tests.conftest import REPO

LEGACY = REPO / "tests" / "fixtures" / "legacy" / "MVA"
CRASHED = "session_20250717_215915"
COMPLETED = "session_20250718_090544"
EARLY = "session_20250716_221455"


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectLayout, dict[str, object], dict[str, str]]:
    before = tree(LEGACY)
    project = tmp_path_factory.mktemp("migrated") / "MVA"
    result = migrate_legacy(LEGACY, project_dir=project, say=quiet)
    assert result.manifest_path is not None
    return ProjectLayout(project), json.loads(result.manifest_path.read_text()), before


def session(project: ProjectLayout, experiment: str, session_id: str):  # type: ignore[no-untyped-def]
    return project.experiment(experiment).session(session_id)


def test_nothing_is_left_behind_and_the_source_is_untouched(migrated) -> None:  # type: ignore[no-untyped-def]
    project, manifest, before = migrated
    assert tree(LEGACY) == before  # copy-only: not a byte changed, nothing added or removed
    counts = manifest["counts"]
    assert counts["source_files"] == len(before) == counts["manifest_entries"] == counts["copies_verified"]
    listed = {f["source"]: f for f in manifest["files"]}
    assert set(listed) == set(before)
    for source, entry in listed.items():
        assert entry["sha256"] == before[source]
        for copy in entry["copies"]:
            assert sha256_file(project.root / copy) == before[source], copy
    junk = listed["experiment_1/results/2025-07-17_21-59-15/.DS_Store"]
    assert junk["status"] == "legacy_only" and junk["copies"] == [
        f"experiments/experiment_1/sessions/{CRASHED}/legacy/.DS_Store"]
    orphan = listed["experiment_1/results/2025-07-17_21-59-15/llm_archive/prompt_006.txt"]
    assert orphan["status"] == "legacy_only" and "no response" in orphan["note"]
    assert listed["PROJECT_CHRONOLOG_MVA.jsonl"]["copies"] == ["legacy/PROJECT_CHRONOLOG_MVA.jsonl"]
    report = listed["experiment_1/results/2025-07-18_09-05-44/final_report.md"]
    assert report["placed_as"] == [f"experiments/experiment_1/sessions/{COMPLETED}/results/final_report.md"]


def test_answers_are_mapped_on_evidence_and_archived_with_provenance(migrated) -> None:  # type: ignore[no-untyped-def]
    project, manifest, _ = migrated
    by_session = {s["session_id"]: s for s in manifest["sessions"]}
    assert {k: v["answers"] for k, v in by_session.items()} == {CRASHED: 5, COMPLETED: 6, EARLY: 3}
    crashed = session(project, "experiment_1", CRASHED)
    entries = {(e.request.document_id, e.request.model, e.request.replicate): e
               for e in SessionArchive(crashed).entries()}
    assert sorted(entries) == [("harbour_speech", "gemini-2.5-pro", 1), ("harbour_speech", "gemini-2.5-pro", 2),
                               ("library_letter", "gemini-2.5-pro", 1), ("library_letter", "gemini-2.5-pro", 2),
                               ("transit_memo", "gemini-2.5-pro", 1)]
    entry = entries[("library_letter", "gemini-2.5-pro", 1)]
    assert entry.provenance["migrated_from"]["mapped_by"].startswith("the state file")
    assert entry.answer.raw_text == (LEGACY / "experiment_1/results/2025-07-17_21-59-15/llm_archive/"
                                     "response_003.txt").read_text()
    completed = by_session[COMPLETED]["mapped_by"]
    assert "call_001_metadata.json" in completed and any("text in the prompt" in m for m in completed)
    early = session(project, "experiment_2", EARLY)
    models = sorted((e.request.document_id, e.request.model) for e in SessionArchive(early).entries())
    assert models == [("harbour_speech", "gemini-2.5-flash"), ("harbour_speech", "gpt-4.1"),
                      ("library_letter", "gpt-4.1")]
    status = session_status(crashed)
    assert status.intact, status.problems
    assert (status.step("analysis").done, status.step("analysis").missing) == (5, 1)


def test_migrated_events_and_rerun_is_idempotent(migrated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project, manifest, _ = migrated
    events, bad = read_events(project.chronolog)
    assert not bad and sorted(e["session_id"] for e in events if e["event"] == "MIGRATED") == sorted(
        [CRASHED, COMPLETED, EARLY])
    assert read_events(session(project, "experiment_2", EARLY).chronolog)[0][-1]["event"] == "MIGRATED"
    again = migrate_legacy(LEGACY, project_dir=project.root, say=quiet)
    assert all(s.already for s in again.sessions) and len(project.experiment("experiment_1").sessions()) == 2
    dry = CliRunner().invoke(main, ["migrate", str(LEGACY), "--project-dir", str(tmp_path / "P"), "--dry-run"])
    assert dry.exit_code == 0 and "would migrate 54 files" in dry.output
    assert not (tmp_path / "P").exists()


def test_migrated_answers_become_tables_with_resume_from_extraction(migrated, mva_env: Path) -> None:  # type: ignore[no-untyped-def]
    from mva_dagster.instance import get_instance
    from mva_dagster.sessions.resume import resume_session

    project, _, _ = migrated
    crashed = session(project, "experiment_1", CRASHED)
    outcome = resume_session(crashed.root, from_step="extraction", offline=True, instance=get_instance(),
                             terminal=False, say=quiet)
    assert "extraction" in outcome.plan.assets and "analysis" not in outcome.plan.assets
    scores = pd.read_csv(crashed.scores_csv)
    assert len(scores) == 6 and int(scores["valid"].sum()) == 5  # the 6th call never got an answer
    legacy = json.loads((LEGACY / "experiment_1/results/2025-07-17_21-59-15/llm_archive/response_001.txt").read_text())
    row = scores[(scores.document_id == "harbour_speech") & (scores.replicate == 1)].iloc[0]
    assert row["warmth_score"] == pytest.approx(legacy["warmth_score"])
    assert (crashed.results / "metrics.csv").exists()
