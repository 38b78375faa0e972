"""How fast is `mva log search` on 100,000 calls? (issue 7's closing figure)

Generates a realistic conversation log under a temporary projects folder - sessions of documents x
models x runs, each entry with the full prompt (system prompt + a document of ~3,000 characters)
and a JSON answer of ~1,200 characters, written exactly as :mod:`mva_dagster.llm.conversations`
writes them - then times building the DuckDB index, refreshing it when nothing changed, refreshing
after one more session is appended, and a few searches (text in answers, text in prompts, filters).

    .venv/bin/python bench/conversation_search.py               # 100,000 calls
    .venv/bin/python bench/conversation_search.py --calls 20000 --keep /tmp/convlog
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from mva_dagster.llm.conversations import prompt_sha256  # noqa: E402
from mva_dagster.observe.log_index import LogIndex  # noqa: E402

WORDS = [
    "nation", "people", "freedom", "economy", "future", "war", "peace", "families", "work", "tax", "schools",
    "health", "security", "congress", "citizens", "together", "hope", "fear", "growth", "budget", "energy", "jobs",
    "children", "veterans", "justice", "liberty", "union", "challenge", "promise", "strength", "trade", "reform",
    "world", "history", "democracy",
]
MODELS = ("gemini-2.5-flash", "claude-sonnet-4-5")
SYSTEM = "You are a careful reader of political rhetoric. " + " ".join(WORDS * 12)


def document(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def answer(rng: random.Random, text: str) -> str:
    words = text.split()
    fields: dict[str, object] = {}
    for dim in ("fear", "hope", "envy", "compersion", "enmity", "amity"):
        start = rng.randrange(0, max(1, len(words) - 10))
        fields[f"{dim}_score"] = round(rng.random(), 3)
        fields[f"{dim}_evidence"] = [" ".join(words[start:start + rng.randint(6, 14)])]
    fields["overall_confidence"] = round(rng.random(), 3)
    return json.dumps(fields, indent=2)


def generate(root: Path, calls: int, runs: int = 5, seed: int = 7) -> int:
    """Write ``calls`` entries into sessions of 2,000 documents x 2 models x ``runs``; returns bytes."""
    rng = random.Random(seed)
    per_session_docs = 2000
    written = 0
    index = 0
    session_no = 0
    while index < calls:
        session_no += 1
        session = root / "BENCH" / "experiments" / "speeches" / "sessions" / f"session_20261101_{session_no:06d}"
        (session / "logs").mkdir(parents=True, exist_ok=True)
        with open(session / "logs" / "conversations.jsonl", "w", encoding="utf-8") as out:
            for d in range(per_session_docs):
                doc_id = f"doc{session_no:03d}-{d:05d}"
                messages = [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": "Text to analyse:\n\n" + document(rng, 450)}]
                sha = prompt_sha256(messages)
                for model in MODELS:
                    for run in range(1, runs + 1):
                        if index >= calls:
                            break
                        index += 1
                        failed = rng.random() < 0.01
                        entry = {
                            "v": 2, "request_key": f"{index:064x}", "ts": f"2026-11-{1 + session_no % 28:02d}T10:"
                            f"{(index // 60) % 60:02d}:{index % 60:02d}.000000Z", "session_id": session.name,
                            "document_id": doc_id, "purpose": "analysis", "model": model, "replicate": run,
                            "params": {"temperature": 0.0, "max_tokens": 4096, "seed": run},
                            "response_format": None, "prompt_sha256": sha, "messages": messages,
                            "call_id": f"{rng.getrandbits(128):032x}", "status": "failed" if failed else "ok",
                            "from_archive": False, "provider_model": f"{model}-001",
                            "response": None if failed else answer(rng, messages[1]["content"]),
                            "prompt_tokens": 900, "completion_tokens": 300, "cost_usd": 0.001,
                            "latency_s": 1.5, "attempts": 1, "error_class": "transient" if failed else None,
                            "error": "rate limited (HTTP 429)" if failed else None,
                        }
                        line = json.dumps(entry, ensure_ascii=False) + "\n"
                        out.write(line)
                        written += len(line.encode())
                if index >= calls:
                    break
    return written


def timed(label: str, fn, repeat: int = 5) -> object:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    n = len(result) if isinstance(result, list) else result
    print(f"  {label:<58} median {statistics.median(times) * 1000:8.1f} ms  (min {min(times) * 1000:.1f}; "
          f"{n} rows)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="generate here and keep it (default: a temp dir)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="convlog_"))
    os.environ["MVA_HOME"] = str(root / "mva_home")
    try:
        t0 = time.perf_counter()
        size = generate(root / "projects", args.calls)
        print(f"generated {args.calls:,} calls, {size / 1e6:.0f} MB of JSON lines in {time.perf_counter() - t0:.1f}s")
        with LogIndex([root / "projects"]) as index:
            t0 = time.perf_counter()
            stats = index.refresh()
            print(f"index built: {stats.new_calls:,} calls from {stats.files} logs in {time.perf_counter() - t0:.1f}s "
                  f"({index.path.stat().st_size / 1e6:.0f} MB)")
            timed("refresh, nothing new", lambda: index.refresh().new_calls)
            timed("search 'liberty union challenge' (answers + prompts)",
                  lambda: index.search("liberty union challenge", limit=20))
            timed("search a word that is nowhere (full scan)", lambda: index.search("zanzibar", limit=20))
            timed("search 'HTTP 429' --status failed", lambda: index.search("HTTP 429", status="failed", limit=50))
            timed("search 'fear_evidence' --model claude-sonnet-4-5 --doc doc003-*",
                  lambda: index.search("fear_evidence", model="claude-sonnet-4-5", document="doc003-*", limit=20))
            row = index.search("hope", limit=1)[0]
            timed("show CALL_ID (prefix of 12)", lambda: index.find(row["call_id"][:12]))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
