"""Scheduled re-runs: an experiment whose spec has ``schedule: "<cron>"`` gets a new session on it.

Off unless asked for. The schedule launches a small job whose one op starts a session exactly as
`mva run` does (same function), on the instance the daemon runs; the dagster-daemon must be
running (`mva ui` starts it).
"""


from pathlib import Path

import dagster as dg

from mva_dagster.defs.factory import ExperimentDefs
from mva_dagster.errors import MvaError


def experiment_source(bundle: ExperimentDefs) -> Path | None:
    """The researcher's experiment file: in the experiment folder, or where the last session took it."""
    native = bundle.experiment.root / "experiment.md"
    if native.exists():
        return native
    from mva_dagster.sessions.manager import load_manifest

    for session in reversed(bundle.experiment.sessions()):
        try:
            source = Path(load_manifest(session).experiment_source)
        except MvaError:
            continue
        if source.exists():
            return source
    return None


def _schedule_for(bundle: ExperimentDefs, source: Path, cron: str) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    project_dir = bundle.experiment.project.root

    @dg.op(name=f"{bundle.group}__start_session")
    def start_session(context: dg.OpExecutionContext) -> None:
        from mva_dagster.launch import launch_session

        layout = launch_session(source, project_dir=project_dir, instance=context.instance,
                                experiment_name=bundle.experiment.name, terminal=False)
        context.log.info(f"session finished: {layout.root}")

    @dg.job(name=f"{bundle.group}__scheduled_session", tags={"mva/experiment": bundle.experiment.name})
    def scheduled_session() -> None:
        start_session()

    schedule = dg.ScheduleDefinition(job=scheduled_session, cron_schedule=cron,
                                     default_status=dg.DefaultScheduleStatus.RUNNING,
                                     name=f"{bundle.group}__schedule")
    return scheduled_session, schedule


def build_schedules(bundles: list[ExperimentDefs]) -> tuple[list[dg.JobDefinition], list[dg.ScheduleDefinition]]:
    from mva_dagster.specs.experiment import load_experiment

    jobs, schedules = [], []
    for bundle in bundles:
        source = experiment_source(bundle)
        if source is None:
            continue
        try:
            cron = load_experiment(source).schedule
        except MvaError:
            continue  # a broken spec is reported by `mva run`, not by loading the code location
        if cron:
            job, schedule = _schedule_for(bundle, source, cron)
            jobs.append(job)
            schedules.append(schedule)
    return jobs, schedules
