"""Crash benchmark: SIGKILL `mva run` / `mva resume` at random moments, resume, count the damage.

    .venv/bin/python -m bench.crash                       # 20 kills over 5 sessions, then the 50-document timing
    .venv/bin/python -m bench.crash --kills 4 --sessions 2 --documents 4 --no-timing    # a quick look

Everything runs for real: the simulated provider (with its ledger) behind the real LiteLLM proxy,
`mva run` and `mva resume` as subprocesses on a real Dagster instance. Each session is killed several
times - during calls, archive writes, extraction or table writes: the moment is drawn at random, by
time or by a count of lines the session has logged so far - and each kill is followed by `mva
resume`, which may itself be the next one killed. After a last, clean resume the benchmark checks:

* **lost**: answers the provider served (its fsync'd ledger, joined on ``x-mva-request-key``) that
  are not in the session's archive - must be 0;
* **re-paid**: request keys the provider served more than once for the session - must be 0;
* **identical tables**: every ``results/*.csv`` byte-identical to an uninterrupted session's, and
  every other result file (report, synthesis, plots) present.

Then it times ``mva resume`` finishing a 50-document session killed half-way through its calls.
Figures are printed and written to ``bench/results/crash_<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.common import REPO, Caps, say

MODEL = common.OVERHEAD  # uncapped rpm: kills, not rate limits, decide the timing
MVA = [sys.executable, "-m", "mva_dagster.cli.main"]


@dataclass
class Kill:
    session: str
    process: str  # "run" or "resume"
    trigger: str  # what decided the moment
    after_s: float
    phase: str  # how far the session had got when it died
    archived: int
    extracted: int


@dataclass
class SessionOutcome:
    session: str
    kills: int
    served: int
    archived: int
    lost: list[str] = field(default_factory=list)
    repaid: list[str] = field(default_factory=list)
    identical: bool = False
    differing: list[str] = field(default_factory=list)
    resumes: int = 0


def write_experiment(home: common.BenchHome, name: str, corpus: Path, runs: int) -> Path:
    """The crash experiment's folder: the benchmarks' experiment with ``runs`` runs per document."""
    return common.write_experiment(home, name, corpus=corpus, model=MODEL, runs=runs).parent


def sessions_of(home: common.BenchHome, name: str) -> set[Path]:
    folder = home.projects / common.PROJECT / "experiments" / name / "sessions"
    return {p for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - handed to the child, closed when it exits
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def phase_of(session: Path) -> tuple[str, int, int]:
    archived = len(list((session / "llm_archive").glob("*.json")))
    extracted = len(list((session / "extracted").glob("*.json")))
    results = {p.name for p in (session / "results").glob("*")}
    if "report.md" in results:
        phase = "report"
    elif any(name.startswith("stats_") for name in results):
        phase = "statistics"
    elif "scores.csv" in results:
        phase = "tables"
    elif extracted:
        phase = "extraction"
    elif archived:
        phase = "analysis"
    else:
        phase = "start-up"
    return phase, archived, extracted


def completed(session: Path) -> bool:
    try:
        return json.loads((session / "session.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def log_lines(session: Path | None) -> int:
    if session is None:
        return 0
    try:
        return (session / "logs" / "session.log").read_bytes().count(b"\n")
    except OSError:
        return 0


def kill_at_random(proc: subprocess.Popen[bytes], rng: random.Random, *, find_session: Any,
                   budget_s: float) -> tuple[str, float, Path | None] | None:
    """Kill ``proc`` at a random moment; None if it finished first."""
    started = time.monotonic()
    session = find_session()
    if rng.random() < 0.3:
        trigger = "time"
        deadline = started + rng.uniform(0.5, budget_s)
        target_lines = None
    else:
        trigger = "log lines"
        deadline = started + 600.0
        target_lines = log_lines(session) + rng.randint(1, 400)  # a whole session logs ~400 lines
    while proc.poll() is None:
        now = time.monotonic()
        session = session or find_session()
        if now >= deadline or (target_lines is not None and log_lines(session) >= target_lines):
            time.sleep(rng.uniform(0.0, 0.25))  # land inside whatever write follows the trigger
            if proc.poll() is not None:
                return None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return trigger, time.monotonic() - started, session or find_session()
        time.sleep(0.01)
    return None


def check(session: Path, ledger: Path, offset: int, baseline: Path) -> SessionOutcome:
    from mva_dagster.sessions.layout import SessionLayout
    from mva_dagster.sessions.status import archived_keys, ledger_served_keys

    served = ledger_served_keys(ledger, since_offset=offset)
    archive = archived_keys(SessionLayout(session))
    outcome = SessionOutcome(session=session.name, kills=0, served=len(served), archived=len(archive))
    outcome.lost = sorted(k for k in served if k not in archive)
    outcome.repaid = sorted(k for k, n in served.items() if n > 1)
    # Tables must be byte-identical; every other result file (report, synthesis, plots) must exist.
    # (Those name the session, and the synthesis prompt does too, so their bytes differ by design.)
    ours = {p.name: p.read_bytes() if p.suffix == ".csv" else b"" for p in (session / "results").iterdir()}
    theirs = {p.name: p.read_bytes() if p.suffix == ".csv" else b"" for p in (baseline / "results").iterdir()}
    outcome.differing = sorted(n for n in set(ours) | set(theirs) if ours.get(n) != theirs.get(n))
    outcome.identical = any(n.endswith(".csv") for n in theirs) and not outcome.differing
    return outcome


def run_to_end(argv: list[str], log: Path) -> float:
    started = time.monotonic()
    with open(log, "ab") as handle:
        result = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(argv[3:])} failed with exit code {result.returncode}; see {log}")
    return time.monotonic() - started


def crash_sessions(home: common.BenchHome, args: argparse.Namespace, ledger: Path,
                   logs: Path) -> tuple[list[Kill], list[SessionOutcome], float]:
    rng = random.Random(args.seed)
    corpus = common.build_corpus(home.corpus(args.documents, 80), args.documents, words=80)
    experiment = write_experiment(home, "crash", corpus, args.runs)
    project = ["--project-dir", str(home.projects / common.PROJECT)]
    say(f"baseline: an uninterrupted session ({args.documents} documents x {args.runs} runs) ...")
    before = sessions_of(home, "crash")
    base_s = run_to_end([*MVA, "run", str(experiment), "--provider", "simulated", *project, "--keep-proxy"],
                        logs / "baseline.log")
    baseline = (sessions_of(home, "crash") - before).pop()
    say(f"  baseline {baseline.name}: {base_s:.1f}s")

    kills: list[Kill] = []
    outcomes: list[SessionOutcome] = []
    per_session = max(1, -(-args.kills // args.sessions))
    index = 0
    while len(kills) < args.kills:
        index += 1
        offset = ledger.stat().st_size if ledger.exists() else 0
        known = sessions_of(home, "crash")
        session: Path | None = None
        resumes = 0
        log = logs / f"session_{index}.log"

        def find(known: set[Path] = known) -> Path | None:
            new = sessions_of(home, "crash") - known
            return max(new) if new else None

        mine = 0
        while mine < per_session and len(kills) < args.kills:
            argv = ([*MVA, "run", str(experiment), "--provider", "simulated", *project, "--keep-proxy"]
                    if session is None else [*MVA, "resume", str(session), "--keep-proxy"])
            proc = spawn(argv, log)
            # A resume has less left to do than a run: draw its time kills from a shorter window.
            hit = kill_at_random(proc, rng, find_session=find, budget_s=base_s if session is None else base_s / 2)
            resumes += argv[3] == "resume"
            if hit is None:
                session = session or find()
                if session is not None and completed(session):
                    say("  (the session finished before its next kill moment; on to a new session)")
                    break
                continue
            trigger, after, found = hit
            session = session or found
            if session is None:
                say(f"  killed {argv[3]} after {after:.1f}s, before it created its session; starting again")
                continue
            phase, archived, extracted = phase_of(session)
            kills.append(Kill(session.name, argv[3], trigger, round(after, 2), phase, archived, extracted))
            mine += 1
            say(f"  kill {len(kills):2d}: {argv[3]:6} of {session.name} after {after:5.1f}s ({trigger}); "
                f"it had reached {phase} ({archived} archived, {extracted} extracted)")
        if session is None:
            continue
        run_to_end([*MVA, "resume", str(session), "--keep-proxy"], log)
        outcome = check(session, ledger, offset, baseline)
        outcome.kills = mine
        outcome.resumes = resumes + 1
        outcomes.append(outcome)
        say(f"  {session.name}: served {outcome.served}, archived {outcome.archived}, lost {len(outcome.lost)}, "
            f"re-paid {len(outcome.repaid)}, tables identical: {outcome.identical}"
            + (f" (differ: {', '.join(outcome.differing)})" if outcome.differing else ""))
    return kills, outcomes, base_s


def resume_timing(home: common.BenchHome, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Kill a 50-document session half-way through its calls; time `mva resume` to the end."""
    from mva_dagster.sessions.chronolog import read_events

    docs = args.timing_documents
    corpus = common.build_corpus(home.corpus(docs, 80), docs, words=80)
    experiment = write_experiment(home, f"resume_{docs}", corpus, args.runs)
    calls = docs * args.runs
    known = sessions_of(home, f"resume_{docs}")
    say(f"timing: {docs} documents x {args.runs} runs = {calls} calls; kill after half of them ...")
    proc = spawn([*MVA, "run", str(experiment), "--provider", "simulated", "--project-dir",
                  str(home.projects / common.PROJECT), "--keep-proxy"], logs / "timing.log")
    session: Path | None = None
    answered = 0
    while proc.poll() is None:
        new = sessions_of(home, f"resume_{docs}") - known
        session = max(new) if new else None
        if session is not None:
            events, _ = read_events(session / "session_chronolog.jsonl")
            answered = sum(1 for e in events if e.get("event") == "LLM_CALL_COMPLETED")
            if answered >= calls // 2:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
        time.sleep(0.05)
    if session is None:
        raise SystemExit("the timing session was never created")
    seconds = run_to_end([*MVA, "resume", str(session), "--keep-proxy"], logs / "timing.log")
    say(f"  killed after {answered} of {calls} calls; `mva resume` finished the session in {seconds:.1f}s")
    return {"documents": docs, "calls": calls, "answered_before_kill": answered, "resume_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=5, help="the kills are spread over this many sessions")
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--latency", type=float, default=1.0, help="simulated seconds per answer (±50%%)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="calls in flight per model while killing (so the analysis phase lasts)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--timing-documents", type=int, default=50)
    parser.add_argument("--no-timing", action="store_true", help="skip the 50-document resume timing")
    parser.add_argument("--home", type=Path, default=None, help="benchmark folder (default: a temp one)")
    args = parser.parse_args(argv)
    with common.bench_home(args.home) as home, common.bench_environment(home, Caps()):
        logs = home.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        say(f"crash benchmark in {home.root}")
        stack = common.start_stack()
        try:
            common.set_latency(stack, args.latency, 0.5)
            from mva_dagster.proxy.stack import state_dir

            ledger = state_dir("simulated") / "simulated_ledger.jsonl"
            os.environ["MVA_MAX_CONCURRENCY"] = str(args.concurrency)
            kills, outcomes, base_s = crash_sessions(home, args, ledger, logs)
            os.environ.pop("MVA_MAX_CONCURRENCY")  # the timing runs at the model's own concurrency
            timing = None if args.no_timing else resume_timing(home, args, logs)
        finally:
            common.stop_stack()
    figures = {
        "kills": len(kills),
        "lost": sum(len(o.lost) for o in outcomes),
        "re_paid": sum(len(o.repaid) for o in outcomes),
        "identical_tables": all(o.identical for o in outcomes),
        "sessions": [asdict(o) for o in outcomes],
        "kill_log": [asdict(k) for k in kills],
        "phases": {p: sum(1 for k in kills if k.phase == p) for p in sorted({k.phase for k in kills})},
        "baseline_seconds": round(base_s, 1),
        "resume_timing": timing,
    }
    say("")
    say(f"kills: {figures['kills']}  lost: {figures['lost']}  re-paid: {figures['re_paid']}  "
        f"identical final tables: {figures['identical_tables']}")
    say("kills by phase reached: " + ", ".join(f"{p} {n}" for p, n in figures["phases"].items()))
    if timing:
        say(f"resume of a {timing['documents']}-document session killed after {timing['answered_before_kill']} of "
            f"{timing['calls']} calls: {timing['resume_seconds']}s")
    out = REPO / "bench" / "results" / f"crash_{datetime.now(UTC).strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    say(f"figures: {out}")
    return figures


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["lost"] == 0 and result["re_paid"] == 0 and result["identical_tables"] else 1)
