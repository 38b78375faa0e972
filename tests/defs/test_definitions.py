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
