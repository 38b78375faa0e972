"""Scale: registering 10,000 document partitions, a 10,000-document session (simulated, zero
latency), the Dagster GraphQL time to show its partition status, and peak RSS at 1,000 and 10,000.

    .venv/bin/python -m bench.scale                  # 1,000 and 10,000 documents
    .venv/bin/python -m bench.scale --smoke          # tiny sizes (the CI smoke test)

Each session runs in a fresh worker process (``python -m bench.scale --worker``) so that its peak
RSS (``VmHWM``) is its own; both share the same proxy, provider and SQLite Dagster instance. The
GraphQL timings come from a real ``dagster-webserver`` started on that instance afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import OVERHEAD, PROJECT, BenchHome, BenchStack, Caps, Profiler, say

PARTITION_QUERY = """
query PartitionStatus($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numMaterializing numFailed numPartitions }
    }
  }
}
"""

# What the asset's Partitions tab loads: the status of every partition, as ranges.
PARTITION_STATUSES_QUERY = """
query PartitionStatuses($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      assetPartitionStatuses {
        __typename
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey
            secondaryDim {
              __typename
              ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
            }
          }
        }
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
      }
    }
  }
}
"""


@dataclass
class Sizes:
    small: int = 1000
    large: int = 10000
    words: int = 2000

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(small=4, large=12, words=120)


# -- the worker: one session in a process of its own --------------------------------------------


def scale_projects(home: BenchHome) -> Path:
    """The scale sessions' own projects folder: the webserver loads these experiments only."""
    return home.root / "scale_projects"


def worker(docs: int, corpus: Path, home: BenchHome, out: Path, profile: bool) -> None:
    import mva_dagster.definitions  # noqa: F401  (imported before the baseline RSS is read)
    from mva_dagster.definitions import build_definitions
    from mva_dagster.defs.runner import register_partitions, run_session
    from mva_dagster.instance import get_instance
    from mva_dagster.steps import report, statistics, synthesis  # noqa: F401

    rss_start, _ = common.rss_mb()
    result: dict[str, Any] = {"docs": docs, "rss_after_imports_mb": rss_start}
    t0 = time.perf_counter()
    layout = common.new_session(home, f"scale_{corpus.name}", corpus=corpus, model=OVERHEAD,
                                projects=scale_projects(home))
    result["create_session_s"] = time.perf_counter() - t0
    definitions, bundles = build_definitions([layout.experiment])
    bundle = bundles[layout.experiment.root.resolve()]
    instance = get_instance()
    t0 = time.perf_counter()
    register_partitions(instance, bundle, layout)
    result["register_partitions_s"] = time.perf_counter() - t0
    cpu0 = common.self_cpu()
    t0 = time.perf_counter()
    started = time.time()
    with Profiler(os.getpid(), home.root / "profiles" / f"scale_{docs}.txt", enabled=profile), \
            common.quiet_stderr(home.root / "logs" / f"scale_{docs}.log"), RssSampler() as sampler:
        run_session(layout, bundle, definitions, instance, terminal=True)
    result["session_s"] = time.perf_counter() - t0
    result["rss_by_phase_mb"] = rss_by_phase(layout, started, sampler.samples)
    result["session_cpu_s"] = common.self_cpu() - cpu0
    result["rss_end_mb"], result["peak_rss_mb"] = common.rss_mb()
    result["growth_mb"] = result["peak_rss_mb"] - rss_start
    result["session"] = str(layout.root)
    result["asset_key"] = [PROJECT, layout.experiment.name, "analysis"]
    out.write_text(json.dumps(result), encoding="utf-8")


class RssSampler:
    """This process's RSS every half second while the block runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.time(), common.rss_mb()[0]))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_by_phase(layout: Any, started: float, samples: list[tuple[float, float]]) -> dict[str, float]:
    """The highest RSS seen in each phase of the session, phases cut at its chronolog events."""
    from datetime import datetime

    from mva_dagster.sessions.chronolog import read_events

    marks: list[tuple[float, str]] = []
    for event in read_events(layout.chronolog)[0]:
        data = event.get("data") or {}
        name = str(event["event"])
        label = {"ANALYSIS_STARTED": "documents run", "ANALYSIS_COMPLETED": "analysis",
                 "EXTRACTION_COMPLETED": "extraction"}.get(name)
        if name == "DAGSTER_RUN_FINISHED":
            job = str(data.get("job", ""))
            label = ("per-document run, after extraction" if job.endswith("per_document_job") else
                     "session run (scores ... report)" if job.endswith("session_job") else None)
        if label:
            marks.append((datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp(),
                          label))
    phases: dict[str, float] = {}
    begin = started
    for end, label in sorted(marks):
        inside = [rss for t, rss in samples if begin <= t <= end]
        if inside:
            phases[label] = max(inside)
        begin = end
    return phases


def run_worker(home: BenchHome, docs: int, corpus: Path, profile: bool) -> dict[str, Any]:
    out = home.root / f"scale_worker_{docs}.json"
    argv = [sys.executable, "-m", "bench.scale", "--worker", str(docs), "--corpus", str(corpus),
            "--home", str(home.root), "--out", str(out)] + (["--profile"] if profile else [])
    log = home.root / "logs" / f"scale_worker_{docs}.stderr"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(argv, cwd=common.REPO, env=dict(os.environ), stdout=stderr, stderr=stderr)
        try:
            code = process.wait()
        except BaseException:
            process.terminate()  # an interrupted benchmark leaves no worker behind
            process.wait(30)
            raise
    if code != 0:
        raise RuntimeError(f"the {docs}-document worker failed:\n{log.read_text(errors='replace')[-4000:]}")
    return dict(json.loads(out.read_text(encoding="utf-8")))


# -- GraphQL --------------------------------------------------------------------------------------


def graphql_timings(home: BenchHome, asset_key: list[str], repeats: int = 3) -> dict[str, Any]:
    """Start dagster-webserver on the instance and time the partition-status queries."""
    from mva_dagster.services import free_port, start_service, stop_service

    port = free_port()
    state = home.root / "webserver"
    exe = Path(sys.executable).parent / "dagster-webserver"
    argv = [str(exe), "-h", "127.0.0.1", "-p", str(port), "-m", "mva_dagster.definitions"]
    t0 = time.perf_counter()
    env = {"MVA_PROJECTS_DIR": str(scale_projects(home))}
    start_service("webserver", argv, state_dir=state, port=port, health_path="/server_info", timeout_s=300,
                  env=env)
    timings: dict[str, Any] = {"webserver_start_s": time.perf_counter() - t0}
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        variables = {"assetKey": {"path": asset_key}}
        for name, query in (("partition_stats", PARTITION_QUERY), ("partition_statuses", PARTITION_STATUSES_QUERY)):
            seconds = []
            payload: dict[str, Any] = {}
            for _ in range(repeats):
                t0 = time.perf_counter()
                response = httpx.post(url, json={"query": query, "variables": variables}, timeout=600)
                seconds.append(time.perf_counter() - t0)
                response.raise_for_status()
                payload = response.json()
                if payload.get("errors"):
                    raise RuntimeError(f"GraphQL errors: {payload['errors']}")
            timings[name] = {"first_s": seconds[0], "next_s": min(seconds[1:]) if seconds[1:] else None}
            node = payload["data"]["assetNodeOrError"]
            if name == "partition_stats":
                timings["partition_stats_result"] = node.get("partitionStats")
    finally:
        stop_service(state, "webserver")
    return timings


# -- the benchmark --------------------------------------------------------------------------------


def measure(home: BenchHome, stack: BenchStack, sizes: Sizes, *, profile: bool) -> dict[str, Any]:
    common.set_latency(stack, 0.0, 0.0)
    t0 = time.perf_counter()
    large_corpus = common.build_corpus(home.corpus(sizes.large, sizes.words), sizes.large, words=sizes.words)
    corpus_s = time.perf_counter() - t0
    small_corpus = common.subset_corpus(large_corpus, home.corpus(sizes.small, sizes.words), sizes.small)
    say(f"corpora: {sizes.small} and {sizes.large} documents of {sizes.words} words ({corpus_s:.0f} s); "
        f"zero latency, no rpm cap; {common.machine_load()}")
    say(f"[1/3] {sizes.small}-document session (worker process) ...")
    small = run_worker(home, sizes.small, small_corpus, profile=False)
    say(f"[2/3] {sizes.large}-document session (worker process) ...")
    large = run_worker(home, sizes.large, large_corpus, profile=profile)
    say("[3/3] dagster-webserver: partition status over GraphQL ...")
    graphql = graphql_timings(home, large["asset_key"])
    return {"sizes": asdict(sizes), "load": common.machine_load(), "small": small, "large": large,
            "graphql": graphql, "rss_peak_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
            "rss_growth_ratio": large["growth_mb"] / max(small["growth_mb"], 1e-9),
            "profiles": {p.stem: common.summarize_profile(p)
                         for p in sorted((home.root / "profiles").glob("scale_*.txt"))} if profile else {}}


def report(result: dict[str, Any]) -> str:
    small, large, gql = result["small"], result["large"], result["graphql"]
    rows = [[f"{r['docs']:,} documents", r["register_partitions_s"], r["session_s"], r["docs"] / r["session_s"],
             1000 * r["session_cpu_s"] / r["docs"], r["rss_after_imports_mb"], r["peak_rss_mb"], r["growth_mb"]]
            for r in (small, large)]
    lines = [common.table(["session", "register partitions s", "session s", "docs/s", "mva CPU ms/doc",
                           "RSS after imports MB", "peak RSS MB", "growth MB"], rows), "",
             f"peak RSS {large['docs']:,} / {small['docs']:,}: {result['rss_peak_ratio']:.2f}x; "
             f"growth over the baseline: {result['rss_growth_ratio']:.2f}x",
             "peak RSS by phase (MB): " + "; ".join(
                 f"{r['docs']:,} docs: " + ", ".join(f"{k} {v:.0f}" for k, v in r.get("rss_by_phase_mb", {}).items())
                 for r in (small, large)),
             f"dagster-webserver start: {gql['webserver_start_s']:.1f} s; partition status of "
             f"{' / '.join(large['asset_key'])}:",
             f"  partitionStats          first {gql['partition_stats']['first_s']:.2f} s, then "
             f"{_s(gql['partition_stats']['next_s'])}  -> {gql.get('partition_stats_result')}",
             f"  assetPartitionStatuses  first {gql['partition_statuses']['first_s']:.2f} s, then "
             f"{_s(gql['partition_statuses']['next_s'])}",
             f"machine: {result['load']} (at the end of the run)"]
    for name, summary in result.get("profiles", {}).items():
        lines.append(f"\npy-spy profile {name}:")
        lines += summary
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=None, help="the large session (default 10000)")
    parser.add_argument("--small-docs", type=int, default=None, help="the small session (default 1000)")
    parser.add_argument("--words", type=int, default=None, help="words per document (default 2000)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the CI smoke test")
    parser.add_argument("--profile", action="store_true", help="py-spy the large session's worker")
    parser.add_argument("--home", type=Path, default=None, help="benchmark folder (default: a temp one)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the proxy running in --home")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        common.quiet_warnings()
        worker(args.worker, args.corpus, BenchHome(args.home.resolve()), args.out, args.profile)
        return {}
    sizes = Sizes.smoke() if args.smoke else Sizes()
    sizes.large = args.docs or sizes.large
    sizes.small = args.small_docs or sizes.small
    sizes.words = args.words or sizes.words
    with common.bench_home(args.home) as home, common.bench_environment(home, Caps()):
        say(f"scale benchmark in {home.root}; starting the simulated provider and the proxy ...")
        stack = common.start_stack()
        try:
            result = measure(home, stack, sizes, profile=args.profile)
        finally:
            if not args.keep_stack:
                common.stop_stack()
    say("\n## Scale\n")
    say(report(result))
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
