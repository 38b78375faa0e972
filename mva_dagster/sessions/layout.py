"""Every path of the project / experiment / session tree, and nowhere else.

    projects/<P>/
    ├── PROJECT_CHRONOLOG_<P>.jsonl
    └── experiments/<E>/
        ├── experiment_snapshot.md
        ├── framework_snapshot.md
        └── sessions/session_YYYYMMDD_HHMMSS/
            ├── session.json            what this session is (ids, hashes, models, provider)
            ├── session_policy.json     budgets, alert webhook, fallbacks (changed by `--budget`)
            ├── session_chronolog.jsonl
            ├── llm_archive/            one file per answered call, written before use
            ├── extracted/              one validated (or invalid, kept) record per call
            ├── results/                scores/metrics CSV, session.duckdb, report.md
            ├── logs/                   session.log (+ rotated .gz), failures.jsonl, cost_ledger.jsonl,
            │                           conversations.jsonl
            ├── experiment_snapshot.md  only in a linked session made with changed files
            ├── framework_snapshot.md   (idem): it takes precedence over the experiment's
            └── legacy/                 only in a migrated session: the legacy files, verbatim

A session started with ``mva resume --allow-changes`` after the framework or experiment changed
keeps its own snapshots: the experiment-level ones stay those of the earlier sessions, so every
session can still be replayed from exactly the files it ran with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mva_dagster.errors import SessionError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SESSION_ID = re.compile(r"^session_\d{8}_\d{6}(_\d+)?$")


def check_safe_name(value: str, what: str) -> str:
    """Names that become path parts must not escape their folder or need quoting."""
    if not SAFE_NAME.match(value) or ".." in value:
        raise SessionError(
            f"{what} {value!r} is not a safe name",
            hint="use letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'",
        )
    return value


def slug(value: str) -> str:
    """A model alias such as 'vertex_ai/gemini-2.5-pro' as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("_") or "model"


@dataclass(frozen=True)
class SessionLayout:
    root: Path

    @property
    def session_id(self) -> str:
        return self.root.name

    @property
    def experiment(self) -> ExperimentLayout:
        """The experiment, seen from this session: its own snapshots (if any) take precedence."""
        return ExperimentLayout(self.root.parent.parent, pinned=self.root)

    own_experiment_snapshot = property(lambda self: self.root / "experiment_snapshot.md")
    own_framework_snapshot = property(lambda self: self.root / "framework_snapshot.md")
    legacy = property(lambda self: self.root / "legacy")
    manifest = property(lambda self: self.root / "session.json")
    session_policy = property(lambda self: self.root / "session_policy.json")
    chronolog = property(lambda self: self.root / "session_chronolog.jsonl")
    llm_archive = property(lambda self: self.root / "llm_archive")
    extracted = property(lambda self: self.root / "extracted")
    results = property(lambda self: self.root / "results")
    logs = property(lambda self: self.root / "logs")
    scores_csv = property(lambda self: self.results / "scores.csv")
    metrics_csv = property(lambda self: self.results / "metrics.csv")
    documents_csv = property(lambda self: self.results / "documents.csv")
    duckdb = property(lambda self: self.results / "session.duckdb")
    report_md = property(lambda self: self.results / "report.md")
    failures_log = property(lambda self: self.logs / "failures.jsonl")
    run_log = property(lambda self: self.logs / "session.log")
    cost_ledger = property(lambda self: self.logs / "cost_ledger.jsonl")
    conversations_log = property(lambda self: self.logs / "conversations.jsonl")

    def call_stem(self, document_id: str, model: str, replicate: int) -> str:
        """The one naming rule for per-call files: readable, and sorted by document."""
        return f"{document_id}__{slug(model)}__r{replicate:02d}"

    def archive_path(self, document_id: str, model: str, replicate: int, key: str) -> Path:
        return self.llm_archive / f"{self.call_stem(document_id, model, replicate)}__{key[:16]}.json"

    def extracted_path(self, document_id: str, model: str, replicate: int) -> Path:
        return self.extracted / f"{self.call_stem(document_id, model, replicate)}.json"

    def create_dirs(self) -> None:
        for path in (self.llm_archive, self.extracted, self.results, self.logs):
            path.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class ExperimentLayout:
    root: Path
    # The session this experiment is seen from; its own snapshots, when present, win.
    pinned: Path | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def project(self) -> ProjectLayout:
        return ProjectLayout(self.root.parent.parent)

    shared_experiment_snapshot = property(lambda self: self.root / "experiment_snapshot.md")
    shared_framework_snapshot = property(lambda self: self.root / "framework_snapshot.md")

    def _pinned_or_shared(self, name: str) -> Path:
        if self.pinned is not None and (self.pinned / name).is_file():
            return self.pinned / name
        return self.root / name

    experiment_snapshot = property(lambda self: self._pinned_or_shared("experiment_snapshot.md"))
    framework_snapshot = property(lambda self: self._pinned_or_shared("framework_snapshot.md"))
    sessions_dir = property(lambda self: self.root / "sessions")

    def session(self, session_id: str) -> SessionLayout:
        if not SESSION_ID.match(session_id):
            raise SessionError(f"{session_id!r} is not a session id (session_YYYYMMDD_HHMMSS)")
        return SessionLayout(self.sessions_dir / session_id)

    def sessions(self) -> list[SessionLayout]:
        if not self.sessions_dir.is_dir():
            return []
        return [SessionLayout(p) for p in sorted(self.sessions_dir.iterdir())
                if p.is_dir() and SESSION_ID.match(p.name)]


@dataclass(frozen=True)
class ProjectLayout:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def chronolog(self) -> Path:
        return self.root / f"PROJECT_CHRONOLOG_{self.name}.jsonl"

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    def experiment(self, name: str) -> ExperimentLayout:
        return ExperimentLayout(self.experiments_dir / check_safe_name(name, "experiment name"))

    def experiments(self) -> list[ExperimentLayout]:
        if not self.experiments_dir.is_dir():
            return []
        return [ExperimentLayout(p) for p in sorted(self.experiments_dir.iterdir()) if p.is_dir()]


def session_layout_for(path: Path) -> SessionLayout:
    """Accept a session directory given by a user and check that it looks like one."""
    path = path.resolve()
    if not (path / "session.json").is_file():
        raise SessionError(f"{path} is not a session directory (no session.json)",
                           hint="pass projects/<P>/experiments/<E>/sessions/session_YYYYMMDD_HHMMSS")
    return SessionLayout(path)
