"""Create and load sessions: the manifest that says what a session is, and its snapshots.

A session is created once, before any call, and everything later (assets, resume, replay) reads
its ``session.json`` rather than the researcher's files, which may change afterwards.
"""

from __future__ import annotations

import difflib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from mva_dagster.errors import SessionError
from mva_dagster.fsutil import atomic_write_json, atomic_write_text, sha256_file
from mva_dagster.sessions.chronolog import Chronolog, utc_now
from mva_dagster.sessions.layout import (
    ExperimentLayout,
    ProjectLayout,
    SessionLayout,
    check_safe_name,
)

Provider = Literal["real", "local", "simulated"]


class DocumentEntry(BaseModel):
    id: str
    path: str
    sha256: str
    n_words: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionManifest(BaseModel):
    """What a session is. Written once at creation; ``status`` is the only field that changes."""

    session_id: str
    project: str
    experiment: str
    created_at: str
    status: str = "created"
    provider: Provider
    models: list[str]
    model_override: str | None = None
    runs_per_model: int
    analysis_variant: str
    generation: dict[str, Any] = Field(default_factory=dict)
    prompt_metadata: list[str] = Field(default_factory=list)
    experiment_source: str
    experiment_sha256: str
    framework_source: str
    framework_sha256: str
    framework_name: str
    framework_version: str
    corpus_path: str
    corpus_sha256: str
    documents: list[DocumentEntry]
    software: dict[str, str] = Field(default_factory=dict)

    def document(self, document_id: str) -> DocumentEntry:
        for entry in self.documents:
            if entry.id == document_id:
                return entry
        raise SessionError(f"document {document_id!r} is not part of session {self.session_id}")


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("mva-dagster", "dagster", "litellm", "duckdb", "pandas", "pydantic"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def load_manifest(layout: SessionLayout) -> SessionManifest:
    try:
        return SessionManifest.model_validate_json(layout.manifest.read_text())
    except FileNotFoundError as exc:
        raise SessionError(f"{layout.root} has no session.json: not a session") from exc
    except ValueError as exc:
        raise SessionError(f"{layout.manifest} is not a valid session manifest: {exc}") from exc


def save_manifest(layout: SessionLayout, manifest: SessionManifest) -> None:
    atomic_write_json(layout.manifest, manifest.model_dump(mode="json"))


def set_status(layout: SessionLayout, status: str) -> SessionManifest:
    manifest = load_manifest(layout)
    manifest.status = status
    save_manifest(layout, manifest)
    return manifest


def new_session_id(experiment: ExperimentLayout, now: datetime | None = None) -> str:
    """session_YYYYMMDD_HHMMSS (UTC), with a suffix if two sessions start in the same second."""
    base = f"session_{(now or datetime.now(UTC)).strftime('%Y%m%d_%H%M%S')}"
    candidate, n = base, 1
    while (experiment.sessions_dir / candidate).exists():
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def write_snapshot(target: Path, source: Path, *, label: str) -> str:
    """Copy ``source`` to ``target`` unless an identical snapshot exists; refuse a silent change."""
    text = source.read_text(encoding="utf-8")
    if target.exists():
        old = target.read_text(encoding="utf-8")
        if old != text:
            diff = "".join(difflib.unified_diff(
                old.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{label} (snapshot of earlier sessions)", tofile=f"{label} ({source})", n=1))
            shown = diff if len(diff) < 4000 else diff[:4000] + "\n... (diff truncated)\n"
            raise SessionError(
                f"the {label} changed since this experiment's earlier sessions:\n{shown}",
                hint="restore the file, or run the changed version as a new experiment "
                     "(a different experiment name) so both stay reproducible",
            )
    else:
        atomic_write_text(target, text)
    return sha256_file(target)


def write_snapshot_index(experiment: ExperimentLayout) -> None:
    index = {}
    for path in (experiment.experiment_snapshot, experiment.framework_snapshot):
        if path.exists():
            index[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    atomic_write_json(experiment.root / "snapshots.json", index)


def create_session(
    *,
    project_dir: Path,
    experiment_name: str,
    experiment_file: Path,
    framework_file: Path,
    framework_name: str,
    framework_version: str,
    corpus_path: Path,
    corpus_sha256: str,
    documents: list[DocumentEntry],
    models: list[str],
    model_override: str | None,
    runs_per_model: int,
    analysis_variant: str,
    generation: dict[str, Any],
    prompt_metadata: list[str],
    provider: Provider,
) -> SessionLayout:
    """Make the session tree, snapshots and manifest, and log SESSION_STARTED in both chronologs."""
    project = ProjectLayout(project_dir.resolve())
    check_safe_name(project.name, "project name")
    experiment = project.experiment(experiment_name)
    experiment.root.mkdir(parents=True, exist_ok=True)
    experiment_sha = write_snapshot(experiment.experiment_snapshot, experiment_file, label="experiment")
    framework_sha = write_snapshot(experiment.framework_snapshot, framework_file, label="framework")
    write_snapshot_index(experiment)

    session_id = new_session_id(experiment)
    layout = experiment.session(session_id)
    layout.create_dirs()
    manifest = SessionManifest(
        session_id=session_id, project=project.name, experiment=experiment.name, created_at=utc_now(),
        provider=provider, models=models, model_override=model_override, runs_per_model=runs_per_model,
        analysis_variant=analysis_variant, generation=generation, prompt_metadata=prompt_metadata,
        experiment_source=str(experiment_file.resolve()), experiment_sha256=experiment_sha,
        framework_source=str(framework_file.resolve()), framework_sha256=framework_sha,
        framework_name=framework_name, framework_version=framework_version,
        corpus_path=str(corpus_path.resolve()), corpus_sha256=corpus_sha256, documents=documents,
        software=software_versions(),
    )
    save_manifest(layout, manifest)
    fingerprints = {"experiment_snapshot.md": experiment_sha, "framework_snapshot.md": framework_sha}
    fingerprints.update({f"corpus/{Path(d.path).name}": d.sha256 for d in documents})
    data = {"session_id": session_id, "session_path": str(layout.root), "asset_fingerprints": fingerprints,
            "models": models, "runs_per_model": runs_per_model, "provider": provider,
            "documents": len(documents)}
    Chronolog(project.chronolog, project=project.name).append("SESSION_STARTED", data, session_id=session_id)
    Chronolog(layout.chronolog, project=project.name, session_id=session_id).append("SESSION_STARTED", data)
    return layout


def session_summary(layout: SessionLayout) -> dict[str, Any]:
    manifest = load_manifest(layout)
    return json.loads(manifest.model_dump_json())
