"""No module of extraction mentions a framework's field names: they come from the spec, never from code.

Every name a shared framework gives a value - contract keys, the nested keys extraction derives,
array item keys, formula variables, metric names, v10 dimensions - is searched for as a whole
identifier (case-insensitive) in every source file of ``mva_dagster/extraction`` and in the
extraction step, code, strings, comments and docstrings alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mva_dagster.calc.formula import build_plan
from mva_dagster.extraction.derive import derive_contract
from mva_dagster.specs.framework import load_framework

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted((REPO / "mva_dagster" / "extraction").glob("*.py")) + [REPO / "mva_dagster/steps/extraction.py"]
SHARED_FRAMEWORKS = ["data/frameworks/cff/cff_v4.1.md", "data/frameworks/cff/cff_v4.2.md",
                     "data/frameworks/cff/cff_v4.3.md", "data/ecf/ecf_v1.0.md", "data/nano_sentiment/framework.md"]
# Always checked, with or without ../shared: the names the original Discernus code hard-coded.
STATIC = ["worldview", "hope", "fear", "tribal", "dignity", "salience", "sentiment", "warmth", "enmity", "amity",
          "compersion", "envy", "cohesion", "raw_score", "dimensional_scores", "salience_ranking"]


def _names(schema: Any, out: set[str]) -> None:
    if isinstance(schema, dict):
        for key, sub in (schema.get("properties") or {}).items():
            out.add(key)
            _names(sub, out)
        _names(schema.get("items"), out)


def _hits(names: set[str]) -> list[str]:
    found = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for name in sorted(names):
            for m in re.finditer(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text, re.IGNORECASE):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {name!r}")
    return found


def test_no_hard_coded_names_from_the_original_code() -> None:
    assert len(SOURCES) >= 10
    assert _hits(set(STATIC)) == []


@pytest.mark.shared
def test_no_field_name_of_any_shared_framework(shared: Path) -> None:
    names: set[str] = set()
    for rel in SHARED_FRAMEWORKS:
        fw = load_framework(shared / rel)
        for variant in fw.analysis_variants:
            _names(derive_contract(fw, variant).schema, names)
        names |= set(fw.calculation_spec) | set(fw.calculation_notes)
        names |= build_plan(fw.calculation_spec, known_inputs=None).inputs
        names |= {str(d["name"]) for d in fw.dimensions}
    assert {"scores", "evidence", "confidence", "dimension", "rank", "hope_score"} <= names
    assert _hits(names) == []
