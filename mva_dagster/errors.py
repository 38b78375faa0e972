"""The one exception hierarchy of mva-dagster.

Every error a researcher or operator can meet is a subclass of :class:`MvaError`, carries a message
that says what went wrong *and where*, and (when there is one) a ``hint`` that says what to do.
``docs/errors.md`` documents the tree; keep the two in step.

    MvaError
    ├── SpecError                 a framework / experiment / corpus file is unusable
    │   ├── CorpusError           a corpus or one of its documents is unusable
    │   └── FormulaError          a calculation_spec formula is unsafe or inconsistent
    ├── SessionError              the project/experiment/session tree is inconsistent
    ├── ArchiveError              the LLM archive is unreadable or was tampered with
    ├── ProxyError                the LiteLLM proxy cannot be started or reached
    ├── ProviderError             a provider server (local / simulated) cannot be started
    ├── SetupError                a one-time set-up step (model download, checksum) failed
    ├── BudgetExceeded            the next call could cross a budget: the session pauses
    └── LLMError                  one LLM call failed; ``error_class`` says how to treat it
        ├── TransientLLMError     429, 5xx, timeouts, resets: retried with backoff
        ├── PermanentLLMError     400, 401/403, context too long, content filter: item fails
        └── RecoverableLLMError   malformed or truncated output: re-ask, then extraction fallback
"""

from __future__ import annotations

from pathlib import Path


class MvaError(Exception):
    """Base of every error mva-dagster raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class SpecError(MvaError):
    """A spec file (framework, experiment, corpus) is malformed; names the file and the field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.field = field
        where = ": ".join(part for part in (self.file, field) if part)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class CorpusError(SpecError):
    """A corpus directory, its manifest, or one of its documents is unusable."""


class FormulaError(SpecError):
    """A calculation_spec formula does not parse, uses a forbidden construct, or is inconsistent."""


class SessionError(MvaError):
    """The session tree is missing, inconsistent, or does not match what was asked."""


class ArchiveError(MvaError):
    """An archive entry cannot be read, or its content does not match its recorded hash."""


class ProxyError(MvaError):
    """The LiteLLM proxy cannot be started, stopped, or reached."""


class ProviderError(MvaError):
    """A provider server that mva-dagster starts (local model, simulated) failed."""


class SetupError(MvaError):
    """A set-up step (fetching the local model, verifying its checksum) failed."""


class BudgetExceeded(MvaError):
    """The next call's worst-case cost could cross a budget; the session stops cleanly."""


class LLMError(MvaError):
    """One LLM call failed. ``error_class`` is ``transient``, ``permanent`` or ``recoverable``."""

    error_class = "unknown"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message, hint=hint)


class TransientLLMError(LLMError):
    """Worth retrying after a wait: rate limits, server errors, timeouts, dropped connections."""

    error_class = "transient"


class PermanentLLMError(LLMError):
    """Retrying cannot help: bad request, auth, context too long, content filtered."""

    error_class = "permanent"


class RecoverableLLMError(LLMError):
    """The provider answered, but the answer is unusable as sent (malformed, truncated)."""

    error_class = "recoverable"
