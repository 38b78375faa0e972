"""The typed records that flow through a session, one per step.

A document id is chosen once (specs/corpus.py) and carried unchanged through all three:

* :class:`LLMRequest` - what is sent; its :meth:`~LLMRequest.key` is the archive key.
* :class:`LLMAnswer` - what came back (or how the call failed), written to the archive first.
* :class:`ExtractedRecord` - the answer parsed and validated against the output contract.

Downstream steps read records, never raw answers; only extraction and replay read the archive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every hash in mva-dagster is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class LLMRequest(BaseModel):
    """One call: a document analysed by one model alias, for one replicate."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    document_id: str
    model: str = Field(description="The proxy alias asked for, e.g. 'gemini-2.5-flash'.")
    replicate: int = Field(ge=1, description="1-based run index; replicates are distinct calls.")
    purpose: Literal["analysis", "extraction", "synthesis"] = "analysis"
    messages: list[dict[str, str]]
    params: dict[str, Any] = Field(default_factory=dict, description="temperature, max_tokens, seed...")
    response_format: dict[str, Any] | None = None
    _key: str | None = PrivateAttr(default=None)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> LLMRequest:
        copy = super().model_copy(update=update, deep=deep)
        copy._key = None  # a copy with other fields is another call
        return copy

    def key(self) -> str:
        """Hash of everything that determines the answer, and the replicate index.

        Session and document ids are left out on purpose: an identical call made again (a resume,
        a linked session, a replay) is the same call and is answered from the archive at $0.
        """
        if self._key is not None:  # frozen model: the key cannot change once computed
            return self._key
        material = {
            "model": self.model,
            "purpose": self.purpose,
            "messages": self.messages,
            "params": self.params,
            "response_format": self.response_format,
            "replicate": self.replicate,
        }
        key = sha256_text(canonical_json(material))
        self._key = key
        return key


class CallError(BaseModel):
    """How a call failed, classified (see mva_dagster.errors)."""

    error_class: str
    message: str
    status: int | None = None
    error_type: str | None = Field(default=None, description="The exception class, e.g. CooldownLLMError.")
    hint: str | None = None


class LLMAnswer(BaseModel):
    """The provider's answer to one request, exactly as received, plus what the proxy told us."""

    request_key: str
    raw_text: str | None = None
    ok: bool = True
    error: CallError | None = None
    model_alias: str
    provider_model: str | None = Field(
        default=None, description="The model id the provider reported (not the proxy's alias)."
    )
    system_fingerprint: str | None = None
    finish_reason: str | None = None
    call_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    attempts: int = 1
    started_at: str
    finished_at: str
    response_headers: dict[str, str] = Field(default_factory=dict)
    model_used: str | None = Field(
        default=None,
        description="The model group that answered (x-litellm-model-group); differs from model_alias "
        "only when a fallback configured in the experiment was taken.",
    )
    fallback_used: bool = False
    waited_s: float = Field(default=0.0, description="Seconds spent waiting on rate limits and retries.")
    reask_reason: str | None = Field(
        default=None, description="Why the first answer was unusable and the request was sent again."
    )
    superseded: list[LLMAnswer] = Field(
        default_factory=list,
        description="Earlier answers to this request that a re-ask replaced; kept because they were paid for.",
    )


class ExtractedRecord(BaseModel):
    """An answer turned into a flat, validated record (or kept, invalid, with its reasons)."""

    session_id: str
    document_id: str
    model: str
    replicate: int
    request_key: str
    valid: bool
    fields: dict[str, Any] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    extraction_path: str = Field(description="Which link of the parse chain produced the record.")
    error_class: str | None = Field(
        default=None, description="Why an invalid record failed (see docs/extraction.md); None when valid."
    )
    extraction_trace: list[str] = Field(default_factory=list, description="Every link tried, in order.")
    extraction_model: str | None = Field(
        default=None, description="The model that transformed the answer, when the LLM link was used."
    )
    transform_request_keys: list[str] = Field(
        default_factory=list, description="Archive keys of the transformation calls (one per attempt)."
    )
    raw_answer: str | None = Field(
        default=None, description="The raw answer, kept on invalid records next to their reasons."
    )
