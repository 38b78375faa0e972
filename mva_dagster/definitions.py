"""The Definitions: one asset group per experiment found under the projects folder.

An experiment is a folder ``projects/<P>/experiments/<E>/`` holding ``experiment.md`` (written
there by the researcher) or ``experiment_snapshot.md`` (left by `mva run` for an experiment that
lives elsewhere). ``$MVA_PROJECTS_DIR`` (``os.pathsep``-separated) overrides ``./projects``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from mva_dagster.defs.checks import build_session_checks
from mva_dagster.defs.factory import ExperimentDefs, build_experiment_defs
from mva_dagster.defs.schedules import build_schedules
from mva_dagster.defs.sensors import run_failure_alerts
from mva_dagster.llm.gateway import LLMGateway
from mva_dagster.sessions.layout import SAFE_NAME, ExperimentLayout, ProjectLayout

REPO_PROJECTS = Path(__file__).resolve().parents[1] / "projects"


def projects_roots() -> list[Path]:
    if os.environ.get("MVA_PROJECTS_DIR"):
        return [Path(p).resolve() for p in os.environ["MVA_PROJECTS_DIR"].split(os.pathsep) if p]
    cwd_projects = Path.cwd() / "projects"
    return [cwd_projects.resolve() if cwd_projects.is_dir() else REPO_PROJECTS]


def find_experiments(roots: list[Path]) -> list[ExperimentLayout]:
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for project_dir in sorted(p for p in root.iterdir() if p.is_dir() and SAFE_NAME.match(p.name)):
            for experiment in ProjectLayout(project_dir).experiments():
                if SAFE_NAME.match(experiment.name) and (
                        (experiment.root / "experiment.md").exists() or experiment.experiment_snapshot.exists()):
                    found.append(experiment)
    return found


def build_definitions(experiments: list[ExperimentLayout]) -> tuple[dg.Definitions, dict[Path, ExperimentDefs]]:
    by_root: dict[Path, ExperimentDefs] = {}
    assets: list[dg.AssetsDefinition] = []
    jobs: list[UnresolvedAssetJobDefinition] = []
    for experiment in experiments:
        bundle = build_experiment_defs(experiment)
        by_root[experiment.root.resolve()] = bundle
        assets += bundle.assets
        jobs += bundle.jobs
    schedule_jobs, schedules = build_schedules(list(by_root.values()))
    checks = [check for bundle in by_root.values() for check in build_session_checks(bundle)]
    definitions = dg.Definitions(assets=assets, jobs=[*jobs, *schedule_jobs], schedules=schedules,
                                 asset_checks=checks, sensors=[run_failure_alerts],
                                 resources={"llm": LLMGateway()})
    return definitions, by_root


defs, EXPERIMENTS = build_definitions(find_experiments(projects_roots()))
