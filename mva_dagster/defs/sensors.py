"""The run-failure sensor: a failed Dagster run of a session becomes an alert in the chronologs.

Runs launched from the UI, by a schedule or a backfill fail where nobody is watching a terminal;
this sensor (it needs the dagster-daemon, which `mva ui` starts) appends an ``ALERT`` event of kind
``run_failure`` to the project chronolog and to the session chronolog when the run names one, with
the first error and what to do (``docs/runbook.md``, "run_failure").
"""


from typing import Any

import dagster as dg

from mva_dagster.sessions.chronolog import Chronolog
from mva_dagster.sessions.layout import SAFE_NAME, SESSION_ID, ProjectLayout

RUNBOOK_HINT = ("nothing paid is lost (answers are archived); read the error, fix the cause, then "
                "`mva resume <session>` or re-launch the failed partitions (docs/runbook.md, run_failure)")


def record_run_failure(tags: dict[str, str], run_id: str, job_name: str, message: str) -> list[str]:
    """Append the alert to the project's (and session's) chronolog; returns the files written."""
    from mva_dagster.definitions import projects_roots

    project_name = tags.get("mva/project")
    if not project_name or not SAFE_NAME.match(project_name):
        return []
    written = []
    data: dict[str, Any] = {"kind": "run_failure", "run_id": run_id, "job": job_name,
                            "experiment": tags.get("mva/experiment"), "message": message[:2000],
                            "hint": RUNBOOK_HINT}
    session_id = tags.get("mva/session")
    for root in projects_roots():
        project = ProjectLayout(root / project_name)
        if not project.root.is_dir():
            continue
        Chronolog(project.chronolog, project=project.name).append("ALERT", data, session_id=session_id)
        written.append(str(project.chronolog))
        experiment_name = tags.get("mva/experiment")
        if session_id and SESSION_ID.match(session_id) and experiment_name and SAFE_NAME.match(experiment_name):
            layout = project.experiment(experiment_name).session(session_id)
            if layout.root.is_dir():
                Chronolog(layout.chronolog, project=project.name, session_id=session_id).append("ALERT", data)
                written.append(str(layout.chronolog))
        break
    return written


def _error_text(event: dg.DagsterEvent) -> str:
    """The step's error and its causes, one line each, without the stack traces."""
    data = event.step_failure_data
    error = data.error if data is not None else None
    lines = [event.message or ""] if error is None else []
    while error is not None:
        lines.append(error.message.strip())
        error = error.cause
    return "\n".join(line for line in lines if line)


@dg.run_failure_sensor(name="mva_run_failure_alerts", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Records every failed run of a session as an ALERT in the project chronolog.")
def run_failure_alerts(context: dg.RunFailureSensorContext) -> dg.SkipReason | None:
    run = context.dagster_run
    errors = [_error_text(e) for e in context.get_step_failure_events()]
    message = "\n".join(e for e in errors if e) or context.failure_event.message or "the run failed"
    written = record_run_failure(dict(run.tags), run.run_id, run.job_name, message)
    if not written:
        return dg.SkipReason(f"run {run.run_id} is not a session run (no mva/project tag) or its project is gone")
    context.log.info(f"alert recorded in {', '.join(written)}")
    return None
