"""Whole sessions whose answers need every link of the extraction chain, through the real proxy.

The running simulated provider is reconfigured for each test (``POST /admin/config``) and restored
afterwards: one analysis model answers only cut-off JSON (``truncated``, even when re-asked),
another answers nested or malformed JSON, and the extraction model (set in the experiment) answers
in the nested style. So records come from field matching, the lenient reader and the LLM
transformation, whose calls go through the gateway and the proxy and are archived like every call.
One session serves every test of the module (sessions are the slow part). The per-style matrix over every
framework runs in-process in tests/extraction/test_styles_matrix.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest

from mva_dagster.demo.sotu_corpus import build_sotu_corpus
from mva_dagster.launch import launch_session
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.records import ExtractedRecord
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import SessionLayout
from tests.conftest import REPO, SHARED

pytestmark = pytest.mark.integration
DOCS = ("1982-Reagan-1", "1994-Clinton-1", "2010-Obama-1")


CFF42 = SHARED / "data" / "frameworks" / "cff" / "cff_v4.2.md"
DEMO = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"
NESTED = CFF42.exists()  # the nested contract of the shared CFF v4.2, else the project's flat one


@pytest.fixture(scope="module")
def session(simulated_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionLayout]:
    admin = httpx.Client(base_url=str(simulated_stack.upstream_url).removesuffix("/v1"), timeout=10)
    before = admin.get("/admin/config").json()["config"]
    admin.post("/admin/config", json={"style": "nested", "seed": 11, "faults": [
        {"kind": "truncated", "models": ["gemini-2.5-flash"], "rate": 1.0},
        {"kind": "malformed", "models": ["claude-sonnet-4-5"], "rate": 0.5}]}).raise_for_status()
    try:
        root = tmp_path_factory.mktemp("extraction_session")
        corpus = build_sotu_corpus(root / "corpus", words=60, fileids=DOCS)
        folder = root / "exp" / "chain"
        folder.mkdir(parents=True)
        (folder / "experiment.md").write_text(
            f"---\nname: chain\nframework_file: {CFF42 if NESTED else DEMO}\ncorpus: {corpus}\n"
            'models: ["gemini-2.5-flash", "claude-sonnet-4-5"]\nruns_per_model: 2\n'
            "extraction_model: vertex_ai/gemini-2.5-pro\n---\n\n# Extraction chain test\n")
        yield launch_session(folder / "experiment.md", project_dir=root / "projects" / "TEST",
                             provider="simulated", keep_stack=True)
    finally:
        admin.post("/admin/config", json=before).raise_for_status()
        admin.close()


def records(layout: SessionLayout) -> list[ExtractedRecord]:
    return [ExtractedRecord.model_validate_json(p.read_text()) for p in sorted(layout.extracted.glob("*.json"))]


def test_every_record_valid_with_its_link(session: SessionLayout) -> None:
    got = records(session)
    assert len(got) == 12 and all(r.valid for r in got), [(r.extraction_path, r.errors) for r in got if not r.valid]
    paths = {m: {r.extraction_path for r in got if r.model == m} for m in ("gemini-2.5-flash", "claude-sonnet-4-5")}
    assert paths["gemini-2.5-flash"] == {"llm_transform"}
    assert paths["claude-sonnet-4-5"] and paths["claude-sonnet-4-5"] <= {"bare_json+field_match", "lenient_json"}
    for record in got:
        assert record.extraction_trace and record.raw_answer is None and record.error_class is None
        if record.extraction_path == "llm_transform":
            # not the default (gemini-2.5-flash): the experiment's, resolved to its canonical alias
            assert record.extraction_model == "gemini-2.5-pro" and record.transform_request_keys
            assert "source_cut_off:finish_reason=length" in record.flags
            assert record.extraction_trace[0].startswith(("partial_json", "json:"))


def test_transformations_are_archived_calls(session: SessionLayout) -> None:
    transforms = [e for e in SessionArchive(session).entries() if e.request.purpose == "extraction"]
    keys = {k for r in records(session) for k in r.transform_request_keys}
    assert len(keys) == 6 and {e.request.key() for e in transforms} == keys
    assert all(e.request.model == "gemini-2.5-pro" and (e.answer.cost_usd or 0) > 0 for e in transforms)
    events, _ = read_events(session.chronolog)
    done = [e for e in events if e["event"] == "EXTRACTION_COMPLETED"]
    assert done and {e["data"]["extraction_model"] for e in done} == {"gemini-2.5-pro"}
    assert sum(e["data"]["transforms_sent"] for e in done) == len(transforms)


def test_nested_values_become_columns_and_formulas_evaluate(session: SessionLayout) -> None:
    scores = pd.read_csv(session.scores_csv)
    metrics = pd.read_csv(session.metrics_csv)
    assert scores["valid"].all() and scores["hope_score"].between(0, 1).all()
    if NESTED:
        assert {"hope_score", "fear_confidence", "amity_evidence", "envy_reasoning", "worldview"} <= set(scores.columns)
    for index in ("descriptive_cohesion_index", "motivational_cohesion_index", "full_cohesion_index"):
        assert metrics[index].notna().all()
