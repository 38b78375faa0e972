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
from mva_dagster.cli.proxy import proxy_group

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
@reports_errors
def run(experiment: Path, corpus: Path | None, model: str | None, provider: str | None,
        project_dir: Path | None, keep_proxy: bool) -> None:
    """Run EXPERIMENT (a folder with experiment.md, or the file) as a new session."""
    from mva_dagster.launch import launch_session

    layout = launch_session(experiment, project_dir=project_dir, corpus=corpus, model=model,
                            provider=provider, keep_stack=keep_proxy)  # type: ignore[arg-type]
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
