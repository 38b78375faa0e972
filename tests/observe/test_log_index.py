"""The conversation log across sessions: DuckDB index, search filters, show, incremental refresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mva_dagster.cli.main import main
from mva_dagster.errors import MvaError
from mva_dagster.llm.conversations import conversations_path
from mva_dagster.observe.log_index import LogIndex, snippet
from mva_dagster.steps.context import SessionContext
from tests.observe.conftest import Land


def _projects(ctx: SessionContext) -> Path:
    return ctx.layout.experiment.project.root.parent


def test_search_filters_and_refresh(civic_session: SessionContext, land: Land) -> None:
    ctx = civic_session
    docs = sorted(d.id for d in ctx.manifest.documents)
    land(docs[0], 1, fields={"warmth_score": 0.2, "warmth_evidence": ["Marmalade Festival on Sunday"]})
    land(docs[1], 1, failed=True)
    with LogIndex([_projects(ctx)]) as index:
        hits = index.search("marmalade festival")
        assert [(h["document_id"], h["replicate"]) for h in hits] == [(docs[0], 1)]
        assert "Marmalade Festival" in snippet(hits[0], "marmalade festival")
        assert [h["status"] for h in index.search("HTTP 429", status="failed")] == ["failed"]
        assert index.search("marmalade", status="failed") == []
        assert index.search(None, model="no-such-model") == []
        assert len(index.search(None, model="gemini-2.5-flash")) == 2
        assert [h["document_id"] for h in index.search(None, document=docs[1][:4] + "*")] == [docs[1]]
        assert len(index.search(None, session=ctx.manifest.session_id)) == 2
        # Text of the prompt (the document) is searchable too; it is stored once per distinct prompt.
        word = ctx.document_text(ctx.manifest.document(docs[0])).split()[5]
        assert any(h["document_id"] == docs[0] for h in index.search(word))
        # Appended lines are picked up by the next query, and only they are read.
        land(docs[2], 2, fields={"warmth_score": 0.3, "warmth_evidence": ["a late arrival"]})
        assert index.refresh().new_calls == 1
        assert index.refresh().new_calls == 0
        assert [h["document_id"] for h in index.search("late arrival")] == [docs[2]]
        assert index.count() == 3
        found = index.find(hits[0]["call_id"][:10])
        assert [r["request_key"] for r in found] == [hits[0]["request_key"]]
        assert json.loads(found[0]["messages"])[0]["role"] == "system"
        with pytest.raises(MvaError):
            index.find("abc")


def test_a_rewritten_log_is_read_again(civic_session: SessionContext, land: Land) -> None:
    ctx = civic_session
    doc = ctx.manifest.documents[0].id
    land(doc, 1)
    land(doc, 2)
    with LogIndex([_projects(ctx)]) as index:
        assert index.refresh().new_calls == 2 and index.count() == 2
        path = conversations_path(ctx.layout)
        first = path.read_bytes().splitlines(keepends=True)[0]
        path.write_bytes(first + b'{"torn": ')  # shorter than before, and a line still being written
        assert index.refresh().new_calls == 1
        assert index.count() == 1


def test_cli_search_and_show(civic_session: SessionContext, land: Land) -> None:
    ctx = civic_session
    doc = ctx.manifest.documents[0].id
    land(doc, 1, fields={"warmth_score": 0.7, "warmth_evidence": ["thank you to every volunteer"]})
    runner = CliRunner()
    projects = str(_projects(ctx))
    result = runner.invoke(main, ["log", "search", "every volunteer", "--projects-dir", projects])
    assert result.exit_code == 0, result.output
    call_id = result.output.split()[0]
    assert call_id == f"call-{doc}-1"
    shown = runner.invoke(main, ["log", "show", call_id, "--projects-dir", projects])
    assert shown.exit_code == 0, shown.output
    assert "--- system ---" in shown.output and "--- response ---" in shown.output
    assert "thank you to every volunteer" in shown.output
    assert ctx.document_text(ctx.manifest.document(doc)).strip().splitlines()[0] in shown.output
    missing = runner.invoke(main, ["log", "show", "nosuchcall", "--projects-dir", projects])
    assert missing.exit_code == 2 and "no call 'nosuchcall'" in missing.output
