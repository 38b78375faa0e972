"""Paths to the repository's own fixtures and to the shared real data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = REPO / ".." / "shared"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def shared() -> Path:
    """The real Discernus data at ../shared; tests using it skip on a fresh clone without it."""
    if not SHARED.is_dir():
        pytest.skip(
            f"../shared is absent ({SHARED.resolve()}): real Discernus data only exists on dev machines"
        )
    return SHARED.resolve()
