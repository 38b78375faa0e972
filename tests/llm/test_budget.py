"""Budgets that hold: reservations, the latch, alerts, shared experiment budgets, crash reconciliation,
and the ledger totals `mva cost` prints."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mva_dagster.errors import BudgetExceeded
from mva_dagster.llm import cost as ledger
from mva_dagster.llm.budget import BudgetGuard, SessionPolicy, paused_state, worst_case_usd
from mva_dagster.llm.registry import load_registry
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import Chronolog, read_events
from mva_dagster.sessions.layout import SessionLayout


def session(root: Path, name: str = "session_20260101_000000", experiment: str = "E") -> SessionLayout:
    layout = SessionLayout(root / "projects" / "P" / "experiments" / experiment / "sessions" / name)
    layout.create_dirs()
    (layout.root / "session.json").write_text("{}")
    return layout


def request(n: int, layout: SessionLayout) -> LLMRequest:
    return LLMRequest(session_id=layout.session_id, document_id=f"doc{n}", model="gemini-2.5-flash",
                      replicate=1, messages=[{"role": "user", "content": f"text {n}"}],
                      params={"max_tokens": 100})


def answer(req: LLMRequest, cost: float) -> LLMAnswer:
    return LLMAnswer(request_key=req.key(), raw_text="{}", model_alias=req.model, cost_usd=cost,
                     prompt_tokens=10, completion_tokens=5, started_at="t", finished_at="t",
                     model_used=req.model)


def guard_for(layout: SessionLayout, **budgets: Any) -> BudgetGuard:
    chronolog = Chronolog(layout.chronolog, project="P", session_id=layout.session_id)
    return BudgetGuard(layout, SessionPolicy(**budgets), chronolog=chronolog, report=lambda line: None)


def test_worst_case_is_the_dearest_candidate_at_max_tokens() -> None:
    registry = load_registry()
    flash, pro = registry.resolve("gemini-2.5-flash"), registry.resolve("gemini-2.5-pro")
    worst = worst_case_usd([flash, pro], 1000, 500)
    assert worst == pytest.approx(pro.cost(ledger.reserved_prompt_tokens(1000), 500))
    assert worst > worst_case_usd([flash], 1000, 500)
    capped = worst_case_usd([flash], 1000, None)  # no max_tokens: the model's output limit
    assert capped == pytest.approx(flash.cost(ledger.reserved_prompt_tokens(1000), flash.max_output_tokens))


def test_a_call_that_could_cross_is_refused_and_the_guard_latches(tmp_path: Path) -> None:
    layout = session(tmp_path)
    guard = guard_for(layout, session_usd=1.0)
    first = guard.reserve(request(1, layout), 0.6, candidates=["gemini-2.5-flash"])
    guard.settle(first, answer(request(1, layout), 0.5))
    with pytest.raises(BudgetExceeded) as refused:
        guard.reserve(request(2, layout), 0.6, candidates=["gemini-2.5-flash"])
    assert refused.value.level == "session" and refused.value.committed_usd == pytest.approx(0.5)
    assert "hint" in str(refused.value)
    with pytest.raises(BudgetExceeded):  # latched: even a call that would fit is not sent now
        guard.reserve(request(3, layout), 0.01, candidates=["gemini-2.5-flash"])
    pause = paused_state(layout)
    assert pause is not None and pause["level"] == "session" and pause["refused"]["document_id"] == "doc2"
    totals = ledger.session_totals(layout)
    assert totals.spent_usd == pytest.approx(0.5) and totals.open_usd == 0 and totals.calls == 1
    guard.resume()  # a new run checks again, call by call
    guard.reserve(request(3, layout), 0.01, candidates=["gemini-2.5-flash"])
    assert paused_state(layout) is None  # running again


def test_zero_spend_over_the_budget_whatever_the_interleaving(tmp_path: Path) -> None:
    rng = random.Random(7)
    layout = session(tmp_path)
    budget = 1.0
    guard = guard_for(layout, session_usd=budget)
    in_flight: list[tuple[Any, LLMRequest, float]] = []
    spent = 0.0
    n = 0
    while True:
        if in_flight and (rng.random() < 0.5 or guard.paused is not None):
            reservation, req, worst = in_flight.pop(rng.randrange(len(in_flight)))
            cost = worst * rng.uniform(0.0, 1.0)  # actual <= worst case, by construction of max_tokens
            guard.settle(reservation, answer(req, cost))
            spent += cost
            assert spent <= budget + 1e-12
            continue
        if guard.paused is not None:
            break
        n += 1
        worst = rng.uniform(0.01, 0.2)
        req = request(n, layout)
        try:
            reservation = guard.try_reserve(req, worst, candidates=["gemini-2.5-flash"])
        except BudgetExceeded:
            continue
        if reservation is not None:
            in_flight.append((reservation, req, worst))
    assert spent <= budget and ledger.session_totals(layout).spent_usd == pytest.approx(spent)


def test_near_the_budget_a_call_waits_for_calls_in_flight_instead_of_pausing(tmp_path: Path) -> None:
    layout = session(tmp_path)
    guard = guard_for(layout, session_usd=1.0)
    held = guard.reserve(request(1, layout), 0.7, candidates=["gemini-2.5-flash"])
    assert guard.try_reserve(request(2, layout), 0.5, candidates=["gemini-2.5-flash"]) is None  # wait
    guard.settle(held, answer(request(1, layout), 0.1))  # it cost far less than its worst case
    assert guard.try_reserve(request(2, layout), 0.5, candidates=["gemini-2.5-flash"]) is not None


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_alerts_at_50_80_and_100_percent_once_each(tmp_path: Path,
                                                   webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    layout = session(tmp_path)
    lines: list[str] = []
    guard = BudgetGuard(layout, SessionPolicy(session_usd=1.0, alert_webhook=url),
                        chronolog=Chronolog(layout.chronolog, project="P", session_id=layout.session_id),
                        report=lines.append)
    for n, cost in enumerate((0.3, 0.25, 0.1, 0.2), start=1):  # 30 %, 55 %, 65 %, 85 %
        reservation = guard.reserve(request(n, layout), 0.1, candidates=["gemini-2.5-flash"])
        guard.settle(reservation, answer(request(n, layout), cost))
    with pytest.raises(BudgetExceeded):
        guard.reserve(request(9, layout), 0.5, candidates=["gemini-2.5-flash"])
    guard.wait_for_alerts()
    assert [r["threshold"] for r in received] == [0.5, 0.8, 1.0]
    assert all(r["event"] == "mva.budget_alert" and r["level"] == "session" for r in received)
    events = [e for e in read_events(layout.chronolog)[0] if e["event"] == "BUDGET_ALERT"]
    assert [e["data"]["threshold"] for e in events] == [0.5, 0.8, 1.0]
    assert any("BUDGET 80%" in line for line in lines)
    # A new guard on the same session (a resume) does not repeat them.
    again = guard_for(layout, session_usd=1.0)
    reservation = again.reserve(request(10, layout), 0.01, candidates=["gemini-2.5-flash"])
    again.settle(reservation, answer(request(10, layout), 0.01))
    assert len([e for e in read_events(layout.chronolog)[0] if e["event"] == "BUDGET_ALERT"]) == 3


def test_a_failing_webhook_is_logged_and_the_run_goes_on(tmp_path: Path) -> None:
    layout = session(tmp_path)
    lines: list[str] = []
    guard = BudgetGuard(layout, SessionPolicy(session_usd=1.0, alert_webhook="http://127.0.0.1:9/hook"),
                        chronolog=Chronolog(layout.chronolog, project="P", session_id=layout.session_id),
                        report=lines.append)
    reservation = guard.reserve(request(1, layout), 0.6, candidates=["gemini-2.5-flash"])
    guard.settle(reservation, answer(request(1, layout), 0.6))
    guard.wait_for_alerts()
    failed = [e for e in read_events(layout.chronolog)[0] if e["event"] == "BUDGET_ALERT_WEBHOOK_FAILED"]
    assert failed and "the run goes on" in failed[0]["data"]["error"]
    assert any("webhook failed" in line for line in lines)


def test_an_experiment_budget_counts_every_session_of_the_experiment(tmp_path: Path) -> None:
    first = session(tmp_path, "session_20260101_000000")
    second = session(tmp_path, "session_20260102_000000")
    other_experiment = session(tmp_path, "session_20260103_000000", experiment="F")
    g1 = guard_for(first, experiment_usd=1.0)
    r1 = g1.reserve(request(1, first), 0.7, candidates=["gemini-2.5-flash"])
    g1.settle(r1, answer(request(1, first), 0.7))
    g3 = guard_for(other_experiment, experiment_usd=1.0)
    g3.reserve(request(1, other_experiment), 0.9, candidates=["gemini-2.5-flash"])  # not the same experiment
    g2 = guard_for(second, experiment_usd=1.0)
    with pytest.raises(BudgetExceeded) as refused:
        g2.reserve(request(2, second), 0.4, candidates=["gemini-2.5-flash"])
    assert refused.value.level == "experiment" and "experiment E" in refused.value.message
    project = guard_for(session(tmp_path, "session_20260104_000000"), project_usd=2.0)
    with pytest.raises(BudgetExceeded) as over_project:  # 0.7 spent + 0.9 open in the project
        project.reserve(request(5, first), 0.5, candidates=["gemini-2.5-flash"])
    assert over_project.value.level == "project"


def test_reservations_left_by_a_dead_process_are_reconciled(tmp_path: Path) -> None:
    from mva_dagster.llm.archive import SessionArchive

    layout = session(tmp_path)
    archived, lost = request(1, layout), request(2, layout)
    for n, req in ((1, archived), (2, lost)):
        ledger.append(layout.cost_ledger, {
            "kind": "reserve", "id": f"r{n}", "pid": -1, "request_key": req.key(), "document_id": req.document_id,
            "model": req.model, "replicate": 1, "purpose": "analysis", "worst_usd": 0.25})
    SessionArchive(layout).store(archived, answer(archived, 0.05))
    assert ledger.session_totals(layout).open_usd == pytest.approx(0.5)
    guard_for(layout, session_usd=10.0)
    totals = ledger.session_totals(layout)
    assert totals.open_usd == 0
    assert totals.spent_usd == pytest.approx(0.05)  # the archived answer's own cost
    assert totals.uncertain_usd == pytest.approx(0.25)  # no answer: it may have been billed


def test_cost_report_for_a_session_an_experiment_and_a_project(tmp_path: Path) -> None:
    from mva_dagster.cli.main import main
    from mva_dagster.llm.archive import SessionArchive

    first = session(tmp_path, "session_20260101_000000")
    g = guard_for(first)
    for n, cost in ((1, 0.01), (2, 0.02)):
        reservation = g.reserve(request(n, first), 0.05, candidates=["gemini-2.5-flash"])
        g.settle(reservation, answer(request(n, first), cost))
    g.settle(g.reserve(request(3, first), 0.05, candidates=["gemini-2.5-flash"]), None, uncertain_attempts=1)
    old = session(tmp_path, "session_20250101_000000", experiment="F")  # from before the ledger
    SessionArchive(old).store(request(1, old), answer(request(1, old), 0.5))

    by_session = ledger.cost_report(first.root)
    assert by_session["level"] == "session" and by_session["total_usd"] == pytest.approx(0.03)
    assert by_session["calls"] == 2 and by_session["failed_calls"] == 1
    assert by_session["uncertain_usd"] == pytest.approx(0.05)
    assert ledger.cost_report(first.experiment.root)["level"] == "experiment"
    project = ledger.cost_report(first.experiment.project.root)
    assert project["level"] == "project" and project["total_usd"] == pytest.approx(0.53)
    assert {row["source"] for row in project["sessions"]} == {"ledger", "archive"}

    result = CliRunner().invoke(main, ["cost", str(first.experiment.project.root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total_usd"] == pytest.approx(0.53)
    text = CliRunner().invoke(main, ["cost", str(first.root)])
    assert text.exit_code == 0 and "$0.030000" in text.output and "fate is unknown" in text.output
    bad = CliRunner().invoke(main, ["cost", str(tmp_path)])
    assert bad.exit_code == 2 and "not a session, experiment or project" in bad.output
