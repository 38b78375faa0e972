"""Every framework x every answer style of the simulated provider ends as a valid record, by the expected link.

The answers come from the real simulated provider app, asked exactly as a session asks (derived
schema as response_format); the transformation is answered by a second simulated provider app. Runs
in-process (ASGI) so the whole matrix takes a few seconds; tests/integration/test_extraction_sessions.py
runs full sessions through the real proxy.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.extraction_styles import REPO, SHARED, run_matrix

FRAMEWORKS = [
    ("CFF v4.1", SHARED / "data/frameworks/cff/cff_v4.1.md"),
    ("CFF v4.2", SHARED / "data/frameworks/cff/cff_v4.2.md"),
    ("CFF v4.3", SHARED / "data/frameworks/cff/cff_v4.3.md"),
    ("ECF v1.0", SHARED / "data/ecf/ecf_v1.0.md"),
    ("nano sentiment", SHARED / "data/nano_sentiment/framework.md"),
    ("sotu_demo", REPO / "projects/MVA/experiments/sotu_demo/framework.md"),
    ("tide", REPO / "tests/fixtures/frameworks/tide_v5.md"),
    ("brevity", REPO / "tests/fixtures/v10_style/framework.md"),
]
EXPECTED_PATH = {
    "bare": {"bare_json"},
    "fenced": {"fenced_json"},
    "prose": {"embedded_json"},
    "nested": {"bare_json+field_match"},
    "csv_v5": {"csv_v5", "llm_transform"},
    "truncated": {"llm_transform"},
    "malformed": {"lenient_json"},
}


@pytest.mark.parametrize(("label", "path"), FRAMEWORKS, ids=[f[0] for f in FRAMEWORKS])
def test_every_style_ends_valid(label: str, path: object) -> None:
    if not path.exists():  # type: ignore[attr-defined]
        pytest.skip(f"{path} is not present (../shared holds the real Discernus frameworks)")
    matrix = asyncio.run(run_matrix(answers=4, only=[label]))
    assert len(matrix.outcomes) == 4 * 8
    for outcome in matrix.outcomes:
        result = outcome.result
        assert result.valid, (outcome.style, result.errors, result.trace)
        if outcome.style in EXPECTED_PATH:
            assert result.path in EXPECTED_PATH[outcome.style], (outcome.style, result.trace)
        if result.path == "llm_transform":
            assert result.transform_model == "gemini-2.5-flash" and result.transform_keys
            assert any(f.startswith("transform_filled:") for f in result.flags)
            if outcome.style == "truncated":  # what was written before the cut is read, not re-made
                assert result.trace[0].startswith(("partial_json", "json:"))
    csv_records = [o for o in matrix.outcomes if o.style == "csv_v5"]
    assert all(any(t.startswith("csv_v5") for t in o.result.trace) or "sentiment" in label or label == "brevity"
               for o in csv_records)  # the CSV link reads what it can; only 3-level contracts defeat it
