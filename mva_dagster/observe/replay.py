"""`mva log replay`: send a recorded prompt again, through the gateway, and compare the answers.

The replay is a new call, so it gets its own archive and conversation log in
``<session>/replays/replay_<UTC time>/`` (archive first, as for every paid answer) and never touches
the session's own archive: the session stays exactly what it was. ``--model`` re-asks another
model alias with the identical messages and parameters.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mva_dagster.errors import MvaError
from mva_dagster.llm.archive import SessionArchive, read_entry
from mva_dagster.observe import display
from mva_dagster.observe.fields import score_table
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.layout import SessionLayout


@dataclass
class Replay:
    original: LLMAnswer | None
    original_text: str | None
    request: LLMRequest
    answer: LLMAnswer
    folder: Path


def recorded_call(entry: dict[str, Any]) -> tuple[LLMRequest, LLMAnswer | None]:
    """The request exactly as archived, with its archived answer (read only, no side effects);
    a failed call has no archive entry, so its request is rebuilt from the conversation log."""
    session_dir = Path(str(entry["session_dir"]))
    archive = SessionLayout(session_dir).llm_archive
    key = str(entry.get("request_key") or "")
    for path in sorted(archive.glob(f"*__{key[:16]}.json")) if key else []:
        stored = read_entry(path)
        if stored.request.key() == key:
            return stored.request, stored.answer
    messages = json.loads(entry["messages"]) if isinstance(entry.get("messages"), str) else entry.get("messages")
    if not isinstance(messages, list):
        raise MvaError(f"call {entry.get('call_id')} has no recorded prompt to replay")
    params = json.loads(entry["params"]) if isinstance(entry.get("params"), str) else dict(entry.get("params") or {})
    request = LLMRequest(session_id=str(entry.get("session_id")), document_id=str(entry.get("document_id")),
                         model=str(entry.get("model")), replicate=int(entry.get("replicate") or 1),
                         purpose=entry.get("purpose") or "analysis", messages=messages, params=params or {},
                         response_format=_response_format(entry))
    return request, None


def _response_format(entry: dict[str, Any]) -> dict[str, Any] | None:
    value = entry.get("response_format")
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else None


def replay_call(entry: dict[str, Any], *, model: str | None = None) -> Replay:
    """Re-send one recorded call (optionally to ``model``) and archive the new answer beside the session."""
    from mva_dagster.llm.gateway import LLMGateway
    from mva_dagster.llm.registry import load_registry

    original, stored = recorded_call(entry)
    target = load_registry().resolve(model).name if model else original.model
    request = original.model_copy(update={"model": target})
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
    folder = Path(str(entry["session_dir"])) / "replays" / f"replay_{stamp}"
    layout = SessionLayout(folder)
    layout.llm_archive.mkdir(parents=True, exist_ok=True)
    (folder / "replay.json").write_text(json.dumps({
        "replayed_call_id": entry.get("call_id"), "replayed_request_key": original.key(),
        "model": target, "created_at": stamp}, indent=2) + "\n", encoding="utf-8")
    gateway = LLMGateway()

    async def send() -> LLMAnswer:
        async with gateway.make_client(max_connections=2) as client:
            answer, _ = await gateway.complete(client, request, SessionArchive(layout))
            return answer

    answer = asyncio.run(send())
    return Replay(original=stored, original_text=entry.get("response") if stored is None else stored.raw_text,
                  request=request, answer=answer, folder=folder)


def _pretty(text: str | None) -> str:
    if text is None:
        return "(no answer)"
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _column(text: str, width: int) -> list[str]:
    out: list[str] = []
    for line in text.splitlines() or [""]:
        out += textwrap.wrap(line, width, replace_whitespace=False, drop_whitespace=False,
                             subsequent_indent="  ") or [""]
    return out


def side_by_side(left_title: str, left: str | None, right_title: str, right: str | None,
                 width: int | None = None) -> str:
    """Two answers in two columns, wrapped (never cut), with a marker on lines that differ."""
    width = width or shutil.get_terminal_size((120, 40)).columns
    col = max(30, (width - 3) // 2)
    a, b = _column(_pretty(left), col), _column(_pretty(right), col)
    lines = [f"{left_title[:col]:<{col}} │ {right_title[:col]}", f"{'─' * col}─┼─{'─' * col}"]
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else ""
        y = b[i] if i < len(b) else ""
        lines.append(f"{x:<{col}} {'│' if x == y else '≠'} {y}")
    return "\n".join(lines) + "\n"


def score_comparison(left: str | None, right: str | None, json_schema: dict[str, Any] | None) -> str:
    """Both answers' score tables one after the other, when both parse."""
    from mva_dagster.extraction.parse import extract

    parts = []
    for title, text in (("original", left), ("replay", right)):
        if text is None:
            continue
        result = extract(text, json_schema or {"type": "object"})
        if result.fields:
            parts.append(f"{title}: {'valid' if result.valid else 'INVALID'} ({result.path})")
            parts += display.text_lines(score_table(result.fields), indent="  ")
    return "\n".join(parts) + ("\n" if parts else "")
