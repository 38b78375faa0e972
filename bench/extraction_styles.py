"""How many simulated answers, in each answer style, end as valid records? (issue 5's closing table)

For every framework (the shared Discernus ones when ``../shared`` is present, the project's own and
the test fixtures) and every answer style of the simulated provider, analysis requests are built the
way a session builds them (the derived JSON Schema as ``response_format``, the contract's
instructions in the prompt) and answered by the real simulated provider app; each answer then goes
through the whole extraction chain, with the transformation answered by a second simulated provider
app (an obedient cheap model: ``--transform-style bare``, or ``mixed`` to make that model sloppy too).
Everything runs in-process over ASGI, so the matrix takes seconds and costs nothing.

    .venv/bin/python bench/extraction_styles.py                    # print the tables
    .venv/bin/python bench/extraction_styles.py --write-docs       # and update docs/extraction.md
    .venv/bin/python bench/extraction_styles.py --answers 100 --transform-style mixed
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402

from mva_dagster.extraction.chain import ChainResult, run_chain  # noqa: E402
from mva_dagster.extraction.derive import derive_contract  # noqa: E402
from mva_dagster.extraction.schema import describe_schema  # noqa: E402
from mva_dagster.extraction.shape import RecordShape  # noqa: E402
from mva_dagster.extraction.transform import transform_request  # noqa: E402
from mva_dagster.providers.simulated import STYLES, SimulatedConfig, create_app  # noqa: E402
from mva_dagster.records import LLMAnswer, LLMRequest, sha256_text  # noqa: E402
from mva_dagster.specs.framework import Framework, load_framework  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
DOCS = REPO / "docs" / "extraction.md"
TABLE_START, TABLE_END = "<!-- extraction-styles:start -->", "<!-- extraction-styles:end -->"
ALL_STYLES = (*STYLES, "mixed")
ANALYSIS_MODEL, EXTRACTION_MODEL = "gemini-2.5-pro", "gemini-2.5-flash"


def frameworks() -> list[tuple[str, Path]]:
    """(label, file) of every framework the matrix covers; shared ones only when present."""
    found = [
        ("CFF v4.1", SHARED / "data/frameworks/cff/cff_v4.1.md"),
        ("CFF v4.2", SHARED / "data/frameworks/cff/cff_v4.2.md"),
        ("CFF v4.3", SHARED / "data/frameworks/cff/cff_v4.3.md"),
        ("ECF v1.0", SHARED / "data/ecf/ecf_v1.0.md"),
        ("nano sentiment (v10)", SHARED / "data/nano_sentiment/framework.md"),
        ("sotu_demo (project)", REPO / "projects/MVA/experiments/sotu_demo/framework.md"),
        ("civic_tone (fixture)", REPO / "tests/fixtures/civic_tone/framework.md"),
        ("tide (v5 fixture)", REPO / "tests/fixtures/frameworks/tide_v5.md"),
        ("brevity (v10 fixture)", REPO / "tests/fixtures/v10_style/framework.md"),
    ]
    return [(label, path) for label, path in found if path.exists()]


def documents(limit: int = 6) -> list[tuple[str, str]]:
    """(id, text) of a few real texts: the shared MVA corpus when present, else the fixtures."""
    folders = [SHARED / "data/mva_corpus", SHARED / "data/ecf/corpus", REPO / "tests/fixtures/civic_tone/corpus"]
    out: list[tuple[str, str]] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in (".txt", ".md") and path.name not in ("corpus.md", "README.md"):
                out.append((path.stem, path.read_text(encoding="utf-8")[:3000]))
    return out[:limit]


@dataclass
class Setup:
    """One framework, ready to be asked: its derived schema, record shape and prompt."""

    label: str
    framework: Framework
    schema: dict[str, Any]
    shape: RecordShape
    system: str

    @classmethod
    def load(cls, label: str, path: Path, variant: str = "default") -> Setup:
        from mva_dagster.calc.formula import build_plan

        fw = load_framework(path)
        derived = derive_contract(fw, variant)
        plan = build_plan(fw.calculation_spec, known_inputs=None)
        shape = RecordShape(derived.schema, subjects=derived.subjects, variables=sorted(plan.inputs))
        system = "\n\n".join((fw.variant(variant).analysis_prompt.strip(), fw.output_contract.instructions.strip(),
                              "Return one JSON object with exactly these fields:\n" + describe_schema(derived.schema)))
        return cls(label, fw, derived.schema, shape, system)

    def request(self, document: tuple[str, str], replicate: int) -> LLMRequest:
        return LLMRequest(
            session_id="bench", document_id=document[0], model=ANALYSIS_MODEL, replicate=replicate,
            messages=[{"role": "system", "content": self.system},
                      {"role": "user", "content": f"Text to analyse:\n\n{document[1]}"}],
            params={"temperature": 0.0, "max_tokens": 8192, "seed": replicate},
            response_format={"type": "json_schema", "json_schema": {"name": "analysis_record", "schema": self.schema}})


class SimulatedModel:
    """A simulated provider app, called in-process over ASGI exactly as the proxy would call it."""

    def __init__(self, style: str, seed: int = 0) -> None:
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(SimulatedConfig(style=style, seed=seed))),  # type: ignore[arg-type]
                                        base_url="http://simulated", timeout=30.0)

    async def __call__(self, request: LLMRequest) -> LLMAnswer:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages, **request.params}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        response = await self.client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        choice = response.json()["choices"][0]
        return LLMAnswer(request_key=request.key(), raw_text=choice["message"]["content"], model_alias=request.model,
                         finish_reason=choice["finish_reason"], started_at=started, finished_at=started)

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class Outcome:
    framework: str
    style: str
    result: ChainResult
    raw: str


@dataclass
class Matrix:
    outcomes: list[Outcome] = field(default_factory=list)

    def by(self, key: str) -> dict[str, list[Outcome]]:
        grouped: dict[str, list[Outcome]] = defaultdict(list)
        for o in self.outcomes:
            grouped[getattr(o, key)].append(o)
        return grouped


async def answer_and_extract(setup: Setup, style: str, docs: list[tuple[str, str]], answers: int,
                             analysis: SimulatedModel, transformer: SimulatedModel | None) -> list[Outcome]:
    """``answers`` simulated answers in ``style`` through the whole chain."""

    async def one(i: int) -> Outcome:
        document = docs[i % len(docs)]
        replicate = i // len(docs) + 1
        answer = await analysis(setup.request(document, replicate))
        raw = answer.raw_text or ""

        def make_request(attempt: int) -> LLMRequest:
            return transform_request(session_id="bench", document_id=document[0], replicate=replicate,
                                     model=EXTRACTION_MODEL, raw_text=raw, shape=setup.shape, max_tokens=8192,
                                     attempt=attempt)

        result = await run_chain(raw, setup.shape, finish_reason=answer.finish_reason,
                                 make_request=make_request if transformer else None, transform=transformer)
        return Outcome(setup.label, style, result, raw)

    return list(await asyncio.gather(*(one(i) for i in range(answers))))


async def run_matrix(*, answers: int = 40, styles: Iterable[str] = ALL_STYLES, transform_style: str = "bare",
                     only: Iterable[str] | None = None, seed: int = 0) -> Matrix:
    docs = documents()
    matrix = Matrix()
    transformer = SimulatedModel(transform_style, seed=seed + 1) if transform_style != "none" else None
    try:
        for label, path in frameworks():
            if only and not any(o.lower() in label.lower() for o in only):
                continue
            setup = Setup.load(label, path)
            for style in styles:
                analysis = SimulatedModel(style, seed=seed)
                try:
                    matrix.outcomes += await answer_and_extract(setup, style, docs, answers, analysis, transformer)
                finally:
                    await analysis.aclose()
    finally:
        if transformer is not None:
            await transformer.aclose()
    return matrix


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f} %" if total else "-"


def style_table(matrix: Matrix) -> str:
    lines = ["| style | answers | valid | valid % | links that produced the records | failed (class) |",
             "|---|---:|---:|---:|---|---|"]
    total = valid = 0
    for style in ALL_STYLES:
        rows = matrix.by("style").get(style, [])
        if not rows:
            continue
        ok = sum(o.result.valid for o in rows)
        paths = Counter(o.result.path for o in rows if o.result.valid)
        fails = Counter(o.result.error_class for o in rows if not o.result.valid)
        total, valid = total + len(rows), valid + ok
        lines.append(f"| {style} | {len(rows)} | {ok} | {_pct(ok, len(rows))} | "
                     + ", ".join(f"{p} {n}" for p, n in paths.most_common()) + " | "
                     + (", ".join(f"{c} {n}" for c, n in fails.most_common()) or "-") + " |")
    lines.append(f"| **all** | {total} | {valid} | **{_pct(valid, total)}** | | |")
    return "\n".join(lines)


def framework_table(matrix: Matrix) -> str:
    styles = [s for s in ALL_STYLES if s in matrix.by("style")]
    lines = ["| framework | " + " | ".join(styles) + " |", "|---|" + "---:|" * len(styles)]
    for label, rows in matrix.by("framework").items():
        cells = []
        for style in styles:
            sub = [o for o in rows if o.style == style]
            cells.append(_pct(sum(o.result.valid for o in sub), len(sub)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(matrix: Matrix, limit: int = 5) -> str:
    bad = [o for o in matrix.outcomes if not o.result.valid]
    out = []
    for o in bad[:limit]:
        out.append(f"- {o.framework} / {o.style}: {o.result.error_class}: {'; '.join(o.result.errors)[:240]}"
                   f" (raw answer kept: {len(o.raw)} characters, sha256 {sha256_text(o.raw)[:12]})")
    return "\n".join(out)


def write_docs(text: str) -> None:
    doc = DOCS.read_text(encoding="utf-8")
    start, end = doc.index(TABLE_START) + len(TABLE_START), doc.index(TABLE_END)
    DOCS.write_text(doc[:start] + "\n" + text + "\n" + doc[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=40, help="answers per framework and style")
    parser.add_argument("--transform-style", default="bare", choices=[*ALL_STYLES, "none"],
                        help="how the transformation model answers ('none': no transformation link)")
    parser.add_argument("--framework", action="append", help="only frameworks whose label contains this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true", help=f"replace the table in {DOCS.name}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    matrix = asyncio.run(run_matrix(answers=args.answers, transform_style=args.transform_style,
                                    only=args.framework, seed=args.seed))
    frames = ", ".join(dict.fromkeys(o.framework for o in matrix.outcomes))
    text = (f"{len(matrix.outcomes)} simulated answers ({args.answers} per framework and style; frameworks: "
            f"{frames}; transformation answered in style `{args.transform_style}`; seed {args.seed}).\n\n"
            f"{style_table(matrix)}\n\nValid records per framework and style:\n\n{framework_table(matrix)}\n")
    bad = failures(matrix)
    if bad:
        text += f"\nFirst failures (raw answers kept, with the reason):\n\n{bad}\n"
    print(text)
    print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
