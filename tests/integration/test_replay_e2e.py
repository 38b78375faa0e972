"""`mva replay`: a two-model session recomputed from its archive alone, with no provider or proxy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mva_dagster.launch import launch_session
from mva_dagster.proxy.stack import state_dir
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.steps.replay import replay_session
from tests.conftest import REPO

pytestmark = pytest.mark.integration
CIVIC = REPO / "tests" / "fixtures" / "civic_tone"


@pytest.fixture(scope="module")
def two_model_session(simulated_stack: object, tmp_path_factory: pytest.TempPathFactory) -> SessionLayout:
    root = tmp_path_factory.mktemp("replay")
    folder = root / "exp" / "civic_replay"
    folder.mkdir(parents=True)
    (folder / "experiment.md").write_text(
        "---\n"
        f"framework_file: {CIVIC / 'framework.md'}\ncorpus: {CIVIC / 'corpus'}\n"
        "models: [gemini-2.5-flash, claude-sonnet-4-5]\nruns_per_model: 2\n"
        "synthesis_model: gpt-4.1\n"
        "hypotheses:\n  H1: 'Runs agree on warmth.'\n  H2: 'Venues differ.'\n"
        "statistical_plan:\n"
        "  - test: {name: warmth reliability, hypothesis_ref: H1, method: icc, params: {data_source: warmth_score}}\n"
        "  - test: {name: by venue, hypothesis_ref: H2, method: anova,\n"
        "           params: {data_source: tone_balance, grouping_variable: venue}}\n"
        "---\n")
    return launch_session(folder, project_dir=root / "projects" / "P", provider="simulated", keep_stack=True)


def ledger_lines() -> int:
    ledger = state_dir("simulated") / "simulated_ledger.jsonl"
    return len(ledger.read_text().splitlines()) if ledger.exists() else 0


def test_cli_replay_is_byte_identical_without_any_provider(two_model_session: SessionLayout,
                                                           tmp_path: Path) -> None:
    layout = two_model_session
    assert "written by gpt-4.1" in (layout.results / "report.md").read_text()
    served = ledger_lines()
    home = tmp_path / "empty_mva_home"
    env = {k: v for k, v in os.environ.items() if k not in ("MVA_PROXY_URL",)}
    env.update(MVA_HOME=str(home), DAGSTER_HOME=str(tmp_path / "no_dagster"))
    out = tmp_path / "replayed"
    result = subprocess.run([sys.executable, "-m", "mva_dagster.cli.main", "replay", str(layout.root),
                             "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tables are byte-identical to the original session" in result.stdout
    assert "identical         synthesis.md" in result.stdout
    # Nothing was started or asked: no proxy/provider state in the replay's MVA_HOME, no new request
    # in the (running) simulated provider's ledger.
    assert not (home / "proxy").exists()
    assert ledger_lines() == served
    replayed = out / "P" / "experiments" / "civic_replay" / "sessions" / layout.session_id
    for name in ("scores.csv", "metrics.csv", "stats_tests.csv", "stats_reliability.csv"):
        assert (replayed / "results" / name).read_bytes() == (layout.results / name).read_bytes()
    assert not list((replayed / "llm_archive").glob("*.tmp"))


def test_replay_names_the_table_that_differs(two_model_session: SessionLayout, tmp_path: Path) -> None:
    copy = tmp_path / "P"
    shutil.copytree(two_model_session.root.parents[3], copy)
    session = SessionLayout(copy / "experiments" / "civic_replay" / "sessions" / two_model_session.session_id)
    metrics = session.results / "metrics.csv"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1].replace(",True,", ",True,9", 1)  # a hand-edited number in the first record
    metrics.write_text("\n".join(lines) + "\n")
    result = replay_session(session, tmp_path / "out")
    assert not result.identical
    assert [c.name for c in result.tables if c.status != "identical"] == ["metrics.csv"]
    assert "line 2" in next(c.detail for c in result.tables if c.name == "metrics.csv")


def test_replay_refuses_to_overwrite(two_model_session: SessionLayout, tmp_path: Path) -> None:
    from mva_dagster.errors import SessionError

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(SessionError, match="not empty"):
        replay_session(two_model_session, tmp_path / "busy")
    with pytest.raises(SessionError, match="outside the session"):
        replay_session(two_model_session, two_model_session.root / "replay")
