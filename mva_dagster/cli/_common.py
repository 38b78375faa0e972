"""What every `mva` command shares: error reporting and the provider choice."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mva_dagster.errors import MvaError

F = TypeVar("F", bound=Callable[..., Any])

PROVIDER_OPTION = click.option(
    "--provider", type=click.Choice(["real", "local", "simulated"]), default=None,
    help="Who answers: the real providers (keys from the environment), the local model, or the "
         "simulated provider (no cost; real prices recorded as what it would have cost). "
         "Default: local if every model is local, else real.")


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def reports_errors(fn: F) -> F:
    """Turn our errors into a clear message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MvaError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted; nothing paid is lost (answers are archived). Resume with `mva resume`.", 130)

    return wrapper  # type: ignore[return-value]
