"""The code location loads: every experiment under projects/ becomes an asset group with its jobs."""

from __future__ import annotations

import dagster as dg

from mva_dagster.definitions import REPO_PROJECTS, build_definitions, find_experiments


def test_repo_definitions_load() -> None:
    experiments = find_experiments([REPO_PROJECTS])
    assert any(e.name == "sotu_demo" for e in experiments)
    definitions, bundles = build_definitions(experiments)
    dg.Definitions.validate_loadable(definitions)
    graph = definitions.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    for step in ("documents", "analysis", "extraction", "scores", "metrics", "report"):
        assert f"MVA/sotu_demo/{step}" in keys
    bundle = next(iter(bundles.values()))
    for job in (bundle.documents_job, bundle.per_document_job, bundle.session_job):
        assert definitions.resolve_job_def(job) is not None


def test_module_level_defs_is_loadable() -> None:
    from mva_dagster import definitions as module

    dg.Definitions.validate_loadable(module.defs)


def test_schedule_only_when_the_experiment_asks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mva_dagster.sessions.layout import ProjectLayout
    from tests.conftest import REPO

    framework = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"
    project = ProjectLayout(tmp_path / "P")
    for name, extra in (("weekly", 'schedule: "0 6 * * 1"\n'), ("adhoc", "")):
        folder = project.experiments_dir / name
        folder.mkdir(parents=True)
        (folder / "experiment.md").write_text(
            f"---\nframework_file: {framework}\ncorpus: corpus/\nmodels: [gemini-2.5-flash]\n{extra}---\n")
    definitions, _ = build_definitions(find_experiments([tmp_path]))
    dg.Definitions.validate_loadable(definitions)
    schedules = list(definitions.schedules or [])
    assert [s.name for s in schedules] == ["P__weekly__schedule"]  # type: ignore[union-attr]
    assert schedules[0].cron_schedule == "0 6 * * 1"  # type: ignore[union-attr]
