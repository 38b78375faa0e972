"""`mva watch SESSION_DIR`: the live dashboard of a session (works while `mva run` runs elsewhere)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mva_dagster.cli._common import reports_errors


def resolve_session(path: Path) -> Path:
    """A session folder, or an experiment folder (its newest session)."""
    from mva_dagster.errors import SessionError
    from mva_dagster.sessions.layout import ExperimentLayout, session_layout_for

    if not (path / "session.json").exists() and (path / "sessions").is_dir():
        sessions = ExperimentLayout(path.resolve()).sessions()
        if not sessions:
            raise SessionError(f"{path} has no sessions yet", hint="start one with `mva run`")
        return sessions[-1].root
    return session_layout_for(path).root


@click.command("watch")
@click.argument("session_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and tests).")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between frames.")
@reports_errors
def watch_command(session_dir: Path, once: bool, interval: float) -> None:
    """Progress, throughput, waits, cost, alerts, the latest scores and failures of a session, live.

    SESSION_DIR is a session folder (or an experiment folder: its newest session). Exits when the
    session stops running; Ctrl-C leaves the session running.
    """
    from mva_dagster.observe.watch import watch
    from mva_dagster.sessions.layout import SessionLayout

    layout = SessionLayout(resolve_session(session_dir))
    try:
        code = watch(layout, once=once, interval=interval)
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)
