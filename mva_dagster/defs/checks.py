"""Asset checks on every session: attached to the session-partitioned ``scores`` asset.

They run in the same Dagster run as ``scores`` (the session job selects them with it), one result
per session partition, visible on the asset's *Checks* tab. None is blocking: a failed check marks
the session for a person to look at, it never throws away paid work. The logic lives in
:mod:`mva_dagster.observe.session_checks`; ``docs/runbook.md`` says what each failure means.
"""


from collections.abc import Callable

import dagster as dg

from mva_dagster.defs.factory import ExperimentDefs
from mva_dagster.errors import MvaError
from mva_dagster.observe.session_checks import CHECKS, CheckOutcome
from mva_dagster.sessions.chronolog import Chronolog
from mva_dagster.sessions.layout import ExperimentLayout
from mva_dagster.steps.context import SessionContext


def _build(name: str, fn: Callable[[SessionContext], CheckOutcome], description: str, asset_key: dg.AssetKey,
           partitions: dg.PartitionsDefinition, experiment: ExperimentLayout) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key, name=name, description=description, partitions_def=partitions,
                    blocking=False)
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        session_id = context.partition_key
        try:
            ctx = SessionContext.load(experiment.session(session_id))
            outcome = fn(ctx)
        except MvaError as exc:  # a check that cannot run says why instead of failing the run
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                       description=f"the check could not run: {exc}")
        if not outcome.passed:
            Chronolog(ctx.layout.chronolog, project=ctx.manifest.project, session_id=session_id).append(
                "CHECK_FAILED", {"check": name, "severity": outcome.severity, "description": outcome.description})
        metadata: dict[str, object] = {"details": dg.MetadataValue.md(outcome.markdown()), **outcome.metadata}
        return dg.AssetCheckResult(passed=outcome.passed, severity=dg.AssetCheckSeverity(outcome.severity),
                                   description=outcome.description, metadata=metadata)  # type: ignore[arg-type]

    return _check


def build_session_checks(bundle: ExperimentDefs) -> list[dg.AssetChecksDefinition]:
    """The session checks of one experiment, on its ``scores`` asset."""
    scores = bundle.key("scores")
    partitions = dg.DynamicPartitionsDefinition(name=bundle.sessions_partitions)
    return [_build(name, fn, description, scores, partitions, bundle.experiment)
            for name, (fn, description) in CHECKS.items()]
