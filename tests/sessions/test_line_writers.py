"""The cost ledger, the conversation log and the proxy ledger are written through ``append_line``:
whole lines under the shared file lock, and a torn last line left by a crash set aside (to
``<file>.torn``) instead of swallowing the next record. File formats are unchanged."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mva_dagster.errors import TransientLLMError
from mva_dagster.llm import conversations
from mva_dagster.llm import cost as ledger
from mva_dagster.records import LLMRequest
from mva_dagster.sessions.appendlog import read_jsonl, torn_path
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import ProjectLayout, SessionLayout

TORN = b'{"kind": "reserve", "id": "half-writ'


def make_layout(tmp_path: Path) -> SessionLayout:
    layout = ProjectLayout(tmp_path / "P").experiment("E").session("session_20260101_120000")
    layout.create_dirs()
    layout.manifest.write_text("{}")
    return layout


def lines(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVA_CHRONOLOG_KEY", raising=False)


def test_paths_come_from_the_layout(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    assert layout.session_policy == layout.root / "session_policy.json"
    assert layout.cost_ledger == layout.root / "logs" / "cost_ledger.jsonl"
    assert conversations.conversations_path(layout) == layout.conversations_log == layout.logs / "conversations.jsonl"


def test_cost_ledger_sets_a_torn_line_aside(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    assert ledger.append(layout.cost_ledger, {"kind": "reserve", "id": "a", "worst_usd": 0.5}) is None
    with open(layout.cost_ledger, "ab") as handle:
        handle.write(TORN)  # a writer killed mid-line
    torn = ledger.append(layout.cost_ledger, {"kind": "settle", "id": "a", "cost_usd": 0.1})
    assert torn is not None and torn.fragment == TORN
    assert [r["kind"] for r in lines(layout.cost_ledger)] == ["reserve", "settle"]  # the settle is whole
    assert read_jsonl(layout.cost_ledger).set_aside == [TORN.decode()]  # kept, not deleted
    totals = ledger.session_totals(layout)
    assert totals.spent_usd == pytest.approx(0.1) and totals.open_usd == 0


def test_budget_guard_records_a_torn_ledger_line(tmp_path: Path) -> None:
    from tests.llm.test_budget import guard_for, request

    layout = make_layout(tmp_path)
    layout.cost_ledger.write_bytes(TORN)
    guard = guard_for(layout, session_usd=1.0)
    guard.reserve(request(1, layout), 0.2, candidates=["gemini-2.5-flash"])
    events = [e for e in read_events(layout.chronolog)[0] if e["event"] == "TORN_LINE_SET_ASIDE"]
    assert events and events[0]["data"]["file"] == "cost_ledger.jsonl"
    assert events[0]["data"]["bytes"] == len(TORN)
    assert ledger.session_totals(layout).open_usd == pytest.approx(0.2)


def test_ledger_mark_sees_only_a_later_pause(tmp_path: Path) -> None:
    from mva_dagster.llm.budget import paused_state

    layout = make_layout(tmp_path)
    ledger.append(layout.cost_ledger, {"kind": "pause", "level": "session", "budget_usd": 0.01})
    assert paused_state(layout) is not None
    mark = ledger.ledger_mark(layout)
    assert paused_state(layout, since=mark) is None  # an earlier run's pause is not this run's
    ledger.append(layout.cost_ledger, {"kind": "reserve", "id": "b", "worst_usd": 0.1})
    ledger.append(layout.cost_ledger, {"kind": "pause", "level": "session", "budget_usd": 0.01})
    assert paused_state(layout, since=mark) is not None


def test_conversation_log_sets_a_torn_line_aside(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    request = LLMRequest(session_id=layout.session_id, document_id="d1", model="gemini-2.5-flash", replicate=1,
                         messages=[{"role": "user", "content": "hello"}], params={})
    conversations.record_failure(layout, request, TransientLLMError("HTTP 503", status=503))
    with open(layout.conversations_log, "ab") as handle:
        handle.write(b'{"v": 2, "request_key": "tor')
    conversations.record_failure(layout, request, TransientLLMError("HTTP 502", status=502))
    entries = list(conversations.read_entries(layout))
    assert [e["http_status"] for e in entries] == [503, 502]
    assert torn_path(layout.conversations_log).exists()
    assert any(e["event"] == "TORN_LINE_SET_ASIDE" and e["data"]["file"] == "conversations.jsonl"
               for e in read_events(layout.chronolog)[0])


def test_proxy_ledger_keeps_its_permissions_and_sets_a_torn_line_aside(tmp_path: Path) -> None:
    from mva_dagster.proxy.callbacks import append_record

    path = tmp_path / "proxy" / "proxy_ledger.jsonl"
    append_record({"status": "success", "request_key": "k1"}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with open(path, "ab") as handle:
        handle.write(b'{"status": "succ')
    append_record({"status": "failure", "request_key": "k2"}, path)
    assert [r["request_key"] for r in lines(path)] == ["k1", "k2"]
    assert stat.S_IMODE(torn_path(path).stat().st_mode) == 0o600
