"""What every step of a session needs, loaded once from the session's own files.

Steps read the session manifest and the experiment's framework snapshot (checked against the hash
the session recorded), never the researcher's working copies, which may have changed since.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mva_dagster.errors import SessionError, SpecError
from mva_dagster.extraction.derive import DerivedContract, derive_contract
from mva_dagster.extraction.schema import describe_schema
from mva_dagster.extraction.shape import RecordShape
from mva_dagster.fsutil import sha256_file
from mva_dagster.records import LLMRequest
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.sessions.manager import DocumentEntry, SessionManifest, load_manifest
from mva_dagster.specs.framework import Framework, load_framework

TEXTS_KEPT = 256


@dataclass
class SessionContext:
    layout: SessionLayout
    manifest: SessionManifest
    _texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, layout: SessionLayout) -> SessionContext:
        return cls(layout=layout, manifest=load_manifest(layout))

    @cached_property
    def framework(self) -> Framework:
        snapshot = self.layout.experiment.framework_snapshot
        if not snapshot.exists():
            raise SessionError(f"{snapshot} is missing; the session cannot be run or replayed")
        actual = sha256_file(snapshot)
        if actual != self.manifest.framework_sha256:
            raise SessionError(
                f"{snapshot} changed since session {self.manifest.session_id} was created "
                f"(sha256 {actual[:12]} != {self.manifest.framework_sha256[:12]})",
                hint="restore the snapshot; a changed framework belongs to a new experiment")
        return load_framework(snapshot)

    @cached_property
    def derived_contract(self) -> DerivedContract:
        """The output contract completed from the framework's prose (see extraction/derive.py)."""
        return derive_contract(self.framework, self.manifest.analysis_variant)

    @cached_property
    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of an analysis answer: sent as response_format, used to validate."""
        return self.derived_contract.schema

    @cached_property
    def record_shape(self) -> RecordShape:
        """The flat record (one column per value) that extraction produces and formulas read."""
        from mva_dagster.calc.formula import build_plan

        plan = build_plan(self.framework.calculation_spec, known_inputs=None)
        return RecordShape(self.json_schema, subjects=self.derived_contract.subjects,
                           variables=sorted(plan.inputs))

    @cached_property
    def extraction_model(self) -> str:
        """The model of the LLM-to-LLM transformation: the experiment's ``extraction_model``, or
        the cheap default; resolved to its canonical alias so the archive and costs agree."""
        from mva_dagster.llm.registry import load_registry
        from mva_dagster.specs.experiment import load_experiment

        snapshot = self.layout.experiment.experiment_snapshot
        name = DEFAULT_EXTRACTION_MODEL
        if snapshot.exists():
            experiment = load_experiment(snapshot, framework_override=self.layout.experiment.framework_snapshot)
            name = experiment.extraction_model or name
        try:
            return load_registry().resolve(name).name
        except SpecError as exc:
            raise SpecError(f"extraction_model {name!r} is not a registered model: {exc.message}",
                            file=snapshot, field="extraction_model", hint=exc.hint) from exc

    def calls(self, document_ids: list[str] | None = None) -> list[tuple[str, str, int]]:
        """(document, model, replicate) for every call of the session (or of some documents)."""
        ids = document_ids if document_ids is not None else [d.id for d in self.manifest.documents]
        return [(doc, model, rep) for doc in ids for model in self.manifest.models
                for rep in range(1, self.manifest.runs_per_model + 1)]

    def document_text(self, entry: DocumentEntry) -> str:
        """The document's text, refusing a file that changed since the session was created.

        The last few texts are kept (a document's calls are built together); a corpus is never
        held in memory whole.
        """
        text = self._texts.pop(entry.id, None)
        if text is None:
            data = self._read_checked(entry)
            # As Path.read_text reads it (universal newlines): prompts, and so archive keys, unchanged.
            text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
            if len(self._texts) >= TEXTS_KEPT:
                self._texts.pop(next(iter(self._texts)))
        self._texts[entry.id] = text  # most recently used last
        return text

    def check_document(self, entry: DocumentEntry) -> None:
        """Refuse a document file that is missing or changed since the session was created."""
        self._read_checked(entry)

    def _read_checked(self, entry: DocumentEntry) -> bytes:
        path = Path(entry.path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SessionError(f"document {entry.id}: {path} no longer exists",
                               hint="restore the corpus file; its sha256 is in session.json") from None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise SessionError(f"document {entry.id}: {path} changed since the session was created",
                               hint="restore the original file (sha256 in session.json) or start "
                                    "a new session")
        return data

    def analysis_request(self, document_id: str, model: str, replicate: int) -> LLMRequest:
        """The exact request for one call; rebuilt identically by resume and replay."""
        entry = self.manifest.document(document_id)
        framework = self.framework
        variant = framework.variant(self.manifest.analysis_variant)
        contract = framework.output_contract
        # The contract's instructions always go with the prompt, and the fields are spelled out too,
        # so a model without structured output (or one that ignores it) still sees the schema.
        system = "\n\n".join(part for part in (
            variant.analysis_prompt.strip(),
            contract.instructions.strip(),
            "Return one JSON object with exactly these fields:\n" + describe_schema(self.json_schema),
        ) if part)
        lines = [f"{name}: {entry.metadata[name]}" for name in self.manifest.prompt_metadata
                 if name in entry.metadata]
        context = ("Context about the text:\n" + "\n".join(lines) + "\n\n") if lines else ""
        user = f"{context}Text to analyse:\n\n{self.document_text(entry)}"
        params = dict(self.manifest.generation)
        params.setdefault("seed", replicate)  # distinct replicates are distinct, reproducible calls
        return LLMRequest(
            session_id=self.manifest.session_id, document_id=document_id, model=model,
            replicate=replicate, purpose="analysis",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            params=params,
            response_format=(
                {"type": "json_schema", "json_schema": {"name": "analysis_record", "schema": self.json_schema}}
                if structured_output(model) else {"type": "json_object"}),
        )


DEFAULT_EXTRACTION_MODEL = "gemini-2.5-flash"


def structured_output(model: str) -> bool:
    """Whether to send a JSON Schema as response_format (the registry says; unknown aliases: yes)."""
    from mva_dagster.llm.registry import load_registry

    try:
        return load_registry().resolve(model).structured_output
    except SpecError:
        return True
