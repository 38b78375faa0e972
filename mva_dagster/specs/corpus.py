"""Corpora: which documents an experiment analyses, under which ids, with which metadata.

A document id is chosen here once and carried unchanged through requests, archive entries, records
and result rows, so ids are checked strictly and never rewritten: a bad id is an error that names the
file or manifest entry. Every problem found is collected and reported in one :class:`CorpusError`, so
a researcher fixes the whole corpus in one pass.

Accepted layouts (``docs/writing-experiments.md`` describes them for researchers):

* Corpus Specification v2 - ``corpus.md`` with a JSON appendix whose ``file_manifest`` lists
  ``{name, ...metadata}`` (a ```yaml block with ``documents`` is accepted too);
* a directory with ``manifest.yaml|yml|json`` listing ``texts: [{id, filename, metadata}]`` or
  ``documents: [{filename, document_id|id, metadata}]``;
* a plain directory of ``.txt`` / ``.md`` files (id = file stem).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mva_dagster.errors import CorpusError
from mva_dagster.records import canonical_json, sha256_text
from mva_dagster.specs._markdown import fenced_blocks, read_spec_file, utf8_problem, yaml_load

__all__ = ["DOCUMENT_ID_PATTERN", "Corpus", "Document", "is_valid_document_id", "load_corpus"]

DOCUMENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DOCUMENT_SUFFIXES = (".txt", ".md")
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml", "manifest.json")
# Spec and housekeeping files that sit next to documents but are never documents themselves.
RESERVED_NAMES = {
    "corpus.md",
    *MANIFEST_NAMES,
    "experiment.md",
    "experiment.yaml",
    "experiment.yml",
    "framework.md",
    "readme.md",
}
_LIST_KEYS = ("file_manifest", "documents", "texts")
_FILENAME_KEYS = ("filename", "file", "name")
_ID_KEYS = ("id", "document_id")

CorpusKind = Literal["corpus_md", "manifest", "directory"]


def is_valid_document_id(doc_id: str) -> bool:
    """Ids are used in file names and partition keys: a safe charset, at most 128 chars, no '..'."""
    return bool(DOCUMENT_ID_PATTERN.match(doc_id)) and ".." not in doc_id


def _is_reserved(name: str) -> bool:
    return name.startswith(".") or name.lower() in RESERVED_NAMES


class Document(BaseModel):
    """One document of a corpus; ``text()`` re-reads the file and refuses it if it changed."""

    model_config = ConfigDict(frozen=True)

    id: str
    path: Path
    filename: str = Field(description="Path relative to the corpus directory.")
    sha256: str
    n_bytes: int
    n_chars: int
    n_words: int
    metadata: dict[str, Any] = Field(default_factory=dict)

    def text(self) -> str:
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise CorpusError(
                "document changed since the corpus was loaded (sha256 differs)",
                file=self.path,
                hint="reload the corpus; a session must analyse the texts it fingerprinted",
            )
        return data.decode("utf-8").removeprefix("\ufeff")


class Corpus(BaseModel):
    """The documents of a corpus, sorted by id; ``sha256`` fingerprints ids and contents together."""

    path: Path
    kind: CorpusKind
    manifest_path: Path | None = None
    documents: list[Document]
    sha256: str
    metadata: dict[str, Any] = Field(default_factory=dict, description="Corpus-level manifest keys.")
    warnings: list[str] = Field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.documents]

    def document(self, doc_id: str) -> Document:
        for doc in self.documents:
            if doc.id == doc_id:
                return doc
        raise CorpusError(f"no document with id '{doc_id}'", file=self.path)


class _Entry(BaseModel):
    """A document as listed (or found), before its file is read."""

    label: str
    filename: str
    id: str
    id_from_manifest: bool
    sha256: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- reading listings


def _machine_block(text: str, file: Path) -> dict[str, Any] | None:
    """The corpus.md appendix: one ```json block, or a ```yaml block with a document list."""
    blocks = fenced_blocks(text)
    json_blocks = [b for b in blocks if b.lang == "json"]
    if len(json_blocks) > 1:
        lines = ", ".join(str(b.fence_line) for b in json_blocks)
        raise CorpusError(
            f"found {len(json_blocks)} ```json blocks (lines {lines}); keep exactly one",
            file=file,
            field="json_appendix",
        )
    if json_blocks:
        b = json_blocks[0]
        try:
            data = json.loads(b.body)
        except json.JSONDecodeError as exc:
            raise CorpusError(
                f"invalid JSON at line {b.first_line + exc.lineno - 1}, column {exc.colno}: {exc.msg}",
                file=file,
                field="json_appendix",
            ) from exc
        if not isinstance(data, dict):
            raise CorpusError(
                "the ```json block must hold one object {...}", file=file, field="json_appendix"
            )
        return data
    for b in blocks:
        if b.lang in ("yaml", "yml"):
            data = yaml_load(
                b.body, file=file, field="yaml_block", line_offset=b.first_line - 1, error=CorpusError
            )
            if isinstance(data, dict) and any(k in data for k in _LIST_KEYS):
                return data
    return None


def _manifest_file(file: Path) -> Any:
    raw = read_spec_file(file, what="manifest", error=CorpusError)
    if file.suffix.lower() == ".json":
        try:
            return json.loads(raw.text)
        except json.JSONDecodeError as exc:
            raise CorpusError(
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=file
            ) from exc
    return yaml_load(raw.text, file=file, field="manifest", error=CorpusError)


def _split_listing(data: Any, file: Path) -> tuple[list[Any] | None, dict[str, Any]]:
    """(document entries or None, corpus-level metadata) from a parsed manifest."""
    if isinstance(data, list):
        return data, {}
    if data is None:
        return None, {}
    if not isinstance(data, dict):
        raise CorpusError("must be a mapping with a 'texts' or 'documents' list", file=file)
    keys = [k for k in _LIST_KEYS if k in data]
    if len(keys) > 1:
        raise CorpusError(
            f"gives both {keys[0]!r} and {keys[1]!r}; keep one document list", file=file, field=keys[1]
        )
    meta = {k: v for k, v in data.items() if k not in _LIST_KEYS}
    if not keys:
        return None, meta
    entries = data[keys[0]]
    if not isinstance(entries, list):
        raise CorpusError("must be a list of documents", file=file, field=keys[0])
    return entries, meta


def _entries_from_listing(items: list[Any], source: Path, problems: list[str]) -> list[_Entry]:
    entries: list[_Entry] = []
    seen_files: dict[str, str] = {}
    for i, item in enumerate(items, start=1):
        label = f"{source.name} entry {i}"
        if not isinstance(item, dict):
            problems.append(f"{label}: must be a mapping with 'filename' (or 'name'), got {item!r}")
            continue
        fkey = next((k for k in _FILENAME_KEYS if isinstance(item.get(k), str) and item[k].strip()), None)
        if fkey is None:
            problems.append(f"{label}: no 'filename' (or 'name') giving the document's file")
            continue
        filename = item[fkey].strip()
        label = f"{source.name} entry {i} ({filename})"
        rel = Path(filename)
        if rel.is_absolute() or ".." in rel.parts:
            problems.append(
                f"{label}: filename must be a path inside the corpus folder (no absolute path, no '..')"
            )
            continue
        if _is_reserved(rel.name):
            problems.append(f"{label}: {rel.name} is a spec/hidden file and cannot be a document")
            continue
        if filename in seen_files:
            problems.append(f"{label}: the same file is already listed as {seen_files[filename]}")
            continue
        seen_files[filename] = label
        ikey = next((k for k in _ID_KEYS if k in item and item[k] is not None), None)
        nested = item.get("metadata") or {}
        if not isinstance(nested, dict):
            problems.append(f"{label}: 'metadata' must be a mapping")
            nested = {}
        consumed = {fkey, "metadata", "sha256", *(k for k in _ID_KEYS if k in item)}
        metadata = {**{k: v for k, v in item.items() if k not in consumed}, **nested}
        sha = item.get("sha256", metadata.pop("sha256", None))
        entries.append(
            _Entry(
                label=label,
                filename=rel.as_posix(),
                id=str(item[ikey]) if ikey else rel.stem,
                id_from_manifest=ikey is not None,
                sha256=str(sha).lower() if sha else None,
                metadata=metadata,
            )
        )
    return entries


def _candidate_files(root: Path) -> tuple[list[Path], list[str]]:
    """Document-like files directly in ``root`` and the names of everything else skipped."""
    docs: list[Path] = []
    skipped: list[str] = []
    for child in sorted(root.iterdir()):
        if _is_reserved(child.name):
            continue
        if child.is_file() and child.suffix.lower() in DOCUMENT_SUFFIXES:
            docs.append(child)
        else:
            skipped.append(child.name + ("/" if child.is_dir() else ""))
    return docs, skipped


# ---------------------------------------------------------------- checking documents


def _read_document(entry: _Entry, root: Path, max_bytes: int, problems: list[str]) -> Document | None:
    """Check one entry's id and file, appending every problem found; the Document when none."""
    path = root / entry.filename
    where = entry.label
    before = len(problems)
    if not is_valid_document_id(entry.id):
        how = (
            "fix the id in the manifest"
            if entry.id_from_manifest
            else "rename the file, or list it in a manifest with an 'id'"
        )
        problems.append(
            f"{where}: document id {entry.id!r} is not allowed (letters, digits, '.', '_', '-'; starts with a "
            f"letter or digit; at most 128 characters; no '..'); {how}"
        )
    if not path.is_file():
        problems.append(f"{where}: file not found: {path}")
        return None
    size = path.stat().st_size
    if size > max_bytes:
        problems.append(
            f"{where}: {size:,} bytes is larger than max_document_bytes ({max_bytes:,}); split the document "
            "or load the corpus with a larger max_document_bytes"
        )
        return None
    data = path.read_bytes()
    problem = utf8_problem(data)
    if problem:
        problems.append(f"{where}: document {problem}")
        return None
    sha = hashlib.sha256(data).hexdigest()
    if entry.sha256 and entry.sha256 != sha:
        problems.append(f"{where}: sha256 mismatch: the manifest says {entry.sha256}, the file has {sha}")
    if len(problems) > before:
        return None
    text = data.decode("utf-8").removeprefix("\ufeff")
    return Document(
        id=entry.id,
        path=path,
        filename=entry.filename,
        sha256=sha,
        n_bytes=len(data),
        n_chars=len(text),
        n_words=len(text.split()),
        metadata=entry.metadata,
    )


# ---------------------------------------------------------------- the loader


def load_corpus(path: str | Path, *, max_document_bytes: int = 5_000_000) -> Corpus:
    """Load a corpus directory (or its corpus.md / manifest file); every problem in one CorpusError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CorpusError("corpus not found", file=p)
    spec_file: Path | None = None
    if p.is_file():
        if p.name.lower() != "corpus.md" and p.name.lower() not in MANIFEST_NAMES:
            raise CorpusError("a corpus is a folder, or its corpus.md / manifest.yaml file", file=p)
        spec_file, p = p, p.parent
    root = p.resolve()

    corpus_md = spec_file if spec_file and spec_file.name.lower() == "corpus.md" else None
    manifests = [spec_file] if spec_file and corpus_md is None else []
    if spec_file is None:
        corpus_md = root / "corpus.md" if (root / "corpus.md").is_file() else None
        manifests = [root / n for n in MANIFEST_NAMES if (root / n).is_file()]
    if len(manifests) > 1:
        raise CorpusError(f"several manifests ({', '.join(m.name for m in manifests)}); keep one", file=root)

    listings: list[tuple[Path, list[Any]]] = []
    metadata: dict[str, Any] = {}
    warnings: list[str] = []
    if corpus_md is not None:
        raw = read_spec_file(corpus_md, what="corpus.md", error=CorpusError)
        items, meta = _split_listing(_machine_block(raw.text, corpus_md), corpus_md)
        metadata.update(meta)
        if items is not None:
            listings.append((corpus_md, items))
    if manifests:
        items, meta = _split_listing(_manifest_file(manifests[0]), manifests[0])
        metadata.update(meta)
        if items is not None:
            listings.append((manifests[0], items))
    if len(listings) > 1:
        raise CorpusError(
            f"both {listings[0][0].name} and {listings[1][0].name} list documents; keep one list", file=root
        )

    problems: list[str] = []
    manifest_path: Path | None = None
    kind: CorpusKind
    if listings:
        manifest_path, items = listings[0]
        kind = "corpus_md" if manifest_path.name.lower() == "corpus.md" else "manifest"
        entries = _entries_from_listing(items, manifest_path, problems)
        listed = {e.filename for e in entries}
        unlisted = [f.name for f in _candidate_files(root)[0] if f.name not in listed]
        if unlisted:
            warnings.append(f"not listed in {manifest_path.name}, so not analysed: {', '.join(unlisted)}")
    else:
        manifest_path = corpus_md or (manifests[0] if manifests else None)
        kind = "corpus_md" if corpus_md else "manifest" if manifests else "directory"
        files, skipped = _candidate_files(root)
        entries = [_Entry(label=f.name, filename=f.name, id=f.stem, id_from_manifest=False) for f in files]
        if skipped:
            warnings.append(f"skipped (not a .txt/.md file in the corpus folder): {', '.join(skipped)}")

    documents: list[Document] = []
    owner: dict[str, str] = {}
    for entry in entries:
        if entry.id in owner:
            problems.append(f"duplicate document id '{entry.id}': {owner[entry.id]} and {entry.filename}")
            continue
        owner[entry.id] = entry.filename
        doc = _read_document(entry, root, max_document_bytes, problems)
        if doc is not None:
            documents.append(doc)

    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise CorpusError(
            f"{len(problems)} {noun} in this corpus:\n  - " + "\n  - ".join(problems),
            file=manifest_path or root,
            hint="all problems are listed: fix them and load again",
        )
    if not documents:
        raise CorpusError(
            "the corpus has no documents (.txt or .md files, or manifest entries)", file=manifest_path or root
        )

    documents.sort(key=lambda d: d.id)
    fingerprint = sha256_text(canonical_json([[d.id, d.sha256] for d in documents]))
    return Corpus(
        path=root,
        kind=kind,
        manifest_path=manifest_path.resolve() if manifest_path else None,
        documents=documents,
        sha256=fingerprint,
        metadata=metadata,
        warnings=warnings,
    )
