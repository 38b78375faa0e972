"""`mva proxy start|stop|status`: the LiteLLM proxy (and its provider server) for one mode."""

from __future__ import annotations

import json

import click

from mva_dagster.cli._common import reports_errors


@click.group("proxy")
def proxy_group() -> None:
    """Run the LiteLLM proxy that every LLM call goes through."""


@proxy_group.command("start")
@click.option("--provider", "mode", type=click.Choice(["real", "local", "simulated"]), default="simulated",
              show_default=True, help="Which provider the proxy sends calls to.")
@reports_errors
def start(mode: str) -> None:
    """Start the proxy (and the local/simulated provider server) in the background."""
    from mva_dagster.proxy.stack import ensure_stack

    stack = ensure_stack(mode)  # type: ignore[arg-type]
    click.echo(f"proxy ({mode}) running at {stack.proxy.url} (pid {stack.proxy.pid})")
    if stack.upstream_url:
        click.echo(f"provider server at {stack.upstream_url}")
    click.echo("the master key is in $LITELLM_MASTER_KEY or $MVA_HOME/proxy/master_key (never printed)")


@proxy_group.command("stop")
@click.option("--provider", "mode", type=click.Choice(["real", "local", "simulated", "all"]), default="all",
              show_default=True)
@reports_errors
def stop(mode: str) -> None:
    """Stop the proxy and provider server of one mode (default: all)."""
    from mva_dagster.proxy.stack import MODES, stop_stack

    for each in (MODES if mode == "all" else (mode,)):
        stopped = stop_stack(each)  # type: ignore[arg-type]
        click.echo(f"{each}: stopped {', '.join(stopped)}" if stopped else f"{each}: nothing running")


@proxy_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def status(as_json: bool) -> None:
    """Show each mode's proxy: running, healthy, URL, config hash. Exit 1 if none is healthy."""
    from mva_dagster.proxy.process import proxy_status
    from mva_dagster.proxy.stack import MODES, state_dir

    report = {mode: proxy_status(state_dir(mode)) for mode in MODES}
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        for mode, item in report.items():
            if not item.get("running"):
                click.echo(f"{mode:9} not running")
            else:
                click.echo(f"{mode:9} {'healthy' if item.get('healthy') else 'UNHEALTHY'} at {item['url']} "
                           f"(pid {item['pid']}, config {str(item.get('config_hash'))[:12]}, log {item.get('log')})")
    if not any(item.get("healthy") for item in report.values()):
        raise SystemExit(1)
