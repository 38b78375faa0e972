"""`mva migrate`: turn Discernus experiment folders into sessions, copying, never moving.

Discernus left its work in several layouts (see ``docs/resuming-and-migrating.md``):
``experiment_N/results/<timestamp>/`` folders with ``state_after_step_*.json``, ``llm_archive/``
(``prompt_NNN.txt`` + ``response_NNN.txt``, sometimes ``call_NNN_metadata.json``),
``conversation_*.jsonl``, ``session_*.jsonl``, ``final_report.md`` and ``session_metadata.json``;
and the early layout whose answers survive only in a ``conversations/`` log. Each legacy session
folder becomes a session; its answers become archive entries that ``mva resume --from extraction``
uses, so paid answers are turned into tables without paying again.

Rules that make the migration trustworthy:

* **The source is only read.** Every file under LEGACY_DIR is copied verbatim into a ``legacy/``
  folder (of its session, experiment or project) and listed in a manifest with its sha256, size and
  where else it was placed; the copies are re-hashed, and the manifest's count must equal the number
  of source files. Nothing is deleted or left behind.
* **Placed where possible, kept always.** ``session_metadata.json`` becomes ``session.json``,
  answers become ``llm_archive/`` entries (with their provenance), logs go to ``logs/legacy/``, the
  final report to ``results/``. What cannot be placed lives only in ``legacy/``, with the reason.
* **An answer is mapped to (document, model, run) only on evidence**: a per-call metadata file, a
  state file's analysis result with the same text, a conversation line's metadata or agent id, or
  the document's text inside the prompt (model and run then from the session's single model and the
  call order). An answer that cannot be mapped is kept in ``legacy/`` and reported.
* A ``MIGRATED`` event goes to the project chronolog and to each session's chronolog.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mva_dagster.errors import MvaError, SessionError, SpecError
from mva_dagster.fsutil import atomic_write_json, sha256_file
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import Chronolog, utc_now
from mva_dagster.sessions.layout import (
    SAFE_NAME,
    ExperimentLayout,
    ProjectLayout,
    SessionLayout,
    check_safe_name,
)

Say = Callable[[str], None]

SESSION_MARKER_FILES = ("session_metadata.json", "final_report.md")
SESSION_MARKER_GLOBS = ("state_after_step_*.json", "conversation_*.jsonl")
_CALL_FILE = re.compile(r"^(?P<kind>prompt|response)_(?P<n>\d+)\.txt$")
_CALL_META = re.compile(r"^(?:call_)?(?P<n>\d+)_metadata\.json$|^metadata_(?P<m>\d+)\.json$")
_TIMESTAMP = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})[_T-](\d{2})[-:]?(\d{2})[-:]?(\d{2})")
_AGENT_ID = re.compile(r"^analysis_agent_run(?P<run>\d+)_(?P<rest>.+)$")
_TEXT_FIELDS = ("raw_response", "response", "raw_text", "analysis_text", "json_output", "content")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _safe(name: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return cleaned if cleaned and SAFE_NAME.match(cleaned) and ".." not in cleaned else fallback


def _normalize(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ what was found


@dataclass
class SourceFile:
    """One legacy file: where it was, its hash, and everywhere it now is."""

    rel: str
    path: Path
    sha256: str
    size: int
    copies: list[str] = field(default_factory=list)  # relative to the project folder
    placed_as: list[str] = field(default_factory=list)  # placements other than the verbatim copy
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.rel, "sha256": self.sha256, "bytes": self.size, "copies": self.copies,
                "placed_as": self.placed_as, "status": "placed" if self.placed_as else "legacy_only",
                "note": self.note}


@dataclass
class LegacyAnswer:
    document_id: str
    model: str
    run: int
    response: str
    prompt: str | None
    source: SourceFile
    line: int | None = None
    prompt_source: SourceFile | None = None
    metadata_source: SourceFile | None = None
    mapped_by: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LegacyExperiment:
    folder: Path
    name: str
    files: list[SourceFile] = field(default_factory=list)
    experiment_file: Path | None = None
    framework_file: Path | None = None
    corpus_dir: Path | None = None
    framework_name: str = "unknown"
    framework_version: str = "unknown"
    models: list[str] = field(default_factory=list)
    runs_per_model: int = 1
    analysis_variant: str = "default"
    documents: dict[str, Any] = field(default_factory=dict)  # file name -> specs.corpus.Document
    problems: list[str] = field(default_factory=list)


@dataclass
class LegacySession:
    folder: Path
    experiment: LegacyExperiment
    session_id: str
    created_at: str
    files: list[SourceFile] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    answers: list[LegacyAnswer] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    already: Path | None = None
    target: SessionLayout | None = None

    @property
    def models(self) -> list[str]:
        found = [a.model for a in self.answers]
        declared = [_resolve_model(m) for m in self.metadata.get("models") or []] or list(self.experiment.models)
        return list(dict.fromkeys([*declared, *found]))

    @property
    def runs(self) -> int:
        declared = int(self.metadata.get("runs_per_model") or self.experiment.runs_per_model or 1)
        return max([declared, *(a.run for a in self.answers)])


@dataclass
class MigrationResult:
    source: Path
    project: Path
    dry_run: bool
    files: list[SourceFile] = field(default_factory=list)
    sessions: list[LegacySession] = field(default_factory=list)
    experiments: list[LegacyExperiment] = field(default_factory=list)
    manifest_path: Path | None = None
    verified: int = 0

    def summary(self) -> list[str]:
        verb = "would migrate" if self.dry_run else "migrated"
        lines = [f"{verb} {len(self.files)} files from {self.source} into {self.project}"]
        for session in self.sessions:
            where = session.target.root if session.target else session.session_id
            state = "already migrated: " if session.already else ""
            lines.append(f"  {state}{session.experiment.name}/{session.session_id}: {len(session.answers)} answers "
                         f"recovered, {len(session.files)} files ({where})")
            for reason in session.unplaced[:8]:
                lines.append(f"      not placed: {reason}")
            if len(session.unplaced) > 8:
                lines.append(f"      ... and {len(session.unplaced) - 8} more not placed")
        for experiment in self.experiments:
            for problem in experiment.problems:
                lines.append(f"  {experiment.name}: {problem}")
        if not self.dry_run:
            only = sum(1 for f in self.files if not f.placed_as)
            lines.append(f"every file is copied verbatim into a legacy/ folder; {len(self.files) - only} were also "
                         f"placed in the session tree, {only} live in legacy/ only (reasons in the manifest)")
            lines.append(f"manifest: {self.manifest_path} ({len(self.files)} entries = {len(self.files)} source "
                         f"files; {self.verified} copies re-hashed and identical)")
            for session in self.sessions:
                if session.target and session.answers:
                    lines.append(f"  to turn its answers into tables: mva resume {session.target.root} "
                                 "--from extraction")
        return lines


# ------------------------------------------------------------------ scanning


def _list_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (hidden ones too), in a stable order; symlinked dirs are not followed."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(p.is_symlink() for p in path.relative_to(root).parents if str(p) != "."):
            found.append(path)
    return found


def _is_session_folder(folder: Path) -> bool:
    if any((folder / name).is_file() for name in SESSION_MARKER_FILES):
        return True
    if any(next(folder.glob(pattern), None) for pattern in SESSION_MARKER_GLOBS):
        return True
    archive = folder / "llm_archive"
    return archive.is_dir() and any(_CALL_FILE.match(p.name) for p in archive.iterdir())


def _session_id_for(folder: Path, metadata: dict[str, Any], taken: set[str]) -> tuple[str, str]:
    """``session_YYYYMMDD_HHMMSS`` from the folder name, the metadata or the files' times; unique."""
    texts = [folder.name, str(metadata.get("session_id") or ""), str(metadata.get("start_time") or "")]
    for log in sorted(folder.rglob("*.jsonl")):
        texts += [log.name, log.read_text(errors="replace")[:400]]
    when: datetime | None = None
    for text in texts:
        match = _TIMESTAMP.search(text)
        if match:
            year, month, day, hour, minute, second = (int(g) for g in match.groups())
            when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
            break
    if when is None:
        when = datetime.fromtimestamp(min(p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), UTC)
    base = f"session_{when.strftime('%Y%m%d_%H%M%S')}"
    session_id, n = base, 1
    while session_id in taken:
        n += 1
        session_id = f"{base}_{n}"
    taken.add(session_id)
    return session_id, when.isoformat().replace("+00:00", "Z")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _resolve_model(name: str) -> str:
    from mva_dagster.llm.registry import load_registry

    registry = load_registry()
    # Agent ids spell 'vertex_ai/gemini-2.5-flash' as 'vertex_ai_gemini-2.5-flash': try each '_' as '/'.
    candidates = [name] + [name[:i] + "/" + name[i + 1:] for i, c in enumerate(name) if c == "_"]
    for candidate in candidates:
        try:
            return registry.resolve(candidate).name
        except SpecError:
            continue
    return name


def _load_experiment(exp: LegacyExperiment) -> None:
    """Framework, corpus and defaults of a legacy experiment folder; problems are noted, not raised."""
    from mva_dagster.specs.corpus import load_corpus
    from mva_dagster.specs.experiment import load_experiment
    from mva_dagster.specs.framework import load_framework

    try:
        experiment = load_experiment(exp.folder)
    except (SpecError, OSError) as exc:
        exp.problems.append(f"experiment file not usable ({str(exc).splitlines()[0]}): sessions are migrated "
                            "but cannot be resumed")
        corpus = exp.folder / "corpus"
        exp.corpus_dir = corpus if corpus.is_dir() else None
    else:
        exp.experiment_file = experiment.path
        exp.framework_file = experiment.framework_file
        exp.corpus_dir = experiment.corpus
        exp.models = [_resolve_model(m) for m in experiment.models]
        exp.runs_per_model = experiment.runs_per_model
        exp.analysis_variant = experiment.analysis_variant
        try:
            framework = load_framework(experiment.framework_file)
            framework.variant(experiment.analysis_variant)
            exp.framework_name, exp.framework_version = framework.name, framework.version
        except (SpecError, OSError) as exc:
            exp.problems.append(f"framework not usable by mva-dagster ({str(exc).splitlines()[0]}): answers "
                                "are migrated but cannot be extracted")
    if exp.corpus_dir is not None and exp.corpus_dir.is_dir():
        try:
            exp.documents = {d.path.name: d for d in load_corpus(exp.corpus_dir).documents}
        except (SpecError, OSError) as exc:
            exp.problems.append(f"corpus not usable ({str(exc).splitlines()[0]})")
    elif exp.corpus_dir is not None:
        exp.problems.append(f"corpus folder {exp.corpus_dir} is missing")


def _document_for(exp: LegacyExperiment, corpus_file: str | None, prompt: str | None) -> str | None:
    if corpus_file:
        name = Path(str(corpus_file)).name
        for file_name, doc in exp.documents.items():
            if name in (file_name, doc.id) or Path(file_name).stem == Path(name).stem:
                return str(doc.id)
    if prompt:
        flat = _normalize(prompt)
        hits = [doc for doc in exp.documents.values() if _normalize(doc.text()) and _normalize(doc.text()) in flat]
        if len(hits) == 1:
            return str(hits[0].id)
    return None


def _from_agent_id(exp: LegacyExperiment, agent_id: str) -> tuple[str, str, int] | None:
    """(document, model, run) from ``analysis_agent_run<N>_<model>_<document stem>``."""
    match = _AGENT_ID.match(agent_id)
    if not match:
        return None
    rest = match.group("rest")
    for file_name, doc in exp.documents.items():
        for stem in {Path(file_name).stem, str(doc.id)}:
            if rest.endswith("_" + stem):
                return str(doc.id), _resolve_model(rest[: -len(stem) - 1]), int(match.group("run"))
    return None


def _meta_fields(meta: dict[str, Any]) -> tuple[str | None, str | None, int | None]:
    forensics: dict[str, Any] = meta["model_forensics"] if isinstance(meta.get("model_forensics"), dict) else {}
    model = meta.get("requested_model") or meta.get("model") or meta.get("model_name") or forensics.get("requested_model")
    run = meta.get("run_number") or meta.get("run_num") or meta.get("run")
    corpus = meta.get("corpus_file") or meta.get("corpus_file_name") or meta.get("document")
    return (str(corpus) if corpus else None, str(model) if model else None,
            int(run) if isinstance(run, int | str) and str(run).isdigit() else None)


def _state_results(session_folder: Path) -> list[dict[str, Any]]:
    """Analysis results recorded in state files: dicts naming a corpus file, a model and a run."""
    found: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            corpus, model, run = _meta_fields(value)
            if corpus and model and run and any(isinstance(value.get(k), str) for k in _TEXT_FIELDS):
                found.append(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in sorted(session_folder.glob("state_after_step_*.json")):
        walk(_read_json(path))
    return found


def _collect_answers(session: LegacySession, by_path: dict[Path, SourceFile]) -> None:
    exp = session.experiment
    folder = session.folder
    archive = folder / "llm_archive"
    calls: dict[int, dict[str, Path]] = {}
    if archive.is_dir():
        for path in sorted(archive.iterdir()):
            match = _CALL_FILE.match(path.name)
            meta = _CALL_META.match(path.name)
            if match:
                calls.setdefault(int(match.group("n")), {})[match.group("kind")] = path
            elif meta:
                calls.setdefault(int(meta.group("n") or meta.group("m")), {})["meta"] = path
    state = _state_results(folder)
    single_model = session.models[0] if len(session.models) == 1 else None
    order: dict[tuple[str, str], int] = {}
    for number in sorted(calls):
        files = calls[number]
        if "response" not in files:
            if "prompt" in files:
                session.unplaced.append(f"{files['prompt'].relative_to(folder)}: a prompt whose call has no "
                                        "response (it failed or was cut off)")
            continue
        response = files["response"].read_text(encoding="utf-8", errors="replace")
        prompt = files["prompt"].read_text(encoding="utf-8", errors="replace") if "prompt" in files else None
        meta = _read_json(files["meta"]) if "meta" in files else None
        document = model = None
        run = None
        how = ""
        if isinstance(meta, dict):
            corpus, model, run = _meta_fields(meta)
            document = _document_for(exp, corpus, prompt)
            how = f"{files['meta'].name}"
        if not (document and model and run):
            for result in state:
                text = next((result[k] for k in _TEXT_FIELDS if isinstance(result.get(k), str)), "")
                if text.strip() == response.strip():
                    corpus, model, run = _meta_fields(result)
                    document = _document_for(exp, corpus, prompt)
                    how = "the state file's analysis result with the same text"
                    break
        if not (document and model and run) and single_model:
            document = _document_for(exp, None, prompt)
            if document:
                model = single_model
                order[(document, model)] = order.get((document, model), 0) + 1
                run = order[(document, model)]
                how = "the document's text in the prompt; run from the call order"
        if not (document and model and run):
            session.unplaced.append(f"{files['response'].relative_to(folder)}: no evidence of its document, "
                                    "model and run")
            continue
        model = _resolve_model(model)
        order[(document, model)] = max(order.get((document, model), 0), run)
        session.answers.append(LegacyAnswer(
            document_id=document, model=model, run=run, response=response, prompt=prompt,
            source=by_path[files["response"]], prompt_source=by_path.get(files["prompt"]) if "prompt" in files else None,
            metadata_source=by_path.get(files["meta"]) if "meta" in files else None,
            mapped_by=how, metadata=meta if isinstance(meta, dict) else {}))
    if not calls:
        _collect_conversation_answers(session, by_path)
    _drop_duplicates(session)


def _collect_conversation_answers(session: LegacySession, by_path: dict[Path, SourceFile]) -> None:
    """The early layout: answers only in conversation logs (one JSON line per message)."""
    exp = session.experiment
    for path in sorted(session.folder.rglob("conversation_*.jsonl")):
        prompts: dict[str, str] = {}
        for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(item, dict) or not isinstance(item.get("message"), str):
                continue
            speaker = str(item.get("speaker") or "")
            meta: dict[str, Any] = item["metadata"] if isinstance(item.get("metadata"), dict) else {}
            kind = str(meta.get("type") or "")
            if kind == "llm_prompt":
                prompts[speaker] = item["message"]
                continue
            mapped: tuple[str, str, int] | None = None
            how = ""
            if kind == "llm_response":
                corpus, model, run = _meta_fields(meta)
                document = _document_for(exp, corpus, prompts.get(speaker))
                if document and model and run:
                    mapped, how = (document, _resolve_model(model), run), f"line {number}'s metadata"
            elif speaker.startswith("analysis_agent_run"):
                mapped, how = _from_agent_id(exp, speaker), f"line {number}'s agent id {speaker}"
            else:
                continue
            if mapped is None:
                session.unplaced.append(f"{path.name} line {number}: an answer with no evidence of its "
                                        "document, model and run")
                continue
            session.answers.append(LegacyAnswer(
                document_id=mapped[0], model=mapped[1], run=mapped[2], response=item["message"],
                prompt=prompts.get(speaker), source=by_path[path], line=number, mapped_by=how,
                metadata={"timestamp": item.get("timestamp")}))


def _drop_duplicates(session: LegacySession) -> None:
    seen: dict[tuple[str, str, int], LegacyAnswer] = {}
    kept = []
    for answer in session.answers:
        key = (answer.document_id, answer.model, answer.run)
        if key in seen:
            where = f"{answer.source.rel}" + (f" line {answer.line}" if answer.line else "")
            session.unplaced.append(f"{where}: a second answer for {key[0]} / {key[1]} / run {key[2]} "
                                    f"(the first, {seen[key].source.rel}, is used)")
            continue
        seen[key] = answer
        kept.append(answer)
    session.answers = kept


def scan(root: Path, project_dir: Path) -> MigrationResult:
    """Find the legacy sessions, experiments and loose files under ``root``; decide every placement."""
    root = root.resolve()
    result = MigrationResult(source=root, project=project_dir.resolve(), dry_run=True)
    for path in _list_files(root):
        stat = path.stat()
        result.files.append(SourceFile(rel=str(path.relative_to(root)), path=path, sha256=sha256_file(path),
                                       size=stat.st_size))
    by_path = {f.path: f for f in result.files}
    folders = [root, *sorted(d for d in root.rglob("*") if d.is_dir() and not d.is_symlink())]
    session_folders = [d for d in folders if _is_session_folder(d)]
    # A session folder inside another one (llm_archive/ has no markers of its own) belongs to the outer one.
    session_folders = [d for d in session_folders if not any(o in d.parents for o in session_folders)]

    experiments: dict[Path, LegacyExperiment] = {}
    project = ProjectLayout(result.project)
    taken_by_experiment: dict[str, set[str]] = {}
    for folder in session_folders:
        exp_dir = folder.parent.parent if folder.parent.name == "results" else folder.parent
        if folder == root:
            exp_dir = root.parent.parent if root.parent.name == "results" else root.parent
        if exp_dir not in experiments:
            exp = LegacyExperiment(folder=exp_dir, name=_safe(exp_dir.name, "legacy_experiment"))
            _load_experiment(exp)
            experiments[exp_dir] = exp
        exp = experiments[exp_dir]
        metadata = _read_json(folder / "session_metadata.json")
        metadata = metadata if isinstance(metadata, dict) else {}
        existing = _existing_sessions(project.experiment(exp.name))
        taken = taken_by_experiment.setdefault(exp.name, set(existing.values()))
        session_id, created = _session_id_for(folder, metadata, set() if str(folder) in existing else taken)
        session = LegacySession(folder=folder, experiment=exp, session_id=session_id, created_at=created,
                                metadata=metadata)
        if str(folder) in existing:  # an earlier migration made it: verified, never rewritten
            session.session_id = existing[str(folder)]
            session.already = project.experiment(exp.name).session(session.session_id).root
        session.files = [f for f in result.files if folder in f.path.parents]
        _collect_answers(session, by_path)
        result.sessions.append(session)
    result.experiments = list(experiments.values())
    for experiment in result.experiments:
        if root in experiment.folder.parents or experiment.folder == root:
            in_sessions = {f.path for s in result.sessions for f in s.files}
            experiment.files = [f for f in result.files if experiment.folder in f.path.parents
                                and f.path not in in_sessions]
    return result


def _existing_sessions(experiment: ExperimentLayout) -> dict[str, str]:
    """legacy source folder -> session id, for sessions an earlier migration made."""
    from mva_dagster.sessions.manager import load_manifest

    found = {}
    for layout in experiment.sessions():
        try:
            manifest = load_manifest(layout)
        except SessionError:
            continue
        if manifest.migrated_from:
            found[manifest.migrated_from] = layout.session_id
    return found


# ------------------------------------------------------------------ writing


def _copy(source: SourceFile, target: Path, project_root: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or sha256_file(target) != source.sha256:
        tmp = target.with_name(f".{target.name}.migrating")
        shutil.copy2(source.path, tmp)  # the source is opened read-only
        tmp.replace(target)
    rel = str(target.relative_to(project_root))
    if rel not in source.copies:
        source.copies.append(rel)


def _place(source: SourceFile, target: Path, project_root: Path) -> None:
    """A second, placed copy (a log into logs/, the report into results/)."""
    _copy(source, target, project_root)
    source.copies.remove(str(target.relative_to(project_root)))
    source.placed_as.append(str(target.relative_to(project_root)))


def _write_experiment(exp: LegacyExperiment, project: ProjectLayout) -> ExperimentLayout:
    layout = project.experiment(exp.name)
    layout.root.mkdir(parents=True, exist_ok=True)
    for source in exp.files:
        _copy(source, layout.root / "legacy" / Path(source.path).relative_to(exp.folder), project.root)
    return layout


def _legacy_copy(exp: LegacyExperiment, experiment: ExperimentLayout, path: Path | None) -> Path | None:
    """Where the experiment-level copy of a legacy file (experiment, framework, corpus) now is."""
    if path is None:
        return None
    try:
        copy = experiment.root / "legacy" / path.resolve().relative_to(exp.folder)
    except ValueError:
        return None
    return copy if copy.exists() else None  # outside the migrated folder: used where it is


def _write_session(session: LegacySession, experiment: ExperimentLayout, project: ProjectLayout) -> SessionLayout:
    from mva_dagster.llm.archive import SessionArchive
    from mva_dagster.sessions.manager import (
        DocumentEntry,
        SessionManifest,
        save_manifest,
        software_versions,
        write_snapshot,
        write_snapshot_index,
    )
    from mva_dagster.specs.corpus import load_corpus

    exp = session.experiment
    layout = experiment.session(session.session_id)
    session.target = layout
    if session.already is not None:
        for source in session.files:  # re-copy only what is missing or damaged
            _copy(source, layout.legacy / Path(source.path).relative_to(session.folder), project.root)
        return layout
    layout.create_dirs()
    for source in session.files:
        relative = Path(source.path).relative_to(session.folder)
        _copy(source, layout.legacy / relative, project.root)
        name = Path(source.path).name
        if name.startswith(("session_", "conversation_")) and name.endswith(".jsonl"):
            _place(source, layout.logs / "legacy" / name, project.root)
        elif name in ("final_report.md", "final_mva_report.md"):
            _place(source, layout.results / name, project.root)
        elif name == "session_metadata.json":
            source.placed_as.append(str((layout.manifest).relative_to(project.root)) + " (converted)")
        elif name.startswith("state_after_step_"):
            source.note = "progress checkpoint of the legacy workflow; its results are read, the file kept"

    experiment_copy = _legacy_copy(exp, experiment, exp.experiment_file) or exp.experiment_file
    framework_copy = _legacy_copy(exp, experiment, exp.framework_file) or exp.framework_file
    corpus_copy = _legacy_copy(exp, experiment, exp.corpus_dir) or exp.corpus_dir
    experiment_sha = framework_sha = ""
    if experiment_copy is not None and experiment_copy.is_file():
        snapshot = write_snapshot(experiment.shared_experiment_snapshot, experiment_copy, label="experiment",
                                  changed_to=layout.own_experiment_snapshot)
        experiment_sha = sha256_file(snapshot)
    if framework_copy is not None and framework_copy.is_file():
        snapshot = write_snapshot(experiment.shared_framework_snapshot, framework_copy, label="framework",
                                  changed_to=layout.own_framework_snapshot)
        framework_sha = sha256_file(snapshot)
    write_snapshot_index(experiment)
    documents: list[DocumentEntry] = []
    corpus_sha = ""
    if corpus_copy is not None and corpus_copy.is_dir():
        try:
            corpus = load_corpus(corpus_copy)
            corpus_sha = corpus.sha256
            documents = [DocumentEntry(id=d.id, path=str(d.path.resolve()), sha256=d.sha256, n_words=d.n_words,
                                       metadata=dict(d.metadata)) for d in corpus.documents]
        except (SpecError, OSError):
            documents = []
    known = {d.id for d in documents}
    for answer in session.answers:  # a document the corpus lost still gets its answers' entry
        if answer.document_id not in known:
            documents.append(DocumentEntry(id=answer.document_id, path="", sha256=""))
            known.add(answer.document_id)

    software = software_versions()
    software["legacy"] = str(session.metadata.get("discernus_version") or "discernus")
    manifest = SessionManifest(
        session_id=session.session_id, project=project.name, experiment=experiment.name,
        created_at=session.created_at, status="migrated", provider="real", models=session.models or ["unknown"],
        runs_per_model=session.runs,
        analysis_variant=str(session.metadata.get("analysis_variant") or exp.analysis_variant),
        experiment_source=str(experiment_copy or ""), experiment_sha256=experiment_sha,
        framework_source=str(framework_copy or ""), framework_sha256=framework_sha,
        framework_name=str(session.metadata.get("framework_name") or exp.framework_name),
        framework_version=str(session.metadata.get("framework_version") or exp.framework_version),
        corpus_path=str(corpus_copy or ""), corpus_sha256=corpus_sha, documents=documents, software=software,
        migrated_from=str(session.folder))
    save_manifest(layout, manifest)

    archive = SessionArchive(layout)
    for answer in session.answers:
        request = LLMRequest(
            session_id=session.session_id, document_id=answer.document_id, model=answer.model,
            replicate=answer.run, purpose="analysis",
            messages=[{"role": "user", "content": answer.prompt or ""}],
            params=dict(answer.metadata.get("request_params") or {}))
        response_meta = answer.metadata.get("response_metadata") or {}
        forensics = answer.metadata.get("model_forensics") or {}
        when = str(answer.metadata.get("timestamp") or session.created_at)
        copy_rel = str((layout.legacy / Path(answer.source.path).relative_to(session.folder)).relative_to(layout.root))
        llm_answer = LLMAnswer(
            request_key=request.key(), raw_text=answer.response, ok=bool(answer.response.strip()),
            model_alias=answer.model, provider_model=forensics.get("actual_model"),
            cost_usd=response_meta.get("cost_usd"), started_at=when, finished_at=when,
            latency_s=(response_meta.get("response_time_ms") or 0) / 1000 or None,
            response_headers={"x-mva-migrated-from": answer.source.rel})
        provenance = {"migrated_from": {
            "source": answer.source.rel, "line": answer.line, "copy": copy_rel, "sha256": answer.source.sha256,
            "prompt": answer.prompt_source.rel if answer.prompt_source else None, "mapped_by": answer.mapped_by,
            "note": "the legacy prompt is stored as one user message; this answer stands for its "
                    "(document, model, run) in this session whatever today's prompt would be"}}
        path = archive.store_migrated(request, llm_answer, provenance)
        answer.source.placed_as.append(str(path.relative_to(project.root)) + " (converted)")
        if answer.prompt_source is not None:
            answer.prompt_source.placed_as.append(str(path.relative_to(project.root)) + " (its request)")
        if answer.metadata_source is not None:
            answer.metadata_source.placed_as.append(str(path.relative_to(project.root)) + " (its metadata)")
    _mark_experiment_files(exp, experiment, layout, project)
    for source in session.files:
        if not source.placed_as and not source.note:
            reason = next((r for r in session.unplaced if r.startswith(str(Path(source.path).relative_to(session.folder)))), "")
            source.note = reason or "no place for it in the session tree"
    return layout


def _default_project_name(root: Path) -> str:
    """The legacy project's name: the folder that holds the experiment_N folders."""
    folder = root
    if folder.parent.name == "results":  # a single results/<timestamp> folder
        folder = folder.parent.parent
    if not any(p.is_dir() and p.name.startswith("experiment") for p in folder.iterdir()):
        folder = folder.parent  # an experiment folder: its project is the parent
    if folder.name == "experiments":  # the v3 layout projects/<P>/experiments/<E>
        folder = folder.parent
    return _safe(folder.name, "default")


def _mark_experiment_files(exp: LegacyExperiment, experiment: ExperimentLayout, layout: SessionLayout,
                           project: ProjectLayout) -> None:
    """Say in the manifest how the experiment-level files serve the session just written."""
    by_path = {f.path.resolve(): f for f in exp.files}
    uses = [(exp.experiment_file, layout.experiment.experiment_snapshot),
            (exp.framework_file, layout.experiment.framework_snapshot)]
    for legacy, snapshot in uses:
        source = by_path.get(legacy.resolve()) if legacy is not None else None
        if source is not None and snapshot.exists():
            placed = f"{snapshot.relative_to(project.root)} (snapshot)"
            if placed not in source.placed_as:
                source.placed_as.append(placed)
    if exp.corpus_dir is not None:
        for name in exp.documents:
            source = by_path.get((exp.corpus_dir / name).resolve())
            if source is not None and source.copies:
                source.placed_as.append(f"{source.copies[0]} (a document of {layout.session_id})")


def migrate_legacy(legacy_dir: Path, *, project_dir: Path | None = None, dry_run: bool = False,
                   say: Say = _stderr) -> MigrationResult:
    """Migrate every legacy session under ``legacy_dir``; see the module docstring."""
    root = legacy_dir.resolve()
    if not root.is_dir():
        raise MvaError(f"{legacy_dir} is not a folder")
    project_root = (project_dir or Path("projects") / _default_project_name(root)).resolve()
    if project_root == root or root in project_root.parents:
        raise MvaError(f"the project folder {project_root} is inside the legacy folder {root}",
                       hint="pass --project-dir outside the folder being migrated (the source is never written)")
    check_safe_name(project_root.name, "project name")
    say(f"scanning {root} ...")
    result = scan(root, project_root)
    if not result.sessions:
        raise MvaError(f"no legacy session found under {root}",
                       hint="a legacy session folder holds session_metadata.json, state_after_step_*.json, "
                            "llm_archive/prompt_NNN.txt, conversation_*.jsonl or final_report.md")
    result.dry_run = dry_run
    say(f"found {len(result.files)} files, {len(result.sessions)} session(s) in {len(result.experiments)} "
        f"experiment(s)")
    if dry_run:
        return result

    project = ProjectLayout(project_root)
    project.root.mkdir(parents=True, exist_ok=True)
    placed: set[str] = set()
    for exp in result.experiments:
        experiment = _write_experiment(exp, project)
        for session in (s for s in result.sessions if s.experiment is exp):
            say(f"  {exp.name}/{session.session_id}: copying {len(session.files)} files, "
                f"{len(session.answers)} answers ...")
            _write_session(session, experiment, project)
            placed.update(f.rel for f in session.files)
        placed.update(f.rel for f in exp.files)
    for source in result.files:  # project-level files, and anything outside every experiment
        if source.rel not in placed:
            _copy(source, project.root / "legacy" / source.rel, project.root)

    for source in result.files:
        if not source.placed_as and not source.note:
            source.note = ("the legacy project chronolog: check it with `mva chronolog verify`"
                           if Path(source.rel).name.startswith("PROJECT_CHRONOLOG") else
                           "no place for it in the session tree")
    result.verified = sum(1 for f in result.files if f.copies and all(
        sha256_file(project.root / c) == f.sha256 for c in f.copies))
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    manifest_path = project.root / "migrations" / f"migration_{stamp}.json"
    manifest = {
        "migrated_at": utc_now(), "source": str(root), "project": str(project.root), "tool": "mva migrate",
        "counts": {"source_files": len(result.files), "manifest_entries": len(result.files),
                   "copies_verified": result.verified,
                   "placed": sum(1 for f in result.files if f.placed_as),
                   "legacy_only": sum(1 for f in result.files if not f.placed_as)},
        "sessions": [{"session_id": s.session_id, "experiment": s.experiment.name,
                      "path": str(s.target.root) if s.target else None, "source": str(s.folder),
                      "answers": len(s.answers), "unplaced": s.unplaced,
                      "mapped_by": sorted({a.mapped_by for a in s.answers})} for s in result.sessions],
        "experiments": [{"name": e.name, "source": str(e.folder), "problems": e.problems} for e in result.experiments],
        "files": [f.as_dict() for f in result.files],
    }
    atomic_write_json(manifest_path, manifest)
    result.manifest_path = manifest_path
    if result.verified != len(result.files):
        raise MvaError(f"only {result.verified} of {len(result.files)} copies match their source's sha256",
                       hint=f"see {manifest_path}; the source was not modified, run the migration again")
    manifest_sha = sha256_file(manifest_path)
    for session in result.sessions:
        if session.target is None:
            continue
        data = {"source": str(session.folder), "session_id": session.session_id, "files": len(session.files),
                "answers": len(session.answers), "legacy_only": len(session.unplaced),
                "manifest": str(manifest_path), "manifest_sha256": manifest_sha,
                "already_migrated": bool(session.already)}
        Chronolog(project.chronolog, project=project.name).append("MIGRATED", data, session_id=session.session_id)
        Chronolog(session.target.chronolog, project=project.name, session_id=session.session_id).append("MIGRATED", data)
    return result

