"""The proxy ledger is shared by every session: a session copies only its own lines."""

from __future__ import annotations

import json
import time

from mva_dagster.llm.archive import SessionArchive
from mva_dagster.observe.ledger import session_ledger, sync_session_ledger
from mva_dagster.observe.provenance import build_provenance
from mva_dagster.observe.reconcile import reconcile_costs
from mva_dagster.proxy.stack import state_dir
from mva_dagster.steps.context import SessionContext
from tests.observe.conftest import Land


def _line(key: str, call_id: str, status: str, ts: float, version: str = "gemini-2.5-flash-001",
          cost: float = 0.0004) -> dict[str, object]:
    return {"status": status, "litellm_call_id": call_id, "request_key": key, "model_group": "gemini-2.5-flash",
            "model_id": "simulated-gemini-2.5-flash", "litellm_model": "openai/gemini-2.5-flash",
            "provider_response_model": version if status == "success" else None, "response_cost": cost,
            "system_fingerprint": "fp_x", "ts": ts}


def test_identical_requests_of_another_session_are_not_copied(civic_session: SessionContext, land: Land) -> None:
    ctx = civic_session
    doc = ctx.manifest.documents[0].id
    land(doc, 1)
    land(doc, 2)
    entries = SessionArchive(ctx.layout).entries()
    now = time.time()
    ledger = state_dir("simulated") / "proxy_ledger.jsonl"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    lines = [_line(e.request.key(), str(e.answer.call_id), "success", now) for e in entries]
    key = entries[0].request.key()
    lines += [
        _line(key, "other-session-call", "success", now + 1, version="gemini-2.5-flash-002"),  # same request
        _line(key, "retried-attempt", "failure", now, cost=0.0),  # the client retried after this one
        _line(key, "last-year", "failure", now - 365 * 86400, cost=0.0),  # before this session existed
    ]
    ledger.write_text("".join(json.dumps(line) + "\n" for line in lines))

    copied = sync_session_ledger(ctx.layout, "simulated")
    assert {line["litellm_call_id"] for line in copied} == {str(e.answer.call_id) for e in entries} | {
        "retried-attempt"}
    assert sync_session_ledger(ctx.layout, "simulated") == copied == session_ledger(ctx.layout)  # idempotent
    prov = build_provenance(ctx.layout)
    assert prov["flags"] == [] and prov["models"]["gemini-2.5-flash"]["provider_versions"] == {
        "gemini-2.5-flash-001": 2}
    reconciliation = reconcile_costs(ctx.layout)
    assert reconciliation.within_tolerance and reconciliation.matched_calls == 2
