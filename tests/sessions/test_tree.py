"""Session tree paths, chronolog lines and the archive's write-before-use contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mva_dagster.errors import ArchiveError, MvaError, SessionError
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import Chronolog, read_events, sign, verify_event
from mva_dagster.sessions.layout import ExperimentLayout, ProjectLayout, check_safe_name
from tests.conftest import shared_path


def make_layout(tmp_path: Path):  # type: ignore[no-untyped-def]
    layout = ProjectLayout(tmp_path / "P").experiment("E").session("session_20260101_120000")
    layout.create_dirs()
    return layout


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_unsafe_names_are_refused(bad: str) -> None:
    with pytest.raises(SessionError):
        check_safe_name(bad, "experiment name")


def test_session_id_format_is_enforced(tmp_path: Path) -> None:
    with pytest.raises(SessionError):
        ExperimentLayout(tmp_path / "E").session("../../etc")


def test_chronolog_lines_are_signed_in_discernus_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVA_CHRONOLOG_KEY", "a-secret-of-our-own")
    log = Chronolog(tmp_path / "c.jsonl", project="P", session_id="s1")
    record = log.append("SESSION_STARTED", {"x": 1})
    events, bad = read_events(tmp_path / "c.jsonl")
    assert not bad and events == [record]
    assert record["signature"] == sign(record, b"a-secret-of-our-own")


def test_chronolog_refuses_a_known_default_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVA_CHRONOLOG_KEY", "default_dev_key")
    with pytest.raises(MvaError, match="publicly known default key"):
        Chronolog(tmp_path / "c.jsonl", project="P")


def test_discernus_chronolog_verifies_with_our_signature_rule() -> None:
    path = shared_path("reference", "discernus", "mva", "PROJECT_CHRONOLOG_MVA.jsonl")
    events, bad = read_events(path)
    assert len(events) == 958 and not bad
    assert all(verify_event(e, b"default_dev_key") for e in events)
    with pytest.raises(MvaError, match="publicly known default key"):
        sign(events[0], b"default_dev_key")  # checking with the public key is fine, signing is not


def test_torn_last_line_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    Chronolog(path, project="P").append("A")
    with open(path, "a") as handle:
        handle.write('{"timestamp": "2026-')  # a crash mid-write
    events, bad = read_events(path)
    assert len(events) == 1 and len(bad) == 1


def _request(replicate: int = 1) -> LLMRequest:
    return LLMRequest(session_id="s", document_id="doc1", model="vertex_ai/gemini-2.5-pro", replicate=replicate,
                      messages=[{"role": "user", "content": "hi"}], params={"seed": replicate})


def _answer(request: LLMRequest) -> LLMAnswer:
    return LLMAnswer(request_key=request.key(), raw_text='{"a": 1}', model_alias=request.model,
                     started_at="t0", finished_at="t1")


def test_archive_round_trip_and_replicates_stay_distinct(tmp_path: Path) -> None:
    archive = SessionArchive(make_layout(tmp_path))
    first, second = _request(1), _request(2)
    assert first.key() != second.key()
    assert archive.lookup(first) is None
    path = archive.store(first, _answer(first))
    assert path.name.startswith("doc1__vertex_ai_gemini-2.5-pro__r01__")
    assert archive.lookup(first) == _answer(first)
    assert archive.lookup(second) is None
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind


def test_archive_refuses_mismatched_entries(tmp_path: Path) -> None:
    archive = SessionArchive(make_layout(tmp_path))
    first = _request(1)
    with pytest.raises(ArchiveError):
        archive.store(first, _answer(_request(2)))
    path = archive.store(first, _answer(first))
    data = json.loads(path.read_text())
    data["answer"]["request_key"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ArchiveError, match="different request"):
        archive.lookup(first)
