"""`mva`: the researcher's command line for what the Dagster UI does not do.

Commands stay thin: they call the same functions the Dagster definitions use (one way to run a
session, whoever asks). Errors print as one clear message (exit 2); a session that finished with
failed items exits 3 after printing where its results are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import click

from mva_dagster.cli._common import PROVIDER_OPTION, reports_errors
from mva_dagster.cli.cost import cost_command
from mva_dagster.cli.estimate import estimate_command
from mva_dagster.cli.framework import framework_group
from mva_dagster.cli.health import health_command
from mva_dagster.cli.log import log_group
from mva_dagster.cli.provenance import provenance_command
from mva_dagster.cli.proxy import proxy_group
from mva_dagster.cli.replay import replay_command
from mva_dagster.cli.session import chronolog_group, migrate, resume, status
from mva_dagster.cli.watch import watch_command

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price map online
# Dagster marks some APIs we rely on (partition mappings, backfill policies) beta; say it once in docs,
# not on every command.
warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview).*")

DEMO_EXPERIMENT = Path(__file__).resolve().parents[2] / "projects" / "MVA" / "experiments" / "sotu_demo"


@click.group()
@click.version_option(package_name="mva-dagster")
def main() -> None:
    """Run LLM text-analysis experiments as Dagster assets through a LiteLLM proxy."""


main.add_command(proxy_group)
main.add_command(log_group)
main.add_command(watch_command)
main.add_command(provenance_command)
main.add_command(health_command)
main.add_command(framework_group)
main.add_command(resume)
main.add_command(status)
main.add_command(chronolog_group)
main.add_command(migrate)
main.add_command(replay_command)
main.add_command(cost_command)
main.add_command(estimate_command)


def print_results(layout_root: Path) -> int:
    """Print where the session's results are and a one-line outcome; return the exit code."""
    from mva_dagster.sessions.layout import SessionLayout
    from mva_dagster.steps.context import SessionContext
    from mva_dagster.steps.extraction import load_records

    layout = SessionLayout(layout_root)
    records = load_records(SessionContext.load(layout))
    failed = [r for r in records if not r.valid]
    click.echo("")
    click.echo(f"Session: {layout.root}")
    for path in (layout.report_md, layout.scores_csv, layout.metrics_csv, layout.duckdb):
        if path.exists():
            click.echo(f"  {path.relative_to(layout.root)}: {path}")
    click.echo(f"  llm_archive/: {len(list(layout.llm_archive.glob('*.json')))} archived answers")
    click.echo(f"Records: {len(records) - len(failed)} valid, {len(failed)} invalid or failed "
               f"of {len(records)}")
    if failed:
        click.echo(f"Some items failed; their raw answers (if any) are kept. Details: {layout.report_md}")
        return 3
    return 0


@main.command()
@click.argument("experiment", type=click.Path(exists=True, path_type=Path))
@click.option("--corpus", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use this corpus folder instead of the experiment's.")
@click.option("--model", help="Run with this model alias instead of the experiment's models (recorded).")
@PROVIDER_OPTION
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Project folder for an experiment that lives outside projects/ (default projects/default).")
@click.option("--keep-proxy", is_flag=True, help="Leave the proxy and provider running afterwards.")
@click.option("--budget", type=click.FloatRange(min=0), default=None,
              help="Session budget in USD (overrides the experiment's budget:). No call is sent that "
                   "could cross it; the session pauses instead.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation when the estimate is above the threshold.")
@click.option("--confirm-above", type=click.FloatRange(min=0), default=None,
              help="Ask before a real run whose expected cost exceeds this (USD; default $MVA_CONFIRM_ABOVE_USD "
                   "or 1.00).")
@reports_errors
def run(experiment: Path, corpus: Path | None, model: str | None, provider: str | None,
        project_dir: Path | None, keep_proxy: bool, budget: float | None, yes: bool,
        confirm_above: float | None) -> None:
    """Run EXPERIMENT (a folder with experiment.md, or the file) as a new session.

    Shows the cost estimate first. Exit codes: 0 done, 2 error, 3 finished with failed items,
    4 paused by its budget (resumable; nothing lost).
    """
    from mva_dagster.cli.estimate import confirm_run, confirm_threshold
    from mva_dagster.errors import BudgetExceeded
    from mva_dagster.launch import launch_session

    threshold = confirm_threshold(confirm_above)
    try:
        layout = launch_session(experiment, project_dir=project_dir, corpus=corpus, model=model,
                                provider=provider, keep_stack=keep_proxy, budget=budget,  # type: ignore[arg-type]
                                confirm=lambda plan: confirm_run(plan, yes=yes, threshold=threshold))
    except BudgetExceeded as exc:
        click.echo(f"PAUSED: {exc}", err=True)
        sys.exit(4)
    sys.exit(print_results(layout.root))


@main.command()
@click.option("--build-only", is_flag=True, help="Only build the demo corpus.")
@PROVIDER_OPTION
@click.option("--words", default=200, show_default=True, help="Words per excerpt.")
@reports_errors
def demo(build_only: bool, provider: str | None, words: int) -> None:
    """Build the demo corpus (State of the Union excerpts) and run the demo experiment on it."""
    from mva_dagster.demo.sotu_corpus import build_sotu_corpus
    from mva_dagster.launch import launch_session

    corpus = build_sotu_corpus(DEMO_EXPERIMENT / "corpus", words=words)
    click.echo(f"Demo corpus: {corpus}", err=True)
    if build_only:
        return
    if provider in (None, "local"):
        from mva_dagster.providers.model_fetch import ensure_local_model

        ensure_local_model()
    layout = launch_session(DEMO_EXPERIMENT, provider=provider)  # type: ignore[arg-type]
    sys.exit(print_results(layout.root))


@main.command()
@click.option("--no-model", is_flag=True, help="Skip fetching the local model.")
@reports_errors
def setup(no_model: bool) -> None:
    """One-time set-up: the Dagster instance folder and the local model (verified by sha256)."""
    from mva_dagster.instance import ensure_dagster_home

    click.echo(f"Dagster instance: {ensure_dagster_home()}")
    if not no_model:
        from mva_dagster.providers.model_fetch import ensure_local_model

        click.echo(f"Local model: {ensure_local_model()}")


@main.command()
@click.option("--port", default=3000, show_default=True)
@reports_errors
def ui(port: int) -> None:
    """Start the Dagster UI and daemon (`dagster dev`) on the mva instance."""
    from mva_dagster.instance import REPO_ROOT, ensure_dagster_home

    home = ensure_dagster_home()
    click.echo(f"DAGSTER_HOME={home}; open http://127.0.0.1:{port}", err=True)
    dagster = Path(sys.executable).with_name("dagster")
    argv = [str(dagster) if dagster.exists() else "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
            "-h", "127.0.0.1", "-p", str(port)]
    sys.exit(subprocess.call(argv, cwd=REPO_ROOT))


if __name__ == "__main__":  # pragma: no cover
    main()
