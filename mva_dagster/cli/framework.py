"""`mva framework check FILE`: what is wrong with a framework, before a call is paid for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mva_dagster.cli._common import reports_errors


@click.group("framework")
def framework_group() -> None:
    """Check framework files."""


@framework_group.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--variant", default="default", show_default=True, help="The analysis variant to check in detail.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="Also list every constraint derived from the prose.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@reports_errors
def check(file: Path, variant: str, as_json: bool, verbose: bool, strict: bool) -> None:
    """Check FILE: its JSON block, the answer schema, formulas (variables, cycles, duplicates) and the
    range of every metric. Exits 1 when there are errors (or warnings, with --strict)."""
    from mva_dagster.extraction.check import check_framework, render

    result = check_framework(file, variant)
    click.echo(json.dumps(result.as_json(), indent=2) if as_json else render(result, verbose=verbose))
    if not result.ok or (strict and result.of("warning")):
        sys.exit(1)
