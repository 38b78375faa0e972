"""A run killed with ``kill -9`` leaves ``status: running`` behind: `mva status` and `mva resume` tell
it from a live run by the process recorded in ``session.json`` (pid, host, boot id, start time).

The run here is a real process that marks the session running, as the runner does, and is then
SIGKILLed; no proxy is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mva_dagster.errors import SessionError
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.liveness import ProcessRef, check_process, this_process
from mva_dagster.sessions.manager import load_manifest, save_manifest, set_status
from mva_dagster.sessions.status import session_status
from tests.conftest import REPO
from tests.sessions.test_archive_sources import make_session

RUNNER = """
import sys, time
from pathlib import Path
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import set_status
set_status(SessionLayout(Path(sys.argv[1])), "running")
print("running", flush=True)
time.sleep(600)
"""


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SessionLayout:
    monkeypatch.setenv("MVA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MVA_CHRONOLOG_KEY", raising=False)
    return make_session(tmp_path / "P")


@pytest.fixture
def run_process(layout: SessionLayout) -> Iterator[subprocess.Popen[str]]:
    """A real process that sets the session's status to running, then works (sleeps) until killed."""
    process = subprocess.Popen([sys.executable, "-c", RUNNER, str(layout.root)], stdout=subprocess.PIPE,
                               text=True, cwd=REPO)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "running"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def cli(*args: str) -> tuple[int, str]:
    from mva_dagster.cli.main import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def quiet(_line: str) -> None:
    pass


def test_a_killed_run_is_reported_interrupted_and_resumable(layout: SessionLayout,
                                                            run_process: subprocess.Popen[str]) -> None:
    from mva_dagster.sessions.resume import resume_session

    pid = run_process.pid
    recorded = load_manifest(layout).running_process
    assert recorded is not None and recorded.pid == pid and recorded.host == this_process().host
    if sys.platform.startswith("linux"):
        assert recorded.start_ticks is not None and recorded.boot_id is not None

    # While the process lives, the session is running: status says so, resume refuses.
    status = session_status(layout)
    assert status.run_status == "running" and status.liveness is not None and status.liveness.state == "alive"
    code, output = cli("status", str(layout.root))
    assert code == 1 and f"status 'running (process {pid}" in output and "still running" in output
    with pytest.raises(SessionError, match="still running"):
        resume_session(layout.root, dry_run=True, say=quiet)

    run_process.send_signal(signal.SIGKILL)
    assert run_process.wait(timeout=30) == -signal.SIGKILL
    assert load_manifest(layout).status == "running"  # nobody could write the end of the run

    # Killed: reported as interrupted, with the process; the manifest itself is only read.
    status = session_status(layout)
    assert status.run_status == "interrupted"
    assert status.run_status_text == f"interrupted (process {pid} no longer running)"
    code, output = cli("status", str(layout.root), "--json")
    report = json.loads(output)
    assert code == 1 and report["status"] == "interrupted" and report["recorded_status"] == "running"
    assert report["status_detail"] == f"interrupted (process {pid} no longer running)"
    assert report["process"]["pid"] == pid and report["process_state"] == "dead"
    code, output = cli("status", str(layout.root))
    assert f"status 'interrupted (process {pid} no longer running)'" in output
    assert f"to finish: mva resume {layout.root}" in output
    assert load_manifest(layout).status == "running"

    # Resume proceeds as for an interrupted session: a dry run plans it and changes nothing ...
    said: list[str] = []
    plan = resume_session(layout.root, dry_run=True, say=said.append).plan
    assert plan.assets and plan.assets[0] == "analysis" and plan.documents
    assert f"session {layout.session_id}: interrupted (process {pid} no longer running)" in said
    assert load_manifest(layout).status == "running"


def test_resume_records_the_interruption_before_it_runs(layout: SessionLayout,
                                                         run_process: subprocess.Popen[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A real resume of the killed run: the status is corrected, RESUME_STARTED names what it found,
    and the runner then records the resuming process (the runner is replaced: no proxy here)."""
    import mva_dagster.defs.runner as runner
    from mva_dagster.sessions.resume import resume_session

    pid = run_process.pid
    run_process.kill()
    run_process.wait(timeout=30)
    seen: dict[str, object] = {}

    def fake_run_session(layout_: SessionLayout, *args: object, **kwargs: object) -> None:
        seen["status_before"] = load_manifest(layout_).status
        set_status(layout_, "running")
        seen["process"] = load_manifest(layout_).running_process
        set_status(layout_, "completed")

    monkeypatch.setattr(runner, "run_session", fake_run_session)
    resume_session(layout.root, from_step="scores", offline=True, say=quiet)
    assert seen["status_before"] == "interrupted"
    process = seen["process"]
    assert isinstance(process, ProcessRef) and process.pid == os.getpid()
    manifest = load_manifest(layout)
    assert manifest.status == "completed" and manifest.running_process is None  # cleared with the status
    started = [e for e in read_events(layout.chronolog)[0] if e["event"] == "RESUME_STARTED"]
    assert started[-1]["data"]["previous_status"] == f"interrupted (process {pid} no longer running)"


def test_a_reused_pid_or_a_reboot_is_not_the_run(layout: SessionLayout) -> None:
    me = this_process()
    assert check_process(me).state == "alive"
    if me.start_ticks is not None:  # Linux: the pid lives, but it is another process than the run
        reused = me.model_copy(update={"start_ticks": me.start_ticks + 1})
        liveness = check_process(reused)
        assert liveness.state == "dead" and "another process" in liveness.detail
    if me.boot_id is not None:
        rebooted = me.model_copy(update={"boot_id": "0" * 36})
        assert check_process(rebooted).state == "dead"


def test_a_run_on_another_host_needs_force(layout: SessionLayout) -> None:
    from mva_dagster.sessions.resume import check_not_running

    set_status(layout, "running")
    manifest = load_manifest(layout)
    assert manifest.running_process is not None
    manifest.running_process = manifest.running_process.model_copy(update={"host": "elsewhere.example"})
    save_manifest(layout, manifest)
    status = session_status(layout)
    assert status.liveness is not None and status.liveness.state == "unknown"
    assert status.run_status_text.startswith("running? (process") and "elsewhere.example" in status.run_status_text
    assert any("--force" in line for line in status.render())
    with pytest.raises(SessionError, match="elsewhere.example") as refused:
        check_not_running(layout, manifest)
    assert "--force" in (refused.value.hint or "")
    assert check_not_running(layout, manifest, force=True) is None


def test_manifests_without_the_process_still_load(layout: SessionLayout) -> None:
    """Sessions written before ``running_process`` existed: no field, status as recorded."""
    data = json.loads(layout.manifest.read_text())
    data.pop("running_process", None)
    data["status"] = "running"
    layout.manifest.write_text(json.dumps(data))
    manifest = load_manifest(layout)
    assert manifest.running_process is None
    status = session_status(layout)
    assert status.run_status == "running" and status.liveness is not None
    assert status.liveness.state == "unknown"
    from mva_dagster.sessions.resume import check_not_running

    assert check_not_running(layout, manifest) is None  # nothing to check against: resumed as before
