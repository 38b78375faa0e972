"""Start a session from an experiment: check everything first, then create, serve and run it.

The CLI (`mva run`) and scheduled re-runs both come through :func:`launch_session`, so a session
started by a schedule is made exactly like one started by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from mva_dagster.errors import BudgetExceeded, SessionError, SpecError
from mva_dagster.llm.budget import SessionPolicy, mark_paused_by_budget, record_policy, write_policy
from mva_dagster.llm.registry import load_registry
from mva_dagster.sessions.layout import SAFE_NAME, SessionLayout, check_safe_name
from mva_dagster.sessions.manager import DocumentEntry, Provider, create_session
from mva_dagster.specs.corpus import Corpus, load_corpus
from mva_dagster.specs.experiment import Experiment, load_experiment
from mva_dagster.specs.framework import Framework, load_framework

DEFAULT_PROJECT = Path("projects") / "default"
Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Plan:
    """Everything checked before anything is created or paid for."""

    experiment: Experiment
    framework: Framework
    corpus: Corpus
    models: list[str]
    provider: Provider
    project_dir: Path
    experiment_name: str
    generation: dict[str, Any]
    budget_override: float | None = None  # `mva run --budget USD`: the session budget

    @property
    def calls(self) -> int:
        return len(self.corpus.documents) * len(self.models) * self.experiment.runs_per_model


def default_provider(models: list[str]) -> Provider:
    """local if every model is a local one, else real (which then needs the providers' keys)."""
    registry = load_registry()
    return "local" if all(registry.resolve(m).provider == "local" for m in models) else "real"


def locate_project(experiment: Experiment, project_dir: Path | None,
                   experiment_name: str | None) -> tuple[Path, str]:
    """An experiment inside projects/<P>/experiments/<E>/ belongs there; others go to --project-dir."""
    folder = experiment.path.parent.resolve()
    if project_dir is None and folder.parent.name == "experiments" and SAFE_NAME.match(folder.name):
        return folder.parent.parent, experiment_name or folder.name
    name = experiment_name or experiment.name
    if not SAFE_NAME.match(name):
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._-") or "experiment"
    return (project_dir or DEFAULT_PROJECT).resolve(), check_safe_name(name, "experiment name")


def plan_session(experiment_path: Path, *, corpus: Path | None = None, model: str | None = None,
                 provider: Provider | None = None, project_dir: Path | None = None,
                 experiment_name: str | None = None) -> Plan:
    experiment = load_experiment(experiment_path, corpus_override=corpus)
    framework = load_framework(experiment.framework_file)
    framework.variant(experiment.analysis_variant)
    if experiment.corpus is None:
        raise SpecError("the experiment names no corpus", file=experiment.path, field="corpus",
                        hint="add `corpus: <folder>` to the experiment or pass --corpus")
    corpus_obj = load_corpus(experiment.corpus)
    if not corpus_obj.documents:
        raise SpecError(f"the corpus {experiment.corpus} has no documents", file=experiment.path, field="corpus")
    names = [model] if model else list(experiment.models)
    if not names:
        raise SpecError("the experiment names no models", file=experiment.path, field="models",
                        hint="add `models: [<alias>]` or pass --model ALIAS")
    registry = load_registry()
    models = [registry.resolve(name).name for name in names]
    mode: Provider = provider or default_provider(models)
    if mode == "real":
        from mva_dagster.proxy.stack import check_real_keys

        check_real_keys(models)
    generation = dict(experiment.generation)
    # A request never asks for more output than every model can give.
    cap = min(registry.resolve(m).max_output_tokens for m in models)
    generation["max_tokens"] = min(int(generation.get("max_tokens") or cap), cap)
    proj, name = locate_project(experiment, project_dir, experiment_name)
    return Plan(experiment=experiment, framework=framework, corpus=corpus_obj, models=models,
                provider=mode, project_dir=proj, experiment_name=name, generation=generation)


def session_policy(plan: Plan) -> SessionPolicy:
    """Budgets (``--budget`` wins over the experiment's ``budget:``), the alert webhook and the
    experiment's fallbacks, resolved to canonical aliases - a fallback is never implicit."""
    registry = load_registry()
    experiment = plan.experiment
    fallbacks: dict[str, list[str]] = {}
    for name, targets in experiment.fallbacks.items():
        model = registry.resolve(name).name
        chain = [registry.resolve(t).name for t in targets]
        if model in chain:
            raise SpecError(f"{name} falls back to itself", file=experiment.path, field="fallbacks")
        if model in plan.models:
            fallbacks[model] = chain
    session_usd = plan.budget_override if plan.budget_override is not None else experiment.budget
    return SessionPolicy(
        session_usd=session_usd, experiment_usd=experiment.experiment_budget,
        project_usd=experiment.project_budget, alert_webhook=experiment.budget_webhook, fallbacks=fallbacks,
        budget_source="cli" if plan.budget_override is not None else "experiment" if session_usd is not None
        else None)


def create_planned_session(plan: Plan, *, model_override: str | None = None,
                           linked_from: SessionLayout | None = None,
                           changes: list[str] | None = None) -> SessionLayout:
    """Create the planned session; ``linked_from`` is the session `mva resume --allow-changes` continues.

    Its budgets go to ``session_policy.json`` and, when there are any, to the chronolog (``BUDGET_SET``).
    """
    documents = [DocumentEntry(id=d.id, path=str(d.path.resolve()), sha256=d.sha256, n_words=d.n_words,
                               metadata=dict(d.metadata)) for d in plan.corpus.documents]
    policy = session_policy(plan)  # checked before the session exists
    layout = create_session(
        project_dir=plan.project_dir, experiment_name=plan.experiment_name,
        experiment_file=plan.experiment.path, framework_file=plan.experiment.framework_file,
        framework_name=plan.framework.name, framework_version=plan.framework.version,
        corpus_path=plan.corpus.path, corpus_sha256=plan.corpus.sha256, documents=documents,
        models=plan.models, model_override=model_override, runs_per_model=plan.experiment.runs_per_model,
        analysis_variant=plan.experiment.analysis_variant, generation=plan.generation,
        prompt_metadata=list(plan.experiment.prompt_metadata), provider=plan.provider,
        linked_from=linked_from, changes=changes)
    write_policy(layout, policy)
    if policy.limits():
        record_policy(layout, policy, command="run" if linked_from is None else "resume --allow-changes")
    return layout


def execute_session(layout: SessionLayout, provider: Provider, *, instance: dg.DagsterInstance | None = None,
                    terminal: bool = True, keep_stack: bool = False, say: Say = _stderr) -> SessionLayout:
    """Serve the session's provider mode and run its Dagster runs; stop what was started for it."""
    from mva_dagster.definitions import build_definitions
    from mva_dagster.defs.runner import run_session
    from mva_dagster.instance import get_instance
    from mva_dagster.proxy.stack import ensure_stack

    definitions, bundles = build_definitions([layout.experiment])
    bundle = bundles[layout.experiment.root.resolve()]
    say(f"Starting the {provider} provider and the LiteLLM proxy ...")
    stack = ensure_stack(provider)
    try:
        say(f"Proxy ready at {stack.proxy.url}")
        try:
            run_session(layout, bundle, definitions, instance or get_instance(), terminal=terminal)
        except (SessionError, BudgetExceeded) as exc:
            paused = mark_paused_by_budget(layout)  # a new session: any pause in its ledger is this run's
            raise paused or exc from exc
    finally:
        if not keep_stack:
            stack.stop_started()
    return layout


def launch_session(experiment_path: Path, *, project_dir: Path | None = None, corpus: Path | None = None,
                   model: str | None = None, provider: Provider | None = None,
                   experiment_name: str | None = None, instance: dg.DagsterInstance | None = None,
                   terminal: bool = True, keep_stack: bool = False, say: Say = _stderr,
                   budget: float | None = None, confirm: Callable[[Plan], None] | None = None) -> SessionLayout:
    """Plan, create and run a session. ``budget`` is the session budget in USD (over the experiment's);
    ``confirm`` sees the plan before anything is created (`mva run` shows the cost estimate there and
    may refuse by raising)."""
    plan = plan_session(experiment_path, corpus=corpus, model=model, provider=provider,
                        project_dir=project_dir, experiment_name=experiment_name)
    plan.budget_override = budget
    if confirm is not None:
        confirm(plan)
    layout = create_planned_session(plan, model_override=model)
    say(f"Session {layout.session_id}: {len(plan.corpus.documents)} documents x {len(plan.models)} model(s) "
        f"x {plan.experiment.runs_per_model} run(s) = {plan.calls} calls on provider '{plan.provider}'")
    return execute_session(layout, plan.provider, instance=instance, terminal=terminal,
                           keep_stack=keep_stack, say=say)
