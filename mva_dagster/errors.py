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
        │   ├── RateLimitedLLMError   429 over a quota: waits (Retry-After), never counts as a failure
        │   ├── CooldownLLMError      the proxy's circuit breaker is open for the model: waits
        │   └── ProxyUnreachableError the proxy is down or restarting: waits for it to come back
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
    """The next call's worst-case cost could cross a budget; the session stops cleanly.

    ``level`` is the budget that would be crossed (session, experiment or project); the amounts
    are USD: the budget, what is already spent or reserved, and the refused call's worst case.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        level: str | None = None,
        budget_usd: float | None = None,
        committed_usd: float | None = None,
        needed_usd: float | None = None,
    ) -> None:
        self.level = level
        self.budget_usd = budget_usd
        self.committed_usd = committed_usd
        self.needed_usd = needed_usd
        super().__init__(message, hint=hint)


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


class RateLimitedLLMError(TransientLLMError):
    """HTTP 429 for a quota (provider, deployment rpm/tpm, or a proxy key): wait, then send again.

    Waiting out a rate limit is the normal way a large run slows down, so these waits are bounded
    by time, not by the number of attempts.
    """


class CooldownLLMError(TransientLLMError):
    """The proxy took the model out of rotation after repeated failures (its circuit breaker).

    It says when to try again (``retry_after``); unlike a quota, it signals an unhealthy provider,
    so each wait counts as a failed attempt.
    """


class ProxyUnreachableError(TransientLLMError):
    """The proxy refused the connection or dropped it: it is down or restarting.

    Answers are archived before use, so nothing is lost; the gateway waits for the proxy to come
    back for a bounded time.
    """
