"""`mva provenance SESSION_DIR`: the methods appendix (models, exact versions, hashes, costs)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mva_dagster.cli._common import reports_errors


@click.command("provenance")
@click.argument("session_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option("--no-sync", is_flag=True, help="Use only the ledger lines already copied into the session.")
@click.option("--strict", is_flag=True, help="Exit 1 when a flag is raised (e.g. provider version drift).")
@reports_errors
def provenance_command(session_dir: Path, fmt: str, output: Path | None, no_sync: bool, strict: bool) -> None:
    """Export SESSION_DIR's provenance: models and the versions the providers returned, parameters,
    dates, prompt/corpus/framework hashes, costs and software versions."""
    from mva_dagster.cli.watch import resolve_session
    from mva_dagster.fsutil import atomic_write_text
    from mva_dagster.observe.provenance import build_provenance, to_markdown
    from mva_dagster.sessions.layout import SessionLayout

    prov = build_provenance(SessionLayout(resolve_session(session_dir)), sync=not no_sync)
    text = to_markdown(prov) if fmt == "md" else json.dumps(prov, indent=2, ensure_ascii=False, default=str) + "\n"
    if output:
        atomic_write_text(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    for flag in prov["flags"]:
        click.echo(f"FLAG {flag['kind']}: {flag['message']}", err=True)
    if strict and prov["flags"]:
        raise SystemExit(1)
