"""Where the archive finds an answer: its own entries, linked sessions, the proxy's journal, legacy.

Sessions here are real session trees made by ``create_session`` from the civic_tone fixture; answers
are written the way the gateway writes them. No proxy is needed: the journal is a folder.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from mva_dagster.errors import SessionError
from mva_dagster.llm.archive import SessionArchive, read_entry
from mva_dagster.proxy import journal
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import DocumentEntry, create_session, load_manifest, write_snapshot
from mva_dagster.specs.corpus import load_corpus
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "civic_tone"


def make_session(project: Path, *, provider: str = "simulated", experiment_file: Path | None = None,
                 linked_from: SessionLayout | None = None) -> SessionLayout:
    corpus = load_corpus(FIXTURE / "corpus")
    documents = [DocumentEntry(id=d.id, path=str(d.path), sha256=d.sha256, n_words=d.n_words,
                               metadata=dict(d.metadata)) for d in corpus.documents]
    return create_session(
        project_dir=project, experiment_name="civic", experiment_file=experiment_file or FIXTURE / "experiment.md",
        framework_file=FIXTURE / "framework.md", framework_name="civic_tone", framework_version="v1.0",
        corpus_path=FIXTURE / "corpus", corpus_sha256=corpus.sha256, documents=documents,
        models=["gemini-2.5-flash"], model_override=None, runs_per_model=2, analysis_variant="default",
        generation={"temperature": 0.0}, prompt_metadata=[], provider=provider,  # type: ignore[arg-type]
        linked_from=linked_from, changes=["experiment changed"] if linked_from else None)


def request_for(layout: SessionLayout, document: str = "letter_parking", replicate: int = 1) -> LLMRequest:
    return LLMRequest(session_id=layout.session_id, document_id=document, model="gemini-2.5-flash",
                      replicate=replicate, messages=[{"role": "user", "content": f"analyse {document}"}],
                      params={"seed": replicate})


def answer_for(request: LLMRequest, text: str = '{"warmth_score": 0.2}') -> LLMAnswer:
    return LLMAnswer(request_key=request.key(), raw_text=text, model_alias=request.model, cost_usd=0.01,
                     started_at="t0", finished_at="t1")


@pytest.fixture
def mva_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MVA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MVA_CHRONOLOG_KEY", raising=False)
    return tmp_path / "home"


def test_linked_session_reuses_unchanged_calls_and_records_the_link(tmp_path: Path, mva_home: Path) -> None:
    parent = make_session(tmp_path / "P")
    asked = request_for(parent)
    SessionArchive(parent).store(asked, answer_for(asked))

    changed = tmp_path / "experiment_changed.md"
    changed.write_text(FIXTURE.joinpath("experiment.md").read_text() + "\n<!-- a note -->\n")
    with pytest.raises(SessionError, match="changed since"):
        make_session(tmp_path / "P", experiment_file=changed)  # refused: a readable diff, no session
    child = make_session(tmp_path / "P", experiment_file=changed, linked_from=parent)

    # The child keeps its own snapshot; the earlier session still sees the one it ran with.
    assert child.own_experiment_snapshot.exists() and not parent.own_experiment_snapshot.exists()
    assert child.experiment.experiment_snapshot == child.own_experiment_snapshot
    assert parent.experiment.experiment_snapshot == parent.experiment.shared_experiment_snapshot
    assert load_manifest(child).linked_from.session_id == parent.session_id  # type: ignore[union-attr]
    assert [s.session_id for s in load_manifest(parent).linked_sessions] == [child.session_id]
    for chronolog in (parent.chronolog, child.chronolog, child.experiment.project.chronolog):
        assert any(e["event"] == "SESSION_LINKED" for e in read_events(chronolog)[0])

    same = request_for(child)  # the identical call, asked by the new session
    archive = SessionArchive(child)
    assert archive.answered(same) is None and archive.recoverable(same) == "linked session"
    got = archive.lookup(same)
    assert got is not None and got.raw_text == '{"warmth_score": 0.2}'
    entry = read_entry(archive.path_for(same))
    assert entry.request.session_id == child.session_id  # copied in: the session is self-contained
    assert entry.provenance["reused_from"]["session_id"] == parent.session_id
    assert archive.lookup(request_for(child, replicate=2)) is None  # a replicate is another call


def test_a_real_session_never_reuses_a_simulated_answer(tmp_path: Path, mva_home: Path) -> None:
    parent = make_session(tmp_path / "P", provider="simulated")
    asked = request_for(parent)
    SessionArchive(parent).store(asked, answer_for(asked))
    child = make_session(tmp_path / "P", provider="real", linked_from=parent)
    assert SessionArchive(child).lookup(request_for(child)) is None


def _journal_dir() -> Path:
    from mva_dagster.proxy.stack import state_dir

    return journal.journal_dir(state_dir("simulated"))


def _completion(text: str) -> dict[str, object]:
    return {"id": "chatcmpl-x", "model": "gemini-2.5-flash-sim-001", "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


def test_an_answer_the_client_never_archived_is_recovered_from_the_proxy_journal(
        tmp_path: Path, mva_home: Path) -> None:
    layout = make_session(tmp_path / "P")
    request = request_for(layout)
    directory = _journal_dir()
    journal.write_entry(directory, request.key(), _completion('{"warmth_score": 0.7}'),
                        {"response_cost": 0.002, "model_id": "simulated-gemini-2.5-flash"})
    archive = SessionArchive(layout)
    assert archive.recoverable(request) == "proxy journal"
    answer = archive.lookup(request)
    assert answer is not None and answer.raw_text == '{"warmth_score": 0.7}' and answer.cost_usd == 0.002
    assert answer.response_headers["x-mva-recovered-from"] == "proxy-answer-journal"
    assert "recovered_from" in read_entry(archive.path_for(request)).provenance
    assert journal.pending_keys(directory) == []  # archived, so the journal lets it go


def test_a_call_still_in_flight_at_the_proxy_is_waited_for_not_sent_again(tmp_path: Path, mva_home: Path) -> None:
    layout = make_session(tmp_path / "P")
    request = request_for(layout)
    directory = _journal_dir()
    journal.write_pending(directory, request.key(), timeout_s=60)  # our pid stands in for the proxy's

    def proxy_finishes() -> None:
        time.sleep(0.5)
        journal.write_entry(directory, request.key(), _completion('{"late": true}'), {})

    thread = threading.Thread(target=proxy_finishes)
    thread.start()
    answer = SessionArchive(layout).lookup(request)
    thread.join()
    assert answer is not None and answer.raw_text == '{"late": true}'


def test_a_stale_in_flight_marker_is_ignored(tmp_path: Path, mva_home: Path) -> None:
    layout = make_session(tmp_path / "P")
    request = request_for(layout)
    directory = _journal_dir()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{request.key()}.pending").write_text('{"pid": 999999999, "started": 0, "deadline": 1e12}')
    assert SessionArchive(layout).lookup(request) is None
    assert not (directory / f"{request.key()}.pending").exists()


def test_integrity_check_finds_tampering_and_crash_debris(tmp_path: Path, mva_home: Path) -> None:
    layout = make_session(tmp_path / "P")
    archive = SessionArchive(layout)
    first, second = request_for(layout), request_for(layout, "newsletter_spring")
    edited = archive.store(first, answer_for(first))
    edited.write_text(edited.read_text().replace("analyse letter_parking", "analyse something else"))
    moved = archive.store(second, answer_for(second))
    moved.write_text(moved.read_text().replace('"newsletter_spring"', '"council_minutes_march"', 1))
    (layout.llm_archive / f".{moved.name}.abc123.tmp").write_text("{half")
    problems = archive.check()
    assert any(p.path == edited and "not the hash of the stored request" in p.problem for p in problems)
    assert any(p.path == moved and "file name does not match" in p.problem for p in problems)
    debris = [p for p in problems if p.debris]
    assert len(debris) == 1
    assert archive.remove_debris() == [debris[0].path] and not debris[0].path.exists()


def test_snapshot_refusal_shows_a_readable_diff(tmp_path: Path) -> None:
    target, source = tmp_path / "framework_snapshot.md", tmp_path / "framework.md"
    target.write_text("line one\nscore: 0-1\n")
    source.write_text("line one\nscore: 0-10\n")
    with pytest.raises(SessionError) as caught:
        write_snapshot(target, source, label="framework")
    assert "-score: 0-1\n+score: 0-10" in str(caught.value) and "--allow-changes" in str(caught.value)
    assert write_snapshot(target, source, label="framework", changed_to=tmp_path / "own.md") == tmp_path / "own.md"
    assert target.read_text() == "line one\nscore: 0-1\n"  # the earlier sessions' snapshot is untouched
    assert os.path.exists(tmp_path / "own.md")


def test_status_reports_counts_and_a_tampered_snapshot(tmp_path: Path, mva_home: Path) -> None:
    from click.testing import CliRunner

    from mva_dagster.cli.main import main
    from mva_dagster.sessions.status import session_status
    from mva_dagster.steps.context import SessionContext

    layout = make_session(tmp_path / "P")
    ctx = SessionContext.load(layout)
    request = ctx.analysis_request("letter_parking", "gemini-2.5-flash", 1)
    SessionArchive(layout).store(request, answer_for(request))
    status = session_status(layout)
    assert status.intact and not status.complete
    assert (status.step("analysis").done, status.step("analysis").missing) == (1, 5)
    assert CliRunner().invoke(main, ["status", str(layout.root)]).exit_code == 1

    snapshot = layout.experiment.framework_snapshot
    snapshot.write_text(snapshot.read_text() + "\nedited by hand\n")
    status = session_status(layout)
    assert any("framework snapshot" in p and "changed" in p for p in status.problems)
    result = CliRunner().invoke(main, ["status", str(layout.root)])
    assert result.exit_code == 4 and "INTEGRITY" in result.output
