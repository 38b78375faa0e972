"""`mva run` refuses bad input with one clear message, before anything is created or paid for."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mva_dagster.cli.main import main
from tests.conftest import REPO

FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"


def experiment(tmp_path: Path, *, framework: str, corpus: str, models: str = '["gemini-2.5-flash"]') -> Path:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "experiment.md").write_text(
        f"---\nframework_file: {framework}\ncorpus: {corpus}\nmodels: {models}\nruns_per_model: 1\n---\n")
    return folder


def corpus(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def run(tmp_path: Path, folder: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", str(folder), "--provider", "simulated",
                                       "--project-dir", str(tmp_path / "projects" / "P"), *extra])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.mark.parametrize(("files", "expected"), [
    ({"a.txt": b""}, "empty"),
    ({"a.txt": b"text\x00\x01binary"}, "binary"),
    ({"a.txt": b"caf\xe9 au lait"}, "UTF-8"),
])
def test_bad_documents(tmp_path: Path, files: dict[str, bytes], expected: str) -> None:
    folder = experiment(tmp_path, framework=str(FRAMEWORK), corpus=str(corpus(tmp_path, files)))
    code, output = run(tmp_path, folder)
    assert code == 2 and expected.lower() in output.lower() and "a.txt" in output
    assert not (tmp_path / "projects").exists()  # nothing created


def test_unsafe_manifest_id(tmp_path: Path) -> None:
    folder_corpus = corpus(tmp_path, {"a.txt": b"hello there", "manifest.yaml":
                                      b"texts:\n  - id: ../escape\n    filename: a.txt\n"})
    code, output = run(tmp_path, experiment(tmp_path, framework=str(FRAMEWORK), corpus=str(folder_corpus)))
    assert code == 2 and "../escape" in output


def test_missing_framework_file(tmp_path: Path) -> None:
    folder = experiment(tmp_path, framework="nowhere/framework.md",
                        corpus=str(corpus(tmp_path, {"a.txt": b"hello"})))
    code, output = run(tmp_path, folder)
    assert code == 2 and "framework" in output and "nowhere" in output


def test_unknown_model(tmp_path: Path) -> None:
    folder = experiment(tmp_path, framework=str(FRAMEWORK), corpus=str(corpus(tmp_path, {"a.txt": b"hello"})),
                        models='["gpt-9-ultra"]')
    code, output = run(tmp_path, folder)
    assert code == 2 and "gpt-9-ultra" in output and "models.yaml" in output


def test_real_provider_without_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEMINI_API_KEY", "VERTEXAI_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    folder = experiment(tmp_path, framework=str(FRAMEWORK), corpus=str(corpus(tmp_path, {"a.txt": b"hello"})))
    result = CliRunner().invoke(main, ["run", str(folder), "--provider", "real",
                                       "--project-dir", str(tmp_path / "projects" / "P")])
    assert result.exit_code == 2 and "--provider simulated" in result.output
