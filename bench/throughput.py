"""Throughput: an N-document session against the provider's rate bound, with three baselines measured
side by side in the same run, on the simulated provider behind the real LiteLLM proxy.

    .venv/bin/python -m bench.throughput                 # 1,000 documents, 1.0 s +- 20 %, rpm 600
    .venv/bin/python -m bench.throughput --smoke         # tiny sizes (the CI smoke test)

Rows:

* **mva session** - `launch_session` (what `mva run` does: three Dagster runs on the SQLite
  instance). Timed until every answer is archived and extracted (documents + per-document runs),
  and separately to the end of the session (scores ... report).
* **mva session, no rpm cap** - the same at twice the concurrency with no rpm cap: what the
  session does when the provider allows more than the capped bound.
* **asyncio + httpx floor** - a plain script sending the same requests at the same concurrency
  through the same proxy: no archive, no Dagster (the floor of what any client can do).
* **sequential loop** - one call at a time through the same proxy (Discernus's way), on a subset.
* **one Dagster run per partition** - `execute_in_process` of the analysis+extraction job once per
  `document|session` key, in sequence (in-process: no subprocess start-up, so an optimistic
  version of `dagster asset materialize` per partition), on a subset.

Every approach has its own model alias (deployment), so none eats another's rpm window.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.common import (
    FLOOR,
    PER_PARTITION,
    PROJECT,
    SEQUENTIAL,
    SESSION,
    WIDE,
    BenchHome,
    BenchStack,
    Caps,
    Meter,
    Profiler,
    say,
)


@dataclass
class Sizes:
    docs: int = 1000
    words: int = 2000
    latency_s: float = 1.0
    jitter: float = 0.2
    sequential_docs: int = 100
    partition_docs: int = 50

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(docs=6, words=150, latency_s=0.05, jitter=0.2, sequential_docs=3, partition_docs=2)


@dataclass
class Row:
    approach: str
    docs: int
    seconds: float
    docs_per_s: float
    bound: float
    note: str = ""
    cpu_ours_s: float = 0.0
    cpu_proxy_s: float = 0.0

    @property
    def pct_of_bound(self) -> float:
        return 100.0 * self.docs_per_s / self.bound if self.bound else 0.0


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def session_phases(layout: Any, started: float) -> dict[str, float]:
    """Seconds from ``started`` to the end of each Dagster run of the session, and the analysis step's
    own duration, from the session's chronolog."""
    from mva_dagster.sessions.chronolog import read_events

    events, _ = read_events(layout.chronolog)
    phases: dict[str, float] = {}
    for event in events:
        data = event.get("data") or {}
        if event["event"] == "DAGSTER_RUN_FINISHED":
            job = str(data.get("job", ""))
            for part in ("documents_job", "per_document_job", "session_job"):
                if job.endswith("__" + part):
                    phases[part] = _ts(event["timestamp"]) - started
        elif event["event"] == "ANALYSIS_STARTED":
            phases["analysis_started"] = _ts(event["timestamp"]) - started
        elif event["event"] == "ANALYSIS_COMPLETED":
            phases["analysis_completed"] = _ts(event["timestamp"]) - started
    return phases


def run_session_row(home: BenchHome, stack: BenchStack, corpus: Path, *, name: str, model: str,
                    bound: float, docs: int, profile: bool) -> tuple[Row, Row, dict[str, Any], Any]:
    """The session as `mva run` makes it; rows for 'all answers extracted' and 'whole session'."""
    from mva_dagster.launch import launch_session

    experiment = common.write_experiment(home, name, corpus=corpus, model=model)
    logs = home.root / "logs"
    started = time.time()
    with Profiler(_self_pid(), home.root / "profiles" / f"{name}_mva.txt", enabled=profile), \
            Profiler(stack.proxy_pid, home.root / "profiles" / f"{name}_proxy.txt", enabled=profile), \
            common.quiet_stderr(logs / f"{name}.log"), Meter(stack) as meter:
        layout = launch_session(experiment, project_dir=home.projects / PROJECT, provider="simulated",
                                keep_stack=True, say=lambda line: None)
    phases = session_phases(layout, started)
    extracted = phases.get("per_document_job", meter.wall)
    first = Row(f"mva session ({model})", docs, extracted, docs / extracted, bound,
                note="3 Dagster runs; timed until every answer is archived and extracted",
                cpu_ours_s=meter.ours, cpu_proxy_s=meter.proxy)
    whole = Row("  same, to the end of the session", docs, meter.wall, docs / meter.wall, bound,
                note="incl. scores, metrics, statistics, synthesis, report")
    return first, whole, {"phases": phases, "session": str(layout.root)}, layout


def _self_pid() -> int:
    import os

    return os.getpid()


def run_per_partition(home: BenchHome, corpus: Path, docs: int, bound: float) -> tuple[Row, dict[str, Any]]:
    """One Dagster run of the analysis+extraction job per partition key, in sequence."""
    from mva_dagster.definitions import build_definitions
    from mva_dagster.defs.factory import SESSION_TAG
    from mva_dagster.defs.runner import QUIET, RANGE_END, RANGE_START, register_partitions
    from mva_dagster.instance import get_instance

    subset = common.subset_corpus(corpus, corpus.with_name(f"{corpus.name}_first{docs}"), docs)
    layout = common.new_session(home, f"tp_partition_{subset.name}", corpus=subset, model=PER_PARTITION)
    definitions, bundles = build_definitions([layout.experiment])
    bundle = bundles[layout.experiment.root.resolve()]
    instance = get_instance()
    session_id = layout.session_id
    tags = {SESSION_TAG: session_id, "mva/project": PROJECT, "mva/experiment": layout.experiment.name,
            "mva/progress": "terminal"}
    runs: list[float] = []
    with common.quiet_stderr(home.root / "logs" / "per_partition.log"):
        started = time.perf_counter()
        segments = register_partitions(instance, bundle, layout)
        keys = [doc for seg in segments for doc in seg]
        definitions.resolve_job_def(bundle.documents_job).execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=True,
            tags={**tags, RANGE_START: keys[0], RANGE_END: keys[-1]})
        per_document = definitions.resolve_job_def(bundle.per_document_job)
        for doc in keys:
            t0 = time.perf_counter()
            per_document.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=True,
                                            tags=tags, partition_key=f"{doc}|{session_id}")
            runs.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    mean = sum(runs) / len(runs)
    row = Row("one Dagster run per partition", len(keys), seconds, len(keys) / seconds, bound,
              note=f"execute_in_process per key, in sequence; {mean:.2f} s per run")
    return row, {"run_seconds": runs}


def measure(home: BenchHome, stack: BenchStack, sizes: Sizes, caps: Caps, *, wide: bool,
            profile: bool) -> dict[str, Any]:
    corpus = common.build_corpus(home.corpus(sizes.docs, sizes.words), sizes.docs, words=sizes.words)
    common.set_latency(stack, sizes.latency_s, sizes.jitter)
    common.warm_up_imports()
    latency = max(sizes.latency_s, 1e-9)
    bound = min(caps.rpm / 60.0, caps.concurrency / latency)
    wide_bound = caps.wide_concurrency / latency
    say(f"corpus: {sizes.docs} documents of {sizes.words} words; latency {sizes.latency_s} s "
        f"+- {sizes.jitter:.0%}; rpm {caps.rpm}, concurrency {caps.concurrency} "
        f"-> bound {bound:.2f} documents/s; {common.machine_load()}")
    rows: list[Row] = []
    extra: dict[str, Any] = {}

    say("[1/5] mva session ...")
    first, whole, extra["session"], layout = run_session_row(
        home, stack, corpus, name=f"tp_session_{corpus.name}", model=SESSION, bound=bound, docs=sizes.docs,
        profile=profile)
    rows += [first, whole]

    if wide:
        say("[2/5] mva session, no rpm cap ...")
        wide_first, _, extra["wide"], _ = run_session_row(
            home, stack, corpus, name=f"tp_wide_{corpus.name}", model=WIDE, bound=wide_bound, docs=sizes.docs,
            profile=False)
        wide_first.approach = f"mva session, no rpm cap, concurrency {caps.wide_concurrency}"
        rows.append(wide_first)

    say("[3/5] asyncio + httpx floor ...")
    bodies = common.chat_bodies(layout, FLOOR)
    with Meter(stack) as meter:
        floor = common.run_plain(stack.proxy_url, bodies, concurrency=caps.concurrency)
    rows.append(Row(f"asyncio + httpx floor, concurrency {caps.concurrency}", floor.ok, floor.seconds,
                    floor.ok / floor.seconds, bound, note=f"{floor.retried} retried, {floor.failed} failed",
                    cpu_ours_s=meter.ours, cpu_proxy_s=meter.proxy))

    say("[4/5] sequential loop ...")
    seq_bodies = common.chat_bodies(layout, SEQUENTIAL)[:sizes.sequential_docs]
    sequential = common.run_plain(stack.proxy_url, seq_bodies, concurrency=1)
    seq_row = Row("sequential loop (one call at a time)", sequential.ok, sequential.seconds,
                  sequential.ok / sequential.seconds, bound,
                  note=f"first {sizes.sequential_docs} documents; {sequential.failed} failed")
    rows.append(seq_row)

    say("[5/5] one Dagster run per partition ...")
    per_row, extra["per_partition"] = run_per_partition(home, corpus, sizes.partition_docs, bound)
    rows.append(per_row)

    return {"sizes": asdict(sizes), "caps": asdict(caps), "bound_docs_per_s": bound,
            "load": common.machine_load(), "rows": [dict(asdict(r), pct_of_bound=r.pct_of_bound) for r in rows],
            "sequential_docs_per_s": seq_row.docs_per_s, "extra": extra,
            "profiles": _profiles(home) if profile else {}}


def _profiles(home: BenchHome) -> dict[str, list[str]]:
    folder = home.root / "profiles"
    return {p.stem: common.summarize_profile(p) for p in sorted(folder.glob("*.txt"))} if folder.exists() else {}


def report(result: dict[str, Any]) -> str:
    seq = result["sequential_docs_per_s"] or 1e-9
    rows = [[r["approach"], r["docs"], r["seconds"], r["docs_per_s"], f"{r['pct_of_bound']:.0f} %",
             f"{r['docs_per_s'] / seq:.1f}x", r["note"]] for r in result["rows"]]
    lines = [common.table(["approach", "docs", "seconds", "docs/s", "% of bound", "x sequential", "note"],
                          rows)]
    caps, sizes = result["caps"], result["sizes"]
    lines.append(f"\nbound = min(rpm/60, concurrency/latency) = min({caps['rpm']}/60, "
                 f"{caps['concurrency']}/{sizes['latency_s']}) = {result['bound_docs_per_s']:.2f} documents/s; "
                 f"the best possible ratio to the sequential loop is bound x latency = "
                 f"{result['bound_docs_per_s'] * sizes['latency_s']:.1f}x at these settings.")
    phases = result["extra"]["session"]["phases"]
    if phases:
        lines.append("session phases (s from launch): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    lines.append(f"machine: {result['load']} (at the end of the run)")
    for name, summary in result.get("profiles", {}).items():
        lines.append(f"\npy-spy profile {name}:")
        lines += summary
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=None, help="documents in the session (default 1000)")
    parser.add_argument("--words", type=int, default=None, help="words per document (default 2000)")
    parser.add_argument("--latency", type=float, default=None, help="simulated latency in s (default 1.0)")
    parser.add_argument("--sequential-docs", type=int, default=None, help="default 100")
    parser.add_argument("--partition-docs", type=int, default=None, help="default 50")
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-wide", action="store_true", help="skip the no-rpm-cap session row")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and no wide row (the CI smoke test)")
    parser.add_argument("--profile", action="store_true", help="py-spy the session (ours and the proxy)")
    parser.add_argument("--home", type=Path, default=None, help="benchmark folder (default: a temp one)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the proxy running in --home")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.smoke() if args.smoke else Sizes()
    for name in ("docs", "words", "sequential_docs", "partition_docs"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    if args.latency is not None:
        sizes.latency_s = args.latency
    sizes.sequential_docs = min(sizes.sequential_docs, sizes.docs)
    sizes.partition_docs = min(sizes.partition_docs, sizes.docs)
    return sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    sizes = sizes_from(args)
    caps = Caps(rpm=args.rpm, concurrency=args.concurrency, wide_concurrency=2 * args.concurrency)
    with common.bench_home(args.home) as home, common.bench_environment(home, caps):
        say(f"throughput benchmark in {home.root}; starting the simulated provider and the proxy ...")
        stack = common.start_stack()
        try:
            result = measure(home, stack, sizes, caps, wide=not (args.no_wide or args.smoke),
                             profile=args.profile)
        finally:
            if not args.keep_stack:
                common.stop_stack()
    say("\n## Throughput\n")
    say(report(result))
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
