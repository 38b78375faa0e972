"""`mva estimate EXPERIMENT`: the cost range and rate-limit time of a run, before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mva_dagster.cli._common import PROVIDER_OPTION, reports_errors


@click.command("estimate")
@click.argument("experiment", type=click.Path(exists=True, path_type=Path))
@click.option("--corpus", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Estimate for this corpus folder instead of the experiment's.")
@click.option("--model", help="Estimate for this model alias instead of the experiment's models.")
@PROVIDER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (total_usd per scenario).")
@reports_errors
def estimate_command(experiment: Path, corpus: Path | None, model: str | None, provider: str | None,
                     as_json: bool) -> None:
    """Estimate the cost (low / expected / high, and the ceiling budgets reserve) and the time the
    rate limits imply for running EXPERIMENT. Nothing is created and nothing is sent."""
    from mva_dagster.launch import plan_session
    from mva_dagster.llm.estimate import estimate_plan, render

    plan = plan_session(experiment, corpus=corpus, model=model, provider=provider)  # type: ignore[arg-type]
    result = estimate_plan(plan)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(render(result))


CONFIRM_ENV = "MVA_CONFIRM_ABOVE_USD"
DEFAULT_CONFIRM_ABOVE_USD = 1.0


def confirm_threshold(explicit: float | None = None) -> float:
    import os

    if explicit is not None:
        return explicit
    raw = os.environ.get(CONFIRM_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_CONFIRM_ABOVE_USD
    except ValueError:
        raise click.UsageError(f"{CONFIRM_ENV}={raw!r} is not an amount in USD") from None


def confirm_run(plan: object, *, yes: bool, threshold: float, interactive: bool | None = None) -> None:
    """What `mva run` does before creating a session: show the estimate; above ``threshold`` (USD,
    expected cost, real providers only - nothing else is paid) ask, unless ``--yes``. Without a
    terminal to ask on it never waits for an answer: it stops and says to pass ``--yes``."""
    import sys

    from mva_dagster.errors import MvaError
    from mva_dagster.launch import Plan
    from mva_dagster.llm.estimate import estimate_plan, render

    assert isinstance(plan, Plan)
    try:
        result = estimate_plan(plan)
    except Exception as exc:  # noqa: BLE001 - an estimate must never be what stops a run; budgets still hold
        click.echo(f"  (no cost estimate: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})", err=True)
        if plan.provider == "real" and not yes:
            raise MvaError("the cost of this real run could not be estimated, so it was not started",
                           hint="pass --yes to run it anyway (budgets still hold)") from exc
        return
    click.echo(render(result), err=True)
    expected = result.total("expected")
    budget = plan.budget_override if plan.budget_override is not None else plan.experiment.budget
    if budget is not None and result.total("low") > budget:
        click.echo(f"  warning: even the low estimate (${result.total('low'):.4f}) is above the session budget "
                   f"(${budget:.4f}): the session will pause before it is complete", err=True)
    if plan.provider != "real" or expected <= threshold or yes:
        return
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise MvaError(f"the expected cost ${expected:.2f} is above the confirmation threshold ${threshold:.2f}, "
                       "and there is no terminal to ask on",
                       hint=f"pass --yes to run anyway, or raise the threshold ({CONFIRM_ENV} or --confirm-above)")
    if not click.confirm(f"Expected cost ${expected:.2f} (up to ${result.total('high'):.2f}). Run it?",
                         default=False, err=True):
        raise MvaError("not started: nothing was created or paid for")
