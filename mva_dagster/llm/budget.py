"""Budgets that hold: reserve a call's worst case before sending it, settle with its actual cost.

LiteLLM's own budgets need its Postgres database (not available offline) and have a history of
enforcement bugs, so the limit is held here, in the only process that sends calls. A session may
have a session, an experiment and a project budget (USD). Before each call the guard adds the
call's worst case (prompt tokens + ``max_tokens`` at the dearest model it could be answered by) to
everything already spent, possibly spent or reserved at each level; if any level would be crossed,
the call is not sent and the guard latches: the session stops cleanly as *paused by budget*, with
every answer so far archived. Reservations are serialized (an asyncio lock in the process, an
``flock`` on the project when experiment or project budgets exist, since other sessions count
there too), so no interleaving of concurrent calls can overshoot: zero calls over budget.

Crossing 50 %, 80 % and 100 % of a budget raises an alert: the session chronolog, the console, and
the experiment's webhook (POSTed from a thread; a failure is logged, never fatal). Each alert fires
once per session and level.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from mva_dagster.errors import BudgetExceeded, SessionError
from mva_dagster.fsutil import atomic_write_json
from mva_dagster.llm import cost as ledger
from mva_dagster.llm.archive import SessionArchive
from mva_dagster.llm.registry import ModelEntry
from mva_dagster.records import LLMAnswer, LLMRequest
from mva_dagster.sessions.chronolog import Chronolog, report_torn_tail, utc_now
from mva_dagster.sessions.layout import SessionLayout

THRESHOLDS = (0.5, 0.8, 1.0)
LEVELS = ("session", "experiment", "project")
WEBHOOK_TIMEOUT_S = 5.0
Report = Callable[[str], None]


class SessionPolicy(BaseModel):
    """How a session may spend and what it may fall back to; fixed when the session is created.

    Kept in ``<session>/session_policy.json`` (:attr:`SessionLayout.session_policy`) because the
    manifest is immutable and a resume must hold the same budgets (a higher budget is a deliberate
    edit of this file, or ``mva resume --budget``).
    """

    session_usd: float | None = Field(default=None, ge=0)
    experiment_usd: float | None = Field(default=None, ge=0)
    project_usd: float | None = Field(default=None, ge=0)
    alert_webhook: str | None = None
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    budget_source: str | None = Field(default=None, description="'experiment', 'cli' or None")

    def limits(self) -> dict[str, float]:
        values = {"session": self.session_usd, "experiment": self.experiment_usd, "project": self.project_usd}
        return {level: float(v) for level, v in values.items() if v is not None}


def write_policy(layout: SessionLayout, policy: SessionPolicy) -> Path:
    path = layout.session_policy
    atomic_write_json(path, policy.model_dump(mode="json"))
    return path


def load_policy(layout: SessionLayout) -> SessionPolicy:
    """The session's policy; a session made before policies existed has none (no budget)."""
    path = layout.session_policy
    if not path.exists():
        return SessionPolicy()
    try:
        return SessionPolicy.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SessionError(f"{path} is not a valid session policy: {exc}",
                           hint="fix the file (budgets in USD) or delete it to run without budgets") from exc


def set_session_budget(layout: SessionLayout, usd: float | None, *, command: str | None = None) -> SessionPolicy:
    """Change the session budget of an existing (e.g. paused) session before resuming it.

    ``command`` (e.g. ``"resume"``) also records the change as ``BUDGET_SET`` in the session chronolog.
    """
    policy = load_policy(layout)
    previous = policy.session_usd
    policy.session_usd = usd
    policy.budget_source = "cli"
    write_policy(layout, policy)
    if command is not None:
        record_policy(layout, policy, command=command, extra={"previous_session_usd": previous})
    return policy


def record_policy(layout: SessionLayout, policy: SessionPolicy, *, command: str,
                  extra: dict[str, Any] | None = None) -> None:
    """``BUDGET_SET`` in the session chronolog: the budgets the session holds from now on, set by
    ``command`` (``run`` when it is created with budgets, ``resume`` for ``mva resume --budget``)."""
    data: dict[str, Any] = {"command": command, "source": policy.budget_source,
                            "session_usd": policy.session_usd, "experiment_usd": policy.experiment_usd,
                            "project_usd": policy.project_usd, "policy": layout.session_policy.name,
                            **(extra or {})}
    Chronolog(layout.chronolog, project=layout.experiment.project.name,
              session_id=layout.session_id).append("BUDGET_SET", data)


def paused_state(layout: SessionLayout, *, since: int = 0) -> dict[str, Any] | None:
    """The ledger's last pause record, if the session's last stop was for a budget.

    ``since`` (a :func:`~mva_dagster.llm.cost.ledger_mark` taken before a run) counts only a pause
    written by that run, not one left by an earlier run of the session.
    """
    path = layout.cost_ledger
    return ledger.LedgerReader(path, start=since).refresh().paused if path.exists() else None


PAUSED_STATUS = "paused_by_budget"


def mark_paused_by_budget(layout: SessionLayout, *, since: int = 0) -> BudgetExceeded | None:
    """If the session's last run stopped for a budget: set its status to *paused_by_budget* and
    return the error to show (with how to resume); else None. Runners (`mva run`, `mva resume`) call
    this when a run failed; ``since`` is the ledger mark taken before that run (see :func:`paused_state`)."""
    from mva_dagster.sessions.manager import set_status

    pause = paused_state(layout, since=since)
    if pause is None:
        return None
    set_status(layout, PAUSED_STATUS)
    archived = len(list(layout.llm_archive.glob("*.json"))) if layout.llm_archive.is_dir() else 0
    level = str(pause.get("level") or "session")
    Chronolog(layout.chronolog, project=layout.experiment.project.name, session_id=layout.session_id).append(
        "SESSION_PAUSED_BY_BUDGET", {k: pause.get(k) for k in ("level", "budget_usd", "committed_usd", "needed_usd")})
    if level == "session":
        how = (f"resume it with a higher budget: `mva resume {layout.root} --budget USD` (or raise "
               f"session_usd in {layout.session_policy}, then `mva resume {layout.root}`)")
    else:
        how = (f"raise budget.{level} in the experiment, or {level}_usd in {layout.session_policy}; "
               f"then resume it (`mva resume {layout.root}`)")
    return BudgetExceeded(
        f"session {layout.session_id} paused by its {level} budget of ${float(pause.get('budget_usd') or 0):.4f}: "
        f"${float(pause.get('committed_usd') or 0):.4f} spent or reserved, and the next call could cost up to "
        f"${float(pause.get('needed_usd') or 0):.4f}. {archived} answers are archived; nothing was sent "
        "over the budget and nothing is lost",
        hint=f"to continue, {how}: archived answers cost $0",
        level=level, budget_usd=pause.get("budget_usd"), committed_usd=pause.get("committed_usd"),
        needed_usd=pause.get("needed_usd"))


@dataclass
class Reservation:
    id: str
    worst_usd: float
    request_key: str
    model: str


class BudgetGuard:
    """Reserve/settle for one session run. Single event loop; methods are synchronous and quick."""

    def __init__(self, layout: SessionLayout, policy: SessionPolicy, *, chronolog: Chronolog | None = None,
                 report: Report | None = None) -> None:
        self.layout = layout
        self.policy = policy
        self.limits = policy.limits()
        self.chronolog = chronolog
        self.report: Report = report or _to_stderr
        self.path = layout.cost_ledger
        self.paused: BudgetExceeded | None = None
        self._mine_open = 0  # reservations of this process not settled yet
        self._lock = threading.Lock()
        self._readers: dict[Path, ledger.LedgerReader] = {}
        self._outbox: queue.Queue[dict[str, Any]] = queue.Queue()  # webhook posts, in order
        self._poster: threading.Thread | None = None
        project = layout.experiment.project
        self._project_lock = project.root / ".mva_budget.lock"
        self._shared = "experiment" in self.limits or "project" in self.limits
        self._fired = self._reader(self.path).refresh().alerts
        self._reconcile()

    @property
    def active(self) -> bool:
        return bool(self.limits)

    def resume(self) -> None:
        """A new run of the session: lift the latch (the budget is checked again, call by call)."""
        self.paused = None

    # -- reserve / settle ----------------------------------------------------------------------

    def reserve(self, request: LLMRequest, worst_usd: float, *, candidates: list[str]) -> Reservation:
        """Count ``worst_usd`` against every budget before the call is sent, or refuse it.

        Raises :class:`BudgetExceeded` (and latches: every later call is refused too) if the call
        could cross any budget. Without budgets it still writes the reservation, so the ledger
        shows money in flight.
        """
        reservation = self.try_reserve(request, worst_usd, candidates=candidates, wait_for_own=False)
        assert reservation is not None
        return reservation

    def try_reserve(self, request: LLMRequest, worst_usd: float, *, candidates: list[str],
                    wait_for_own: bool = True) -> Reservation | None:
        """Like :meth:`reserve`, but None ("wait") while this process's own calls in flight might
        still settle below their worst case and make room: the session pauses only when the call
        cannot fit even after they have settled.
        """
        if self.paused is not None:
            raise self.paused
        with self._lock, self._flock():
            committed = self._committed()
            for level, limit in self.limits.items():
                if committed[level] + worst_usd > limit + 1e-12:
                    if wait_for_own and self._mine_open > 0:
                        return None
                    self.paused = self._exceeded(level, limit, committed[level], worst_usd, request)
                    self._record_pause(self.paused, request)
                    raise self.paused
            self._mine_open += 1
            reservation = Reservation(uuid.uuid4().hex, worst_usd, request.key(), request.model)
            self._append({
                "kind": "reserve", "id": reservation.id, "ts": utc_now(), "pid": os.getpid(),
                "request_key": reservation.request_key, "session_id": request.session_id,
                "document_id": request.document_id, "model": request.model, "replicate": request.replicate,
                "purpose": request.purpose, "candidates": candidates, "worst_usd": round(worst_usd, 9)})
            return reservation

    def settle(self, reservation: Reservation, answer: LLMAnswer | None, *, uncertain_attempts: int = 0,
               billed_usd: float = 0.0, note: str | None = None) -> None:
        """Replace the reservation by the actual cost: the answer's, or ``billed_usd`` for a failed
        call the proxy still priced (an unreadable answer); 0 for a failure nobody billed."""
        cost = float(answer.cost_usd or 0.0) if answer is not None else float(billed_usd or 0.0)
        record: dict[str, Any] = {
            "kind": "settle", "id": reservation.id, "ts": utc_now(), "request_key": reservation.request_key,
            "model": reservation.model, "outcome": "answered" if answer is not None else "failed",
            "cost_usd": cost, "uncertain_usd": round(uncertain_attempts * reservation.worst_usd, 9),
        }
        if answer is not None:
            record.update({"model_used": answer.model_used or answer.model_alias, "call_id": answer.call_id,
                           "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens})
            if answer.cost_usd is None:
                record["note"] = "the proxy reported no cost for this call"
        if note:
            record["note"] = note
        with self._lock:
            self._append(record)
            self._mine_open = max(0, self._mine_open - 1)
        self._check_alerts()

    # -- state ---------------------------------------------------------------------------------

    def totals(self) -> dict[str, ledger.LedgerTotals]:
        """Totals per level (only the levels that have a budget, plus the session)."""
        scopes = {"session": [self.path]}
        if "experiment" in self.limits:
            scopes["experiment"] = ledger.ledger_paths(self.layout.experiment.sessions())
        if "project" in self.limits:
            scopes["project"] = ledger.ledger_paths(ledger.project_sessions(self.layout.experiment.project))
        out: dict[str, ledger.LedgerTotals] = {}
        for level, paths in scopes.items():
            total = ledger.LedgerTotals()
            for path in paths:
                total.add(self._session_totals(path))
            out[level] = total
        return out

    def _record_pause(self, exc: BudgetExceeded, request: LLMRequest) -> None:
        """Write the pause to the ledger (``mva cost`` and ``paused_state`` read it) and alert at 100 %."""
        self._append({
            "kind": "pause", "ts": utc_now(), "level": exc.level, "budget_usd": exc.budget_usd,
            "committed_usd": exc.committed_usd, "needed_usd": exc.needed_usd,
            "refused": {"document_id": request.document_id, "model": request.model,
                        "replicate": request.replicate, "purpose": request.purpose}})
        if self.chronolog is not None:
            self.chronolog.append("BUDGET_PAUSED", {
                "level": exc.level, "budget_usd": exc.budget_usd, "committed_usd": exc.committed_usd,
                "needed_usd": exc.needed_usd, "document_id": request.document_id, "model": request.model})
        if exc.level and (exc.level, 1.0) not in self._fired:
            self._alert(exc.level, 1.0, exc.budget_usd or 0.0, exc.committed_usd or 0.0, reached=True)

    def wait_for_alerts(self, timeout_s: float = 2 * WEBHOOK_TIMEOUT_S) -> None:
        """Let queued webhook posts finish (the run is ending; a slow hook must not keep it long)."""
        deadline = time.monotonic() + timeout_s
        while self._outbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- internals -----------------------------------------------------------------------------

    def _append(self, record: dict[str, Any]) -> None:
        torn = ledger.append(self.path, record)
        if torn is not None:  # a crash left half a line: it was set aside, say so
            report_torn_tail(self.chronolog, torn)

    def _reader(self, path: Path) -> ledger.LedgerReader:
        if path not in self._readers:
            self._readers[path] = ledger.LedgerReader(path)
        return self._readers[path]

    def _session_totals(self, path: Path) -> ledger.LedgerTotals:
        if path.exists() or path == self.path:
            return self._reader(path).refresh()
        return ledger.archive_totals(SessionLayout(path.parent.parent))  # a session from before ledgers

    def _committed(self) -> dict[str, float]:
        return {level: totals.committed_usd for level, totals in self.totals().items()}

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        """Serialize reservations with other processes that share an experiment or project budget."""
        if not self._shared:
            yield
            return
        self._project_lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._project_lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _reconcile(self) -> None:
        """Settle reservations a dead process left open: from the archive if the answer is there.

        An answer archived for the request settles at its recorded cost. Without one the call may
        still have been billed (the process died with it in flight), so it stays counted at its
        worst case, as ``uncertain``.
        """
        open_ = self._reader(self.path).open_reservations()
        if not open_:
            return
        from mva_dagster.services import pid_alive

        archive = SessionArchive(self.layout)
        mine = os.getpid()
        for rid, record in open_.items():
            pid = record.get("pid")
            if pid == mine or (isinstance(pid, int) and pid > 0 and pid_alive(pid)):
                continue  # still in flight in a live process (another run of this session)
            answer = None
            entry = None
            with contextlib.suppress(Exception):
                entry = archive.find(str(record.get("document_id")), str(record.get("model")),
                                     int(record.get("replicate") or 1))
            if entry is not None and entry.answer.request_key == record.get("request_key"):
                answer = entry.answer
            reservation = Reservation(rid, float(record.get("worst_usd") or 0.0),
                                      str(record.get("request_key")), str(record.get("model")))
            if answer is not None:
                self.settle(reservation, answer, note="reconciled from the archive after an interrupted run")
            else:
                self.settle(reservation, None, uncertain_attempts=1,
                            note="interrupted run: no archived answer, counted at its worst case")

    def _exceeded(self, level: str, limit: float, committed: float, worst: float,
                  request: LLMRequest) -> BudgetExceeded:
        where = {"session": "this session", "experiment": f"experiment {self.layout.experiment.name}",
                 "project": f"project {self.layout.experiment.project.name}"}[level]
        return BudgetExceeded(
            f"the {level} budget of ${limit:.4f} could be crossed: ${committed:.4f} spent or reserved for "
            f"{where}, and the next call ({request.document_id}, {request.model}, run {request.replicate}) "
            f"could cost up to ${worst:.4f}",
            hint=f"the session is paused, nothing is lost; raise the {level} budget "
                 + ("(`mva resume SESSION --budget USD`, or session_usd in session_policy.json) "
                    if level == "session"
                    else f"({level}: in the experiment's budget) ")
                 + "and resume it: archived answers are not paid for again",
            level=level, budget_usd=limit, committed_usd=committed, needed_usd=worst)

    def _check_alerts(self) -> None:
        if not self.limits:
            return
        totals = self.totals()
        for level, limit in self.limits.items():
            if limit <= 0:
                continue
            used = totals[level].spent_usd + totals[level].uncertain_usd
            for threshold in THRESHOLDS:
                if used >= threshold * limit - 1e-12 and (level, threshold) not in self._fired:
                    self._alert(level, threshold, limit, used)

    def _alert(self, level: str, threshold: float, limit: float, used: float, *, reached: bool = False) -> None:
        self._fired.add((level, threshold))
        percent = int(threshold * 100)
        data = {"level": level, "threshold": threshold, "budget_usd": limit, "spent_usd": round(used, 6),
                "session_id": self.layout.session_id, "experiment": self.layout.experiment.name,
                "project": self.layout.experiment.project.name}
        self._append({"kind": "alert", "ts": utc_now(), **data})
        if self.chronolog is not None:
            self.chronolog.append("BUDGET_ALERT", data)
        what = "reached: the next call could cross it" if reached else "used"
        self.report(f"  BUDGET {percent}% {what} - {level} budget ${limit:.4f}, ${used:.4f} spent")
        if self.policy.alert_webhook:
            self._outbox.put(data)
            if self._poster is None:  # one thread posts them in order, off the event loop
                self._poster = threading.Thread(target=self._post_all, args=(self.policy.alert_webhook,),
                                                name="mva-budget-webhook", daemon=True)
                self._poster.start()

    def _post_all(self, url: str) -> None:
        while True:
            data = self._outbox.get()
            try:
                self._post(url, data)
            finally:
                self._outbox.task_done()

    def _post(self, url: str, data: dict[str, Any]) -> None:
        try:
            response = httpx.post(url, json={"event": "mva.budget_alert", **data}, timeout=WEBHOOK_TIMEOUT_S)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            message = f"budget alert webhook failed ({type(exc).__name__}: {str(exc)[:200]}); the run goes on"
            self.report(f"  warning: {message}")
            if self.chronolog is not None:
                self.chronolog.append("BUDGET_ALERT_WEBHOOK_FAILED", {**data, "error": message})


_guards: dict[tuple[Path, str], BudgetGuard] = {}
_guards_lock = threading.Lock()


def session_guard(layout: SessionLayout) -> BudgetGuard:
    """This process's guard for a session: one ledger reader and one latch, whichever step calls.

    Every call through the gateway - analysis, extraction, synthesis - is reserved and settled by
    it, so the ledger is complete and no step can spend past a budget. A changed policy (a raised
    budget) gives a fresh guard.
    """
    policy = load_policy(layout)
    key = (layout.root.resolve(), policy_json(policy))
    with _guards_lock:
        guard = _guards.get(key)
        if guard is None:
            chronolog = Chronolog(layout.chronolog, project=layout.experiment.project.name,
                                  session_id=layout.session_id)
            guard = _guards[key] = BudgetGuard(layout, policy, chronolog=chronolog)
        return guard


def _to_stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def worst_case_usd(entries: list[ModelEntry], prompt_tokens: int, max_tokens: int | None) -> float:
    """The dearest of ``entries`` for this prompt and ``max_tokens`` (the model's output cap if unset)."""
    worst = 0.0
    for entry in entries:
        completion = min(max_tokens or entry.max_output_tokens, entry.max_output_tokens)
        worst = max(worst, entry.cost(ledger.reserved_prompt_tokens(prompt_tokens), completion))
    return worst


def describe_policy(policy: SessionPolicy) -> str:
    """One line for the console: the budgets and fallbacks a session runs under."""
    parts = [f"{level} ${usd:.2f}" for level, usd in policy.limits().items()]
    text = "budget: " + (", ".join(parts) if parts else "none")
    if policy.fallbacks:
        text += "; fallbacks: " + "; ".join(f"{m} -> {', '.join(f)}" for m, f in policy.fallbacks.items())
    return text


def policy_json(policy: SessionPolicy) -> str:
    return json.dumps(policy.model_dump(mode="json"), sort_keys=True)
