"""Shared fixtures: an isolated MVA_HOME and Dagster instance, and a real simulated serving stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
FIXTURES = REPO / "tests" / "fixtures"

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test with the reason (a user's fresh clone has none)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared is not present ({path}); this test reads the shared reference data")
    return path


@pytest.fixture
def fixtures() -> Path:
    """The repository's own fixture frameworks, corpora and experiments."""
    return FIXTURES


@pytest.fixture
def shared() -> Path:
    """The real Discernus data at ../shared; tests using it skip on a fresh clone without it."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): the shared reference data exists on dev machines only")
    return SHARED


@pytest.fixture(scope="session")
def mva_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private MVA_HOME (keys, proxy state) and DAGSTER_HOME for the whole test run."""
    root = tmp_path_factory.mktemp("mva_env")
    saved = {k: os.environ.get(k) for k in ("MVA_HOME", "DAGSTER_HOME", "MVA_PROXY_URL")}
    os.environ["MVA_HOME"] = str(root / "mva_home")
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    os.environ.pop("MVA_PROXY_URL", None)
    (root / "dagster_home").mkdir()
    shutil.copyfile(REPO / "dagster.yaml", root / "dagster_home" / "dagster.yaml")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def simulated_stack(mva_env: Path) -> Iterator[object]:
    """The real LiteLLM proxy in front of the real simulated provider, shared by the session's tests."""
    from mva_dagster.proxy.stack import ensure_stack, stop_stack

    stack = ensure_stack("simulated")
    yield stack
    stop_stack("simulated")
