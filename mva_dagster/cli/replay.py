"""`mva replay SESSION_DIR`: recompute a session from its archive and prove the tables are the same."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mva_dagster.cli._common import reports_errors

EXIT_DIFFERENT = 4


@click.command("replay")
@click.argument("session_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the recomputed session (a new or empty folder). Default: a new "
                   "temporary folder, printed at the end.")
@reports_errors
def replay_command(session_dir: Path, out: Path | None) -> None:
    """Recompute extraction, scores, metrics, statistics, synthesis and report of SESSION_DIR from its
    llm_archive/ alone - no provider or proxy is started, no call is sent - and compare every CSV
    table with the original byte for byte. Exits 0 when all are identical, 4 when one differs."""
    from mva_dagster.sessions.layout import session_layout_for
    from mva_dagster.steps.replay import replay_session

    result = replay_session(session_layout_for(session_dir), out)
    click.echo(f"Replayed {result.original.root}")
    click.echo(f"     into {result.replay.root}  (0 provider calls)")
    for item in [*result.tables, *result.documents]:
        click.echo(f"  {item.status:<17} {item.name}" + (f"  ({item.detail})" if item.detail else ""))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.synthesis is not None:
        s = result.synthesis.grounding.summary()
        click.echo(f"Synthesis (from the archive, written by {result.synthesis.model}): "
                   f"{s['numbers_unmatched']} of {s['numbers_checked']} numbers and {s['quotes_unmatched']} of "
                   f"{s['quotes_checked']} quotations unmatched")
    if result.identical:
        click.echo(f"All {len(result.tables)} tables are byte-identical to the original session.")
        return
    different = [c.name for c in result.tables if c.status != "identical"]
    click.echo(f"{len(different)} of {len(result.tables)} tables differ: {', '.join(different)}", err=True)
    sys.exit(EXIT_DIFFERENT)
