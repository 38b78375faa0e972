"""Seeing a session while it runs, through the real proxy, simulated provider and Dagster instance.

One session is run as `mva run` runs it (on a thread here, to share the already started stack and
imports), one call at a time with the provider answering slowly, so the test can look at the
session log, the Dagster instance and `mva watch` while the session is still running, then tell the
provider to report a new model version (``POST /admin/config``) for the rest of the session.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pandas as pd
import pytest
from click.testing import CliRunner

from mva_dagster.cli.main import main
from mva_dagster.demo.sotu_corpus import build_sotu_corpus
from mva_dagster.instance import get_instance
from mva_dagster.launch import launch_session
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.conversations import read_entries
from mva_dagster.observe.fields import flatten
from mva_dagster.observe.provenance import build_provenance
from mva_dagster.observe.reconcile import reconcile_costs
from mva_dagster.sessions.appendlog import read_plain_log
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import load_manifest
from mva_dagster.steps.context import SessionContext
from mva_dagster.steps.extraction import load_records
from tests.conftest import REPO

pytestmark = pytest.mark.integration
DEMO_FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"
DOCS = ("1990-Bush-1", "2002-Bush-1", "2016-Obama-1")
ALIAS = "gemini-2.5-flash"


class _Run(threading.Thread):
    """The session, run exactly as `mva run` runs it, on a thread (so the test can watch it)."""

    def __init__(self, experiment: Path, project_dir: Path) -> None:
        super().__init__(daemon=True)
        self.experiment, self.project_dir = experiment, project_dir
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            launch_session(self.experiment, project_dir=self.project_dir, provider="simulated", keep_stack=True,
                           say=lambda line: None)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _wait_for(what: str, condition: Callable[[], Any], run: _Run, limit_s: float = 180) -> Any:
    """Poll until ``condition`` is truthy; fail with the run's error if the run ends first."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if not run.is_alive():
            value = condition()
            if value:
                return value
            pytest.fail(f"the session ended before {what}: {run.error!r}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _observations(instance: dg.DagsterInstance, experiment: str, session_id: str) -> dict[str, str]:
    """document -> the Markdown 'scores' of its analysis materialization, as Dagster stored it
    (recorded the moment the document's last call lands, while the run goes on)."""
    records = instance.fetch_materializations(dg.AssetKey(["OBS", experiment, "analysis"]), limit=100).records
    found = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is None or not str(materialization.partition or "").endswith(f"|{session_id}"):
            continue
        scores = materialization.metadata.get("scores")
        if scores is not None:
            found[str(materialization.partition).split("|")[0]] = str(scores.value)
    return found


def _check(asset_key: dg.AssetKey, name: str, session_id: str) -> Any:
    history = get_instance().event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(asset_key, name), limit=20)
    record = next(r for r in history if r.partition == session_id)
    assert record.event is not None and record.event.dagster_event is not None
    return record.event.dagster_event.event_specific_data


_SESSION: dict[str, Any] = {}


def watched_session(simulated_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the watched session once per test process (test_webserver.py looks at it in the UI)."""
    if not _SESSION:
        _SESSION.update(_run_watched_session(simulated_stack, tmp_path_factory))
    return _SESSION


@pytest.fixture(scope="module")
def observed(simulated_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return watched_session(simulated_stack, tmp_path_factory)


def _run_watched_session(simulated_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("observe")
    corpus = build_sotu_corpus(root / "corpus", words=40, fileids=DOCS)
    folder = root / "src" / "watched"
    folder.mkdir(parents=True)
    (folder / "experiment.md").write_text(
        f"---\nname: watched\nframework_file: {DEMO_FRAMEWORK}\ncorpus: {corpus}\nmodels: [{ALIAS}]\n"
        "runs_per_model: 2\ngeneration:\n  temperature: 0.3\nbudget: 1.0\n"
        "alerts: ['fear_score > 0.5', 'overall_confidence < 0.5']\n---\n")
    admin = str(simulated_stack.upstream_url).removesuffix("/v1") + "/admin/config"  # type: ignore[attr-defined]
    original = httpx.get(admin).json()["config"]
    httpx.post(admin, json={**original, "latency_s": 1.0, "model_versions": {ALIAS: f"{ALIAS}-001"}}).raise_for_status()
    console = io.StringIO()
    saved = os.environ.get("MVA_MAX_CONCURRENCY")
    os.environ["MVA_MAX_CONCURRENCY"] = "1"  # one call at a time: the version changes between two calls
    run = _Run(folder / "experiment.md", root / "projects" / "OBS")
    seen: dict[str, Any] = {}
    try:
        with contextlib.redirect_stderr(console):  # what `mva run` prints to the terminal
            run.start()
            sessions = root / "projects" / "OBS" / "experiments" / "watched" / "sessions"
            session_dir = _wait_for("the session folder",
                                    lambda: next(iter(sorted(sessions.glob("session_*"))), None), run)
            layout = SessionLayout(session_dir)
            first = f"[scores] {DOCS[0]} · {ALIAS} · run 2"
            _wait_for("the first document's scores in logs/session.log",
                      lambda: any(first in line for line in read_plain_log(layout.run_log)[0]), run)
            # The provider updates its model mid-session: the other documents' calls are still to come.
            httpx.post(admin, json={**original, "latency_s": 1.0, "model_versions": {ALIAS: f"{ALIAS}-002"}}
                       ).raise_for_status()
            instance = get_instance()
            seen["observed"] = _wait_for("the first document's scores in Dagster",
                                         lambda: _observations(instance, "watched", layout.session_id), run)
            # Both were there while the session was still running.
            seen["status_then"] = load_manifest(layout).status
            seen["alive_then"] = run.is_alive()
            seen["frame_then"] = CliRunner().invoke(main, ["watch", str(layout.root), "--once"]).output
            # Pipelined: records and results/scores.csv grow while calls are still being answered.
            seen["archived_then"] = len(SessionArchive(layout).keys())
            seen["extracted_then"] = len(list(layout.extracted.glob("*.json")))
            seen["csv_rows_then"] = [len(pd.read_csv(layout.scores_csv))]
            while run.is_alive():  # every read of the growing file is a valid CSV
                seen["csv_rows_then"].append(len(pd.read_csv(layout.scores_csv)))
                time.sleep(0.2)
            run.join(timeout=300)
        assert not run.is_alive() and run.error is None, repr(run.error)
        seen.update(layout=layout, console=console.getvalue(), projects=root / "projects")
    finally:
        httpx.post(admin, json=original)
        if saved is None:
            os.environ.pop("MVA_MAX_CONCURRENCY", None)
        else:
            os.environ["MVA_MAX_CONCURRENCY"] = saved
    return seen


def test_scores_reach_the_log_and_dagster_before_the_session_ends(observed: dict[str, Any]) -> None:
    assert observed["status_then"] == "running" and observed["alive_then"]
    layout: SessionLayout = observed["layout"]
    ctx = SessionContext.load(layout)
    records = [r for r in load_records(ctx) if r.document_id == DOCS[0]]
    markdown = observed["observed"][DOCS[0]]
    lines = "\n".join(read_plain_log(layout.run_log)[0])
    for record in records:
        assert record.valid
        assert f"#### {ALIAS} · run {record.replicate}: valid" in markdown
        for _path, value in flatten(record.fields):
            for quote in value if isinstance(value, list) else []:
                assert quote in markdown and quote in lines  # every quotation, in full
            if isinstance(value, float):
                assert str(value) in markdown
    assert "status: running" in observed["frame_then"]
    # Console alerts were printed while it ran, and each is a chronolog event.
    events, _ = read_events(layout.chronolog)
    threshold = [e["data"] for e in events if e["event"] == "ALERT" and e["data"].get("kind") == "threshold"]
    assert threshold and len(threshold) == observed["console"].count("ALERT fear_score > 0.5") + \
        observed["console"].count("ALERT overall_confidence < 0.5")


def test_conversation_log_matches_the_archive_one_to_one(observed: dict[str, Any]) -> None:
    layout: SessionLayout = observed["layout"]
    archive = {e.answer.request_key: e for e in SessionArchive(layout).entries()}
    sent = [c for c in read_entries(layout) if not c["from_archive"] and c["status"] in ("ok", "empty")]
    assert len(sent) == len(archive) and {c["request_key"] for c in sent} == set(archive)
    for entry in sent:
        stored = archive[entry["request_key"]]
        assert entry["response"] == stored.answer.raw_text and entry["messages"] == stored.request.messages
        assert entry["call_id"] == stored.answer.call_id and entry["params"] == stored.request.params
        assert (entry["prompt_tokens"], entry["completion_tokens"], entry["cost_usd"]) == (
            stored.answer.prompt_tokens, stored.answer.completion_tokens, stored.answer.cost_usd)


def test_provenance_records_the_provider_versions_and_flags_the_change(observed: dict[str, Any]) -> None:
    layout: SessionLayout = observed["layout"]
    prov = build_provenance(layout)
    versions = prov["models"][ALIAS]["provider_versions"]
    assert set(versions) == {f"{ALIAS}-001", f"{ALIAS}-002"}
    assert all(c["provider_model"] in versions and c["response_model_seen_by_client"] == ALIAS
               for c in prov["calls"])  # the client only ever saw the alias
    assert [f["kind"] for f in prov["flags"]] == ["model_version_drift"]
    assert prov["costs"]["total_usd"] == pytest.approx(prov["costs"]["ledger_total_usd"])
    assert prov["models"][ALIAS]["registry"]["context_window"] > 0
    copied = [json.loads(line) for line in (layout.logs / "proxy_ledger.jsonl").read_text().splitlines()]
    assert {c["call_id"] for c in prov["calls"]} <= {line["litellm_call_id"] for line in copied}
    events, _ = read_events(layout.chronolog)
    assert any(e["event"] == "ALERT" and e["data"].get("kind") == "model_version_drift" for e in events)
    assert f"ALERT {ALIAS} was answered by 2 provider versions" in observed["console"]
    result = CliRunner().invoke(main, ["provenance", str(layout.root), "--format", "md", "--strict"])
    assert result.exit_code == 1
    assert f"`{ALIAS}-001`" in result.output and f"`{ALIAS}-002`" in result.output
    assert "FLAG model_version_drift" in result.output
    as_json = CliRunner().invoke(main, ["provenance", str(layout.root), "--format", "json", "-o",
                                        str(layout.root / "provenance.json")])
    assert as_json.exit_code == 0
    assert json.loads((layout.root / "provenance.json").read_text())["session"]["id"] == layout.session_id


def test_asset_checks_and_cost_reconciliation(observed: dict[str, Any]) -> None:
    layout: SessionLayout = observed["layout"]
    scores = dg.AssetKey(["OBS", "watched", "scores"])
    assert _check(scores, "coverage", layout.session_id).passed
    assert _check(scores, "score_ranges", layout.session_id).passed
    assert _check(scores, "cost_within_budget", layout.session_id).passed
    drift = _check(scores, "provider_versions", layout.session_id)
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    alerts = _check(scores, "alerts", layout.session_id)
    events, _ = read_events(layout.chronolog)
    live = [e for e in events if e["event"] == "ALERT" and e["data"].get("kind") == "threshold"]
    assert alerts.metadata["alerts"].value == len(live) and alerts.passed == (not live)
    reconciliation = reconcile_costs(layout)
    assert reconciliation.within_tolerance and reconciliation.difference_pct <= 5.0
    assert reconciliation.matched_calls == len(SessionArchive(layout).entries())
    report = CliRunner().invoke(main, ["cost", str(layout.experiment.root), "--json"])
    assert report.exit_code == 0, report.output
    totals = json.loads(report.output)
    assert totals["reconciliation"]["within_tolerance"] and totals["reconciliation"]["difference_pct"] <= 5.0
    assert set(totals["by_step"]) == {"analysis", "synthesis"} and len(totals["by_day"]) >= 1


def test_watch_search_show_replay_and_health(observed: dict[str, Any]) -> None:
    layout: SessionLayout = observed["layout"]
    runner = CliRunner()
    frame = runner.invoke(main, ["watch", str(layout.root), "--once"]).output
    assert "status: completed" in frame and "6/6 analysis calls" in frame and "documents 3/3" in frame
    projects = str(observed["projects"])
    record = next(r for r in load_records(SessionContext.load(layout)) if r.document_id == DOCS[1])
    quote = next(v[0] for _, v in flatten(record.fields) if isinstance(v, list) and v)
    found = runner.invoke(main, ["log", "search", quote, "--doc", DOCS[1], "--model", ALIAS, "--status", "ok",
                                 "--projects-dir", projects])
    assert found.exit_code == 0, found.output
    call_id = found.output.split()[0]
    assert runner.invoke(main, ["log", "search", quote, "--status", "failed", "--projects-dir", projects]
                         ).output.startswith("0 call(s)")
    shown = runner.invoke(main, ["log", "show", call_id, "--projects-dir", projects])
    assert f"{ALIAS}-00" in shown.output and quote in shown.output  # provider version from the ledger
    same = runner.invoke(main, ["log", "replay", call_id, "--projects-dir", projects, "--width", "160"])
    assert same.exit_code == 0, same.output
    assert "the two answers are identical" in same.output  # the simulated provider is deterministic
    other = runner.invoke(main, ["log", "replay", call_id, "--model", "gemini-2.5-pro", "--projects-dir", projects])
    assert other.exit_code == 0 and "replay: gemini-2.5-pro" in other.output
    assert "identical" not in other.output
    assert len(list((layout.root / "replays").glob("replay_*/llm_archive/*.json"))) == 2
    healthy = runner.invoke(main, ["health", "--provider", "simulated", "--projects-dir", projects])
    assert healthy.exit_code == 0, healthy.output
    assert "OK    proxy/simulated" in healthy.output and "OK    archive" in healthy.output


def test_extraction_and_scores_csv_are_pipelined(observed: dict[str, Any]) -> None:
    """Each answer is extracted and its row added to results/scores.csv as it lands, not after the
    whole batch; the file is a valid CSV at every moment, and ends sorted and complete."""
    assert observed["archived_then"] < 6
    assert 1 <= observed["extracted_then"] <= observed["archived_then"] + 1
    rows = observed["csv_rows_then"]
    assert rows[0] >= 1 and rows == sorted(rows) and rows[-1] <= 6
    layout: SessionLayout = observed["layout"]
    final = pd.read_csv(layout.scores_csv)
    assert len(final) == 6
    assert list(final["document_id"]) == sorted(final["document_id"])
