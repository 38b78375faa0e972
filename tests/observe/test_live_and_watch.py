"""Scores land in the session log and the live records as they come; `mva watch` draws them."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner

from mva_dagster.cli.main import main
from mva_dagster.observe.files import live_records_path
from mva_dagster.observe.live import LiveObserver
from mva_dagster.observe.watch import SessionState, render
from mva_dagster.sessions.appendlog import read_plain_log
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.manager import set_status
from mva_dagster.steps.context import SessionContext
from tests.observe.conftest import Land


def test_each_answer_lands_in_the_log_with_every_quote(civic_session: SessionContext, land: Land) -> None:
    ctx = civic_session
    docs = [d.id for d in ctx.manifest.documents]
    fields = {"register": "formal", "warmth_score": 0.9, "warmth_confidence": 0.8,
              "warmth_evidence": ["a quotation long enough to be worth reading in full, " * 4],
              "hostility_score": 0.1, "hostility_confidence": 0.7, "hostility_evidence": [],
              "overall_confidence": 0.6, "summary": "a summary that is not short " * 20}
    assert land(docs[0], 1, fields=fields) is None  # the document has a second run still to come
    markdown = land(docs[0], 2)
    assert markdown is not None and markdown.startswith(f"### {docs[0]}")
    assert "| dimension | score | confidence | evidence |" in markdown
    lines, _ = read_plain_log(ctx.layout.run_log)
    text = "\n".join(lines)
    assert f"[scores] {docs[0]} · gemini-2.5-flash · run 1: valid" in text
    assert fields["warmth_evidence"][0] in text and fields["summary"] in text  # type: ignore[index]
    events, _ = read_events(ctx.layout.chronolog)
    alerts = [e["data"] for e in events if e["event"] == "ALERT"]
    assert alerts[0]["rule"] == "warmth_score > 0.5" and alerts[0]["values"] == {"warmth_score": 0.9}
    assert live_records_path(ctx.layout).exists()


def test_watch_frame_while_running_and_after(civic_session: SessionContext, land: Land) -> None:
    ctx = civic_session
    docs = [d.id for d in ctx.manifest.documents]
    observer = LiveObserver(ctx, lambda line: None, docs)
    set_status(ctx.layout, "running")
    land(docs[0], 1, observer=observer)
    observer.waiting(docs[1], 4.5, "rate limited (HTTP 429)")
    land(docs[1], 1, failed=True, observer=observer)
    state = SessionState.open(ctx.layout)
    state.refresh()
    frame = render(state, now=datetime.now(UTC), width=120)
    total = len(docs) * 2
    assert "status: running" in frame
    assert f"1/{total} analysis calls" in frame
    assert "1 retry waits (4.5 s)" in frame and "rate limited (HTTP 429)" in frame
    assert "0 calls waited 1 s or more on rate limits or retries" in frame
    assert "cost so far  $0.000400" in frame
    assert f"latest scores  {docs[1]} · gemini-2.5-flash · run 1: failed" in frame
    assert f"{docs[1]} · gemini-2.5-flash · run 1: transient" in frame  # in the failures list
    # Later lines are read incrementally by the same state.
    land(docs[1], 1, observer=observer)
    set_status(ctx.layout, "completed")
    state.refresh()
    frame = render(state, width=120)
    assert "status: completed" in frame and f"2/{total} analysis calls" in frame and "failures     none" in frame
    result = CliRunner().invoke(main, ["watch", str(ctx.layout.root), "--once"])
    assert result.exit_code == 0, result.output
    assert "latest scores" in result.output and "warmth" in result.output
