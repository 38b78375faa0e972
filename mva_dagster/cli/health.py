"""`mva health`: proxies, provider servers, the Dagster instance, disk and archives; exit 1 on a failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mva_dagster.cli._common import reports_errors


@click.command("health")
@click.option("--provider", "modes", multiple=True, type=click.Choice(["real", "local", "simulated"]),
              help="Require this mode's proxy to be running (repeatable). Default: check whatever runs, "
                   "and fail if nothing does.")
@click.option("--projects-dir", "projects_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Projects folder whose archives to verify (default: $MVA_PROJECTS_DIR or ./projects).")
@click.option("--no-archive", is_flag=True, help="Skip verifying every archive entry (the slow part).")
@click.option("--min-free-gb", default=1.0, show_default=True, help="Fail below this much free disk.")
@click.option("--json", "as_json", is_flag=True)
@reports_errors
def health_command(modes: tuple[str, ...], projects_dirs: tuple[Path, ...], no_archive: bool, min_free_gb: float,
                   as_json: bool) -> None:
    """Check everything a session needs, without spending money; exit 1 with the reason if something is wrong."""
    from mva_dagster.observe.health import format_checks, run_checks

    checks = run_checks(modes=modes or None, roots=[p.resolve() for p in projects_dirs] or None,
                        archive=not no_archive, min_free=int(min_free_gb * (1 << 30)))
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        click.echo(format_checks(checks), nl=False)
    sys.exit(1 if any(c.status == "fail" for c in checks) else 0)
