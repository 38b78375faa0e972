"""`mva health`: fails clearly when the proxy is down or dead, or an archive was tampered with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mva_dagster.cli.main import main
from mva_dagster.observe.health import check_archives, check_disk, check_proxies
from mva_dagster.steps.context import SessionContext
from tests.observe.conftest import Land


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MVA_HOME", str(tmp_path / "mva_home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("MVA_PROJECTS_DIR", str(tmp_path / "projects"))
    return tmp_path


def test_no_proxy_fails_with_the_reason_and_exit_1(empty_home: Path) -> None:
    result = CliRunner().invoke(main, ["health", "--no-archive"])
    assert result.exit_code == 1, result.output
    assert "FAIL  proxy" in result.output and "no LiteLLM proxy is running" in result.output
    assert "hint: start one with `mva proxy start" in result.output
    assert result.output.strip().splitlines()[-1].startswith("health: FAIL")


def test_a_dead_proxy_and_a_deaf_one_are_named(empty_home: Path) -> None:
    from mva_dagster.proxy.stack import state_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    simulated = state_dir("simulated")
    simulated.mkdir(parents=True)
    (simulated / "proxy.log").write_text("Traceback: the proxy fell over\n")
    (simulated / "proxy.json").write_text(json.dumps({"pid": dead.pid, "url": "http://127.0.0.1:9",
                                                      "log": str(simulated / "proxy.log")}))
    checks = check_proxies()
    assert checks[0].status == "fail" and "the proxy died" in checks[0].detail
    assert "the proxy fell over" in checks[0].detail and "mva proxy start --provider simulated" in str(checks[0].hint)
    # Alive but not answering (a hung process): liveliness fails, and the check says which probe.
    local = state_dir("local")
    local.mkdir(parents=True)
    (local / "proxy.json").write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:9"}))
    deaf = next(c for c in check_proxies(("local",)) if c.name == "proxy/local")
    assert deaf.status == "fail" and "not healthy: liveliness" in deaf.detail


def test_archive_tampering_and_disk_thresholds(civic_session: SessionContext, land: Land) -> None:
    doc = civic_session.manifest.documents[0].id
    land(doc, 1)
    projects = civic_session.layout.experiment.project.root.parent
    assert check_archives([projects])[0].status == "ok"
    entry = next(civic_session.layout.llm_archive.glob("*.json"))
    data = json.loads(entry.read_text())
    data["request"]["params"]["temperature"] = 1.5  # the answer no longer belongs to its request
    entry.write_text(json.dumps(data))
    (civic_session.layout.llm_archive / ".x.json.123.tmp").write_text("{")
    failed = check_archives([projects])[0]
    assert failed.status == "fail" and entry.name in failed.detail and "not the hash" in failed.detail
    assert check_disk({"here": projects}, min_free=1 << 60)[0].status == "fail"
    assert check_disk({"here": projects}, min_free=1)[0].status in ("ok", "warn")
