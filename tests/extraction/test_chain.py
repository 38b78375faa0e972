"""run_chain: when the LLM-to-LLM transformation runs, what it may change, and how failures are classified.

The transformation model is the real simulated provider app (in-process, over ASGI) or, where a test
needs a specific model behaviour (a faithful copyist, one that answers null, one that is down), a
scripted stand-in for that external model. Our own code is never replaced.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bench.extraction_styles import SimulatedModel
from mva_dagster.errors import BudgetExceeded, PermanentLLMError, TransientLLMError
from mva_dagster.extraction.chain import ChainResult, run_chain
from mva_dagster.extraction.schema import contract_json_schema
from mva_dagster.extraction.shape import RecordShape
from mva_dagster.extraction.transform import TRANSFORM_PROMPT, not_in_answer, transform_request
from mva_dagster.records import LLMAnswer, LLMRequest

SHAPE = RecordShape(contract_json_schema({
    "label": {"type": "string", "enum": ["calm", "tense"]},
    "level": {"type": "number", "minimum": 0, "maximum": 1},
    "quotes": "array",
    "note": "string",
}))
TRUNCATED = '{"label": "tense", "level": 0.35, "quotes": ["we will stand together", "no'


def request_for(raw: str) -> Callable[[int], LLMRequest]:
    def make(attempt: int) -> LLMRequest:
        return transform_request(session_id="s", document_id="doc", replicate=1, model="gemini-2.5-flash",
                                 raw_text=raw, shape=SHAPE, max_tokens=4096, attempt=attempt)
    return make


def scripted(*contents: str | Exception) -> tuple[Callable[[LLMRequest], Awaitable[LLMAnswer]], list[LLMRequest]]:
    """A stand-in for an external transformation model that answers ``contents`` in turn."""
    seen: list[LLMRequest] = []

    async def model(request: LLMRequest) -> LLMAnswer:
        seen.append(request)
        content = contents[min(len(seen), len(contents)) - 1]
        if isinstance(content, Exception):
            raise content
        return LLMAnswer(request_key=request.key(), raw_text=content, model_alias=request.model,
                         finish_reason="stop", started_at="t", finished_at="t", cost_usd=0.001)

    return model, seen


def chain(raw: str | None, transform: Any = None, finish_reason: str | None = "stop") -> ChainResult:
    return asyncio.run(run_chain(raw, SHAPE, finish_reason=finish_reason,
                                 make_request=request_for(raw or "") if transform else None, transform=transform))


def test_a_valid_answer_never_calls_the_model() -> None:
    model, seen = scripted("{}")
    result = chain(json.dumps({"label": "calm", "level": 0.2, "quotes": [], "note": "n"}), model)
    assert result.valid and result.path == "bare_json" and seen == [] and result.transform_model is None


def test_the_transformation_request_is_framework_agnostic_and_archivable() -> None:
    request = request_for("raw answer")(1)
    assert request.purpose == "extraction" and request.messages[0]["content"] == TRANSFORM_PROMPT
    assert "raw answer" in request.messages[1]["content"]
    schema = request.response_format["json_schema"]["schema"]  # type: ignore[index]
    assert schema["properties"]["level"]["type"] == ["number", "null"]  # room to say "not given"
    assert schema["properties"]["label"]["anyOf"][1] == {"type": "null"}
    assert request.key() != request_for("raw answer")(2).key()  # a re-ask is another archived call


def test_a_truncated_answer_is_completed_and_the_values_read_are_kept() -> None:
    model = SimulatedModel("bare")
    try:
        result = chain(TRUNCATED, model, finish_reason="length")
    finally:
        asyncio.run(model.aclose())
    assert result.valid and result.path == "llm_transform" and result.transform_model == "gemini-2.5-flash"
    assert (result.fields["label"], result.fields["level"]) == ("tense", 0.35)  # read, not transformed
    assert "transform_filled:2_of_4" in result.flags and "source_cut_off:finish_reason=length" in result.flags
    assert any(f.startswith("not_in_answer:") for f in result.flags)  # the simulated model made them up
    assert result.trace[0].startswith("partial_json: 2 of 4 fields")


def test_a_faithful_transformation_is_not_flagged() -> None:
    prose = "I'd call it tense, level 0.6. Quotes: 'we stand' and 'they fall'. Note: brief speech."
    model, seen = scripted(json.dumps({"label": "tense", "level": 0.6, "quotes": ["we stand", "they fall"],
                                       "note": "brief speech"}))
    result = chain(prose, model)
    assert result.valid and result.path == "llm_transform" and len(seen) == 1
    assert not any(f.startswith("not_in_answer") for f in result.flags)


def test_null_from_the_transformation_is_an_honest_failure() -> None:
    model, seen = scripted(json.dumps({"label": "tense", "level": 0.35, "quotes": ["we will stand together"],
                                       "note": None}))
    result = chain(TRUNCATED, model, finish_reason="length")
    assert not result.valid and result.error_class == "truncated" and len(seen) == 1  # no pointless re-ask
    assert "llm_transform: the answer gives no value for note" in result.errors
    assert result.fields["level"] == 0.35


def test_an_unusable_transformation_is_asked_once_more() -> None:
    good = json.dumps({"label": "tense", "level": 0.35, "quotes": ["x"], "note": "n"})
    model, seen = scripted('{"label": "tense", "lev', good)
    result = chain(TRUNCATED, model)
    assert result.valid and len(seen) == 2 and len(result.transform_keys) == 2


@pytest.mark.parametrize(
    ("error", "calls"),
    [(TransientLLMError("rate limited (HTTP 429)", status=429), 2), (PermanentLLMError("bad key", status=401), 1)],
)
def test_a_failed_call_is_classified_and_the_raw_answer_kept(error: Exception, calls: int) -> None:
    model, seen = scripted(error)
    result = chain("no structure here at all", model)
    assert not result.valid and result.error_class == "transform_failed" and len(seen) == calls
    assert result.errors[0] == "no JSON object found in the answer"
    assert "llm_transform: the call failed" in result.errors[-1]


def test_a_budget_stop_is_not_swallowed() -> None:
    model, _ = scripted(BudgetExceeded("the next call could cross the session budget"))
    with pytest.raises(BudgetExceeded):
        chain("no structure", model)


def test_empty_answers_are_not_sent_to_the_model() -> None:
    model, seen = scripted("{}")
    result = chain("   ", model)
    assert result.error_class == "empty_answer" and seen == []


def test_not_in_answer_checks_numbers_strings_and_lists() -> None:
    raw = "Level 0.35; said \u201cwe will stand\u201d."
    assert not_in_answer({"a": 0.35, "b": "We will  STAND", "c": ["we will stand"], "d": True}, raw) == []
    assert not_in_answer({"a": 0.36, "b": "they fall", "c": ["we will stand", "x"]}, raw) == ["a", "b", "c"]
