"""load_experiment: v2 front matter (both variants), v10 blocks, defaults, and every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mva_dagster.errors import SpecError
from mva_dagster.specs.experiment import load_experiment


def project(tmp_path: Path, yaml_body: str, *, leading_rule: bool = True) -> Path:
    """A temporary project: framework.md, corpus/ with one document, experiment.md."""
    (tmp_path / "framework.md").write_text("# stand-in\n", encoding="utf-8")
    (tmp_path / "corpus").mkdir(exist_ok=True)
    (tmp_path / "corpus" / "doc.txt").write_text("Some words.\n", encoding="utf-8")
    head = "---\n" if leading_rule else ""
    path = tmp_path / "experiment.md"
    path.write_text(
        f"{head}{yaml_body}---\n\n# Prose after the YAML\n\nkey: not yaml any more\n", encoding="utf-8"
    )
    return path


MINIMAL = "name: tmp_exp\nframework_file: framework.md\ncorpus: corpus/\nmodels: [sim-a]\n"


def test_civic_tone_fixture(fixtures: Path) -> None:
    exp = load_experiment(fixtures / "civic_tone")
    base = (fixtures / "civic_tone").resolve()
    assert exp.path == base / "experiment.md" and exp.dir == base
    assert exp.name == "civic_tone_pilot" and exp.spec_version == "2"
    assert exp.framework_file == base / "framework.md"
    assert exp.corpus == base / "corpus"
    assert exp.models == ["sim-small", "sim-large"] and exp.runs_per_model == 2
    assert exp.hypotheses["H1"].startswith("The newsletter")
    assert exp.statistical_plan[0]["test"]["method"] == "descriptive"
    assert exp.schedule == "0 6 * * 1" and exp.budget == 2.5
    assert exp.prompt_metadata == ["venue"]
    assert exp.generation == {"temperature": 0.2, "max_tokens": 4096, "seed": 7}
    assert exp.raw["name"] == "civic_tone_pilot" and exp.warnings == []
    assert load_experiment(fixtures / "civic_tone" / "experiment.md") == exp


def test_v10_fixture(fixtures: Path) -> None:
    exp = load_experiment(fixtures / "v10_style")
    assert exp.spec_version == "10" and exp.name == "brevity_smoke"
    assert exp.models == [] and exp.runs_per_model == 1
    assert exp.corpus == (fixtures / "v10_style" / "corpus" / "corpus.md").resolve()


def test_defaults(tmp_path: Path) -> None:
    exp = load_experiment(project(tmp_path, "framework: framework.md\n"))
    assert exp.name == tmp_path.name  # the folder name (already a valid name)
    assert exp.analysis_variant == "default" and exp.models == [] and exp.runs_per_model == 1
    assert exp.corpus is None and exp.schedule is None and exp.budget is None
    assert exp.prompt_metadata == [] and exp.hypotheses == {} and exp.statistical_plan == []
    assert exp.generation == {"temperature": 0.0, "max_tokens": 4096}


def test_yaml_without_leading_rule(tmp_path: Path) -> None:
    body = "# --- configuration ---\n" + MINIMAL + "num_runs: 3\nhypothesis: |\n  Texts differ.\n"
    exp = load_experiment(project(tmp_path, body, leading_rule=False))
    assert exp.name == "tmp_exp" and exp.runs_per_model == 3 and exp.hypotheses == {"H1": "Texts differ."}


def test_name_defaults_to_sanitized_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my study (draft)"
    folder.mkdir()
    exp = load_experiment(project(folder, "framework_file: framework.md\n"))
    assert exp.name == "my_study_draft"


def test_corpus_override_wins(tmp_path: Path) -> None:
    other = tmp_path / "other_corpus"
    other.mkdir()
    exp = load_experiment(project(tmp_path, MINIMAL), corpus_override=other)
    assert exp.corpus == other.resolve()


def test_framework_override(tmp_path: Path) -> None:
    path = project(tmp_path, "framework_file: ../nowhere/fw.md\n")
    exp = load_experiment(path, framework_override=tmp_path / "framework.md")
    assert exp.framework_file == (tmp_path / "framework.md").resolve()


def test_unknown_key_is_a_warning(tmp_path: Path) -> None:
    exp = load_experiment(project(tmp_path, MINIMAL + "model: sim-b\n"))
    assert exp.warnings == ["model: unknown key, ignored (did you mean 'models'?)"]


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="experiment file not found"):
        load_experiment(tmp_path / "experiment.md")


def test_directory_without_experiment(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no experiment.md / experiment.yaml"):
        load_experiment(tmp_path)


def test_no_yaml(tmp_path: Path) -> None:
    path = tmp_path / "experiment.md"
    path.write_text("# Just a title\n\nSome prose about the study.\n", encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert err.value.file == str(path.resolve()) and "no YAML found" in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "models: [a, b\n")
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert err.value.field == "front_matter" and "invalid YAML at line" in str(err.value)


def test_unclosed_front_matter(tmp_path: Path) -> None:
    path = tmp_path / "experiment.md"
    path.write_text("---\nname: x\nframework: f.md\n", encoding="utf-8")
    with pytest.raises(SpecError, match="never closed"):
        load_experiment(path)


def test_missing_framework_file_names_field_and_path(tmp_path: Path) -> None:
    path = project(tmp_path, "framework_file: frameworks/cff.md\n")
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert err.value.field == "framework_file" and err.value.file == str(path.resolve())
    assert str((tmp_path / "frameworks" / "cff.md").resolve()) in str(err.value)


def test_framework_key_required(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_experiment(project(tmp_path, "name: x\n"))
    assert err.value.field == "framework_file"


def test_missing_corpus_is_a_warning_until_it_is_needed(tmp_path: Path) -> None:
    exp = load_experiment(project(tmp_path, "framework: framework.md\ncorpus: texts/\n"))
    assert exp.corpus == (tmp_path / "texts").resolve()
    assert exp.warnings == [f"corpus: {exp.corpus} does not exist (yet)"]
    with pytest.raises(SpecError) as err:
        load_experiment(tmp_path / "experiment.md", corpus_override=tmp_path / "typo")
    assert err.value.field == "corpus (override)"


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ("runs_per_model: 0\n", "runs_per_model", "at least 1"),
        ("runs_per_model: two\n", "runs_per_model", "whole number"),
        ("runs_per_model: 2\nnum_runs: 3\n", "runs_per_model", "disagree"),
        ("models: sim-a\n", "models", "must be a list"),
        ("models: []\n", "models", "is empty"),
        ("models: [sim-a, sim-a]\n", "models", "listed twice"),
        ("schedule: '0 6 * *'\n", "schedule", "has 4 fields"),
        ("schedule: '61 6 * * 1'\n", "schedule", "minute field"),
        ("budget: -1\n", "budget", "non-negative"),
        ("generation: {temperature: 3}\n", "generation.temperature", "from 0 to 2"),
        ("generation: {max_tokens: 0}\n", "generation.max_tokens", "at least 1"),
        ("prompt_metadata: speaker\n", "prompt_metadata", "list of non-empty strings"),
        ("name: ../escape\n", "name", "not a usable name"),
        ("hypotheses: [a, b]\n", "hypotheses", "mapping"),
    ],
)
def test_bad_fields(tmp_path: Path, extra: str, field: str, fragment: str) -> None:
    body = "framework_file: framework.md\n" + extra
    path = project(tmp_path, body)
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert err.value.field == field and err.value.file == str(path.resolve())
    assert fragment in str(err.value)


def test_budget_and_cron_forms(tmp_path: Path) -> None:
    exp = load_experiment(
        project(tmp_path, "framework: framework.md\nbudget: '$12.50'\nschedule: '*/15 9-17 * JAN-MAR MON'\n")
    )
    assert exp.budget == 12.5 and exp.schedule == "*/15 9-17 * JAN-MAR MON"


def test_both_hypothesis_forms_are_kept(tmp_path: Path) -> None:
    exp = load_experiment(
        project(tmp_path, "framework: framework.md\nhypothesis: main\nhypotheses: {H1: one}\n")
    )
    assert exp.hypotheses == {"H1": "one", "hypothesis": "main"}


def test_plain_yaml_file(tmp_path: Path) -> None:
    project(tmp_path, MINIMAL)
    (tmp_path / "experiment.md").unlink()
    (tmp_path / "experiment.yaml").write_text("---\n" + MINIMAL, encoding="utf-8")
    exp = load_experiment(tmp_path)
    assert exp.path.name == "experiment.yaml" and exp.models == ["sim-a"]
