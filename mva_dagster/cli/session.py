"""`mva resume`, `mva status`, `mva chronolog verify` and `mva migrate`: sessions after the fact.

Thin wrappers over :mod:`mva_dagster.sessions.resume`, :mod:`~mva_dagster.sessions.status`,
:mod:`~mva_dagster.sessions.chronolog` and :mod:`mva_dagster.migrate`; heavy imports happen inside
the commands so `mva --help` stays fast.

Exit codes: 0 done / intact; 1 ``status``: work missing or failed, ``verify``: a check failed;
2 an error (message and hint printed); 3 ``resume`` finished but some records are invalid or failed;
4 ``status``: an integrity problem, ``resume``: paused by its budget again (resumable; nothing lost).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from mva_dagster.cli._common import reports_errors

SESSION_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("resume")
@click.argument("session_dir", type=SESSION_DIR)
@click.option("--from", "from_step", metavar="STEP",
              help="Re-run from this step on: documents, analysis, extraction, scores, metrics, report, "
                   "or any later step of the experiment. Default: only what is missing.")
@click.option("--allow-changes", is_flag=True,
              help="If the framework, experiment or corpus changed, start a new session linked to this "
                   "one (unchanged calls are answered from this archive at $0) instead of refusing.")
@click.option("--offline", is_flag=True,
              help="Leave out the steps that make LLM calls (e.g. turn a migrated session's answers into "
                   "tables without provider keys).")
@click.option("--dry-run", is_flag=True, help="Say what would run; run nothing.")
@click.option("--keep-proxy", is_flag=True, help="Leave the proxy and provider running afterwards.")
@click.option("--budget", type=click.FloatRange(min=0), default=None,
              help="Session budget in USD from now on (replaces the one in session_policy.json, as "
                   "`mva run --budget` sets it). No call is sent that could cross it; the session pauses instead.")
@click.option("--force", is_flag=True,
              help="Resume a session that session.json says is running on another host (which cannot be "
                   "checked from here): only once you are sure that run has stopped.")
@reports_errors
def resume(session_dir: Path, from_step: str | None, allow_changes: bool, offline: bool, dry_run: bool,
           keep_proxy: bool, budget: float | None, force: bool) -> None:
    """Finish SESSION_DIR: re-run only what is missing or invalid; nothing archived is paid again.

    Exit codes: 0 done, 2 error, 3 finished with failed items, 4 paused by its budget again
    (resumable; nothing lost).
    """
    from mva_dagster.cli.main import print_results
    from mva_dagster.errors import BudgetExceeded
    from mva_dagster.sessions.resume import resume_session

    try:
        outcome = resume_session(session_dir, from_step=from_step, allow_changes=allow_changes, dry_run=dry_run,
                                 offline=offline, keep_stack=keep_proxy, budget=budget, force=force)
    except BudgetExceeded as exc:
        click.echo(f"PAUSED: {exc}", err=True)
        sys.exit(4)
    if dry_run:
        return
    sys.exit(print_results(outcome.layout.root))


@click.command("status")
@click.argument("session_dir", type=SESSION_DIR)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def status(session_dir: Path, as_json: bool) -> None:
    """Per step: done / missing / failed; and the session's integrity (snapshots, documents, archive)."""
    from mva_dagster.sessions.layout import session_layout_for
    from mva_dagster.sessions.status import session_status

    report = session_status(session_layout_for(session_dir))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.render():
            click.echo(line)
    if not report.intact:
        sys.exit(4)
    if not report.complete:
        sys.exit(1)


@click.group("chronolog")
def chronolog_group() -> None:
    """Check chronologs (the signed, append-only event logs)."""


@chronolog_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key-env", default="MVA_CHRONOLOG_KEY", show_default=True,
              help="Environment variable holding the HMAC key (never pass a key on the command line).")
@click.option("--allow-unsigned", is_flag=True, help="Do not fail on events written without a key.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def verify(file: Path, key_env: str, allow_unsigned: bool, as_json: bool) -> None:
    """Verify FILE's HMAC-SHA256 signatures, event order and event ids; exit 1 if a check fails."""
    from dataclasses import asdict

    from mva_dagster.sessions.chronolog import verify_chronolog

    key = os.environ.get(key_env)
    report = verify_chronolog(file, key.encode() if key else None)
    ok = report.ok(allow_unsigned=allow_unsigned)
    if as_json:
        click.echo(json.dumps({**asdict(report), "path": str(report.path), "ok": ok}, indent=2))
    else:
        for line in report.summary():
            click.echo(line)
        click.echo("OK" if ok else "FAILED")
    if not ok:
        sys.exit(1)


@click.command("migrate")
@click.argument("legacy_dir", type=SESSION_DIR)
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Project to migrate into (default: projects/<the legacy project's name>).")
@click.option("--dry-run", is_flag=True, help="Show what would be created and copied; write nothing.")
@reports_errors
def migrate(legacy_dir: Path, project_dir: Path | None, dry_run: bool) -> None:
    """Copy a Discernus experiment folder into sessions; the source is never modified."""
    from mva_dagster.migrate import migrate_legacy

    result = migrate_legacy(legacy_dir, project_dir=project_dir, dry_run=dry_run,
                            say=lambda line: click.echo(line, err=True))
    for line in result.summary():
        click.echo(line)
