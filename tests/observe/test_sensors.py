"""The run-failure sensor turns a failed session run into an ALERT in the project chronolog."""

from __future__ import annotations

import dagster as dg
import pytest

from mva_dagster.defs.sensors import run_failure_alerts
from mva_dagster.sessions.chronolog import read_events
from mva_dagster.steps.context import SessionContext


@dg.op
def boom() -> None:
    raise RuntimeError("the proxy went away mid-run")


@dg.job
def failing_job() -> None:
    boom()


def _failed_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    result = failing_job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return run, failure


def test_failed_session_run_is_recorded(civic_session: SessionContext, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = civic_session.layout
    project = layout.experiment.project
    monkeypatch.setenv("MVA_PROJECTS_DIR", str(project.root.parent))
    tags = {"mva/project": project.name, "mva/experiment": layout.experiment.name,
            "mva/session": layout.session_id}
    with dg.instance_for_test() as instance:
        run, failure = _failed_run(instance, tags)
        context = dg.build_run_status_sensor_context(sensor_name=run_failure_alerts.name, dagster_event=failure,
                                                     dagster_instance=instance, dagster_run=run).for_run_failure()
        assert run_failure_alerts(context) is None
        other, other_failure = _failed_run(instance, {})
        context = dg.build_run_status_sensor_context(sensor_name=run_failure_alerts.name, dagster_event=other_failure,
                                                     dagster_instance=instance, dagster_run=other).for_run_failure()
        assert isinstance(run_failure_alerts(context), dg.SkipReason)
    for path in (project.chronolog, layout.chronolog):
        alerts = [e for e in read_events(path)[0] if e["event"] == "ALERT"]
        assert len(alerts) == 1, path
        data = alerts[0]["data"]
        assert data["kind"] == "run_failure" and data["run_id"] == run.run_id
        assert "the proxy went away mid-run" in data["message"] and "mva resume" in data["hint"]
