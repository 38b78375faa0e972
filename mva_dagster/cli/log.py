"""`mva log search|show|replay`: the conversation log of every session, searchable and replayable."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mva_dagster.cli._common import reports_errors

PROJECTS_OPTION = click.option(
    "--projects-dir", "projects_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Projects folder (or one session folder) to search; repeatable. Default: $MVA_PROJECTS_DIR or ./projects.")


def _roots(projects_dirs: tuple[Path, ...]) -> list[Path]:
    from mva_dagster.definitions import projects_roots

    return [p.resolve() for p in projects_dirs] or projects_roots()


def _one(call_id: str, projects_dirs: tuple[Path, ...]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from mva_dagster.errors import MvaError
    from mva_dagster.observe.log_index import LogIndex

    with LogIndex(_roots(projects_dirs)) as index:
        rows = index.find(call_id)
    calls = {(r["call_id"], r["request_key"]) for r in rows if not r["from_archive"]} or \
        {(r["call_id"], r["request_key"]) for r in rows}
    if not rows:
        raise MvaError(f"no call {call_id!r} in the conversation logs under {', '.join(map(str, _roots(projects_dirs)))}",
                       hint="`mva log search` lists call ids; pass --projects-dir if the session lives elsewhere")
    if len(calls) > 1:
        listed = "\n  ".join(f"{c} (request key {k[:16]})" for c, k in sorted(calls))
        raise MvaError(f"{call_id!r} matches {len(calls)} calls:\n  {listed}", hint="give more characters")
    return rows[0], rows[1:]


@click.group("log")
def log_group() -> None:
    """Search, show and replay the conversation log: every prompt and every answer."""


@log_group.command("search")
@click.argument("text", required=False)
@click.option("--model", help="Model alias asked for, or the provider's model id.")
@click.option("--doc", "document", help="Document id (* matches any characters).")
@click.option("--status", type=click.Choice(["ok", "empty", "failed", "superseded"]),
              help="Outcome of the call (superseded: an answer a re-ask replaced).")
@click.option("--session", help="Only this session (id or folder).")
@click.option("--limit", default=20, show_default=True, help="At most this many calls, newest first.")
@click.option("--all", "include_archive_hits", is_flag=True, help="Also list answers re-used from the archive.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per call (full prompt and answer).")
@PROJECTS_OPTION
@reports_errors
def search(text: str | None, model: str | None, document: str | None, status: str | None, session: str | None,
           limit: int, include_archive_hits: bool, as_json: bool, projects_dirs: tuple[Path, ...]) -> None:
    """Calls whose answer, prompt or error contains TEXT (case-insensitive), newest first."""
    from mva_dagster.observe.log_index import LogIndex, snippet

    with LogIndex(_roots(projects_dirs)) as index:
        rows = index.search(text, model=model, document=document, status=status, session=session,
                            include_archive_hits=include_archive_hits, limit=limit)
        total = index.count()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str, ensure_ascii=False))
        return
    for row in rows:
        cost = f"${row['cost_usd']:.6f}" if row.get("cost_usd") is not None else "-"
        click.echo(f"{row['call_id']}  {row['ts']}  {row['project']}/{row['experiment']}/{row['session_id']}  "
                   f"{row['document_id']}  {row['model']}  run {row['replicate']}  {row['status']}"
                   + ("  (from archive)" if row.get("from_archive") else "") + f"  {cost}")
        click.echo(f"    {snippet(row, text)}")
    click.echo(f"{len(rows)} call(s) shown of {total} indexed" + (" (--limit reached)" if len(rows) == limit else ""),
               err=True)


def _ledger_line(row: dict[str, Any]) -> dict[str, Any] | None:
    from mva_dagster.observe.ledger import session_ledger
    from mva_dagster.sessions.layout import SessionLayout

    lines = session_ledger(SessionLayout(Path(row["session_dir"])))
    for item in reversed(lines):
        if item.get("status") == "success" and (item.get("litellm_call_id") == row["call_id"]
                                                or item.get("request_key") == row["request_key"]):
            return item
    return None


@log_group.command("show")
@click.argument("call_id")
@click.option("--json", "as_json", is_flag=True, help="The entry as JSON.")
@PROJECTS_OPTION
@reports_errors
def show(call_id: str, as_json: bool, projects_dirs: tuple[Path, ...]) -> None:
    """Everything about one call: metadata, provider version, the full prompt and the full answer."""
    row, others = _one(call_id, projects_dirs)
    ledger = _ledger_line(row)
    if as_json:
        click.echo(json.dumps({**row, "proxy_ledger": ledger, "reuses": others}, default=str, indent=2,
                              ensure_ascii=False))
        return
    out = [f"call {row['call_id']}  (request key {row['request_key']})",
           f"  session    {row['session_dir']}" + ("  [replay]" if row.get("replay") else ""),
           f"  document   {row['document_id']} · model {row['model']} · run {row['replicate']} · {row['purpose']}",
           f"  outcome    {row['status']}" + (f" ({row['error_class']}: {row['error']})" if row.get("error_class") else "")
           + f" · finish_reason {row.get('finish_reason')} · attempts {row.get('attempts')}"
           + f" · proxy retries {row.get('proxy_retries') or 0}",
           f"  when       {row['ts']} · latency {row.get('latency_s')} s",
           f"  tokens     {row.get('prompt_tokens')} in / {row.get('completion_tokens')} out · cost "
           + (f"${row['cost_usd']:.6f}" if row.get("cost_usd") is not None else "-"),
           "  provider   " + (f"{ledger.get('provider_response_model')} (model id the provider returned; proxy "
                                f"deployment {ledger.get('model_id')}, {ledger.get('litellm_model')})" if ledger else
                                "unknown (no proxy ledger line in the session's logs/)"),
           f"  fingerprint {row.get('system_fingerprint')}",
           f"  params     {row.get('params')}"]
    messages = json.loads(row["messages"]) if row.get("messages") else []
    for message in messages:
        out += ["", f"--- {message.get('role')} ---", str(message.get("content", ""))]
    out += ["", "--- response ---", str(row["response"]) if row.get("response") is not None else "(none)"]
    if others:
        out += ["", f"also in the log {len(others)} more time(s): "
                + ", ".join(f"{o['ts']} ({'from archive' if o['from_archive'] else o['status']})" for o in others)]
    click.echo("\n".join(out))


@log_group.command("replay")
@click.argument("call_id")
@click.option("--model", help="Send the prompt to this model alias instead of the original one.")
@click.option("--width", type=int, help="Width of the side-by-side view (default: the terminal's).")
@PROJECTS_OPTION
@reports_errors
def replay(call_id: str, model: str | None, width: int | None, projects_dirs: tuple[Path, ...]) -> None:
    """Re-send a recorded prompt through the proxy and show both answers side by side (this costs a call)."""
    from mva_dagster.observe.replay import replay_call, score_comparison, side_by_side

    row, _ = _one(call_id, projects_dirs)
    result = replay_call(row, model=model)
    answer = result.answer
    left = f"original: {row['model']} run {row['replicate']} ({row['ts']})"
    right = f"replay: {result.request.model} ({answer.finished_at}, " + \
        (f"${answer.cost_usd:.6f})" if answer.cost_usd is not None else "cost unknown)")
    click.echo(side_by_side(left, result.original_text, right, answer.raw_text, width))
    schema = (result.request.response_format or {}).get("json_schema", {}).get("schema")
    click.echo(score_comparison(result.original_text, answer.raw_text, schema))
    click.echo(f"replay archived in {result.folder} (call {answer.call_id})", err=True)
    if result.original_text == answer.raw_text:
        click.echo("the two answers are identical", err=True)
    sys.stdout.flush()
