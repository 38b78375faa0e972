"""`mva health`: is everything a session needs up and sound, without spending money?

Checks, each ending ok / warn / fail with a reason and what to do:

* **proxy** per mode: process alive, ``/health/liveliness`` and ``/health/readiness`` (never
  ``/health``, which sends a paid completion to every deployment), and ``/v1/models`` (the
  deployments it serves; listing them calls no provider). In real mode, deployments whose
  credentials are unset are named.
* **provider** servers (simulated, local): alive and answering ``/health``.
* **dagster**: the instance loads, its storage answers a query, the daemon's heartbeat (warn only:
  `mva run` needs no daemon; schedules, sensors and UI launches do).
* **disk** free where sessions, the instance and ``$MVA_HOME`` live.
* **archive** integrity of every session under the projects folder (each entry readable, its key
  the hash of its request, its file name its own; crash debris is a warning).

Exit code 1 when any check fails. ``docs/runbook.md`` says what each failure means.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from mva_dagster.errors import MvaError

Status = Literal["ok", "warn", "fail"]
MIN_FREE_BYTES = 1 << 30  # below 1 GiB a session can die mid-write
WARN_FREE_BYTES = 5 << 30


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int | None, Any]:
    try:
        response = httpx.get(url, headers=headers or {}, timeout=5.0)
    except httpx.HTTPError as exc:
        return None, type(exc).__name__
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text[:200]


def check_proxies(modes: tuple[str, ...] | None = None) -> list[Check]:
    """One check per mode that has (or had) a proxy; a fail when none is running at all."""
    from mva_dagster.proxy.process import SERVICE_NAME, master_key, proxy_status
    from mva_dagster.proxy.stack import MODES, state_dir
    from mva_dagster.services import log_tail, pid_alive, read_state

    wanted = modes or MODES
    checks: list[Check] = []
    running = 0
    for mode in wanted:
        directory = state_dir(mode)
        state = read_state(directory, SERVICE_NAME)
        if state is not None and not pid_alive(int(state.get("pid", -1))):
            log = Path(str(state.get("log"))) if state.get("log") else None
            checks.append(Check(f"proxy/{mode}", "fail",
                                f"the proxy died: pid {state.get('pid')} is gone (it served {state.get('url')}).\n"
                                f"{log_tail(log, 8)}".rstrip(),
                                f"restart it with `mva proxy start --provider {mode}`; its log is {log}"))
            continue
        status = proxy_status(directory)
        if not status.get("running"):
            if modes:  # asked for this mode explicitly
                checks.append(Check(f"proxy/{mode}", "fail", "not running",
                                    f"start it with `mva proxy start --provider {mode}`"))
            continue
        running += 1
        url = str(status["url"])
        if not status.get("healthy"):
            live, ready = status.get("liveliness") or {}, status.get("readiness") or {}
            checks.append(Check(f"proxy/{mode}", "fail",
                                f"{url} is not healthy: liveliness {live.get('status') or live.get('error')}, "
                                f"readiness {ready.get('status') or ready.get('error')}",
                                f"see its log {status.get('log')}; `mva proxy stop --provider {mode}` then start"))
            continue
        code, body = _get(url + "/v1/models", {"Authorization": f"Bearer {master_key()}"})
        served = [str(m.get("id")) for m in body.get("data", [])] if code == 200 and isinstance(body, dict) else []
        detail = f"{url} live and ready; serves {len(served)} model(s)"
        result = Check(f"proxy/{mode}", "ok", detail)
        if code != 200:
            result = Check(f"proxy/{mode}", "fail", f"{url} is up but /v1/models answered {code}: {body}",
                           "the master key may have changed since the proxy started: restart it")
        if status.get("config_changed_on_disk"):
            result.detail += "; its config file changed since it started"
            result.status = "warn" if result.status == "ok" else result.status
            result.hint = "sessions record the hash it started with; restart it to serve the new config"
        checks.append(result)
        if mode == "real":
            checks += _real_credentials(status.get("config_path"))
    if running == 0 and not any(c.status == "fail" for c in checks):
        checks.insert(0, Check("proxy", "fail", "no LiteLLM proxy is running",
                               "start one with `mva proxy start --provider simulated|local|real` "
                               "(`mva run` starts what it needs and stops it afterwards)"))
    return checks


def _real_credentials(config_path: Any) -> list[Check]:
    """Real-mode deployments whose provider variables are unset: every call to them would fail."""
    from mva_dagster.errors import SpecError
    from mva_dagster.llm.registry import load_registry

    if not config_path:
        return []
    try:
        config = yaml.safe_load(Path(str(config_path)).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    registry = load_registry()
    missing: dict[str, list[str]] = {}
    for deployment in config.get("model_list") or []:
        try:
            entry = registry.resolve(str(deployment.get("model_name")))
        except SpecError:
            continue
        if entry.provider != "local" and registry.missing_env(entry):
            missing[entry.name] = registry.missing_env(entry)
    if not missing:
        return [Check("proxy/real credentials", "ok", "every served model has its provider variables set")]
    detail = "; ".join(f"{name} needs {', '.join(env)}" for name, env in missing.items())
    return [Check("proxy/real credentials", "warn", f"calls to these models will fail: {detail}",
                  "export the variables (docs/proxy-and-models.md) and restart the real proxy")]


def check_providers() -> list[Check]:
    """The simulated/local servers behind the proxies: a proxy whose upstream is down fails every call."""
    from mva_dagster.proxy.stack import MODES, state_dir
    from mva_dagster.services import pid_alive, read_state

    checks = []
    for mode in MODES:
        for name in ("simulated", "local"):
            state = read_state(state_dir(mode), name)
            if state is None:
                continue
            label = f"provider/{name}" + ("" if mode == name else f" ({mode} mode)")
            if not pid_alive(int(state.get("pid", -1))):
                checks.append(Check(label, "fail", f"the {name} server died (pid {state.get('pid')})",
                                    f"`mva proxy stop --provider {mode}` then `mva proxy start --provider {mode}`; "
                                    f"its log is {state.get('log')}"))
                continue
            code, body = _get(f"{state['url']}/health")
            if code == 200:
                checks.append(Check(label, "ok", f"{state['url']} answers /health"))
            else:
                checks.append(Check(label, "fail", f"{state['url']}/health answered {code or body}",
                                    f"see its log {state.get('log')}"))
    return checks


def check_dagster() -> list[Check]:
    """The instance `mva` uses: configured, its storage queryable, its daemon alive (warn only)."""
    import dagster as dg

    from mva_dagster.instance import dagster_home

    home = dagster_home()
    if not (home / "dagster.yaml").exists():
        return [Check("dagster", "warn", f"no instance at {home} yet",
                      "`mva setup` creates it (so does the first `mva run`)")]
    if not os.access(home, os.W_OK):
        return [Check("dagster", "fail", f"{home} is not writable", "fix its permissions or set DAGSTER_HOME")]
    try:
        instance = dg.DagsterInstance.from_config(str(home))
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return [Check("dagster", "fail", f"the instance at {home} does not load: {exc}",
                      "check dagster.yaml there against the repository's dagster.yaml")]
    try:
        runs = instance.get_runs_count()
        storage = type(instance.run_storage).__name__
        heartbeats = instance.get_daemon_heartbeats()
    except Exception as exc:  # noqa: BLE001
        return [Check("dagster", "fail", f"the instance's storage does not answer: {exc}",
                      "see docs/runbook.md (Dagster storage)")]
    finally:
        instance.dispose()
    checks = [Check("dagster", "ok", f"instance {home}: {storage}, {runs} run(s) recorded")]
    if not heartbeats:
        checks.append(Check("dagster/daemon", "warn", "dagster-daemon is not running",
                            "schedules, the run-failure sensor and runs launched from the UI need it: `mva ui`"))
    else:
        checks.append(Check("dagster/daemon", "ok", f"heartbeats from {', '.join(sorted(heartbeats))}"))
    return checks


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(paths: dict[str, Path], min_free: int = MIN_FREE_BYTES) -> list[Check]:
    """Free space on each file system holding sessions, the instance or $MVA_HOME (once per device)."""
    checks = []
    seen: set[int] = set()
    for label, path in paths.items():
        target = _existing(path)
        device = target.stat().st_dev
        if device in seen:
            continue
        seen.add(device)
        usage = shutil.disk_usage(target)
        detail = f"{label} ({target}): {usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.0f} GB"
        if usage.free < min_free:
            checks.append(Check(f"disk/{label}", "fail", detail,
                                "free space: archives and DuckDB files are written here, a full disk stops sessions"))
        elif usage.free < max(WARN_FREE_BYTES, min_free * 2):
            checks.append(Check(f"disk/{label}", "warn", detail, "space is getting low"))
        else:
            checks.append(Check(f"disk/{label}", "ok", detail))
    return checks


def check_archives(roots: list[Path]) -> list[Check]:
    """Every session's archive against its own hashes (see SessionArchive.check)."""
    from mva_dagster.definitions import find_experiments
    from mva_dagster.llm.archive import SessionArchive

    sessions = [s for e in find_experiments(roots) for s in e.sessions()]
    failures: list[str] = []
    debris: list[str] = []
    entries = 0
    for layout in sessions:
        archive = SessionArchive(layout)
        try:
            problems = archive.check()
        except (OSError, MvaError) as exc:
            failures.append(f"{layout.root}: {exc}")
            continue
        entries += len(list(layout.llm_archive.glob("*.json"))) if layout.llm_archive.is_dir() else 0
        for problem in problems:
            (debris if problem.debris else failures).append(f"{problem.path}: {problem.problem}")
    if failures:
        return [Check("archive", "fail", f"{len(failures)} problem(s) in {len(sessions)} session(s):\n  "
                      + "\n  ".join(failures[:20]) + (f"\n  ... and {len(failures) - 20} more" if len(failures) > 20
                                                      else ""),
                      "see docs/runbook.md (archive integrity): move a bad entry aside and `mva resume`")]
    if debris:
        return [Check("archive", "warn", f"{len(debris)} temporary file(s) left by a crash:\n  " + "\n  ".join(debris[:10]),
                      "harmless (the answer was never archived); delete them or let `mva resume` do it")]
    return [Check("archive", "ok", f"{entries} entries in {len(sessions)} session(s) verified")]


def run_checks(*, modes: tuple[str, ...] | None = None, roots: list[Path] | None = None,
               archive: bool = True, min_free: int = MIN_FREE_BYTES) -> list[Check]:
    from mva_dagster.definitions import projects_roots
    from mva_dagster.instance import dagster_home
    from mva_dagster.services import mva_home

    roots = roots or projects_roots()
    checks = check_proxies(modes) + check_providers() + check_dagster()
    disks = {"MVA_HOME": mva_home(), "DAGSTER_HOME": dagster_home()}
    disks.update({f"projects {i + 1}" if len(roots) > 1 else "projects": root for i, root in enumerate(roots)})
    checks += check_disk(disks, min_free)
    if archive:
        checks += check_archives(roots)
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        head, *rest = check.detail.splitlines() or [""]
        lines.append(f"{check.status.upper():<5} {check.name:<24} {head}")
        lines += [f"{'':<31}{line}" for line in rest]
        if check.hint and check.status != "ok":
            lines.append(f"{'':<31}hint: {check.hint}")
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    if failed:
        lines.append(f"health: FAIL ({len(failed)} problem(s)): " + "; ".join(
            f"{c.name}: {c.detail.splitlines()[0]}" for c in failed))
    else:
        lines.append("health: OK" + (f" ({len(warned)} warning(s))" if warned else ""))
    return "\n".join(lines) + "\n"
