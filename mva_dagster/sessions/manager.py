"""Create and load sessions: the manifest that says what a session is, and its snapshots.

A session is created once, before any call, and everything later (assets, resume, replay) reads
its ``session.json`` rather than the researcher's files, which may change afterwards. A changed
framework or experiment is refused with a readable diff; ``mva resume --allow-changes`` instead
makes a new session *linked* to the old one (both manifests and the chronologs record the link),
which keeps its own snapshots and reuses the old session's archive for every unchanged call.
"""

from __future__ import annotations

import difflib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from mva_dagster.errors import SessionError
from mva_dagster.fsutil import atomic_write_json, atomic_write_text, sha256_file
from mva_dagster.sessions.chronolog import Chronolog, utc_now
from mva_dagster.sessions.layout import (
    ExperimentLayout,
    ProjectLayout,
    SessionLayout,
    check_safe_name,
)
from mva_dagster.sessions.liveness import Liveness, ProcessRef, check_process, this_process

Provider = Literal["real", "local", "simulated"]


class DocumentEntry(BaseModel):
    id: str
    path: str
    sha256: str
    n_words: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionLink(BaseModel):
    """One end of a link between a session and the session it was resumed from with changes."""

    session_id: str
    path: str
    at: str
    changes: list[str] = Field(default_factory=list, description="What differed, one line each.")


class SessionManifest(BaseModel):
    """What a session is. Written once at creation; only ``status`` (with ``running_process``) and
    ``linked_sessions`` change. Fields added later are optional, so older manifests still load."""

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
    linked_from: SessionLink | None = Field(
        default=None, description="The session this one continues with changed files; its archive is reused.")
    linked_sessions: list[SessionLink] = Field(
        default_factory=list, description="Sessions started from this one with --allow-changes.")
    migrated_from: str | None = Field(default=None, description="The legacy folder this session came from.")
    running_process: ProcessRef | None = Field(
        default=None, description="While status is 'running': the process running it (pid, host, start time), "
                                  "so a run that was killed can be told from a live one.")

    _by_id: dict[str, DocumentEntry] | None = PrivateAttr(default=None)

    def document(self, document_id: str) -> DocumentEntry:
        if self._by_id is None or len(self._by_id) != len(self.documents):  # built once: O(1) per call
            self._by_id = {entry.id: entry for entry in self.documents}
        entry = self._by_id.get(document_id)
        if entry is None:
            raise SessionError(f"document {document_id!r} is not part of session {self.session_id}")
        return entry

    def has_document(self, document_id: str) -> bool:
        try:
            self.document(document_id)
        except SessionError:
            return False
        return True


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
    """Set the session's status. ``running`` records this process (pid, host, start time) as the one
    running it, so `mva status` and `mva resume` can tell a live run from a killed one; any other
    status clears it."""
    manifest = load_manifest(layout)
    manifest.status = status
    manifest.running_process = this_process() if status == "running" else None
    save_manifest(layout, manifest)
    return manifest


def run_liveness(manifest: SessionManifest) -> Liveness | None:
    """For a session whose status is ``running``: is the process running it alive? None otherwise."""
    if manifest.status != "running":
        return None
    return check_process(manifest.running_process)


def effective_status(manifest: SessionManifest, liveness: Liveness | None = None) -> tuple[str, str]:
    """(status, readable status): a ``running`` session whose process is gone is ``interrupted``.

    ``liveness`` is :func:`run_liveness`'s answer if the caller has it already.
    """
    if manifest.status != "running":
        return manifest.status, manifest.status
    liveness = liveness or check_process(manifest.running_process)
    if liveness.state == "dead":
        return "interrupted", f"interrupted ({liveness.detail})"
    if liveness.state == "alive":
        return "running", f"running ({liveness.detail})"
    return "running", f"running? ({liveness.detail})"


def new_session_id(experiment: ExperimentLayout, now: datetime | None = None) -> str:
    """session_YYYYMMDD_HHMMSS (UTC), with a suffix if two sessions start in the same second."""
    base = f"session_{(now or datetime.now(UTC)).strftime('%Y%m%d_%H%M%S')}"
    candidate, n = base, 1
    while (experiment.sessions_dir / candidate).exists():
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def readable_diff(old: str, new: str, *, old_label: str, new_label: str, limit: int = 4000) -> str:
    """A unified diff short enough to read in a terminal."""
    diff = "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=old_label, tofile=new_label, n=1))
    if diff and not diff.endswith("\n"):
        diff += "\n"
    return diff if len(diff) < limit else diff[:limit] + "\n... (diff truncated)\n"


def snapshot_diff(snapshot: Path, source: Path, *, label: str) -> str | None:
    """The diff between a snapshot and the researcher's file now, or None when they are identical."""
    old = snapshot.read_text(encoding="utf-8")
    new = source.read_text(encoding="utf-8")
    if old == new:
        return None
    return readable_diff(old, new, old_label=f"{label} (snapshot: {snapshot})", new_label=f"{label} (now: {source})")


def write_snapshot(target: Path, source: Path, *, label: str, changed_to: Path | None = None) -> Path:
    """Copy ``source`` to ``target`` unless an identical snapshot exists; refuse a silent change.

    With ``changed_to`` (a linked session's own snapshot path), a changed file is snapshotted there
    instead, leaving the earlier sessions' snapshot untouched. Returns the snapshot that applies.
    """
    if target.exists():
        diff = snapshot_diff(target, source, label=label)
        if diff is None:
            return target
        if changed_to is None:
            raise SessionError(
                f"the {label} changed since this experiment's earlier sessions:\n{diff}",
                hint="restore the file; or resume the earlier session with `mva resume SESSION_DIR "
                     "--allow-changes` (a new linked session that reuses every unchanged answer); or "
                     "run the changed version as a new experiment (a different experiment name)",
            )
        target = changed_to
    atomic_write_text(target, source.read_text(encoding="utf-8"))
    return target


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
    linked_from: SessionLayout | None = None,
    changes: list[str] | None = None,
) -> SessionLayout:
    """Make the session tree, snapshots and manifest, and log SESSION_STARTED in both chronologs.

    ``linked_from`` (``mva resume --allow-changes``) makes a session that may differ from the
    experiment's snapshots: changed files are snapshotted into the new session's folder, and the
    link (with ``changes``, one line each) is recorded in both manifests and the chronologs.
    """
    project = ProjectLayout(project_dir.resolve())
    check_safe_name(project.name, "project name")
    experiment = project.experiment(experiment_name)
    experiment.root.mkdir(parents=True, exist_ok=True)
    session_id = new_session_id(experiment)
    layout = experiment.session(session_id)
    if linked_from is None:  # a changed file is refused before anything of the new session exists
        experiment_snapshot = write_snapshot(experiment.shared_experiment_snapshot, experiment_file,
                                             label="experiment")
        framework_snapshot = write_snapshot(experiment.shared_framework_snapshot, framework_file,
                                            label="framework")
        layout.create_dirs()
    else:
        layout.create_dirs()
        experiment_snapshot = write_snapshot(experiment.shared_experiment_snapshot, experiment_file,
                                             label="experiment", changed_to=layout.own_experiment_snapshot)
        framework_snapshot = write_snapshot(experiment.shared_framework_snapshot, framework_file,
                                            label="framework", changed_to=layout.own_framework_snapshot)
    experiment_sha, framework_sha = sha256_file(experiment_snapshot), sha256_file(framework_snapshot)
    write_snapshot_index(experiment)
    link = None
    if linked_from is not None:
        link = SessionLink(session_id=linked_from.session_id, path=str(linked_from.root), at=utc_now(),
                           changes=list(changes or []))
    manifest = SessionManifest(
        session_id=session_id, project=project.name, experiment=experiment.name, created_at=utc_now(),
        provider=provider, models=models, model_override=model_override, runs_per_model=runs_per_model,
        analysis_variant=analysis_variant, generation=generation, prompt_metadata=prompt_metadata,
        experiment_source=str(experiment_file.resolve()), experiment_sha256=experiment_sha,
        framework_source=str(framework_file.resolve()), framework_sha256=framework_sha,
        framework_name=framework_name, framework_version=framework_version,
        corpus_path=str(corpus_path.resolve()), corpus_sha256=corpus_sha256, documents=documents,
        software=software_versions(), linked_from=link,
    )
    save_manifest(layout, manifest)
    fingerprints = {"experiment_snapshot.md": experiment_sha, "framework_snapshot.md": framework_sha}
    fingerprints.update({f"corpus/{Path(d.path).name}": d.sha256 for d in documents})
    data = {"session_id": session_id, "session_path": str(layout.root), "asset_fingerprints": fingerprints,
            "models": models, "runs_per_model": runs_per_model, "provider": provider,
            "documents": len(documents)}
    if link is not None:
        data["linked_from"] = link.session_id
    Chronolog(project.chronolog, project=project.name).append("SESSION_STARTED", data, session_id=session_id)
    Chronolog(layout.chronolog, project=project.name, session_id=session_id).append("SESSION_STARTED", data)
    if linked_from is not None and link is not None:
        record_link(linked_from, layout, link)
    return layout


def record_link(parent: SessionLayout, child: SessionLayout, link: SessionLink) -> None:
    """Note in the parent's manifest and in all three chronologs that ``child`` continues ``parent``."""
    manifest = load_manifest(parent)
    manifest.linked_sessions.append(SessionLink(session_id=child.session_id, path=str(child.root),
                                                at=link.at, changes=link.changes))
    save_manifest(parent, manifest)
    data = {"from_session": parent.session_id, "to_session": child.session_id, "changes": link.changes,
            "reuses_archive_of": parent.session_id}
    project = child.experiment.project
    Chronolog(project.chronolog, project=project.name).append("SESSION_LINKED", data,
                                                               session_id=child.session_id)
    Chronolog(parent.chronolog, project=project.name, session_id=parent.session_id).append("SESSION_LINKED", data)
    Chronolog(child.chronolog, project=project.name, session_id=child.session_id).append("SESSION_LINKED", data)


def linked_ancestors(layout: SessionLayout) -> list[SessionLayout]:
    """The sessions this one was linked from, nearest first (their archives answer unchanged calls)."""
    chain: list[SessionLayout] = []
    seen = {layout.root.resolve()}
    current = layout
    while True:
        try:
            link = load_manifest(current).linked_from
        except SessionError:
            return chain
        if link is None:
            return chain
        parent = SessionLayout(Path(link.path))
        if parent.root.resolve() in seen or not parent.manifest.is_file():
            return chain
        seen.add(parent.root.resolve())
        chain.append(parent)
        current = parent


def session_summary(layout: SessionLayout) -> dict[str, Any]:
    manifest = load_manifest(layout)
    return json.loads(manifest.model_dump_json())
