"""`mva cost PATH`: what a session, an experiment or a whole project has cost, from the cost ledgers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mva_dagster.cli._common import reports_errors


@click.command("cost")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output; the total is `total_usd`.")
@reports_errors
def cost_command(path: Path, as_json: bool) -> None:
    """Totals of the cost ledger(s) under PATH: a session folder, an experiment or a project.

    Amounts are what the proxy reported per call (x-litellm-response-cost); with the simulated
    provider they are what the run would have cost. `uncertain` counts calls whose connection broke
    after sending (they may have been billed), at their worst case.
    """
    from mva_dagster.llm.cost import cost_report, scope_of
    from mva_dagster.observe.reconcile import scope_details

    report = cost_report(path)
    # Per day, the proxy-ledger reconciliation and optimisation hints (mva_dagster/observe/reconcile.py).
    report.update(scope_details(scope_of(path)[1]))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['level'].capitalize()} {report['name']}: ${report['total_usd']:.6f} "
               f"for {report['calls']} answered call(s)"
               + (f", {report['failed_calls']} failed" if report["failed_calls"] else ""))
    if report["uncertain_usd"]:
        click.echo(f"  plus up to ${report['uncertain_usd']:.6f} for calls whose fate is unknown (connection "
                   "broke after sending)")
    if report["open_usd"]:
        click.echo(f"  ${report['open_usd']:.6f} reserved by calls in flight (or left by an interrupted run)")
    click.echo(f"  tokens: {report['prompt_tokens']:,} prompt, {report['completion_tokens']:,} completion")
    for model, values in report["by_model"].items():
        click.echo(f"  {model:<22} ${values.get('cost_usd', 0.0):.6f}  ({int(values.get('calls', 0))} calls)")
    for purpose, usd in report["by_purpose"].items():
        click.echo(f"  {purpose:<22} ${usd:.6f}")
    if report["level"] != "session":
        for row in report["sessions"]:
            flag = "  [paused by budget]" if row["paused_by_budget"] else ""
            click.echo(f"    {row['experiment']}/{row['session_id']}: ${row['total_usd']:.6f} "
                       f"({row['calls']} calls){flag}")
    for day, usd in report["by_day"].items():
        click.echo(f"  {day:<22} ${usd:.6f}")
    rec = report["reconciliation"]
    verdict = "within" if rec["within_tolerance"] else "NOT within"
    missing = f"; {rec['calls_without_ledger_line']} call(s) have no proxy ledger line" \
        if rec["calls_without_ledger_line"] else ""
    click.echo(f"  proxy ledger ${rec['proxy_ledger_usd']:.6f} vs ${rec['session_usd']:.6f} recorded: "
               f"{rec['difference_pct']:.2f} % apart, {verdict} {rec['tolerance_pct']:.0f} %{missing}")
    for hint in report["hints"]:
        click.echo(f"  hint: {hint}")
