"""Overhead: our own CPU time per document at zero latency and no rpm cap, with the proxy's and
Dagster's shares measured separately, in one run.

    .venv/bin/python -m bench.overhead            # 1,000 documents
    .venv/bin/python -m bench.overhead --smoke    # tiny sizes (the CI smoke test)

Each row runs the per-document work of a fresh session (the documents check, analysis through the
gateway with its archive and conversation log, extraction); CPU is read from ``os.times()`` for
this process and from ``/proc/<pid>/stat`` for the proxy and the provider:

* **steps, gateway -> provider** - the step functions called directly, the gateway pointed at the
  simulated provider itself: our code alone, no proxy, no Dagster.
* **steps, through the proxy** - the same through the real LiteLLM proxy (its CPU in its column).
* **Dagster, ephemeral instance** - the documents and per-document runs of `run_session` on an
  in-memory instance: adds Dagster's execution machinery, not its storage.
* **Dagster, SQLite instance** - the same on `$DAGSTER_HOME` (what `mva run` does): adds the event
  storage (materializations, observations, run records written to SQLite).
* **asyncio + httpx floor** - the bare HTTP requests through the proxy: the client cost no caller
  can avoid.

Scores, metrics, statistics, synthesis and the report run once per session, not per document, and
are left out of every row.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.common import OVERHEAD, BenchHome, BenchStack, Caps, Meter, Profiler, say

KINDS = ("direct", "proxy", "ephemeral", "sqlite")


@dataclass
class Sizes:
    docs: int = 1000
    words: int = 2000

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(docs=8, words=150)


@dataclass
class Row:
    configuration: str
    docs: int
    seconds: float
    ours_ms: float
    proxy_ms: float
    provider_ms: float


def _steps(layout: Any, proxy_url: str) -> None:
    from mva_dagster.llm.gateway import LLMGateway
    from mva_dagster.steps import analysis as analysis_step
    from mva_dagster.steps import extraction as extraction_step
    from mva_dagster.steps.context import SessionContext

    ctx = SessionContext.load(layout)
    ids = [d.id for d in ctx.manifest.documents]
    for entry in ctx.manifest.documents:
        ctx.document_text(entry)  # what the documents asset checks
    gateway = LLMGateway(proxy_url=proxy_url)
    analysis_step.run_analysis(ctx, gateway, ids, lambda line: None)
    extraction_step.run_extraction(ctx, ids, gateway, lambda line: None)


def _dagster(layout: Any, instance: Any) -> None:
    from mva_dagster.definitions import build_definitions
    from mva_dagster.defs.runner import run_session

    definitions, bundles = build_definitions([layout.experiment])
    run_session(layout, bundles[layout.experiment.root.resolve()], definitions, instance,
                steps=("documents", "per_document"))


def _row(name: str, docs: int, meter: Meter) -> Row:
    per = 1000.0 / max(docs, 1)
    return Row(name, docs, meter.wall, meter.ours * per, meter.proxy * per, meter.provider * per)


def measure(home: BenchHome, stack: BenchStack, sizes: Sizes, *, profile: bool, warm_up: bool = True,
            only: set[str] | None = None) -> dict[str, Any]:
    import dagster as dg

    from mva_dagster.instance import get_instance

    corpus = common.build_corpus(home.corpus(sizes.docs, sizes.words), sizes.docs, words=sizes.words)
    common.set_latency(stack, 0.0, 0.0)
    say(f"corpus: {sizes.docs} documents of {sizes.words} words; zero latency, no rpm cap; "
        f"{common.machine_load()}")
    rows: list[Row] = []
    logs = home.root / "logs"
    if warm_up:
        _warm_up(home, stack, corpus)

    plans = [
        ("steps, gateway -> provider (no proxy, no Dagster)", "direct"),
        ("steps, through the proxy (no Dagster)", "proxy"),
        ("Dagster runs, ephemeral instance (no event storage)", "ephemeral"),
        ("Dagster runs, SQLite instance (as `mva run`)", "sqlite"),
    ]
    plans = [p for p in plans if only is None or p[1] in only]
    for i, (name, kind) in enumerate(plans, 1):
        say(f"[{i}/{len(plans) + 1}] {name} ...")
        layout = common.new_session(home, f"overhead_{kind}_{corpus.name}", corpus=corpus, model=OVERHEAD)
        instance = dg.DagsterInstance.ephemeral() if kind == "ephemeral" else get_instance()
        with Profiler(_pid(), home.root / "profiles" / f"overhead_{kind}.txt", enabled=profile), \
                common.quiet_stderr(logs / f"overhead_{kind}.log"), Meter(stack) as meter:
            if kind in ("direct", "proxy"):
                _steps(layout, stack.provider_url if kind == "direct" else stack.proxy_url)
            else:
                _dagster(layout, instance)
        rows.append(_row(name, sizes.docs, meter))

    say(f"[{len(plans) + 1}/{len(plans) + 1}] asyncio + httpx floor ...")
    layout = common.new_session(home, f"overhead_floor_{corpus.name}", corpus=corpus, model=OVERHEAD)
    bodies = common.chat_bodies(layout, OVERHEAD)
    with Meter(stack) as meter:
        common.run_plain(stack.proxy_url, bodies, concurrency=16)
    rows.append(_row("asyncio + httpx floor (bare requests, through the proxy)", sizes.docs, meter))

    by = {kind: row for (_, kind), row in zip(plans, rows, strict=False)}
    if len(by) < len(KINDS):  # a partial run (--rows) has no differences to report
        return {"sizes": asdict(sizes), "load": common.machine_load(), "rows": [asdict(r) for r in rows],
                "derived": {}, "profiles": _profiles(home, profile)}
    derived = {
        "ours_without_proxy_ms": by["direct"].ours_ms,
        "ours_through_proxy_ms": by["proxy"].ours_ms,
        "dagster_machinery_ms": by["ephemeral"].ours_ms - by["proxy"].ours_ms,
        "dagster_event_storage_ms": by["sqlite"].ours_ms - by["ephemeral"].ours_ms,
        "proxy_ms": by["proxy"].proxy_ms,
        "http_client_floor_ms": rows[-1].ours_ms,
    }
    return {"sizes": asdict(sizes), "load": common.machine_load(), "rows": [asdict(r) for r in rows],
            "derived": derived, "profiles": _profiles(home, profile)}


def _profiles(home: BenchHome, profile: bool) -> dict[str, list[str]]:
    if not profile:
        return {}
    return {p.stem: common.summarize_profile(p) for p in sorted((home.root / "profiles").glob("overhead_*.txt"))}


def _pid() -> int:
    import os

    return os.getpid()


def _warm_up(home: BenchHome, stack: BenchStack, corpus: Path) -> None:
    """Import everything and run two documents once, so no row pays the one-time start-up."""
    from mva_dagster.instance import get_instance

    subset = common.subset_corpus(corpus, corpus.with_name(f"{corpus.name}_first2"), 2)
    with common.quiet_stderr(home.root / "logs" / "warm_up.log"):
        _steps(common.new_session(home, f"overhead_warm_up_{subset.name}", corpus=subset, model=OVERHEAD), stack.proxy_url)
        _dagster(common.new_session(home, f"overhead_warm_up_{subset.name}", corpus=subset, model=OVERHEAD), get_instance())


def report(result: dict[str, Any]) -> str:
    rows = [[r["configuration"], r["docs"], r["seconds"], r["ours_ms"], r["proxy_ms"], r["provider_ms"]]
            for r in result["rows"]]
    d = result["derived"]
    lines = [common.table(["configuration", "docs", "seconds", "mva CPU ms/doc", "proxy CPU ms/doc",
                           "provider CPU ms/doc"], rows), ""]
    if d:
        lines += [
             "CPU per document, separated:",
             f"  ours (steps, gateway, archive, extraction), no proxy:   {d['ours_without_proxy_ms']:.1f} ms",
             f"  ours, through the proxy (our process only):             {d['ours_through_proxy_ms']:.1f} ms",
             f"  the LiteLLM proxy (its own process):                    {d['proxy_ms']:.1f} ms",
             f"  Dagster's execution machinery (ephemeral - steps):      {d['dagster_machinery_ms']:.1f} ms",
             f"  Dagster's event storage (SQLite - ephemeral):           {d['dagster_event_storage_ms']:.1f} ms",
             f"  a bare asyncio + httpx request (the client floor):      {d['http_client_floor_ms']:.1f} ms"]
    lines.append(f"machine: {result['load']} (at the end of the run)")
    for name, summary in result.get("profiles", {}).items():
        lines.append(f"\npy-spy profile {name}:")
        lines += summary
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=None, help="documents per row (default 1000)")
    parser.add_argument("--words", type=int, default=None, help="words per document (default 2000)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the CI smoke test")
    parser.add_argument("--profile", action="store_true", help="py-spy each row of our process")
    parser.add_argument("--home", type=Path, default=None, help="benchmark folder (default: a temp one)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the proxy running in --home")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--rows", default=None, help=f"only these rows, comma-separated: {','.join(KINDS)}")
    args = parser.parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes()
    sizes.docs = args.docs or sizes.docs
    sizes.words = args.words or sizes.words
    with common.bench_home(args.home) as home, common.bench_environment(home, Caps()):
        say(f"overhead benchmark in {home.root}; starting the simulated provider and the proxy ...")
        stack = common.start_stack()
        try:
            result = measure(home, stack, sizes, profile=args.profile, warm_up=not args.smoke,
                             only=set(args.rows.split(",")) if args.rows else None)
        finally:
            if not args.keep_stack:
                common.stop_stack()
    say("\n## Overhead\n")
    say(report(result))
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
